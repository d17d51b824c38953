"""Training: optimizers, partitioning, the train step, the training methods and the trainer."""
