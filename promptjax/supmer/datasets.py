"""SUPMER's downstream evaluation data as seqio Tasks (Pan et al. 2023, §4.1, App. B, C).

Two settings (§4.1):

* **Few-shot learning** on 12 datasets (Table 5): SST-2, SST-5, MR, CR (sentiment), SUBJ (subjectivity),
  TREC (question type), CB, RTE (NLI), QNLI (question answering), WiC (word sense), MRPC, QQP
  (paraphrase). "We sample N×K instances from the original training set to construct the few-shot
  training and validation sets" (Table 5), 16 per label, disjoint; "we leverage the original validation
  sets of SST-2, CB, RTE, QNLI, WiC, MRPC, and QQP as substitutes for the unavailable test sets" (App. B).
* **Domain generalization** over 6 sentiment domains (Calderon et al. 2022's data): Airlines, Books, DVDs,
  Electronics, Kitchen, Restaurants; 16 per label sampled from the training set of the source domain
  (Airlines) tune the prompt, then "evaluate on the test sets of all 6 domains" (App. B).

Data directory
--------------
One folder, the ``supmer_downstream`` data family (``PROMPTJAX_SUPMER_DOWNSTREAM_DIR=/path`` or
``promptjax.tasks.set_data_dir('supmer_downstream', '/path')``), holding the releases unchanged::

  SST-2/train.tsv, dev.tsv    LM-BFF data/original/SST-2 (Gao et al. 2021). TSV with the header line
                              ``sentence<TAB>label``; label 0 (negative) / 1 (positive). 6,920 train
                              sentences; dev.tsv (872) is the test set (LM-BFF, SUPMER).
  sst-5/train.csv, test.csv   LM-BFF data/original/{sst-5,mr,cr,subj,trec}: headerless CSV rows
  mr/, cr/, subj/, trec/      ``label,sentence`` (``pd.read_csv(header=None)``: label in column 0, the
                              text in column 1, CSV quoting). Labels 0..K-1: sst-5 very negative..very
                              positive; mr/cr negative/positive; subj 0 subjective / 1 objective; trec
                              0..5 description, entity, expression, human, location, number (LM-BFF's
                              label words, in its label order).
  CB/train.jsonl, val.jsonl   SuperGLUE release (CB.zip, RTE.zip, WiC.zip): one JSON object per line.
  RTE/..., WiC/...            CB, RTE: {"premise", "hypothesis", "label", "idx"}, label "entailment" /
                              "contradiction" / "neutral" (CB) or "entailment" / "not_entailment" (RTE).
                              WiC: {"word", "sentence1", "sentence2", "label": true|false, "idx",
                              "start1", "end1", "start2", "end2", "version"}. val.jsonl is the test set.
                              (RTE may instead be GLUE's RTE/train.tsv, dev.tsv: header
                              ``index sentence1 sentence2 label``; the same 2,490 / 277 pairs.)
  MRPC/train.tsv, dev.tsv     GLUE release (download_glue_data.py layout), tab-separated with a header,
                              no quoting (fields split on tabs, as GLUE's and LM-BFF's readers do):
                              MRPC ``Quality #1 ID #2 ID #1 String #2 String`` (label = Quality 0/1,
                              a UTF-8 BOM is allowed); QNLI ``index question sentence label`` (label
  QNLI/..., QQP/...           entailment / not_entailment); QQP ``id qid1 qid2 question1 question2
                              is_duplicate``. QQP lines with fewer than 6 fields are skipped, as LM-BFF's
                              and transformers' QqpProcessor do. dev.tsv is the test set.
  reviews.json                Calderon et al. 2022 (DoCoGen, github.com/nitaytech/DoCoGen, data/reviews.json
                              from data/paper_data.zip): ONE JSON object of equal-length columns
                              (``pd.DataFrame.to_dict(orient='list')``) with keys "example_id", "split"
                              ("unlabeled" / "train" / "validation" / "test"), "domain", "label", "text";
                              unlabeled rows have label null. Labels "negative" / "positive" (the
                              DoCoGen README's example; 0 / 1 are accepted too). Domain values are matched
                              case-insensitively with aliases (`DOMAINS`).

Where these were checked: LM-BFF ``tools/generate_k_shot_data.py`` (file names, header handling, label
columns: SST-2 ``line[-1]``, csv ``line[0]``, MRPC ``line[0]``, QNLI/QQP ``line[-1]``) and
``src/processors.py`` (SST-2 text ``line[0]``; MRPC ``line[3]``/``line[4]``; QNLI ``line[1]``/``line[2]``;
QQP ``line[3..5]`` with IndexError lines skipped); SUPMER's ``data/tasks.py`` (HF ``super_glue`` /
``glue`` label ids; test = validation for CB/RTE/WiC/QNLI/QQP/MRPC); the DoCoGen README (reviews.json
columns and split names; the domain value spellings for Books and Restaurants are not shown there, hence
the aliases). The official SUPMER code reads SST-2/SST-5/MR/CR/SUBJ/TREC from a JSON conversion of the
LM-BFF files (``<task>/train.json``, ``test.json`` with "source" / "label"); the rows are the same.

Few-shot sampling (`sample_few_shot`)
-------------------------------------
``sampler='supmer'`` (default) is SUPMER's ``AbstractTask.sample_datasets``: shuffle the training set
with HF ``Dataset.shuffle(seed)`` — ``np.random.default_rng(seed).permutation(n)`` — then for each label
0..K-1 in order take, from that label's rows in shuffled order, the first ``m = min(n_label // 2, k)``
as train and the next ``m`` as validation. Train and validation are disjoint, label-balanced, and (a label
with fewer than 2k rows, e.g. CB's neutral class, gives m < k, as in SUPMER) exactly ``m`` per label.
``sampler='lm_bff'`` is LM-BFF's ``generate_k_shot_data.py``: ``np.random.seed(seed)``,
``np.random.shuffle(rows)``, labels in order of first appearance, first k per label train, next k dev.
Seeds: LM-BFF's 13, 21, 42, 87, 100 (`SEEDS`; SUPMER's default ``data_seed`` is 100).

Templates and verbalizers (`DATASETS`)
--------------------------------------
SUPMER's own T5 patterns, ``pattern_id = 0`` (its default) of ``data/processors.py`` in the official code
(github.com/beepkh/SUPMER): the mask is T5's sentinel ``<extra_id_0>`` and the target is
``<extra_id_0> <verbalizer>`` (SUPMER's ``get_decoder_parts``). Every verbalizer is one piece of the T5
SentencePiece vocabulary (tested with the real model). By label id:

=========  ====================================================================  ===========================
dataset    input (parts joined by one space)                                     verbalizers
=========  ====================================================================  ===========================
sst2 mr cr ``{sentence} It was <extra_id_0> ?``                                  terrible, great
sst5       same                                                                  terrible, bad, okay, good,
                                                                                 great
subj       ``{sentence} This is <extra_id_0> .``                                 subjective, objective
trec       ``{question} <extra_id_0> :``                                         description, entity,
                                                                                 expression, human,
                                                                                 location, number
cb         ``" {hypothesis minus final punctuation} " ? <extra_id_0> , " {premise} "``  yes, no, maybe
rte        same                                                                  yes, no
wic        ``" {s1} " / " {s2} " Similar sense of "{word}"? <extra_id_0> .``    No, Yes
qnli       ``{sentence} . Question: {question} ? Answer: <extra_id_0> .``        Yes, No
mrpc qqp   ``Do {s1} and {s2} have the same meaning? <extra_id_0> .``            No, Yes
domains    the sentiment (MR/SST-2) pattern                                      terrible, great
=========  ====================================================================  ===========================

(SUPMER's release has no domain-generalization processor; its binary sentiment one is used.)

Tokenization follows SUPMER's ``MLMProcessor``: each part is tokenized on its own and the ids are
concatenated (SentencePiece splits at whitespace, so this equals tokenizing the space-joined
``inputs_pretokenized``). Truncation is PET's, as SUPMER uses it: while too long, drop the last token of
the last non-empty *shortenable* part (the texts, never the template or the mask) of whichever part group
(first / second segment) has more shortenable tokens. The budget is ``task_feature_lengths['inputs'] - 1``
(room for EOS); SUPMER's inputs have no EOS and a budget of max_seq_length − 1 (one segment) or − 2 (two,
CB/RTE), so ``{'inputs': 128 or 256}`` (`FEATURE_LENGTHS`, App. C: 256 for CR, SUBJ, CB, RTE, WiC) matches
it within a token. promptjax appends EOS to the targets too (SUPMER's decoder has none): targets are
``[<extra_id_0>, verbalizer, EOS]``.

Tasks
-----
* ``supmer_<dataset>_<seed>`` (dataset in `DATASETS`: sst2 sst5 mr cr subj trec cb rte qnli wic mrpc
  qqp), splits ``train`` / ``validation`` (the few-shot samples) and ``test``. Features: ``inputs``,
  ``targets`` (+ ``_pretokenized``), ``label`` (int32), ``answer_choices`` (the target strings).
* ``supmer_domain_<domain>_<seed>`` (domain in airline books dvd electronics kitchen restaurants): train /
  validation sampled from the *source* domain (airline) train split, ``test`` that domain's test split.
* ``<task>_rank_classification`` views of each: one record per (instance, answer choice) with ``idx`` =
  [instance, choice], ``is_correct``, ``weight``, ``answer_choices``, the choice's ``targets``
  (`promptjax.evaluation.rank_classification.load_choices`); like P3's rank views they carry seqio's
  rank-classification score metric (`promptjax.tasks.p3.rank_classification_accuracy`).
* Mixtures of the rank views per seed: ``supmer_fewshot_<seed>_rank_classification`` (the 12 datasets),
  ``supmer_<group>_<seed>_rank_classification`` for the Table 1 groups (`GROUPS`), and
  ``supmer_domain_<seed>_rank_classification`` (the 6 domains).

Nothing is read at import; a missing directory, file or unknown name raises one `DataError` naming the fix.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import string
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import seqio
import tensorflow as tf

from promptjax.tasks import config
from promptjax.tasks.config import DataError
from promptjax.tasks import p3
from promptjax.tasks.p3 import RANK_SUFFIX

FAMILY = 'supmer_downstream'
SEEDS = (13, 21, 42, 87, 100)
SPLITS = ('train', 'validation', 'test')
K_PER_LABEL = 16
PREFIX = 'supmer'
MASK = '<extra_id_0>'
SAMPLERS = ('supmer', 'lm_bff')

Part = Tuple[str, bool, int]  # (text, shortenable, segment 0 | 1)
Template = Callable[[Mapping[str, object]], List[Part]]


def _a(text, shortenable=False):
  return (str(text), shortenable, 0)


def _b(text, shortenable=False):
  return (str(text), shortenable, 1)


# SUPMER data/processors.py, pattern_id 0.
def _sentiment(ex):
  return [_a(ex['sentence'], True), _a(f'It was {MASK} ?')]


def _subj(ex):
  return [_a(ex['sentence'], True), _a('This is'), _a(f'{MASK} .')]


def _trec(ex):
  return [_a(ex['sentence'], True), _a(f'{MASK} :')]


def _nli(ex):
  hypothesis = str(ex['hypothesis']).rstrip(string.punctuation)
  return [_a('"'), _a(hypothesis, True), _a('" ?'), _b(f'{MASK} , "'), _b(ex['premise'], True), _b('"')]


def _wic(ex):
  return [_a('"'), _a(ex['sentence1'], True), _a('" / "'), _a(ex['sentence2'], True),
          _a(f'" Similar sense of "{ex["word"]}"?'), _a(f'{MASK} .')]


def _qnli(ex):
  return [_a(ex['sentence'], True), _a('. Question: '), _a(ex['question'], True), _a('? Answer: '),
          _a(f'{MASK} .')]


def _same_meaning(ex):
  return [_a('Do '), _a(ex['sentence1'], True), _a(' and '), _a(ex['sentence2'], True),
          _a(' have the same meaning? '), _a(f'{MASK} .')]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One downstream dataset: where it lives, how to read it, its labels, template and verbalizers.

  Attributes:
    name: the slug in task names (``sst2``).
    paper_name: as in Table 5 (``SST-2``).
    directory: the release's folder under the data directory (``SST-2``, ``sst-5``, ``CB``...).
    reader: one of ``lm_bff_sst2``, ``lm_bff_csv``, ``superglue``, ``glue_mrpc``, ``glue_qnli``,
      ``glue_qqp``.
    train_file / test_file: file names in ``directory`` (the test file is the original validation set
      where test labels are unavailable).
    labels: label names by label id (SUPMER's / HF datasets' ids).
    verbalizers: the answer word of each label id.
    template: example dict -> [(text, shortenable, segment)].
    max_seq_length: SUPMER's input length (App. C.1).
    group: the Table 1 task group.
  """
  name: str
  paper_name: str
  directory: str
  reader: str
  train_file: str
  test_file: str
  labels: Tuple[str, ...]
  verbalizers: Tuple[str, ...]
  template: Template
  max_seq_length: int
  group: str

  @property
  def num_labels(self) -> int:
    return len(self.labels)

  @property
  def answer_choices(self) -> Tuple[str, ...]:
    return tuple(f'{MASK} {v}' for v in self.verbalizers)


_SENT2 = ('negative', 'positive')
DATASETS: Mapping[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec('sst2', 'SST-2', 'SST-2', 'lm_bff_sst2', 'train.tsv', 'dev.tsv', _SENT2,
                ('terrible', 'great'), _sentiment, 128, 'sentiment'),
    DatasetSpec('sst5', 'SST-5', 'sst-5', 'lm_bff_csv', 'train.csv', 'test.csv',
                ('very negative', 'negative', 'neutral', 'positive', 'very positive'),
                ('terrible', 'bad', 'okay', 'good', 'great'), _sentiment, 128, 'sentiment'),
    DatasetSpec('mr', 'MR', 'mr', 'lm_bff_csv', 'train.csv', 'test.csv', _SENT2, ('terrible', 'great'),
                _sentiment, 128, 'sentiment'),
    DatasetSpec('cr', 'CR', 'cr', 'lm_bff_csv', 'train.csv', 'test.csv', _SENT2, ('terrible', 'great'),
                _sentiment, 256, 'sentiment'),
    DatasetSpec('subj', 'SUBJ', 'subj', 'lm_bff_csv', 'train.csv', 'test.csv', ('subjective', 'objective'),
                ('subjective', 'objective'), _subj, 256, 'subjectivity'),
    DatasetSpec('trec', 'TREC', 'trec', 'lm_bff_csv', 'train.csv', 'test.csv',
                ('description', 'entity', 'expression', 'human', 'location', 'number'),
                ('description', 'entity', 'expression', 'human', 'location', 'number'), _trec, 128,
                'question_classification'),
    DatasetSpec('cb', 'CB', 'CB', 'superglue', 'train.jsonl', 'val.jsonl',
                ('entailment', 'contradiction', 'neutral'), ('yes', 'no', 'maybe'), _nli, 256, 'nli'),
    DatasetSpec('rte', 'RTE', 'RTE', 'superglue', 'train.jsonl', 'val.jsonl',
                ('entailment', 'not_entailment'), ('yes', 'no'), _nli, 256, 'nli'),
    DatasetSpec('qnli', 'QNLI', 'QNLI', 'glue_qnli', 'train.tsv', 'dev.tsv',
                ('entailment', 'not_entailment'), ('Yes', 'No'), _qnli, 128, 'question_answering'),
    DatasetSpec('wic', 'WiC', 'WiC', 'superglue', 'train.jsonl', 'val.jsonl', ('false', 'true'),
                ('No', 'Yes'), _wic, 256, 'word_sense'),
    DatasetSpec('mrpc', 'MRPC', 'MRPC', 'glue_mrpc', 'train.tsv', 'dev.tsv',
                ('not_equivalent', 'equivalent'), ('No', 'Yes'), _same_meaning, 128, 'paraphrase'),
    DatasetSpec('qqp', 'QQP', 'QQP', 'glue_qqp', 'train.tsv', 'dev.tsv', ('not_duplicate', 'duplicate'),
                ('No', 'Yes'), _same_meaning, 128, 'paraphrase'),
)}
# Table 1's task groups (§4.1: "6 downstream tasks with 12 datasets"; paraphrase split from QA as listed).
GROUPS: Mapping[str, Tuple[str, ...]] = {
    'sentiment': ('sst2', 'sst5', 'mr', 'cr'),
    'subjectivity': ('subj',),
    'question_classification': ('trec',),
    'nli': ('cb', 'rte'),
    'question_answering': ('qnli',),
    'word_sense': ('wic',),
    'paraphrase': ('mrpc', 'qqp'),
}
FEATURE_LENGTHS = {name: {'inputs': s.max_seq_length, 'targets': 3} for name, s in DATASETS.items()}

# Domain generalization (§4.1, App. B): canonical name -> accepted "domain" values (lowercased).
DOMAINS: Mapping[str, Tuple[str, ...]] = {
    'airline': ('airline', 'airlines', 'a'),
    'books': ('books', 'book', 'b'),
    'dvd': ('dvd', 'dvds', 'd'),
    'electronics': ('electronics', 'electronic', 'e'),
    'kitchen': ('kitchen', 'kitchen_housewares', 'kitchen appliances', 'k'),
    'restaurants': ('restaurants', 'restaurant', 'yelp', 'r'),
}
SOURCE_DOMAIN = 'airline'
DOMAIN_FILE = 'reviews.json'
DOMAIN_SPEC = DatasetSpec('domain', 'sentiment domains', '', 'docogen', DOMAIN_FILE, DOMAIN_FILE, _SENT2,
                          ('terrible', 'great'), _sentiment, 256, 'domain')
_DOMAIN_LABELS = {'negative': 0, 'positive': 1, 'neg': 0, 'pos': 1, '0': 0, '1': 1}

_WHAT = ('the SUPMER downstream data (LM-BFF data/original SST-2, sst-5, mr, cr, subj, trec; SuperGLUE CB, '
         'RTE, WiC; GLUE MRPC, QNLI, QQP; DoCoGen reviews.json), see promptjax.supmer.datasets')


def _hint() -> str:
  return (f'Set {config.ENV_VARS[FAMILY]}=/path or call promptjax.tasks.set_data_dir({FAMILY!r}, "/path") '
          f'to a folder holding {_WHAT}.')


def _data_dir(who: str) -> str:
  try:
    path = config.get_data_dir(FAMILY)
  except DataError as e:
    raise DataError(f'{who}: {e}') from None
  if not tf.io.gfile.isdir(path):
    raise DataError(f'{who}: the data directory {path} does not exist. {_hint()}')
  return path


def _listing(path: str, limit: int = 12) -> str:
  try:
    names = sorted(n.rstrip('/') for n in tf.io.gfile.listdir(path))
  except tf.errors.OpError:
    return '(unreadable)'
  return '[' + ', '.join(names[:limit]) + (', ...' if len(names) > limit else '') + ']' if names else '(empty)'


# ---------------------------------------------------------------------------------------------------------
# Readers: each returns [{'label': int, <text fields>}] in file order.


def _read_text(path: str, who: str) -> str:
  with tf.io.gfile.GFile(path, 'rb') as f:
    raw = f.read()
  try:
    return raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise DataError(f'{who}: {path} is not UTF-8 ({e}).') from None


def _label_id(value, spec: DatasetSpec, where: str) -> int:
  try:
    i = int(value)
  except (TypeError, ValueError):
    raise DataError(f'{where}: label {value!r} is not an integer 0..{spec.num_labels - 1}.') from None
  if not 0 <= i < spec.num_labels:
    raise DataError(f'{where}: label {i} is outside 0..{spec.num_labels - 1} ({spec.paper_name}: '
                    f'{", ".join(spec.labels)}).')
  return i


def _lines(text: str) -> List[str]:
  return [line.rstrip('\r\n') for line in io.StringIO(text, newline=None)]


def _tsv(text: str, header: Sequence[str], path: str, spec: DatasetSpec, min_fields: Optional[int] = None,
         skip_short: bool = False) -> List[List[str]]:
  lines = _lines(text)
  if not lines:
    raise DataError(f'{spec.paper_name}: {path} is empty.')
  got = lines[0].split('\t')
  if [h.strip() for h in got] != list(header):
    raise DataError(f'{spec.paper_name}: {path} starts with {lines[0][:120]!r}; the release\'s header is '
                    f'{chr(9).join(header)!r} (tab-separated). Is this the right file?')
  rows = []
  need = min_fields or len(header)
  for number, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    fields = line.split('\t')
    if len(fields) < need:
      if skip_short:
        continue
      raise DataError(f'{spec.paper_name}: {path} line {number} has {len(fields)} tab-separated fields, '
                      f'expected {need} ({chr(9).join(header)!r}).')
    rows.append(fields)
  return rows


def _read_split(spec: DatasetSpec, directory: str, file_name: str, who: str) -> List[Dict[str, object]]:
  path = os.path.join(directory, file_name)
  where = f'{who}: {path}'
  text = _read_text(path, who)
  rows: List[Dict[str, object]] = []
  if spec.reader == 'lm_bff_sst2':
    for n, f in enumerate(_tsv(text, ('sentence', 'label'), path, spec), start=2):
      rows.append({'sentence': f[0], 'label': _label_id(f[-1], spec, f'{where} line {n}')})
  elif spec.reader == 'lm_bff_csv':
    for n, f in enumerate(csv.reader(io.StringIO(text, newline='')), start=1):
      if not f:
        continue
      if len(f) < 2:
        raise DataError(f'{where} row {n}: expected "label,sentence" (headerless CSV as LM-BFF ships it), '
                        f'got {f!r}.')
      rows.append({'sentence': f[1], 'label': _label_id(f[0], spec, f'{where} row {n}')})
  elif spec.reader == 'superglue' and file_name.endswith('.tsv'):   # GLUE's RTE
    for n, f in enumerate(_tsv(text, ('index', 'sentence1', 'sentence2', 'label'), path, spec), start=2):
      rows.append({'premise': f[1], 'hypothesis': f[2], 'label': _named_label(f[-1], spec, f'{where} line {n}')})
  elif spec.reader == 'superglue':
    for n, line in enumerate(_lines(text), start=1):
      if not line.strip():
        continue
      try:
        ex = json.loads(line)
      except ValueError as e:
        raise DataError(f'{where} line {n} is not JSON ({e}); SuperGLUE files hold one object per line.') from None
      keys = ('word', 'sentence1', 'sentence2') if spec.name == 'wic' else ('premise', 'hypothesis')
      missing = [k for k in keys + ('label',) if k not in ex]
      if missing:
        raise DataError(f'{where} line {n} lacks {missing} (SuperGLUE {spec.paper_name} has '
                        f'{", ".join(keys + ("label", "idx"))}); the unlabeled test.jsonl cannot be used.')
      row = {k: ex[k] for k in keys}
      if spec.name == 'wic':
        if not isinstance(ex['label'], bool):
          raise DataError(f'{where} line {n}: WiC label must be true/false, got {ex["label"]!r}.')
        row['label'] = int(ex['label'])
      else:
        row['label'] = _named_label(ex['label'], spec, f'{where} line {n}')
      rows.append(row)
  elif spec.reader == 'glue_mrpc':
    header = ('Quality', '#1 ID', '#2 ID', '#1 String', '#2 String')
    for n, f in enumerate(_tsv(text, header, path, spec), start=2):
      rows.append({'sentence1': f[3], 'sentence2': f[4], 'label': _label_id(f[0], spec, f'{where} line {n}')})
  elif spec.reader == 'glue_qnli':
    for n, f in enumerate(_tsv(text, ('index', 'question', 'sentence', 'label'), path, spec), start=2):
      rows.append({'question': f[1], 'sentence': f[2], 'label': _named_label(f[-1], spec, f'{where} line {n}')})
  elif spec.reader == 'glue_qqp':
    header = ('id', 'qid1', 'qid2', 'question1', 'question2', 'is_duplicate')
    for n, f in enumerate(_tsv(text, header, path, spec, skip_short=True), start=2):
      rows.append({'sentence1': f[3], 'sentence2': f[4], 'label': _label_id(f[5], spec, f'{where} line {n}')})
  else:
    raise ValueError(f'unknown reader {spec.reader!r}')
  if not rows:
    raise DataError(f'{where}: no examples.')
  return rows


def _named_label(value, spec: DatasetSpec, where: str) -> int:
  if value not in spec.labels:
    raise DataError(f'{where}: label {value!r} is not one of {", ".join(spec.labels)}.')
  return spec.labels.index(value)


def _dataset_files(spec: DatasetSpec, who: str) -> Tuple[str, str, str]:
  """(directory, train file, test file) after checking they exist; RTE falls back to GLUE's tsv files."""
  root = _data_dir(who)
  directory = os.path.join(root, spec.directory)
  if not tf.io.gfile.isdir(directory):
    raise DataError(f'{who}: {directory} does not exist; {root} holds {_listing(root)}. Copy the '
                    f'{spec.paper_name} release folder there ({spec.directory}/{spec.train_file}, '
                    f'{spec.test_file}). {_hint()}')
  train, test = spec.train_file, spec.test_file
  if spec.name == 'rte' and not tf.io.gfile.exists(os.path.join(directory, train)) and all(
      tf.io.gfile.exists(os.path.join(directory, f)) for f in ('train.tsv', 'dev.tsv')):
    train, test = 'train.tsv', 'dev.tsv'
  for f in (train, test):
    if not tf.io.gfile.exists(os.path.join(directory, f)):
      raise DataError(f'{who}: the file {os.path.join(directory, f)} is missing; {directory} holds '
                      f'{_listing(directory)}. {spec.paper_name} needs {spec.train_file} (the training pool) '
                      f'and {spec.test_file} (the test set), as its release ships them. {_hint()}')
  return directory, train, test


_CACHE: Dict[Tuple, object] = {}


def _stat(path: str):
  st = tf.io.gfile.stat(path)
  return path, st.length, st.mtime_nsec


def _cached(key_paths: Sequence[str], tag, fn):
  key = (tag,) + tuple(_stat(p) for p in key_paths)
  if key not in _CACHE:
    _CACHE[key] = fn()
  return _CACHE[key]


# ---------------------------------------------------------------------------------------------------------
# Few-shot sampling.


def sample_few_shot(labels: Sequence[int], num_labels: int, seed: int, k: int = K_PER_LABEL,
                    sampler: str = 'supmer') -> Tuple[np.ndarray, np.ndarray]:
  """Row indices (into the training pool) of the few-shot train and validation sets.

  ``supmer``: SUPMER's ``sample_datasets`` — ``perm = np.random.default_rng(seed).permutation(n)`` (HF
  ``Dataset.shuffle(seed)``); for each label 0..num_labels-1, that label's rows in ``perm`` order; the first
  ``m = min(n_label // 2, k)`` are train and the next ``m`` validation; both concatenated label by label.
  ``lm_bff``: LM-BFF's ``generate_k_shot_data.py`` — ``np.random.seed(seed); np.random.shuffle(rows)``,
  labels in order of first appearance, ``[:k]`` train and ``[k:2k]`` dev per label.
  """
  labels = np.asarray(labels, np.int64)
  n = len(labels)
  if sampler == 'supmer':
    perm = np.random.default_rng(seed).permutation(n)
    train, dev = [], []
    for label in range(num_labels):
      members = perm[labels[perm] == label]
      m = min(len(members) // 2, k)
      train.append(members[:m])
      dev.append(members[m:2 * m])
    return np.concatenate(train).astype(np.int64), np.concatenate(dev).astype(np.int64)
  if sampler == 'lm_bff':
    order = list(range(n))
    np.random.RandomState(seed).shuffle(order)
    by_label: Dict[int, List[int]] = {}
    for i in order:
      by_label.setdefault(int(labels[i]), []).append(i)
    train = [i for rows in by_label.values() for i in rows[:k]]
    dev = [i for rows in by_label.values() for i in rows[k:2 * k]]
    return np.asarray(train, np.int64), np.asarray(dev, np.int64)
  raise ValueError(f'sampler must be one of {SAMPLERS}, got {sampler!r}.')


# ---------------------------------------------------------------------------------------------------------
# Data sources.


class SupmerDataSource(seqio.DataSource):
  """Rendered examples of one dataset (or domain) and seed: the few-shot train / validation samples and
  the test set. ``rank=True`` gives one record per (instance, answer choice) instead.

  Records carry the template parts (``input_parts``, ``input_part_shortenable``, ``input_part_segment``)
  for `tokenize_and_truncate`, plus ``inputs`` / ``targets`` strings, ``label``, ``answer_choices``.
  """

  def __init__(self, spec: DatasetSpec, seed: int, *, seqio_name: str, rank: bool = False,
               k: int = K_PER_LABEL, sampler: str = 'supmer', domain: Optional[str] = None,
               source_domain: str = SOURCE_DOMAIN):
    super().__init__(splits=SPLITS, num_input_examples=None, caching_permitted=True)
    if sampler not in SAMPLERS:
      raise ValueError(f'sampler must be one of {SAMPLERS}, got {sampler!r}.')
    self.spec, self.seed, self.seqio_name, self.rank = spec, seed, seqio_name, rank
    self.k, self.sampler, self.domain, self.source_domain = k, sampler, domain, source_domain

  def __repr__(self):
    return f'SupmerDataSource({self.seqio_name!r})'

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def _who(self) -> str:
    return f'Task {self.seqio_name!r}'

  # -- raw examples ----------------------------------------------------------------------------------------

  def examples(self, split: str) -> List[Dict[str, object]]:
    """The split's examples (dicts with ``label`` and text fields) in task order."""
    if split not in SPLITS:
      raise DataError(f'{self._who()}: unknown split {split!r}; the splits are {", ".join(SPLITS)}.')
    if self.domain is not None:
      pool, test = self._domain_rows()
      if split == 'test':
        return test
    else:
      directory, train_file, test_file = _dataset_files(self.spec, self._who())
      if split == 'test':
        return self._read(directory, test_file)
      pool = self._read(directory, train_file)
    train, dev = sample_few_shot([r['label'] for r in pool], self.spec.num_labels, self.seed, self.k,
                                 self.sampler)
    return [pool[i] for i in (train if split == 'train' else dev)]

  def _read(self, directory: str, file_name: str):
    path = os.path.join(directory, file_name)
    return _cached([path], ('rows', self.spec.name, file_name),
                   lambda: _read_split(self.spec, directory, file_name, self._who()))

  def _domain_rows(self):
    root = _data_dir(self._who())
    path = os.path.join(root, DOMAIN_FILE)
    if not tf.io.gfile.exists(path):
      raise DataError(f'{self._who()}: {path} is missing; {root} holds {_listing(root)}. Copy Calderon et '
                      f'al.\'s data/reviews.json (DoCoGen, data/paper_data.zip) there. {_hint()}')
    table = _cached([path], 'domains', lambda: _read_domains(path, self._who()))
    pool = _domain_split(table, self.source_domain, 'train', path, self._who())
    test = _domain_split(table, self.domain, 'test', path, self._who())
    return pool, test

  # -- seqio -----------------------------------------------------------------------------------------------

  def records(self, split: str) -> List[Dict[str, object]]:
    """Rendered records (the rank view expands every instance over its answer choices)."""
    spec = self.spec
    out = []
    for i, ex in enumerate(self.examples(split)):
      parts = spec.template(ex)
      texts = [p[0] for p in parts]
      inputs = ' '.join(t.strip() for t in texts if t.strip())
      gold = int(ex['label'])
      base = {'input_parts': texts, 'input_part_shortenable': [p[1] for p in parts],
              'input_part_segment': [p[2] for p in parts], 'inputs': inputs, 'label': gold,
              'answer_choices': list(spec.answer_choices)}
      if not self.rank:
        out.append({**base, 'targets': spec.answer_choices[gold]})
      else:
        for j, choice in enumerate(spec.answer_choices):
          out.append({**base, 'targets': choice, 'idx': [i, j], 'is_correct': j == gold, 'weight': 1.0})
    return out

  def num_input_examples(self, split: str) -> int:
    n = len(self.examples(split))
    return n * self.spec.num_labels if self.rank else n

  def get_dataset(self, split: str = 'train', shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    recs = self.records(split)
    cols = {
        'input_parts': tf.constant([r['input_parts'] for r in recs], tf.string),
        'input_part_shortenable': tf.constant([r['input_part_shortenable'] for r in recs], tf.bool),
        'input_part_segment': tf.constant([r['input_part_segment'] for r in recs], tf.int32),
        'inputs': tf.constant([r['inputs'] for r in recs], tf.string),
        'targets': tf.constant([r['targets'] for r in recs], tf.string),
        'label': tf.constant([r['label'] for r in recs], tf.int32),
        'answer_choices': tf.constant([r['answer_choices'] for r in recs], tf.string),
    }
    if self.rank:
      cols['idx'] = tf.constant([r['idx'] for r in recs], tf.int32)
      cols['is_correct'] = tf.constant([r['is_correct'] for r in recs], tf.bool)
      cols['weight'] = tf.constant([r['weight'] for r in recs], tf.float32)
    ds = tf.data.Dataset.from_tensor_slices(cols)
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    if shuffle:
      ds = ds.shuffle(len(recs), seed=seed)
    return ds


def _read_domains(path: str, who: str) -> Dict[str, list]:
  text = _read_text(path, who)
  try:
    table = json.loads(text)
  except ValueError as e:
    raise DataError(f'{who}: {path} is not JSON ({e}); Calderon et al.\'s reviews.json is one object of '
                    f'columns {{"example_id": [...], "split": [...], "domain": [...], "label": [...], '
                    f'"text": [...]}}.') from None
  need = ('split', 'domain', 'label', 'text')
  if not isinstance(table, dict) or any(k not in table or not isinstance(table[k], list) for k in need):
    raise DataError(f'{who}: {path} must be one JSON object with list columns {", ".join(need)} '
                    f'(DoCoGen\'s reviews.json layout, pd.DataFrame.to_dict(orient="list")).')
  if len({len(table[k]) for k in need}) != 1:
    raise DataError(f'{who}: {path}: the columns {", ".join(need)} have different lengths.')
  return table


def _domain_split(table, domain: str, split: str, path: str, who: str) -> List[Dict[str, object]]:
  aliases = DOMAINS[domain]
  rows = []
  for i, (s, d, label, text) in enumerate(zip(table['split'], table['domain'], table['label'], table['text'])):
    if s != split or str(d).strip().lower() not in aliases:
      continue
    key = str(label).strip().lower()
    if key not in _DOMAIN_LABELS:
      raise DataError(f'{who}: {path} row {i} (domain {d!r}, split {s!r}) has label {label!r}; expected '
                      f'"negative"/"positive" (or 0/1).')
    rows.append({'sentence': text, 'label': _DOMAIN_LABELS[key]})
  if not rows:
    present = sorted({f'{d}/{s}' for d, s in zip(table['domain'], table['split'])})
    raise DataError(f'{who}: {path} has no labeled rows of domain {domain!r} (values {aliases}) in split '
                    f'{split!r}; it holds domain/split {present[:20]}.')
  return rows


# ---------------------------------------------------------------------------------------------------------
# Preprocessing.


def truncate_parts(lengths: Sequence[int], shortenable: Sequence[bool], segment: Sequence[int],
                   budget: int) -> List[int]:
  """PET's ``truncate`` as SUPMER uses it: the new length of each part so that they sum to <= budget.

  One token at a time, from the end of the last non-empty shortenable part of the segment (0 / 1) with
  more shortenable tokens (segment 1 on ties, as PET's ``else`` branch); stops when nothing shortenable
  is left.
  """
  lengths = [int(n) for n in lengths]
  excess = sum(lengths) - budget
  while excess > 0:
    totals = [sum(n for n, s, g in zip(lengths, shortenable, segment) if s and g == seg) for seg in (0, 1)]
    seg = 0 if totals[0] > totals[1] else 1
    if totals[seg] == 0:
      seg = 1 - seg
      if totals[seg] == 0:
        break
    last = max(i for i, (n, s, g) in enumerate(zip(lengths, shortenable, segment)) if s and n and g == seg)
    lengths[last] -= 1
    excess -= 1
  return lengths


def tokenize_and_truncate(ds: tf.data.Dataset, output_features, sequence_length=None) -> tf.data.Dataset:
  """Tokenizes each template part on its own (SUPMER's ``MLMProcessor.tokenize``) and concatenates them,
  truncating the shortenable parts (`truncate_parts`) to ``sequence_length['inputs'] - 1`` tokens;
  tokenizes ``targets``; keeps ``*_pretokenized`` strings, ``label``, ``answer_choices`` and the rank
  features, and drops the part features."""
  vocab = output_features['inputs'].vocabulary
  target_vocab = output_features['targets'].vocabulary
  length = (sequence_length or {}).get('inputs')
  budget = None if length is None else int(length) - 1

  def _truncate(flat, row_lengths, shortenable, segment):
    new = truncate_parts(row_lengths.tolist(), shortenable.tolist(), segment.tolist(), budget)
    starts = np.concatenate([[0], np.cumsum(row_lengths)[:-1]])
    return np.concatenate([flat[s:s + n] for s, n in zip(starts, new)] + [np.zeros([0], np.int32)]).astype(
        np.int32)

  def fn(ex):
    ragged = vocab.encode_tf(ex['input_parts'])
    ids = tf.cast(ragged.flat_values, tf.int32)
    if budget is not None:
      row_lengths = tf.cast(ragged.row_lengths(), tf.int32)
      ids = tf.cond(
          tf.size(ids) > budget,
          lambda: tf.numpy_function(_truncate, [ids, row_lengths, ex['input_part_shortenable'],
                                                ex['input_part_segment']], tf.int32, stateful=False),
          lambda: ids)
      ids = tf.ensure_shape(ids, [None])
    out = {'inputs': ids, 'targets': tf.cast(target_vocab.encode_tf(ex['targets']), tf.int32),
           'inputs_pretokenized': ex['inputs'], 'targets_pretokenized': ex['targets']}
    for key in ('label', 'answer_choices', 'idx', 'is_correct', 'weight'):
      if key in ex:
        out[key] = ex[key]
    return out

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# ---------------------------------------------------------------------------------------------------------
# Registration.


def task_name(dataset: str, seed: int, rank: bool = False, prefix: str = PREFIX) -> str:
  """``supmer_<dataset>_<seed>`` (dataset in `DATASETS`) or ``supmer_domain_<domain>_<seed>`` (pass
  ``domain_<domain>``), plus ``_rank_classification`` when ``rank``; unknown names raise `DataError`."""
  if dataset not in DATASETS and not (dataset.startswith('domain_') and dataset[len('domain_'):] in DOMAINS):
    raise DataError(f'Unknown SUPMER downstream dataset {dataset!r}; known: {", ".join(DATASETS)}, and the '
                    f'domains {", ".join("domain_" + d for d in DOMAINS)}.')
  if seed not in SEEDS:
    raise DataError(f'SUPMER downstream tasks are registered for seeds {SEEDS}, not {seed!r}.')
  return f'{prefix}_{dataset}_{seed}' + (RANK_SUFFIX if rank else '')


def mixture_name(group: str, seed: int, prefix: str = PREFIX) -> str:
  """The rank-view mixture of a group (`GROUPS`, ``fewshot`` = all 12, or ``domain``) and seed."""
  if group not in GROUPS and group not in ('fewshot', 'domain'):
    raise DataError(f'Unknown SUPMER downstream group {group!r}; known: fewshot, domain, {", ".join(GROUPS)}.')
  if seed not in SEEDS:
    raise DataError(f'SUPMER downstream mixtures are registered for seeds {SEEDS}, not {seed!r}.')
  return f'{prefix}_{group}_{seed}{RANK_SUFFIX}'


def register_tasks(*, seeds: Sequence[int] = SEEDS, k: int = K_PER_LABEL, sampler: str = 'supmer',
                   vocab_name: str = 't5', prefix: str = PREFIX, source_domain: str = SOURCE_DOMAIN
                   ) -> List[str]:
  """Registers every dataset / domain task, its rank view, and the mixtures; returns the task names."""
  feats = config.output_features(vocab_name)
  preprocessors = [tokenize_and_truncate, seqio.preprocessors.append_eos_after_trim]
  names = []
  jobs = [(name, spec, None) for name, spec in DATASETS.items()]
  jobs += [(f'domain_{d}', DOMAIN_SPEC, d) for d in DOMAINS]
  for seed in seeds:
    for dataset, spec, domain in jobs:
      for rank in (False, True):
        name = f'{prefix}_{dataset}_{seed}' + (RANK_SUFFIX if rank else '')
        source = SupmerDataSource(spec, seed, seqio_name=name, rank=rank, k=k, sampler=sampler, domain=domain,
                                  source_domain=source_domain)
        scoring = (dict(postprocess_fn=p3.rank_classification_postprocessor,
                        metric_fns=[p3.rank_classification_accuracy]) if rank else dict(metric_fns=[]))
        seqio.TaskRegistry.add(name, source=source, output_features=feats, preprocessors=preprocessors,
                               **scoring)
        names.append(name)
    groups = dict(GROUPS, fewshot=tuple(DATASETS), domain=tuple(f'domain_{d}' for d in DOMAINS))
    for group, members in groups.items():
      seqio.MixtureRegistry.add(f'{prefix}_{group}_{seed}{RANK_SUFFIX}',
                                [f'{prefix}_{m}_{seed}{RANK_SUFFIX}' for m in members], default_rate=1.0)
  return names


# ---------------------------------------------------------------------------------------------------------
# gin helpers (promptjax/configs/runs/supmer_fewshot.gin, promptjax/configs/paper/pan2023_*.gin): gin macros cannot
# build strings, so these turn DATASET / SEED macros into names, lengths and shot counts.


def rank_task(dataset: str, seed: int = 100) -> str:
  """The rank-classification task of a dataset (``sst2``) or domain (``domain_books``) and seed."""
  return task_name(dataset, seed, rank=True)


def domain_task(domain: str) -> str:
  """``domain_<domain>``, the DATASET value of a sentiment domain (`DOMAINS`)."""
  if domain not in DOMAINS:
    raise DataError(f'Unknown SUPMER domain {domain!r}; known: {", ".join(DOMAINS)}.')
  return f'domain_{domain}'


def rank_mixture(group: str, seed: int = 100) -> str:
  return mixture_name(group, seed)


def feature_lengths(dataset: str) -> Dict[str, int]:
  """SUPMER's input length for the dataset (App. C.1), targets [<extra_id_0>, word, EOS]."""
  if dataset.startswith('domain_') or dataset == 'domain':
    return {'inputs': DOMAIN_SPEC.max_seq_length, 'targets': 3}
  task_name(dataset, SEEDS[0])
  return dict(FEATURE_LENGTHS[dataset])


def num_train_examples(dataset: str, seed: int = 100) -> int:
  """The size of the few-shot train split (16 per label, fewer for a label with < 32 rows): reads the data."""
  return seqio.get_mixture_or_task(task_name(dataset, seed)).source.num_input_examples('train')


_registered = False


def _register_defaults() -> None:
  global _registered
  if not _registered:
    register_tasks()
    _registered = True


_register_defaults()
