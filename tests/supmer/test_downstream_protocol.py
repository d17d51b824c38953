"""SUPMER's downstream protocol (Pan et al. C.1, `downstream.pan2023`, runs/supmer_downstream.gin) end to end
on tiny copies of the releases, through the vanilla-PT row (paper/pan2023_base_pt.gin on a tiny model): AdamW
over the lr grid, validation every few steps, the best validation prompt -> test, rank scoring, runs with
two seeds on the one data sample of seed 100, from a fresh N(0, σ²) prompt (App. B) and no ψ*."""

import json
import os

import numpy as np
import pytest

from tests.helpers import cli as _cli
from tests.supmer.test_datasets import SPIECE, _make_release, needs_vocab

import promptjax.tasks as T
import jax

from promptjax.evaluation import fewshot as fewshot_lib
from promptjax.models import PromptConfig, PromptableT5, get_config
from promptjax.supmer import datasets as sd


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
def test_cli_downstream_with_the_supmer_gin_file(data, tmp_path, capsys):
  out = tmp_path / 'down'
  # The vanilla-PT row as it is (no ψ*, a fresh normal prompt) on a tiny model: the row runs.
  assert _cli(['downstream', '--gin_file=paper/pan2023_base_pt.gin', '--gin_file=models/t5_1_1_tiny.gin',
               '--gin.promptjax.models.get_config.emb_dim=16', '--gin.promptjax.models.get_config.mlp_dim=32',
               '--gin.promptjax.models.PromptConfig.length=4', "--gin.CHECKPOINT_PATH=None",
               f"--gin.EVAL_OUTPUT_DIR='{out}'", "--gin.TARGET_TASKS=['cb']", '--gin.DOWNSTREAM_EPOCHS=2',
               '--gin.DOWNSTREAM_SEEDS=(10, 20)', '--gin.DOWNSTREAM_LEARNING_RATES=(0.1, 0.3)',
               '--gin.DOWNSTREAM_EVAL_INTERVAL=6', '--gin.promptjax.evaluation.DownstreamConfig.batch_size=4']) == 0
  assert 'cb: test' in capsys.readouterr().out
  summary = json.load(open(out / 'downstream.json'))
  assert summary['config']['optimizer'] == 'adamw' and summary['config']['data_seed'] == 100
  res = summary['details']['cb']
  assert set(res['seeds']) == {'10', '20'}
  # Both runs read the one data sample of seed 100 (SUPMER's data_seed); the run seeds only order batches,
  # so the two tuned prompts differ.
  assert sorted(os.listdir(out / 'prompts')) == ['supmer_cb_100_run10.npy', 'supmer_cb_100_run20.npy']
  a, b = (np.load(res['seeds'][s]['prompt_file']) for s in ('10', '20'))
  assert not np.allclose(a, b)
  config = get_config('tiny', emb_dim=16, mlp_dim=32)
  model = PromptableT5(config, PromptConfig(kind='shallow', length=4))
  transformer = {k: v for k, v in model.init_params(jax.random.PRNGKey(0)).items() if k != 'prompt'}
  for run in res['seeds'].values():
    assert run['metric'] == 'ACC' and run['learning_rate'] in (0.1, 0.3)
    # The kept prompt is the best validation accuracy of every (step, lr) evaluated ...
    assert run['dev'] == max(s for curve in run['dev_curves'].values() for _, s in curve)
    # ... and its test score is rank-classification accuracy on the test split (the original validation set).
    params = {**transformer, 'prompt': {'prompt': np.load(run['prompt_file'])}}
    acc = fewshot_lib.evaluate_zero_shot(model, params, ['supmer_cb_100_rank_classification'], split='test',
                                         task_feature_lengths=sd.feature_lengths('cb'), progress=False)
    assert run['test'] == pytest.approx(acc['supmer_cb_100_rank_classification'].accuracy)


def test_vanilla_pt_prompt_is_drawn_from_a_normal_distribution():
  """App. B: PT's prompt is "randomly initialized from a normal distribution": the moments of the draws
  against N(0, σ²) (mean 0, standard deviation σ, kurtosis 3; a uniform draw has kurtosis 1.8)."""
  from promptjax.evaluation import downstream
  x = np.asarray(downstream.normal_prompt({('prompt',): (100, 64)}, 0.5, 3)['prompt'], np.float64).ravel()
  assert abs(x.mean()) < 4 * 0.5 / np.sqrt(x.size)
  assert abs(x.std() / 0.5 - 1) < 0.03
  assert abs(np.mean((x - x.mean()) ** 4) / x.var() ** 2 - 3) < 0.25
