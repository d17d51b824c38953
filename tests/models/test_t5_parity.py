"""promptjax's T5 equals HF PyTorch T5 (transformers 4.57.6) on random models: T5.1.1 (gated GELU, untied
lm_head; a Flan-T5-shaped one too) and original T5 (ReLU, tied embedding), see `reference_t5.HF_CONFIGS`."""

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp

import reference_t5 as ref
from promptjax.checkpoints import hf as hf_ckpt
from promptjax.models import PromptConfig, PromptableT5
from promptjax.models.layers import relative_position_bucket

TOL = 1e-4


def _import(hf_model):
  config = hf_ckpt.config_from_hf(hf_model.config.to_dict())
  params = hf_ckpt.from_hf_state_dict(hf_model.state_dict(), config)
  return config, params


def _valid(batch):
  return batch['decoder_target_tokens'] > 0


def _logits_and_loss(model, params, batch):
  """(logits, (loss, aux)) from one jitted program: one compile (about a second each), and a test that runs
  the same model on the same shapes again hits the test run's persistent compilation cache."""
  logits, loss = jax.jit(lambda p, b: (model.logits(p, b), model.loss_fn(p, b)))(params, batch)
  return np.asarray(logits), loss


@pytest.mark.parametrize('name', sorted(ref.HF_CONFIGS))
def test_logits_and_loss_match_hf(name):
  hf_model = ref.make_hf_model(name)
  config, params = _import(hf_model)
  batch = ref.make_batch(config.vocab_size)
  want_logits, want_loss = ref.hf_forward(hf_model, batch)
  model = PromptableT5(config)
  got, (loss, aux) = _logits_and_loss(model, params, batch)
  valid = _valid(batch)
  assert np.max(np.abs(got[valid] - want_logits[valid])) <= TOL
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-6, atol=1e-6)
  assert float(aux['num_tokens']) == valid.sum()


@pytest.mark.parametrize('fmt', ['safetensors', 'bin'])
def test_round_trip_through_disk(tmp_path, fmt):
  hf_model = ref.make_hf_model('odd_heads', seed=3)
  hf_model.save_pretrained(tmp_path / 'hf', safe_serialization=(fmt == 'safetensors'))
  expected = 'model.safetensors' if fmt == 'safetensors' else 'pytorch_model.bin'
  assert (tmp_path / 'hf' / expected).exists()
  params, config = hf_ckpt.load_hf_checkpoint(str(tmp_path / 'hf'))
  batch = ref.make_batch(config.vocab_size, seed=1)
  want_logits, want_loss = ref.hf_forward(hf_model, batch)
  got, (loss, _) = _logits_and_loss(PromptableT5(config), params, batch)
  valid = _valid(batch)
  assert np.max(np.abs(got[valid] - want_logits[valid])) <= TOL
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-6)


@pytest.mark.parametrize('name', ['odd_heads', 't5_v1_0'])
def test_export_to_hf_loads_in_transformers(tmp_path, name):
  """promptjax -> HF directory -> T5ForConditionalGeneration.from_pretrained gives the same logits."""
  import transformers
  config, params = _import(ref.make_hf_model(name, seed=5))
  # Perturb so the exported weights are not simply the ones HF started from.
  params = jax.tree_util.tree_map(lambda x: np.asarray(x) * 1.1, params)
  hf_ckpt.export_hf(params, config, str(tmp_path / 'out'))
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / 'out')).eval()
  assert reloaded.config.tie_word_embeddings == config.logits_via_embedding
  assert hf_ckpt.config_from_hf(reloaded.config.to_dict()) == config
  batch = ref.make_batch(config.vocab_size, seed=2)
  want, _ = ref.hf_forward(reloaded, batch)
  got, _ = _logits_and_loss(PromptableT5(config), params, batch)
  valid = _valid(batch)
  assert np.max(np.abs(got[valid] - want[valid])) <= TOL


@pytest.mark.parametrize('name', sorted(ref.HF_CONFIGS))
def test_shallow_prompt_matches_hf_inputs_embeds(name):
  """promptjax with prompt P == HF fed inputs_embeds = [P; E(x)] with the mask extended by L."""
  hf_model = ref.make_hf_model(name, seed=7)
  config, params = _import(hf_model)
  L = 5
  model = PromptableT5(config, PromptConfig(kind='shallow', length=L, init='uniform'))
  params = model.init_params(jax.random.PRNGKey(1), transformer_params=params)
  batch = ref.make_batch(config.vocab_size, seed=4)
  prompt = torch.tensor(np.asarray(params['prompt']['prompt']))
  enc = torch.tensor(batch['encoder_input_tokens'], dtype=torch.long)
  b = enc.shape[0]
  with torch.no_grad():
    embeds = torch.cat([prompt[None].expand(b, -1, -1), hf_model.shared(enc)], dim=1)
  mask = torch.cat([torch.ones(b, L, dtype=torch.long), (enc > 0).long()], dim=1)
  want_logits, want_loss = ref.hf_forward(hf_model, batch, inputs_embeds=embeds,
                                          attention_mask=mask)
  got, (loss, _) = _logits_and_loss(model, params, batch)
  valid = _valid(batch)
  assert np.max(np.abs(got[valid] - want_logits[valid])) <= TOL
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-6)


@pytest.mark.parametrize('name', ['odd_heads', 't5_v1_0'])
def test_numpy_reference_matches_hf(name):
  """The float64 numpy T5 used for the deep-prompt tests is itself right (without prefixes)."""
  hf_model = ref.make_hf_model(name, seed=11)
  config, params = _import(hf_model)
  batch = ref.make_batch(config.vocab_size, seed=5)
  want, _ = ref.hf_forward(hf_model, batch)
  got = ref.numpy_t5_logits(params, _np_cfg(config), batch['encoder_input_tokens'],
                            batch['decoder_input_tokens'])
  valid = _valid(batch)
  assert np.max(np.abs(got[valid] - want[valid])) <= TOL


def _np_cfg(config):
  return dict(num_heads=config.num_heads, head_dim=config.head_dim,
              num_buckets=config.relative_attention_num_buckets,
              max_distance=config.relative_attention_max_distance, eps=config.layer_norm_epsilon)


def _random_deep_prompt(model, key, scale=1.0):
  """N(0, scale^2) prompt parameters (from the shapes: no init to compile)."""
  leaves, tree = jax.tree_util.tree_flatten(model.param_shapes()['prompt'],
                                            is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(tree, [scale * jax.random.normal(k, s) for k, s in zip(keys, leaves)])


@pytest.mark.parametrize('name,which', [('odd_heads', w) for w in ('all', 'encoder', 'decoder_self',
                                                                  'decoder_cross')]
                         + [('t5_v1_0', 'all')])
def test_deep_prompt_matches_numpy_prefix_attention(name, which):
  """Deep prompt vs a numpy implementation of prefix attention (keys/values prepended in encoder
  self-, decoder self- and cross-attention; always visible; zero position bias). With `which`,
  only that attention type's prefixes are non-zero-random, so each type is checked on its own too."""
  hf_model = ref.make_hf_model(name, seed=13)
  config, tparams = _import(hf_model)
  model = PromptableT5(config, PromptConfig(kind='deep', length=4))
  params = {**tparams, 'prompt': _random_deep_prompt(model, jax.random.PRNGKey(2))}
  if which != 'all':
    keep = {'encoder': ('encoder', 'attention'), 'decoder_self': ('decoder', 'self_attention'),
            'decoder_cross': ('decoder', 'encoder_decoder_attention')}[which]
    # Zero every other type's prefix *values* and keys: zero keys still add visible slots with
    # zero value, so the other types stay exercised but contribute a known, data-independent term.
    params['prompt'] = jax.tree_util.tree_map_with_path(
        lambda p, x: x if (p[0].key == keep[0] and p[2].key == keep[1]) else jnp.zeros_like(x),
        params['prompt'])
  batch = ref.make_batch(config.vocab_size, seed=6)
  want = ref.numpy_t5_logits(params, _np_cfg(config), batch['encoder_input_tokens'],
                             batch['decoder_input_tokens'], prompt=params['prompt'])
  got = np.asarray(jax.jit(model.logits)(params, batch))
  valid = _valid(batch)
  assert np.max(np.abs(got[valid] - want[valid])) <= 1e-5
  # And the prefixes matter: dropping them from the reference changes the logits.
  plain = ref.numpy_t5_logits(tparams, _np_cfg(config), batch['encoder_input_tokens'],
                              batch['decoder_input_tokens'])
  assert np.max(np.abs(plain[valid] - want[valid])) > 1e-2


@pytest.mark.parametrize('kind', ['shallow', 'deep'])
def test_zero_length_prompt_is_exactly_the_plain_model(kind):
  hf_model = ref.make_hf_model('regular', seed=17)
  config, tparams = _import(hf_model)
  batch = ref.make_batch(config.vocab_size, seed=8)
  plain = np.asarray(PromptableT5(config).logits(tparams, batch))
  model = PromptableT5(config, PromptConfig(kind=kind, length=0, init='uniform'))
  params = model.init_params(jax.random.PRNGKey(0), transformer_params=tparams)
  np.testing.assert_array_equal(np.asarray(model.logits(params, batch)), plain)


@pytest.mark.parametrize('bidirectional', [True, False])
@pytest.mark.parametrize('buckets,max_distance', [(32, 128), (8, 20), (4, 8), (64, 256)])
def test_relative_position_buckets_match_hf(bidirectional, buckets, max_distance):
  from transformers.models.t5.modeling_t5 import T5Attention
  rel = np.arange(-1100, 1100)
  want = T5Attention._relative_position_bucket(torch.tensor(rel), bidirectional=bidirectional,
                                               num_buckets=buckets,
                                               max_distance=max_distance).numpy()
  np.testing.assert_array_equal(relative_position_bucket(rel, bidirectional, buckets, max_distance),
                                want)


def test_scores_match_hf_log_likelihood():
  """score_batch: per-example sum of HF's log-softmax at the targets; length-normalized divides by
  the number of target tokens including EOS."""
  hf_model = ref.make_hf_model('odd_heads', seed=19)
  config, params = _import(hf_model)
  batch = ref.make_batch(config.vocab_size, seed=9)
  logits, _ = ref.hf_forward(hf_model, batch)
  logp = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), -1).numpy()
  tgt = batch['decoder_target_tokens']
  tok = np.take_along_axis(logp, tgt[..., None], -1)[..., 0] * (tgt > 0)
  model = PromptableT5(config)
  summed, normalized = jax.jit(lambda p, b: (model.score_batch(p, b),
                                             model.score_batch(p, b, length_normalize=True)))(params, batch)
  np.testing.assert_allclose(np.asarray(summed), tok.sum(-1), atol=1e-4)
  np.testing.assert_allclose(np.asarray(normalized), tok.sum(-1) / (tgt > 0).sum(-1), atol=1e-5)
