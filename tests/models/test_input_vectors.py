"""Inserted input vectors (SUPMER's centroid template): `encoder_input_vectors` / `_positions`.

The reference is the encoder run on embeddings built by hand from the embedding table (rows replaced with
numpy), through the Transformer's own `encoder` submodule, so the replacement path is checked against an
independent construction of the encoder input.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from promptjax.models import PromptableT5, PromptConfig, get_config

CFG = get_config('mini')
TOKENS = np.array([[5, 7, 9, 11, 13, 1, 0, 0],
                   [21, 22, 23, 24, 25, 26, 27, 1]], np.int32)
TARGETS = np.array([[31, 1, 0], [32, 33, 1]], np.int32)
RNG = np.random.default_rng(0)
VECTORS = RNG.normal(size=(2, 3, CFG.emb_dim)).astype(np.float32)
POSITIONS = np.array([[1, 3, -1], [0, -1, 6]], np.int32)


def _hand_embedded(params, tokens, vectors, positions):
  table = np.asarray(params['token_embedder']['embedding'])
  x = table[tokens].copy()
  for i in range(tokens.shape[0]):
    for v in range(positions.shape[1]):
      if positions[i, v] >= 0:
        x[i, positions[i, v]] = vectors[i, v]
  return x


def _run_encoder(model, params, embedded, mask):
  def f(module, x, m):
    return module.encoder(x, m)
  return model.module.apply({'params': params}, jnp.asarray(embedded), jnp.asarray(mask), method=f)


@pytest.fixture(scope='module')
def plain():
  model = PromptableT5(CFG, PromptConfig(kind='none'))
  return model, model.init_params(jax.random.PRNGKey(0))


def test_encode_matches_hand_built_embeddings(plain):
  model, params = plain
  got, mask = model.encode(params, TOKENS, VECTORS, POSITIONS)
  ref = _run_encoder(model, params, _hand_embedded(params, TOKENS, VECTORS, POSITIONS), TOKENS > 0)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(mask), TOKENS > 0)
  # The vectors matter: without them the output differs at every position (attention mixes them in).
  plain_out, _ = model.encode(params, TOKENS)
  assert np.abs(np.asarray(plain_out) - np.asarray(got))[:, :5].min() > 0


def test_all_unused_positions_equal_plain_encoding(plain):
  model, params = plain
  unused = np.full_like(POSITIONS, -1)
  a, _ = model.encode(params, TOKENS, VECTORS, unused)
  b, _ = model.encode(params, TOKENS)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_positions_index_text_inputs_under_a_shallow_prompt():
  model = PromptableT5(CFG, PromptConfig(kind='shallow', length=4))
  params = model.init_params(jax.random.PRNGKey(1))
  got, mask = model.encode(params, TOKENS, VECTORS, POSITIONS)
  text = _hand_embedded(params, TOKENS, VECTORS, POSITIONS)
  prompt = np.asarray(params['prompt']['prompt'])
  assert prompt.shape == (4, CFG.emb_dim)
  embedded = np.concatenate([np.broadcast_to(prompt, (2,) + prompt.shape), text], axis=1)
  full_mask = np.concatenate([np.ones((2, 4), bool), TOKENS > 0], axis=1)
  ref = _run_encoder(model, params, embedded, full_mask)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)
  assert got.shape == (2, 4 + TOKENS.shape[1], CFG.emb_dim)


def test_loss_logits_and_scores_take_the_batch_features(plain):
  model, params = plain
  base = {'encoder_input_tokens': TOKENS, 'decoder_target_tokens': TARGETS}
  with_vec = dict(base, encoder_input_vectors=VECTORS, encoder_input_vector_positions=POSITIONS)
  # Reference logits: decode the hand-built encoding.
  ref_enc = _run_encoder(model, params, _hand_embedded(params, TOKENS, VECTORS, POSITIONS), TOKENS > 0)
  ref_logits = model.decode(params, ref_enc, jnp.asarray(TOKENS > 0), TARGETS)
  np.testing.assert_allclose(np.asarray(model.logits(params, with_vec)), np.asarray(ref_logits),
                             rtol=1e-5, atol=1e-5)
  loss_v, _ = model.loss_fn(params, with_vec)
  loss_0, _ = model.loss_fn(params, base)
  assert np.isfinite(loss_v) and abs(float(loss_v) - float(loss_0)) > 1e-6
  assert model.score_batch(params, with_vec).shape == (2,)
  # Gradient flows into the inserted vectors, only at used slots.
  g = jax.grad(lambda v: model.loss_fn(params, dict(with_vec, encoder_input_vectors=v))[0])(VECTORS)
  g = np.asarray(g)
  assert np.abs(g[0, 0]).sum() > 0 and np.abs(g[1, 2]).sum() > 0
  assert np.abs(g[0, 2]).sum() == 0 and np.abs(g[1, 1]).sum() == 0


def test_one_feature_without_the_other_is_an_error(plain):
  model, params = plain
  batch = {'encoder_input_tokens': TOKENS, 'decoder_target_tokens': TARGETS, 'encoder_input_vectors': VECTORS}
  with pytest.raises(ValueError, match='encoder_input_vector_positions'):
    model.loss_fn(params, batch)


def test_jit_with_vectors(plain):
  model, params = plain
  f = jax.jit(model.encode)
  a, _ = f(params, TOKENS, VECTORS, POSITIONS)
  b, _ = model.encode(params, TOKENS, VECTORS, POSITIONS)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
