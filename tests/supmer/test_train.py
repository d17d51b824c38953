"""SUPMER through the trainer: φ and the curriculum state are checkpointed in the 'supmer' subtree and a
resumed run ends bit-identical to an uninterrupted one; the transformer stays frozen; bad settings are
refused before any work; `promptjax train` runs supmer.gin over a plain mixture (the generic sampler)."""

import os

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from promptjax.supmer import Supmer, SupmerConfig
from promptjax.models import PromptableT5, PromptConfig, get_config
from promptjax.training import trainer

VOCAB, M, S, Q, N, T = 128, 2, 2, 2, 8, 3


def small_model(kind='shallow'):
  return PromptableT5(get_config('tiny', vocab_size=VOCAB, num_encoder_layers=1, num_decoder_layers=1),
                      PromptConfig(kind=kind, length=3))


def supmer_batches(n, seed=0):
  rng = np.random.RandomState(seed)
  out = []
  for _ in range(n):
    b = {}
    for part, lead in (('support', (M, S)), ('query', (M, Q)), ('mix_query', (M, Q))):
      tgt = rng.randint(3, VOCAB, size=lead + (T,)).astype(np.int32)
      tgt[..., -1] = 1
      b[f'{part}/encoder_input_tokens'] = rng.randint(3, VOCAB, size=lead + (N,)).astype(np.int32)
      b[f'{part}/decoder_target_tokens'] = tgt
    out.append(b)
  return out


CFG = SupmerConfig(transform='official_mlp', mlp_rank=4, second_order=False)   # the order: test_algorithm.py


def run(model_dir, steps, batches, cfg=CFG, **kw):
  # The prompt's linear schedule is over a fixed horizon (the default decays over total_steps, which differs
  # between the first and the resumed invocation here).
  kw.setdefault('optimizer', optax.adam(optax.linear_schedule(0.1, 0.0, 10)))
  return trainer.train(model_dir=model_dir, model=kw.pop('model', small_model()), total_steps=steps,
                       trainable=kw.pop('trainable', 'prompt'), method=Supmer(cfg, None), batches=iter(batches),
                       mesh_shape=(1, 1), progress=False, async_checkpointing=False, checkpoint_period=2, **kw)


def test_supmer_run_checkpoints_phi_and_resumes_bit_identically(tmp_path):
  batches = supmer_batches(4, seed=1)
  straight = run(str(tmp_path / 'straight'), 4, batches)
  run(str(tmp_path / 'resumed'), 2, batches[:2])
  saved = ocp.StandardCheckpointer().restore(str(tmp_path / 'resumed' / 'checkpoint_2' / 'state'))
  assert set(saved['params']['supmer']) == {'phi', 'curriculum'}
  assert float(saved['params']['supmer']['curriculum']['similarity']) != -1.0  # s was updated (Alg. 1 l. 18)
  resumed = run(str(tmp_path / 'resumed'), 4, batches[2:])
  assert sorted(resumed.losses) == [3, 4]
  a, b = (jax.device_get(r.state.params) for r in (straight, resumed))
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # Only the prompt and φ moved; the transformer is the initialization (same seed, no training).
  init = small_model().init_params(jax.random.PRNGKey(0))
  for k in ('encoder', 'decoder', 'token_embedder'):
    for x, y in zip(jax.tree.leaves(a[k]), jax.tree.leaves(init[k])):
      np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a['prompt']['prompt'], init['prompt']['prompt'])
  assert not np.array_equal(a['supmer']['phi']['transform']['down_bias'], np.zeros(4))


def test_supmer_run_refuses_bad_settings(tmp_path):
  with pytest.raises(trainer.TrainingError, match='shallow soft prompt'):
    run(str(tmp_path), 1, [], model=small_model('deep'))
  with pytest.raises(trainer.TrainingError, match="TRAINABLE = 'prompt'"):
    run(str(tmp_path), 1, [], trainable='all')
  # A checkpoint written with another SUPMER configuration is not silently resumed.
  run(str(tmp_path), 1, supmer_batches(1))
  with pytest.raises(trainer.TrainingError, match='different model or method'):
    run(str(tmp_path), 2, supmer_batches(1), cfg=SupmerConfig(transform='affine', second_order=False))


def test_cli_supmer_with_the_generic_sampler(tmp_path):
  """supmer.gin through `promptjax train` over a plain seqio mixture (the generic-sampler alternative; the
  anchor meta-task path runs end to end in tests/meta/test_supmer_end_to_end.py)."""
  from tests.evaluation.test_eval_cli import _cli
  args = ['train', '--gin_file=runs/train.gin', '--gin_file=models/t5_1_1_tiny.gin', '--gin_file=supmer.gin',
          f"--gin.MODEL_DIR='{tmp_path}'", '--gin.TRAIN_STEPS=1', "--gin.MIXTURE_OR_TASK_NAME='mini_train'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
          '--gin.promptjax.models.get_config.vocab_size=1664', '--gin.promptjax.models.PromptConfig.length=4',
          '--gin.META_BATCH_SIZE=2', '--gin.SUPPORT_BATCH_SIZE=2', '--gin.QUERY_BATCH_SIZE=2',
          '--gin.SUPMER_DATA_CFG=@supmer/promptjax.meta.MetaDataConfig()', '--gin.SECOND_ORDER=False']
  assert _cli(args) == 0
  assert {'checkpoint_1', 'config.gin', 'model-info.txt'} <= set(os.listdir(tmp_path))
  assert 'SupmerConfig' in open(tmp_path / 'config.gin').read()
