"""`promptjax eval`, `promptjax fewshot` and `promptjax compare` end to end on the bundled data, and
their readable errors (one `error:` line, exit status 2, nothing written or lost)."""

import json
import os

import numpy as np
import pytest

from promptjax.evaluation import metrics as metrics_lib, report
from tests.helpers import cli as _cli

VOCAB = 1664
TASK = 'mini_heldout_rank_classification'
MODEL = ['--gin_file=models/t5_1_1_tiny.gin', f'--gin.promptjax.models.get_config.vocab_size={VOCAB}',
         '--gin.promptjax.models.PromptConfig.length=4']


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp('ckpt') / 'run')
  rc = _cli(['train', '--gin_file=runs/train.gin', '--gin_file=mtl_prompt.gin', *MODEL,
             f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='mini_train'", '--gin.TRAIN_STEPS=2',
             '--gin.BATCH_SIZE=8', "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
             '--gin.CHECKPOINT_PERIOD=2'])
  assert rc == 0
  return model_dir


def _eval_args(command, checkpoint, out, *extra):
  gin_file = 'runs/fewshot.gin' if command == 'fewshot' else 'runs/eval.gin'
  return [command, f'--gin_file={gin_file}', '--gin_file=mtl_prompt.gin', *MODEL,
          f"--gin.CHECKPOINT_PATH='{checkpoint}'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
          f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
          *extra]


FIRST = '--gin.promptjax.evaluation.evaluate.max_examples=32'   # the first 32 instances of each template


def test_eval_fewshot_and_compare(checkpoint, tmp_path, capsys):
  zero = tmp_path / 'a' / '0shot'
  assert _cli(_eval_args('eval', checkpoint, zero, FIRST)) == 0
  out = capsys.readouterr().out
  assert 'ARG' in out
  m = json.load(open(zero / 'metrics.json'))
  assert len(m['tasks']) == 10 and m['setting'] == '0-shot'
  assert all(m['tasks'][t]['num_examples'] == 32 for t in m['tasks'])   # of 100: the first 32 (FIRST)
  assert os.path.exists(zero / 'config.gin')
  # The checkpoint evaluated: the MODEL_DIR's highest step.
  assert m['checkpoint'] == {'path': os.path.join(checkpoint, 'checkpoint_2'), 'step': 2}
  assert len(os.listdir(zero / 'predictions')) == 10
  acc = {t: v['accuracy'] for t, v in m['tasks'].items()}
  base = {t: v['random_baseline'] for t, v in m['tasks'].items()}
  assert m['summary']['arg'] == pytest.approx(metrics_lib.average_relative_gain(acc, base))

  # Without the prompt: a different model, different scores.
  nop = tmp_path / 'b' / '0shot'
  assert _cli(_eval_args('eval', checkpoint, nop, FIRST, '--gin.USE_PROMPT=False')) == 0
  first = lambda d: json.loads(open(d / 'predictions' / sorted(os.listdir(d / 'predictions'))[0]).readline())
  assert first(zero)['scores'] != first(nop)['scores']

  # Few-shot in-context inference: 2 solved training instances before every input (inputs up to 192 tokens).
  icl = tmp_path / 'icl'
  assert _cli(_eval_args('eval', checkpoint, icl, FIRST, '--gin.DEMONSTRATIONS=2',
                         "--gin.TASK_FEATURE_LENGTHS={'inputs': 192, 'targets': 16}")) == 0
  im = json.load(open(icl / 'metrics.json'))
  assert im['setting'] == '2-shot in-context' and im['demonstrations']['split'] == 'train'
  assert len(im['demonstrations']['examples']) == 10
  assert all(len(v) == 2 for v in im['demonstrations']['examples'].values())
  assert first(icl)['scores'] != first(zero)['scores']

  few = tmp_path / 'a' / '16shot'
  assert _cli(_eval_args('fewshot', checkpoint, few, FIRST, '--gin.FEWSHOT_EPOCHS=2',
                         '--gin.TEMPLATES_PER_PROGRAM=5')) == 0   # two programs of one shape: one compile
  fm = json.load(open(few / 'metrics.json'))
  assert fm['setting'] == '16-shot' and fm['fewshot']['templates_per_program'] == 5
  assert fm['checkpoint'] == m['checkpoint']
  sel = json.load(open(few / 'selected_examples.json'))
  assert len(sel['examples']) == 10 and all(len(v) == 16 for v in sel['examples'].values())

  capsys.readouterr()
  out_dir = tmp_path / 'cmp'
  assert _cli(['compare', f'withprompt={tmp_path / "a"}', f'noprompt={tmp_path / "b"}',
               '--output_dir', str(out_dir)]) == 0
  printed = capsys.readouterr().out
  assert '| withprompt |' in printed and '(ref)' in printed and 'p=' in printed
  comparison = json.load(open(out_dir / 'comparison.json'))
  assert comparison['settings'] == ['0shot', '16shot']
  cell = comparison['rows']['noprompt']['0shot']
  runs = [report.load_run(f'x={tmp_path / "b"}'), report.load_run(f'y={tmp_path / "a"}')]
  expect = metrics_lib.paired_bootstrap(runs[0].settings['0shot']['correct'], runs[1].settings['0shot']['correct'],
                                        base, num_resamples=1000, seed=100)
  assert cell['p_value'] == expect['p_value']
  assert 'p_value' not in comparison['rows']['noprompt'].get('16shot', {})   # only one run has 16-shot
  for s in ('0shot', '16shot'):
    assert os.path.getsize(out_dir / f'per_dataset_{s}.png') > 1000


def test_generative_eval_logs_at_the_checkpoint_step(checkpoint, tmp_path):
  """seqio's TensorBoard summaries and prediction file of a generative task are at the evaluated
  checkpoint's step, and metrics.json names that checkpoint."""
  import glob
  import tensorflow as tf
  task, out = 'crossfit_mini_topic_13', tmp_path / 'gen'
  args = _eval_args('eval', checkpoint, out, f"--gin.MIXTURE_OR_TASK_NAME='{task}'", "--gin.EVAL_SPLIT='dev'",
                    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", '--gin.MAX_DECODE_LENGTH=2')
  assert _cli(args) == 0
  m = json.load(open(out / 'metrics.json'))
  assert m['checkpoint'] == {'path': os.path.join(checkpoint, 'checkpoint_2'), 'step': 2}
  logged = [(e.step, float(tf.make_ndarray(v.tensor)))
            for path in glob.glob(str(out / task / 'events.*'))
            for e in tf.compat.v1.train.summary_iterator(path)
            for v in e.summary.value if v.tag == 'eval/Classification-F1']
  assert logged == [(2, pytest.approx(m['generative'][task]['Classification-F1']))]
  assert os.path.exists(out / f'{task}-000002.jsonl')


def _error(capsys, args):
  code = _cli(args)
  err = capsys.readouterr().err.strip().splitlines()
  return code, err


def test_readable_errors(checkpoint, tmp_path, capsys):
  before = sorted(os.listdir(checkpoint))
  cases = [
      (_eval_args('eval', str(tmp_path / 'missing'), tmp_path / 'o1'), 'does not exist'),
      (_eval_args('eval', checkpoint, tmp_path / 'o2', "--gin.MIXTURE_OR_TASK_NAME='mini_nope'"), 'No seqio task'),
      (_eval_args('eval', checkpoint, tmp_path / 'o3', "--gin.MIXTURE_OR_TASK_NAME='mini_train'"),
       'not a rank-classification task'),
      (_eval_args('eval', checkpoint, tmp_path / 'o4', "--gin.promptjax.models.PromptConfig.kind='deep'"),
       'prompt does not fit'),
      (_eval_args('eval', checkpoint, tmp_path / 'o5', '--gin.promptjax.models.get_config.emb_dim=16'),
       'does not fit the model'),
      (['eval', '--gin_file=runs/eval.gin', *MODEL, '--gin_file=mtl_prompt.gin'], 'CHECKPOINT_PATH'),
      (_eval_args('eval', checkpoint, tmp_path / 'o6', '--gin.DEMONSTRATIONS=-1'), 'DEMONSTRATIONS=-1'),
      (['compare', str(tmp_path / 'nothing')], 'not a directory'),
      (['compare'], 'needs run directories'),
  ]
  for args, expected in cases:
    code, err = _error(capsys, args)
    assert code == 2, (args, err)
    assert len(err) == 1 and err[0].startswith('error:') and expected in err[0], (expected, err)
  assert sorted(os.listdir(checkpoint)) == before
  os.makedirs(tmp_path / 'empty')
  code, err = _error(capsys, ['compare', str(tmp_path / 'empty')])
  assert code == 2 and 'no evaluation results' in err[0]
  assert np.all([not (tmp_path / f'o{i}' / 'metrics.json').exists() for i in range(1, 7)])


def test_downstream_protocol_cli_and_arg_over_a_baseline(checkpoint, tmp_path, capsys):
  args = ['downstream', '--gin_file=runs/downstream.gin', '--gin_file=mtl_prompt.gin', *MODEL,
          f"--gin.CHECKPOINT_PATH='{checkpoint}'", "--gin.TARGET_TASKS=['mini_sentiment']",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}", '--gin.DOWNSTREAM_STEPS=2',
          '--gin.DOWNSTREAM_EVAL_INTERVAL=1', '--gin.DOWNSTREAM_SEEDS=(13,)', '--gin.DOWNSTREAM_LEARNING_RATES=(0.3,)',
          '--gin.promptjax.evaluation.DownstreamConfig.max_decode_length=4']
  base = tmp_path / 'base'
  assert _cli(args + [f"--gin.EVAL_OUTPUT_DIR='{base}'"]) == 0
  result = json.load(open(base / 'downstream.json'))
  seed = result['details']['mini_sentiment']['seeds']['13']
  assert seed['metric'] == 'ACC' and seed['step'] in (1, 2)
  assert result['tasks']['mini_sentiment'] == pytest.approx(seed['test'])
  assert result['checkpoint'] == {'path': os.path.join(checkpoint, 'checkpoint_2'), 'step': 2}
  capsys.readouterr()
  # Against a baseline run that scored 0.5: Qin et al.'s ARG = (score - 0.5) / 0.5.
  ref = tmp_path / 'pt'
  os.makedirs(ref)
  json.dump({'tasks': {'mini_sentiment': 0.5}, 'details': {'mini_sentiment': {'seeds': {'13': {'test': 0.5}}}}},
            open(ref / 'downstream.json', 'w'))
  assert _cli(args + [f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'again'}'", f"--gin.BASELINE='{ref}'"]) == 0
  assert 'ARG over' in capsys.readouterr().out
  again = json.load(open(tmp_path / 'again' / 'downstream.json'))
  assert again['tasks'] == result['tasks']      # deterministic: the same run twice
  assert again['arg_vs_baseline'] == pytest.approx((result['tasks']['mini_sentiment'] - 0.5) / 0.5)
  assert again['arg_vs_baseline_over_seeds'] == {'per_seed': {'13': pytest.approx(again['arg_vs_baseline'])},
                                                 'mean': pytest.approx(again['arg_vs_baseline']), 'std': 0.0}
  code, err = _error(capsys, args + [f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'x'}'", f"--gin.BASELINE='{tmp_path}'"])
  assert code == 2 and len(err) == 1 and 'no downstream.json' in err[0]
