"""SUPMER anchor meta-tasks as seqio Tasks, and the meta-batch sampler that feeds the SUPMER algorithm.

SUPMER (Pan et al. 2023, §3.2, App. A.2, Alg. 1–2, Table 6) meta-trains a soft prompt on
*anchor* meta-tasks built offline from unlabeled text by `promptjax.supmer.construct` (a Beam
pipeline: sentences → T5-encoder embeddings → K-means → five formats → tasks). This module reads its output
directory (data family ``supmer``: ``PROMPTJAX_SUPMER_DIR`` / ``set_data_dir('supmer', ...)`` /
``configure_data.supmer_dir``)::

  manifest.json                       formats, counts per label, tasks, K, the construction config
  centroids.npy                       [K, d] float32 K-means centroids
  <format>/<split>-SSSSS-of-NNNNN.tfrecord    tf.train.Example records, one per sample

Formats (`FORMAT_NAMES`; SUPMER Eq. 17–19, verbalizers in `VERBALIZERS`):

  ``nsp_yes_maybe_no``      (a) sentence pair, next / same document / other document (PPT NSP)
  ``sp_same_cluster``       (b) sentence pair, same cluster yes / no
  ``mc_next_segment``       (c) multiple choice, the next sentence among 4 (PPT next sentence selection)
  ``mc_same_cluster``       (d) multiple choice, the sentence of the anchor's cluster among 4
  ``cls_cluster_centroid``  (e) single sentence, 4-way: which centroid is the sentence's cluster

Targets are ``<extra_id_0> <word>`` (the construction's default ``target_style='mask'``: V(y) at the
template's ⟨X⟩, Eq. 1 and 17-19), the form of the downstream targets of `promptjax.supmer.datasets`.

Record features: ``inputs_pretokenized``, ``targets_pretokenized``, ``answer_choices``, ``meta_task``
(string id), ``role`` (``support`` / ``query``), ``format``, ``label`` (index into answer_choices),
``anchor`` and ``anchor_cluster`` (the anchor sentence and its K-means cluster), and for (e)
``option_clusters`` [4], ``encoder_input_vectors`` [4·d] (the centroids of the options, A..D) and
``encoder_input_vector_positions`` [4] (their token positions in the tokenized inputs, no EOS; each holds
the placeholder token `VECTOR_PLACEHOLDER`, whose embedding the model replaces by the vector, see
`promptjax.models.t5.insert_input_vectors`).

Tasks. `register_supmer_tasks` registers one seqio Task per format, ``<prefix>_<format>`` (default
``supmer_*`` on vocabulary ``t5`` and ``mini_supmer_*`` on vocabulary ``mini``, both over
``get_data_dir('supmer')``; the manifest names the vocabulary the positions were computed with and a task
of another vocabulary refuses to read it). Preprocessors: rekey ``inputs``/``targets`` from the
pretokenized text, tokenize, append EOS after trim; every other feature passes through.

Meta-batches. `supmer_meta_batches(cfg)` (`SupmerDataConfig`) yields, per meta-step, one FLAT dict of
numpy arrays::

  'support/<f>'    [M, S, ...]      the support set of task τ_i
  'query/<f>'      [M, Q, ...]      its query set
  'mix_query/<f>'  [M, Q, ...]      the query set of another task τ_j ~ p(T) (Alg. 2 line 8)

for f in ``encoder_input_tokens`` [.., L], ``decoder_input_tokens`` / ``decoder_target_tokens`` /
``decoder_loss_weights`` [.., T] (int32, exactly as ``seqio.EncDecFeatureConverter(pack=False)`` makes
them), ``encoder_input_vectors`` float32 [.., V=4, d] (zeros where unused) and
``encoder_input_vector_positions`` int32 [.., V] (-1 where unused, also where truncation to L cut the
placeholder off). M = ``meta_batch_size`` (Table 6: 4). p(T) is uniform over the tasks of the selected
``formats`` (all five by default; one format = the "only one format" ablation of Table 4), or with
``task_sampling='per_format'`` uniform over formats, then over that format's tasks. τ_j ≠ τ_i. The
choices of step k come from ``numpy.random.default_rng([seed, k])`` (as `promptjax.data.meta_sampler`), so a
run resumes exactly with ``start_step``. ``SupmerDataConfig.storage``: all examples of the split read once
(converted) into memory, or, for corpora larger than memory, an index of where each record is, the drawn
tasks' records read and converted at each step (the same meta-batches). The index is the one the
construction saves beside each format's shards (``<format>/<split>.index.npy`` and ``.json``, `write_index`)
when it matches them, so a run starts without reading the corpus; otherwise the run builds it by reading
every record once.

Public API: `FORMAT_NAMES`, `VERBALIZERS`, `VECTOR_PLACEHOLDER`, `register_supmer_tasks`,
`SupmerDataConfig`, `supmer_meta_batches`, `load_manifest`, `SupmerSource`, `write_index`, `write_indexes`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import seqio

from promptjax.data import feeds
from promptjax.tasks import config
from promptjax.tasks.config import DataError

log = logging.getLogger(__name__)

FORMAT_NAMES = ('nsp_yes_maybe_no', 'sp_same_cluster', 'mc_next_segment', 'mc_same_cluster',
                'cls_cluster_centroid')
VECTOR_FORMAT = 'cls_cluster_centroid'
LETTERS = ('A', 'B', 'C', 'D')
VERBALIZERS = {
    'nsp_yes_maybe_no': ('yes', 'no', 'maybe'),
    'sp_same_cluster': ('yes', 'no'),
    'mc_next_segment': LETTERS,
    'mc_same_cluster': LETTERS,
    'cls_cluster_centroid': LETTERS,
}
VECTOR_PLACEHOLDER = '<extra_id_99>'
NUM_VECTORS = 4
SPLITS = ('train', 'validation')
ROLES = ('support', 'query')
MODEL_FEATURES = feeds.FEATURES
VECTOR_FEATURES = feeds.VECTOR_FEATURES
MANIFEST = 'manifest.json'
CONSTRUCT_HINT = ('python -m promptjax.supmer.construct --corpus_dir=... --output_dir=DIR, then '
                  f'{config.ENV_VARS["supmer"]}=DIR (or promptjax.tasks.set_data_dir("supmer", DIR))')


def shard_pattern(root: str, fmt: str, split: str) -> str:
  """The glob of one format's split in a construction: ``<root>/<format>/<split>-*.tfrecord``."""
  return f'{root.rstrip("/")}/{fmt}/{split}-*.tfrecord'


def load_manifest(root: str, task: str = 'supmer') -> dict:
  """The construction manifest of ``root``; a `DataError` naming the fix when it is missing."""
  import tensorflow as tf
  if not tf.io.gfile.isdir(root):
    raise DataError(f'Task {task!r}: SUPMER data directory {root} does not exist. Build it with {CONSTRUCT_HINT}.')
  path = f'{root.rstrip("/")}/{MANIFEST}'
  if not tf.io.gfile.exists(path):
    raise DataError(f'Task {task!r}: {root} has no {MANIFEST}, so it is not (or not yet completely) the output of '
                    f'the SUPMER construction. Build it with {CONSTRUCT_HINT}.')
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def placeholder_id(vocab) -> int:
  """The id of `VECTOR_PLACEHOLDER` (one sentinel piece) in a seqio vocabulary with extra ids."""
  ids = list(vocab.encode(VECTOR_PLACEHOLDER))
  if len(ids) != 1:
    raise DataError(f'{VECTOR_PLACEHOLDER} is not one piece of vocabulary {vocab} (got {ids}); it needs seqio '
                    f'extra ids (100, as promptjax.tasks.config.get_vocabulary gives).')
  return ids[0]


def _default_dir() -> str:
  return config.get_data_dir('supmer')


class SupmerSource(seqio.DataSource):
  """One format's records from ``<data_dir_fn()>/<format>/<split>-*.tfrecord`` (resolved when read)."""

  def __init__(self, fmt: str, data_dir_fn: Callable[[], str], task_name: str, vocab_name: str):
    if fmt not in FORMAT_NAMES:
      raise ValueError(f'unknown SUPMER format {fmt!r}; formats: {FORMAT_NAMES}')
    self.fmt, self.data_dir_fn, self.task_name, self.vocab_name = fmt, data_dir_fn, task_name, vocab_name
    super().__init__(splits=SPLITS, num_input_examples=None, caching_permitted=True)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def root(self) -> str:
    try:
      return self.data_dir_fn()
    except DataError as e:
      raise DataError(f'Task {self.task_name!r}: {e} Build the data with {CONSTRUCT_HINT}.') from None

  def manifest(self) -> dict:
    m = load_manifest(self.root(), self.task_name)
    if m.get('vocab_name') != self.vocab_name:
      raise DataError(f'Task {self.task_name!r} uses vocabulary {self.vocab_name!r}, but {self.root()} was built '
                      f'with {m.get("vocab_name")!r} (its vector positions index that tokenization). Use the '
                      f'tasks of that vocabulary or rebuild with --vocab_name={self.vocab_name}.')
    return m

  def list_shards(self, split: str) -> Sequence[str]:
    import tensorflow as tf
    if split not in SPLITS:
      raise DataError(f'Task {self.task_name!r}: unknown split {split!r}; splits are {SPLITS}.')
    m = self.manifest()
    if self.fmt not in m['formats']:
      raise DataError(f'Task {self.task_name!r}: {self.root()} was built without format {self.fmt!r} '
                      f'(formats: {", ".join(m["formats"])}); rebuild with it or use another format.')
    pattern = shard_pattern(self.root(), self.fmt, split)
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
      raise DataError(f'Task {self.task_name!r}: no files {pattern}; the construction output is incomplete. '
                      f'Rebuild it with {CONSTRUCT_HINT}.')
    return files

  def feature_description(self, dim: int):
    import tensorflow as tf
    desc = {
        'inputs_pretokenized': tf.io.FixedLenFeature([], tf.string),
        'targets_pretokenized': tf.io.FixedLenFeature([], tf.string),
        'answer_choices': tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True),
        'meta_task': tf.io.FixedLenFeature([], tf.string),
        'role': tf.io.FixedLenFeature([], tf.string),
        'format': tf.io.FixedLenFeature([], tf.string),
        'label': tf.io.FixedLenFeature([], tf.int64),
        'anchor': tf.io.FixedLenFeature([], tf.string),
        'anchor_cluster': tf.io.FixedLenFeature([], tf.int64),
    }
    if self.fmt == VECTOR_FORMAT:
      desc.update({
          'option_clusters': tf.io.FixedLenFeature([NUM_VECTORS], tf.int64),
          'encoder_input_vectors': tf.io.FixedLenFeature([NUM_VECTORS, dim], tf.float32),
          'encoder_input_vector_positions': tf.io.FixedLenFeature([NUM_VECTORS], tf.int64),
      })
    return desc

  def get_dataset(self, split: str = 'train', shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1):
    import tensorflow as tf
    files = list(self.list_shards(split))
    if shard_info is not None and shard_info.num_shards > 1:
      files = files[shard_info.index::shard_info.num_shards]
    desc = self.feature_description(int(self.manifest()['embedding_dim']))
    ds = tf.data.Dataset.from_tensor_slices(np.asarray(files, dtype=str))
    if shuffle:
      ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=4, deterministic=True)

    def parse(record):
      ex = tf.io.parse_single_example(record, desc)
      for k in ('label', 'anchor_cluster', 'option_clusters', 'encoder_input_vector_positions'):
        if k in ex:
          ex[k] = tf.cast(ex[k], tf.int32)
      return ex

    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _rekey(dataset):
  def f(ex):
    ex = dict(ex)
    ex['inputs'] = ex['inputs_pretokenized']
    ex['targets'] = ex['targets_pretokenized']
    return ex
  return dataset.map(f)


def register_supmer_tasks(name_prefix: str = 'supmer', data_dir_fn: Callable[[], str] = _default_dir,
                          vocab_name: str = 't5', formats: Sequence[str] = FORMAT_NAMES,
                          shuffle_buffer_size: int = 10_000) -> Dict[str, seqio.Task]:
  """Registers ``f'{name_prefix}_{format}'`` per format over ``data_dir_fn()`` (read lazily)."""
  tasks = {}
  for fmt in formats:
    name = f'{name_prefix}_{fmt}'
    seqio.TaskRegistry.remove(name)
    tasks[fmt] = seqio.TaskRegistry.add(
        name, source=SupmerSource(fmt, data_dir_fn, name, vocab_name),
        preprocessors=[_rekey, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=config.output_features(vocab_name), metric_fns=[],
        shuffle_buffer_size=shuffle_buffer_size)
  return tasks


# ---------------------------------------------------------------------------------------------------
# Meta-batches.

TASK_SAMPLING = ('uniform', 'per_format')
STORAGES = ('auto', 'memory', 'index')
MEMORY_LIMIT_BYTES = 1 << 30   # storage='auto': a format's files up to this size are held in memory


@dataclasses.dataclass
class SupmerDataConfig:
  """What `supmer_meta_batches` reads (see the module docstring).

  Attributes:
    task_feature_lengths: ``{'inputs': L, 'targets': T}`` (Table 6: max sequence length 512).
    meta_batch_size: M, tasks per meta-step (Table 6: 4).
    formats: formats p(T) covers (None: every format of the manifest).
    task_prefix: ``supmer`` (vocabulary t5) or ``mini_supmer`` (vocabulary mini).
    split: ``train`` or ``validation``.
    task_sampling: ``uniform`` over tasks, or ``per_format`` (uniform format, then task).
    seed: the seed of the task choices.
    module: imported first to register the tasks.
    storage: ``memory`` (every example of the split read, converted, into memory once), ``index`` (an index
      of the records' places, each task's records read and converted when it is drawn: memory bounded by
      the index, ~40 bytes a record, for corpora larger than memory) or ``auto`` (``memory`` while a
      format's files are under `MEMORY_LIMIT_BYTES`). Both give the same meta-batches.
  """
  task_feature_lengths: Mapping[str, int] = dataclasses.field(
      default_factory=lambda: {'inputs': 512, 'targets': 8})
  meta_batch_size: int = 4
  formats: Optional[Sequence[str]] = None
  task_prefix: str = 'supmer'
  split: str = 'train'
  task_sampling: str = 'uniform'
  seed: int = 0
  module: Optional[str] = 'promptjax.tasks'
  storage: str = 'auto'

  def __post_init__(self):
    if self.storage not in STORAGES:
      raise DataError(f'SupmerDataConfig.storage={self.storage!r}; use one of {STORAGES}.')
    if not isinstance(self.meta_batch_size, int) or self.meta_batch_size < 1:
      raise DataError(f'SupmerDataConfig.meta_batch_size must be a positive int, got {self.meta_batch_size!r}.')
    if self.task_sampling not in TASK_SAMPLING:
      raise DataError(f'SupmerDataConfig.task_sampling={self.task_sampling!r}; use one of {TASK_SAMPLING}.')
    if self.split not in SPLITS:
      raise DataError(f'SupmerDataConfig.split={self.split!r}; use one of {SPLITS}.')
    unknown = [f for f in (self.formats or ()) if f not in FORMAT_NAMES]
    if unknown:
      raise DataError(f'SupmerDataConfig.formats has unknown format(s) {unknown}; formats: {FORMAT_NAMES}.')
    missing = [k for k in ('inputs', 'targets') if k not in dict(self.task_feature_lengths)]
    if missing:
      raise DataError(f'SupmerDataConfig.task_feature_lengths lacks {missing}; e.g. {{"inputs": 512, "targets": 8}}.')


@dataclasses.dataclass
class _FormatData:
  arrays: Dict[str, np.ndarray]       # feature -> [n, ...]
  tasks: List[Tuple[str, np.ndarray, np.ndarray]]  # (meta_task, support rows, query rows)

  def rows(self, t: int, role: str) -> Dict[str, np.ndarray]:
    idx = self.tasks[t][1 if role == 'support' else 2]
    return {k: v[idx] for k, v in self.arrays.items()}


def _vector_features(toks: np.ndarray, pos, vec, placeholder: int, n: int, dim: int):
  """(encoder_input_vectors [n, V, d], encoder_input_vector_positions [n, V]) of converted inputs `toks`:
  the records' vectors and positions, or zeros / -1 where a record has none or truncation cut the
  placeholder off (EOS took its place)."""
  if pos is None:
    return np.zeros((n, NUM_VECTORS, dim), np.float32), np.full((n, NUM_VECTORS), -1, np.int32)
  pos = np.asarray(pos, np.int32).copy()
  vec = np.asarray(vec, np.float32).reshape(n, NUM_VECTORS, dim).copy()
  L = toks.shape[1]
  at = np.take_along_axis(toks, np.clip(pos, 0, L - 1), axis=1)
  cut = (pos < 0) | (pos >= L) | (at != placeholder)
  pos[cut] = -1
  vec[cut] = 0.0
  return vec, pos


def _scan_records(files: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, List[str]]:
  """Every record of `files` in reading order: (where [N, 3] int64: shard, data offset, data length;
  meta [N, 2] int64: meta-task number, role (0 support, 1 query); the meta-task names, sorted, that the
  numbers index). Reads every byte once (TFRecord framing: length (8), its CRC (4), data, data CRC (4))."""
  import tensorflow as tf
  meta_desc = {'meta_task': tf.io.FixedLenFeature([], tf.string), 'role': tf.io.FixedLenFeature([], tf.string)}
  where, tasks, roles = [], [], []

  def flush(chunk):
    if chunk:
      ex = tf.io.parse_example(chunk, meta_desc)
      tasks.extend(t.decode() for t in ex['meta_task'].numpy())
      roles.extend(r.decode() for r in ex['role'].numpy())
      chunk.clear()

  chunk: List[bytes] = []
  for fi, path in enumerate(files):
    with tf.io.gfile.GFile(path, 'rb') as f:
      offset = 0
      while True:
        head = f.read(12)
        if len(head) < 12:
          break
        n = int.from_bytes(head[:8], 'little')
        chunk.append(f.read(n))
        f.read(4)
        where.append((fi, offset + 12, n))
        offset += 16 + n
        if len(chunk) == 4096:
          flush(chunk)
  flush(chunk)
  names = sorted(set(tasks))
  number = {t: i for i, t in enumerate(names)}
  bad = sorted(set(roles) - {'support', 'query'})
  if bad:
    raise DataError(f'{os.path.dirname(files[0])}: records with role(s) {bad}; the construction writes support '
                    f'and query only. Rebuild it ({CONSTRUCT_HINT}).')
  meta = np.asarray([(number[t], r == 'query') for t, r in zip(tasks, roles)], np.int64).reshape(-1, 2)
  return np.asarray(where, np.int64).reshape(-1, 3), meta, names


def _index_paths(files: Sequence[str], split: str) -> Tuple[str, str]:
  """The saved record index of a format's split: ``<format>/<split>.index.npy`` (where and meta, [N, 5]) and
  ``<format>/<split>.index.json`` (the shards it indexes, with their sizes, and the meta-task names)."""
  base = f'{os.path.dirname(files[0])}/{split}.index'
  return base + '.npy', base + '.json'


def _shard_sizes(files: Sequence[str]) -> List[List[object]]:
  import tensorflow as tf
  return [[os.path.basename(p), int(tf.io.gfile.stat(p).length)] for p in files]


def write_index(files: Sequence[str], split: str) -> str:
  """Scans `files` (one format's `split` shards) and saves their record index beside them, so a run with
  ``storage='index'`` starts without reading the data; returns the .npy path."""
  import tensorflow as tf
  where, meta, names = _scan_records(files)
  npy, meta_json = _index_paths(files, split)
  buf = io.BytesIO()
  np.save(buf, np.concatenate([where, meta], axis=1))
  for path, content, mode in ((npy, buf.getvalue(), 'wb'),
                              (meta_json, json.dumps({'shards': _shard_sizes(files), 'tasks': names}, indent=0), 'w')):
    with tf.io.gfile.GFile(path + '.tmp', mode) as f:   # a reader starting meanwhile never sees half a file
      f.write(content)
    tf.io.gfile.rename(path + '.tmp', path, overwrite=True)
  return npy


def write_indexes(output_dir: str) -> List[str]:
  """`write_index` for every format and split of the construction in `output_dir`."""
  import tensorflow as tf
  manifest = load_manifest(output_dir, 'SUPMER construction')
  out = []
  for fmt in manifest['formats']:
    for split in SPLITS:
      files = sorted(tf.io.gfile.glob(shard_pattern(output_dir, fmt, split)))
      if files:
        out.append(write_index(files, split))
  return out


def _load_index(files: Sequence[str], split: str) -> Optional[Tuple[np.ndarray, np.ndarray, List[str]]]:
  """The saved index of `files` as `_scan_records` gives it, or None when there is none or it indexes other
  shards (names or sizes differ: a rebuilt construction)."""
  import tensorflow as tf
  if not files:
    return None
  npy, meta_json = _index_paths(files, split)
  if not (tf.io.gfile.exists(npy) and tf.io.gfile.exists(meta_json)):
    return None
  with tf.io.gfile.GFile(meta_json) as f:
    info = json.load(f)
  if info.get('shards') != _shard_sizes(files):
    log.warning('The record index %s is of other shards than %s holds now; indexing them again (python -m '
                'promptjax.supmer.construct --write_index --output_dir=... saves a new one).', npy,
                os.path.dirname(files[0]))
    return None
  with tf.io.gfile.GFile(npy, 'rb') as f:
    table = np.load(io.BytesIO(f.read()))
  return table[:, :3], table[:, 3:], list(info['tasks'])


class _IndexedFormat:
  """One format and split as an index of its records (file, offset, length; grouped by meta-task and role in
  reading order); `rows` reads and converts a task's support or query records when it is drawn, as
  seqio's pipeline of the task would (tokenize, EOS after trim, `EncDecFeatureConverter(pack=False)`). The
  index is the one saved beside the shards (`write_index`; the construction writes it) when it matches
  them, else built by reading every record once."""

  def __init__(self, task: seqio.Task, split: str, lengths: Mapping[str, int], dim: int):
    self.task, self.lengths, self.dim = task, dict(lengths), dim
    self.files = list(task.source.list_shards(split))
    self.desc = task.source.feature_description(dim)
    self.vocab = task.output_features['inputs'].vocabulary
    self.placeholder = placeholder_id(self.vocab)
    saved = _load_index(self.files, split)
    self.where, meta, names = saved if saved is not None else _scan_records(self.files)
    # Each task's support, then query, records in reading order (a stable sort by task and role).
    order = np.argsort(meta[:, 0] * 2 + meta[:, 1], kind='stable')
    bounds = np.searchsorted(meta[order, 0] * 2 + meta[order, 1], np.arange(2 * len(names) + 1))
    self.tasks = [(t, order[bounds[2 * i]:bounds[2 * i + 1]], order[bounds[2 * i + 1]:bounds[2 * i + 2]])
                  for i, t in enumerate(names)]
    self._handles: Dict[int, object] = {}

  def _read(self, idx: np.ndarray) -> List[bytes]:
    import tensorflow as tf
    out = []
    for fi, offset, n in self.where[idx]:
      f = self._handles.get(int(fi))
      if f is None:
        f = self._handles[int(fi)] = tf.io.gfile.GFile(self.files[int(fi)], 'rb')
      f.seek(int(offset))
      out.append(f.read(int(n)))
    return out

  def close(self) -> None:
    """Closes the shard files opened by `rows` (a later `rows` opens them again)."""
    handles, self._handles = self._handles, {}
    for f in handles.values():
      f.close()

  def rows(self, t: int, role: str) -> Dict[str, np.ndarray]:
    import tensorflow as tf
    idx = self.tasks[t][1 if role == 'support' else 2]
    ex = tf.io.parse_example(self._read(idx), self.desc)
    n = len(idx)

    def ids(key, length):
      out = np.zeros((n, length), np.int32)
      for i, text in enumerate(ex[key].numpy()):
        row = list(self.vocab.encode(text.decode()))[:length - 1] + [self.vocab.eos_id]
        out[i, :len(row)] = row
      return out

    feats = feeds.model_features(ids('inputs_pretokenized', self.lengths['inputs']),
                            ids('targets_pretokenized', self.lengths['targets']))
    has = 'encoder_input_vectors' in ex
    vec, pos = _vector_features(feats['encoder_input_tokens'],
                                ex['encoder_input_vector_positions'].numpy() if has else None,
                                ex['encoder_input_vectors'].numpy() if has else None, self.placeholder, n, self.dim)
    feats['encoder_input_vectors'], feats['encoder_input_vector_positions'] = vec, pos
    return feats


_CACHE: Dict[tuple, object] = {}   # _FormatData or _IndexedFormat, of one construction at a time


def _read_format(task: seqio.Task, split: str, lengths: Mapping[str, int], dim: int) -> _FormatData:
  """All examples of one format and split, converted, as arrays [n, ...] plus the task index."""
  import tensorflow as tf
  from promptjax.tasks import utils as task_utils
  ds = task.get_dataset(sequence_length=dict(lengths), split=split, shuffle=False, num_epochs=1,
                        use_cached=False)
  conv = seqio.EncDecFeatureConverter(pack=False)(ds, dict(lengths))
  extra = ds.map(lambda ex: {k: ex[k] for k in ('meta_task', 'role', 'encoder_input_vectors',
                                                 'encoder_input_vector_positions') if k in ex})
  placeholder = placeholder_id(task.output_features['inputs'].vocabulary)
  parts: Dict[str, list] = {}
  for c, e in task_utils.iterate(tf.data.Dataset.zip((conv, extra)).batch(1024), task.name):
    for k in MODEL_FEATURES:
      parts.setdefault(k, []).append(np.asarray(c[k], np.int32))
    for k in ('meta_task', 'role'):
      parts.setdefault(k, []).append(np.asarray([x.decode() for x in e[k]]))
    n = len(e['meta_task'])
    has = 'encoder_input_vectors' in e
    vec, pos = _vector_features(np.asarray(c['encoder_input_tokens']),
                                e['encoder_input_vector_positions'] if has else None,
                                e['encoder_input_vectors'] if has else None, placeholder, n, dim)
    parts.setdefault('encoder_input_vectors', []).append(vec)
    parts.setdefault('encoder_input_vector_positions', []).append(pos)
  if not parts:
    raise DataError(f'Task {task.name!r} split {split!r} has no examples; rebuild with a larger corpus or smaller '
                    f'support/query sizes ({CONSTRUCT_HINT}).')
  arrays = {k: np.concatenate(v) for k, v in parts.items()}
  by_task: Dict[str, Dict[str, List[int]]] = {}
  for i, (t, r) in enumerate(zip(arrays.pop('meta_task'), arrays.pop('role'))):
    by_task.setdefault(str(t), {'support': [], 'query': []})[str(r)].append(i)
  tasks = [(t, np.asarray(v['support']), np.asarray(v['query'])) for t, v in sorted(by_task.items())]
  return _FormatData(arrays, tasks)


def _format_data(task: seqio.Task, cfg: SupmerDataConfig, lengths: Mapping[str, int], dim: int):
  """The format's examples in memory (`_read_format`) or as a record index (`_IndexedFormat`), by
  ``cfg.storage``; cached per task, split, lengths, storage and the manifest's content, so a resumed or
  repeated sampler (the validation's, every EVAL_PERIOD) reads or indexes once."""
  import tensorflow as tf
  storage = cfg.storage
  if storage == 'auto':
    size = sum(tf.io.gfile.stat(p).length for p in task.source.list_shards(cfg.split))
    storage = 'memory' if size <= MEMORY_LIMIT_BYTES else 'index'
  key = (task.name, cfg.split, tuple(sorted(lengths.items())), storage, task.source.root(),
         json.dumps(task.source.manifest(), sort_keys=True))
  if key not in _CACHE:
    for old in [k for k in _CACHE if k[4:] != key[4:]]:
      getattr(_CACHE.pop(old), 'close', lambda: None)()  # Hold one construction (data directory) at a time.
    read = _read_format if storage == 'memory' else _IndexedFormat
    _CACHE[key] = read(task, cfg.split, lengths, dim)
  return _CACHE[key]


def construction(cfg: SupmerDataConfig) -> Tuple[str, Dict[str, Any], Tuple[str, ...]]:
  """(data directory, manifest, the formats `cfg` reads) of the construction `cfg` names; a `DataError`
  when it is not there or lacks a format."""
  feeds.import_task_module(cfg.module)
  probe = seqio.get_mixture_or_task(f'{cfg.task_prefix}_{FORMAT_NAMES[0]}')
  manifest = probe.source.manifest()
  formats = tuple(cfg.formats or manifest['formats'])
  absent = [f for f in formats if f not in manifest['formats']]
  if absent:
    raise DataError(f'SUPMER data in {probe.source.root()} has no format(s) {absent} (built: '
                    f'{manifest["formats"]}); rebuild with them or choose others in SupmerDataConfig.formats.')
  return probe.source.root(), manifest, formats


def check_embedding_width(cfg: SupmerDataConfig, emb_dim: int) -> None:
  """A `DataError` naming the fix when the construction `cfg` names is there and its centroids (the
  inserted vectors of ``cls_cluster_centroid``) are not `emb_dim` wide: they live in the embedding space of
  the encoder that built them (`ConstructConfig.model_size` / ``checkpoint_path``), which must be the model
  trained on them."""
  try:
    root, manifest, formats = construction(cfg)
  except ValueError:
    return   # no construction here (a dry run) or an unknown prefix: reading the batches reports it
  dim = int(manifest['embedding_dim'])
  if VECTOR_FORMAT in formats and dim != emb_dim:
    built = manifest.get('config', {})
    raise DataError(
        f'The SUPMER construction in {root} holds {dim}-wide cluster centroids (built with model '
        f'{built.get("model_size")!r}, checkpoint {built.get("checkpoint_path")!r}), but the model trained on them '
        f'has emb_dim {emb_dim}: {VECTOR_FORMAT} inserts the centroids into the model\'s input embeddings. Rebuild '
        f'the construction with the model you train (python -m promptjax.supmer.construct --model_size=... '
        f'--checkpoint_path=...), or leave {VECTOR_FORMAT} out of SUPMER_FORMATS.')


def supmer_meta_batches(cfg: SupmerDataConfig, *, start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """Meta-batches from step `start_step` on (see the module docstring for the layout)."""
  lengths = {'inputs': int(cfg.task_feature_lengths['inputs']),
             'targets': int(cfg.task_feature_lengths['targets'])}
  names = {f: f'{cfg.task_prefix}_{f}' for f in FORMAT_NAMES}
  root, manifest, formats = construction(cfg)
  dim = int(manifest['embedding_dim'])
  data = {f: _format_data(seqio.get_mixture_or_task(names[f]), cfg, lengths, dim) for f in formats}
  S, Q = int(manifest['config']['support_size']), int(manifest['config']['query_size'])
  pool = [(f, k) for f in formats for k in range(len(data[f].tasks))]
  if len(pool) < 2:
    raise DataError(f'SUPMER data in {root} has {len(pool)} {cfg.split} task(s) of formats {formats}; '
                    f'the mixed query needs at least 2. Rebuild with a larger corpus or smaller support/query sizes.')
  for f in formats:
    for t, s, q in data[f].tasks:
      if len(s) != S or len(q) != Q:
        raise DataError(f'SUPMER task {t!r} has {len(s)} support / {len(q)} query examples, the manifest says '
                        f'{S} / {Q}; the data directory mixes constructions. Rebuild it.')
  offsets = np.cumsum([0] + [len(data[f].tasks) for f in formats])

  def draw(rng) -> int:
    if cfg.task_sampling == 'uniform':
      return int(rng.integers(len(pool)))
    fi = int(rng.integers(len(formats)))
    return int(offsets[fi] + rng.integers(len(data[formats[fi]].tasks)))

  def gather(indices: List[int], role: str) -> Dict[str, np.ndarray]:
    out = {}
    for k in MODEL_FEATURES + VECTOR_FEATURES:
      parts = []
      for i in indices:
        f, t = pool[i]
        parts.append(rows_of(f, t, role)[k])
      out[k] = np.stack(parts)
    return out

  def rows_of(f: str, t: int, role: str) -> Dict[str, np.ndarray]:
    key = (f, t, role)
    if key not in step_rows:
      step_rows[key] = data[f].rows(t, role)
    return step_rows[key]


  step = int(start_step)
  while True:
    step_rows: Dict[tuple, Dict[str, np.ndarray]] = {}   # a task drawn twice in a step is read once
    rng = np.random.default_rng([int(cfg.seed), step])
    first = [draw(rng) for _ in range(cfg.meta_batch_size)]
    mix = []
    for i in first:
      j = draw(rng)
      while j == i:
        j = draw(rng)
      mix.append(j)
    batch = {}
    for prefix, idx, role in (('support', first, 'support'), ('query', first, 'query'),
                              ('mix_query', mix, 'query')):
      for k, v in gather(idx, role).items():
        batch[f'{prefix}/{k}'] = v
    yield batch
    step += 1


SUPMER_TASKS = register_supmer_tasks()
"""``supmer_<format>`` over `get_data_dir('supmer')`, vocabulary t5."""
MINI_SUPMER_TASKS = register_supmer_tasks('mini_supmer', vocab_name='mini')
"""``mini_supmer_<format>`` over `get_data_dir('supmer')`, vocabulary mini (the mini construction)."""
