"""SUPMER (Pan et al. 2023, arXiv:2303.12314): self-supervised meta-prompt learning with meta-gradient
regularization, as one wing built on `promptjax.meta`.

  algorithm.py   ψ_φ gradient regularization, mixup task augmentation with the curriculum, the meta-step
  method.py      `Supmer`: the training method the generic loop runs
  tasks.py       the anchor meta-tasks as seqio tasks and SUPMER's meta-batch reader
  construct.py   the anchor meta-task construction (Apache Beam: T5-encoder embeddings, K-means, formats)
  baselines.py   PPT, Unified-PPT and MetaPT pre-training data (the paper's baselines)
  datasets.py    the 12 few-shot downstream datasets and 6 sentiment domains, read from their releases

Importing this package registers SUPMER's seqio tasks (``MIXTURE_OR_TASK_MODULE = 'promptjax.supmer'``).
"""

import promptjax.tasks  # noqa: F401  (the tasks SUPMER's build on)
from promptjax.supmer import datasets, tasks, baselines
from promptjax.supmer.algorithm import SupmerConfig
from promptjax.supmer.method import Supmer
