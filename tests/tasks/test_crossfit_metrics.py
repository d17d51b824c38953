"""CrossFit metrics: values from the maintained libraries called here, and values worked out by hand.

References: sklearn's f1_score / matthews_corrcoef, scipy's pearsonr and rouge_score's RougeScorer, called
directly in each test; the EM / QA-F1 / ACC literals are computed in the comments next to them; the metric
names are checked against ../shared/data/crossfit_tasks.json (taken from CrossFit's dataloader/metrics.py).
"""

from __future__ import annotations

import inspect
import json
import math
import warnings

import numpy as np
import pytest
from rouge_score import rouge_scorer
from scipy import stats
from sklearn import metrics as sk

from conftest import shared_path
from promptjax.tasks import crossfit_metrics as cm


# --- normalization, EM, ACC, QA-F1 (hand-computed) ---------------------------------------------------

@pytest.mark.parametrize('text, normalized', [
    ('The  Eiffel Tower!', 'eiffel tower'),
    ('An apple, a day.', 'apple day'),        # articles and punctuation dropped, spaces collapsed
    ('state-of-the-art', 'stateoftheart'),    # SQuAD deletes punctuation, it does not split on it
    ('theory', 'theory'),                     # 'the' only as a whole word
    ('  ', ''),
])
def test_normalize_answer(text, normalized):
  assert cm.normalize_answer(text) == normalized


def test_exact_match_by_hand():
  # 'the Eiffel tower' -> 'eiffel tower' == 'Eiffel Tower!' -> 'eiffel tower'.
  assert cm.exact_match('the Eiffel tower', ['Eiffel Tower!']) == 1.0
  assert cm.exact_match('Eiffel', ['Eiffel Tower']) == 0.0
  # Max over references: the second one matches.
  assert cm.exact_match('Paris.', ['London', 'paris']) == 1.0
  assert cm.exact_match('Paris', 'paris') == 1.0             # one string = one reference
  assert cm.exact_match('Paris', []) == 0.0                  # no reference scores 0, as in CrossFit
  # Corpus: [1, 0, 1] -> 2/3.
  value = cm.evaluate(['a cat', 'dog', 'The End'], [['cat'], ['cats'], ['end', 'start']], 'EM')
  assert value == pytest.approx(2 / 3, abs=1e-15)


def test_accuracy_by_hand():
  # CrossFit's ACC is prediction.lower() == reference.lower(): case ignored, nothing else normalized.
  assert cm.accuracy('Positive', ['positive']) == 1.0
  assert cm.accuracy('positive.', ['positive']) == 0.0
  assert cm.accuracy('positive ', ['positive']) == 0.0
  assert cm.accuracy('the answer', ['answer']) == 0.0        # no article removal (EM would give 1)
  assert cm.accuracy('B', ['a', 'b']) == 1.0                 # max over references
  # Corpus: [1, 0, 1, 1] -> 0.75.
  preds = ['yes', 'no', 'YES', 'Maybe']
  refs = [['yes'], ['yes'], ['yes'], ['no', 'maybe']]
  assert cm.evaluate(preds, refs, 'ACC') == 0.75


def test_qa_f1_by_hand():
  # 'a red fox' -> [red, fox]; 'red fox jumps' -> [red, fox, jumps]; common 2:
  # P = 2/2, R = 2/3, F1 = 2 * (1 * 2/3) / (1 + 2/3) = 0.8.
  assert cm.qa_f1('a red fox', ['red fox jumps']) == pytest.approx(0.8, abs=1e-15)
  # Max over references: [blue] -> 0, [red, fox, jumps] -> 0.8, [red, fox] -> 1.
  assert cm.qa_f1('a red fox', ['blue', 'red fox jumps', 'The red fox.']) == 1.0
  # Repeated tokens count once per match: [fox, fox] vs [fox]: common 1, P = 1/2, R = 1, F1 = 2/3.
  assert cm.qa_f1('the fox fox', ['fox']) == pytest.approx(2 / 3, abs=1e-15)
  assert cm.qa_f1('dog', ['cat']) == 0.0
  assert cm.qa_f1('', ['cat']) == 0.0
  assert cm.qa_f1('cat', []) == 0.0
  # Corpus: mean(0.8, 0, 1) = 0.6.
  value = cm.evaluate(['a red fox', 'dog', 'cat'], [['red fox jumps'], ['cat'], ['the cat']], 'QA-F1')
  assert value == pytest.approx(0.6, abs=1e-15)


# --- Rouge-L (rouge_score) ---------------------------------------------------------------------------

def test_rouge_l_equals_rouge_score():
  scorer = rouge_scorer.RougeScorer(['rougeL'])
  preds = ['the cat sat on the mat', 'a quick brown dog', 'Hello, World!']
  refs = [['the cat lay on the mat'], ['the quick brown fox', 'a slow brown dog jumps'], ['hello world']]
  expected = [max(scorer.score(r, p)['rougeL'].fmeasure for r in rs) for p, rs in zip(preds, refs)]
  for p, rs, e in zip(preds, refs, expected):
    assert cm.rouge_l(p, rs) == pytest.approx(e, abs=1e-15)
  assert cm.evaluate(preds, refs, 'Rouge-L') == pytest.approx(np.mean(expected), abs=1e-15)
  # By hand: LCS(the cat sat on the mat, the cat lay on the mat) = 5 of 6 tokens each way -> F = 5/6.
  assert cm.rouge_l('the cat sat on the mat', ['the cat lay on the mat']) == pytest.approx(5 / 6)
  assert cm.rouge_l('', ['the cat']) == 0.0
  assert cm.rouge_l('the cat', []) == 0.0


# --- corpus-level metrics (sklearn, scipy) -----------------------------------------------------------

def test_classification_f1_equals_sklearn_macro():
  golds = ['pos', 'pos', 'neg', 'neu', 'neg', 'pos']
  preds = ['pos', 'neg', 'neg', 'neu', 'pos', 'banana']   # 'banana' is no label: a class with F1 0
  refs = [[g, 'alias'] for g in golds]                    # only the first reference counts
  expected = sk.f1_score(golds, preds, average='macro')
  assert cm.evaluate(preds, refs, 'Classification-F1') == pytest.approx(expected, abs=1e-15)
  # By hand: golds [a, a, b, b], preds [a, b, b, b]: F1(a) = 2*1*(1/2)/(3/2) = 2/3,
  # F1(b) = 2*(2/3)*1/(5/3) = 0.8, macro = (2/3 + 0.8) / 2 = 11/15.
  value = cm.evaluate(['a', 'b', 'b', 'b'], [['a'], ['a'], ['b'], ['b']], 'Classification-F1')
  assert value == pytest.approx(11 / 15, abs=1e-15)


def test_matthews_correlation_equals_sklearn():
  golds = ['acceptable', 'unacceptable', 'acceptable', 'acceptable', 'unacceptable', 'unacceptable']
  preds = ['acceptable', 'unacceptable', 'unacceptable', 'acceptable', 'acceptable', 'unacceptable']
  refs = [[g] for g in golds]
  # Valid labels only: CrossFit's binarization changes nothing.
  assert cm.evaluate(preds, refs, 'Matthew-Correlation') == pytest.approx(
      sk.matthews_corrcoef(golds, preds), abs=1e-15)
  # An invalid generation counts as 'unacceptable' (CrossFit: prediction.strip() == 'acceptable').
  preds_bad = ['acceptable ', 'garbage', 'unacceptable', 'acceptable', 'acceptable', '']
  binary_golds = [1, 0, 1, 1, 0, 0]
  binary_preds = [1, 0, 0, 1, 1, 0]
  assert cm.evaluate(preds_bad, refs, 'Matthew-Correlation') == pytest.approx(
      sk.matthews_corrcoef(binary_golds, binary_preds), abs=1e-15)
  # positive_label=None: the plain (multiclass) coefficient of the strings.
  assert cm.matthews_correlation(preds_bad, refs, positive_label=None) == pytest.approx(
      sk.matthews_corrcoef(golds, preds_bad), abs=1e-15)


def test_pearson_equals_scipy():
  golds = ['1', '2', '3', '4', '5']
  preds = ['1.5', '2', '2.5', '5', '4']
  expected = stats.pearsonr([1, 2, 3, 4, 5], [1.5, 2, 2.5, 5, 4])[0]
  assert cm.evaluate(preds, [[g] for g in golds], 'Pearson-Correlation') == pytest.approx(expected, abs=1e-15)


def test_pearson_non_numeric_predictions_count_as_zero():
  golds = [[g] for g in ['1', '2', '3', '4', '5']]
  preds = ['1', 'two', ' 3 ', 'nan', '4.5']                # 'two' and 'nan' are not finite numbers
  expected = stats.pearsonr([1, 2, 3, 4, 5], [1.0, 0.0, 3.0, 0.0, 4.5])[0]
  assert cm.evaluate(preds, golds, 'Pearson-Correlation') == pytest.approx(expected, abs=1e-15)
  # CrossFit's own cast (NaN) makes the whole score NaN.
  assert math.isnan(cm.pearson_correlation(preds, golds, non_numeric=float('nan')))


def test_pearson_needs_numeric_references():
  with pytest.raises(ValueError, match='numeric references'):
    cm.evaluate(['1', '2'], [['1'], ['high']], 'Pearson-Correlation')


# --- dispatch, errors, seqio wrapper -----------------------------------------------------------------

def test_unknown_metric():
  with pytest.raises(ValueError, match='Classification-F1'):   # the message lists the known metrics
    cm.evaluate(['a'], [['a']], 'BLEU')
  with pytest.raises(ValueError, match='BLEU'):
    cm.metric_fn('BLEU')


def test_length_mismatch_and_empty():
  with pytest.raises(ValueError, match='2 predictions but 1 references'):
    cm.evaluate(['a', 'b'], [['a']], 'ACC')
  with pytest.raises(ValueError, match='no predictions'):
    cm.evaluate([], [], 'EM')
  with pytest.raises(ValueError, match='no reference'):
    cm.evaluate(['a'], [[]], 'Classification-F1')


def test_metric_names_cover_crossfit_tasks():
  with open(shared_path('crossfit_tasks.json')) as f:
    used = {t['metric'] for t in json.load(f)['tasks'].values()}
  assert used == set(cm.METRICS)
  assert len(cm.METRICS) == len(set(cm.METRICS)) == 7


def test_metric_fn_is_a_seqio_predict_metric():
  fn = cm.metric_fn('QA-F1')
  # seqio sorts metric_fns by their positional parameter names; ('targets', 'predictions') = predict.
  positional = tuple(k for k, p in inspect.signature(fn).parameters.items()
                     if p.default is inspect.Parameter.empty and p.kind == p.POSITIONAL_OR_KEYWORD)
  assert positional == ('targets', 'predictions')
  # Targets first; strings, lists of references, and bytes / NumPy byte arrays as tf.data yields them.
  targets = ['red fox jumps', ['blue', 'red fox'], np.array([b'cat', b'dog'])]
  predictions = ['a red fox', 'the red fox', b'dog']
  assert fn(targets, predictions) == {'QA-F1': pytest.approx((0.8 + 1.0 + 1.0) / 3, abs=1e-15)}


@pytest.mark.parametrize('metric', cm.METRICS)
def test_every_metric_returns_a_float(metric):
  if metric == 'Pearson-Correlation':
    preds, refs = ['1', '2', '4'], [['1'], ['2'], ['3']]
  else:
    preds, refs = ['acceptable', 'unacceptable', 'acceptable'], [['acceptable'], ['acceptable'], ['x']]
  with warnings.catch_warnings():
    warnings.simplefilter('error')                           # no library warnings on ordinary input
    value = cm.metric_fn(metric)(refs, preds)[metric]
  assert type(value) is float
  assert -1.0 <= value <= 1.0
