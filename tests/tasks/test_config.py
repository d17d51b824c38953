"""Data-directory and vocabulary configuration of the task registries."""

import os
import pickle

import gin
import pytest

from conftest import SHARED_DATA

import promptjax.tasks as T
from promptjax.tasks import config as cfg

SPIECE = os.path.join(SHARED_DATA, 't5', 'spiece.model')


@pytest.fixture(autouse=True)
def _reset():
  from promptjax import cli
  cli.register_gin_configurables()   # gin lives at the edge: the CLI registers configure_data
  yield
  for family in cfg.FAMILIES:
    T.set_data_dir(family, None)
  for name in cfg.VOCAB_ENV_VARS:
    T.set_vocabulary_path(name, None)
  gin.clear_config()


def test_resolution_order_explicit_then_env_then_default(monkeypatch, tmp_path):
  monkeypatch.delenv('PROMPTJAX_MINI_DIR', raising=False)
  assert T.get_data_dir('mini') == os.path.join(os.path.dirname(cfg.__file__), 'data')
  monkeypatch.setenv('PROMPTJAX_MINI_DIR', str(tmp_path / 'env'))
  assert T.get_data_dir('mini') == str(tmp_path / 'env')
  T.set_data_dir('mini', str(tmp_path / 'explicit'))
  assert T.get_data_dir('mini') == str(tmp_path / 'explicit')
  T.set_data_dir('mini', None)
  assert T.get_data_dir('mini') == str(tmp_path / 'env')


def test_real_families_have_no_default(monkeypatch):
  for family, var in (('p3', 'PROMPTJAX_P3_DIR'), ('crossfit', 'PROMPTJAX_CROSSFIT_DIR'),
                      ('text', 'PROMPTJAX_TEXT_DIR')):
    monkeypatch.delenv(var, raising=False)
    with pytest.raises(T.DataError, match=f'{var}=/path.*configure_data.{family}_dir'):
      T.get_data_dir(family)


def test_unknown_family_is_an_error():
  with pytest.raises(T.DataError, match="Unknown data family 'squad'"):
    T.set_data_dir('squad', '/x')


def test_gin_configure_data_sets_dirs_and_vocab(tmp_path):
  gin.parse_config([f'promptjax.tasks.configure_data.p3_dir = "{tmp_path}"',
                    f'promptjax.tasks.configure_data.t5_vocab = "{tmp_path}/v.model"'])
  gin.get_configurable(T.configure_data)()
  assert T.get_data_dir('p3') == str(tmp_path)
  assert T.get_vocabulary_path('t5') == f'{tmp_path}/v.model'


def test_gin_rejects_unknown_binding():
  with pytest.raises(ValueError, match='p4_dir'):
    gin.parse_config(['promptjax.tasks.configure_data.p4_dir = "/x"'])


def test_missing_vocabulary_file_names_the_fix(tmp_path):
  T.set_vocabulary_path('t5', str(tmp_path / 'missing.model'))
  vocab = cfg.ConfiguredVocabulary('t5')
  with pytest.raises(T.DataError, match='missing.model does not exist.*PROMPTJAX_T5_VOCAB'):
    vocab.encode('hello')


@pytest.mark.skipif(not os.path.exists(SPIECE), reason='needs ../shared/data/t5/spiece.model')
def test_t5_vocabulary_conventions():
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=SPIECE)
  T.set_vocabulary_path('t5', SPIECE)
  vocab = cfg.ConfiguredVocabulary('t5')
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
  assert vocab.vocab_size == sp.get_piece_size() + 100 == 32100
  text = 'Is the premise true? yes, no or maybe.'
  assert vocab.encode(text) == sp.encode(text)
  assert vocab.encode('yes no maybe') == [4273, 150, 2087]
  # T5's sentinels count down from the top of the vocabulary.
  assert vocab.decode([32099]) == '<extra_id_0>' and vocab.decode([32000]) == '<extra_id_99>'
  # Picklable (gin deep-copies configurables' arguments) and the model reloads lazily.
  clone = pickle.loads(pickle.dumps(vocab))
  assert clone == vocab and clone.encode(text) == sp.encode(text)
  assert T.get_vocabulary('t5') is T.get_vocabulary('t5')
