"""SUPMER end to end on the bundled data: anchor meta-tasks built by the Beam pipeline (DirectRunner), a
tiny `promptjax train` run of supmer.gin reading them (validated every step: the θ, φ of the lowest
meta-validation loss kept as MODEL_DIR/best, App. C.2 — the loss recomputed here from each checkpoint's
parameters with ψ written out from Eq. 5), then `promptjax downstream` from MODEL_DIR/best with the
checkpoint's frozen ψ* on every prompt gradient — checked against ψ written out here from Eq. 5."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import promptjax.tasks as T
from promptjax.checkpoints import t5x
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
             '--gin.promptjax.models.PromptConfig.length=4', '--gin.EVAL_PERIOD=1', '--gin.EVAL_BATCHES=1',
             '--gin.SECOND_ORDER=False'])   # the second-order step: tests/supmer/test_algorithm.py
  assert rc == 0
  yield model_dir
  T.set_data_dir('supmer', None)


def test_a_model_of_another_width_than_the_centroids_is_refused(supmer_construction, tmp_path, capsys):
  """The construction's centroids come from the mini encoder (64 wide); a 32-wide model cannot take them as
  input vectors: one readable line naming both widths and the fix, before anything is written."""
  T.set_data_dir('supmer', supmer_construction[0])
  try:
    rc = _cli(['train', '--gin_file=runs/train.gin', *MINI, '--gin_file=supmer.gin',
               f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.SUPMER_TASK_PREFIX='mini_supmer'",
               '--gin.promptjax.models.get_config.emb_dim=32', '--gin.TRAIN_STEPS=1'])
  finally:
    T.set_data_dir('supmer', None)
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1, err
  assert '64-wide cluster centroids' in err[0] and 'emb_dim 32' in err[0] and 'Rebuild' in err[0]
  run = tmp_path / 'run'
  assert not run.exists() or not any(d.startswith('checkpoint_') for d in os.listdir(run))


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


@functools.lru_cache(maxsize=None)
def _jitted_encode(model):
  return jax.jit(model.encode)


def _psi_by_hand(model, params, phi, batch, g):
  """ψ_φ(g) of Eq. 5 in numpy: H = the mean final encoder state over the batch's real input tokens (the 4
  prompt positions and padding excluded), z = σ(H W + b), h(g) = g A + c."""
  vectors = {k: jnp.asarray(batch[k]) for k in ('encoder_input_vectors', 'encoder_input_vector_positions')
             if k in batch}
  encoded, _ = _jitted_encode(model)(params, jnp.asarray(batch['encoder_input_tokens']), **vectors)
  states = np.asarray(encoded, np.float64)[:, 4:]
  h = states[np.asarray(batch['encoder_input_tokens']) > 0].mean(axis=0)
  z = 1 / (1 + np.exp(-(h @ phi['gate']['kernel'] + phi['gate']['bias'])))
  hg = g @ phi['transform']['kernel'] + phi['transform']['bias']
  return z * hg + (1 - z) * g


def test_best_checkpoint_has_the_lowest_meta_validation_loss(supmer_run):
  """App. C.2: θ, φ of the lowest validation loss. Recomputed here for each validated checkpoint: on the
  validation tasks of the run's first validation meta-batch, one inner step θ' = θ − α₁ ψ_φ(∇L_S(θ)) with
  ψ by hand, then the query loss at θ' (model.loss_fn), averaged over the tasks."""
  from promptjax.supmer import tasks as st
  model = PromptableT5(get_config('mini'), PromptConfig(kind='shallow', length=4))
  batch = next(st.supmer_meta_batches(st.SupmerDataConfig(
      task_feature_lengths={'inputs': 96, 'targets': 4}, meta_batch_size=2, task_prefix='mini_supmer',
      split='validation', module='promptjax.supmer')))
  loss = jax.jit(lambda params, b: model.loss_fn(params, b)[0])
  grad = jax.jit(jax.grad(lambda theta, params, b: model.loss_fn({**params, 'prompt': {'prompt': theta}}, b)[0]))
  want = {}
  for step in (1, 2):
    saved = t5x.load_t5x_checkpoint(os.path.join(supmer_run, f'checkpoint_{step}'))   # one read: θ, φ, the rest
    params = {k: v for k, v in saved.items() if k != 'supmer'}
    phi = jax.tree.map(lambda x: np.asarray(x, np.float64), saved['supmer']['phi'])
    theta = params['prompt']['prompt']
    losses = []
    for i in range(2):
      sup, query = ({k.split('/', 1)[1]: v[i] for k, v in batch.items() if k.startswith(part + '/')}
                    for part in ('support', 'query'))
      g = np.asarray(grad(theta, params, sup), np.float64)
      adapted = theta - 0.1 * _psi_by_hand(model, params, phi, sup, g)   # α₁ = 0.1 (Table 6)
      losses.append(float(loss({**params, 'prompt': {'prompt': jnp.asarray(adapted, jnp.float32)}}, query)))
    want[step] = np.mean(losses)
  record = json.load(open(os.path.join(supmer_run, 'best.json')))
  np.testing.assert_allclose([record['validation_losses'][str(s)] for s in (1, 2)], [want[1], want[2]], rtol=1e-4)
  assert record['step'] == min(want, key=want.get)
  assert os.readlink(os.path.join(supmer_run, 'best')) == f'checkpoint_{record["step"]}'


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
  np.testing.assert_allclose(got, _psi_by_hand(model, params, phi, batch, g['prompt']), rtol=1e-4, atol=1e-7)


def _downstream_args(checkpoint, out, use_psi):
  return ['downstream', '--gin_file=runs/downstream.gin', *MINI, '--gin_file=ppt.gin',
          '--gin.promptjax.models.PromptConfig.length=4', f"--gin.CHECKPOINT_PATH={checkpoint!r}",
          f"--gin.EVAL_OUTPUT_DIR='{out}'", "--gin.TARGET_TASKS=['mini_sentiment']", '--gin.DOWNSTREAM_STEPS=2',
          '--gin.DOWNSTREAM_EVAL_INTERVAL=2', '--gin.DOWNSTREAM_SEEDS=(13,)', '--gin.DOWNSTREAM_LEARNING_RATES=(0.3,)',
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 4}", f'--gin.USE_SUPMER_REGULARIZER={use_psi}']


def _prompt(out):
  return np.load(json.load(open(out / 'downstream.json'))['details']['mini_sentiment']['seeds']['13']['prompt_file'])


def test_downstream_with_the_frozen_regularizer(supmer_run, tmp_path, capsys):
  # From the kept checkpoint (MODEL_DIR/best, the lowest validation loss), as paper/pan2023_base_fewshot.gin.
  assert _cli(_downstream_args(os.path.join(supmer_run, 'best'), tmp_path / 'psi', True)) == 0
  assert 'mini_sentiment: test' in capsys.readouterr().out
  # Plain prompt tuning from the same checkpoint tunes another prompt: ψ* was applied.
  assert _cli(_downstream_args(os.path.join(supmer_run, 'best'), tmp_path / 'plain', False)) == 0
  assert not np.allclose(_prompt(tmp_path / 'psi'), _prompt(tmp_path / 'plain'))
  best = json.load(open(os.path.join(supmer_run, 'best.json')))['step']
  assert json.load(open(tmp_path / 'psi' / 'downstream.json'))['checkpoint']['step'] == best
  # A checkpoint without φ is refused with one readable line.
  capsys.readouterr()
  assert _cli(_downstream_args(None, tmp_path / 'none', True)) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'SUPMER' in err[0]
