"""CrossFit's per-task metrics (Ye et al. 2021, "CrossFit: A Few-shot Learning Challenge for Cross-task
Generalization in NLP"; definitions from INK-USC/CrossFit ``dataloader/metrics.py``).

Each CrossFit task is scored by one metric, named as CrossFit names it (`METRICS`;
`promptjax.tasks.crossfit.get_task_info(name).metric`). An example has one prediction (a string) and
one or more references (strings); the per-example metrics take the best reference:

* ``ACC`` (`accuracy`): 1 if ``prediction.lower() == reference.lower()`` for some reference — CrossFit's
  case-insensitive string equality, nothing else normalized (no stripping, punctuation kept);
* ``EM`` (`exact_match`): equality after SQuAD's `normalize_answer` (Rajpurkar et al. 2016, the SQuAD v1.1
  evaluation script: lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace);
* ``QA-F1`` (`qa_f1`): SQuAD's token F1 between the normalized prediction and reference (bag of tokens);
* ``Rouge-L`` (`rouge_l`): the ROUGE-L F-measure (Lin 2004). CrossFit calls the ``rouge`` package; promptjax
  uses Google's ``rouge_score`` (``RougeScorer(['rougeL'])``, no stemming, as CrossFit's has none), which
  lowercases and tokenizes on non-alphanumerics, so values can differ slightly from CrossFit's on text
  with punctuation or capitals. An empty prediction scores 0, as in CrossFit.

An example with no references scores 0 (CrossFit's ``get_*_over_list``). The corpus-level metrics
compare each prediction with the example's *first* reference, as CrossFit does (``dp[1][0]``):

* ``Classification-F1`` (`classification_f1`): ``sklearn.metrics.f1_score(golds, predictions,
  average='macro')`` — the classes are those seen in the golds *or* the predictions, so a generated string
  that is no label adds a class with F1 0 and lowers the average (CrossFit passes no ``labels=``);
* ``Matthew-Correlation`` (`matthews_correlation`): ``sklearn.metrics.matthews_corrcoef``. CrossFit uses it
  for glue-cola only and binarizes first: a prediction is positive iff ``prediction.strip() ==
  'acceptable'``, a gold iff it equals ``'acceptable'`` — so an invalid generation counts as
  "unacceptable". That is the default here (``positive_label='acceptable'``); it equals the plain
  ``matthews_corrcoef`` of the strings whenever every prediction is one of the two labels.
  ``positive_label=None`` gives the plain (multiclass) coefficient of the strings;
* ``Pearson-Correlation`` (`pearson_correlation`): ``scipy.stats.pearsonr`` of the golds and the predictions
  cast to float. **Deviation:** CrossFit casts a prediction that does not parse (``float(p.strip())``
  raising) to NaN, which makes the whole score NaN; promptjax counts it as 0.0 (``non_numeric=0.0``), so a
  model that sometimes generates text still gets a number. ``non_numeric=float('nan')`` reproduces CrossFit.
  Non-finite parses ('nan', 'inf') count as non-numeric too. Constant predictions give NaN (scipy warns).

Values are fractions on CrossFit's scale (0.5, not 50 %); correlations lie in [-1, 1]. `evaluate` dispatches
on the metric name; `metric_fn` wraps one metric as a seqio ``metric_fns`` entry ``fn(targets,
predictions) -> {name: value}`` whose targets may be strings or lists of strings (e.g. the ``answers``
feature of `promptjax.tasks.crossfit`); bytes are decoded as UTF-8.
"""

from __future__ import annotations

import collections
import math
import re
import string
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
from rouge_score import rouge_scorer
from scipy import stats
from sklearn import metrics as sk_metrics

METRICS = ('ACC', 'Classification-F1', 'EM', 'QA-F1', 'Rouge-L', 'Pearson-Correlation',
           'Matthew-Correlation')

Text = Union[str, bytes]
References = Union[Text, Sequence[Text]]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r'\b(a|an|the)\b')
_rouge = None


def _text(x) -> str:
  if isinstance(x, (bytes, np.bytes_)):
    return bytes(x).decode('utf-8')
  if isinstance(x, str):
    return str(x)
  raise TypeError(f'expected a string, got {type(x).__name__}: {x!r}')


def _refs(references: References) -> List[str]:
  """One example's references as a list of str (a single string is one reference)."""
  if isinstance(references, (str, bytes, np.str_, np.bytes_)):
    return [_text(references)]
  return [_text(r) for r in references]


def normalize_answer(s: str) -> str:
  """SQuAD v1.1's answer normalization: lowercase, drop punctuation and a/an/the, collapse whitespace."""
  s = _text(s).lower()
  s = ''.join(ch for ch in s if ch not in _PUNCTUATION)
  s = _ARTICLES.sub(' ', s)
  return ' '.join(s.split())


def _best(score: Callable[[str, str], float], prediction: Text, references: References) -> float:
  refs = _refs(references)
  if not refs:
    return 0.0
  prediction = _text(prediction)
  return float(max(score(prediction, r) for r in refs))


def _accuracy(prediction: str, reference: str) -> float:
  return float(prediction.lower() == reference.lower())


def _exact_match(prediction: str, reference: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(reference))


def _token_f1(prediction: str, reference: str) -> float:
  pred = normalize_answer(prediction).split()
  ref = normalize_answer(reference).split()
  same = sum((collections.Counter(pred) & collections.Counter(ref)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred), same / len(ref)
  return 2 * precision * recall / (precision + recall)


def _rouge_l(prediction: str, reference: str) -> float:
  global _rouge
  if _rouge is None:
    _rouge = rouge_scorer.RougeScorer(['rougeL'], use_stemmer=False)
  return _rouge.score(reference, prediction)['rougeL'].fmeasure  # score(target, prediction)


def accuracy(prediction: Text, references: References) -> float:
  """CrossFit ACC of one example: 1.0 if it equals some reference ignoring case, else 0.0."""
  return _best(_accuracy, prediction, references)


def exact_match(prediction: Text, references: References) -> float:
  """CrossFit EM of one example: 1.0 if it equals some reference after `normalize_answer`."""
  return _best(_exact_match, prediction, references)


def qa_f1(prediction: Text, references: References) -> float:
  """CrossFit QA-F1 of one example: the best SQuAD token F1 over the references."""
  return _best(_token_f1, prediction, references)


def rouge_l(prediction: Text, references: References) -> float:
  """CrossFit Rouge-L of one example: the best ROUGE-L F-measure (``rouge_score``) over the references."""
  return _best(_rouge_l, prediction, references)


def _golds(references: Sequence[References]) -> List[str]:
  golds = []
  for i, refs in enumerate(references):
    refs = _refs(refs)
    if not refs:
      raise ValueError(f'example {i} has no reference; corpus-level metrics use the first one')
    golds.append(refs[0])
  return golds


def classification_f1(predictions: Sequence[Text], references: Sequence[References]) -> float:
  """Macro F1 of the predictions against the first references (classes: golds ∪ predictions)."""
  return float(sk_metrics.f1_score(_golds(references), [_text(p) for p in predictions], average='macro'))


def matthews_correlation(predictions: Sequence[Text], references: Sequence[References],
                         positive_label: Optional[str] = 'acceptable') -> float:
  """Matthews correlation against the first references, binarized on `positive_label` as CrossFit does.

  With ``positive_label=None`` the strings are compared as they are (multiclass MCC).
  """
  golds, preds = _golds(references), [_text(p) for p in predictions]
  if positive_label is not None:
    preds = [float(p.strip() == positive_label) for p in preds]
    golds = [float(g == positive_label) for g in golds]
  return float(sk_metrics.matthews_corrcoef(golds, preds))


def _to_float(prediction: str, non_numeric: float) -> float:
  try:
    value = float(prediction.strip())
  except ValueError:
    return non_numeric
  return value if math.isfinite(value) else non_numeric


def pearson_correlation(predictions: Sequence[Text], references: Sequence[References],
                        non_numeric: float = 0.0) -> float:
  """Pearson's r of the first references and the predictions as floats (unparseable -> `non_numeric`)."""
  golds = []
  for i, g in enumerate(_golds(references)):
    try:
      golds.append(float(g))
    except ValueError:
      raise ValueError(f'Pearson-Correlation needs numeric references; example {i} has {g!r}') from None
  preds = [_to_float(_text(p), non_numeric) for p in predictions]
  return float(stats.pearsonr(golds, preds)[0])


_PER_EXAMPLE = {'ACC': accuracy, 'EM': exact_match, 'QA-F1': qa_f1, 'Rouge-L': rouge_l}
_CORPUS = {'Classification-F1': classification_f1, 'Matthew-Correlation': matthews_correlation,
           'Pearson-Correlation': pearson_correlation}
assert set(_PER_EXAMPLE) | set(_CORPUS) == set(METRICS)


def _check_metric(metric: str) -> None:
  if metric not in METRICS:
    raise ValueError(f'unknown CrossFit metric {metric!r}; the known ones are {", ".join(METRICS)}')


def evaluate(predictions: Sequence[Text], references: Sequence[References], metric: str) -> float:
  """A CrossFit metric of a corpus: ``references[i]`` are example i's references (a list, or one string).

  Per-example metrics (ACC, EM, QA-F1, Rouge-L) are averaged over the examples; the others are computed
  on the whole corpus. Raises ValueError for an unknown metric, a length mismatch or an empty corpus.
  """
  _check_metric(metric)
  if isinstance(predictions, (str, bytes)):
    raise TypeError('predictions must be a sequence of strings, not one string')
  predictions, references = list(predictions), list(references)
  if len(predictions) != len(references):
    raise ValueError(f'{metric}: {len(predictions)} predictions but {len(references)} references')
  if not predictions:
    raise ValueError(f'{metric}: no predictions to score')
  if metric in _PER_EXAMPLE:
    fn = _PER_EXAMPLE[metric]
    return float(np.mean([fn(p, r) for p, r in zip(predictions, references)]))
  return _CORPUS[metric](predictions, references)


def metric_fn(metric: str) -> Callable[..., Dict[str, float]]:
  """A seqio metric function for `metric`: ``fn(targets, predictions) -> {metric: value}``.

  ``targets[i]`` is a string or a list of strings (all references of example i).
  """
  _check_metric(metric)

  def fn(targets, predictions):
    return {metric: evaluate(predictions, targets, metric)}

  slug = re.sub(r'[^0-9a-z]+', '_', metric.lower())
  fn.__name__ = fn.__qualname__ = f'crossfit_{slug}'
  fn.__doc__ = f'CrossFit {metric} (promptjax.tasks.crossfit_metrics.evaluate).'
  return fn
