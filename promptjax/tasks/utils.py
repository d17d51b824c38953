"""Looking tasks up and reading them with readable errors (model batches: `promptjax.data.feeds`)."""

from __future__ import annotations

import difflib
from typing import Iterator, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from promptjax.tasks.config import DataError


def get_task_or_mixture(name: str):
  """`seqio.get_mixture_or_task` with a `DataError` that suggests close names when `name` is unknown."""
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError as e:
    known = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f' Did you mean: {", ".join(close)}?' if close else ''
    raise DataError(
        f'No seqio task or mixture named {name!r} is registered.{hint} Registries are filled by importing '
        f'their module (promptjax.tasks registers P3, CrossFit, self-supervised text and the mini benchmark; '
        f'for your own tasks pass --gin.MIXTURE_OR_TASK_MODULE=your.module).') from e


def iterate(ds: tf.data.Dataset, name: str) -> Iterator[Mapping[str, np.ndarray]]:
  """Iterates `ds` as numpy, turning record-level failures into a `DataError` naming the task.

  A corrupted shard (`DataLossError`) or a record that does not match the schema (`InvalidArgumentError`
  from parsing) surfaces as one message naming `name` and how to find the bad file.
  """
  it = ds.as_numpy_iterator()
  while True:
    try:
      ex = next(it)
    except StopIteration:
      return
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
      msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise DataError(
          f'Task {name!r}: a malformed record ({type(e).__name__}: {msg}). Re-copy or regenerate the task '
          f'files; promptjax.tasks.utils.find_bad_records({name!r}, split) names the file and record.'
      ) from e
    yield ex


def find_bad_records(name: str, split: str = 'train', limit: int = 10):
  """[(file, record index, error)] for the first bad record of each source file of task `name`."""
  task = get_task_or_mixture(name)
  if not isinstance(task, seqio.Task) or not hasattr(task.source, 'find_bad_records'):
    raise DataError(f'{name!r}: record scanning is supported for P3-format tasks only.')
  return task.source.find_bad_records(split, limit=limit)
