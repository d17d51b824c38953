"""Meta-batches from seqio tasks / mixtures: M clones × (T support batches + 1 query batch), resumable.

One meta-step trains M clones of the prompt (`promptjax.meta.algorithms`); clone m runs T inner steps on
support batches and is evaluated on a query batch. This module reads those batches from a seqio task or
mixture (a plain Task is a mixture of one) and yields, per meta-step, one FLAT dict of numpy int32 arrays::

  'support/<feature>'  [M_local, T, b, length]   (T axis of size 1 for support_mode='same')
  'query/<feature>'    [M_local, bq, length]

for the four features of ``seqio.EncDecFeatureConverter(pack=False)`` (`FEATURES`). M_local = M /
process_count; process p makes the clones with global indices [p·M_local, (p+1)·M_local).

Which task each batch comes from (`MetaDataConfig.task_per`, `task_sampling`):

- ``task_per='batch'`` (Wu et al. 2022's ``next_batch()``): every support batch and the query batch is
  drawn from its own task by the mixture rates, each batch homogeneous (one dataset × template);
- ``task_per='clone'`` (Qin et al. 2023, "sample one source task" per iteration): one task per clone for
  all its support batches and its query.

With ``support_mode='same'`` (one support batch reused for all T steps, Wu's FOMAML code) or ``'split'``
(one draw of T·b examples split into T batches, Wu's Reptile code) the support batches of a clone share
one task either way. ``task_sampling='rate'`` uses the seqio mixture rates (``Mixture.get_rate``),
``'uniform'`` every task (rate > 0) equally.

Determinism and exact resume. The task of every batch is a pure function of (cfg, step): the draws of a
step come from ``np.random.default_rng([seed, step])`` over the global (clone, slot) grid, never from a
stateful generator, so `task_choices` needs no history and every process agrees on the global grid. The
examples come from one infinite, seeded stream per (task, split) on each process (seed derived from
``cfg.seed``, task name, split and process index), consumed in a fixed order (clone by clone; per clone
its support draws, then its query). ``meta_batches(start_step=k)`` replays the task choices of steps < k
(no data read) to count what each stream consumed and ``skip``\\ s that many examples, so its batches are
bit-identical to steps k.. of an uninterrupted run.

Streams. ``task.get_dataset(split=..., shuffle=True, seed=..., num_epochs=1)`` then ``.repeat()`` and the
feature converter. Not ``num_epochs=None``: seqio repeats *before* its shuffle buffer (1000 examples),
so with ``num_epochs=None`` a task of 300 examples mixes ~3 epochs in the buffer and consecutive
examples repeat (measured: 203 distinct examples in the first 300 of ``mini_sentiment_good_or_bad``).
With one epoch per pass every example appears once per epoch (reshuffled every epoch, deterministic from
the seed), so the consecutive draws of a clone — e.g. its support and, with ``query_split=None``, its
query — are disjoint examples unless the draw straddles an epoch boundary (or the task is smaller than
the draw: few-shot CrossFit train files hold 16–32 examples; the stream just repeats).

Resuming skips through the consumed examples of every stream (tf.data ``skip`` runs the pipeline), which
costs about as much as reading them once; the replay of the task choices itself is ~20 µs per step.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import math
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from promptjax.data import feeds
from promptjax.errors import SamplerError

FEATURES = feeds.FEATURES
SUPPORT_MODES = ('different', 'same', 'split')
TASK_PER = ('batch', 'clone')
TASK_SAMPLING = ('rate', 'uniform')
WARM_THREADS = 8   # streams opened at once when a step draws tasks not read before
READ_AHEAD = 4     # a stream reads this many draws' worth of examples at a time


@dataclasses.dataclass
class MetaDataConfig:
  """What to read for meta-training and how (see the module docstring).

  Attributes:
    mixture_or_task_name: a registered seqio task or mixture.
    task_feature_lengths: e.g. ``{'inputs': 512, 'targets': 64}``.
    meta_batch_size: M, clones per meta-step (global, over all processes).
    inner_steps: T, inner steps per clone.
    support_batch_size: b, examples per support batch.
    query_batch_size: bq, examples per query batch.
    support_split: split of the support batches (CrossFit: 'train').
    query_split: split of the query batches; None: the support split, drawn from the same per-task stream
      (consecutive, disjoint examples); Qin et al.: 'dev'.
    support_mode: 'different' (a fresh batch per inner step), 'same' (one batch reused for all T steps,
      emitted with a T axis of size 1) or 'split' (one draw of T·b examples split into T batches).
    task_per: 'batch' (every batch its own task) or 'clone' (one task per clone).
    task_sampling: 'rate' (seqio mixture rates) or 'uniform'.
    seed: the data seed (task choices and stream shuffles); a non-negative int.
    module: a module imported first to register the tasks.
    reader: 'seqio' (each stream a seqio ``Task.get_dataset``) or 'flat' (P3-format training views read as
      raw records, shuffled 1000 at a time per epoch and parsed a chunk at a time:
      `promptjax.data.flat_mixture.task_records`; the same examples, far cheaper to open and to read for
      mixtures of hundreds of templates) (``DATA_READER``).
  """
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  meta_batch_size: int = 128
  inner_steps: int = 7
  support_batch_size: int = 16
  query_batch_size: int = 16
  support_split: str = 'train'
  query_split: Optional[str] = None
  support_mode: str = 'different'
  task_per: str = 'batch'
  task_sampling: str = 'rate'
  seed: int = 0
  module: Optional[str] = 'promptjax.tasks'
  reader: str = 'seqio'

  def __post_init__(self):
    for name in ('meta_batch_size', 'inner_steps', 'support_batch_size', 'query_batch_size'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise SamplerError(f'MetaDataConfig.{name} must be a positive int, got {value!r}.')
    for name, allowed in (('support_mode', SUPPORT_MODES), ('task_per', TASK_PER),
                          ('task_sampling', TASK_SAMPLING), ('reader', feeds.READERS)):
      if getattr(self, name) not in allowed:
        raise SamplerError(f'MetaDataConfig.{name}={getattr(self, name)!r}; use one of {", ".join(allowed)}.')
    if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
      raise SamplerError(f'MetaDataConfig.seed must be a non-negative int, got {self.seed!r}.')
    missing = [k for k in ('inputs', 'targets') if k not in dict(self.task_feature_lengths)]
    if missing:
      raise SamplerError(f'MetaDataConfig.task_feature_lengths={dict(self.task_feature_lengths)!r} lacks '
                         f'{", ".join(missing)}; give both, e.g. {{"inputs": 512, "targets": 64}}.')

  @property
  def effective_query_split(self) -> str:
    return self.support_split if self.query_split is None else self.query_split

  @property
  def support_batches(self) -> int:
    """Length of the emitted support T axis: 1 for 'same', else T."""
    return 1 if self.support_mode == 'same' else self.inner_steps


# ---------------------------------------------------------------------------------------------------------
# Task choices (no data read).


def _processes(cfg: MetaDataConfig, process_index: Optional[int], process_count: Optional[int]
               ) -> Tuple[int, int]:
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise SamplerError(f'process_index={process_index} is not in [0, process_count={process_count}).')
  if cfg.meta_batch_size % process_count:
    raise SamplerError(f'meta_batch_size={cfg.meta_batch_size} is not divisible by the {process_count} '
                       f'processes; use a multiple of {process_count}.')
  return int(process_index), int(process_count)


@dataclasses.dataclass(frozen=True)
class TaskPlan:
  """The sub-tasks of the mixture with their sampling probabilities, and the per-step task draws."""
  cfg: MetaDataConfig
  tasks: Tuple  # seqio.Task, sorted by name (seqio's Mixture.tasks order)
  probs: np.ndarray

  @property
  def names(self) -> List[str]:
    return [t.name for t in self.tasks]

  def choices(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """Task indices [M_local, support_batches + 1] of step `step`: column t the task of support batch t,
    the last column the query's task."""
    cfg = self.cfg
    m, t = cfg.meta_batch_size, cfg.inner_steps
    if step < 0:
      raise SamplerError(f'step must be >= 0, got {step}.')
    u = np.random.default_rng([int(cfg.seed), int(step)]).random((m, t + 1))
    idx = np.minimum(np.searchsorted(self._cum, u, side='right'), len(self.tasks) - 1)
    if cfg.task_per == 'clone':
      idx = np.repeat(idx[:, :1], t + 1, axis=1)
    elif cfg.support_mode != 'different':  # one task for the clone's support, its own for the query
      idx = np.concatenate([np.repeat(idx[:, :1], t, axis=1), idx[:, t:]], axis=1)
    if cfg.support_mode == 'same':
      idx = idx[:, [0, t]]
    local = m // process_count
    return idx[process_index * local:(process_index + 1) * local]

  @property
  def _cum(self) -> np.ndarray:
    c = np.cumsum(self.probs)
    return c / c[-1]

  def consumed(self, num_steps: int, process_index: int = 0, process_count: int = 1
               ) -> Dict[Tuple[str, str], int]:
    """Examples each (task, split) stream of this process has yielded after `num_steps` meta-steps."""
    n = len(self.tasks)
    support = np.zeros(n, np.int64)
    query = np.zeros(n, np.int64)
    per_support = self._support_draw
    for step in range(num_steps):
      idx = self.choices(step, process_index, process_count)
      if self.cfg.support_mode == 'different':
        support += np.bincount(idx[:, :-1].ravel(), minlength=n)
      else:
        support += np.bincount(idx[:, 0], minlength=n)
      query += np.bincount(idx[:, -1], minlength=n)
    out: Dict[Tuple[str, str], int] = {}
    for i, name in enumerate(self.names):
      for split, count in ((self.cfg.support_split, support[i] * per_support),
                           (self.cfg.effective_query_split, query[i] * self.cfg.query_batch_size)):
        if count:
          out[(name, split)] = out.get((name, split), 0) + int(count)
    return out

  @property
  def _support_draw(self) -> int:
    """Examples one support draw takes: T·b for 'split', else b."""
    cfg = self.cfg
    return cfg.support_batch_size * (cfg.inner_steps if cfg.support_mode == 'split' else 1)


def task_plan(cfg: MetaDataConfig) -> TaskPlan:
  """Resolves `cfg.mixture_or_task_name` into its sub-tasks and sampling probabilities."""
  import seqio
  from promptjax.tasks import utils as task_utils
  from promptjax.tasks.config import DataError
  feeds.import_task_module(cfg.module)
  obj = task_utils.get_task_or_mixture(cfg.mixture_or_task_name)
  if isinstance(obj, seqio.Task):
    tasks, rates = [obj], [1.0]
  else:
    tasks = list(obj.tasks)
    rates = [float(obj.get_rate(t)) for t in tasks]
  bad = [(t.name, r) for t, r in zip(tasks, rates) if not math.isfinite(r) or r < 0]
  if bad:
    raise DataError(f'Mixture {cfg.mixture_or_task_name!r}: negative or non-finite rates {bad[:5]}.')
  keep = [(t, r) for t, r in zip(tasks, rates) if r > 0]
  if not keep:
    raise DataError(f'Mixture {cfg.mixture_or_task_name!r}: every task has rate 0.')
  tasks = tuple(t for t, _ in keep)
  probs = np.asarray([r for _, r in keep] if cfg.task_sampling == 'rate' else [1.0] * len(keep), np.float64)
  probs = probs / probs.sum()
  for split in {cfg.support_split, cfg.effective_query_split}:
    for t in tasks:
      splits = tuple(getattr(t, 'splits', ()) or ())
      if splits and split not in splits:
        raise DataError(f'Task {t.name!r} (in {cfg.mixture_or_task_name!r}) has no split {split!r}; its '
                        f'splits are {", ".join(splits)}.')
      if cfg.reader == 'flat':
        from promptjax.data import flat_mixture
        reason = flat_mixture.flat_reason(t, split)
        if reason:
          raise DataError(f"{cfg.mixture_or_task_name!r} cannot be read with DATA_READER='flat': {reason}. Use "
                          "DATA_READER='seqio'.")
  return TaskPlan(cfg=cfg, tasks=tasks, probs=probs)


def task_choices(cfg: MetaDataConfig, step: int, process_index: int = 0, process_count: int = 1
                 ) -> np.ndarray:
  """Task names (object array [M_local, support_batches + 1]) of this process's clones at `step`:
  ``[c, t]`` is the task of support batch t of clone c (T columns, 1 for 'same'), ``[c, -1]`` the query's.
  Reads no data."""
  process_index, process_count = _processes(cfg, process_index, process_count)
  plan = task_plan(cfg)
  return np.asarray(plan.names, dtype=object)[plan.choices(step, process_index, process_count)]


def examples_consumed(cfg: MetaDataConfig, num_steps: int, process_index: int = 0, process_count: int = 1
                      ) -> Dict[Tuple[str, str], int]:
  """{(task, split): examples} this process's streams yield in the first `num_steps` meta-steps."""
  process_index, process_count = _processes(cfg, process_index, process_count)
  return task_plan(cfg).consumed(num_steps, process_index, process_count)


# ---------------------------------------------------------------------------------------------------------
# Streams and batches.


def stream_seed(seed: int, task_name: str, split: str, process_index: int) -> int:
  """The shuffle seed of one (task, split) stream on one process (stable across runs and machines)."""
  digest = hashlib.sha256(f'{seed}/{task_name}/{split}/{process_index}'.encode()).digest()
  return int.from_bytes(digest[:4], 'little') & 0x7FFFFFFF


class _Stream:
  """An infinite stream of model-ready examples of one (task, split). Draws are multiples of `chunk`; the
  stream is read `READ_AHEAD` chunks at a time (the same examples in the same order: fewer, larger reads)."""

  def __init__(self, task, split: str, seed: int, lengths: Mapping[str, int], chunk: int, skip: int,
               reader: str = 'seqio'):
    self.task, self.split, self.seed = task, split, seed
    self.lengths, self.chunk, self.skip = dict(lengths), chunk, skip
    self.read = chunk * READ_AHEAD
    self.reader = reader
    self._it = None
    self._buf: Optional[Dict[str, np.ndarray]] = None   # read, not yet taken: {'inputs', 'targets'}

  def warm(self) -> None:
    """Opens the stream and reads its first part (streams are warmed several at a time in threads: their
    tf.data work runs outside the GIL). The examples and their order are those `take` would read."""
    if self._it is None:
      self._open()
      self._fill(1)

  def _open(self):
    import tensorflow as tf
    from promptjax.tasks import utils as task_utils
    assert self.skip % self.chunk == 0
    whole, rest = divmod(self.skip, self.read)   # skip whole parts in tf.data, the rest of one here
    if self.reader == 'flat':   # raw records in parts; one shared traced parser (no map traced per stream)
      from promptjax.data import flat_mixture
      ds = flat_mixture.task_records(self.task, self.split, self.seed, epochs_apart=True).batch(self.read)
      if whole:
        ds = ds.skip(whole)
      convert = flat_mixture.converter(self.lengths['inputs'], self.lengths['targets'])
      self._it = ({k: v.numpy() for k, v in convert(records).items()}
                  for records in task_utils.iterate(ds, self.task.name))
    else:
      ds = self.task.get_dataset(sequence_length=self.lengths, split=self.split, shuffle=True, seed=self.seed,
                                 num_epochs=1, use_cached=False)
      ds = ds.repeat()
      # seqio.EncDecFeatureConverter(pack=False)'s output is made in numpy (`feeds.model_features`) from padded
      # inputs / targets: tracing its tf.data maps cost about half of opening a stream.
      lengths = {'inputs': self.lengths['inputs'], 'targets': self.lengths['targets']}
      ds = ds.map(lambda ex: {k: ex[k][:lengths[k]] for k in lengths})
      ds = ds.padded_batch(self.read, padded_shapes={k: [n] for k, n in lengths.items()},
                           padding_values={k: tf.constant(0, ex_dtype) for k, ex_dtype in
                                           ((k, ds.element_spec[k].dtype) for k in lengths)})
      if whole:
        ds = ds.skip(whole)
      self._it = task_utils.iterate(ds, self.task.name)
    if rest:
      self._fill(rest)
      self._buf = {k: v[rest:] for k, v in self._buf.items()}

  def _fill(self, n: int) -> None:
    """Reads parts until at least `n` examples are buffered."""
    from promptjax.tasks.config import DataError
    while self._buf is None or len(self._buf['inputs']) < n:
      try:
        part = next(self._it)
      except StopIteration:
        raise DataError(f'Task {self.task.name!r} split {self.split!r} has no examples; check its data files '
                        f'or use another split.') from None
      part = {'inputs': np.asarray(part['inputs']), 'targets': np.asarray(part['targets'])}
      self._buf = part if self._buf is None or not len(self._buf['inputs']) else {
          k: np.concatenate([self._buf[k], part[k]]) for k in part}

  def take(self, n: int) -> Dict[str, np.ndarray]:
    if self._it is None:
      self._open()
    self._fill(n)
    out = {k: v[:n] for k, v in self._buf.items()}
    self._buf = {k: v[n:] for k, v in self._buf.items()}
    return feeds.model_features(out['inputs'], out['targets'])


def meta_batches(cfg: MetaDataConfig, *, start_step: int = 0, process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
  """This process's share of every meta-batch from step `start_step` on (see the module docstring)."""
  process_index, process_count = _processes(cfg, process_index, process_count)
  if start_step < 0:
    raise SamplerError(f'start_step must be >= 0, got {start_step}.')
  plan = task_plan(cfg)
  return _generate(cfg, plan, start_step, process_index, process_count)


def _generate(cfg: MetaDataConfig, plan: TaskPlan, start_step: int, process_index: int, process_count: int
              ) -> Iterator[Dict[str, np.ndarray]]:
  lengths = {'inputs': int(cfg.task_feature_lengths['inputs']),
             'targets': int(cfg.task_feature_lengths['targets'])}
  feat_len = {'encoder_input_tokens': lengths['inputs'], 'decoder_input_tokens': lengths['targets'],
              'decoder_target_tokens': lengths['targets'], 'decoder_loss_weights': lengths['targets']}
  m_local = cfg.meta_batch_size // process_count
  t_emit, b, bq = cfg.support_batches, cfg.support_batch_size, cfg.query_batch_size
  support_draw = plan._support_draw
  chunk = math.gcd(b, bq)  # every draw and hence every skip is a multiple of it
  skipped = plan.consumed(start_step, process_index, process_count) if start_step else {}
  streams: Dict[Tuple[int, str], _Stream] = {}
  qsplit = cfg.effective_query_split

  def stream(i: int, split: str) -> _Stream:
    key = (i, split)
    if key not in streams:
      task = plan.tasks[i]
      streams[key] = _Stream(task, split, stream_seed(cfg.seed, task.name, split, process_index), lengths,
                             chunk, skipped.get((task.name, split), 0), cfg.reader)
    return streams[key]

  step = start_step
  while True:
    idx = plan.choices(step, process_index, process_count)
    new = []
    for c in range(m_local):   # the streams this step opens, warmed together
      for t in range(t_emit if cfg.support_mode == 'different' else 1):
        new.append((int(idx[c, t]), cfg.support_split))
      new.append((int(idx[c, -1]), qsplit))
    new = [stream(i, split) for i, split in dict.fromkeys(new) if (i, split) not in streams or
           streams[(i, split)]._it is None]
    if len(new) > 1:
      with concurrent.futures.ThreadPoolExecutor(WARM_THREADS) as pool:
        list(pool.map(_Stream.warm, new))
    out = {}
    for k in FEATURES:
      out[f'support/{k}'] = np.empty((m_local, t_emit, b, feat_len[k]), np.int32)
      out[f'query/{k}'] = np.empty((m_local, bq, feat_len[k]), np.int32)
    for c in range(m_local):
      if cfg.support_mode == 'different':
        for t in range(t_emit):
          batch = stream(idx[c, t], cfg.support_split).take(b)
          for k in FEATURES:
            out[f'support/{k}'][c, t] = batch[k]
      else:
        batch = stream(idx[c, 0], cfg.support_split).take(support_draw)
        for k in FEATURES:
          out[f'support/{k}'][c] = batch[k].reshape(t_emit, b, feat_len[k])
      batch = stream(idx[c, -1], qsplit).take(bq)
      for k in FEATURES:
        out[f'query/{k}'][c] = batch[k]
    yield out
    step += 1


__all__ = ['FEATURES', 'MetaDataConfig', 'SamplerError', 'TaskPlan', 'examples_consumed', 'meta_batches',
           'stream_seed', 'task_choices', 'task_plan']
