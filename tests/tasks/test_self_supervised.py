"""Self-supervised PPT/SUPMER text tasks: corpus reading, example construction, seqio Tasks, errors.

The corpus is written here with known sentences, so every check compares an example with facts about the
corpus the test itself built (which document and position each sentence has), never with the builder's
own bookkeeping.
"""

import collections
import json
import os
import re

import numpy as np
import pytest
import seqio

from conftest import SHARED_DATA

import promptjax.tasks as T
from promptjax.tasks import config as cfg
from promptjax.tasks import self_supervised as ss
from promptjax.tasks.utils import iterate

SPIECE = os.path.join(SHARED_DATA, 't5', 'spiece.model')
needs_spiece = pytest.mark.skipif(not os.path.exists(SPIECE),
                                  reason=f'shared T5 vocabulary not found at {SPIECE}')
LENGTHS = {'inputs': 256, 'targets': 8}
NSP, MC = 'test_ss_nsp_yes_maybe_no', 'test_ss_mc_next_segment'

NOUNS = ['river', 'mountain', 'garden', 'library', 'harbor', 'forest', 'castle', 'meadow', 'bridge',
         'island', 'valley', 'market', 'tower', 'canyon', 'orchard', 'village']
ADJECTIVES = ['quiet', 'bright', 'ancient', 'narrow', 'golden', 'hidden', 'windy', 'famous', 'distant']


def _sentence(d, k):
  return f'The {ADJECTIVES[k % len(ADJECTIVES)]} {NOUNS[d % len(NOUNS)]} story has part {k} of tale {d}.'


def _write_corpus(root, n_txt=6, n_jsonl=6, n_sentences=7):
  """Documents 0..n_txt-1 as .txt (paragraphs of 3 and 4 sentences, a blank line between), the rest as
  one .jsonl file (paragraphs separated by "\\n"). Returns {doc: [sentences]} and {sentence: (doc, k)}."""
  os.makedirs(root, exist_ok=True)
  docs = {}
  for d in range(n_txt + n_jsonl):
    sents = [_sentence(d, k) for k in range(n_sentences)]
    docs[d] = sents
    paragraphs = [' '.join(sents[:3]), ' '.join(sents[3:])]
    if d < n_txt:
      with open(os.path.join(root, f'doc{d:02d}.txt'), 'w') as f:
        f.write('\n\n'.join(paragraphs) + '\n')
  with open(os.path.join(root, 'records.jsonl'), 'w') as f:
    for d in range(n_txt, n_txt + n_jsonl):
      f.write(json.dumps({'id': d, 'text': '\n'.join([' '.join(docs[d][:3]), ' '.join(docs[d][3:])])}))
      f.write('\n')
  where = {s: (d, k) for d, sents in docs.items() for k, s in enumerate(sents)}
  return docs, where


@pytest.fixture(autouse=True)
def _reset(monkeypatch):
  monkeypatch.delenv('PROMPTJAX_TEXT_DIR', raising=False)
  monkeypatch.delenv('PROMPTJAX_T5_VOCAB', raising=False)
  T.set_vocabulary_path('t5', SPIECE)
  yield
  for family in cfg.FAMILIES:
    T.set_data_dir(family, None)
  T.set_vocabulary_path('t5', None)
  for name in list(seqio.TaskRegistry.names()):
    if name.startswith('test_ss_'):
      seqio.TaskRegistry.remove(name)


@pytest.fixture
def corpus(tmp_path):
  """Layout train/ + validation/: 12 documents for training, 4 for validation."""
  docs, where = _write_corpus(str(tmp_path / 'train'))
  vdocs = {}
  for d in range(12, 16):
    vdocs[d] = [_sentence(d, k) for k in range(5)]
  os.makedirs(tmp_path / 'validation' / 'sub')
  for d, sents in vdocs.items():
    (tmp_path / 'validation' / 'sub' / f'v{d}.txt').write_text(' '.join(sents))
  where.update({s: (d, k) for d, sents in vdocs.items() for k, s in enumerate(sents)})
  T.set_data_dir('text', str(tmp_path))
  return {**docs, **vdocs}, where


def _register(**kwargs):
  return ss.register_text_tasks('test_ss', **kwargs)


def _examples(name, split='train', seed=0, lengths=LENGTHS, shuffle=False):
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split, shuffle=shuffle, seed=seed)
  return [{k: (v.decode() if isinstance(v, bytes) else v) for k, v in ex.items()}
          for ex in ds.as_numpy_iterator()]


def _parse_pair(text):
  s1, s2 = text.split(' <extra_id_0>. ')
  return s1, s2


def _parse_mc(text):
  m = re.fullmatch(r'(.*)\? (A\. .*) Answer: <extra_id_0>', text)
  assert m, text
  parts = re.split(r'(?:^| )([A-D])\. ', m.group(2))
  assert parts[0] == '' and parts[1::2] == ['A', 'B', 'C', 'D'], parts
  return m.group(1), parts[2::2]


# ------------------------------------------------------------------------------------------------
# Text handling.


def test_sentence_rule():
  para = 'He said "Stop." Then he left. version 2.0 is out!  Is it?   yes. (Maybe so.) Fine'
  assert ss.split_sentences(para) == ['He said "Stop."', 'Then he left. version 2.0 is out!',
                                      'Is it? yes.', '(Maybe so.)', 'Fine']


def test_segments_follow_paragraphs_and_word_cap():
  text = 'One two. Three four.\n\n  Five six seven eight nine.\r\nTen.'
  assert ss.segment_text(text) == ('One two.', 'Three four.', 'Five six seven eight nine.', 'Ten.')
  assert ss.segment_text(text, unit='paragraph') == (
      'One two. Three four.', 'Five six seven eight nine.', 'Ten.')
  assert ss.segment_text(text, max_words=3) == ('One two.', 'Three four.', 'Five six seven', 'Ten.')


@needs_spiece
def test_verbalizers_are_single_real_t5_pieces():
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=SPIECE)
  assert [sp.encode(w) for w in ('yes', 'no', 'maybe')] == [[4273], [150], [2087]]
  for fmt in (ss.NextSentenceYesMaybeNo(), ss.MultipleChoiceNextSegment()):
    for word in fmt.verbalizer:
      ids = sp.encode(word)
      assert len(ids) == 1 and ids[0] > 2 and sp.id_to_piece(ids[0]) == '▁' + word, word


# ------------------------------------------------------------------------------------------------
# Example construction against the corpus facts.


@needs_spiece
@pytest.mark.parametrize('buffer_documents', [2, 512])
def test_nsp_labels_match_document_structure(corpus, buffer_documents):
  docs, where = corpus
  _register(buffer_documents=buffer_documents)
  exs = _examples(NSP)
  assert len(exs) > 30
  counts = collections.Counter()
  for ex in exs:
    s1, s2 = _parse_pair(ex['inputs_pretokenized'])
    (d1, i), (d2, j) = where[s1], where[s2]
    assert d1 < 12 and d2 < 12  # training documents only
    label = ex['targets_pretokenized']
    counts[label] += 1
    if label == 'yes':
      assert d2 == d1 and j == i + 1
    elif label == 'maybe':
      assert d2 == d1 and abs(j - i) >= 2
    else:
      assert label == 'no' and d2 != d1
    assert list(ex['answer_choices']) == [b'yes', b'no', b'maybe']
  assert set(counts) == {'yes', 'no', 'maybe'}
  assert max(counts.values()) - min(counts.values()) <= 1, counts


@needs_spiece
def test_yes_pairs_cross_paragraph_boundaries(corpus):
  docs, where = corpus
  _register()
  pairs = {_parse_pair(e['inputs_pretokenized']) for e in _examples(NSP)
           if e['targets_pretokenized'] == 'yes'}
  # Sentence 2 ends the first paragraph of every training document; sentence 3 starts the second.
  assert any(where[s1][1] == 2 and where[s2][1] == 3 for s1, s2 in pairs)


@needs_spiece
def test_mc_gold_is_the_true_next_segment(corpus):
  docs, where = corpus
  _register()
  exs = _examples(MC)
  assert len(exs) > 30
  golds = collections.Counter()
  for ex in exs:
    query, options = _parse_mc(ex['inputs_pretokenized'])
    letter = ex['targets_pretokenized']
    golds[letter] += 1
    gold = options['ABCD'.index(letter)]
    # The query lost its final '.' for the template's '?'; find it by prefix.
    (d, i), = [where[s] for s in where if s[:-1] == query]
    assert gold == docs[d][i + 1]
    distractors = [o for k, o in enumerate(options) if 'ABCD'[k] != letter]
    assert docs[d][i + 1] not in distractors and query + '.' not in distractors
    same = [where[o] for o in distractors if where[o][0] == d]
    other_docs = [where[o][0] for o in distractors if where[o][0] != d]
    assert len(same) == 1 and abs(same[0][1] - i) >= 2
    assert len(other_docs) == 2 and all(o < 12 for o in other_docs)
    assert len(set(options)) == 4
    assert list(ex['answer_choices']) == [b'A', b'B', b'C', b'D']
  assert set(golds) == set('ABCD') and max(golds.values()) - min(golds.values()) <= 1, golds


@needs_spiece
def test_deterministic_per_seed_and_different_across_seeds(corpus):
  _register()
  for name in (NSP, MC):
    a = [e['inputs_pretokenized'] + e['targets_pretokenized'] for e in _examples(name, seed=5)]
    b = [e['inputs_pretokenized'] + e['targets_pretokenized'] for e in _examples(name, seed=5)]
    c = [e['inputs_pretokenized'] + e['targets_pretokenized'] for e in _examples(name, seed=6)]
    assert a == b and a != c
  # Shuffled reads are reproducible too (seqio shuffles with the same seed).
  x = [e['inputs_pretokenized'] for e in _examples(NSP, seed=9, shuffle=True)]
  y = [e['inputs_pretokenized'] for e in _examples(NSP, seed=9, shuffle=True)]
  assert x == y


@needs_spiece
def test_subdir_splits_keep_their_documents(corpus):
  docs, where = corpus
  _register()
  for name in (NSP, MC):
    val = _examples(name, split='validation')
    assert val
    for ex in val:
      text = ex['inputs_pretokenized']
      used = [s for s in where if s in text or s[:-1] + '?' in text]
      assert used and all(where[s][0] >= 12 for s in used), text


@needs_spiece
def test_hash_split_is_disjoint_by_document(tmp_path):
  docs, where = _write_corpus(str(tmp_path), n_txt=10, n_jsonl=10)
  T.set_data_dir('text', str(tmp_path))
  _register(validation_fraction=0.5)
  seen = {}
  for split in ss.SPLITS:
    exs = _examples(NSP, split=split)
    seen[split] = {where[s][0] for e in exs for s in _parse_pair(e['inputs_pretokenized'])}
  assert seen['train'] and seen['validation']
  assert not seen['train'] & seen['validation']
  assert seen['train'] | seen['validation'] <= set(docs)
  # Both file kinds contribute to both splits.
  assert {d < 10 for d in seen['train']} == {True, False}
  assert {d < 10 for d in seen['validation']} == {True, False}


# ------------------------------------------------------------------------------------------------
# Tokenization and model features.


@needs_spiece
def test_tokenization_is_vocab_encode_plus_eos_after_trim(corpus):
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=SPIECE)
  vocab = cfg.get_vocabulary('t5')
  _register()
  exs = _examples(NSP, lengths={'inputs': 9, 'targets': 8})
  for ex in exs[:10]:
    full = vocab.encode(ex['inputs_pretokenized'])
    assert len(full) > 9
    assert list(ex['inputs']) == full[:8] + [1]
    assert 32099 in full  # <extra_id_0> is the single sentinel id, not characters
    assert list(ex['targets']) == sp.encode(ex['targets_pretokenized']) + [1]
  assert {tuple(ex['targets']) for ex in exs} == {(4273, 1), (150, 1), (2087, 1)}


@needs_spiece
def test_sentinel_target_style():
  ss.register_text_tasks('test_ss_sentinel', lambda: '/unused', target_style='sentinel',
                         formats=['nsp_yes_maybe_no'])
  src = seqio.get_mixture_or_task('test_ss_sentinel_nsp_yes_maybe_no').source
  docs = [ss.Document('a', ('A one.', 'A two.', 'A three.')), ss.Document('b', ('B one.', 'B two.'))]
  exs = list(ss.build_examples(docs, src.fmt, np.random.default_rng(0), target_style='sentinel'))
  assert exs and exs[0]['answer_choices'] == [
      '<extra_id_0> yes <extra_id_1>', '<extra_id_0> no <extra_id_1>', '<extra_id_0> maybe <extra_id_1>']
  assert cfg.get_vocabulary('t5').encode(exs[0]['answer_choices'][0]) == [32099, 4273, 32098]


@needs_spiece
def test_enc_dec_feature_converter(corpus):
  _register()
  ds = seqio.get_dataset(MC, task_feature_lengths={'inputs': 128, 'targets': 4}, dataset_split='train',
                         shuffle=False, feature_converter=seqio.EncDecFeatureConverter(pack=False))
  ex = next(ds.as_numpy_iterator())
  assert set(ex) == {'encoder_input_tokens', 'decoder_target_tokens', 'decoder_input_tokens',
                     'decoder_loss_weights'}
  assert ex['encoder_input_tokens'].shape == (128,) and ex['decoder_target_tokens'].shape == (4,)
  assert list(ex['decoder_target_tokens'][1:]) == [1, 0, 0]
  assert list(ex['decoder_input_tokens'][:2]) == [0, int(ex['decoder_target_tokens'][0])]


def test_default_tasks_are_registered_without_reading_data():
  for name in ('text_nsp_yes_maybe_no', 'text_mc_next_segment'):
    task = seqio.TaskRegistry.get(name)
    assert task.splits == ('train', 'validation')
    assert task.output_features['inputs'].vocabulary is cfg.get_vocabulary('t5')
    assert task.output_features['targets'].add_eos
  assert set(ss.DEFAULT_FORMATS) <= set(ss.FORMATS)
  assert not set(ss.PLANNED_CLUSTER_FORMATS) & set(ss.FORMATS)


def test_register_for_another_directory_and_vocab(tmp_path):
  tasks = ss.register_text_tasks('test_ss_mini', lambda: str(tmp_path / 'text'), 'mini', family='mini',
                                 format_kwargs={'mc_next_segment': {'num_options': 6}})
  assert sorted(tasks) == sorted(ss.DEFAULT_FORMATS)
  mc = seqio.TaskRegistry.get('test_ss_mini_mc_next_segment')
  assert mc.output_features['inputs'].vocabulary is cfg.get_vocabulary('mini')
  assert mc.source.fmt.verbalizer == tuple('ABCDEF')
  with pytest.raises(T.DataError, match=r"PROMPTJAX_MINI_DIR.*set_data_dir\('mini'"):
    mc.get_dataset(LENGTHS, split='train')
  with pytest.raises(ValueError, match='unknown format'):
    ss.register_text_tasks('test_ss_bad', formats=['sp_same_cluster'])


# ------------------------------------------------------------------------------------------------
# Errors.


def test_error_when_no_directory_is_configured():
  _register()
  with pytest.raises(T.DataError, match=f"{NSP}.*PROMPTJAX_TEXT_DIR=/path"):
    seqio.get_mixture_or_task(NSP).get_dataset(LENGTHS, split='train')


def test_error_for_missing_directory(tmp_path):
  T.set_data_dir('text', str(tmp_path / 'nope'))
  _register()
  with pytest.raises(T.DataError, match=f"{MC}.*{tmp_path / 'nope'} does not exist.*PROMPTJAX_TEXT_DIR"):
    seqio.get_mixture_or_task(MC).get_dataset(LENGTHS, split='train')


def test_error_when_a_split_has_no_documents(tmp_path):
  _write_corpus(str(tmp_path / 'train'))
  os.makedirs(tmp_path / 'validation')
  (tmp_path / 'validation' / 'notes.md').write_text('not a document')
  T.set_data_dir('text', str(tmp_path))
  _register()
  with pytest.raises(T.DataError, match=f"{NSP}.*no documents found for split 'validation'.*"
                                        f"PROMPTJAX_TEXT_DIR"):
    seqio.get_mixture_or_task(NSP).get_dataset(LENGTHS, split='validation')
  # Files of empty documents count as no documents.
  (tmp_path / 'validation' / 'empty.txt').write_text('\n  \n')
  with pytest.raises(T.DataError, match="no documents found for split 'validation'"):
    seqio.get_mixture_or_task(NSP).get_dataset(LENGTHS, split='validation')


@needs_spiece
def test_error_names_file_and_line_of_malformed_jsonl(tmp_path):
  good = json.dumps({'text': 'One sentence here. Another one there. A third one now.'})
  (tmp_path / 'a.jsonl').write_text('\n'.join([good, good, '{"text": "unterminated', good]) + '\n')
  T.set_data_dir('text', str(tmp_path))
  _register(validation_fraction=0.0)
  path = tmp_path / 'a.jsonl'
  with pytest.raises(T.DataError, match=f"{NSP}.*malformed line {path}:3.*PROMPTJAX_TEXT_DIR"):
    seqio.get_mixture_or_task(NSP).get_dataset(LENGTHS, split='train')
  # Past the eager check (validate_bytes) the error comes while iterating, still naming file and line.
  _register(validation_fraction=0.0, validate_bytes=1)
  ds = seqio.get_mixture_or_task(NSP).get_dataset(LENGTHS, split='train', shuffle=False)
  with pytest.raises(T.DataError, match=f'malformed line {path}:3'):
    list(iterate(ds, NSP))
  (tmp_path / 'a.jsonl').write_text('\n'.join([good, '\n', '["text"]']) + '\n')
  _register(validation_fraction=0.0)
  with pytest.raises(T.DataError, match=rf'a.jsonl:4: expected a JSON object with a string "text"'):
    seqio.get_mixture_or_task(NSP).get_dataset(LENGTHS, split='train')


def test_error_when_corpus_is_too_small_for_negatives(tmp_path):
  (tmp_path / 'only.txt').write_text('First sentence here. Second one there. Third one now. Fourth.')
  T.set_data_dir('text', str(tmp_path))
  _register(validation_fraction=0.0)
  for name in (NSP, MC):
    with pytest.raises(T.DataError, match=f"{name}.*too small to build.*1 non-empty document.*"
                                          f"PROMPTJAX_TEXT_DIR"):
      seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split='train')
  # Two documents, but none with three segments: no anchor can take every label.
  (tmp_path / 'only.txt').write_text('First sentence here. Second one there.')
  (tmp_path / 'two.txt').write_text('Other sentence here. Other one there.')
  with pytest.raises(T.DataError, match='too small.*none with 3\\+ segments'):
    seqio.get_mixture_or_task(NSP).get_dataset(LENGTHS, split='train')
