"""The bundled mini benchmark through the registries (P3, CrossFit and text readers), and the task CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import seqio
import tensorflow as tf

import promptjax.tasks as T
from promptjax.data import feeds
from promptjax.tasks import config as cfg
from promptjax.tasks import mini, p3, utils

DATA = cfg.BUNDLED_DIR
LENGTHS = {'inputs': 128, 'targets': 16}


def _raw_records(subset, split):
  """The subset's TFRecords parsed with the schema of its info.json (independent of the reader)."""
  d = os.path.join(DATA, 'p3', subset)
  with open(os.path.join(d, f'info.{split}.json')) as f:
    feats = json.load(f)['features']
  spec = {}
  for k, v in feats.items():
    dtype = {'int32': tf.int64, 'bool': tf.int64, 'float32': tf.float32, 'string': tf.string}[v['dtype']]
    spec[k] = (tf.io.VarLenFeature(dtype) if v['shape'] and v['shape'][0] is None
               else tf.io.FixedLenFeature(v['shape'], dtype))
  out = []
  for path in sorted(tf.io.gfile.glob(os.path.join(d, f'{split}.tfrecord-*'))):
    for rec in tf.data.TFRecordDataset(path):
      ex = tf.io.parse_single_example(rec, spec)
      out.append({k: (tf.sparse.to_dense(v).numpy() if isinstance(v, tf.SparseTensor) else v.numpy())
                  for k, v in ex.items()})
  return out


def _read(name, split='train', lengths=LENGTHS):
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split, shuffle=False)
  return list(utils.iterate(ds, name))


def test_every_manifest_entry_is_registered():
  m = mini.manifest()
  names = set(seqio.TaskRegistry.names())
  for subset in m['p3']['train_subsets'] + m['p3']['heldout_subsets']:
    assert subset in names
  for subset in m['p3']['heldout_subsets']:
    assert subset + p3.RANK_SUFFIX in names
  for task in m['crossfit']['tasks']:
    for seed in m['crossfit']['seeds']:
      assert f'crossfit_{task}_{seed}' in names
  assert {'mini_text_nsp_yes_maybe_no', 'mini_text_mc_next_segment'} <= names
  mixes = set(seqio.MixtureRegistry.names())
  assert {'mini_train', 'mini_heldout', 'mini_heldout_rank_classification'} <= mixes
  # P3's split principle: held-out families share no task type with training families.
  fam = m['p3']['families']
  train_types = {fam[f]['task_type'] for f in m['p3']['train_families']}
  heldout_types = {fam[f]['task_type'] for f in m['p3']['heldout_families']}
  assert not train_types & heldout_types


def test_training_view_counts_and_tokens_match_the_files():
  subset = mini.p3_subsets('train')[0]
  raw = _raw_records(subset, 'train')
  got = _read(subset)
  assert len(got) == len(raw)
  for ex, r in zip(got, raw):  # one shard, unshuffled: same order
    assert list(ex['inputs']) == list(r['inputs']) + [1]
    assert list(ex['targets']) == list(r['targets'])


def test_heldout_rank_classification_regroups_with_one_correct_choice():
  subset = mini.p3_subsets('heldout')[0]
  raw = _raw_records(subset, 'validation')
  rows = _read(subset + p3.RANK_SUFFIX, split='validation')
  assert len(rows) == len(raw)
  groups = {}
  for r in rows:
    groups.setdefault(int(r['idx'][0]), []).append(r)
  n_choices = mini.manifest()['p3']['subsets'][subset]['num_choices']
  assert all(len(g) == n_choices for g in groups.values())
  assert all(sum(bool(x['is_correct']) for x in g) == 1 for g in groups.values())
  # The training view of a held-out template keeps exactly the correct rows.
  train_raw = [r for r in _raw_records(subset, 'train') if r['is_correct']]
  assert len(_read(subset)) == len(train_raw)


def test_mini_train_rates_are_example_counts():
  mix = seqio.get_mixture_or_task('mini_train')
  for task in mix.tasks:
    with open(os.path.join(DATA, 'p3', task.name, 'stats.train.json')) as f:
      assert mix.get_rate(task) == min(json.load(f)['examples'], p3.SAMPLING_CAP)


def test_mini_vocabulary_conventions():
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=os.path.join(DATA, 'vocab', 'mini_spm.model'))
  vocab = T.get_vocabulary('mini')
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
  assert vocab.vocab_size == sp.get_piece_size() + 100
  for word in ('yes', 'no', 'maybe'):
    assert len(vocab.encode(word)) == 1, word


def test_crossfit_and_text_tasks_read_the_bundled_files():
  m = mini.manifest()
  task, seed = sorted(m['crossfit']['tasks'])[0], m['crossfit']['seeds'][0]
  k = m['crossfit']['tasks'][task]['k']
  path = os.path.join(DATA, 'crossfit', task, f'{task}_{k}_{seed}_train.tsv')
  with open(path) as f:
    lines = [line.strip().split('\t') for line in f if line.strip()]
  got = _read(f'crossfit_{task}_{seed}')
  assert [g['inputs_pretokenized'].decode() for g in got] == [l[0] for l in lines]
  text = _read('mini_text_nsp_yes_maybe_no')
  assert text and {t['targets_pretokenized'].decode() for t in text} == {'yes', 'no', 'maybe'}


def test_batches_feed_a_model_with_the_mini_vocabulary():
  import jax
  from promptjax.models import PromptableT5, PromptConfig, get_config
  vocab = T.get_vocabulary('mini')
  batch = next(feeds.model_batches('mini_train', {'inputs': 48, 'targets': 8}, batch_size=4))
  assert batch['encoder_input_tokens'].shape == (4, 48)
  assert int(batch['encoder_input_tokens'].max()) < vocab.vocab_size
  model = PromptableT5(get_config('tiny', vocab_size=vocab.vocab_size), PromptConfig(kind='deep', length=2))
  params = model.init_params(jax.random.PRNGKey(0))
  loss, _ = model.loss_fn(params, {k: np.asarray(v) for k, v in batch.items()})
  assert abs(float(loss) - np.log(vocab.vocab_size)) < 1.0


def _cli(*args, env=None):
  return subprocess.run([sys.executable, '-m', 'promptjax.tasks', *args], capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, timeout=300)


def test_task_cli_shows_counts_and_fails_cleanly(tmp_path, capsys):
  from promptjax.tasks.__main__ import main
  subset = mini.p3_subsets('train')[0]
  assert main(['count', subset, '--split', 'validation']) == 0   # in this process (a fresh one costs ~15 s)
  assert capsys.readouterr().out.strip() == f'{subset}\tvalidation\t{len(_raw_records(subset, "validation"))}'
  assert main(['show', 'mini_trian']) == 2
  assert "Did you mean: mini_train" in capsys.readouterr().err
  # One run of `python -m promptjax.tasks` itself: the entry point, the environment variable, exit status 2.
  missing = _cli('show', subset, env={'PROMPTJAX_MINI_DIR': str(tmp_path / 'gone')})
  assert missing.returncode == 2 and 'does not exist' in missing.stderr and 'PROMPTJAX_MINI_DIR' in missing.stderr
