"""Generative evaluation through seqio's Evaluator: the CrossFit Tasks' metric_fns and reference
postprocessor, `generation.evaluate_with_seqio`, and `promptjax eval` on a generative task."""

import json
import os

import jax
import numpy as np
import pytest
import seqio

import promptjax.tasks  # noqa: F401  (registers the bundled tasks)
from promptjax.evaluation import generation
from promptjax.tasks import crossfit_metrics
from promptjax.evaluation.rank_classification import EvaluationError
from promptjax.models import PromptableT5, PromptConfig, get_config
from promptjax.tasks import config as task_config
from tests.helpers import cli as _cli

QA = 'crossfit_mini_closed_book_qa_13'     # EM; some dev lines carry two references
TOPIC = 'crossfit_mini_topic_13'           # Classification-F1
DATA = os.path.join(os.path.dirname(promptjax.tasks.__file__), 'data', 'crossfit')
LENGTHS = {'inputs': 32, 'targets': 8}


def _rows(task, split):
  """(input, [references]) of a bundled CrossFit file, read with plain Python (CrossFit's reader)."""
  name = task.split('crossfit_')[1].rsplit('_', 1)[0]
  k = 32 if name in ('mini_closed_book_qa', 'mini_squad') else 16
  with open(os.path.join(DATA, name, f'{name}_{k}_13_{split}.tsv')) as f:
    return [(d[0], d[1:]) for d in (line.strip().split('\t') for line in f if line.strip())]


def _oracle(task, answer_of):
  """A seqio predict_fn that "generates" answer_of(i, references) for example i, as token ids."""
  vocab = seqio.get_mixture_or_task(task).output_features['targets'].vocabulary
  rows = _rows(task, 'dev')

  def predict_fn(dataset, model_feature_shapes=None):
    out = []
    for i, _ in dataset.as_numpy_iterator():
      ids = vocab.encode(answer_of(int(i), rows[int(i)][1])) + [1]
      out.append((int(i), np.pad(ids, (0, 16 - len(ids)))))   # fixed length, EOS then padding
    return out
  return predict_fn


def _score(task, predict_fn):
  ev = seqio.Evaluator(task, seqio.EncDecFeatureConverter(pack=False), eval_split='dev',
                       async_compute_metrics=False)
  metrics, _ = ev.evaluate(compute_metrics=True, predict_fn=predict_fn)
  return metrics.result()[task]


def test_crossfit_metric_fns_score_all_references():
  rows = _rows(QA, 'dev')
  multi = [i for i, (_, refs) in enumerate(rows) if len(refs) > 1]
  assert multi, 'the bundled QA dev file should have an example with two references'
  # Every example answered with its LAST reference: right under max-over-references.
  assert _score(QA, _oracle(QA, lambda i, refs: refs[-1])) == {'EM': pytest.approx(1.0)}
  # The first 10 answered, the rest wrong: EM = 10 / n (SQuAD normalization ignores 'a').
  n = len(rows)
  em = _score(QA, _oracle(QA, lambda i, refs: refs[0] if i < 10 else 'zzzz'))['EM']
  assert em == pytest.approx(10 / n)


def test_crossfit_classification_f1_through_seqio():
  from sklearn.metrics import f1_score
  rows = _rows(TOPIC, 'dev')
  golds = [refs[0] for _, refs in rows]
  labels = sorted(set(golds))
  # Predict the gold label for even examples, a fixed label for odd ones.
  preds = [g if i % 2 == 0 else labels[0] for i, g in enumerate(golds)]
  got = _score(TOPIC, _oracle(TOPIC, lambda i, refs: preds[i]))
  assert got == {'Classification-F1': pytest.approx(f1_score(golds, preds, average='macro'))}


@pytest.fixture(scope='module')
def mini_model():
  model = PromptableT5(get_config('tiny', vocab_size=task_config.get_vocabulary('mini').vocab_size),
                       PromptConfig(kind='none'))
  return model, model.init_params(jax.random.PRNGKey(3))


def test_evaluate_with_seqio_matches_greedy_predictions(mini_model, tmp_path):
  model, params = mini_model
  got = generation.evaluate_with_seqio(model, params, QA, split='dev', output_dir=str(tmp_path),
                                       task_feature_lengths=LENGTHS, max_decode_length=6, batch_size=16)
  texts = generation.load_texts(QA, 'dev', LENGTHS)
  preds = generation.predict_texts(model, params, texts, max_length=6, batch_size=16)
  assert texts.references == [refs for _, refs in _rows(QA, 'dev')]
  assert got == {'EM': pytest.approx(crossfit_metrics.evaluate(preds, texts.references, 'EM'))}
  # seqio's JSONLogger wrote the metric and one prediction per example, in order.
  with open(tmp_path / f'{QA}-metrics.jsonl') as f:
    assert json.loads(f.readline())['EM'] == pytest.approx(got['EM'])
  pred_file = f'{QA}-000000.jsonl'
  with open(tmp_path / pred_file) as f:
    logged = [json.loads(line)['prediction'] for line in f]
  assert logged == preds


def test_evaluate_with_seqio_errors(mini_model):
  model, params = mini_model
  with pytest.raises(EvaluationError, match="no split 'validation'"):
    generation.evaluate_with_seqio(model, params, QA, split='validation')
  with pytest.raises(EvaluationError, match='no metric_fns'):
    generation.evaluate_with_seqio(model, params, 'mini_text_prefix_lm', split='train')


def test_cli_eval_generative_task(tmp_path, capsys):
  out = tmp_path / 'eval'
  args = ['eval', '--gin_file=runs/eval.gin', '--gin_file=models/t5_1_1_tiny.gin',
          f'--gin.promptjax.models.get_config.vocab_size={task_config.get_vocabulary("mini").vocab_size}',
          "--gin.CHECKPOINT_PATH=None", f"--gin.EVAL_OUTPUT_DIR='{out}'", f"--gin.MIXTURE_OR_TASK_NAME='{QA}'",
          "--gin.EVAL_SPLIT='dev'", f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}',
          '--gin.MAX_DECODE_LENGTH=4']
  assert _cli(args) == 0
  printed = capsys.readouterr().out
  assert f'{QA}: EM' in printed
  m = json.load(open(out / 'metrics.json'))
  assert set(m['generative']) == {QA} and 0.0 <= m['generative'][QA]['EM'] <= 1.0
  assert os.path.exists(out / f'{QA}-metrics.jsonl')
  # A split the task lacks fails before any work, with one readable line.
  assert _cli(args[:-3] + ["--gin.EVAL_SPLIT='validation'", f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "no split 'validation'" in err[0] and 'EVAL_SPLIT' in err[0]


def test_several_processes_compute_alike_and_only_process_0_writes(mini_model, tmp_path, monkeypatch):
  """`jax.process_count() > 1` (unit level; a real 2-process run takes ~30 s here): every process reads the
  whole split and gets the same metrics; process 0 writes (creating the output directory), others nothing."""
  from promptjax.evaluation import fewshot, run
  model, params = mini_model
  kwargs = dict(split='dev', task_feature_lengths=LENGTHS, max_decode_length=6, batch_size=16)
  first = generation.evaluate_with_seqio(model, params, QA, output_dir=str(tmp_path / 'p0' / 'new'), **kwargs)
  assert os.path.exists(tmp_path / 'p0' / 'new' / f'{QA}-metrics.jsonl')
  rank_task = 'mini_nli_can_we_infer_score_eval_rank_classification'
  ranked = fewshot.evaluate_zero_shot(model, params, [rank_task], max_examples=4, progress=False)
  monkeypatch.setattr(jax, 'process_index', lambda *a, **k: 1)
  monkeypatch.setattr(jax, 'process_count', lambda *a, **k: 2)
  other = str(tmp_path / 'p1')
  assert generation.evaluate_with_seqio(model, params, QA, output_dir=other, **kwargs) == first
  again = fewshot.evaluate_zero_shot(model, params, [rank_task], max_examples=4, output_dir=other,
                                     progress=False)
  np.testing.assert_array_equal(again[rank_task].scores, ranked[rank_task].scores)
  run._merge_metrics(other, {'checkpoint': {'path': None, 'step': None}})   # pylint: disable=protected-access
  assert not os.path.exists(other)
