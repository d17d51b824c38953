"""CrossFit few-shot tasks as seqio Tasks and Mixtures (Qin et al. 2023 §5.1, Appendix A.1 Table 9).

Qin et al. (2023) meta-train soft prompts on CrossFit (Ye et al. 2021): 160 few-shot
tasks, each sampled five times (seeds 100, 13, 21, 42, 87) into a train, a dev and a test file; "16
samples per class ... for classification tasks, and 32 samples per set for non-classification tasks"
(§5.1). This module registers those tasks and the ten source/target partitions of §5.1 Table 1.

Data layout (read exactly as CrossFit's ``dataloader/fewshot_gym_singletask.py`` does)::

  <data_dir>/<task>/<task>_<k>_<seed>_<split>.tsv      split in train / dev / test
  line: input \\t answer [\\t answer ...]             d = line.strip().split('\\t') -> d[0], d[1:]

``k`` comes from CrossFit's builder class, not from the task type (`CROSSFIT_TASKS[name].k`: 16 per label
for ``FewshotGymClassificationDataset`` tasks, 32 in total for text-to-text ones; 19 tasks have a builder
that disagrees with their classification / non-classification type). The directory is looked up when a
dataset is requested (`promptjax.tasks.config.get_data_dir('crossfit')`: ``PROMPTJAX_CROSSFIT_DIR`` or
``promptjax.tasks.set_data_dir('crossfit', path)``); importing this module reads no file.

Names (seqio allows only ``[\\w\\d.:_#]``):

* task ``crossfit_<task>_<seed>``, ``-`` replaced by ``_``: ``glue-sst2`` seed 13 -> ``crossfit_glue_sst2_13``
  (`seqio_task_name`; `get_task_info` maps back; the 160 names stay distinct). Splits train/dev/test.
* Qin et al. partition mixtures ``crossfit_qin2023_<setting>_{source,target}_<seed>`` where ``<setting>``
  is the Table 1 name lowercased, ``->`` -> ``_to_``, ``-`` dropped: ``cls_to_cls``, ``both_to_noncls``,
  ``nonqa_to_qa``, ``np_to_p``, ``r_to_r`` ... (`QIN2023_SETTINGS`, `qin2023_mixture_name`).
* CrossFit's own split files ``crossfit_split_<file>_<list>_<seed>``, e.g. ``crossfit_split_random_train_13``,
  ``crossfit_split_train_classification_test_classification_test_13`` (`CROSSFIT_SPLITS`).
* Source / train mixtures also come as ``..._examples_<seed>`` (rates proportional to example counts), and
  Qin source mixtures over all five seeds as ``crossfit_qin2023_<setting>_source[_examples]_all``.

Mixing rates. MPT "sample[s] one source task" per meta-training iteration (§4.3.1), i.e. tasks are drawn
uniformly, whatever their size: the plain source mixtures therefore give every task rate 1. CrossFit's own
multi-task upstream training and Qin's multi-task-learning baseline concatenate all examples instead; the
``_examples`` variants reproduce that (`seqio.mixing_rate_num_examples`, counted from the train files).
Use split ``train`` as the support set and ``dev`` as the query / validation set; ``train_dev`` reads both
(the train file, then the dev file). Target mixtures list the
target tasks with rate 1 (targets are tuned and evaluated one task at a time; the mixture is a handle).
Mixtures keep only ``inputs``/``targets`` (+ ``_pretokenized``); pass ``passthrough_features=['answers']``
to `seqio.Mixture.get_dataset` to keep the references.

Features: ``inputs`` / ``targets`` (the first reference) tokenized, EOS appended after trimming
(`output_features`), ``inputs_pretokenized`` / ``targets_pretokenized``, and ``answers`` (all references,
a 1-D string tensor) for CrossFit's max-over-references metrics. `get_task_info(name).metric` is the
CrossFit metric (ACC, Classification-F1, EM, QA-F1, Rouge-L, Pearson-Correlation, Matthew-Correlation);
each Task carries that metric as its seqio ``metric_fns`` (`crossfit_metric_fn`) and a ``postprocess_fn``
that turns a target into all of the example's references (`postprocess_references`), so
``seqio.Evaluator`` scores greedy predictions as CrossFit does (`promptjax.evaluation.generation`).

Other CrossFit-format data (e.g. the bundled mini benchmark) registers through `register_crossfit_tasks`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import types
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import seqio
import tensorflow as tf

from promptjax.tasks import config
from promptjax.tasks.config import DataError

SEEDS = (100, 13, 21, 42, 87)
SPLITS = ('train', 'dev', 'test')
# Splits made of several files, in this order: ``train_dev`` is the support and query data together, what
# Qin et al. 2023 §5.3 train the MTL baseline on ("fair data access" with the meta-learners).
COMBINED_SPLITS = {'train_dev': ('train', 'dev')}
METRICS = ('ACC', 'Classification-F1', 'EM', 'QA-F1', 'Rouge-L', 'Pearson-Correlation',
           'Matthew-Correlation')
TYPES = ('classification', 'non-classification')
DEFAULT_PREFIX = 'crossfit'
RATES = ('equal', 'examples')

_SEQIO_NAME = re.compile(r'^[\w\d.:_#]+$')
_LAYOUT = '<task>/<task>_<k>_<seed>_<split>.tsv'


@dataclasses.dataclass(frozen=True)
class CrossFitTaskInfo:
  """Facts about one CrossFit-format task.

  Attributes:
    name: the CrossFit name (directory and file prefix), e.g. ``glue-sst2``.
    metric: one of `METRICS`, as in CrossFit's ``dataloader/metrics.py``.
    type: ``classification`` or ``non-classification`` (partition semantics, §5.1).
    k: the ``<k>`` in the file names (16 per label or 32 in total, after CrossFit's builder class).
  """
  name: str
  metric: str
  type: str
  k: int

  def file_name(self, seed: int, split: str) -> str:
    return f'{self.name}_{self.k}_{seed}_{split}.tsv'


@dataclasses.dataclass(frozen=True)
class CrossFitTask:
  """A registered seqio task: one (CrossFit task, seed) pair. `get_task_info` returns these."""
  seqio_name: str
  info: CrossFitTaskInfo
  seed: int
  vocab_name: str
  name_prefix: str

  @property
  def crossfit_name(self) -> str:
    return self.info.name

  @property
  def metric(self) -> str:
    return self.info.metric

  @property
  def type(self) -> str:
    return self.info.type

  @property
  def k(self) -> int:
    return self.info.k


def seqio_task_name(task: str, seed: int, name_prefix: str = DEFAULT_PREFIX) -> str:
  """``<prefix>_<task with '-' -> '_'>_<seed>``, e.g. ``crossfit_glue_sst2_13``."""
  name = f'{name_prefix}_{task.replace("-", "_")}_{seed}'
  if not _SEQIO_NAME.match(name):
    raise ValueError(f'CrossFit task {task!r} gives the seqio name {name!r}, which is not [\\w\\d.:_#]+.')
  return name


# ---------------------------------------------------------------------------------------------------------
# Reading the files.


def _fix_hint(family: Optional[str], data_dir_fn: Optional[Callable[[], str]]) -> str:
  if family in config.ENV_VARS:
    return (f'Point it at {config.WHAT[family]}: set {config.ENV_VARS[family]}=/path or call '
            f'promptjax.tasks.set_data_dir({family!r}, "/path").')
  fn = getattr(data_dir_fn, '__qualname__', repr(data_dir_fn))
  return (f'The directory comes from the data_dir_fn {fn} given to register_crossfit_tasks; make it return '
          f'a folder laid out as {_LAYOUT}.')


def _listing(path: str, limit: int = 8) -> str:
  try:
    names = sorted(tf.io.gfile.listdir(path))
  except tf.errors.OpError:
    return '(unreadable)'
  shown = ', '.join(n.rstrip('/') for n in names[:limit])
  return f'[{shown}{", ..." if len(names) > limit else ""}]' if names else '(empty)'


def parse_crossfit_lines(text: str, where: str) -> List[Tuple[str, List[str]]]:
  """Parses CrossFit TSV text into ``(input, [reference, ...])`` pairs.

  Exactly CrossFit's reader: lines as Python's text mode splits them (universal newlines), then
  ``d = line.strip().split('\\t')`` -> ``(d[0], d[1:])``. A line that leaves no reference raises a
  `DataError` naming ``where`` and the 1-based line number: an empty line, a line without a tab, or an
  empty input or answer (``strip()`` removes the tab beside it, so ``'\\tyes'`` is input ``'yes'`` with no
  answer; after stripping, the input can never be empty). An empty file raises too.
  """
  examples = []
  for number, line in enumerate(io.StringIO(text, newline=None), start=1):
    stripped = line.strip()
    fields = stripped.split('\t')
    if len(fields) < 2:
      if not stripped:
        problem = 'an empty line'
      elif '\t' in line:
        problem = "an empty input or answer (CrossFit's line.strip() drops the tab beside it)"
      else:
        problem = 'no tab between input and answer'
      raise DataError(
          f'{where} line {number}: {problem}; CrossFit lines are "input<TAB>answer[<TAB>answer...]", '
          f'got {line.rstrip(chr(10))[:120]!r}.')
    examples.append((fields[0], fields[1:]))
  if not examples:
    raise DataError(f'{where}: the file has no examples.')
  return examples


class CrossFitDataSource(seqio.DataSource):
  """Raw examples of one CrossFit task and seed: ``{'inputs', 'targets', 'answers'}`` strings.

  The directory is resolved (``data_dir_fn()``) and the split file read when `get_dataset` or
  `num_input_examples` is called. Every problem is one `DataError` that names the seqio task, the
  CrossFit task, the path and the fix. ``shuffle=False`` keeps file order; ``shuffle=True`` shuffles the
  whole split (``seed`` makes it reproducible).
  """

  def __init__(self, info: CrossFitTaskInfo, seed: int, data_dir_fn: Callable[[], str], *,
               seqio_name: str, family: Optional[str] = None, splits: Sequence[str] = SPLITS):
    splits = tuple(splits) + tuple(c for c, parts in COMBINED_SPLITS.items() if set(parts) <= set(splits))
    super().__init__(splits=splits, num_input_examples=None, caching_permitted=True)
    self.info = info
    self.seed = seed
    self.seqio_name = seqio_name
    self._data_dir_fn = data_dir_fn
    self._family = family
    self._counts: Dict[Tuple[str, int, int], int] = {}

  def __repr__(self):
    return f'CrossFitDataSource({self.info.name!r}, k={self.info.k}, seed={self.seed})'

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def _who(self) -> str:
    return f'Task {self.seqio_name!r} (CrossFit {self.info.name!r}, seed {self.seed})'

  def path(self, split: str) -> str:
    """The split file, after checking that the data and task directories and the file exist."""
    if split not in self.splits:
      raise DataError(f'{self._who()}: unknown split {split!r}; the splits are {", ".join(self.splits)}.')
    hint = _fix_hint(self._family, self._data_dir_fn)
    try:
      data_dir = self._data_dir_fn()
    except DataError as e:
      raise DataError(f'{self._who()}: {e}') from None
    if not tf.io.gfile.isdir(data_dir):
      raise DataError(f'{self._who()}: the CrossFit data directory {data_dir} does not exist. {hint}')
    task_dir = os.path.join(data_dir, self.info.name)
    if not tf.io.gfile.isdir(task_dir):
      raise DataError(
          f'{self._who()}: {task_dir} does not exist; {data_dir} holds {_listing(data_dir)}. Expected '
          f'{_LAYOUT}, as INK-USC/CrossFit tasks/*.py write it (run the builder for {self.info.name!r}). '
          f'{hint}')
    path = os.path.join(task_dir, self.info.file_name(self.seed, split))
    if not tf.io.gfile.exists(path):
      raise DataError(
          f'{self._who()}: the {split} file {path} is missing (k={self.info.k}, seed={self.seed}); '
          f'{task_dir} holds {_listing(task_dir)}. Re-run the CrossFit builder for {self.info.name!r} '
          f'or fix the data directory. {hint}')
    return path

  def read(self, split: str) -> List[Tuple[str, List[str]]]:
    """``[(input, [reference, ...]), ...]`` in file order (a combined split: its files in turn)."""
    if split in COMBINED_SPLITS and split in self.splits:
      return [ex for part in COMBINED_SPLITS[split] for ex in self.read(part)]
    path = self.path(split)
    with tf.io.gfile.GFile(path, 'rb') as f:
      raw = f.read()
    try:
      text = raw.decode('utf-8')
    except UnicodeDecodeError as e:
      raise DataError(f'{self._who()}: {path} is not UTF-8 ({e}).') from None
    examples = parse_crossfit_lines(text, f'{self._who()}: {path}')
    self._counts[self._stat_key(path)] = len(examples)
    return examples

  @staticmethod
  def _stat_key(path: str) -> Tuple[str, int, int]:
    stat = tf.io.gfile.stat(path)
    return path, stat.length, stat.mtime_nsec

  def num_input_examples(self, split: str) -> int:
    if split in COMBINED_SPLITS and split in self.splits:
      return sum(self.num_input_examples(part) for part in COMBINED_SPLITS[split])
    key = self._stat_key(self.path(split))
    if key not in self._counts:
      self.read(split)
    return self._counts[key]

  def get_dataset(self, split: str = 'train', shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # Unused, as in seqio's own sources.
    examples = self.read(split)
    ds = tf.data.Dataset.from_tensor_slices({
        'inputs': tf.constant([x for x, _ in examples], tf.string),
        'targets': tf.constant([refs[0] for _, refs in examples], tf.string),
        # References contain no tab (they come from splitting on tabs), so joining and re-splitting is
        # exact and yields a dense 1-D string tensor per example.
        'answers': tf.constant(['\t'.join(refs) for _, refs in examples], tf.string),
    })
    ds = ds.map(_split_answers, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    if shuffle:
      ds = ds.shuffle(len(examples), seed=seed)
    return ds


def _split_answers(ex):
  return {**ex, 'answers': tf.strings.split(ex['answers'], sep='\t')}


# ---------------------------------------------------------------------------------------------------------
# Registration.

_TASKS: Dict[str, CrossFitTask] = {}


def _as_info(name: str, spec: Union[CrossFitTaskInfo, Mapping[str, Any]]) -> CrossFitTaskInfo:
  if isinstance(spec, CrossFitTaskInfo):
    if spec.name != name:
      raise ValueError(f'CrossFit task {name!r}: its CrossFitTaskInfo is named {spec.name!r}.')
    info = spec
  else:
    unknown = set(spec) - {'metric', 'type', 'k'}
    missing = {'metric', 'type', 'k'} - set(spec)
    if unknown or missing:
      raise ValueError(f'CrossFit task {name!r}: needs exactly the keys metric, type, k '
                       f'(missing {sorted(missing)}, unknown {sorted(unknown)}).')
    info = CrossFitTaskInfo(name=name, metric=spec['metric'], type=spec['type'], k=spec['k'])
  if info.metric not in METRICS:
    raise ValueError(f'CrossFit task {name!r}: metric {info.metric!r} is not one of {METRICS}.')
  if info.type not in TYPES:
    raise ValueError(f'CrossFit task {name!r}: type {info.type!r} is not one of {TYPES}.')
  if not isinstance(info.k, int) or isinstance(info.k, bool) or info.k < 1:
    raise ValueError(f'CrossFit task {name!r}: k must be a positive int, got {info.k!r}.')
  if not name or '/' in name or '\t' in name:
    raise ValueError(f'CrossFit task name {name!r} cannot be a directory name.')
  return info


def register_crossfit_tasks(
    tasks: Mapping[str, Union[CrossFitTaskInfo, Mapping[str, Any]]],
    *,
    data_dir_fn: Optional[Callable[[], str]] = None,
    vocab_name: str = 't5',
    name_prefix: str = DEFAULT_PREFIX,
    seeds: Sequence[int] = SEEDS,
    family: Optional[str] = None,
    overwrite: bool = False,
) -> List[str]:
  """Registers one seqio Task per (task, seed) for CrossFit-format data; returns the seqio names.

  Args:
    tasks: CrossFit task name -> `CrossFitTaskInfo` or ``{'metric': ..., 'type': ..., 'k': ...}``
      (metric in `METRICS`, type in `TYPES`, k the ``<k>`` of the file names).
    data_dir_fn: called with no arguments each time data is read; returns the folder holding
      ``<task>/<task>_<k>_<seed>_<split>.tsv``. Default: ``get_data_dir(family or 'crossfit')``.
    vocab_name: the `promptjax.tasks.config` vocabulary (``t5`` or ``mini``) for ``inputs``/``targets``.
    name_prefix: seqio names are ``<name_prefix>_<task with '-' -> '_'>_<seed>`` (`seqio_task_name`).
    seeds: the ``<seed>`` values to register (CrossFit's five by default).
    family: the `config` data family whose environment variable / ``set_data_dir`` call error messages
      recommend (default ``crossfit`` when ``data_dir_fn`` is None, else a generic hint).
    overwrite: replace tasks already registered under the same seqio names (otherwise seqio raises).

  Example (the bundled mini benchmark)::

    register_crossfit_tasks(
        {'mini-sentiment': {'metric': 'ACC', 'type': 'classification', 'k': 16}},
        data_dir_fn=lambda: os.path.join(get_data_dir('mini'), 'crossfit'),
        vocab_name='mini', name_prefix='mini_crossfit', family='mini')
    # -> ['mini_crossfit_mini_sentiment_100', ..., 'mini_crossfit_mini_sentiment_87']
  """
  if data_dir_fn is None:
    family = family or 'crossfit'
    data_dir_fn = lambda: config.get_data_dir(family)  # pylint: disable=unnecessary-lambda-assignment
  infos = [_as_info(name, spec) for name, spec in tasks.items()]
  specs = []
  for info in infos:
    for seed in seeds:
      specs.append((seqio_task_name(info.name, seed, name_prefix), info, seed))
  seen: Dict[str, str] = {}
  for name, info, _ in specs:
    if name in seen and seen[name] != info.name:
      raise ValueError(f'CrossFit tasks {seen[name]!r} and {info.name!r} both map to seqio name {name!r}.')
    seen[name] = info.name
  if not overwrite:
    taken = [name for name, _, _ in specs if name in seqio.TaskRegistry.names()]
    if taken:
      raise ValueError(f'seqio tasks already registered: {taken[:5]}{" ..." if len(taken) > 5 else ""} '
                       f'(pass overwrite=True or another name_prefix).')
  features = config.output_features(vocab_name)
  preprocessors = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
  names = []
  for name, info, seed in specs:
    if overwrite:
      seqio.TaskRegistry.remove(name)
    source = CrossFitDataSource(info, seed, data_dir_fn, seqio_name=name, family=family)
    seqio.TaskRegistry.add(name, source=source, output_features=features, preprocessors=preprocessors,
                           postprocess_fn=postprocess_references, metric_fns=[crossfit_metric_fn(info.metric)])
    _TASKS[name] = CrossFitTask(seqio_name=name, info=info, seed=seed, vocab_name=vocab_name,
                                name_prefix=name_prefix)
    names.append(name)
  return names


def postprocess_references(text, example=None, is_target=False):
  """seqio ``postprocess_fn``: a target becomes the list of all the example's references (``answers``), so
  CrossFit's max-over-references metrics see every answer; a prediction is returned as decoded."""
  if is_target and example is not None and 'answers' in example:
    return [a.decode('utf-8') if isinstance(a, bytes) else str(a) for a in list(example['answers'])]
  return text.decode('utf-8') if isinstance(text, bytes) else text


def crossfit_metric_fn(metric: str) -> Callable[..., Dict[str, float]]:
  """The seqio metric function of a CrossFit metric (`promptjax.tasks.crossfit_metrics.metric_fn`),
  imported when called so that registering tasks does not load scikit-learn / scipy / rouge-score."""
  if metric not in METRICS:
    raise ValueError(f'CrossFit metric {metric!r} is not one of {METRICS}.')

  def fn(targets, predictions):
    from promptjax.tasks import crossfit_metrics  # pylint: disable=import-outside-toplevel
    return crossfit_metrics.metric_fn(metric)(targets, predictions)

  fn.__name__ = fn.__qualname__ = 'crossfit_' + re.sub(r'[^0-9a-z]+', '_', metric.lower())
  return fn


def unregister_crossfit_tasks(names: Sequence[str]) -> None:
  """Removes registered CrossFit-format tasks (seqio names) from seqio's registry and `get_task_info`."""
  for name in names:
    if name in _TASKS:
      seqio.TaskRegistry.remove(name)
      del _TASKS[name]


def get_task_info(seqio_name: str) -> CrossFitTask:
  """The CrossFit task, seed, metric, type and k behind a registered seqio task name."""
  if seqio_name not in _TASKS:
    raise ValueError(f'{seqio_name!r} is not a registered CrossFit task '
                     f'(names look like {seqio_task_name("glue-sst2", 13)!r}).')
  return _TASKS[seqio_name]


def registered_tasks(name_prefix: Optional[str] = None) -> Dict[str, CrossFitTask]:
  """All registered CrossFit-format tasks (optionally those of one ``name_prefix``), by seqio name."""
  return {n: t for n, t in _TASKS.items() if name_prefix is None or t.name_prefix == name_prefix}


def _rate(rate: Union[str, float]):
  if rate == 'equal':
    return 1.0
  if rate == 'examples':
    return seqio.mixing_rate_num_examples
  if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
    return float(rate)
  raise ValueError(f'Mixture rate must be one of {RATES} or a positive number, got {rate!r}.')


def register_crossfit_mixture(
    name: str,
    tasks: Sequence[str],
    seeds: Union[int, Sequence[int]],
    *,
    rate: Union[str, float] = 'equal',
    name_prefix: str = DEFAULT_PREFIX,
    overwrite: bool = False,
) -> seqio.Mixture:
  """Registers a seqio Mixture of registered CrossFit tasks (given by CrossFit name) for some seeds.

  ``rate='equal'`` draws every (task, seed) equally often (MPT's one-task-per-step sampling, Qin et al.
  §4.3.1); ``'examples'`` weights by the number of examples in the task's train file (concatenation, as
  CrossFit's multi-task upstream training); a number gives every task that rate.
  """
  seeds = (seeds,) if isinstance(seeds, int) else tuple(seeds)
  members = [seqio_task_name(t, s, name_prefix) for t in tasks for s in seeds]
  missing = [m for m in members if m not in _TASKS]
  if missing:
    raise ValueError(f'Mixture {name!r}: tasks not registered: {missing[:5]}'
                     f'{" ..." if len(missing) > 5 else ""}.')
  if overwrite:
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, members, default_rate=_rate(rate))


# ---------------------------------------------------------------------------------------------------------
# Partitions.


@dataclasses.dataclass(frozen=True)
class Qin2023Setting:
  """One of the ten source -> target settings of Qin et al. (2023) §5.1 Table 1 (lists: Table 9)."""
  name: str  # as in the paper, e.g. 'Cls->Non-Cls'
  slug: str  # in mixture names, e.g. 'cls_to_noncls'
  source_list: str  # Table 9 heading, e.g. 'Classification Source'
  target_list: str
  source: Tuple[str, ...]
  target: Tuple[str, ...]


def qin2023_slug(setting: str) -> str:
  """``'Non-Cls->Cls'`` -> ``'noncls_to_cls'``: lowercase, ``->`` -> ``_to_``, ``-`` dropped."""
  return setting.lower().replace('->', '_to_').replace('-', '')


def qin2023_setting(setting: str) -> Qin2023Setting:
  """A setting by paper name (``'Cls->Cls'``) or slug (``'cls_to_cls'``)."""
  for s in QIN2023_SETTINGS.values():
    if setting in (s.name, s.slug):
      return s
  raise ValueError(f'Unknown Qin et al. (2023) setting {setting!r}; known: '
                   f'{", ".join(s.name for s in QIN2023_SETTINGS.values())} (or their slugs).')


def qin2023_mixture_name(setting: str, role: str, seed: Union[int, str], rate: str = 'equal',
                         name_prefix: str = DEFAULT_PREFIX) -> str:
  """E.g. ``crossfit_qin2023_cls_to_cls_source_13``; role ``source`` or ``target``.

  ``seed='all'`` names the source mixture over all five seeds (``..._source_all``): Qin et al. sample each
  task five times to "cover more diverse samples in upstream learning" (§5.1).
  """
  if role not in ('source', 'target'):
    raise ValueError(f'role must be "source" or "target", got {role!r}.')
  if seed == 'all' and role != 'source':
    raise ValueError('Only source mixtures come for all seeds (targets are tuned one seed at a time).')
  if rate not in RATES or (rate == 'examples' and role != 'source'):
    raise ValueError(f'rate {rate!r}: source mixtures come as {RATES}, target mixtures as "equal".')
  return f'{name_prefix}_qin2023_{qin2023_setting(setting).slug}_{role}{_rate_suffix(rate)}_{seed}'


def _rate_suffix(rate: str) -> str:
  """The mixture-name suffix of a source/train mixture's rate: '' (equal) or '_examples'."""
  if rate not in RATES:
    raise ValueError(f'rate must be one of {RATES}, got {rate!r}.')
  return '_examples' if rate == 'examples' else ''


def qin2023_table4_mixture_name(num_source_tasks: int, seed: Union[int, str], rate: str = 'equal',
                                name_prefix: str = DEFAULT_PREFIX) -> str:
  """Qin et al. 2023 Table 4's Cls->Cls source mixture of 12 or 24 tasks (45: the Table 2 setting), e.g.
  ``crossfit_qin2023_cls_to_cls_12tasks_source_all``."""
  if num_source_tasks not in QIN2023_TABLE4_SOURCES:
    raise ValueError(f'Table 4 has {sorted(QIN2023_TABLE4_SOURCES)} source tasks besides the 45 of Cls->Cls '
                     f'(qin2023_mixture_name); got {num_source_tasks}.')
  return f'{name_prefix}_qin2023_cls_to_cls_{num_source_tasks}tasks_source{_rate_suffix(rate)}_{seed}'


def qin2023_task_names(setting: str, role: str, seed: int, name_prefix: str = DEFAULT_PREFIX) -> List[str]:
  """The seqio task names of a setting's source or target tasks for one seed, in Table 9 order."""
  s = qin2023_setting(setting)
  if role not in ('source', 'target'):
    raise ValueError(f'role must be "source" or "target", got {role!r}.')
  return [seqio_task_name(t, seed, name_prefix) for t in (s.source if role == 'source' else s.target)]


def crossfit_split_mixture_name(split_file: str, part: str, seed: int, rate: str = 'equal',
                                name_prefix: str = DEFAULT_PREFIX) -> str:
  """E.g. ``crossfit_split_random_train_13`` for ``random.json``'s ``train`` list, seed 13."""
  if part not in CROSSFIT_SPLITS.get(split_file, {}):
    raise ValueError(f'CrossFit split file {split_file!r} has no list {part!r}; known: '
                     f'{ {k: tuple(v) for k, v in CROSSFIT_SPLITS.items()} }.')
  return f'{name_prefix}_split_{split_file}_{part}{_rate_suffix(rate)}_{seed}'


def _register_defaults() -> None:
  register_crossfit_tasks(CROSSFIT_TASKS)
  for setting in QIN2023_SETTINGS.values():
    for seed in SEEDS:
      for role, tasks, rates in (('source', setting.source, RATES), ('target', setting.target, ('equal',))):
        for rate in rates:
          register_crossfit_mixture(qin2023_mixture_name(setting.name, role, seed, rate), tasks, seed,
                                    rate=rate)
    for rate in RATES:
      register_crossfit_mixture(qin2023_mixture_name(setting.name, 'source', 'all', rate), setting.source,
                                SEEDS, rate=rate)
  for n, tasks in QIN2023_TABLE4_SOURCES.items():
    for rate in RATES:
      for seed in SEEDS:
        register_crossfit_mixture(qin2023_table4_mixture_name(n, seed, rate), tasks, seed, rate=rate)
      register_crossfit_mixture(qin2023_table4_mixture_name(n, 'all', rate), tasks, SEEDS, rate=rate)
  for split_file, lists in CROSSFIT_SPLITS.items():
    for part, tasks in lists.items():
      for seed in SEEDS:
        for rate in (RATES if part == 'train' else ('equal',)):
          register_crossfit_mixture(crossfit_split_mixture_name(split_file, part, seed, rate), tasks, seed,
                                    rate=rate)


# ---------------------------------------------------------------------------------------------------------
# Facts: crossfit_facts.json, generated from shared/data/crossfit_tasks.json and crossfit_partitions.json
# (INK-USC/CrossFit at commit 56285ca; Qin et al. 2023 Appendix A.1 Table 9, §5.1 Table 1).
# tests/tasks/test_crossfit.py checks them against those files.

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'crossfit_facts.json')) as _f:
  _FACTS = json.load(_f)

# CrossFit name -> facts, for the 160 tasks (alphabetical, as CrossFit lists them).
CROSSFIT_TASKS: Mapping[str, CrossFitTaskInfo] = types.MappingProxyType(
    {name: _as_info(name, {'metric': m, 'type': t, 'k': k}) for name, (m, t, k) in _FACTS['tasks'].items()})
# Table 9 heading -> task names.
QIN2023_LISTS: Mapping[str, Tuple[str, ...]] = types.MappingProxyType(
    {k: tuple(v) for k, v in _FACTS['qin2023_lists'].items()})
# Paper setting name ('R->R', 'Cls->Cls', ..., 'NP->P') -> Qin2023Setting.
QIN2023_SETTINGS: Mapping[str, Qin2023Setting] = types.MappingProxyType({
    name: Qin2023Setting(name=name, slug=qin2023_slug(name), source_list=src, target_list=tgt,
                         source=QIN2023_LISTS[src], target=QIN2023_LISTS[tgt])
    for name, src, tgt in _FACTS['qin2023_settings']})
# Qin et al. 2023 Table 4 (App. A.4, Table 10): Cls->Cls with 12 or 24 of the 45 classification source tasks
# (sampled by the paper; 12 is a subset of 24), in Table 10's order. Mixtures
# ``crossfit_qin2023_cls_to_cls_<n>tasks_source[_examples]_<seed|all>`` (`qin2023_table4_mixture_name`).
QIN2023_TABLE4_SOURCES: Mapping[int, Tuple[str, ...]] = types.MappingProxyType({
    12: ('superglue-rte', 'tweet_eval-sentiment', 'discovery', 'glue-rte', 'hatexplain', 'glue-cola', 'health_fact',
         'glue-mnli', 'imdb', 'ethos-disability', 'glue-wnli', 'scitail'),
    24: ('superglue-rte', 'tweet_eval-sentiment', 'discovery', 'glue-rte', 'superglue-wsc', 'scicite', 'hatexplain',
         'glue-cola', 'tweet_eval-emotion', 'sms_spam', 'health_fact', 'glue-mnli', 'imdb', 'ethos-disability',
         'glue-wnli', 'scitail', 'glue-sst2', 'tweet_eval-stance_abortion', 'glue-qnli',
         'ethos-directed_vs_generalized', 'ag_news', 'hate_speech_offensive', 'ethos-gender', 'kilt_fever'),
})
# CrossFit split file (without .json) -> list ('train', 'dev', 'test', 'all') -> task names.
CROSSFIT_SPLITS: Mapping[str, Mapping[str, Tuple[str, ...]]] = types.MappingProxyType({
    f: types.MappingProxyType({part: tuple(v) for part, v in lists.items()})
    for f, lists in _FACTS['crossfit_splits'].items()})

_register_defaults()
