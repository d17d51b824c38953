"""`python -m t5x.train`, `t5x.eval` and `t5x.infer` with promptjax's shipped gin files on the bundled mini
data (run in this process as T5X's `main`s run them), and `promptjax eval` on T5X's checkpoint: the same
rank-classification accuracy for every held-out template, and the same scores for every answer choice.

One path, deep prompt T✓P✓ (`mtl_prompt_deep.gin`, Wu et al. 2022 §3): the deep prompt's keys/values go
through T5X's checkpoint, T5X's scoring and T5X's decoding over promptjax's cache. The other method files
differ only in their prompt and trainable group, which `test_t5x_gin.py` checks file by file and
`test_t5x_trainer.py` trains with T5X's `Trainer` for every prompt kind."""

import glob
import json
import os

import jax
import numpy as np
import pytest

t5x = pytest.importorskip('t5x')

import seqio  # noqa: E402

from promptjax import tasks  # noqa: E402
from promptjax.evaluation import generation  # noqa: E402
from tests.helpers import run_cli  # noqa: E402
from tests.interop.t5x_helpers import run_script  # noqa: E402

MODEL = ['models/t5_1_1_mini.gin', 'mtl_prompt_deep.gin']
# Three held-out templates of the mini benchmark (three families; 1,000 scored answer choices)
TEMPLATES = ['mini_nli_can_we_infer_score_eval_rank_classification',
             'mini_coref_fill_in_the_blank_score_eval_rank_classification',
             'mini_word_sense_which_sense_score_eval_rank_classification']
TASK = 'test_t5x_end_to_end_rank_classification'
INFER_TASK = 'mini_sentiment_good_or_bad'   # 64 validation examples
LENGTHS = "{'inputs': 64, 'targets': 16}"   # the longest held-out input has 62 tokens: nothing is trimmed
# T5X's CPU mesh puts every local device on 'model' (`t5x.partitioning.get_cpu_mesh`: data 1 x model 8); the
# mini model's 4 heads do not split 8 ways, so every parameter is replicated over the test's 8 CPU devices.
_AXES = ('vocab', 'embed', 'mlp', 'heads', 'kv', 'joined_kv', 'relpos_buckets', 'prompt', 'length', 'layers')
REPLICATED = ('partitioning.PjitPartitioner.logical_axis_rules = '
              + repr([('batch', 'data')] + [(a, None) for a in _AXES]))


def _t5x_records(eval_dir):
  """{template: [(instance, choice, is_correct, score per target token)]} from T5X's JSON logger."""
  out = {}
  for path in glob.glob(os.path.join(eval_dir, 'inference_eval', '*-000002.jsonl')):
    task = os.path.basename(path)[:-len('-000002.jsonl')]
    rows = [json.loads(line) for line in open(path)]
    # the logged target is (idx, is_correct, weight, number of target tokens); the score is T5X's sum
    out[task] = sorted((r['target'][0][0], r['target'][0][1], r['target'][1], r['score'] / r['target'][3])
                       for r in rows)
  return out


@pytest.fixture(scope='module', autouse=True)
def _mixture():
  seqio.MixtureRegistry.add(TASK, TEMPLATES, default_rate=1.0)
  yield
  seqio.MixtureRegistry.remove(TASK)


def test_t5x_train_eval_infer_and_promptjax_eval_agree(tmp_path):
  prng = jax.config.jax_default_prng_impl
  model_dir = str(tmp_path / 'run')
  run_script('train', [*MODEL, 'runs/pretrain.gin'],
             [f"MODEL_DIR = '{model_dir}'", "MIXTURE_OR_TASK_NAME = 'mini_train'", 'TRAIN_STEPS = 2',
              'BATCH_SIZE = 8', f'TASK_FEATURE_LENGTHS = {LENGTHS}', 't5x.train.train.train_eval_dataset_cfg = None',
              't5x.train.train.infer_eval_dataset_cfg = None', 'LEARNING_RATE = 1e-2', 'RANDOM_SEED = 0',
              REPLICATED])
  assert {'checkpoint_0', 'checkpoint_2'} <= set(os.listdir(model_dir))
  checkpoint = os.path.join(model_dir, 'checkpoint_2')

  # t5x.eval: every choice scored by T5XModel.score_batch, accuracy by the tasks' seqio score metric.
  t5x_dir = str(tmp_path / 't5x_eval')
  run_script('eval', [*MODEL, 'runs/eval.gin'],
             [f"CHECKPOINT_PATH = '{checkpoint}'", f"EVAL_OUTPUT_DIR = '{t5x_dir}'",
              f"MIXTURE_OR_TASK_NAME = '{TASK}'", f'TASK_FEATURE_LENGTHS = {LENGTHS}', REPLICATED])
  t5x_acc = {}
  for path in glob.glob(os.path.join(t5x_dir, 'inference_eval', '*-metrics.jsonl')):
    (row,) = [json.loads(line) for line in open(path)]
    assert row['step'] == 2
    t5x_acc[os.path.basename(path)[:-len('-metrics.jsonl')]] = row['accuracy']
  t5x_scores = _t5x_records(t5x_dir)
  assert set(t5x_acc) == set(t5x_scores) == set(TEMPLATES)

  # promptjax eval on the same T5X checkpoint.
  pj_dir = tmp_path / 'pj_eval'
  result = run_cli(['eval', '--gin_file=runs/eval.gin', '--gin_file=models/t5_1_1_mini.gin',
                    '--gin_file=mtl_prompt_deep.gin', f"--gin.CHECKPOINT_PATH='{checkpoint}'",
                    f"--gin.EVAL_OUTPUT_DIR='{pj_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
                    f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}'])
  assert result.returncode == 0, result.stderr[-2000:]
  metrics = json.load(open(pj_dir / 'metrics.json'))
  assert metrics['checkpoint']['step'] == 2
  pj_acc = {t: v['accuracy'] for t, v in metrics['tasks'].items()}
  assert pj_acc == pytest.approx(t5x_acc, abs=1e-9)
  assert len(set(pj_acc.values())) > 1   # not every template at one value: the scores discriminate

  # ... and the same score for every answer choice (mean log-likelihood per target token).
  for task, rows in t5x_scores.items():
    pj_rows = []
    for line in open(pj_dir / 'predictions' / f'{task}.jsonl'):
      r = json.loads(line)
      pj_rows += [(r['idx'], j, j in r['gold'], s) for j, s in enumerate(r['scores'])]
    pj_rows.sort()
    assert [r[:3] for r in pj_rows] == [r[:3] for r in rows], task
    np.testing.assert_allclose([r[3] for r in pj_rows], [r[3] for r in rows], rtol=0, atol=2e-5,
                               err_msg=task)

  # t5x.infer: greedy decoding (T5X's temperature_sample at top-k 1) over promptjax's key/value cache.
  infer_dir = str(tmp_path / 'infer')
  # The randomly initialized checkpoint_0: its greedy outputs differ from input to input and run all 16
  # steps (the trained one answers 'good' to everything).
  first = os.path.join(model_dir, 'checkpoint_0')
  run_script('infer', [*MODEL, 'runs/infer.gin'],
             [f"CHECKPOINT_PATH = '{first}'", f"INFER_OUTPUT_DIR = '{infer_dir}'",
              f"MIXTURE_OR_TASK_NAME = '{INFER_TASK}'", f'TASK_FEATURE_LENGTHS = {LENGTHS}',
              'BATCH_SIZE = 64', REPLICATED])
  (path,) = glob.glob(os.path.join(infer_dir, '*-predict.jsonl-00000-of-00001'))
  predictions = [json.loads(line)['prediction'] for line in open(path)]
  # ... the texts promptjax's greedy decoding gives on the same checkpoint, re-running the teacher-forced
  # decoder at every step (no cache).
  model, params = _promptjax_model(first)
  vocab = tasks.get_vocabulary('mini')
  task = seqio.get_mixture_or_task(INFER_TASK)
  inputs = [ex['inputs'] for ex in task.get_dataset(None, split='validation', shuffle=False).as_numpy_iterator()]
  padded = np.zeros((len(inputs), 64), np.int32)
  for row, x in zip(padded, inputs):
    row[:len(x)] = x
  tokens = generation.greedy_decode(model, params, padded, max_length=16, batch_size=64, use_cache=False)
  want = [vocab.decode([int(t) for t in row[:list(row).index(1) if 1 in row else len(row)]]) for row in tokens]
  assert len(predictions) == 64 and predictions == want
  assert len(set(predictions)) > 32
  assert jax.config.jax_default_prng_impl == prng   # T5X's global PRNG switch did not leak


def _promptjax_model(checkpoint):
  from promptjax.checkpoints import restore
  from promptjax.models import PromptConfig, PromptableT5, get_config
  model = PromptableT5(get_config('mini', dropout_rate=0.0), PromptConfig(kind='deep', length=20))
  return restore.load_params(model, checkpoint)
