"""One tf.data pipeline for a mixture of many P3-format tasks (``DatasetConfig.reader = 'flat'``).

seqio builds a mixture as one complete pipeline per task (read, parse, preprocess, shuffle 1000 examples,
prefetch) joined by ``sample_from_datasets``. With the 313 templates of Wu et al. 2022's ``d4_train`` that
costs about half a minute of graph building and another minute of filling 313 shuffle buffers of parsed
examples before the first batch, and ~10x the CPU per example of one task (`benchmarks/input_pipeline.py`).
This reader makes the same examples with one pipeline:

1. per task, its TFRecord files read as raw records, shuffled in a buffer of `TASK_SHUFFLE_BUFFER` (seqio's
   per-task default, 1000) *serialized* records, repeated, and tagged with the task's index;
2. ``tf.data.Dataset.sample_from_datasets`` with the mixture's rates (``Mixture.get_rate``, as seqio);
3. per batch, one vectorized ``tf.io.parse_example`` and the tasks' preprocessing done on the whole batch
   (`p3.training_view`'s target EOS strip, then seqio's ``append_eos_after_trim``), padded to the
   feature lengths, and seqio ``EncDecFeatureConverter(pack=False)``'s features.

It reads a mixture whose every task is a P3-format training view (`promptjax.tasks.p3.P3DataSource` with
the preprocessors ``[training_view, append_eos_after_trim]``, no ``*_score_eval`` records): the examples
are the ones seqio's pipeline makes (`tests/data/test_flat_mixture.py` compares them), drawn in another
(seeded, deterministic) order. `flat_reason` says why a mixture is not readable this way.

Several hosts: a task with at least as many files as hosts gives each host its files ``[p::hosts]``.
With fewer files, every host reads the task's records in file order and keeps every ``hosts``-th *before*
parsing (seqio's fallback keeps 1/hosts of fully preprocessed examples); either way the hosts' examples
are disjoint. A warning names the fix (``python -m promptjax.tasks.p3_convert convert --num_shards N``).
The task draws fold the process index into the seed, so hosts draw different task sequences (seqio's
mixture draws the same sequence on every host).

Resume is exact: the pipeline is a deterministic function of the seed, and ``start_batch`` skips batches.
"""

from __future__ import annotations

import functools
import logging
from typing import Dict, Iterator, Mapping, Optional

import numpy as np

from promptjax.errors import DataError

TASK_SHUFFLE_BUFFER = 1000   # seqio.Task's default shuffle_buffer_size, per task
_FILE_ORDER_PASSES = 64          # file orders drawn per task before they cycle
_warned = set()


def _tasks_and_rates(obj) -> tuple:
  import seqio
  if isinstance(obj, seqio.Task):
    return [obj], [1.0]
  tasks = list(obj.tasks)
  return tasks, [float(obj.get_rate(t)) for t in tasks]


def flat_reason(obj, split: str = 'train') -> Optional[str]:
  """None if the task or mixture `obj` can be read by this module, else why not (one sentence)."""
  import seqio
  from promptjax.tasks import p3
  tasks, _ = _tasks_and_rates(obj)
  for task in tasks:
    if not isinstance(task.source, p3.P3DataSource):
      return f'task {task.name!r} is not a P3-format task'
    if list(task.preprocessors) != [p3.training_view, seqio.preprocessors.append_eos_after_trim]:
      return f'task {task.name!r} is not a P3 training view (its preprocessors differ)'
    feats = task.output_features
    if set(feats) != {'inputs', 'targets'} or not all(f.add_eos for f in feats.values()):
      return f'task {task.name!r} does not have T5\'s inputs/targets features with EOS'
    if 'is_correct' in task.source.features(split):
      return f'task {task.name!r} holds *_score_eval records (one per answer choice)'
  return None


def _warn_once(key, msg: str) -> None:
  if key not in _warned:
    _warned.add(key)
    logging.warning(msg)


def task_records(task, split: str, task_seed: Optional[int], *, shuffle: bool = True, process_index: int = 0,
                 process_count: int = 1, buffer_size: int = TASK_SHUFFLE_BUFFER, epochs_apart: bool = False):
  """This host's serialized records of one P3-format task, shuffled (`task_seed`) and repeated forever.

  With `epochs_apart` every pass is shuffled on its own (the buffer never mixes two passes, as the meta
  sampler's seqio streams read one epoch at a time); otherwise seqio's mixture order (repeat, then shuffle).
  """
  import tensorflow as tf
  files = list(task.source.list_shards(split))
  if process_count > 1 and len(files) < process_count:
    _warn_once(('files', split, process_count),
               f'P3 task {task.name!r} (and maybe others) has {len(files)} file(s) for {process_count} hosts: '
               f'each host reads all of its records and parses 1/{process_count}. Reshard the data so every '
               f'host reads only its own files: python -m promptjax.tasks.p3_convert convert --input_dir '
               f'<P3 data> --output_dir <new dir> --num_shards {process_count}')
    ds = tf.data.TFRecordDataset(files).shard(process_count, process_index)
  else:
    if process_count > 1:
      files = files[process_index::process_count]
    if shuffle and len(files) > 1:   # a new file order every pass (numpy-made: no traced function per task);
      rng = np.random.default_rng(task_seed)   # one order for passes kept apart (each a dataset epoch)
      files = [f for _ in range(1 if epochs_apart else _FILE_ORDER_PASSES) for f in rng.permutation(files)]
    ds = tf.data.TFRecordDataset(files)
  if shuffle and epochs_apart:
    return ds.shuffle(buffer_size, seed=task_seed, reshuffle_each_iteration=True).repeat()
  ds = ds.repeat()
  return ds.shuffle(buffer_size, seed=task_seed) if shuffle else ds


@functools.lru_cache(maxsize=None)
def converter(inputs_length: int, targets_length: int):
  """`records_to_examples` as one traced ``tf.function`` per pair of lengths, shared by every stream (the
  meta sampler calls it on each chunk of raw records instead of tracing a ``map`` per task stream)."""
  import tensorflow as tf
  fn = records_to_examples({'inputs': inputs_length, 'targets': targets_length})
  return tf.function(fn, input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)


def records_to_examples(lengths: Mapping[str, int]):
  """A tf function: a batch of serialized P3 records -> ``{'inputs', 'targets'}`` int32 [batch, length],
  the training view's examples after seqio's ``append_eos_after_trim``, zero-padded."""
  import tensorflow as tf
  description = {'inputs': tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64),
                 'targets': tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)}

  def convert(records):
    ex = tf.io.parse_example(records, description)
    return {'inputs': _trim_eos(ex['inputs'], int(lengths['inputs']), strip_eos=False),
            'targets': _trim_eos(ex['targets'], int(lengths['targets']), strip_eos=True)}
  return convert


def _trim_eos(ragged, length: int, strip_eos: bool, eos_id: int = 1):
  """[batch, length] int32: rows of `ragged` without a trailing EOS (if `strip_eos`), cut to length - 1,
  EOS appended, zero-padded (`p3.training_view` then seqio's ``append_eos_after_trim``)."""
  import tensorflow as tf
  if strip_eos:
    lengths = ragged.row_lengths()
    values = tf.concat([ragged.flat_values, tf.constant([-1], ragged.dtype)], 0)   # -1: an empty row's "last"
    last = tf.gather(values, tf.where(lengths > 0, ragged.row_limits() - 1,
                                      tf.size(ragged.flat_values, out_type=lengths.dtype)))
    drop = tf.equal(last, eos_id)
    keep = tf.ragged.range(lengths) < tf.expand_dims(lengths - tf.cast(drop, lengths.dtype), 1)
    ragged = tf.ragged.boolean_mask(ragged, keep)
  ragged = ragged[:, :length - 1]
  eos = tf.ones_like(ragged.row_lengths(), dtype=ragged.dtype)[:, None] * eos_id
  ragged = tf.concat([ragged, tf.RaggedTensor.from_tensor(eos, row_splits_dtype=ragged.row_splits.dtype)], axis=1)
  return tf.cast(ragged.to_tensor(0, shape=[None, length]), tf.int32)


def flat_batches(name: str, task_feature_lengths: Mapping[str, int], batch_size: int, *, split: str = 'train',
                 shuffle: bool = True, seed: Optional[int] = 0, start_batch: int = 0, process_index: int = 0,
                 process_count: int = 1, buffer_size: int = TASK_SHUFFLE_BUFFER,
                 with_task_index: bool = False) -> Iterator[Dict[str, np.ndarray]]:
  """This host's batches of `batch_size` examples of mixture (or task) `name`, forever, as model features
  (`promptjax.data.feeds.FEATURES`); with `with_task_index` also ``'task_index'`` [batch] (the index of
  each example's task in the mixture's ``tasks``)."""
  import tensorflow as tf
  from promptjax.data.feeds import model_features
  from promptjax.data.meta_sampler import stream_seed
  from promptjax.tasks import utils as task_utils
  obj = task_utils.get_task_or_mixture(name)
  reason = flat_reason(obj, split)
  if reason:
    raise DataError(f'{name!r} cannot be read by the flat mixture reader: {reason}. Use the seqio reader '
                    "(--gin.DATA_READER='seqio').")
  tasks, rates = _tasks_and_rates(obj)
  keep = [i for i, r in enumerate(rates) if r > 0]
  if not keep:
    raise DataError(f'Mixture {name!r}: every task has rate 0.')
  lengths = {'inputs': int(task_feature_lengths['inputs']), 'targets': int(task_feature_lengths['targets'])}

  def tagged(i):
    task = tasks[i]
    task_seed = None if seed is None else stream_seed(seed, task.name, split, process_index)
    ds = task_records(task, split, task_seed, shuffle=shuffle, process_index=process_index,
                      process_count=process_count, buffer_size=buffer_size)
    return tf.data.Dataset.zip(tf.data.Dataset.from_tensors(tf.constant(i, tf.int32)).repeat(), ds)

  streams = [tagged(i) for i in keep]
  weights = np.asarray([rates[i] for i in keep], np.float64)
  mix_seed = None if seed is None else stream_seed(seed, name, split + '/mixture', process_index)
  if len(streams) == 1:
    ds = streams[0]
  else:
    ds = tf.data.Dataset.sample_from_datasets(streams, weights=list(weights / weights.sum()), seed=mix_seed)
  to_examples = records_to_examples(lengths)

  def convert(index, records):
    return {'task_index': index, **to_examples(records)}

  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if start_batch:
    ds = ds.skip(start_batch)
  ds = ds.prefetch(2)
  for batch in task_utils.iterate(ds, name):
    out = model_features(batch['inputs'], batch['targets'])
    if with_task_index:
      out['task_index'] = batch['task_index']
    yield out


__all__ = ['TASK_SHUFFLE_BUFFER', 'flat_batches', 'flat_reason', 'records_to_examples', 'task_records']
