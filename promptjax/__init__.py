"""promptjax: continued pretraining and meta-learning that make T5 promptable, in JAX/Flax."""

__version__ = '0.1.0'
