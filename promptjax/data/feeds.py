"""Batches for the model from seqio tasks and mixtures: the one feature tuple, the one place task modules are
imported, and the training feed with exact resume.

Every feed yields dicts of T5X's feature names (`FEATURES`, [batch, length] int32), the batch format of
`PromptableT5.loss_fn`; SUPMER's centroid formats add `VECTOR_FEATURES`. The meta-batch feed is
`promptjax.data.meta_sampler`; SUPMER's anchor meta-tasks are read by `promptjax.supmer.tasks`.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Dict, Iterator, Mapping, Optional, Tuple

import jax
import numpy as np
import seqio

from promptjax.errors import DataError
from promptjax.tasks import utils as task_utils

FEATURES = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights')
VECTOR_FEATURES = ('encoder_input_vectors', 'encoder_input_vector_positions')


def abstract_features(task_feature_lengths: Mapping[str, int], lead_shape: Tuple[int, ...]
                      ) -> Dict[str, jax.ShapeDtypeStruct]:
  """ShapeDtypeStructs of the four model features (int32, as `seqio.EncDecFeatureConverter(pack=False)`
  makes them) with leading dimensions `lead_shape`: inputs [..., L_inputs], the rest [..., L_targets]."""
  lengths = {'encoder_input_tokens': int(task_feature_lengths['inputs'])}
  lengths.update({k: int(task_feature_lengths['targets']) for k in FEATURES[1:]})
  return {k: jax.ShapeDtypeStruct(tuple(lead_shape) + (lengths[k],), np.int32) for k in FEATURES}


def model_features(inputs: np.ndarray, targets: np.ndarray) -> Dict[str, np.ndarray]:
  """seqio.EncDecFeatureConverter(pack=False)'s features of padded inputs [n, L] and targets [n, T]:
  encoder inputs, targets, decoder inputs (targets shifted right, 0 first) and loss weights (1 on
  non-padding targets), int32."""
  targets = targets.astype(np.int32, copy=False)
  shifted = np.zeros_like(targets)
  shifted[:, 1:] = targets[:, :-1]
  return {'encoder_input_tokens': inputs.astype(np.int32, copy=False), 'decoder_input_tokens': shifted,
          'decoder_target_tokens': targets, 'decoder_loss_weights': (targets != 0).astype(np.int32)}


def import_task_module(module: Optional[str]) -> None:
  """Imports `module` to fill seqio's registries (T5X's ``MIXTURE_OR_TASK_MODULE``), with a readable error."""
  if not module:
    return
  try:
    importlib.import_module(module)
  except ModuleNotFoundError as e:
    raise DataError(f'MIXTURE_OR_TASK_MODULE={module!r} cannot be imported ({e}). Give an importable module '
                    "that registers your tasks, e.g. 'promptjax.tasks' or 'promptjax.supmer'.") from e


@dataclasses.dataclass
class DatasetConfig:
  """Which seqio task/mixture to read and how (T5X's ``utils.DatasetConfig``).

  Attributes:
    mixture_or_task_name: a registered seqio task or mixture (``MIXTURE_OR_TASK_NAME``).
    task_feature_lengths: e.g. ``{'inputs': 769, 'targets': 193}`` (``TASK_FEATURE_LENGTHS``).
    split: dataset split.
    batch_size: the global batch size (``BATCH_SIZE``), split evenly over processes.
    shuffle: shuffle the data (seeded, so resumable).
    seed: the data seed.
    module: a module to import to register the task (``MIXTURE_OR_TASK_MODULE``).
    reader: ``'seqio'`` (seqio's mixture: a pipeline per task) or ``'flat'`` (`promptjax.data.flat_mixture`:
      one pipeline for a mixture of P3-format training views, the same examples; much faster to start and
      cheaper per example for mixtures of hundreds of tasks such as ``d4_train``) (``DATA_READER``).
  """
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str = 'train'
  batch_size: int = 32
  shuffle: bool = True
  seed: Optional[int] = 0
  module: Optional[str] = 'promptjax.tasks'
  reader: str = 'seqio'


READERS = ('seqio', 'flat')


def epoch_steps(mixture_or_task_name: str, epochs: float, batch_size: int, split: str = 'train',
                module: Optional[str] = 'promptjax.tasks') -> int:
  """Training steps for `epochs` passes over the examples of a task or mixture's `split`:
  ``ceil(epochs * examples / batch_size)``, the examples counted by seqio (``num_input_examples``; a
  mixture sums its tasks). For a paper that states epochs rather than steps, so one row file is right for
  every partition: ``TRAIN_STEPS = @promptjax.data.epoch_steps()`` (e.g. Qin et al. 2023 §5.3's 20
  epochs). A mixture is sampled by its rates, so an "epoch" there is that many examples, not each once."""
  if not epochs or epochs <= 0:
    raise DataError(f'TRAIN_EPOCHS must be positive, got {epochs!r}.')
  if batch_size < 1:
    raise DataError(f'BATCH_SIZE must be positive, got {batch_size!r}.')
  import_task_module(module)
  task = task_utils.get_task_or_mixture(mixture_or_task_name)
  count = task.num_input_examples(split)
  if not count:
    raise DataError(f'{mixture_or_task_name!r} has no {split!r} examples to count (seqio num_input_examples '
                    f'is {count!r}); set TRAIN_STEPS instead of TRAIN_EPOCHS.')
  return max(1, math.ceil(epochs * count / batch_size))


def model_batches(name: str, task_feature_lengths: Mapping[str, int], batch_size: int,
                  split: str = 'train', shuffle: bool = False, seed: Optional[int] = None,
                  num_epochs: Optional[int] = 1, shard_info: Optional[seqio.ShardInfo] = None,
                  drop_remainder: bool = False, start_batch: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """Model-ready batches (`FEATURES`) of a task or mixture through seqio's `EncDecFeatureConverter` (no
  packing), skipping the first `start_batch` batches."""
  task_utils.get_task_or_mixture(name)
  ds = seqio.get_dataset(
      name, task_feature_lengths=dict(task_feature_lengths), dataset_split=split, shuffle=shuffle,
      num_epochs=num_epochs, seed=seed, shard_info=shard_info, use_cached=False,
      feature_converter=seqio.EncDecFeatureConverter(pack=False))
  ds = ds.map(lambda ex: {k: ex[k] for k in FEATURES})
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  if start_batch:
    ds = ds.skip(start_batch)
  return task_utils.iterate(ds, name)


def dataset_batches(cfg: DatasetConfig, *, start_batch: int = 0, num_epochs: Optional[int] = None,
                    process_index: Optional[int] = None, process_count: Optional[int] = None
                    ) -> Iterator[Dict[str, np.ndarray]]:
  """This process's share of each global batch of `cfg`, as numpy, starting after `start_batch` batches
  (the data pipeline is deterministic given its seed, so a resumed run continues exactly)."""
  import_task_module(cfg.module)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if cfg.batch_size % process_count:
    raise DataError(f'BATCH_SIZE={cfg.batch_size} is not divisible by the {process_count} processes.')
  if cfg.reader not in READERS:
    raise DataError(f"DATA_READER={cfg.reader!r}; use one of {', '.join(map(repr, READERS))}.")
  if cfg.reader == 'flat':
    if num_epochs is not None:
      raise DataError(f"DATA_READER='flat' repeats {cfg.mixture_or_task_name!r} forever; read a fixed number of "
                      "epochs with DATA_READER='seqio'.")
    from promptjax.data import flat_mixture
    return flat_mixture.flat_batches(
        cfg.mixture_or_task_name, cfg.task_feature_lengths, cfg.batch_size // process_count, split=cfg.split,
        shuffle=cfg.shuffle, seed=cfg.seed, start_batch=start_batch, process_index=process_index,
        process_count=process_count)
  shard_info = seqio.ShardInfo(process_index, process_count) if process_count > 1 else None
  return model_batches(cfg.mixture_or_task_name, cfg.task_feature_lengths, cfg.batch_size // process_count,
                       split=cfg.split, shuffle=cfg.shuffle, seed=cfg.seed, num_epochs=num_epochs,
                       shard_info=shard_info, drop_remainder=True, start_batch=start_batch)
