"""SUPMER end to end on the bundled data: anchor meta-tasks built by the Beam pipeline (DirectRunner), a
tiny `promptjax train` run of supmer.gin reading them, then `promptjax downstream` with the checkpoint's
frozen ψ* on every prompt gradient — checked against ψ written out here from Eq. 5."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import promptjax.tasks as T
from promptjax.evaluation import downstream
from promptjax.evaluation.run import load_params, load_supmer
from promptjax.models import PromptConfig, PromptableT5, get_config
from tests.helpers import cli as _cli

MINI = ['--gin_file=models/t5_1_1_mini.gin', '--gin.promptjax.models.PromptConfig.length=4']


@pytest.fixture(scope='module')
def supmer_run(tmp_path_factory, supmer_construction):
  root = tmp_path_factory.mktemp('supmer')
  T.set_data_dir('supmer', supmer_construction[0])   # the mini construction (tests/conftest.py)
  model_dir = str(root / 'run')
  rc = _cli(['train', '--gin_file=runs/train.gin', *MINI, '--gin_file=supmer.gin', f"--gin.MODEL_DIR='{model_dir}'",
             '--gin.TRAIN_STEPS=2', '--gin.CHECKPOINT_PERIOD=2', "--gin.SUPMER_TASK_PREFIX='mini_supmer'",
             "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 4}", '--gin.META_BATCH_SIZE=2',
             '--gin.promptjax.models.PromptConfig.length=4'])
  assert rc == 0
  yield model_dir
  T.set_data_dir('supmer', None)


def test_supmer_checkpoint_holds_prompt_and_phi(supmer_run):
  phi, cfg = load_supmer(supmer_run)
  assert cfg.transform == 'affine'
  d = get_config('mini').emb_dim
  assert phi['gate']['kernel'].shape == (d, d) and phi['transform']['bias'].shape == (4, d)
  # φ moved away from its initialization (W = 0, A = I) in the two meta-steps.
  assert np.abs(phi['gate']['kernel']).max() > 0 or np.abs(phi['transform']['kernel'] - np.eye(d)).max() > 0
  model = PromptableT5(get_config('mini'), PromptConfig(kind='shallow', length=4))
  _, params = load_params(model, supmer_run)   # the 'supmer' subtree is not mistaken for model weights
  assert set(params) == {'token_embedder', 'encoder', 'decoder', 'prompt'}


def test_frozen_psi_equals_eq5_by_hand(supmer_run):
  model = PromptableT5(get_config('mini'), PromptConfig(kind='shallow', length=4))
  _, params = load_params(model, supmer_run)
  phi, cfg = load_supmer(supmer_run)
  rng = np.random.default_rng(0)
  phi = {'gate': {'kernel': rng.normal(0, 0.3, phi['gate']['kernel'].shape).astype(np.float32),
                  'bias': rng.normal(0, 0.3, phi['gate']['bias'].shape).astype(np.float32)},
         'transform': {'kernel': rng.normal(0, 0.3, phi['transform']['kernel'].shape).astype(np.float32),
                       'bias': rng.normal(0, 0.3, phi['transform']['bias'].shape).astype(np.float32)}}
  tokens = np.zeros((3, 10), np.int32)
  tokens[:, :7] = rng.integers(3, 1600, (3, 7))
  tokens[2, 5:] = 0
  batch = {'encoder_input_tokens': tokens, 'decoder_target_tokens': np.ones((3, 2), np.int32)}
  g = {'prompt': rng.normal(0, 1e-3, (4, get_config('mini').emb_dim)).astype(np.float32)}
  transformer = {k: v for k, v in params.items() if k != 'prompt'}
  got = downstream.supmer_gradient_fn(model, phi, cfg)(g, transformer, params['prompt'], batch)['prompt']
  # By hand: H = mean final encoder state over the real input tokens (the 4 prompt positions excluded).
  encoded, _ = model.encode(params, jnp.asarray(tokens))
  states = np.asarray(encoded)[:, 4:]
  mask = tokens > 0
  h = states[mask].mean(axis=0)
  z = 1 / (1 + np.exp(-(h @ phi['gate']['kernel'] + phi['gate']['bias'])))
  hg = g['prompt'] @ phi['transform']['kernel'] + phi['transform']['bias']
  np.testing.assert_allclose(got, z * hg + (1 - z) * g['prompt'], rtol=1e-4, atol=1e-7)


def _downstream_args(checkpoint, out, use_psi):
  return ['downstream', '--gin_file=runs/downstream.gin', *MINI, '--gin_file=ppt.gin',
          '--gin.promptjax.models.PromptConfig.length=4', f"--gin.CHECKPOINT_PATH={checkpoint!r}",
          f"--gin.EVAL_OUTPUT_DIR='{out}'", "--gin.TARGET_TASKS=['mini_sentiment']", '--gin.DOWNSTREAM_STEPS=2',
          '--gin.DOWNSTREAM_EVAL_INTERVAL=2', '--gin.DOWNSTREAM_SEEDS=(13,)', '--gin.DOWNSTREAM_LEARNING_RATES=(0.3,)',
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 4}", f'--gin.USE_SUPMER_REGULARIZER={use_psi}']


def _prompt(out):
  return np.load(json.load(open(out / 'downstream.json'))['details']['mini_sentiment']['seeds']['13']['prompt_file'])


def test_downstream_with_the_frozen_regularizer(supmer_run, tmp_path, capsys):
  assert _cli(_downstream_args(supmer_run, tmp_path / 'psi', True)) == 0
  assert 'mini_sentiment: test' in capsys.readouterr().out
  # Plain prompt tuning from the same checkpoint tunes another prompt: ψ* was applied.
  assert _cli(_downstream_args(supmer_run, tmp_path / 'plain', False)) == 0
  assert not np.allclose(_prompt(tmp_path / 'psi'), _prompt(tmp_path / 'plain'))
  # A checkpoint without φ is refused with one readable line.
  capsys.readouterr()
  assert _cli(_downstream_args(None, tmp_path / 'none', True)) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'SUPMER' in err[0]
