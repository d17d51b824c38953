"""Rank classification equals scoring every choice separately through the model (brute force)."""

import json

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

import promptjax.tasks  # noqa: F401  (registers the bundled mini benchmark)
from promptjax.evaluation import rank_classification as rc
from promptjax.models import PromptConfig, PromptableT5, get_config
from promptjax.tasks import config as task_config

CONFIG = get_config('tiny', vocab_size=1664, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32)
NLI = 'mini_nli_can_we_infer_score_eval_rank_classification'                   # 3 choices, 1-piece targets
COMPLETION = 'mini_completion_complete_first_then_score_eval_rank_classification'  # 2 choices, long targets


def _model(kind):
  model = PromptableT5(CONFIG, PromptConfig(kind=kind, length=3))
  return model, model.init_params(jax.random.PRNGKey(3))


def _brute_force(model, params, choices, length_normalize):
  """Every (instance, choice) on its own, a batch of one through `PromptableT5.score_batch` (the
  teacher-forced logits path), padded to one fixed shape (padding is masked) so it compiles once."""
  score = jax.jit(model.score_batch, static_argnames='length_normalize')
  out = np.full(choices.valid.shape, -np.inf)
  for e in range(choices.num_examples):
    inp = np.zeros((1, 64), np.int32)
    inp[0, :choices.inputs.shape[1]] = choices.inputs[e]
    for c in range(int(choices.valid[e].sum())):
      tgt = np.zeros((1, 16), np.int32)
      tgt[0, :choices.targets.shape[2]] = choices.targets[e, c]
      out[e, c] = float(score(params, {'encoder_input_tokens': inp, 'decoder_target_tokens': tgt},
                              length_normalize=length_normalize)[0])
  return out


@pytest.mark.parametrize('kind,task,length_normalize', [
    ('none', NLI, False), ('shallow', COMPLETION, True), ('deep', COMPLETION, False)])
def test_scores_equal_brute_force_on_the_bundled_data(kind, task, length_normalize):
  model, params = _model(kind)
  choices = rc.load_choices(task, 'validation', max_examples=5)
  # 5 instances in batches of 3: the last batch is padded with an empty instance.
  scorer = rc.ChoiceScorer(model, length_normalize=length_normalize, examples_per_batch=3)
  result = rc.rank_classify(scorer, params, choices)
  ref = _brute_force(model, params, choices, length_normalize)
  np.testing.assert_allclose(result.scores, ref, rtol=1e-5, atol=1e-5)
  pred = np.argmax(ref, -1)
  np.testing.assert_array_equal(result.predictions, pred)
  assert result.accuracy == pytest.approx(np.mean(choices.correct[np.arange(5), pred]))


def test_grouping_matches_the_raw_records():
  choices = rc.load_choices(NLI, 'validation', max_examples=5)
  task = seqio.get_mixture_or_task(NLI)
  rows = list(task.get_dataset(None, split='validation', shuffle=False).take(15).as_numpy_iterator())
  assert choices.targets.shape[:2] == (5, 3)
  for r in rows:
    e, c = int(r['idx'][0]), int(r['idx'][1])
    np.testing.assert_array_equal(choices.inputs[e, :len(r['inputs'])], r['inputs'])
    np.testing.assert_array_equal(choices.targets[e, c, :len(r['targets'])], r['targets'])
    assert choices.correct[e, c] == bool(r['is_correct'])
  assert choices.choice_texts[0] == ['yes', 'maybe', 'no']
  assert choices.random_baseline == pytest.approx(1 / 3)


@pytest.fixture
def uneven_task():
  """A seqio task with 3, 2, 1 (!) and 2 choices per instance and two correct choices in one."""
  vocab = task_config.get_vocabulary('mini')
  records = []
  spec = [('Is a fox an animal?', ['yes', 'no', 'maybe'], [0]),
          ('Anna is a baker. Who bakes?', ['Anna', 'Ben'], [0]),
          ('Pick the only one.', ['yes'], [0]),
          ('Any answer is right.', ['true', 'false'], [0, 1])]
  for i, (q, opts, gold) in enumerate(spec):
    for j, o in enumerate(opts):
      records.append({'inputs': q, 'targets': o, 'idx': [i, j], 'is_correct': j in gold})

  def fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({
        'inputs': [r['inputs'] for r in records], 'targets': [r['targets'] for r in records],
        'idx': np.asarray([r['idx'] for r in records], np.int32),
        'is_correct': [r['is_correct'] for r in records]})

  name = 'test_uneven_choices_rank_classification'
  seqio.TaskRegistry.remove(name)
  feats = {k: seqio.Feature(vocab, add_eos=True) for k in ('inputs', 'targets')}
  seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(fn, splits=['validation']),
                         preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
                         output_features=feats, metric_fns=[])
  yield name
  seqio.TaskRegistry.remove(name)


def test_uneven_choice_counts_and_several_correct_choices(uneven_task):
  choices = rc.load_choices(uneven_task, 'validation')
  np.testing.assert_array_equal(choices.num_choices, [3, 2, 1, 2])
  assert choices.random_baseline == pytest.approx(np.mean([1 / 3, 1 / 2, 1, 2 / 2]))
  model, params = _model('shallow')
  result = rc.rank_classify(rc.ChoiceScorer(model, examples_per_batch=2), params, choices)
  ref = _brute_force(model, params, choices, True)   # the default: mean log-likelihood per target token
  np.testing.assert_allclose(result.scores, ref, rtol=1e-5, atol=1e-5)
  assert np.all(np.isneginf(result.scores[~choices.valid]))
  # Hand-made scores: a padded choice would win if it were not masked; instance 3 has two gold choices.
  scores = np.array([[-3., -1., -2.], [-5., -4., 0.], [-9., 0., 0.], [-1., -2., 0.]])
  r = rc.classify(scores, choices)
  np.testing.assert_array_equal(r.predictions, [1, 1, 0, 0])
  np.testing.assert_array_equal(r.correct, [False, False, True, True])
  assert r.accuracy == 0.5


def test_prediction_files_round_trip(tmp_path):
  model, params = _model('none')
  results = {}
  for task in (NLI, COMPLETION):
    choices = rc.load_choices(task, 'validation', max_examples=4)
    results[task] = rc.rank_classify(rc.ChoiceScorer(model, examples_per_batch=4), params, choices)
  rc.write_results(results, str(tmp_path), {'setting': '0-shot'})
  lines = [json.loads(l) for l in open(tmp_path / 'predictions' / f'{NLI}.jsonl')]
  assert [l['idx'] for l in lines] == [0, 1, 2, 3]
  first = lines[0]
  assert first['choices'] == ['yes', 'maybe', 'no'] and len(first['scores']) == 3
  assert first['prediction'] == int(np.argmax(first['scores']))
  assert first['correct'] == (first['prediction'] in first['gold'])
  back = rc.read_results(str(tmp_path))
  assert back['metrics']['setting'] == '0-shot'
  assert back['metrics']['tasks'][NLI]['accuracy'] == pytest.approx(results[NLI].accuracy)
  np.testing.assert_array_equal(back['correct'][COMPLETION], results[COMPLETION].correct)


def test_readable_errors(tmp_path):
  with pytest.raises(rc.EvaluationError, match='not a rank-classification task'):
    rc.load_choices('mini_sentiment_good_or_bad', 'validation', max_examples=1)
  with pytest.raises(rc.EvaluationError, match='is a mixture'):
    rc.load_choices('mini_heldout_rank_classification', 'validation')
  with pytest.raises(task_config.DataError, match='Did you mean'):
    rc.load_choices('mini_nli_can_we_infer_score_eval_rank_classificatio', 'validation')
  with pytest.raises(rc.EvaluationError, match='no metrics.json'):
    rc.read_results(str(tmp_path))
  assert len(rc.task_names('mini_heldout_rank_classification')) == 10


def test_seqio_evaluator_accuracy_equals_promptjax_rank_classification():
  """T0-style evaluation (`seqio.Evaluator` with promptjax's `seqio_score_fn` and the view's score metric)
  gives `promptjax eval`'s accuracy on the same parameters and the whole validation split, both with
  the official Wu et al. code's length normalization by default, and both with the sum as the option."""
  from promptjax.evaluation import seqio_score_fn
  from promptjax.tasks import p3
  model, params = _model('shallow')
  evaluator = seqio.Evaluator(NLI, seqio.EncDecFeatureConverter(pack=False), eval_split='validation',
                              use_memory_cache=True, async_compute_metrics=False)
  metrics, outputs = evaluator.evaluate(compute_metrics=True, score_fn=seqio_score_fn(model, params))
  choices = rc.load_choices(NLI, 'validation')
  summed = rc.rank_classify(rc.ChoiceScorer(model, length_normalize=False), params, choices)
  assert choices.num_examples == 100
  # seqio's scores are the flat (instance, choice) summed scores of promptjax's [E, C] matrix, in record order.
  scores = outputs[NLI][seqio.metrics.ModelOutputType.SCORE]
  np.testing.assert_allclose(scores, summed.scores[choices.valid], rtol=1e-5, atol=1e-5)
  # Default: the metric divides by the target length (EOS included), as promptjax eval's default scorer.
  lengths = (choices.targets > 0).sum(-1)
  by_length = rc.classify(summed.scores / np.maximum(lengths, 1), choices)
  assert metrics.result()[NLI] == {'accuracy': pytest.approx(by_length.accuracy, abs=1e-9)}
  assert rc.get_scorer(model).length_normalize and p3.rank_classification_accuracy.__defaults__ == (True,)
  targets = [p3.rank_classification_postprocessor(None, ex, is_target=True)
             for ex in evaluator.cached_task_datasets[NLI].as_numpy_iterator()]
  as_sum = p3.rank_classification_accuracy(targets, scores, normalize_by_target_length=False)
  assert as_sum == {'accuracy': pytest.approx(summed.accuracy)}
  for mixture in ('mini_heldout_rank_classification', 'mini_train_rank_classification'):
    assert all(t.score_metric_fns for t in seqio.get_mixture_or_task(mixture).tasks)


def test_seqio_rank_metric_matches_classify(uneven_task):
  """The score metric on hand-made scores: uneven choice counts, two correct choices, ties (first wins)."""
  from promptjax.tasks import p3
  choices = rc.load_choices(uneven_task, 'validation')
  scores = np.array([[-3., -1., -2.], [-5., -4., 0.], [-9., 0., 0.], [-1., -1., 0.]])
  targets = [((e, c), bool(choices.correct[e, c]), 1.0, 2)
             for e in range(4) for c in range(int(choices.valid[e].sum()))]
  flat = [scores[e, c] for (e, c), _, _, _ in targets]
  order = np.random.default_rng(0).permutation(len(targets))     # record order does not matter
  got = p3.rank_classification_accuracy([targets[i] for i in order], [flat[i] for i in order])
  assert got == {'accuracy': rc.classify(scores, choices).accuracy} == {'accuracy': 0.5}


def _choice_set(task, inputs, targets, correct):
  """A ChoiceSet from python lists: inputs [E][L], targets [E][C][T], correct [E][C]."""
  E, C = len(targets), max(len(t) for t in targets)
  L, T = max(map(len, inputs)), max(len(c) for t in targets for c in t)
  x = np.zeros((E, L), np.int32)
  y = np.zeros((E, C, T), np.int32)
  valid, ok = np.zeros((E, C), bool), np.zeros((E, C), bool)
  for e in range(E):
    x[e, :len(inputs[e])] = inputs[e]
    for c, t in enumerate(targets[e]):
      y[e, c, :len(t)] = t
      valid[e, c], ok[e, c] = True, correct[e][c]
  return rc.ChoiceSet(task, x, y, valid, ok, np.arange(E), [''] * E, [[''] * len(t) for t in targets])


def test_in_context_demonstrations_fill_the_cloze_or_follow_the_input():
  """Few-shot in-context inference's inputs, written out by hand: each demonstration is its input (EOS and
  padding dropped) with its gold answer in the sentinel's place (a cloze target `<extra_id_0> word`) or
  after it (any other target); the demonstrations precede the instance's own input, which keeps its EOS;
  the first demonstrations are dropped where the context would pass the input length."""
  sentinel = 99
  demos = _choice_set('t', [[5, 6, sentinel, 7, 1], [8, 9, 1]],
                      [[[sentinel, 20, 1], [sentinel, 21, 1]], [[30, 31, 1], [32, 1]]],
                      [[False, True], [True, False]])
  assert rc.demonstration_tokens(demos.inputs[0], demos.gold_targets()[0], [sentinel]) == [5, 6, 21, 7]
  assert rc.demonstration_tokens(demos.inputs[1], demos.gold_targets()[1], [sentinel]) == [8, 9, 30, 31]
  # Without knowing the sentinel, the target follows the input.
  assert rc.demonstration_tokens(demos.inputs[0], demos.gold_targets()[0]) == [5, 6, sentinel, 7, sentinel, 21]
  evals = _choice_set('t', [[40, 41, 1], [42, 43, 44, 45, 46, 47, 1]], [[[1], [2]], [[1], [2]]],
                      [[True, False], [False, True]])
  out = rc.with_demonstrations(evals, demos, [sentinel], max_input_length=14)
  np.testing.assert_array_equal(out.inputs, [
      [5, 6, 21, 7, 8, 9, 30, 31, 40, 41, 1],      # both demonstrations fit: 11 tokens
      [8, 9, 30, 31, 42, 43, 44, 45, 46, 47, 1]])  # 4 + 4 + 7 > 14: the first one is dropped
  for field in ('targets', 'valid', 'correct', 'example_ids'):
    np.testing.assert_array_equal(getattr(out, field), getattr(evals, field))
  assert rc.with_demonstrations(evals, demos, [sentinel], max_input_length=5).inputs.tolist() == [
      [40, 41, 1, 0, 0, 0, 0], [42, 43, 44, 45, 46, 47, 1]]   # no room: the own input stays whole
