"""What a training method gives the generic loop, and multi-task learning as the first such method.

The loop (`promptjax.training.trainer`) owns the mesh, the state, checkpoints, resume, preemption, logging
and the NaN guard; a *method* owns everything algorithmic: what it checks, which extra parameter subtrees
it trains, its optimizer, its jittable step and its batches. A new method is one class implementing
`Method` plus a gin file binding ``promptjax.training.train.method`` (see the README for an example).
Methods here: `MultiTask` (Wu et al. 2022 §3: MTL-T✓P✗ / T✗P✓ / T✓P✓), `promptjax.meta.MetaLearning`
(Wu et al. 2022 FOMAML / adapted Reptile, Qin et al. 2023 prompt-only MAML / FoMAML / Reptile / MTL) and
`promptjax.supmer.Supmer` (Pan et al. 2023).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Protocol, Tuple, runtime_checkable

import jax
import numpy as np
import optax

from promptjax.data.feeds import DatasetConfig, abstract_features, dataset_batches
from promptjax.errors import TrainingError
from promptjax.training import optimizers as opt_lib
from promptjax.training import train_step as ts

Params = Any
Batch = Mapping[str, np.ndarray]
StepFn = Callable[[ts.TrainState, Batch], Tuple[ts.TrainState, Dict[str, jax.Array]]]


@runtime_checkable
class Method(Protocol):
  """A training method: the loop calls these, in this order, and never names an algorithm.

  ``check`` raises `TrainingError` with the fix for a configuration that cannot run (before anything is
  written); ``data`` describes the data (checkpoint info, the dry run's activation estimate);
  ``extra_params`` returns extra top-level parameter subtrees the method trains next to the model's
  (replicated; {} for none); ``optimizer`` turns the user's optimizer (None: the method's default) into
  the one over the whole parameter tree; ``make_step`` returns the pure ``step(state, batch) -> (state,
  metrics)`` (metrics hold ``loss`` and ``num_tokens``); ``batches`` yields host batches from a resume
  position; ``signature`` is recorded in every checkpoint (a resume with another one is refused);
  ``summary`` is the dry run's description; ``num_microbatches`` (gradient accumulation, 1 for none) sizes
  the dry run's activation estimate.

  Optional (not part of the protocol's check): ``abstract_batch(model)`` returns the global batch of one
  step as ``{feature: jax.ShapeDtypeStruct}`` without reading data (``--dry_run --compile`` compiles the step
  with it); ``activation_rows()`` the rows whose activations one step holds at once, when that is not
  ``data().batch_size`` (the dry run's estimate; e.g. a second-order meta-step);
  ``validation(model, mesh, num_batches, trainable)`` returns a
  function
  ``params -> float``, the method's own validation loss (e.g. a meta-learner's query loss after adaptation
  on validation tasks), or None; without it the trainer's validation is the mean token loss on its
  ``eval_dataset_cfg`` (runs/train.gin's validation split).
  """

  num_microbatches: int

  def check(self, model, trainable: str, mesh: jax.sharding.Mesh) -> None: ...

  def data(self) -> DatasetConfig: ...

  def extra_params(self, model, rng: Optional[jax.Array]) -> Dict[str, Params]: ...

  def optimizer(self, optimizer: Optional[optax.GradientTransformation], abstract_params: Params,
                trainable: str, total_steps: int) -> optax.GradientTransformation: ...

  def make_step(self, model, optimizer: optax.GradientTransformation, *, trainable: str,
                dropout_seed: Optional[int], learning_rate_fn: Optional[Callable]) -> StepFn: ...

  def batches(self, start_step: int) -> Iterator[Batch]: ...

  def signature(self) -> Dict[str, Any]: ...

  def summary(self) -> str: ...


def meta_validation(loss_fn: Callable[[Params, Batch], jax.Array], batches_fn: Callable[[], Iterator[Batch]],
                    num_batches: int, mesh) -> Callable[[Params], float]:
  """params -> the mean of jitted ``loss_fn(params, batch)`` over the first `num_batches` batches of
  ``batches_fn()`` (read on the first call and kept on the host: every validation sees the same tasks)."""
  import itertools
  from promptjax.training import partitioning
  cache: list = []

  def evaluate(params) -> float:
    if not cache:
      cache.extend(itertools.islice(batches_fn(), num_batches))
      if not cache:
        raise TrainingError('The validation split has no meta-batches; check its data.')
    return float(np.mean([float(loss_fn(params, partitioning.make_global_batch(b, mesh))) for b in cache]))
  return evaluate


def masked_default_optimizer(optimizer: Optional[optax.GradientTransformation], abstract_params: Params,
                             trainable: str) -> optax.GradientTransformation:
  """`optimizer` (None: the papers' Adafactor, lr 1e-3, decay 0.8, update clipping 1.0, no parameter scaling,
  global-norm clipping 1.0) masked to the `trainable` group."""
  if optimizer is None:
    optimizer = opt_lib.adafactor(learning_rate=1e-3)
  return opt_lib.masked_optimizer(optimizer, abstract_params, trainable)


class ModelOnlyMethod:
  """Defaults for a method that trains only the model's parameters: no extra subtrees, and the user's
  optimizer (None: the papers' Adafactor) masked to the `trainable` group; no gradient accumulation."""

  num_microbatches = 1

  def extra_params(self, model, rng) -> Dict[str, Params]:
    del model, rng
    return {}

  def optimizer(self, optimizer, abstract_params, trainable, total_steps):
    del total_steps
    return masked_default_optimizer(optimizer, abstract_params, trainable)


@dataclasses.dataclass
class MultiTask(ModelOnlyMethod):
  """Multi-task learning over a seqio mixture (Wu et al. 2022 §3, App. C): every step is the gradient of the
  mean token loss of one batch, the transformer and the prompt each trained or frozen by ``trainable``
  ('transformer' for MTL-T✓P✗ / T0, 'prompt' for MTL-T✗P✓ / PPT, 'all' for MTL-T✓P✓).

  Attributes:
    dataset_cfg: the training data (``MIXTURE_OR_TASK_NAME``, ``BATCH_SIZE``, ...).
    num_microbatches: gradient accumulation over this many slices of each batch (``NUM_MICROBATCHES``).
  """
  dataset_cfg: DatasetConfig
  num_microbatches: int = 1

  def check(self, model, trainable, mesh) -> None:
    del model, trainable, mesh
    if self.num_microbatches < 1 or self.dataset_cfg.batch_size % self.num_microbatches:
      raise TrainingError(f'BATCH_SIZE={self.dataset_cfg.batch_size} is not divisible by '
                          f'num_microbatches={self.num_microbatches}.')

  def data(self) -> DatasetConfig:
    return self.dataset_cfg

  def make_step(self, model, optimizer, *, trainable, dropout_seed, learning_rate_fn) -> StepFn:
    return ts.make_train_step(model, optimizer, trainable=trainable, num_microbatches=self.num_microbatches,
                              dropout_seed=dropout_seed, learning_rate_fn=learning_rate_fn)

  def batches(self, start_step: int) -> Iterator[Batch]:
    return dataset_batches(self.dataset_cfg, start_batch=start_step)

  def abstract_batch(self, model) -> Dict[str, jax.ShapeDtypeStruct]:
    del model
    return abstract_features(self.dataset_cfg.task_feature_lengths, (self.dataset_cfg.batch_size,))

  def signature(self) -> Dict[str, Any]:
    return {}

  def summary(self) -> str:
    return ''
