"""Cached decoding (`PromptableT5.init_decoding_cache` / `decode_step`) against the teacher-forced decoder,
which the parity tests check against HF PyTorch T5: every step's logits equal the teacher-forced logits at
that position, for T5.1.1 with no prompt and a deep prompt (its decoder prefixes sit in the cache; a
shallow prompt only changes the encoder output the cache holds) and for original T5 (tied output
projection), also when the rows of a batch are at different positions; greedy decoding gives the same
tokens with and without the cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from promptjax.evaluation import generation
from promptjax.models import PromptConfig, PromptableT5, get_config
from promptjax.models.model import shift_right

T = 7
CASES = {
    't5.1.1-none': ('t5_1_1', 'none'),
    't5.1.1-deep': ('t5_1_1', 'deep'),
    'original-t5-deep': ('t5', 'deep'),
}


def _model(arch, kind):
  extra = dict(mlp_activations=('relu',), logits_via_embedding=True) if arch == 't5' else {}
  # Two decoder layers so that a wrong cache in one layer reaches the next; a small vocabulary makes
  # greedy decoding of a random model revisit tokens.
  config = get_config('tiny', vocab_size=96, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                      num_encoder_layers=1, num_decoder_layers=2, **extra)
  model = PromptableT5(config, PromptConfig(kind=kind, length=3, init='uniform'))
  return model, model.init_params(jax.random.PRNGKey(3))


def _inputs():
  rng = np.random.RandomState(0)
  inputs = rng.randint(2, 96, size=(3, 9)).astype(np.int32)
  inputs[1, 6:] = 0   # a padded row: the cache keeps the encoder mask
  targets = rng.randint(2, 96, size=(3, T)).astype(np.int32)
  return inputs, targets


@pytest.mark.parametrize('case', list(CASES))
def test_decode_steps_equal_teacher_forced_logits(case):
  model, params = _model(*CASES[case])
  inputs, targets = _inputs()
  encoded, mask = model.encode(params, inputs)
  decoder_inputs = np.asarray(shift_right(targets))
  full = np.asarray(model.decode(params, encoded, mask, np.ones_like(targets), decoder_inputs))
  step = jax.jit(model.decode_step)

  cache = model.init_decoding_cache(params, encoded, mask, T)
  for i in range(T):                      # every row at the same position (scalar index)
    logits, cache = step(params, cache, decoder_inputs[:, i], i)
    np.testing.assert_allclose(logits, full[:, i], atol=2e-5, rtol=0, err_msg=f'position {i}')

  # Row r runs r steps behind (per-row positions, as T5X's decoding passes them); at its first step it
  # writes position 0 again with the same token, which must not change anything.
  cache = model.init_decoding_cache(params, encoded, mask, T)
  for s in range(T + 2):
    index = np.maximum(s - np.arange(3), 0).clip(max=T - 1)
    logits, cache = step(params, cache, decoder_inputs[np.arange(3), index], index.astype(np.int32))
    for r in range(3):
      if s >= r and s - r < T:
        np.testing.assert_allclose(logits[r], full[r, s - r], atol=2e-5, rtol=0, err_msg=f'row {r} step {s}')


def test_greedy_tokens_same_with_and_without_cache():
  model, params = _model('t5', 'deep')
  inputs, _ = _inputs()
  cached = generation.greedy_tokens(model, params, jnp.asarray(inputs), 12, use_cache=True)
  uncached = generation.greedy_tokens(model, params, jnp.asarray(inputs), 12, use_cache=False)
  np.testing.assert_array_equal(cached, uncached)
  assert len(np.unique(np.asarray(cached))) > 3   # it decoded something, not one repeated token
