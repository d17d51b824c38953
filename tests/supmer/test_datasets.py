"""SUPMER downstream tasks: tiny fake copies of the releases, written here in their exact on-disk formats.

Expectations come from outside the module under test: the rows written by these fixtures (hand-written
test rows and their hand-rendered templates), the T5 SentencePiece model read through sentencepiece
itself, the sampling procedures as SUPMER's and LM-BFF's code state them (re-derived here from the seed),
and hand-computed truncations.
"""

import json
import os

import numpy as np
import pytest

from conftest import SHARED_DATA

seqio = pytest.importorskip('seqio')
spm = pytest.importorskip('sentencepiece')

import promptjax.tasks as T  # pylint: disable=g-import-not-at-top
from promptjax.supmer import datasets as sd  # pylint: disable=g-import-not-at-top
from promptjax.tasks import utils as task_utils  # pylint: disable=g-import-not-at-top

SPIECE = os.path.join(SHARED_DATA, 't5', 'spiece.model')
ENV = 'PROMPTJAX_SUPMER_DOWNSTREAM_DIR'
SENTINEL, EOS = 32099, 1

needs_vocab = pytest.mark.skipif(not os.path.exists(SPIECE), reason='../shared/data/t5/spiece.model absent')


def _write(root, rel, text, bom=False):
  path = os.path.join(root, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8-sig' if bom else 'utf-8', newline='') as f:
    f.write(text)


def _jsonl(rows):
  return ''.join(json.dumps(r) + '\n' for r in rows)


# Pools: text -> label, with unique texts so that splits can be compared by text.
def _csv_pool(name, counts):
  """LM-BFF csv rows (pandas to_csv style: quoted when the text has a comma or a quote)."""
  lines, pool = [], []
  for label, n in enumerate(counts):
    for i in range(n):
      if i % 3 == 0:
        text, line = f'{name} review {label}-{i}, with a comma', f'{label},"{name} review {label}-{i}, with a comma"'
      elif i % 3 == 1:
        text, line = f'{name} says "hi" {label}-{i}', f'{label},"{name} says ""hi"" {label}-{i}"'
      else:
        text, line = f'{name} plain {label}-{i}', f'{label},{name} plain {label}-{i}'
      lines.append(line)
      pool.append((text, label))
  # Interleave labels so that file order is not label-sorted.
  order = sorted(range(len(pool)), key=lambda j: (j % counts[0] if counts[0] else 0, j))
  return '\n'.join(lines[j] for j in order) + '\n', [pool[j] for j in order]


SST2_POOL = [(f'sst2 review {i} , "quoted" words', i % 2) for i in range(70)]
CB_LABELS = ('entailment', 'contradiction', 'neutral')
CB_POOL = [(f'cb premise {i}.', f'cb hypothesis {i}!', lab) for lab, n in ((0, 34), (1, 34), (2, 10))
           for i in range(100 * lab, 100 * lab + n)]
AIRLINE_TRAIN = [(f'airline review {i}.', 'positive' if i % 2 else 'negative') for i in range(70)]

EXPECTED_FIRST_TEST = {   # task -> (inputs_pretokenized, targets_pretokenized, label) of test row 0
    'sst2': ('a gorgeous , witty , seductive movie . It was <extra_id_0> ?', '<extra_id_0> great', 1),
    'sst5': ('an extraordinary, moving film It was <extra_id_0> ?', '<extra_id_0> great', 4),
    'mr': ('the plot is thin, the jokes flat It was <extra_id_0> ?', '<extra_id_0> terrible', 0),
    'cr': ('great battery life . It was <extra_id_0> ?', '<extra_id_0> great', 1),
    'subj': ('the film opens in 1953 , in a small town . This is <extra_id_0> .', '<extra_id_0> objective', 1),
    'trec': ('How many people live in Tokyo ? <extra_id_0> :', '<extra_id_0> number', 5),
    'cb': ('" Mary will go " ? <extra_id_0> , " It was a cold day. Mary said she might go. "',
           '<extra_id_0> maybe', 2),
    'rte': ('" France\'s capital is Paris " ? <extra_id_0> , " Paris is the capital of France. "',
            '<extra_id_0> yes', 0),
    'wic': ('" He sat on the river bank. " / " She works at the bank. " Similar sense of "bank"? <extra_id_0> .',
            '<extra_id_0> No', 0),
    'qnli': ('The tower was built in 1889. . Question: When was the tower built? ? Answer: <extra_id_0> .',
             '<extra_id_0> Yes', 0),
    'mrpc': ('Do The cat sat . and A cat was sitting . have the same meaning? <extra_id_0> .',
             '<extra_id_0> Yes', 1),
    'qqp': ('Do How do I learn Python? and What is the best way to learn Python? have the same meaning? '
            '<extra_id_0> .', '<extra_id_0> Yes', 1),
    'domain_books': ('The plot dragged on forever. It was <extra_id_0> ?', '<extra_id_0> terrible', 0),
    'domain_restaurants': ('Best pasta in town! It was <extra_id_0> ?', '<extra_id_0> great', 1),
}


def _make_release(root):
  pools = {}
  _write(root, 'SST-2/train.tsv', 'sentence\tlabel\n' + ''.join(f'{t}\t{l}\n' for t, l in SST2_POOL))
  _write(root, 'SST-2/dev.tsv', 'sentence\tlabel\na gorgeous , witty , seductive movie .\t1\n'
                                'the acting is bad .\t0\n')
  pools['sst2'] = SST2_POOL
  tests = {'sst-5': '4,"an extraordinary, moving film"\n0,it is awful .\n',
           'mr': '0,"the plot is thin, the jokes flat"\n1,a winner .\n',
           'cr': '1,great battery life .\n0,"the screen broke, twice"\n',
           'subj': '1,"the film opens in 1953 , in a small town ."\n0,i loved every minute .\n',
           'trec': '5,How many people live in Tokyo ?\n3,Who wrote Hamlet ?\n'}
  for d, name, counts in (('sst-5', 'sst5', (33,) * 5), ('mr', 'mr', (33, 33)), ('cr', 'cr', (33, 40)),
                          ('subj', 'subj', (33, 33)), ('trec', 'trec', (32,) * 6)):
    text, pool = _csv_pool(name, counts)
    _write(root, f'{d}/train.csv', text)
    _write(root, f'{d}/test.csv', tests[d])
    pools[name] = pool
  _write(root, 'CB/train.jsonl', _jsonl({'premise': p, 'hypothesis': h, 'label': CB_LABELS[l], 'idx': i}
                                        for i, (p, h, l) in enumerate(CB_POOL)))
  _write(root, 'CB/val.jsonl', _jsonl([
      {'premise': 'It was a cold day. Mary said she might go.', 'hypothesis': 'Mary will go.',
       'label': 'neutral', 'idx': 0},
      {'premise': 'John is tall.', 'hypothesis': 'John is short.', 'label': 'contradiction', 'idx': 1},
      {'premise': 'The dog barked.', 'hypothesis': 'A dog made a sound.', 'label': 'entailment', 'idx': 2}]))
  pools['cb'] = [(h, l) for _, h, l in CB_POOL]
  rte = [(f'rte premise {i}.', f'rte hypothesis {i}.', i % 2) for i in range(66)]
  _write(root, 'RTE/train.jsonl', _jsonl({'premise': p, 'hypothesis': h, 'idx': i,
                                          'label': ('entailment', 'not_entailment')[l]}
                                         for i, (p, h, l) in enumerate(rte)))
  _write(root, 'RTE/val.jsonl', _jsonl([
      {'premise': 'Paris is the capital of France.', 'hypothesis': "France's capital is Paris.",
       'label': 'entailment', 'idx': 0},
      {'premise': 'The long treaty negotiations between the two neighbouring countries finally ended '
                  'in an agreement signed in the old capital.', 'hypothesis': 'No treaty was ever signed '
                  'by the two neighbouring countries at any time.', 'label': 'not_entailment', 'idx': 1}]))
  pools['rte'] = [(h, l) for _, h, l in rte]
  wic = [(f'word{i}', f'wic first {i}.', f'wic second {i}.', bool(i % 2)) for i in range(66)]
  _write(root, 'WiC/train.jsonl', _jsonl({'word': w, 'sentence1': a, 'sentence2': b, 'idx': i, 'label': l,
                                          'start1': 0, 'end1': 3, 'start2': 0, 'end2': 3, 'version': 1.1}
                                         for i, (w, a, b, l) in enumerate(wic)))
  _write(root, 'WiC/val.jsonl', _jsonl([
      {'word': 'bank', 'sentence1': 'He sat on the river bank.', 'sentence2': 'She works at the bank.',
       'idx': 0, 'label': False, 'start1': 18, 'end1': 22, 'start2': 18, 'end2': 22, 'version': 1.1}]))
  pools['wic'] = [(a, int(l)) for _, a, _, l in wic]
  mrpc = [(f'mrpc first {i} .', f'mrpc second {i} .', i % 2) for i in range(66)]
  header = 'Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n'
  _write(root, 'MRPC/train.tsv', header + ''.join(f'{l}\t{1000 + i}\t{2000 + i}\t{a}\t{b}\n'
                                                  for i, (a, b, l) in enumerate(mrpc)), bom=True)
  _write(root, 'MRPC/dev.tsv', header + '1\t101\t102\tThe cat sat .\tA cat was sitting .\n', bom=True)
  pools['mrpc'] = [(a, l) for a, _, l in mrpc]
  qnli = [(f'qnli question {i}?', f'qnli sentence {i}.', i % 2) for i in range(66)]
  _write(root, 'QNLI/train.tsv', 'index\tquestion\tsentence\tlabel\n' + ''.join(
      f'{i}\t{q}\t{s}\t{("entailment", "not_entailment")[l]}\n' for i, (q, s, l) in enumerate(qnli)))
  _write(root, 'QNLI/dev.tsv', 'index\tquestion\tsentence\tlabel\n'
                               '0\tWhen was the tower built?\tThe tower was built in 1889.\tentailment\n')
  pools['qnli'] = [(s, l) for _, s, l in qnli]
  qqp = [(f'qqp first {i}?', f'qqp second {i}?', i % 2) for i in range(66)]
  lines = [f'{i}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\t{l}\n' for i, (a, b, l) in enumerate(qqp)]
  lines.insert(10, '999\t1\t2\ta broken line without its second question\n')   # skipped, as LM-BFF does
  _write(root, 'QQP/train.tsv', 'id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n' + ''.join(lines))
  _write(root, 'QQP/dev.tsv', 'id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n'
                              '5\t11\t12\tHow do I learn Python?\tWhat is the best way to learn Python?\t1\n')
  pools['qqp'] = [(a, l) for a, _, l in qqp]
  rows = [('unlabeled', 'dvd', None, 'an unlabeled dvd review'), ('unlabeled', 'airline', None, 'a flight')]
  rows += [('train', 'airline', l, t) for t, l in AIRLINE_TRAIN]
  rows += [('train', 'books', 'positive', 'a books training review')]
  rows += [('validation', 'airline', 'negative', 'an airline dev review')]
  rows += [('test', 'airline', 'positive', 'Smooth flight and friendly crew.'),
           ('test', 'books', 'negative', 'The plot dragged on forever.'),
           ('test', 'books', 'positive', 'A moving story.'),
           ('test', 'dvd', 'positive', 'Great extras on the disc.'),
           ('test', 'electronics', 'negative', 'The charger died in a week.'),
           ('test', 'kitchen', 'positive', 'This pan heats evenly.'),
           ('test', 'restaurants', 'positive', 'Best pasta in town!')]
  table = {'example_id': [f'{s}_{i}' for i, (s, _, _, _) in enumerate(rows)],
           'split': [r[0] for r in rows], 'domain': [r[1] for r in rows], 'label': [r[2] for r in rows],
           'text': [r[3] for r in rows]}
  _write(root, 'reviews.json', json.dumps(table))
  return pools


@pytest.fixture(scope='module')
def release(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('supmer_release'))
  return root, _make_release(root)


@pytest.fixture
def data(release, monkeypatch):
  root, pools = release
  monkeypatch.delenv(ENV, raising=False)
  T.set_data_dir('supmer_downstream', root)
  if os.path.exists(SPIECE):
    T.set_vocabulary_path('t5', SPIECE)
  yield root, pools
  T.set_data_dir('supmer_downstream', None)
  T.set_vocabulary_path('t5', None)


def _rows(name, split, lengths=None):
  task = seqio.get_mixture_or_task(name)
  return list(task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1).as_numpy_iterator())


def _text(x):
  return x.decode('utf-8') if isinstance(x, bytes) else str(x)


def _sp():
  return spm.SentencePieceProcessor(model_file=SPIECE)


# --------------------------------------------------------------------------------------------------------


def test_registered_names():
  names = set(seqio.TaskRegistry.names())
  for ds in ('sst2', 'sst5', 'mr', 'cr', 'subj', 'trec', 'cb', 'rte', 'qnli', 'wic', 'mrpc', 'qqp'):
    for seed in (13, 21, 42, 87, 100):
      assert f'supmer_{ds}_{seed}' in names and f'supmer_{ds}_{seed}_rank_classification' in names
  for d in ('airline', 'books', 'dvd', 'electronics', 'kitchen', 'restaurants'):
    assert f'supmer_domain_{d}_42_rank_classification' in names
  mix = seqio.get_mixture_or_task('supmer_fewshot_13_rank_classification')
  assert len(mix.tasks) == 12
  assert sorted(t.name for t in seqio.get_mixture_or_task('supmer_nli_13_rank_classification').tasks) == [
      'supmer_cb_13_rank_classification', 'supmer_rte_13_rank_classification']
  assert len(seqio.get_mixture_or_task('supmer_domain_13_rank_classification').tasks) == 6


@needs_vocab
@pytest.mark.parametrize('name', sorted(EXPECTED_FIRST_TEST))
def test_first_test_row_is_rendered_by_the_template(data, name):
  inputs, targets, label = EXPECTED_FIRST_TEST[name]
  row = _rows(f'supmer_{name}_13', 'test')[0]
  assert _text(row['inputs_pretokenized']) == inputs
  assert _text(row['targets_pretokenized']) == targets
  assert int(row['label']) == label
  sp = _sp()
  word = targets.split()[-1]
  assert row['targets'].tolist() == [SENTINEL, sp.piece_to_id('▁' + word), EOS]
  # Part-wise tokenization = tokenizing the space-joined text (sentinel -> its seqio id).
  before, after = inputs.split('<extra_id_0>')
  expected = sp.encode(before) + [SENTINEL] + (sp.encode(after) if after.strip() else []) + [EOS]
  assert row['inputs'].tolist() == expected


@needs_vocab
def test_test_splits_are_the_whole_original_file(data):
  assert [_text(r['inputs_pretokenized']) for r in _rows('supmer_sst2_100', 'test')] == [
      'a gorgeous , witty , seductive movie . It was <extra_id_0> ?', 'the acting is bad . It was <extra_id_0> ?']
  assert [int(r['label']) for r in _rows('supmer_cb_21', 'test')] == [2, 1, 0]
  assert [_text(r['inputs_pretokenized']) for r in _rows('supmer_domain_books_87', 'test')] == [
      'The plot dragged on forever. It was <extra_id_0> ?', 'A moving story. It was <extra_id_0> ?']
  assert len(_rows('supmer_domain_airline_87', 'test')) == 1


def _split_texts(name, split):
  source = seqio.get_mixture_or_task(name).source
  return [(ex.get('sentence') or ex.get('hypothesis') or ex.get('sentence1'), int(ex['label']))
          for ex in source.examples(split)]


@pytest.mark.parametrize('dataset,per_label', [
    ('sst2', (16, 16)), ('sst5', (16,) * 5), ('mr', (16, 16)), ('cr', (16, 16)), ('subj', (16, 16)),
    ('trec', (16,) * 6), ('cb', (16, 16, 5)), ('rte', (16, 16)), ('wic', (16, 16)), ('mrpc', (16, 16)),
    ('qnli', (16, 16)), ('qqp', (16, 16)), ('domain_kitchen', (16, 16))])
def test_per_label_counts_and_disjoint_splits(data, dataset, per_label):
  _, pools = data
  for seed in (13, 100):
    train = _split_texts(f'supmer_{dataset}_{seed}', 'train')
    dev = _split_texts(f'supmer_{dataset}_{seed}', 'validation')
    for split in (train, dev):
      counts = np.bincount([l for _, l in split], minlength=len(per_label))
      assert tuple(counts) == per_label       # CB neutral: 10 rows -> min(10 // 2, 16) = 5, as SUPMER
    assert not {t for t, _ in train} & {t for t, _ in dev}
    pool = set(pools[dataset]) if dataset in pools else {(t, int(l == 'positive')) for t, l in AIRLINE_TRAIN}
    assert set(train) <= pool and set(dev) <= pool


def test_supmer_sampler_matches_hf_shuffle_then_per_label_selection(data):
  """SUPMER: datasets['train'].shuffle(seed=s) (= rows[default_rng(s).permutation(n)]), then per label the
  first 16 of that label as train and the next 16 as validation."""
  for seed in (13, 42):
    n = len(SST2_POOL)
    rank = np.empty(n, np.int64)
    rank[np.random.default_rng(seed).permutation(n)] = np.arange(n)   # position of each row after shuffle
    expected = {'train': [], 'validation': []}
    for label in (0, 1):
      members = sorted((i for i in range(n) if SST2_POOL[i][1] == label), key=lambda i: rank[i])
      expected['train'] += [SST2_POOL[i] for i in members[:16]]
      expected['validation'] += [SST2_POOL[i] for i in members[16:32]]
    for split in ('train', 'validation'):
      got = _split_texts(f'supmer_sst2_{seed}', split)
      assert got == expected[split]
      assert _split_texts(f'supmer_sst2_{seed}', split) == got     # read again: the same
  assert _split_texts('supmer_sst2_13', 'train') != _split_texts('supmer_sst2_21', 'train')
  # The domain tasks all tune on the same airline sample.
  assert _split_texts('supmer_domain_books_13', 'train') == _split_texts('supmer_domain_dvd_13', 'train')


def test_lm_bff_sampler_matches_generate_k_shot_data(data):
  """LM-BFF's tools/generate_k_shot_data.py on the SST-2 train.tsv lines, run as that script does it."""
  root, _ = data
  with open(os.path.join(root, 'SST-2/train.tsv')) as f:
    lines = f.readlines()[1:]
  labels = [int(line.strip().split('\t')[-1]) for line in lines]
  for seed in (87, 100):
    np.random.seed(seed)
    shuffled = list(lines)
    np.random.shuffle(shuffled)
    label_list = {}
    for line in shuffled:
      label_list.setdefault(line.strip().split('\t')[-1], []).append(line)
    want_train = [l for lab in label_list for l in label_list[lab][:16]]
    want_dev = [l for lab in label_list for l in label_list[lab][16:32]]
    train, dev = sd.sample_few_shot(labels, 2, seed, sampler='lm_bff')
    assert [lines[i] for i in train] == want_train and [lines[i] for i in dev] == want_dev


def test_truncate_parts_by_hand():
  # segment a: [fixed 1, text 10, fixed 2]; segment b: [fixed 3, text 8, fixed 1]; budget 15 removes 10:
  # a10>b8 a, a9>b8 a, a8=b8 b, a8>b7 a, a7=b7 b, a, b, a, b, a -> a 4, b 4.
  assert sd.truncate_parts([1, 10, 2, 3, 8, 1], [False, True, False, False, True, False], [0, 0, 0, 1, 1, 1],
                           15) == [1, 4, 2, 3, 4, 1]
  # One segment: only the text shrinks; the template stays even if over budget.
  assert sd.truncate_parts([5, 4], [True, False], [0, 0], 6) == [2, 4]
  assert sd.truncate_parts([5, 4], [True, False], [0, 0], 2) == [0, 4]
  assert sd.truncate_parts([3, 4], [True, False], [0, 0], 10) == [3, 4]


@needs_vocab
def test_truncation_keeps_template_and_mask(data):
  sp = _sp()
  row = _rows('supmer_rte_13', 'test', {'inputs': 24, 'targets': 3})[1]
  ids = row['inputs'].tolist()
  assert len(ids) == 24 and ids[-1] == EOS and ids.count(SENTINEL) == 1
  hyp = sp.encode('No treaty was ever signed by the two neighbouring countries at any time')
  prem = sp.encode('The long treaty negotiations between the two neighbouring countries finally ended in an '
                   'agreement signed in the old capital.')
  q, open_b, close = sp.encode('" ?'), sp.encode(', "'), sp.encode('"')
  start = len(close)
  assert ids[:start] == close
  end_h = ids.index(q[0], start)
  kept_h = ids[start:end_h]
  assert ids[end_h:end_h + len(q)] == q and ids[end_h + len(q)] == SENTINEL
  rest = ids[end_h + len(q) + 1:-1]
  assert rest[:len(open_b)] == open_b and rest[-len(close):] == close
  kept_p = rest[len(open_b):-len(close)]
  assert kept_h == hyp[:len(kept_h)] and kept_p == prem[:len(kept_p)]
  assert abs(len(kept_h) - len(kept_p)) <= 1        # PET shortens the longer segment first
  assert len(kept_h) + len(kept_p) == 23 - 2 * len(close) - len(q) - 1 - len(open_b)


@needs_vocab
def test_every_verbalizer_is_one_t5_piece():
  sp = _sp()
  for spec in list(sd.DATASETS.values()) + [sd.DOMAIN_SPEC]:
    assert len(spec.verbalizers) == spec.num_labels
    for word in spec.verbalizers:
      assert sp.encode(word, out_type=str) == ['▁' + word], (spec.name, word)


@needs_vocab
def test_rank_views_load_with_gold_marked(data):
  from promptjax.evaluation import rank_classification as rc
  sp = _sp()
  rc.check_rank_task('supmer_cb_13_rank_classification', 'test')
  choices = rc.load_choices('supmer_cb_13_rank_classification', 'test')
  assert choices.num_examples == 3
  assert choices.choice_texts == [['<extra_id_0> yes', '<extra_id_0> no', '<extra_id_0> maybe']] * 3
  assert choices.correct.tolist() == [[False, False, True], [False, True, False], [True, False, False]]
  ids = [sp.piece_to_id(p) for p in ('▁yes', '▁no', '▁maybe')]
  assert choices.targets[0, :, :3].tolist() == [[SENTINEL, i, EOS] for i in ids]
  assert choices.input_texts[0].startswith('" Mary will go " ? <extra_id_0>')
  train = rc.load_choices('supmer_cb_13_rank_classification', 'train')
  assert train.num_examples == 37 and train.correct.sum() == 37
  assert np.bincount(np.argmax(train.correct, -1)).tolist() == [16, 16, 5]
  dom = rc.load_choices('supmer_domain_electronics_21_rank_classification', 'test')
  assert dom.correct.tolist() == [[True, False]] and dom.choice_texts[0] == ['<extra_id_0> terrible',
                                                                            '<extra_id_0> great']
  recs = _rows('supmer_wic_13_rank_classification', 'test')
  assert [r['idx'].tolist() for r in recs] == [[0, 0], [0, 1]]
  assert [bool(r['is_correct']) for r in recs] == [True, False]
  assert [_text(c) for c in recs[0]['answer_choices']] == ['<extra_id_0> No', '<extra_id_0> Yes']


def test_missing_data_dir_names_the_fix(monkeypatch):
  monkeypatch.delenv(ENV, raising=False)
  T.set_data_dir('supmer_downstream', None)
  with pytest.raises(T.DataError, match=f"supmer_sst2_13.*{ENV}=/path.*set_data_dir"):
    seqio.get_mixture_or_task('supmer_sst2_13').source.examples('train')
  monkeypatch.setenv(ENV, '/nonexistent/supmer')
  with pytest.raises(T.DataError, match=f'/nonexistent/supmer does not exist.*{ENV}'):
    seqio.get_mixture_or_task('supmer_domain_books_13').source.examples('test')


def test_missing_files_name_the_fix(tmp_path, monkeypatch):
  monkeypatch.delenv(ENV, raising=False)
  _write(str(tmp_path), 'QNLI/train.tsv', 'index\tquestion\tsentence\tlabel\n0\tq?\ts.\tentailment\n')
  T.set_data_dir('supmer_downstream', str(tmp_path))
  try:
    with pytest.raises(T.DataError, match=f'QNLI/dev.tsv is missing.*dev.tsv \\(the test set\\).*{ENV}'):
      seqio.get_mixture_or_task('supmer_qnli_13').source.examples('test')
    with pytest.raises(T.DataError, match=f'SST-2 does not exist.*holds \\[QNLI\\].*train.tsv.*{ENV}'):
      seqio.get_mixture_or_task('supmer_sst2_13').source.examples('train')
    with pytest.raises(T.DataError, match=f'reviews.json is missing.*DoCoGen.*{ENV}'):
      seqio.get_mixture_or_task('supmer_domain_dvd_13').source.examples('train')
    _write(str(tmp_path), 'SST-2/train.tsv', 'a headerless line\t1\n')
    _write(str(tmp_path), 'SST-2/dev.tsv', 'sentence\tlabel\nx\t1\n')
    with pytest.raises(T.DataError, match="header is 'sentence\\\\tlabel'"):
      seqio.get_mixture_or_task('supmer_sst2_13').source.examples('train')
  finally:
    T.set_data_dir('supmer_downstream', None)


def test_unknown_names_are_readable():
  with pytest.raises(T.DataError, match='Unknown SUPMER downstream dataset .sst3.*sst2.*domain_books'):
    sd.task_name('sst3', 13)
  with pytest.raises(T.DataError, match='seeds \\(13, 21, 42, 87, 100\\)'):
    sd.rank_task('sst2', 7)
  with pytest.raises(T.DataError, match='Unknown SUPMER domain .yelp'):
    sd.domain_task('yelp')
  with pytest.raises(T.DataError, match="No seqio task.*'supmer_sst3_13'.*Did you mean.*supmer_sst"):
    task_utils.get_task_or_mixture('supmer_sst3_13')
  with pytest.raises(T.DataError, match="unknown split 'dev'"):
    seqio.get_mixture_or_task('supmer_sst2_13').source.examples('dev')


def test_gin_files_resolve_dataset_and_seed(data):
  import gin
  from promptjax import cli
  cli.register_gin_configurables()
  try:
    cli.parse_gin(['runs/supmer_fewshot.gin', 'models/t5_1_1_tiny.gin'],
                  ["DATASET = 'cb'", 'DATA_SEED = 42', "CHECKPOINT_PATH = '/tmp/x'", "EVAL_OUTPUT_DIR = '/tmp/y'"],
                  [])
    assert gin.get_configurable(sd.rank_task)() == 'supmer_cb_42_rank_classification'
    assert gin.get_configurable(sd.feature_lengths)() == {'inputs': 256, 'targets': 3}
    assert gin.get_configurable(sd.num_train_examples)() == 37
    assert gin.query_parameter('%EVAL_SPLIT') == 'test'
    gin.clear_config()
    # Table 2's row: the App. C.1 protocol on the six domains (A the source), input length 256 each.
    cli.parse_gin(['paper/pan2023_base_domain.gin'], ["CHECKPOINT_PATH = '/tmp/x'", "EVAL_OUTPUT_DIR = '/tmp/y'"], [])
    assert gin.query_parameter('TARGET_TASKS/gin.macro.value').scoped_selector == 'SUPMER_DOMAINS/gin.macro'
    targets = gin.query_parameter('SUPMER_DOMAINS/gin.macro.value')
    assert targets == ['domain_airline', 'domain_books', 'domain_dvd', 'domain_electronics', 'domain_kitchen',
                       'domain_restaurants']
    assert all(sd.feature_lengths(t) == {'inputs': 256, 'targets': 3} for t in targets)   # App. C.1
    fmt = gin.query_parameter('promptjax.evaluation.DownstreamConfig.task_name_format')
    assert [fmt.format(task=t, seed=100) for t in targets[:2]] == ['supmer_domain_airline_100',
                                                                   'supmer_domain_books_100']
    assert gin.query_parameter('promptjax.models.PromptConfig.length') == 100
  finally:
    gin.clear_config()
