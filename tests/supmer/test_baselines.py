"""SUPMER's prompt-initialization baselines (promptjax.supmer.baselines, promptjax/configs/paper/pan2023_*):
PPT and Unified-PPT over the mini SUPMER construction, MetaPT over a fake Yelp Review Full csv, and the paper
gin files (their rows' commands run end to end in tests/test_paper_rows.py).

Independent references: construction records are read back with plain `tf.train.Example` parsing; the
expected PPT / Unified-PPT inputs are written here by hand from the raw fields; MetaPT cluster memberships
are recomputed from scratch (the mini encoder on hand-tokenized reviews, numpy pooling, nearest centroid).
"""

import csv
import hashlib
import io
import json
import os

import gin
import numpy as np
import pytest
import seqio

import promptjax.tasks as T
from promptjax import cli
from promptjax.supmer import baselines as sb
from tests.helpers import read_records as _records

LENGTHS = {'inputs': 256, 'targets': 8}


@pytest.fixture
def supmer_dir(supmer_construction):
  T.set_data_dir('supmer', supmer_construction[0])   # the mini construction (tests/conftest.py)
  yield supmer_construction[0]
  T.set_data_dir('supmer', None)


def _task_examples(name, split='train', limit=-1):
  ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False, num_epochs=1).take(limit)
  return [{k: (v.decode() if isinstance(v, bytes) else v) for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


def _question(s):
  return s.rstrip('.!?') + '?'


def _term(s):
  return s if s[-1:] in '.!?' or s[-2:-1] in '.!?' and s[-1:] in '"\')]' else s + '.'


def _exemplars(out, split):
  """cluster -> anchors of that cluster's format-(e) records, in md5 order (written from the raw records)."""
  by = {}
  for r in _records(out, 'cls_cluster_centroid', split):
    by.setdefault(r['anchor_cluster'][0], set()).add(r['anchor'][0])
  return {c: sorted(v, key=lambda t: hashlib.md5(t.encode()).hexdigest()) for c, v in by.items()}


def _exemplar_of(table, cluster, anchor):
  return next(t for t in table[cluster] if t != anchor)


def test_ppt_mixture_covers_the_three_formats_of_the_mini_construction(supmer_dir):
  mix = seqio.get_mixture_or_task('mini_ppt_pretrain')
  assert sorted(t.name for t in mix.tasks) == ['mini_ppt_cls_cluster_exemplar', 'mini_supmer_mc_next_segment',
                                               'mini_supmer_nsp_yes_maybe_no']
  uni = seqio.get_mixture_or_task('mini_unified_ppt_pretrain')
  assert sorted(t.name for t in uni.tasks) == ['mini_unified_ppt_cls_cluster_centroid',
                                               'mini_unified_ppt_mc_next_segment',
                                               'mini_unified_ppt_nsp_yes_maybe_no']
  vocab = T.get_vocabulary('mini')
  for name in ('mini_ppt_pretrain', 'mini_unified_ppt_pretrain'):
    ds = seqio.get_dataset(name, LENGTHS, dataset_split='train', shuffle=True, seed=0, num_epochs=1,
                           feature_converter=seqio.EncDecFeatureConverter(pack=False))
    texts = [vocab.decode([int(t) for t in ex['encoder_input_tokens'] if t > 1])
             for ex in ds.take(48).as_numpy_iterator()]
    kinds = {'mc' if ' A. ' in t and ' D. ' in t else ('nsp' if ' B. no' in t or '<extra_id_0>.' in t else '?')
             for t in texts}
    assert 'mc' in kinds and 'nsp' in kinds, name


def test_exemplar_task_renders_each_centroid_as_a_sentence_of_that_cluster(supmer_dir):
  raw = _records(supmer_dir, 'cls_cluster_centroid', 'validation')
  got = _task_examples('mini_ppt_cls_cluster_exemplar', 'validation')
  assert len(got) == len(raw) > 0
  table = _exemplars(supmer_dir, 'validation')
  split_sentences = {r['anchor'][0] for r in raw}
  for r, g in zip(raw, got):
    anchor, clusters, label = r['anchor'][0], r['option_clusters'], r['label'][0]
    ex = [_exemplar_of(table, c, anchor) for c in clusters]
    want = (f'{_question(anchor)} A. {_term(ex[0])} B. {_term(ex[1])} C. {_term(ex[2])} D. {_term(ex[3])} '
            'Answer: <extra_id_0>')
    assert g['inputs_pretokenized'] == want
    assert g['targets_pretokenized'] == '<extra_id_0> ' + 'ABCD'[label] == r['targets_pretokenized'][0]
    assert '<extra_id_99>' not in g['inputs_pretokenized'] and 'encoder_input_vectors' not in g
    assert anchor not in ex
    assert set(ex) <= split_sentences  # exemplars come from the record's own split


def test_unified_ppt_templates_by_hand_for_one_record_of_each_format(supmer_dir):
  table = _exemplars(supmer_dir, 'train')
  for fmt in sb.UNIFIED_FORMATS:
    raw = _records(supmer_dir, fmt)[0]
    got = _task_examples(f'mini_unified_ppt_{fmt}', limit=1)[0]
    anchor, inputs, target = raw['anchor'][0], raw['inputs_pretokenized'][0], raw['targets_pretokenized'][0]
    assert target.startswith('<extra_id_0> ')   # the word at the sentinel, as the construction writes it
    target = target[len('<extra_id_0> '):]
    if fmt == 'nsp_yes_maybe_no':
      s2 = inputs.split(' <extra_id_0>. ', 1)[1]
      want = f'{_question(anchor)} {s2} A. yes. B. no. C. maybe. ? The correct one is <extra_id_0>'
      letter = {'yes': 'A', 'no': 'B', 'maybe': 'C'}[target]
    elif fmt == 'sp_same_cluster':
      s2 = inputs.split(' <extra_id_0>. ', 1)[1]
      want = f'{_question(anchor)} {s2} A. yes. B. no. ? The correct one is <extra_id_0>'
      letter = {'yes': 'A', 'no': 'B'}[target]
    elif fmt in ('mc_next_segment', 'mc_same_cluster'):
      assert inputs.endswith(' Answer: <extra_id_0>')
      want = inputs.replace(' Answer: <extra_id_0>', ' ? The correct one is <extra_id_0>')
      letter = target
    else:
      ex = [_exemplar_of(table, c, anchor) for c in raw['option_clusters']]
      want = (f'{_question(anchor)} A. {_term(ex[0])} B. {_term(ex[1])} C. {_term(ex[2])} D. {_term(ex[3])} '
              '? The correct one is <extra_id_0>')
      letter = target
    assert got['inputs_pretokenized'] == want, fmt
    assert got['targets_pretokenized'] == f'<extra_id_0> {letter}', fmt
    assert list(got['answer_choices']) == [f'<extra_id_0> {c}'.encode() for c in 'ABCD'][
        :{'nsp_yes_maybe_no': 3, 'sp_same_cluster': 2}.get(fmt, 4)]


def test_unified_ppt_answers_map_to_the_right_letter_for_every_record(supmer_dir):
  for fmt, words in (('nsp_yes_maybe_no', ('yes', 'no', 'maybe')), ('sp_same_cluster', ('yes', 'no'))):
    raw, got = _records(supmer_dir, fmt, 'validation'), _task_examples(f'mini_unified_ppt_{fmt}', 'validation')
    assert len(raw) == len(got) > 0
    letters = [g['targets_pretokenized'] for g in got]
    assert letters == ['<extra_id_0> ' + 'ABC'[words.index(r['targets_pretokenized'][0].split()[-1])] for r in raw]
    assert {g['label'] for g in got} == set(range(len(words)))
  raw, got = _records(supmer_dir, 'mc_next_segment'), _task_examples('mini_unified_ppt_mc_next_segment')
  assert [g['targets_pretokenized'] for g in got] == [r['targets_pretokenized'][0] for r in raw]


def test_unified_inputs_helper():
  assert (sb.unified_inputs('Is it? x', ['yes', 'no!']) ==
          'Is it? x A. yes. B. no! ? The correct one is <extra_id_0>')


# ---------------------------------------------------------------------------------------------------
# MetaPT.

TOPICS = {
    'food': 'the pasta and the pizza at this restaurant with the waiter and the dessert menu',
    'hotel': 'the hotel room and the bed with the front desk staff and the pool near the lobby',
    'car': 'the mechanic fixed my car brakes and the oil change at this garage with the tires',
    'salon': 'my haircut and the color at this salon with the stylist and the nail polish',
}
FEELING = ['it was awful and I hated it', 'it was poor and not worth it', 'it was fine and average overall',
           'it was nice and I liked it', 'it was amazing and I loved it']
STARS = {1: 'terrible', 2: 'bad', 3: 'okay', 4: 'good', 5: 'great'}


def _write_yelp(path, repeats, seed):
  """The Yelp Review Full layout: headerless, every field quoted, "" inside, newlines as the two chars \\n."""
  rng = np.random.default_rng(seed)
  rows = []
  with open(path, 'w', newline='') as f:
    w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator='\n')
    for _ in range(repeats):
      for words in TOPICS.values():
        for stars in range(1, 6):
          text = f'{words} {rng.integers(100)}.\\n{FEELING[stars - 1]}, said "me".'
          w.writerow([str(stars), text])
          rows.append((stars, text))
  return rows


@pytest.fixture(scope='module')
def metapt(tmp_path_factory):
  root = tmp_path_factory.mktemp('yelp')
  train = _write_yelp(root / 'train.csv', 10, 0)
  _write_yelp(root / 'test.csv', 2, 1)
  cfg = sb.MetaptConfig(yelp_dir=str(root), output_dir=str(root / 'out'), vocab_name='mini', model_size='mini',
                        num_clusters=sb.MINI_METAPT_NUM_CLUSTERS, embed_length=32, validation_fraction=0.2)
  manifest = sb.build_metapt(cfg)
  return cfg, manifest, train


@pytest.fixture
def metapt_dir(metapt):
  T.set_data_dir('metapt', metapt[0].output_dir)
  yield metapt[0].output_dir
  T.set_data_dir('metapt', None)


def test_yelp_csv_reader_reads_the_release_layout(tmp_path):
  p = tmp_path / 'train.csv'
  p.write_text('"5","Great ""tacos"".\\nWill return."\n"1","Bad."\n')
  assert sb.read_yelp_csv(str(p)) == [(5, 'Great "tacos". Will return.'), (1, 'Bad.')]
  p.write_text('"6","x"\n')
  with pytest.raises(T.DataError, match='train.csv:1'):
    sb.read_yelp_csv(str(p))


def test_metapt_clusters_are_balanced_sentiment_tasks(metapt, metapt_dir):
  cfg, manifest, rows = metapt
  mix = seqio.get_mixture_or_task('mini_metapt_yelp5')
  assert sorted(t.name for t in mix.tasks) == [f'mini_metapt_yelp5_c{k:03d}' for k in range(4)]
  from promptjax.models import PromptableT5, PromptConfig, get_config
  import jax
  model = PromptableT5(get_config('mini'), PromptConfig(kind='none'))
  params = model.init_params(jax.random.PRNGKey(0))
  vocab = seqio.SentencePieceVocabulary(T.get_vocabulary_path('mini'), extra_ids=100)
  with open(os.path.join(metapt_dir, 'centroids.npy'), 'rb') as f:
    centroids = np.load(io.BytesIO(f.read())).astype(np.float64)
  by_text = {' '.join(t.replace('\\n', ' ').split()): s for s, t in rows}
  seen = 0
  for k, task in enumerate(sorted(mix.tasks, key=lambda t: t.name)):
    exs = _task_examples(task.name)
    stars = [by_text[e['review']] for e in exs]
    counts = np.bincount(stars, minlength=6)[1:]
    assert counts.min() == counts.max() >= 2, (task.name, counts)   # balanced labels
    for e, s in zip(exs, stars):
      assert e['inputs_pretokenized'] == f'{e["review"]} It was <extra_id_0>.'
      assert e['targets_pretokenized'] == f'<extra_id_0> {STARS[s]}'   # the word at the sentinel
      assert '\\' not in e['review'] and 'said "me".' in e['review']
    tok = np.zeros((len(exs), 32), np.int32)
    for r, e in enumerate(exs):
      ids = list(vocab.encode(e['review']))[:31] + [1]
      tok[r, :len(ids)] = ids
    enc, _ = jax.jit(model.encode)(params, tok)
    enc, m = np.asarray(enc, np.float64), (tok > 0)[..., None]
    emb = (enc * m).sum(1) / m.sum(1)
    d = ((emb[:, None] - centroids[None]) ** 2).sum(-1)
    assert (d.argmin(1) == k).all(), task.name
    seen += len(exs)
    assert len(_task_examples(task.name, 'test')) == sum(manifest['splits']['test'][f'{k:05d}'].values()) > 0
  assert seen == sum(sum(c.values()) for c in manifest['splits']['train'].values()) >= 0.5 * len(rows)


def test_metapt_build_is_deterministic(metapt, tmp_path):
  cfg, manifest, _ = metapt
  import dataclasses
  again = sb.build_metapt(dataclasses.replace(cfg, output_dir=str(tmp_path / 'again')))
  assert again['splits'] == manifest['splits']
  for split in ('train', 'test'):
    for k in range(cfg.num_clusters):
      name = f'{split}/cluster-{k:05d}.tfrecord'
      assert open(os.path.join(cfg.output_dir, name), 'rb').read() == open(tmp_path / 'again' / name, 'rb').read()
  with pytest.raises(T.DataError, match='not empty'):
    sb.build_metapt(cfg)


def _parse_row(repo, name):
  gin.clear_config()
  cli.register_gin_configurables()
  gin.add_config_file_search_path(os.path.join(repo, 'promptjax', 'configs'))
  gin.parse_config_file(f'paper/{name}', skip_unknown=False)


def _macro(name):
  value = gin.query_parameter(f'{name}/gin.macro.value')
  if isinstance(value, gin.config.ConfigurableReference) and value.scoped_selector.endswith('/gin.macro'):
    return _macro(value.scoped_selector.split('/')[0])   # a macro bound to another macro
  return value


def test_paper_gin_files_dry_run_and_parse():
  """The rows bind the values Pan et al. 2023 give: Table 6 / App. C.2 for the meta-training and pre-training
  rows, App. C.1 for the downstream rows (the numbers are written here from the paper)."""
  from tests.training.common import dry_run_reports
  names = ['pan2023_base_ppt.gin', 'pan2023_base_unified_ppt.gin', 'pan2023_base_metapt.gin',
           'pan2023_base_supmer.gin', 'pan2023_mini_ppt.gin']
  reports = dict(dry_run_reports(names))
  for name in names:
    assert 'trainable: prompt' in reports[name], name
  assert 'meta-learning: ' in reports['pan2023_base_metapt.gin']
  assert 'second order' in reports['pan2023_base_supmer.gin']   # Eq. 8, App. A.1
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    # The mini PPT row pre-trains on the bundled construction's PPT mixture (its examples: the tests above)
    # with PPT's inverse-square-root schedule (prompt-only training itself: tests/training).
    _parse_row(repo, 'pan2023_mini_ppt.gin')
    assert _macro('MIXTURE_OR_TASK_NAME') == 'mini_ppt_pretrain'
    assert 'rsqrt_decay_schedule' in gin.config_str()
    # Downstream (App. C.1): AdamW, lr grid {0.1, 0.2, 0.3}, batch 32, 200 epochs, validation every 10 steps,
    # seeds 10-50, 100 soft tokens; ψ* for SUPMER only; PT from a normal prompt (App. B).
    for name, psi in (('pan2023_base_fewshot.gin', True), ('pan2023_base_domain.gin', True),
                      ('pan2023_base_pt.gin', False), ('pan2023_base_baseline_downstream.gin', False),
                      ('pan2023_base_ptuning_v2.gin', False)):
      _parse_row(repo, name)
      assert gin.query_parameter('promptjax.models.PromptConfig.length') == 100, name
      assert _macro('DOWNSTREAM_LEARNING_RATES') == (0.1, 0.2, 0.3), name
      assert (_macro('DOWNSTREAM_EPOCHS'), _macro('DOWNSTREAM_EVAL_INTERVAL')) == (200, 10), name
      assert _macro('DOWNSTREAM_SEEDS') == (10, 20, 30, 40, 50), name
      assert gin.query_parameter('promptjax.evaluation.DownstreamConfig.batch_size') == 32, name
      assert gin.query_parameter('promptjax.evaluation.DownstreamConfig.optimizer') == 'adamw', name
      assert _macro('USE_SUPMER_REGULARIZER') is psi, name
      assert _macro('FRESH_PROMPT_STD') == (1e-4 if name == 'pan2023_base_pt.gin' else None), name
      assert len(_macro('TARGET_TASKS')) == (6 if 'domain' in name else 12), name
      # P-Tuning-v2: prompts "at each layer of PLM" (App. B); the others: a shallow prompt.
      assert gin.query_parameter('promptjax.models.PromptConfig.kind') == ('deep' if 'v2' in name else 'shallow')
    # Zero-shot inference (App. B): the backbone without a prompt, on the test splits of the 12 datasets.
    _parse_row(repo, 'pan2023_xl_zeroshot.gin')
    assert (_macro('USE_PROMPT'), _macro('EVAL_SPLIT')) == (False, 'test')
    mix = seqio.get_mixture_or_task(_macro('MIXTURE_OR_TASK_NAME'))
    assert sorted(t.name for t in mix.tasks) == sorted(f'supmer_{d}_100_rank_classification' for d in (
        'sst2', 'sst5', 'mr', 'cr', 'subj', 'trec', 'cb', 'rte', 'qnli', 'wic', 'mrpc', 'qqp'))
    # Pre-training (App. C.2): rsqrt lr 0.1, batch 256, 200,000 steps, validation every 2,000, lowest kept.
    for name in ('pan2023_base_ppt.gin', 'pan2023_base_unified_ppt.gin'):
      _parse_row(repo, name)
      assert (_macro('BATCH_SIZE'), _macro('TRAIN_STEPS'), _macro('EVAL_PERIOD')) == (256, 200000, 2000), name
      assert _macro('KEEP_BEST') is True, name
    assert _macro('MIXTURE_OR_TASK_NAME') == 'unified_ppt_pretrain'
    # MetaPT (App. C.2): inner lr 0.08, outer lr 0.025, early stopping patience 6, SUPMER's other settings.
    _parse_row(repo, 'pan2023_base_metapt.gin')
    assert (_macro('INNER_LEARNING_RATE'), _macro('LEARNING_RATE')) == (0.08, 0.025)
    assert (_macro('EARLY_STOPPING_PATIENCE'), _macro('EVAL_PERIOD'), _macro('KEEP_BEST')) == (6, 2000, True)
    assert (_macro('META_BATCH_SIZE'), _macro('INNER_BATCH_SIZE'), _macro('TRAIN_STEPS')) == (4, 32, 100000)
    assert sb.METAPT_NUM_CLUSTERS == 10
    # SUPMER (Table 6, App. C.2).
    _parse_row(repo, 'pan2023_base_supmer.gin')
    assert (_macro('META_BATCH_SIZE'), _macro('INNER_LEARNING_RATE'), _macro('LEARNING_RATE'),
            _macro('PHI_LEARNING_RATE'), _macro('TRAIN_STEPS')) == (4, 0.1, 0.1, 1e-4, 100000)
    assert (_macro('EVAL_PERIOD'), _macro('KEEP_BEST'), _macro('SECOND_ORDER')) == (2000, True, True)
    assert (_macro('REG_COEFFICIENT'), _macro('CURVE')) == (1.0, 2.0)
  finally:
    gin.clear_config()
