"""The bundled mini benchmark (`promptjax/tasks/data`): reproducible, in the real formats, and well formed.

These tests read the committed files with tensorflow / sentencepiece / plain Python, independently of the
generator (except `test_regeneration_is_byte_identical`, which re-runs it).
"""

import collections
import filecmp
import glob
import json
import os
import re

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf

DATA = os.path.join(os.path.dirname(__file__), '..', '..', 'promptjax', 'tasks', 'data')
DATA = os.path.normpath(DATA)
GENERATED = ('p3', 'crossfit', 'text', 'vocab', 'manifest.json')  # README.md is written by hand
MAX_DATA_BYTES = 10_000_000   # 9.0 MB: 1000 training examples per family dataset (the demo trains one epoch)
MAX_INPUT_TOKENS = 64          # without EOS
MAX_CHOICE_TARGET_TOKENS = 12  # with EOS
CROSSFIT_SEEDS = [100, 13, 21, 42, 87]
CROSSFIT_METRICS = {'ACC', 'Classification-F1', 'EM', 'QA-F1', 'Rouge-L', 'Pearson-Correlation',
                    'Matthew-Correlation'}


def _files(root):
  out = []
  for name in GENERATED:
    path = os.path.join(root, name)
    if os.path.isfile(path):
      out.append(name)
    for d, _, fs in os.walk(path):
      out.extend(os.path.relpath(os.path.join(d, f), root) for f in fs)
  return sorted(out)


@pytest.fixture(scope='module')
def manifest():
  with open(os.path.join(DATA, 'manifest.json')) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def sp():
  return spm.SentencePieceProcessor(model_file=os.path.join(DATA, 'vocab', 'mini_spm.model'))


def _parse_spec(info):
  """tf.train.Example parsing spec from an info.<split>.json (int32/bool stored as int64)."""
  spec = {}
  for name, feat in info['features'].items():
    dtype = tf.string if feat['dtype'] == 'string' else tf.float32 if feat['dtype'] == 'float32' else tf.int64
    if feat['shape'] and feat['shape'][0] is None:
      spec[name] = tf.io.FixedLenSequenceFeature(feat['shape'][1:], dtype, allow_missing=True)
    else:
      spec[name] = tf.io.FixedLenFeature(feat['shape'], dtype)
  return spec


def _read_split(subset, split):
  d = os.path.join(DATA, 'p3', subset)
  with open(os.path.join(d, f'info.{split}.json')) as f:
    info = json.load(f)
  with open(os.path.join(d, f'stats.{split}.json')) as f:
    stats = json.load(f)
  files = sorted(glob.glob(os.path.join(d, f'{split}.tfrecord-*')))
  assert len(files) == info['num_shards']
  assert files[-1].endswith(f'-of-{info["num_shards"]:05d}')
  spec = _parse_spec(info)
  recs = []
  for ex in tf.data.TFRecordDataset(files).map(lambda x: tf.io.parse_single_example(x, spec)):
    r = {}
    for k, v in ex.items():
      x = v.numpy()
      if info['features'][k]['dtype'] == 'string':
        r[k] = [s.decode('utf-8') for s in x] if isinstance(x, np.ndarray) else x.decode('utf-8')
      else:
        r[k] = x.tolist()
    recs.append(r)
  assert stats['examples'] == len(recs)
  return info, stats, recs


@pytest.fixture(scope='module')
def p3(manifest):
  return {(s, split): _read_split(s, split) for s in manifest['p3']['subsets'] for split in ('train', 'validation')}


def _score_eval_groups(recs):
  groups = collections.OrderedDict()
  for r in recs:
    groups.setdefault(r['idx'][0], []).append(r)
  return groups


# ---------------------------------------------------------------------------------------------------


def test_regeneration_is_byte_identical(tmp_path):
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      'make_mini_benchmark', os.path.join(os.path.dirname(__file__), '..', '..', 'tools', 'make_mini_benchmark.py'))
  make_mini_benchmark = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(make_mini_benchmark)
  out = tmp_path / 'data'
  make_mini_benchmark.main(['--out', str(out)])
  committed, fresh = _files(DATA), _files(str(out))
  assert committed == fresh
  match, mismatch, errors = filecmp.cmpfiles(DATA, str(out), committed, shallow=False)
  assert not mismatch and not errors, (mismatch, errors)


def test_data_fits_the_size_budget():
  total = sum(os.path.getsize(os.path.join(DATA, f)) for f in _files(DATA))
  assert total <= MAX_DATA_BYTES, total


def test_vocabulary_follows_t5_conventions(sp, manifest):
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  assert sp.id_to_piece(0) == '<pad>' and sp.id_to_piece(1) == '</s>' and sp.id_to_piece(2) == '<unk>'
  assert 1000 <= sp.get_piece_size() <= 2000
  assert manifest['vocab']['pieces'] == sp.get_piece_size()
  assert manifest['vocab']['path'] == 'vocab/mini_spm.model'
  # newlines in P3-style strings normalize to spaces, as with the T5 vocabulary
  assert sp.encode('\nyes') == sp.encode('yes') == sp.encode(' yes ')


def test_every_single_word_answer_choice_is_one_piece(sp, manifest, p3):
  words = set(manifest['vocab']['verbalizers'])
  for recs in p3.values():
    for r in recs[2]:
      words.update(c for c in r.get('answer_choices', []) if ' ' not in c)
  assert {'yes', 'no', 'maybe', 'true', 'false', 'positive', 'negative'} <= words
  for w in sorted(words):
    assert sp.encode_as_pieces(w) == ['\u2581' + w], w


def test_p3_records_parse_and_match_the_vocabulary(sp, manifest, p3):
  for (subset, split), (info, stats, recs) in p3.items():
    meta = manifest['p3']['subsets'][subset]
    assert subset.startswith(meta['dataset'] + '_' + meta['template'])
    assert subset.endswith('_score_eval') == meta['score_eval']
    assert meta['splits'][split]['records'] == len(recs)
    expected = {'inputs', 'inputs_pretokenized', 'targets', 'targets_pretokenized'}
    if meta['score_eval']:
      expected |= {'idx', 'is_correct', 'weight', 'answer_choices'}
    elif not meta['generative']:
      expected |= {'answer_choices'}
    assert set(info['features']) == expected, subset
    for r in recs:
      assert r['inputs'] == sp.encode(r['inputs_pretokenized']), (subset, r['inputs_pretokenized'])
      assert r['targets'] == sp.encode(r['targets_pretokenized']) + [1], (subset, r['targets_pretokenized'])
      assert 1 not in r['inputs'] and 2 not in r['inputs'] and 2 not in r['targets']
      assert len(r['inputs']) <= MAX_INPUT_TOKENS, subset
      if not meta['generative']:
        assert len(r['targets']) <= MAX_CHOICE_TARGET_TOKENS, subset
        assert r['targets_pretokenized'].strip() in r['answer_choices']
        assert len(r['answer_choices']) == meta['num_choices']
        assert meta['random_baseline'] == pytest.approx(1 / meta['num_choices'])
        if meta['answer_choices'] is not None:
          assert r['answer_choices'] == meta['answer_choices']
    assert stats['inputs_max_tokens'] == max(len(r['inputs']) for r in recs)
    assert stats['targets_max_tokens'] == max(len(r['targets']) for r in recs)


def test_score_eval_groups_have_one_correct_choice_and_contiguous_idx(manifest, p3):
  for subset in manifest['p3']['heldout_subsets']:
    for split in ('train', 'validation'):
      recs = p3[(subset, split)][2]
      groups = _score_eval_groups(recs)
      assert list(groups) == list(range(len(groups)))
      n_choices = manifest['p3']['subsets'][subset]['num_choices']
      positions = collections.Counter()
      for i, (ex, rows) in enumerate(groups.items()):
        assert [r['idx'] for r in rows] == [[ex, j] for j in range(n_choices)]
        assert sum(r['is_correct'] for r in rows) == 1
        assert all(r['weight'] == 1.0 for r in rows)
        assert len({r['inputs_pretokenized'] for r in rows}) == 1
        assert all(r['answer_choices'] == rows[0]['answer_choices'] for r in rows)
        assert [r['targets_pretokenized'].strip() for r in rows] == rows[0]['answer_choices']
        positions[[r['is_correct'] for r in rows].index(1)] += 1
      # label-balanced: every answer position is the correct one about equally often
      for j in range(n_choices):
        assert positions[j] / len(groups) == pytest.approx(1 / n_choices, abs=0.1), (subset, split, positions)
      assert len(groups) >= (64 if split == 'train' else 100)


def test_training_templates_are_label_balanced(manifest, p3):
  for subset in manifest['p3']['train_subsets']:
    meta = manifest['p3']['subsets'][subset]
    if meta['answer_choices'] is None:
      continue
    recs = p3[(subset, 'train')][2]
    counts = collections.Counter(r['targets_pretokenized'].strip() for r in recs)
    k = len(meta['answer_choices'])
    for c in meta['answer_choices']:
      assert counts[c] / len(recs) == pytest.approx(1 / k, abs=0.5 / k), (subset, counts)
    assert len(recs) >= 300 or meta['template'] == 'generate_paraphrase'


def test_no_example_is_shared_between_splits(manifest, p3):
  for subset in manifest['p3']['subsets']:
    train = {r['inputs_pretokenized'] for r in p3[(subset, 'train')][2]}
    val = {r['inputs_pretokenized'] for r in p3[(subset, 'validation')][2]}
    assert not train & val, (subset, sorted(train & val)[:3])


def test_heldout_families_share_no_task_type_with_training_families(manifest):
  fams = manifest['p3']['families']
  train = set(manifest['p3']['train_families'])
  held = set(manifest['p3']['heldout_families'])
  assert train and held and not train & held and train | held == set(fams)
  assert not {fams[f]['task_type'] for f in train} & {fams[f]['task_type'] for f in held}
  assert len(train) >= 5 and len(held) >= 3
  for name, meta in manifest['p3']['subsets'].items():
    fam = fams[meta['family']]
    assert meta['task_type'] == fam['task_type'] and meta['dataset'] in fam['datasets']
    assert (meta['role'] == 'heldout') == (meta['family'] in held) == meta['score_eval']
  assert sorted(manifest['p3']['train_subsets'] + manifest['p3']['heldout_subsets']) == sorted(
      manifest['p3']['subsets'])
  per_family = collections.Counter(m['family'] for m in manifest['p3']['subsets'].values())
  for f in train:
    assert 3 <= per_family[f] <= 5, f
  for f in held:
    assert 2 <= per_family[f] <= 4, f
    # held-out choices are 2-4 and reuse answer words of the training templates or names/sentences
  assert all(2 <= m['num_choices'] <= 4 for m in manifest['p3']['subsets'].values() if m['score_eval'])
  train_words = {c for m in manifest['p3']['subsets'].values() if m['role'] == 'train'
                 for c in (m['answer_choices'] or [])}
  for m in manifest['p3']['subsets'].values():
    if m['score_eval'] and m['answer_choices']:
      assert set(m['answer_choices']) - {'maybe'} <= train_words, m['answer_choices']


def _crossfit_rows(path):
  with open(path, encoding='utf-8') as f:
    lines = f.read().split('\n')
  assert lines[-1] == ''
  rows = []
  for line in lines[:-1]:
    d = line.strip().split('\t')
    assert len(d) >= 2 and all(x.strip() for x in d), line
    rows.append((d[0], d[1:]))
  return rows


def test_crossfit_files_follow_the_fewshot_gym_layout(manifest):
  cf = manifest['crossfit']
  assert cf['seeds'] == CROSSFIT_SEEDS and cf['splits'] == ['train', 'dev', 'test']
  assert sorted(os.listdir(os.path.join(DATA, 'crossfit'))) == sorted(cf['tasks'])
  for task, meta in cf['tasks'].items():
    assert meta['metric'] in CROSSFIT_METRICS
    k = meta['k']
    names = sorted(os.listdir(os.path.join(DATA, 'crossfit', task)))
    assert names == sorted(f'{task}_{k}_{s}_{sp}.tsv' for s in CROSSFIT_SEEDS for sp in ('train', 'dev', 'test'))
    assert all('_'.join(n.split('_')[:-3]) == task for n in names)  # CrossFit's name parsing
    tests = set()
    for seed in CROSSFIT_SEEDS:
      rows = {sp: _crossfit_rows(os.path.join(DATA, 'crossfit', task, f'{task}_{k}_{seed}_{sp}.tsv'))
              for sp in ('train', 'dev', 'test')}
      inputs = {sp: [r[0] for r in rs] for sp, rs in rows.items()}
      for sp in inputs:
        assert len(set(inputs[sp])) == len(inputs[sp])
      assert not set(inputs['train']) & set(inputs['dev'])
      assert not (set(inputs['train']) | set(inputs['dev'])) & set(inputs['test'])
      if meta['type'] == 'classification':
        assert meta['k_rule'] == 'per_label' and k == 16
        for sp in ('train', 'dev'):
          counts = collections.Counter(r[1][0] for r in rows[sp])
          assert counts == {label: k for label in meta['labels']}, (task, seed, sp)
        assert {r[1][0] for r in rows['test']} == set(meta['labels'])
      else:
        assert meta['k_rule'] == 'total' and k == 32
        assert len(rows['train']) == len(rows['dev']) == k
      assert 90 <= len(rows['test']) <= 110
      with open(os.path.join(DATA, 'crossfit', task, f'{task}_{k}_{seed}_test.tsv'), 'rb') as f:
        tests.add(f.read())
    assert len(tests) == 1  # the test file is the same for every seed
  first = {t: open(os.path.join(DATA, 'crossfit', t, f'{t}_{m["k"]}_100_train.tsv')).read()
           for t, m in cf['tasks'].items()}
  second = {t: open(os.path.join(DATA, 'crossfit', t, f'{t}_{m["k"]}_13_train.tsv')).read()
            for t, m in cf['tasks'].items()}
  assert all(first[t] != second[t] for t in first)  # seeds sample different few-shot sets


def test_crossfit_partitions(manifest):
  cf = manifest['crossfit']
  cls = {t for t, m in cf['tasks'].items() if m['type'] == 'classification'}
  for name, part in cf['partitions'].items():
    assert part['source'] and part['target'] and not set(part['source']) & set(part['target'])
    assert set(part['source']) | set(part['target']) <= set(cf['tasks'])
  cc = cf['partitions']['cls_to_cls']
  assert set(cc['source']) <= cls and set(cc['target']) <= cls
  assert len(cc['source']) >= 3 and len(cc['target']) >= 3
  assert all(cf['tasks'][t]['is_paraphrase'] for t in cf['partitions']['non_paraphrase_cls_to_paraphrase']['target'])
  assert not any(cf['tasks'][t]['is_paraphrase']
                 for t in cf['partitions']['non_paraphrase_cls_to_paraphrase']['source'])


def test_corpus_documents(manifest):
  text = manifest['text']
  shards = sorted(glob.glob(os.path.join(DATA, 'text', '*.jsonl')))
  assert [os.path.basename(s) for s in shards] == sorted(text['shards'])
  docs = []
  for s in shards:
    with open(s, encoding='utf-8') as f:
      for line in f:
        obj = json.loads(line)
        assert list(obj) == ['text'] and isinstance(obj['text'], str)
        docs.append(obj['text'])
  assert len(docs) == text['documents'] and 200 <= len(docs) <= 400
  assert len(set(docs)) == len(docs)
  for d in docs:
    paragraphs = d.split('\n')
    assert len(paragraphs) >= 2 and all(p.strip() == p and p for p in paragraphs), d
    sentences = [s for p in paragraphs for s in re.split(r'(?<=[.!?])\s+(?=[A-Z"])', p)]
    assert len(sentences) >= 4, d
    assert all(re.search(r'[.!?]"?$', s) for s in sentences), d


def test_corpus_teaches_the_words_the_tasks_use(p3):
  corpus = ' '.join(json.loads(l)['text'] for s in glob.glob(os.path.join(DATA, 'text', '*.jsonl'))
                    for l in open(s, encoding='utf-8'))
  words = set(re.findall(r'[A-Za-z]+', corpus))
  inputs, targets = collections.Counter(), collections.Counter()
  for recs in p3.values():
    for r in recs[2]:
      inputs.update(re.findall(r'[A-Za-z]+', r['inputs_pretokenized']))
      targets.update(re.findall(r'[A-Za-z]+', r['targets_pretokenized']))
  coverage = lambda c: sum(n for w, n in c.items() if w in words) / sum(c.values())
  # every answer word (labels, verbalizers, entities, attributes) occurs in the corpus; most input words
  # do too (the rest are the templates' instruction words, which multi-task training teaches)
  assert coverage(targets) == 1.0, sorted(w for w in targets if w not in words)
  assert coverage(inputs) > 0.8, coverage(inputs)
