"""SUPMER's downstream protocol (Pan et al. C.1, `downstream.pan2023`) end to end on tiny copies of the
releases: AdamW over the lr grid, dev every few steps, best validation prompt -> test, rank scoring."""

import os

import jax
import numpy as np
import pytest

from tests.tasks.test_supmer_downstream import SPIECE, _make_release, needs_vocab

import promptjax.tasks as T
from promptjax.evaluation import downstream, fewshot as fewshot_lib
from promptjax.models import PromptConfig, PromptableT5, get_config
from promptjax.tasks import supmer_downstream as sd


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('supmer_release'))
  _make_release(root)
  T.set_data_dir('supmer_downstream', root)
  T.set_vocabulary_path('t5', SPIECE)
  yield root
  T.set_data_dir('supmer_downstream', None)
  T.set_vocabulary_path('t5', None)


@needs_vocab
def test_pan2023_protocol_end_to_end(data, tmp_path):
  config = get_config('tiny', vocab_size=32128, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32)
  model = PromptableT5(config, PromptConfig(kind='shallow', length=4))
  params = model.init_params(jax.random.PRNGKey(0))
  cfg = downstream.pan2023(epochs=2, eval_interval=6, seeds=(10, 20), learning_rates=(0.1, 0.3), batch_size=4)
  out = downstream.evaluate_tasks(model, params, ['cb'], cfg, output_dir=str(tmp_path),
                                  task_feature_lengths=sd.feature_lengths)
  res = out['details']['cb']
  assert set(res['seeds']) == {10, 20}
  for run in res['seeds'].values():
    assert run['metric'] == 'ACC' and run['learning_rate'] in (0.1, 0.3)
    # The kept prompt is the best validation accuracy of every (step, lr) evaluated.
    assert run['dev'] == max(s for curve in run['dev_curves'].values() for _, s in curve)
    # Its test score is rank-classification accuracy on the task's test split (the original validation set).
    prompt = np.load(run['prompt_file'])
    transformer = {k: v for k, v in params.items() if k != 'prompt'}
    acc = fewshot_lib.evaluate_zero_shot(model, {**transformer, 'prompt': {'prompt': prompt}},
                                         ['supmer_cb_100_rank_classification'], split='test',
                                         task_feature_lengths=sd.feature_lengths('cb'), progress=False)
    assert run['test'] == pytest.approx(acc['supmer_cb_100_rank_classification'].accuracy)
  # Both runs read the one data sample of seed 100 (SUPMER's data_seed); the run seeds only order batches,
  # so the two tuned prompts differ.
  assert sorted(os.listdir(tmp_path / 'prompts')) == ['supmer_cb_100_run10.npy', 'supmer_cb_100_run20.npy']
  a, b = (np.load(res['seeds'][s]['prompt_file']) for s in (10, 20))
  assert not np.allclose(a, b)


@needs_vocab
def test_cli_downstream_with_the_supmer_gin_file(data, tmp_path, capsys):
  import json
  from tests.evaluation.test_eval_cli import _cli
  out = tmp_path / 'down'
  assert _cli(['downstream', '--gin_file=runs/supmer_downstream.gin', '--gin_file=models/t5_1_1_tiny.gin',
               '--gin_file=ppt.gin', '--gin.promptjax.models.PromptConfig.length=4', "--gin.CHECKPOINT_PATH=None",
               f"--gin.EVAL_OUTPUT_DIR='{out}'", "--gin.TARGET_TASKS=['rte']", '--gin.DOWNSTREAM_EPOCHS=1',
               '--gin.DOWNSTREAM_SEEDS=(10,)', '--gin.DOWNSTREAM_LEARNING_RATES=(0.1,)',
               '--gin.DOWNSTREAM_EVAL_INTERVAL=100', '--gin.promptjax.evaluation.DownstreamConfig.batch_size=16',
               '--gin.USE_SUPMER_REGULARIZER=False']) == 0   # vanilla PT from a fresh prompt
  assert 'rte: test' in capsys.readouterr().out
  summary = json.load(open(out / 'downstream.json'))
  assert summary['config']['optimizer'] == 'adamw' and summary['config']['data_seed'] == 100
  run = summary['details']['rte']['seeds']['10']
  assert run['step'] == 32 // 16 and run['metric'] == 'ACC'   # 16 per label x 2 labels, batch 16, 1 epoch
