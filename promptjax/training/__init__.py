"""Training: losses (this issue); partitioning, optimizers, train state and the trainer come later."""
