"""T5 encoder-decoder (original T5 or T5.1.1) in Flax linen with T5X parameter names, plus optional soft
prompts.

Parameter tree (T5X / flaxformer layout; kernels are 2-D [in, out]):

  token_embedder/embedding                                   [vocab, embed]
  encoder/relpos_bias/rel_embedding                          [heads, buckets]
  encoder/layers_{i}/pre_attention_layer_norm/scale          [embed]
  encoder/layers_{i}/attention/{query,key,value}/kernel      [embed, heads*head_dim]
  encoder/layers_{i}/attention/out/kernel                    [heads*head_dim, embed]
  encoder/layers_{i}/pre_mlp_layer_norm/scale                [embed]
  encoder/layers_{i}/mlp/{wi_0,wi_1}/kernel, mlp/wo/kernel   [embed, mlp], [mlp, embed]  (T5.1.1)
  encoder/layers_{i}/mlp/wi/kernel, mlp/wo/kernel            [embed, mlp], [mlp, embed]  (original T5)
  encoder/encoder_norm/scale                                 [embed]
  decoder/relpos_bias/rel_embedding                          [heads, buckets]
  decoder/layers_{i}/pre_self_attention_layer_norm, self_attention,
                     pre_cross_attention_layer_norm, encoder_decoder_attention,
                     pre_mlp_layer_norm, mlp
  decoder/decoder_norm/scale                                 [embed]
  decoder/logits_dense/kernel                                [embed, vocab]  (T5.1.1 only)
  prompt/...                                                 see `promptjax.models.prompts`

The two architectures differ only in the MLP (`T5Config.mlp_activations`: T5.1.1's gated GELU with
`wi_0`/`wi_1`, original T5's ReLU with `wi`) and the output projection (`T5Config.logits_via_embedding`:
original T5 has no `decoder/logits_dense`; its logits are the decoder output scaled by emb_dim**-0.5, times
`token_embedder/embedding` transposed, as HF's tied `T5ForConditionalGeneration` and T5X compute them).

Inserted input vectors (SUPMER's cluster-centroid template, Pan et al. 2023, App. A.2 Eq. 19): `encode`
optionally takes ``encoder_input_vectors`` [b, V, embed] and ``encoder_input_vector_positions`` [b, V]
(int, -1 = unused); the token embedding at each listed input position is replaced by its vector before a
shallow prompt is prepended, so positions index the text inputs (see `insert_input_vectors`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from promptjax.models import layers
from promptjax.models.config import T5Config
from promptjax.models.prompts import PromptConfig, make_prompt_module

Array = jax.Array


def _mask_bias(key_valid: Array) -> Array:
  """[b, k] bool -> additive float32 bias [b, 1, 1, k]."""
  return jnp.where(key_valid, 0.0, layers.NEG_INF).astype(jnp.float32)[:, None, None, :]


def _with_prefix_columns(bias: Array, batch: int, prefix_len: int) -> Array:
  """Prepends `prefix_len` zero-bias (always visible, no position bias) key columns."""
  if prefix_len == 0:
    return bias
  bias = jnp.broadcast_to(bias, (batch,) + bias.shape[1:])
  zeros = jnp.zeros(bias.shape[:-1] + (prefix_len,), jnp.float32)
  return jnp.concatenate([zeros, bias], axis=-1)


def insert_input_vectors(embedded: Array, vectors: Array, positions: Array) -> Array:
  """Replaces embedded[i, positions[i, v]] by vectors[i, v] wherever positions[i, v] >= 0.

  embedded [b, n, embed], vectors [b, V, embed], positions [b, V] int (-1 or any value outside [0, n):
  unused). The positions of one row must be distinct. Differentiable in both `embedded` and `vectors`.
  """
  n = embedded.shape[1]
  onehot = positions[..., None] == jnp.arange(n, dtype=positions.dtype)  # [b, V, n]
  hit = jnp.any(onehot, axis=1)  # [b, n]
  inserted = jnp.einsum('bvn,bvd->bnd', onehot.astype(embedded.dtype), vectors.astype(embedded.dtype))
  return jnp.where(hit[..., None], inserted, embedded)


class EncoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, bias: Array, prefix: Optional[Dict[str, Tuple[Array, Array]]] = None):
    c = self.config
    dt = c.jnp_dtype
    drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=self.deterministic)
    h = layers.RMSNorm(c.layer_norm_epsilon, dt, name='pre_attention_layer_norm')(x)
    h = layers.MultiHeadDotProductAttention(c.num_heads, c.head_dim, dt, c.dropout_rate,
                                            name='attention')(
                                                h, h, bias, prefix and prefix['attention'],
                                                deterministic=self.deterministic)
    x = x + drop(h)
    h = layers.RMSNorm(c.layer_norm_epsilon, dt, name='pre_mlp_layer_norm')(x)
    h = layers.MlpBlock(c.mlp_dim, dt, c.dropout_rate, c.mlp_activations, name='mlp')(h, self.deterministic)
    return x + drop(h)


class DecoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Optional[Array], encoded: Array, self_bias: Optional[Array],
               cross_bias: Optional[Array], prefix: Optional[Dict[str, Tuple[Array, Array]]] = None,
               cache: Optional[Dict[str, Array]] = None, cache_index: Optional[Array] = None,
               init_cache_length: Optional[int] = None):
    """Teacher-forced: x [b, t, embed] -> [b, t, embed]. Cached decoding (see `Decoder`):
    `init_cache_length` T returns this layer's cache; with `cache` and `cache_index` ([] or [b]: absolute
    cache positions, after any prefix) x is one position [b, 1, embed] and it returns (x, updated cache)."""
    c = self.config
    dt = c.jnp_dtype
    drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=self.deterministic)
    attn = lambda name: layers.MultiHeadDotProductAttention(c.num_heads, c.head_dim, dt,
                                                            c.dropout_rate, name=name)
    if init_cache_length is not None:
      b = encoded.shape[0]
      cross_key, cross_value = attn('encoder_decoder_attention')(
          None, encoded, None, prefix and prefix['encoder_decoder_attention'], only_kv=True)
      empty = jnp.zeros((b, init_cache_length, c.num_heads, c.head_dim), dt)
      self_key, self_value = empty, empty
      if prefix is not None:
        pk, pv = layers.prefix_kv(prefix['self_attention'], b, c.num_heads, c.head_dim, dt)
        self_key, self_value = jnp.concatenate([pk, empty], 1), jnp.concatenate([pv, empty], 1)
      return {'self_key': self_key, 'self_value': self_value, 'cross_key': cross_key,
              'cross_value': cross_value}
    h = layers.RMSNorm(c.layer_norm_epsilon, dt, name='pre_self_attention_layer_norm')(x)
    if cache is None:
      h = attn('self_attention')(h, h, self_bias, prefix and prefix['self_attention'],
                                 deterministic=self.deterministic)
    else:
      h, (self_key, self_value) = attn('self_attention')(
          h, h, self_bias, kv=(cache['self_key'], cache['self_value']), kv_index=cache_index)
      cache = dict(cache, self_key=self_key, self_value=self_value)
    x = x + drop(h)
    h = layers.RMSNorm(c.layer_norm_epsilon, dt, name='pre_cross_attention_layer_norm')(x)
    if cache is None:
      h = attn('encoder_decoder_attention')(h, encoded, cross_bias,
                                            prefix and prefix['encoder_decoder_attention'],
                                            deterministic=self.deterministic)
    else:
      h = attn('encoder_decoder_attention')(h, None, cross_bias,
                                            kv=(cache['cross_key'], cache['cross_value']))
    x = x + drop(h)
    h = layers.RMSNorm(c.layer_norm_epsilon, dt, name='pre_mlp_layer_norm')(x)
    h = layers.MlpBlock(c.mlp_dim, dt, c.dropout_rate, c.mlp_activations, name='mlp')(h, self.deterministic)
    return x + drop(h) if cache is None else (x + drop(h), cache)


def _layer_cls(cls, config: T5Config):
  return nn.remat(cls) if config.remat else cls


class Encoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, embedded: Array, mask: Array, prefixes: Optional[List[Dict]] = None,
               deterministic: bool = True) -> Array:
    """embedded [b, n, embed] (shallow prompt already prepended), mask [b, n] bool,
    prefixes: per-layer deep-prompt keys/values or None. Returns [b, n, embed]."""
    c = self.config
    b, n = mask.shape
    bias = layers.RelativePositionBiases(c.relative_attention_num_buckets,
                                         c.relative_attention_max_distance, c.num_heads,
                                         bidirectional=True, name='relpos_bias')(n, n)
    bias = bias + _mask_bias(mask)
    if prefixes is not None:
      bias = _with_prefix_columns(bias, b, prefixes[0]['attention'][0].shape[0])
    x = nn.Dropout(c.dropout_rate)(embedded, deterministic=deterministic)
    layer_cls = _layer_cls(EncoderLayer, c)
    for i in range(c.num_encoder_layers):
      x = layer_cls(c, deterministic, name=f'layers_{i}')(
          x, bias, None if prefixes is None else prefixes[i])
    x = layers.RMSNorm(c.layer_norm_epsilon, c.jnp_dtype, name='encoder_norm')(x)
    return nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  """T5's decoder stack and output projection.

  Teacher-forced (the default) or, for generation, with a key/value cache: ``init_cache_length=T``
  returns a cache for T generated positions (per layer: the projected cross-attention keys/values of the
  encoder output, computed once, and self-attention buffers holding the deep prompt's self-attention
  prefix, if any, followed by T empty positions; plus the encoder mask), every array with the batch on
  axis 0 (T5X's decoding functions expand and gather them along it). ``cache`` with ``cache_index`` (the
  0-based position of the token: a scalar for every row, or [b] per row) runs one position: ``embedded``
  [b, 1, embed] -> (logits [b, 1, vocab], updated cache). The biases equal row `cache_index` of the
  teacher-forced ones (relative position bias of the [T, T] table, causal mask, zero-bias prefix columns),
  so the two paths compute the same function.
  """
  config: T5Config
  # The token embedding the logits are computed with when `config.logits_via_embedding` (shared with the
  # Transformer: its parameters stay at `token_embedder/embedding`).
  embedder: Optional[layers.Embed] = None

  @nn.compact
  def __call__(self, embedded: Optional[Array], encoded: Optional[Array], encoder_mask: Optional[Array],
               decoder_mask: Optional[Array] = None, prefixes: Optional[List[Dict]] = None,
               deterministic: bool = True, *, cache: Optional[Dict[str, Any]] = None,
               cache_index: Optional[Array] = None, init_cache_length: Optional[int] = None):
    """embedded [b, t, embed] decoder inputs, encoded [b, n, embed], encoder_mask [b, n] bool,
    decoder_mask [b, t] bool (valid target positions) or None. Returns logits [b, t, vocab] (see the
    class docstring for cached decoding)."""
    c = self.config
    plen = 0 if prefixes is None else prefixes[0]['self_attention'][0].shape[0]
    if init_cache_length is not None:
      layer_caches = {f'layers_{i}': DecoderLayer(c, True, name=f'layers_{i}')(
          None, encoded, None, None, None if prefixes is None else prefixes[i],
          init_cache_length=init_cache_length) for i in range(c.num_decoder_layers)}
      return {'encoder_mask': encoder_mask, **layer_caches}
    relpos = layers.RelativePositionBiases(c.relative_attention_num_buckets,
                                           c.relative_attention_max_distance, c.num_heads,
                                           bidirectional=False, name='relpos_bias')
    if cache is None:
      b, t = embedded.shape[:2]
      causal = jnp.tril(jnp.ones((t, t), jnp.bool_))[None, None]
      if decoder_mask is not None:
        causal = causal & decoder_mask[:, None, None, :]
      self_bias = relpos(t, t)
      cross_bias = _mask_bias(encoder_mask)
    else:
      b = embedded.shape[0]
      t = cache['layers_0']['self_key'].shape[1] - plen
      position = jnp.asarray(cache_index, jnp.int32)   # [] (every row at one position) or [b]
      index = jnp.broadcast_to(position, (b,))
      causal = (jnp.arange(t)[None, :] <= index[:, None])[:, None, None, :]
      self_bias = relpos(1, t, query_positions=index)
      cross_bias = _mask_bias(cache['encoder_mask'])
    self_bias = self_bias + jnp.where(causal, 0.0, layers.NEG_INF).astype(jnp.float32)
    if plen:
      self_bias = _with_prefix_columns(self_bias, b, plen)
      cross_bias = _with_prefix_columns(cross_bias, b, plen)
    x = nn.Dropout(c.dropout_rate)(embedded, deterministic=deterministic)
    if cache is None:
      layer_cls = _layer_cls(DecoderLayer, c)
      for i in range(c.num_decoder_layers):
        x = layer_cls(c, deterministic, name=f'layers_{i}')(
            x, encoded, self_bias, cross_bias, None if prefixes is None else prefixes[i])
    else:
      new_cache = {'encoder_mask': cache['encoder_mask']}
      for i in range(c.num_decoder_layers):
        x, new_cache[f'layers_{i}'] = DecoderLayer(c, True, name=f'layers_{i}')(
            x, None, self_bias, cross_bias, cache=cache[f'layers_{i}'], cache_index=position + plen)
    x = layers.RMSNorm(c.layer_norm_epsilon, c.jnp_dtype, name='decoder_norm')(x)
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    if c.logits_via_embedding:
      # Original T5: the output projection is the input embedding, applied to the output scaled by d**-0.5.
      logits = self.embedder.attend(x * jnp.asarray(c.emb_dim ** -0.5, x.dtype))
    else:
      logits = layers.Dense(c.vocab_size, axes=('embed', 'vocab'), dtype=c.jnp_dtype,
                            name='logits_dense')(x)
    return logits if cache is None else (logits, new_cache)


class Transformer(nn.Module):
  """T5 encoder-decoder with an optional shallow or deep soft prompt (`prompt/` subtree)."""
  config: T5Config
  prompt_config: PromptConfig = PromptConfig()

  def setup(self):
    c = self.config
    self.token_embedder = layers.Embed(c.vocab_size, c.emb_dim, c.jnp_dtype)
    self.encoder = Encoder(c)
    self.decoder = Decoder(c, self.token_embedder if c.logits_via_embedding else None)
    self.prompt = make_prompt_module(self.prompt_config, c)

  def _deep(self):
    return self.prompt() if self.prompt_config.kind == 'deep' else None

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False,
             encoder_input_vectors: Optional[Array] = None,
             encoder_input_vector_positions: Optional[Array] = None) -> Tuple[Array, Array]:
    """[b, n] int tokens (0 = padding) -> (encoded [b, L+n, embed], encoder_mask [b, L+n] bool),
    L = shallow prompt length (0 otherwise). With ``encoder_input_vectors`` [b, V, embed] and
    ``encoder_input_vector_positions`` [b, V] (-1 = unused), the token embeddings at those input
    positions are replaced by the vectors (`insert_input_vectors`); the mask still comes from the tokens."""
    x = self.token_embedder(encoder_input_tokens)
    if (encoder_input_vectors is None) != (encoder_input_vector_positions is None):
      raise ValueError('encoder_input_vectors and encoder_input_vector_positions go together; got only '
                       + ('encoder_input_vectors' if encoder_input_vector_positions is None
                          else 'encoder_input_vector_positions'))
    if encoder_input_vectors is not None:
      x = insert_input_vectors(x, encoder_input_vectors, encoder_input_vector_positions)
    mask = encoder_input_tokens > 0
    if self.prompt_config.kind == 'shallow':
      p = self.prompt().astype(x.dtype)
      b = x.shape[0]
      x = jnp.concatenate([jnp.broadcast_to(p[None], (b,) + p.shape), x], axis=1)
      mask = jnp.concatenate([jnp.ones((b, p.shape[0]), jnp.bool_), mask], axis=1)
    deep = self._deep()
    encoded = self.encoder(x, mask, None if deep is None else deep['encoder'],
                           deterministic=not enable_dropout)
    return encoded, mask

  def decode(self, encoded: Array, encoder_mask: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Optional[Array] = None, enable_dropout: bool = False) -> Array:
    """Teacher-forced decoding: -> logits [b, t, vocab] (in the activation dtype)."""
    deep = self._deep()
    y = self.token_embedder(decoder_input_tokens)
    dmask = None if decoder_target_tokens is None else decoder_target_tokens > 0
    return self.decoder(y, encoded, encoder_mask, dmask,
                        None if deep is None else deep['decoder'],
                        deterministic=not enable_dropout)

  def init_decoding(self, encoded: Array, encoder_mask: Array, max_length: int) -> Dict[str, Any]:
    """The key/value cache for generating `max_length` tokens after `encode` (see `Decoder`)."""
    deep = self._deep()
    return self.decoder(None, encoded, encoder_mask, prefixes=None if deep is None else deep['decoder'],
                        init_cache_length=max_length)

  def decode_step(self, cache: Dict[str, Any], decoder_input_tokens: Array, index: Array
                  ) -> Tuple[Array, Dict[str, Any]]:
    """One cached decoder position: tokens [b] or [b, 1] (the previous output, 0 = BOS at index 0) at
    position `index` (scalar or [b]) -> (logits [b, vocab], updated cache)."""
    deep = self._deep()
    tokens = jnp.reshape(decoder_input_tokens, (-1, 1))
    logits, cache = self.decoder(self.token_embedder(tokens), None, None,
                                 prefixes=None if deep is None else deep['decoder'], cache=cache,
                                 cache_index=index)
    return logits[:, 0], cache

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Optional[Array] = None, enable_dropout: bool = False,
               encoder_input_vectors: Optional[Array] = None,
               encoder_input_vector_positions: Optional[Array] = None) -> Array:
    encoded, mask = self.encode(encoder_input_tokens, enable_dropout, encoder_input_vectors,
                                encoder_input_vector_positions)
    return self.decode(encoded, mask, decoder_input_tokens, decoder_target_tokens, enable_dropout)
