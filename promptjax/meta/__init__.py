"""Meta-learning (FOMAML, Reptile, prompt-only MAML, SUPMER) — issues 5 and 7."""
