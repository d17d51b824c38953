"""P3 (Public Pool of Prompts) as seqio Tasks and Mixtures: Wu et al. 2022 (Appendix A).

On-disk format (the P3 release, bigscience/P3 ``data/``, itself a seqio cache): one directory per subset
(dataset × template), holding for each split

- ``<split>.tfrecord-XXXXX-of-NNNNN``: `tf.train.Example` records;
- ``info.<split>.json``: ``{"features": {name: {"dtype", "shape"}}, "num_shards": N, "seqio_version"}``
  (int32 and bool features are stored as int64, variable-length ones have shape ``[null]``);
- ``stats.<split>.json``: ``{"examples": n, "inputs_tokens": ..., "targets_max_tokens": ..., ...}``.

Fields: ``inputs`` / ``targets`` (T5 token ids; ``targets`` end with EOS=1, ``inputs`` do not),
``inputs_pretokenized`` / ``targets_pretokenized``, and where the template has them ``answer_choices``
(strings). ``*_score_eval`` subsets (T0's rank-classification variants) hold one record per
(example, choice) with ``idx`` = [example, choice], ``is_correct`` and ``weight``.

Registered here, under the real P3 names (``p3_mixtures.json``):

- a **training view** task per subset, named as the subset: ``inputs`` and the correct ``targets`` only
  (for ``*_score_eval`` subsets the record with ``is_correct``, as better-promptability trains on them);
- a **rank-classification view** ``<subset>_rank_classification`` for the ``green`` and ``d4_dev``
  subsets: one example per answer choice with ``idx`` [example, choice], ``is_correct`` and ``weight``, so
  scores can be regrouped per example. ``*_score_eval`` records are used as stored; plain subsets are
  expanded from ``answer_choices`` (the correct one is the choice equal to ``targets_pretokenized`` after
  stripping whitespace, as in better-promptability's ``t0_module.py``). The view carries seqio's
  rank-classification scoring (T0's, Sanh et al. 2022): ``postprocess_fn`` turns a target into ``(idx,
  is_correct, weight, length)`` and the score metric `rank_classification_accuracy` picks the best-scored
  choice of each instance, so ``seqio.Evaluator(...).evaluate(score_fn=...)`` gives its accuracy;
- mixtures ``d4_train`` (313 templates, rate = min(#train examples, 500k) per template — the paper's cap,
  as better-promptability's ``sampling_cap``), ``t0_train`` (the same tasks with T0's rule: a dataset
  with more than 500k training examples gives each of its templates 500k / #templates), ``d4_dev`` and
  ``green`` (training views), ``d4_dev_rank_classification`` and ``green_rank_classification``.

StoryCloze has no training split: as in the paper (Appendix A), its tasks read the P3 ``validation`` files
for the ``train`` split and the ``test`` files for ``validation`` and ``test``.

Truncation: ``append_eos_after_trim`` keeps ``length - 1`` tokens and appends EOS. The paper truncates
inputs to 768 and targets to 192 tokens *before* adding EOS, which is task feature lengths
``{'inputs': 769, 'targets': 193}`` (`PAPER_FEATURE_LENGTHS`).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from promptjax.tasks import config as cfg
from promptjax.tasks import facts

DirFn = Callable[[], str]

SPLITS = ('train', 'validation', 'test')
SAMPLING_CAP = 500_000
PAPER_FEATURE_LENGTHS = {'inputs': 769, 'targets': 193}
RANK_SUFFIX = '_rank_classification'
EOS_ID = 1

# The P3 release's feature schema (info.<split>.json); used by `write_p3_split` and as documentation.
P3_FEATURE_SPECS = {
    'inputs': {'dtype': 'int32', 'shape': [None]},
    'inputs_pretokenized': {'dtype': 'string', 'shape': []},
    'targets': {'dtype': 'int32', 'shape': [None]},
    'targets_pretokenized': {'dtype': 'string', 'shape': []},
    'answer_choices': {'dtype': 'string', 'shape': [None]},
    'idx': {'dtype': 'int32', 'shape': [2]},
    'is_correct': {'dtype': 'bool', 'shape': []},
    'weight': {'dtype': 'float32', 'shape': []},
}


def _tf_dtype(name: str) -> tf.DType:
  return {'int32': tf.int32, 'int64': tf.int64, 'bool': tf.bool, 'float32': tf.float32,
          'string': tf.string}[name]


def _feature_config(shape, dtype):
  """`tf.train.Example` parsing spec of one info.json feature (int32/bool are stored as int64)."""
  stored = 'int64' if dtype in ('int32', 'bool', 'int64') else dtype
  if shape and shape[0] is None:
    return tf.io.FixedLenSequenceFeature(shape[1:], _tf_dtype(stored), allow_missing=True)
  return tf.io.FixedLenFeature(shape, _tf_dtype(stored))


def _read_json(path: str) -> dict:
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


class P3DataSource(seqio.DataSource):
  """Reads one P3 subset from ``<dir_fn()>/<subset>/<split>.tfrecord-*`` (directory resolved lazily).

  Args:
    subset: the P3 subset (directory) name.
    dir_fn: returns the P3 ``data/`` directory when data is read.
    family: the data family of `dir_fn` (for error messages).
    split_map: task split -> P3 split whose files are read (StoryCloze maps train -> validation).
  """

  def __init__(self, subset: str, dir_fn: DirFn, family: str = 'p3',
               split_map: Optional[Mapping[str, str]] = None):
    self._subset = subset
    self._dir_fn = dir_fn
    self._family = family
    self._split_map = dict(split_map or {s: s for s in SPLITS})
    super().__init__(splits=tuple(self._split_map), num_input_examples=None)

  @property
  def subset(self) -> str:
    return self._subset

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def subset_dir(self) -> str:
    root = self._dir_fn()
    cfg.require_dir(root, self._family, self._subset)
    path = os.path.join(root, self._subset)
    if not tf.io.gfile.isdir(path):
      raise cfg.DataError(
          f'P3 task {self._subset!r}: no directory {path}. The {self._family} data dir ({root}) must hold '
          f'one directory per P3 subset, as the P3 release does; check the task name or point the dir '
          f'elsewhere ({cfg.ENV_VARS[self._family]}=/path or '
          f'promptjax.tasks.set_data_dir({self._family!r}, ...)).')
    return path

  def _source_split(self, split: str) -> str:
    if split not in self._split_map:
      raise cfg.DataError(f'P3 task {self._subset!r} has no split {split!r}; its splits are '
                          f'{", ".join(self._split_map)}.')
    return self._split_map[split]

  def list_shards(self, split: str) -> Sequence[str]:
    path = self.subset_dir()
    source = self._source_split(split)
    files = sorted(tf.io.gfile.glob(os.path.join(path, f'{source}.tfrecord-*')))
    if not files:
      present = sorted({os.path.basename(f).split('.tfrecord')[0]
                        for f in tf.io.gfile.glob(os.path.join(path, '*.tfrecord-*'))})
      raise cfg.DataError(
          f'P3 task {self._subset!r}: no files {path}/{source}.tfrecord-* for split {split!r} '
          f'(splits present: {", ".join(present) or "none"}). Copy that split of the P3 release there, '
          f'or use one of the present splits.')
    return files

  def features(self, split: str) -> Dict[str, dict]:
    """The subset's feature schema from ``info.<split>.json``."""
    path = os.path.join(self.subset_dir(), f'info.{self._source_split(split)}.json')
    if not tf.io.gfile.exists(path):
      raise cfg.DataError(f'P3 task {self._subset!r}: missing {path} (the P3 release ships one per split '
                          f'with the feature schema); copy it with the tfrecord files.')
    try:
      info = _read_json(path)
      if info == {}:
        raise cfg.DataError(f'P3 task {self._subset!r}: split {split!r} is empty in the P3 release ({path} is '
                            '{}); use another split.')
      feats = info['features']
      return {k: {'dtype': v['dtype'], 'shape': v['shape']} for k, v in feats.items()}
    except cfg.DataError:
      raise
    except (ValueError, KeyError, TypeError) as e:
      raise cfg.DataError(f'P3 task {self._subset!r}: malformed {path} ({e}); expected '
                          '{"features": {name: {"dtype": ..., "shape": [...]}}, ...}.') from e

  def num_input_examples(self, split: str) -> Optional[int]:
    path = os.path.join(self.subset_dir(), f'stats.{self._source_split(split)}.json')
    if not tf.io.gfile.exists(path):
      return None
    return int(_read_json(path)['examples'])

  def get_dataset(self, split: str = 'train', shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    files = self.list_shards(split)
    feats = self.features(split)
    description = {k: _feature_config(**v) for k, v in feats.items()}
    files_ds = tf.data.Dataset.from_tensor_slices(np.asarray(files, dtype=str))
    if shard_info:
      if len(files) < shard_info.num_shards:
        raise cfg.DataError(
            f'P3 task {self._subset!r} split {split!r} has {len(files)} file(s), fewer than the '
            f'{shard_info.num_shards} data shards (hosts) requested; reshard the data or use fewer hosts.')
      files_ds = files_ds.shard(shard_info.num_shards, shard_info.index)
    if shuffle:
      files_ds = files_ds.shuffle(len(files), seed=seed)
    ds = files_ds.interleave(tf.data.TFRecordDataset, cycle_length=16, block_length=16,
                             num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def parse(record):
      ex = tf.io.parse_single_example(record, description)
      return {k: tf.cast(v, _tf_dtype(feats[k]['dtype'])) for k, v in ex.items()}

    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def find_bad_records(self, split: str, limit: int = 10):
    """[(file, record index, error)]: the first record of each shard that fails to read or parse."""
    feats = self.features(split)
    description = {k: _feature_config(**v) for k, v in feats.items()}
    bad = []
    for path in self.list_shards(split):
      it = iter(tf.data.TFRecordDataset(path))
      i = 0
      while len(bad) < limit:
        try:
          record = next(it)
          tf.io.parse_single_example(record, description)
        except StopIteration:
          break
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
          bad.append((path, i, str(e).strip().splitlines()[0]))
          break
        i += 1
    return bad


# ---------------------------------------------------------------------------------------------------
# Preprocessors


def _strip_eos(ids: tf.Tensor) -> tf.Tensor:
  """Drops the EOS the P3 release stores at the end of ``targets`` (seqio re-appends it after trim)."""
  ends_with_eos = tf.reduce_any(tf.equal(ids[-1:], EOS_ID))   # False for an empty row (ids[-1] would fail)
  return tf.cond(ends_with_eos, lambda: ids[:-1], lambda: ids)


def _keep(ex, keys):
  return {k: ex[k] for k in keys if k in ex}


_PASS_THROUGH = ('inputs_pretokenized', 'targets_pretokenized', 'answer_choices')


def training_view(ds: tf.data.Dataset) -> tf.data.Dataset:
  """One example per instance with its correct target (``*_score_eval`` rows: only ``is_correct``)."""
  spec = ds.element_spec
  if 'is_correct' in spec:
    ds = ds.filter(lambda ex: ex['is_correct'])

  def fn(ex):
    out = {'inputs': ex['inputs'], 'targets': _strip_eos(ex['targets'])}
    out.update(_keep(ex, _PASS_THROUGH))
    return out

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def rank_classification_view(ds: tf.data.Dataset, output_features) -> tf.data.Dataset:
  """One example per (instance, answer choice) with ``idx`` [instance, choice], ``is_correct``, ``weight``.

  ``*_score_eval`` records already have this form. Otherwise each instance is expanded over its
  ``answer_choices`` (tokenized with the targets vocabulary); instances are numbered in reading order,
  so read without shuffling to regroup by ``idx[0]``.
  """
  spec = ds.element_spec
  if 'is_correct' in spec:
    def fn(ex):
      out = {'inputs': ex['inputs'], 'targets': _strip_eos(ex['targets']),
             'idx': tf.cast(ex['idx'], tf.int32), 'is_correct': ex['is_correct'],
             'weight': tf.cast(ex.get('weight', tf.constant(1.0)), tf.float32)}
      out.update(_keep(ex, ('inputs_pretokenized', 'targets_pretokenized')))
      return out
    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
  if 'answer_choices' not in spec:
    raise cfg.DataError('this P3 subset has neither answer_choices nor score_eval records, so it cannot '
                        'be rank-classified; evaluate it generatively instead.')
  vocab = output_features['targets'].vocabulary

  def expand(i, ex):
    choices = ex['answer_choices']
    gold = tf.strings.strip(ex['targets_pretokenized'])

    def one(j):
      choice = choices[j]
      return {'inputs': ex['inputs'], 'targets': vocab.encode_tf(choice),
              'idx': tf.stack([tf.cast(i, tf.int32), tf.cast(j, tf.int32)]),
              'is_correct': tf.equal(tf.strings.strip(choice), gold),
              'weight': tf.constant(1.0, tf.float32),
              'inputs_pretokenized': ex['inputs_pretokenized'], 'targets_pretokenized': choice}

    return tf.data.Dataset.range(tf.cast(tf.shape(choices)[0], tf.int64)).map(one)

  return ds.enumerate().flat_map(expand)


def rank_classification_postprocessor(output_or_target, example=None, is_target: bool = False):
  """seqio ``postprocess_fn`` of a rank-classification view (T5's ``postprocessors.rank_classification``):
  a target becomes ``(idx, is_correct, weight, number of target tokens)``, a score passes through."""
  if not is_target:
    return output_or_target
  return (tuple(int(i) for i in example['idx']), bool(example['is_correct']),
          float(example.get('weight', 1.0)), int(len(example['targets'])))


def rank_classification_accuracy(targets, scores, normalize_by_target_length: bool = True
                                 ) -> Dict[str, float]:
  """seqio score metric of a rank-classification view (T5's ``metrics.rank_classification`` with a variable
  number of choices, as T0 (Sanh et al. 2022) scores its held-out tasks): per instance (``idx[0]``) the
  choice with the highest score (the first choice on ties, choices in ``idx[1]`` order) is the prediction;
  accuracy is the weight (of the predicted choice, as T5) of correct predictions over the weight of all, a
  fraction as in promptjax's metrics (T5 reports ×100). With weight 1 everywhere (the expanded views, the
  mini benchmark's records) it is `promptjax eval`'s accuracy on the same scores.
  `normalize_by_target_length` (the default) divides each score by its target length (EOS included)
  first: a seqio ``score_fn`` (T5X's ``score_batch``, `promptjax.evaluation.seqio_score_fn`) returns
  summed log-likelihoods, and the mean per target token is how the official Wu et al. 2022 code ranks
  choices (`promptjax eval`'s default, ``LENGTH_NORMALIZE=True``). Bind it to False for T0's sum.

  Args:
    targets: `rank_classification_postprocessor` targets ``(idx, is_correct, weight, target length)``.
    scores: one log-likelihood per target (a seqio ``score_fn``'s output, in example order).
  """
  if len(targets) != len(scores):
    raise ValueError(f'{len(targets)} rank-classification targets but {len(scores)} scores')
  groups: Dict[int, list] = {}
  for (idx, correct, weight, length), score in zip(targets, scores):
    score = float(score) / length if normalize_by_target_length else float(score)
    groups.setdefault(int(idx[0]), []).append((int(idx[1]), score, bool(correct), float(weight)))
  num_correct = total = 0.0
  for choices in groups.values():
    choices.sort(key=lambda c: c[0])
    _, _, correct, weight = choices[int(np.argmax([c[1] for c in choices]))]
    num_correct += weight * correct
    total += weight
  return {'accuracy': float(num_correct / total) if total else 0.0}


# ---------------------------------------------------------------------------------------------------
# Registration


def _is_story_cloze(subset: str) -> bool:
  return subset.startswith('story_cloze')


STORY_CLOZE_SPLITS = {'train': 'validation', 'validation': 'test', 'test': 'test'}


def register_p3_tasks(subsets: Iterable[str], *, dir_fn: DirFn = lambda: cfg.get_data_dir('p3'),
                      family: str = 'p3', vocab_name: str = 't5', rank_classification: Iterable[str] = (),
                      split_maps: Optional[Mapping[str, Mapping[str, str]]] = None) -> List[str]:
  """Registers the training view of each P3-format subset, and rank-classification views of some.

  Args:
    subsets: subset (directory) names; each becomes a task of the same name.
    dir_fn: returns the directory holding the subset directories (resolved when data is read).
    family: the data family of `dir_fn`, for error messages.
    vocab_name: `config.get_vocabulary` name of the vocabulary the token ids come from.
    rank_classification: subsets that also get a ``<subset>_rank_classification`` task.
    split_maps: per-subset task split -> stored split (default: StoryCloze's, see module docstring).

  Returns:
    the names registered.
  """
  feats = cfg.output_features(vocab_name)
  split_maps = dict(split_maps or {})
  rank = set(rank_classification)
  names = []
  for subset in subsets:
    split_map = split_maps.get(subset, STORY_CLOZE_SPLITS if _is_story_cloze(subset) else None)
    source = P3DataSource(subset, dir_fn, family, split_map)
    seqio.TaskRegistry.add(
        subset, source=source, output_features=feats,
        preprocessors=[training_view, seqio.preprocessors.append_eos_after_trim],
        metric_fns=[])
    names.append(subset)
    if subset in rank:
      seqio.TaskRegistry.add(
          subset + RANK_SUFFIX, source=source, output_features=feats,
          preprocessors=[rank_classification_view, seqio.preprocessors.append_eos_after_trim],
          postprocess_fn=rank_classification_postprocessor, metric_fns=[rank_classification_accuracy])
      names.append(subset + RANK_SUFFIX)
  return names


def capped_rate(task: seqio.Task, cap: int = SAMPLING_CAP, split: str = 'train') -> float:
  """min(#examples, cap): the paper's per-template 500k cap (better-promptability ``sampling_cap``)."""
  n = task.num_input_examples(split)
  if n is None:
    raise cfg.DataError(f'Task {task.name!r}: no stats.{split}.json to size its mixing rate; copy it from '
                        f'the P3 release (it holds {{"examples": n, ...}}).')
  return float(min(n, cap))


def t0_rate(task: seqio.Task, num_templates: Mapping[str, int], cap: int = SAMPLING_CAP,
            split: str = 'train') -> float:
  """T0's rule (t-zero ``tasks.py``): a dataset over the cap gives each template cap // #templates."""
  n = task.num_input_examples(split)
  if n is None:
    return capped_rate(task, cap, split)
  return float(cap // num_templates[task.name] if n > cap else n)


def register_p3_mixture(name: str, tasks: Sequence[str], rate=1.0) -> None:
  seqio.MixtureRegistry.add(name, [(t, rate) for t in tasks])


def _register_real_p3() -> None:
  mixtures = facts.p3_mixtures()
  eval_subsets = set(mixtures['green']) | set(mixtures['d4_dev'])
  all_subsets = list(dict.fromkeys(mixtures['d4_train'] + mixtures['d4_dev'] + mixtures['green']))
  register_p3_tasks(all_subsets, rank_classification=eval_subsets)
  register_p3_mixture('d4_train', mixtures['d4_train'], capped_rate)
  templates_per_dataset = facts.p3_templates_per_dataset('d4_train')
  register_p3_mixture('t0_train', mixtures['d4_train'],
                      functools.partial(t0_rate, num_templates=templates_per_dataset))
  for mix in ('d4_dev', 'green'):
    register_p3_mixture(mix, mixtures[mix], capped_rate)
    register_p3_mixture(mix + RANK_SUFFIX, [t + RANK_SUFFIX for t in mixtures[mix]], 1.0)


# ---------------------------------------------------------------------------------------------------
# Writing the P3 format (the bundled mini benchmark and test fixtures)


def _infer_spec(key: str, value) -> dict:
  if key in P3_FEATURE_SPECS:
    return dict(P3_FEATURE_SPECS[key])
  raise ValueError(f'unknown P3 feature {key!r}; known: {sorted(P3_FEATURE_SPECS)}')


def _to_feature(value, dtype: str) -> tf.train.Feature:
  if dtype == 'string':
    vals = value if isinstance(value, (list, tuple)) else [value]
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode('utf-8') for v in vals]))
  if dtype == 'float32':
    vals = value if isinstance(value, (list, tuple)) else [value]
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in vals]))
  vals = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in vals]))


def write_p3_split(subset_dir: str, split: str, records: Iterable[Mapping], num_shards: int = 1) -> int:
  """Writes records in the P3 release layout: shards, ``info.<split>.json`` and ``stats.<split>.json``.

  Each record maps P3 field names (`P3_FEATURE_SPECS`) to Python values: token id lists for
  ``inputs``/``targets`` (targets ending with EOS, as in P3), strings, lists of strings, ``idx`` pairs.
  Records may be any iterable (they are streamed, not held in memory) and are dealt to shards
  round-robin. Returns the number of records written.
  """
  it = iter(records)
  first = next(it, None)
  if first is None:
    raise ValueError(f'no records to write for {subset_dir} {split}')
  keys = list(first)
  specs = {k: _infer_spec(k, first[k]) for k in keys}
  tf.io.gfile.makedirs(subset_dir)
  writers = [tf.io.TFRecordWriter(os.path.join(subset_dir, f'{split}.tfrecord-{i:05d}-of-{num_shards:05d}'))
             for i in range(num_shards)]
  lengths = {key: [0, 0, 0] for key in ('inputs', 'targets') if key in specs}   # tokens, max tokens, chars
  count = 0
  try:
    for r in itertools.chain([first], it):
      if list(r) != keys:
        raise ValueError(f'records of {subset_dir} {split} have different fields: {keys} vs {list(r)}')
      ex = tf.train.Example(features=tf.train.Features(
          feature={k: _to_feature(r[k], specs[k]['dtype']) for k in keys}))
      writers[count % num_shards].write(ex.SerializeToString(deterministic=True))
      count += 1
      for key, acc in lengths.items():
        acc[0] += len(r[key])
        acc[1] = max(acc[1], len(r[key]))
        if f'{key}_pretokenized' in specs:
          acc[2] += len(r[f'{key}_pretokenized'])
  finally:
    for w in writers:
      w.close()
  info = {'features': specs, 'num_shards': num_shards, 'seqio_version': seqio.__version__}
  with tf.io.gfile.GFile(os.path.join(subset_dir, f'info.{split}.json'), 'w') as f:
    json.dump(info, f, indent=2, sort_keys=True)
  stats = {'examples': count}
  for key, (tokens, max_tokens, chars) in lengths.items():
    stats[f'{key}_tokens'] = int(tokens)
    stats[f'{key}_max_tokens'] = int(max_tokens)
    if f'{key}_pretokenized' in specs:
      stats[f'{key}_chars'] = int(chars)
  with tf.io.gfile.GFile(os.path.join(subset_dir, f'stats.{split}.json'), 'w') as f:
    json.dump(stats, f, indent=2, sort_keys=True)
  return count
