"""Model structure (T5X names, logical axes, presets vs HF), numerics switches and error messages."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import reference_t5 as ref
from promptjax.checkpoints import hf as hf_ckpt
from promptjax.models import PromptConfig, PromptableT5, get_config
from promptjax.models import losses


def _paths(tree):
  return sorted('/'.join(str(k.key) for k in p) for p, _ in
                jax.tree_util.tree_flatten_with_path(tree)[0])


def test_parameter_paths_are_t5x_names():
  cfg = get_config('tiny', num_encoder_layers=2, num_decoder_layers=1)
  shapes = PromptableT5(cfg).param_shapes()
  got = _paths(jax.tree_util.tree_map(lambda x: 0, shapes, is_leaf=lambda x: isinstance(x, tuple)))
  attn = ['query', 'key', 'value', 'out']
  want = ['token_embedder/embedding', 'encoder/relpos_bias/rel_embedding',
          'encoder/encoder_norm/scale', 'decoder/relpos_bias/rel_embedding',
          'decoder/decoder_norm/scale', 'decoder/logits_dense/kernel']
  for i in range(2):
    p = f'encoder/layers_{i}/'
    want += [p + 'pre_attention_layer_norm/scale', p + 'pre_mlp_layer_norm/scale']
    want += [p + f'attention/{a}/kernel' for a in attn]
    want += [p + f'mlp/{w}/kernel' for w in ('wi_0', 'wi_1', 'wo')]
  p = 'decoder/layers_0/'
  want += [p + n + '/scale' for n in ('pre_self_attention_layer_norm',
                                      'pre_cross_attention_layer_norm', 'pre_mlp_layer_norm')]
  want += [p + f'{t}/{a}/kernel' for t in ('self_attention', 'encoder_decoder_attention')
           for a in attn]
  want += [p + f'mlp/{w}/kernel' for w in ('wi_0', 'wi_1', 'wo')]
  assert got == sorted(want)
  # Original T5: one MLP input kernel `wi`, no decoder/logits_dense (the logits use the embedding).
  v10 = PromptableT5(cfg.replace(mlp_activations=('relu',), logits_via_embedding=True))
  got = _paths(jax.tree_util.tree_map(lambda x: 0, v10.param_shapes(),
                                      is_leaf=lambda x: isinstance(x, tuple)))
  want = sorted(w.replace('/wi_0/', '/wi/') for w in want
                if '/wi_1/' not in w and w != 'decoder/logits_dense/kernel')
  assert got == want
  assert tuple(v10.logical_axes()['decoder']['layers_0']['mlp']['wi']['kernel']) == ('embed', 'mlp')
  # T5.1.1 weights for an original-T5 model: the message says the architectures differ.
  with pytest.raises(ValueError, match=r"mlp/wi/kernel' is missing.*another T5 architecture than the model, "
                                       r'original T5 \(ReLU MLP'):
    v10.check_params(jax.tree_util.tree_map(np.zeros, shapes, is_leaf=lambda x: isinstance(x, tuple)))


def test_logical_axes():
  cfg = get_config('tiny')
  axes = PromptableT5(cfg, PromptConfig(kind='deep', length=3)).logical_axes()
  assert tuple(axes['token_embedder']['embedding']) == ('vocab', 'embed')
  assert tuple(axes['encoder']['relpos_bias']['rel_embedding']) == ('heads', 'relpos_buckets')
  a = axes['decoder']['layers_1']['encoder_decoder_attention']
  assert tuple(a['query']['kernel']) == ('embed', 'joined_kv')
  assert tuple(a['out']['kernel']) == ('joined_kv', 'embed')
  m = axes['encoder']['layers_0']['mlp']
  assert tuple(m['wi_0']['kernel']) == ('embed', 'mlp') and tuple(m['wo']['kernel']) == ('mlp', 'embed')
  assert tuple(axes['decoder']['logits_dense']['kernel']) == ('embed', 'vocab')
  assert tuple(axes['encoder']['encoder_norm']['scale']) == ('embed',)
  assert tuple(axes['prompt']['encoder']['layers_0']['attention']['key']) == ('prompt', 'joined_kv')
  shallow = PromptableT5(cfg, PromptConfig(kind='shallow', length=3)).logical_axes()
  assert tuple(shallow['prompt']['prompt']) == ('prompt', 'embed')


# The published HF configs of google/t5-v1_1-{small,base,large,xl,xxl} (and the LM-adapted ones).
HF_SIZES = {
    'small': dict(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8),
    'base': dict(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12),
    'large': dict(d_model=1024, d_ff=2816, d_kv=64, num_heads=16, num_layers=24),
    'xl': dict(d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24),
    'xxl': dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24),
}


@pytest.mark.parametrize('size', sorted(HF_SIZES))
def test_size_presets_have_hf_shapes(size):
  """Every parameter of each preset has the shape of HF's model of that size (abstract: no memory)."""
  hf_cfg = transformers.T5Config(vocab_size=32128, feed_forward_proj='gated-gelu',
                                 tie_word_embeddings=False, **HF_SIZES[size])
  with torch.device('meta'):
    hf_model = transformers.T5ForConditionalGeneration(hf_cfg)
  hf_shapes = {k: tuple(v.shape) for k, v in hf_model.state_dict().items()}
  config = get_config(f't5_1_1_lm100k_{size}')
  assert config == hf_ckpt.config_from_hf(hf_cfg.to_dict()).replace(dropout_rate=0.0)
  ours = PromptableT5(config).param_shapes()
  n_ours = 0
  for path, key, transpose in hf_ckpt._name_map(config):
    shape = hf_ckpt._get(ours, path)
    assert shape == (hf_shapes[key][::-1] if transpose else hf_shapes[key]), key
    n_ours += int(np.prod(shape))
  assert n_ours == sum(p.numel() for p in hf_model.parameters())


# The published HF config.json values of the original T5 sizes (t5-small ... t5-11b: feed_forward_proj and
# tie_word_embeddings unset, i.e. HF's defaults 'relu' and true) and of google/flan-t5-{small,...,xxl}.
HF_ORIGINAL_AND_FLAN = {
    't5_small': dict(d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6),
    't5_base': dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12),
    't5_large': dict(d_model=1024, d_ff=4096, d_kv=64, num_heads=16, num_layers=24),
    't5_3b': dict(d_model=1024, d_ff=16384, d_kv=128, num_heads=32, num_layers=24),
    't5_11b': dict(d_model=1024, d_ff=65536, d_kv=128, num_heads=128, num_layers=24),
    **{f'flan_t5_{size}': dict(hf, feed_forward_proj='gated-gelu', tie_word_embeddings=False)
       for size, hf in HF_SIZES.items()},
}


@pytest.mark.parametrize('name', sorted(HF_ORIGINAL_AND_FLAN))
def test_original_t5_and_flan_presets_are_the_hf_configs(name):
  published = dict(vocab_size=32128, dropout_rate=0.1, **HF_ORIGINAL_AND_FLAN[name])
  config = get_config(name)
  assert config == hf_ckpt.config_from_hf(published).replace(dropout_rate=0.0)
  assert config.logits_via_embedding == name.startswith('t5_')
  assert hf_ckpt.config_from_hf(hf_ckpt.hf_config_dict(config)) == config
  if name.startswith('flan_t5_'):  # the T5.1.1 / LM-adapted architecture and shapes
    assert config == get_config(name.replace('flan_t5_', 't5_1_1_lm100k_'))
  # Its gin file selects it and names the T5X checkpoint.
  import promptjax
  with open(os.path.join(os.path.dirname(promptjax.__file__), 'configs', 'models', f'{name}.gin')) as f:
    text = f.read()
  assert f"promptjax.models.get_config.name = '{name}'" in text
  assert 'gs://t5-data/pretrained_models/t5x/' in text


def test_config_switches():
  cfg = get_config('tiny', mlp_activations=['relu'])  # a list (JSON, gin) becomes a tuple: hashable
  assert cfg.mlp_activations == ('relu',) and hash(cfg)
  assert get_config('tiny').mlp_activations == ('gelu', 'linear') and not get_config('tiny').logits_via_embedding
  assert get_config('t5_3B') == get_config('t5_3b')
  with pytest.raises(ValueError, match="mlp_activations=\\('swish',\\): give one or more of relu, gelu"):
    get_config('tiny', mlp_activations=('swish',))
  with pytest.raises(ValueError, match='no HF T5 equivalent'):
    hf_ckpt.hf_config_dict(get_config('tiny', mlp_activations=('gelu',)))


def test_bfloat16_activations_close_to_float32_and_loss_in_float32():
  hf_model = ref.make_hf_model('regular')
  config = hf_ckpt.config_from_hf(hf_model.config.to_dict())
  params = hf_ckpt.from_hf_state_dict(hf_model.state_dict(), config)
  batch = ref.make_batch(config.vocab_size)
  f32 = PromptableT5(config)
  b16 = PromptableT5(config.replace(dtype='bfloat16'))
  l32 = np.asarray(f32.logits(params, batch), np.float32)
  l16 = b16.logits(params, batch)
  assert l16.dtype == jnp.bfloat16
  valid = batch['decoder_target_tokens'] > 0
  assert np.max(np.abs(np.asarray(l16, np.float32)[valid] - l32[valid])) < 0.15 * np.abs(l32).max()
  loss, _ = b16.loss_fn(params, batch)
  assert loss.dtype == jnp.float32
  assert abs(float(loss) - float(f32.loss_fn(params, batch)[0])) < 0.05


def test_dropout_only_with_rng_and_reproducible():
  cfg = get_config('tiny', vocab_size=64, dropout_rate=0.3)
  model = PromptableT5(cfg, PromptConfig(kind='shallow', length=2))
  params = model.init_params(jax.random.PRNGKey(0))
  batch = ref.make_batch(64)
  det = np.asarray(model.logits(params, batch))
  no_drop = np.asarray(PromptableT5(cfg.replace(dropout_rate=0.0),
                                    PromptConfig(kind='shallow', length=2)).logits(params, batch))
  np.testing.assert_array_equal(det, no_drop)
  a = np.asarray(model.logits(params, batch, dropout_rng=jax.random.PRNGKey(1)))
  b = np.asarray(model.logits(params, batch, dropout_rng=jax.random.PRNGKey(1)))
  c = np.asarray(model.logits(params, batch, dropout_rng=jax.random.PRNGKey(2)))
  np.testing.assert_array_equal(a, b)
  assert np.max(np.abs(a - det)) > 1e-3 and np.max(np.abs(a - c)) > 1e-3


def test_remat_gives_same_loss_and_gradients():
  cfg = get_config('tiny', vocab_size=64)
  batch = ref.make_batch(64)
  plain = PromptableT5(cfg, PromptConfig(kind='deep', length=2))
  remat = PromptableT5(cfg.replace(remat=True), PromptConfig(kind='deep', length=2))
  params = plain.init_params(jax.random.PRNGKey(0))
  g1 = jax.grad(lambda p: plain.loss_fn(p, batch)[0])(params)
  g2 = jax.grad(lambda p: remat.loss_fn(p, batch)[0])(params)
  for x, y in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)


def test_loss_normalizations_against_closed_form():
  rng = np.random.RandomState(0)
  logits = rng.randn(3, 5, 11).astype(np.float32)
  targets = rng.randint(1, 11, (3, 5)).astype(np.int32)
  targets[1, 3:] = 0
  targets[2, 1:] = 0
  w = (targets > 0).astype(np.float64)
  logp = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, targets[..., None], -1)[..., 0] * w
  for norm, want in [('num_real_target_tokens', ce.sum() / w.sum()), ('num_examples', ce.sum() / 3),
                     ('none', ce.sum()), (7.0, ce.sum() / 7.0)]:
    loss, aux = losses.cross_entropy_loss(jnp.asarray(logits), jnp.asarray(targets),
                                          normalization=norm)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  loss, aux = losses.cross_entropy_loss(jnp.asarray(logits), jnp.asarray(targets), z_loss=1e-2,
                                        normalization='none')
  np.testing.assert_allclose(float(loss), ce.sum() + 1e-2 * (lse ** 2 * w).sum(), rtol=1e-5)
  with pytest.raises(ValueError, match='Unknown loss normalization'):
    losses.cross_entropy_loss(jnp.asarray(logits), jnp.asarray(targets), normalization='mean')


def test_mismatched_params_are_named():
  cfg = get_config('tiny', vocab_size=64)
  model = PromptableT5(cfg)
  params = model.init_params(jax.random.PRNGKey(0))
  bad = jax.tree_util.tree_map(lambda x: x, params)
  bad['encoder']['layers_1']['mlp']['wo']['kernel'] = np.zeros((3, 3), np.float32)
  with pytest.raises(ValueError, match='encoder/layers_1/mlp/wo/kernel.*shape'):
    model.check_params(bad)
  del bad['encoder']['layers_1']['mlp']['wo']
  with pytest.raises(ValueError, match="'encoder/layers_1/mlp/wo/kernel' is missing"):
    PromptableT5(cfg).init_params(jax.random.PRNGKey(0), transformer_params=bad)
  with pytest.raises(ValueError, match='Unknown model size'):
    get_config('t5_1_1_huge')


def test_hf_import_errors_name_the_key(tmp_path):
  hf_model = ref.make_hf_model('regular')
  config = hf_ckpt.config_from_hf(hf_model.config.to_dict())
  sd = dict(hf_model.state_dict())
  del sd['decoder.block.0.layer.1.EncDecAttention.k.weight']
  with pytest.raises(ValueError, match=r"missing 'decoder\.block\.0\.layer\.1\.EncDecAttention\.k"
                                       r"\.weight'"):
    hf_ckpt.from_hf_state_dict(sd, config)
  sd = dict(hf_model.state_dict())
  sd['encoder.block.0.layer.1.DenseReluDense.wi_0.weight'] = torch.zeros(5, 5)
  with pytest.raises(ValueError, match='encoder/layers_0/mlp/wi_0/kernel'):
    hf_ckpt.from_hf_state_dict(sd, config)
  sd = dict(hf_model.state_dict())
  sd['encoder.block.7.layer.0.layer_norm.weight'] = torch.ones(16)
  with pytest.raises(ValueError, match=r"unexpected key 'encoder\.block\.7"):
    hf_ckpt.from_hf_state_dict(sd, config)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    hf_ckpt.load_hf_checkpoint(str(tmp_path / 'nowhere'))
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'config.json').write_text(hf_model.config.to_json_string())
  with pytest.raises(FileNotFoundError, match='No HF weights'):
    hf_ckpt.load_hf_checkpoint(str(tmp_path / 'empty'))
  with pytest.raises(ValueError, match="feed_forward_proj='gated-silu'; promptjax implements 'relu'"):
    hf_ckpt.config_from_hf({**hf_model.config.to_dict(), 'feed_forward_proj': 'gated-silu'})
  # Original T5: HF's state_dict() holds the tied lm_head too; an lm_head of its own is refused, a T5.1.1
  # checkpoint read as original T5 names the first key it lacks.
  v10 = ref.make_hf_model('t5_v1_0')
  config = hf_ckpt.config_from_hf(v10.config.to_dict())
  sd = dict(v10.state_dict())
  assert 'lm_head.weight' in sd and 'logits_dense' not in hf_ckpt.from_hf_state_dict(sd, config)['decoder']
  sd['lm_head.weight'] = sd['lm_head.weight'] * 2
  with pytest.raises(ValueError, match="own 'lm_head.weight'.*tie_word_embeddings=true"):
    hf_ckpt.from_hf_state_dict(sd, config)
  with pytest.raises(ValueError, match=r"missing 'encoder\.block\.0\.layer\.1\.DenseReluDense\.wi\.weight'.*"
                                       r'original T5'):
    hf_ckpt.from_hf_state_dict(hf_model.state_dict(), hf_ckpt.config_from_hf(
        {**hf_model.config.to_dict(), 'feed_forward_proj': 'relu', 'tie_word_embeddings': True}))


def test_encode_once_decode_per_choice_equals_full_forward():
  """Rank classification can encode an input once and decode each answer choice against it."""
  cfg = get_config('tiny', vocab_size=64)
  for kind in ('shallow', 'deep'):
    model = PromptableT5(cfg, PromptConfig(kind=kind, length=3))
    params = model.init_params(jax.random.PRNGKey(0))
    batch = ref.make_batch(64)
    encoded, mask = model.encode(params, batch['encoder_input_tokens'])
    assert encoded.shape[1] == batch['encoder_input_tokens'].shape[1] + (3 if kind == 'shallow' else 0)
    logits = model.decode(params, encoded, mask, batch['decoder_target_tokens'])
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model.logits(params, batch)),
                               rtol=1e-6, atol=1e-6)
