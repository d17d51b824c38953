"""P3 registry: real P3 records (shared/data/p3_samples) written into the release layout and read back."""

import glob
import json
import os

import numpy as np
import pytest

from conftest import SHARED_DATA

import promptjax.tasks as T
from promptjax.data import feeds
from promptjax.tasks import config as cfg
from promptjax.tasks import facts, p3, utils

seqio = pytest.importorskip('seqio')
SAMPLES = os.path.join(SHARED_DATA, 'p3_samples')
SPIECE = os.path.join(SHARED_DATA, 't5', 'spiece.model')
needs_shared = pytest.mark.skipif(not os.path.isdir(SAMPLES), reason='needs ../shared/data (P3 samples, T5 vocab)')

OBQA = 'openbookqa_main_choices'
ADV = 'adversarial_qa_dbert_based_on'
HS = 'hellaswag_complete_first_then_score_eval'
SC = 'story_cloze_2016_Story_Continuation_and_Options_score_eval'
LONG = {'inputs': 1024, 'targets': 256}


def _records(subset, split):
  with open(os.path.join(SAMPLES, subset, f'{split}.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def p3_dir(tmp_path_factory):
  if not os.path.isdir(SAMPLES):
    pytest.skip('needs ../shared/data')
  root = str(tmp_path_factory.mktemp('p3'))
  for d in sorted(glob.glob(os.path.join(SAMPLES, '*', ''))):
    subset = os.path.basename(os.path.dirname(d))
    for f in sorted(glob.glob(d + '*.jsonl')):
      split = os.path.basename(f)[:-len('.jsonl')]
      p3.write_p3_split(os.path.join(root, subset), split, _records(subset, split), num_shards=2)
  return root


@pytest.fixture
def configured(p3_dir):
  T.set_data_dir('p3', p3_dir)
  T.set_vocabulary_path('t5', SPIECE)
  yield p3_dir
  T.set_data_dir('p3', None)
  T.set_vocabulary_path('t5', None)


def _read(name, split='validation', lengths=LONG, **kw):
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split, shuffle=kw.pop('shuffle', False), **kw)
  return list(utils.iterate(ds, name))


# ---------------------------------------------------------------------------------------------------
# names


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED_DATA, 'p3_mixtures.json')), reason='needs ../shared/data')
def test_embedded_names_equal_the_reference_list():
  with open(os.path.join(SHARED_DATA, 'p3_mixtures.json')) as f:
    ref = json.load(f)
  mixtures = facts.p3_mixtures()
  info = facts.p3_task_info()
  for name, mix in ref['mixtures'].items():
    assert mixtures[name] == [t['task'] for t in mix['tasks']]
    assert len(mixtures[name]) == mix['num_templates']
    for t in mix['tasks']:
      assert info[t['task']] == (t['dataset_name'], t['subset_name'], t['template_name'])
  assert (len(mixtures['d4_train']), len(mixtures['green']), len(mixtures['d4_dev'])) == (313, 116, 42)
  assert [d['name'] for d in facts.green_eval_datasets()] == [d['name'] for d in ref['green_eval_datasets']]


def test_registry_names_and_mixtures():
  mixtures = facts.p3_mixtures()
  tasks = set(seqio.TaskRegistry.names())
  for name in ('d4_train', 't0_train', 'green', 'd4_dev'):
    mix = seqio.get_mixture_or_task(name)
    base = mixtures['d4_train' if name == 't0_train' else name]
    assert sorted(t.name for t in mix.tasks) == sorted(base)
  for name in mixtures['green'] + mixtures['d4_dev']:
    assert name + p3.RANK_SUFFIX in tasks
  assert sorted(t.name for t in seqio.get_mixture_or_task('green_rank_classification').tasks) == sorted(
      t + p3.RANK_SUFFIX for t in mixtures['green'])
  # Held-out and training templates are disjoint (the P3 split).
  assert not set(mixtures['green']) & set(mixtures['d4_train'])


# ---------------------------------------------------------------------------------------------------
# reading, tokenization, truncation


@needs_shared
def test_written_files_follow_the_release_layout(p3_dir):
  files = sorted(os.listdir(os.path.join(p3_dir, OBQA)))
  assert files == ['info.train.json', 'info.validation.json', 'stats.train.json', 'stats.validation.json',
                   'train.tfrecord-00000-of-00002', 'train.tfrecord-00001-of-00002',
                   'validation.tfrecord-00000-of-00002', 'validation.tfrecord-00001-of-00002']
  with open(os.path.join(p3_dir, OBQA, 'info.train.json')) as f:
    info = json.load(f)
  assert info['features']['inputs'] == {'dtype': 'int32', 'shape': [None]}
  assert info['features']['answer_choices'] == {'dtype': 'string', 'shape': [None]}
  assert info['num_shards'] == 2
  with open(os.path.join(p3_dir, OBQA, 'stats.train.json')) as f:
    stats = json.load(f)
  recs = _records(OBQA, 'train')
  assert stats['examples'] == len(recs)
  assert stats['targets_max_tokens'] == max(len(r['targets']) for r in recs)


@needs_shared
def test_training_view_tokens_equal_the_release_and_the_vocabulary(configured):
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=SPIECE)
  recs = _records(ADV, 'validation')
  got = _read(ADV)
  assert len(got) == len(recs)
  # Two shards are interleaved: compare as multisets keyed by the text.
  by_text = {r['inputs_pretokenized']: r for r in recs}
  for ex in got:
    r = by_text[ex['inputs_pretokenized'].decode()]
    assert list(ex['inputs']) == r['inputs'] + [1]
    assert list(ex['inputs']) == sp.encode(r['inputs_pretokenized']) + [1]
    assert list(ex['targets']) == r['targets']  # P3 targets already end in EOS; it is not doubled
    assert r['targets'][-1] == 1


@needs_shared
def test_truncation_keeps_length_minus_one_tokens_then_eos(configured):
  recs = {r['inputs_pretokenized']: r for r in _records(ADV, 'validation')}
  for ex in _read(ADV, lengths={'inputs': 16, 'targets': 3}):
    r = recs[ex['inputs_pretokenized'].decode()]
    assert list(ex['inputs']) == r['inputs'][:15] + [1]
    assert list(ex['targets']) == r['targets'][:-1][:2] + [1]
  # The paper's 768/192 tokens before EOS are feature lengths 769/193.
  assert p3.PAPER_FEATURE_LENGTHS == {'inputs': 768 + 1, 'targets': 192 + 1}
  long_recs = [r for r in recs.values() if len(r['inputs']) > 100]
  assert long_recs
  for ex in _read(ADV, lengths={'inputs': 101, 'targets': 193}):
    r = recs[ex['inputs_pretokenized'].decode()]
    assert list(ex['inputs']) == r['inputs'][:100] + [1]


@needs_shared
def test_score_eval_training_view_keeps_only_the_correct_choice(configured):
  recs = _records(HS, 'train')
  correct = [r for r in recs if r['is_correct']]
  assert 0 < len(correct) < len(recs)
  got = _read(HS, split='train')
  assert sorted(tuple(e['targets']) for e in got) == sorted(tuple(r['targets']) for r in correct)


@needs_shared
def test_story_cloze_trains_on_validation_and_evaluates_on_test(configured):
  train = _read(SC, split='train')
  evaluation = _read(SC, split='validation')
  val_inputs = sorted(r['inputs_pretokenized'] for r in _records(SC, 'validation'))
  test_inputs = sorted(r['inputs_pretokenized'] for r in _records(SC, 'test'))
  assert sorted(e['inputs_pretokenized'].decode() for e in train) == val_inputs
  assert sorted(e['inputs_pretokenized'].decode() for e in evaluation) == test_inputs


@needs_shared
def test_seeded_shuffle_is_deterministic(configured):
  order = lambda seed: [e['inputs_pretokenized'] for e in _read(ADV, shuffle=True, seed=seed)]
  a, b, c = order(7), order(7), order(8)
  assert a == b
  assert a != c and sorted(a) == sorted(c)
  assert [e['inputs_pretokenized'] for e in _read(ADV)] == [e['inputs_pretokenized'] for e in _read(ADV)]


# ---------------------------------------------------------------------------------------------------
# rank classification


def _groups(rows):
  groups = {}
  for r in rows:
    groups.setdefault(int(r['idx'][0]), []).append(r)
  return groups


@needs_shared
def test_rank_classification_expands_answer_choices_and_regroups(configured):
  recs = _records(OBQA, 'validation')
  rows = _read(OBQA + p3.RANK_SUFFIX)
  assert len(rows) == sum(len(r['answer_choices']) for r in recs)
  groups = _groups(rows)
  assert len(groups) == len(recs)
  by_text = {r['inputs_pretokenized']: r for r in recs}
  for _, group in groups.items():
    r = by_text[group[0]['inputs_pretokenized'].decode()]
    assert [int(g['idx'][1]) for g in group] == list(range(len(r['answer_choices'])))
    assert [g['targets_pretokenized'].decode() for g in group] == r['answer_choices']
    assert all(list(g['inputs']) == r['inputs'] + [1] for g in group)
    assert sum(bool(g['is_correct']) for g in group) == 1
    gold = next(g for g in group if g['is_correct'])
    # The correct choice tokenizes to exactly P3's own target ids.
    assert list(gold['targets']) == r['targets']
    assert gold['targets_pretokenized'].decode().strip() == r['targets_pretokenized'].strip()


@needs_shared
def test_rank_classification_uses_score_eval_records_as_stored(configured):
  recs = _records(HS, 'validation')
  rows = _read(HS + p3.RANK_SUFFIX)
  assert sorted((tuple(r['idx']), bool(r['is_correct']), tuple(r['targets'])) for r in recs) == sorted(
      (tuple(int(i) for i in g['idx']), bool(g['is_correct']), tuple(g['targets'])) for g in rows)
  for group in _groups(rows).values():
    assert sum(bool(g['is_correct']) for g in group) == 1
    assert all(g['weight'] == 1.0 for g in group)


@needs_shared
def test_story_cloze_rank_classification_reads_test_for_validation(configured):
  recs = _records(SC, 'test')
  rows = _read(SC + p3.RANK_SUFFIX, split='validation')
  assert len(rows) == 2 * len(recs)
  assert all(sum(bool(g['is_correct']) for g in grp) == 1 for grp in _groups(rows).values())


# ---------------------------------------------------------------------------------------------------
# mixture rates


def _write_stats(root, subset, examples):
  os.makedirs(os.path.join(root, subset), exist_ok=True)
  with open(os.path.join(root, subset, 'stats.train.json'), 'w') as f:
    json.dump({'examples': examples}, f)


def test_d4_train_rates_are_capped_sizes_and_t0_divides_the_cap(tmp_path):
  mixtures = facts.p3_mixtures()
  dbert = [t for t in mixtures['d4_train'] if t.startswith('adversarial_qa_dbert_')]
  assert len(dbert) == 5
  small = 'ag_news_classify'
  assert small in mixtures['d4_train']
  for t in dbert:
    _write_stats(tmp_path, t, 600_000)
  _write_stats(tmp_path, small, 1234)
  T.set_data_dir('p3', str(tmp_path))
  try:
    d4 = seqio.get_mixture_or_task('d4_train')
    t0 = seqio.get_mixture_or_task('t0_train')
    for t in dbert:
      task = seqio.get_mixture_or_task(t)
      assert d4.get_rate(task) == 500_000  # per-template cap (paper / better-promptability)
      assert t0.get_rate(task) == 500_000 // 5  # T0: the dataset's cap split over its 5 templates
    task = seqio.get_mixture_or_task(small)
    assert d4.get_rate(task) == 1234 and t0.get_rate(task) == 1234
  finally:
    T.set_data_dir('p3', None)


# ---------------------------------------------------------------------------------------------------
# errors


def test_unknown_task_names_close_matches():
  with pytest.raises(T.DataError, match=r"'ag_news_clasify'.*Did you mean: ag_news_classify"):
    utils.get_task_or_mixture('ag_news_clasify')


def test_unconfigured_p3_dir_names_the_variable(monkeypatch):
  monkeypatch.delenv('PROMPTJAX_P3_DIR', raising=False)
  with pytest.raises(T.DataError, match='PROMPTJAX_P3_DIR'):
    seqio.get_mixture_or_task(ADV).get_dataset(LONG, split='train')


def test_missing_data_dir_and_subset_are_named(tmp_path):
  T.set_data_dir('p3', str(tmp_path / 'nope'))
  try:
    with pytest.raises(T.DataError, match=r"'adversarial_qa_dbert_based_on'.*nope does not exist.*PROMPTJAX_P3_DIR"):
      seqio.get_mixture_or_task(ADV).get_dataset(LONG, split='train')
    T.set_data_dir('p3', str(tmp_path))
    with pytest.raises(T.DataError, match=r'no directory .*adversarial_qa_dbert_based_on'):
      seqio.get_mixture_or_task(ADV).get_dataset(LONG, split='train')
  finally:
    T.set_data_dir('p3', None)


@needs_shared
def test_split_without_files_lists_present_splits(configured):
  with pytest.raises(T.DataError, match=r"no files .*test\.tfrecord-\*.*splits present: train, validation"):
    seqio.get_mixture_or_task(ADV).get_dataset(LONG, split='test')


@needs_shared
def test_malformed_records_raise_a_named_error(configured, tmp_path):
  import shutil
  import tensorflow as tf
  root = str(tmp_path)
  shutil.copytree(os.path.join(configured, ADV), os.path.join(root, ADV))
  # A record whose `inputs` is text instead of token ids, appended as a third shard.
  bad = tf.train.Example(features=tf.train.Features(feature={
      'inputs': tf.train.Feature(bytes_list=tf.train.BytesList(value=[b'oops'])),
      'inputs_pretokenized': tf.train.Feature(bytes_list=tf.train.BytesList(value=[b'x'])),
      'targets': tf.train.Feature(int64_list=tf.train.Int64List(value=[5, 1])),
      'targets_pretokenized': tf.train.Feature(bytes_list=tf.train.BytesList(value=[b'y']))}))
  path = os.path.join(root, ADV, 'validation.tfrecord-00002-of-00003')
  with tf.io.TFRecordWriter(path) as w:
    w.write(bad.SerializeToString())
  T.set_data_dir('p3', root)
  with pytest.raises(T.DataError, match=r"Task 'adversarial_qa_dbert_based_on': a malformed record"):
    _read(ADV)
  bad_list = utils.find_bad_records(ADV, 'validation')
  assert [(p, i) for p, i, _ in bad_list] == [(path, 0)]
  # A truncated (corrupted) shard.
  good = os.path.join(root, ADV, 'validation.tfrecord-00000-of-00002')
  data = open(good, 'rb').read()
  os.remove(path)
  with open(good, 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(T.DataError, match='malformed record'):
    _read(ADV)


# ---------------------------------------------------------------------------------------------------
# into the model


@needs_shared
def test_feature_converter_batches_feed_the_model(configured):
  import jax
  from promptjax.models import PromptableT5, get_config
  from promptjax.models.prompts import PromptConfig
  lengths = {'inputs': 32, 'targets': 8}
  batch = next(feeds.model_batches(OBQA, lengths, batch_size=4, split='validation'))
  assert set(batch) == {'encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens',
                        'decoder_loss_weights'}
  tgt = batch['decoder_target_tokens']
  assert tgt.shape == (4, 8) and batch['encoder_input_tokens'].shape == (4, 32)
  # decoder inputs are the targets shifted right with 0 as the start token; weights mark real tokens.
  np.testing.assert_array_equal(batch['decoder_input_tokens'][:, 0], 0)
  np.testing.assert_array_equal(batch['decoder_input_tokens'][:, 1:], tgt[:, :-1])
  np.testing.assert_array_equal(batch['decoder_loss_weights'], (tgt != 0).astype(np.int32))
  recs = _records(OBQA, 'validation')
  truncated = {tuple(r['targets'][:-1][:7] + [1]) for r in recs}
  assert all(tuple(t[t != 0]) in truncated for t in tgt)
  model = PromptableT5(get_config('tiny', vocab_size=32128), PromptConfig(kind='shallow', length=4))
  params = model.init_params(jax.random.PRNGKey(0))
  loss, aux = model.loss_fn(params, {k: np.asarray(v) for k, v in batch.items()}, None)
  assert np.isfinite(float(loss))
  # A freshly initialized model is close to uniform over the vocabulary.
  assert abs(float(loss) - np.log(32128)) < 1.0
