"""Where the task registries read their data and vocabulary from, and the errors they raise.

Every registry resolves its directory *when data is read*, not when a task is registered, so importing
`promptjax.tasks` never touches the file system or the network, and a directory can be set after import.

Resolution order for a data family (``p3``, ``crossfit``, ``text``, ``mini``):

1. `set_data_dir(family, path)`, or gin bindings of `configure_data` (``configure_data.p3_dir = ...``),
   which the CLI applies at start-up;
2. the environment variable in `ENV_VARS` (e.g. ``PROMPTJAX_P3_DIR=/data/P3/data``);
3. the default: the bundled mini benchmark for ``mini``; nothing for the real families, which then fail
   with a message naming the variable to set.

Paths may be local or ``gs://`` (all I/O goes through ``tf.io.gfile``).

Vocabularies follow the same pattern: ``t5`` is the real T5 SentencePiece model (32000 pieces, pad 0,
eos 1, unk 2, plus 100 extra ids; set it with ``PROMPTJAX_T5_VOCAB`` or `set_vocabulary_path`, default
the public ``gs://t5-data`` path, which is only read if nothing else is configured); ``mini`` is the
small vocabulary bundled with the mini benchmark.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import seqio
from promptjax.errors import DataError

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')

FAMILIES = ('p3', 'crossfit', 'text', 'mini')
ENV_VARS = {
    'p3': 'PROMPTJAX_P3_DIR',
    'crossfit': 'PROMPTJAX_CROSSFIT_DIR',
    'text': 'PROMPTJAX_TEXT_DIR',
    'mini': 'PROMPTJAX_MINI_DIR',
}
DEFAULT_DIRS = {'mini': BUNDLED_DIR}
WHAT = {
    'p3': 'a copy of the P3 release (the data/ folder of bigscience/P3: <subset>/<split>.tfrecord-*)',
    'crossfit': 'CrossFit few-shot data (<task>/<task>_<k>_<seed>_<split>.tsv, as INK-USC/CrossFit writes it)',
    'text': 'a document corpus (OpenWebText-style: *.txt one document per file, or *.jsonl with a "text" field)',
    'mini': 'the bundled mini benchmark (promptjax/tasks/data)',
}
# SUPMER's downstream evaluation data (promptjax.supmer.datasets).
FAMILIES += ('supmer_downstream',)
ENV_VARS['supmer_downstream'] = 'PROMPTJAX_SUPMER_DOWNSTREAM_DIR'
WHAT['supmer_downstream'] = ('the SUPMER downstream releases (LM-BFF data/original SST-2 sst-5 mr cr subj trec, '
                             'SuperGLUE CB RTE WiC, GLUE MRPC QNLI QQP, DoCoGen reviews.json)')

# SUPMER anchor meta-tasks: the output of `python -m promptjax.supmer.construct` (promptjax.supmer.tasks).
FAMILIES += ('supmer',)
ENV_VARS['supmer'] = 'PROMPTJAX_SUPMER_DIR'
WHAT['supmer'] = ('the output of the SUPMER anchor meta-task construction (python -m '
                  'promptjax.supmer.construct --corpus_dir=... --output_dir=...: manifest.json, '
                  'centroids.npy, <format>/<split>-*.tfrecord)')

# MetaPT's Yelp-5 cluster tasks: the output of `python -m promptjax.supmer.baselines metapt`.
FAMILIES += ('metapt',)
ENV_VARS['metapt'] = 'PROMPTJAX_METAPT_DIR'
WHAT['metapt'] = ('the MetaPT Yelp-5 cluster tasks (python -m promptjax.supmer.baselines metapt '
                  '--yelp_dir=... --output_dir=...: manifest.json, <split>/cluster-*.tfrecord)')

VOCAB_ENV_VARS = {'t5': 'PROMPTJAX_T5_VOCAB', 'mini': 'PROMPTJAX_MINI_VOCAB'}
DEFAULT_VOCABS = {
    't5': 'gs://t5-data/vocabs/cc_all.32000/sentencepiece.model',
    'mini': os.path.join(BUNDLED_DIR, 'vocab', 'mini_spm.model'),
}
EXTRA_IDS = 100

_data_dirs: Dict[str, str] = {}
_vocab_paths: Dict[str, str] = {}


def _check_family(family: str, known) -> None:
  if family not in known:
    raise DataError(f'Unknown data family {family!r}; known: {", ".join(known)}.')


def set_data_dir(family: str, path: Optional[str]) -> None:
  """Points a data family at a directory (None forgets the setting)."""
  _check_family(family, FAMILIES)
  if path is None:
    _data_dirs.pop(family, None)
  else:
    _data_dirs[family] = str(path)


def get_data_dir(family: str) -> str:
  """The directory a family reads from; a `DataError` naming the fix if none is configured."""
  _check_family(family, FAMILIES)
  path = _data_dirs.get(family) or os.environ.get(ENV_VARS[family]) or DEFAULT_DIRS.get(family)
  if not path:
    raise DataError(
        f'No {family} data directory is configured. Point it at {WHAT[family]}: set the environment '
        f'variable {ENV_VARS[family]}=/path, call promptjax.tasks.set_data_dir({family!r}, "/path"), '
        f'or bind the gin parameter promptjax.tasks.configure_data.{family}_dir = "/path".')
  return path


def require_dir(path: str, family: str, task: str) -> None:
  import tensorflow as tf
  if not tf.io.gfile.isdir(path):
    raise DataError(
        f'Task {task!r}: data directory {path} does not exist. Point the {family} data dir at '
        f'{WHAT[family]} ({ENV_VARS[family]}=/path or promptjax.tasks.set_data_dir({family!r}, ...)).')


def set_vocabulary_path(name: str, path: Optional[str]) -> None:
  """Points vocabulary ``t5`` or ``mini`` at a SentencePiece model file (None forgets the setting)."""
  _check_family(name, tuple(VOCAB_ENV_VARS))
  if path is None:
    _vocab_paths.pop(name, None)
  else:
    _vocab_paths[name] = str(path)


def get_vocabulary_path(name: str) -> str:
  _check_family(name, tuple(VOCAB_ENV_VARS))
  return _vocab_paths.get(name) or os.environ.get(VOCAB_ENV_VARS[name]) or DEFAULT_VOCABS[name]


class ConfiguredVocabulary(seqio.SentencePieceVocabulary):
  """A seqio `SentencePieceVocabulary` whose model file is looked up when first used.

  Tasks are registered at import time with one of these; the path comes from `get_vocabulary_path(name)`
  at first use, so tests and users can point ``t5`` at a local copy of the T5 model after import.
  T5 conventions: pad 0, eos 1, unk 2, and `EXTRA_IDS` sentinel ids appended after the pieces.
  """

  def __init__(self, name: str, extra_ids: int = EXTRA_IDS):
    _check_family(name, tuple(VOCAB_ENV_VARS))
    self._name = name
    super().__init__(sentencepiece_model_file=None, extra_ids=extra_ids)

  @property
  def name(self) -> str:
    return self._name

  def _model_context(self):
    if self._model is None:
      path = get_vocabulary_path(self._name)
      import tensorflow as tf
      if not path.startswith('gs://') and not tf.io.gfile.exists(path):
        raise DataError(
            f'Vocabulary {self._name!r}: SentencePiece model {path} does not exist. Set '
            f'{VOCAB_ENV_VARS[self._name]}=/path/to/spiece.model or '
            f'promptjax.tasks.set_vocabulary_path({self._name!r}, ...).')
      self._sentencepiece_model_file = path
    return super()._model_context()

  @property
  def sentencepiece_model_file(self) -> str:
    return self._sentencepiece_model_file or get_vocabulary_path(self._name)

  def __eq__(self, other):
    if isinstance(other, ConfiguredVocabulary):
      return self._name == other._name and self._extra_ids == other._extra_ids
    return super().__eq__(other)

  def __hash__(self):
    return hash((self._name, self._extra_ids))


def configure_data(p3_dir: Optional[str] = None, crossfit_dir: Optional[str] = None,
                   text_dir: Optional[str] = None, mini_dir: Optional[str] = None,
                   t5_vocab: Optional[str] = None, mini_vocab: Optional[str] = None,
                   supmer_dir: Optional[str] = None,
                   supmer_downstream_dir: Optional[str] = None,
                   metapt_dir: Optional[str] = None) -> None:
  """Sets every data directory / vocabulary given (gin: ``promptjax.tasks.configure_data.p3_dir = ...``).

  Arguments left as None keep their current setting (environment variable or default).
  """
  for family, path in (('p3', p3_dir), ('crossfit', crossfit_dir), ('text', text_dir), ('mini', mini_dir)):
    if path is not None:
      set_data_dir(family, path)
  if supmer_downstream_dir is not None:
    set_data_dir('supmer_downstream', supmer_downstream_dir)
  if supmer_dir is not None:
    set_data_dir('supmer', supmer_dir)
  if metapt_dir is not None:
    set_data_dir('metapt', metapt_dir)
  for name, path in (('t5', t5_vocab), ('mini', mini_vocab)):
    if path is not None:
      set_vocabulary_path(name, path)


_VOCABS: Dict[str, ConfiguredVocabulary] = {}


def get_vocabulary(name: str = 't5') -> ConfiguredVocabulary:
  """The shared `ConfiguredVocabulary` for ``t5`` or ``mini`` (one object per name)."""
  if name not in _VOCABS:
    _VOCABS[name] = ConfiguredVocabulary(name)
  return _VOCABS[name]


def output_features(vocab_name: str = 't5') -> Dict[str, seqio.Feature]:
  """T5's text-to-text output features: EOS appended after trimming on both sides."""
  vocab = get_vocabulary(vocab_name)
  return {
      'inputs': seqio.Feature(vocabulary=vocab, add_eos=True),
      'targets': seqio.Feature(vocabulary=vocab, add_eos=True),
  }
