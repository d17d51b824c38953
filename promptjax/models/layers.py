"""Building blocks of T5 (original T5 and T5.1.1) in Flax linen, with T5X (flaxformer) parameter names and
logical axes.

Every parameter is created through `nn.with_logical_partitioning`, so `jax.eval_shape(model.init, ...)`
yields the logical axis names (`vocab`, `embed`, `joined_kv`, `mlp`, `heads`, `relpos_buckets`) that the
trainer maps onto a device mesh. Parameters are stored in float32; computation runs in `dtype`; softmax
and normalization statistics run in float32.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from promptjax.models.config import mlp_input_names

Array = jax.Array
# Large negative additive bias for masked attention logits (as T5X; finite so fully masked rows stay
# finite: they become uniform and are excluded from the loss by the loss weights).
NEG_INF = -1e10

default_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


def _param(module: nn.Module, name: str, init, shape, axes):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class RMSNorm(nn.Module):
  """T5 layer norm: x / sqrt(mean(x^2) + eps) * scale, no mean subtraction, no bias. [..., embed]."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = _param(self, 'scale', nn.initializers.ones, (x.shape[-1],), ('embed',))
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale).astype(self.dtype)


class Dense(nn.Module):
  """y = x @ kernel with a 2-D kernel [in, out] (T5X/flaxformer layout, e.g. `query/kernel` [embed, joined_kv])."""
  features: int
  axes: Tuple[str, str]
  kernel_init: Any = default_kernel_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = _param(self, 'kernel', self.kernel_init, (x.shape[-1], self.features), self.axes)
    # A 2-D [tokens, in] @ [in, out] matmul: XLA:CPU runs it ~15% faster in the full train step than
    # the equivalent [b, n, in] dot (benchmarks/train_step.py); same math.
    y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(self.dtype), kernel.astype(self.dtype))
    return y.reshape(x.shape[:-1] + (self.features,))


class Embed(nn.Module):
  """Token embedding table `embedding` [vocab, embed]."""
  num_embeddings: int
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = _param(self, 'embedding', nn.initializers.normal(stddev=1.0),
                            (self.num_embeddings, self.features), ('vocab', 'embed'))

  def __call__(self, tokens: Array) -> Array:
    """[batch, length] int -> [batch, length, embed]."""
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, query: Array) -> Array:
    """[..., embed] -> [..., vocab]: query @ embedding^T (a tied output projection)."""
    y = jnp.dot(query.reshape(-1, query.shape[-1]).astype(self.dtype),
                self.embedding.astype(self.dtype).T)
    return y.reshape(query.shape[:-1] + (self.num_embeddings,))


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> np.ndarray:
  """T5's relative position buckets (Raffel et al., 2020), memory_position - query_position -> bucket.

  Small distances get their own bucket; larger ones are log-spaced up to `max_distance`. Computed in
  float32 exactly as the reference implementations, on the host (shapes are static).
  """
  relative_position = np.asarray(relative_position, dtype=np.int64)
  ret = np.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    ret += (relative_position > 0).astype(np.int64) * num_buckets
    n = np.abs(relative_position)
  else:
    n = -np.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  with np.errstate(divide='ignore'):
    scaled = (np.log(n.astype(np.float32) / np.float32(max_exact))
              / np.float32(math.log(max_distance / max_exact))
              * np.float32(num_buckets - max_exact))
  val_if_large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
  val_if_large = np.minimum(val_if_large, num_buckets - 1)
  return ret + np.where(is_small, n, val_if_large)


class RelativePositionBiases(nn.Module):
  """Per-stack relative position bias table `rel_embedding` [heads, buckets] (T5X layout)."""
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool

  @nn.compact
  def __call__(self, q_len: int, k_len: int, query_positions: Optional[Array] = None) -> Array:
    """Returns float32 biases [1, heads, q_len, k_len]; with `query_positions` [b] int (one query per row,
    cached decoding), the rows of the [k_len, k_len] table at those positions: [b, heads, 1, k_len]."""
    table = _param(self, 'rel_embedding',
                   nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
                   (self.num_heads, self.num_buckets), ('heads', 'relpos_buckets'))
    ctx = np.arange(k_len if query_positions is not None else q_len)[:, None]
    mem = np.arange(k_len)[None, :]
    buckets = jnp.asarray(relative_position_bucket(mem - ctx, self.bidirectional, self.num_buckets,
                                                   self.max_distance), jnp.int32)
    if query_positions is None:
      return jnp.take(table, buckets, axis=1)[None].astype(jnp.float32)
    rows = jnp.take(buckets, query_positions, axis=0)  # [b, k_len]
    return jnp.transpose(jnp.take(table, rows, axis=1), (1, 0, 2))[:, :, None].astype(jnp.float32)


def prefix_kv(prefix: Tuple[Array, Array], batch: int, num_heads: int, head_dim: int, dtype
              ) -> Tuple[Array, Array]:
  """A deep prompt's (key [L, heads*head_dim], value [L, heads*head_dim]) as [batch, L, heads, head_dim]."""
  pk, pv = prefix
  plen = pk.shape[-2]
  shape = (batch, plen, num_heads, head_dim)
  return (jnp.broadcast_to(pk.astype(dtype).reshape(plen, num_heads, head_dim), shape),
          jnp.broadcast_to(pv.astype(dtype).reshape(plen, num_heads, head_dim), shape))


def _write_rows(cache: Array, update: Array, index: Array) -> Array:
  """cache [b, K, h, d] with update [b, 1, h, d] written at position `index` (a scalar: every row, one
  in-place dynamic-update-slice) or index[i] of row i ([b])."""
  update = update.astype(cache.dtype)
  if jnp.ndim(index) == 0:
    return jax.lax.dynamic_update_slice_in_dim(cache, update, index, axis=1)
  return jax.vmap(lambda c, u, i: jax.lax.dynamic_update_slice_in_dim(c, u, i, axis=0))(cache, update, index)


class MultiHeadDotProductAttention(nn.Module):
  """T5 attention: no 1/sqrt(d) logit scaling (folded into the query init), joined-head kernels.

  Optional prefix keys/values (deep prompt tuning, Li & Liang 2021) are prepended to the projected keys
  and values; the caller's `bias` must already contain the columns for them (zero bias: always
  visible, no relative position bias).

  Cached decoding (`promptjax.models.t5.Decoder`) uses three more modes, all with the same parameters:
  `only_kv` returns the projected (prefix +) keys and values [b, L+k, heads, head_dim] without attending
  (the cross-attention cache, computed once); `kv` = cached (keys, values) attends over them without
  projecting `inputs_kv` (cross-attention per step); `kv` with `kv_index` ([] or [b]) first writes the projections
  of the one new position of `inputs_kv` at those cache positions and returns (output, updated (keys,
  values)) (self-attention per step).
  """
  num_heads: int
  head_dim: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, inputs_q: Optional[Array], inputs_kv: Optional[Array], bias: Optional[Array],
               prefix: Optional[Tuple[Array, Array]] = None, deterministic: bool = True, *,
               only_kv: bool = False, kv: Optional[Tuple[Array, Array]] = None,
               kv_index: Optional[Array] = None):
    """inputs_q [b, q, embed], inputs_kv [b, k, embed], bias [b|1, heads|1, q, (L+)k] float32,
    prefix: (key [L, heads*head_dim], value [L, heads*head_dim]) or None. Returns [b, q, embed] (see the
    class docstring for the cached-decoding modes)."""
    h, d = self.num_heads, self.head_dim
    q_init = nn.initializers.variance_scaling(1.0 / d, 'fan_in', 'normal')
    kv_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
    dense = functools.partial(Dense, features=h * d, axes=('embed', 'joined_kv'), dtype=self.dtype)

    def project_kv():
      b, kl = inputs_kv.shape[:2]
      key = dense(kernel_init=kv_init, name='key')(inputs_kv).reshape(b, kl, h, d)
      value = dense(kernel_init=kv_init, name='value')(inputs_kv).reshape(b, kl, h, d)
      if prefix is not None:
        pk, pv = prefix_kv(prefix, b, h, d, self.dtype)
        key = jnp.concatenate([pk, key], axis=1)
        value = jnp.concatenate([pv, value], axis=1)
      return key, value

    if only_kv:
      return project_kv()
    b, ql, emb = inputs_q.shape
    query = dense(kernel_init=q_init, name='query')(inputs_q).reshape(b, ql, h, d)
    if kv is None:
      key, value = project_kv()
    elif kv_index is None:
      key, value = kv
    else:
      new_key, new_value = project_kv()
      key, value = _write_rows(kv[0], new_key, kv_index), _write_rows(kv[1], new_value, kv_index)
    logits = jnp.einsum('bqhd,bkhd->bhqk', query, key.astype(self.dtype)).astype(jnp.float32) + bias
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    if not deterministic and self.dropout_rate > 0:
      weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, value.astype(self.dtype)).reshape(b, ql, h * d)
    out = Dense(emb, axes=('joined_kv', 'embed'), kernel_init=kv_init, dtype=self.dtype,
                name='out')(out)
    return out if kv_index is None else (out, (key, value))


# `T5Config.mlp_activations` names -> functions ('gelu': tanh approximation, as T5X and HF's 'gelu_new').
ACTIVATIONS = {'relu': jax.nn.relu, 'gelu': functools.partial(jax.nn.gelu, approximate=True),
               'linear': lambda x: x}


class MlpBlock(nn.Module):
  """T5's MLP (T5X's `MlpBlock`): wo(act_0(x @ wi_0) * act_1(x @ wi_1) * ...), kernels [embed, mlp] /
  [mlp, embed]; a single activation names its kernel `wi`.

  ('gelu', 'linear'): T5.1.1's gated GELU, wo(gelu(x @ wi_0) * (x @ wi_1)). ('relu',): original T5's
  wo(relu(x @ wi)). Dropout acts on the hidden activations (after the activations and their product,
  before wo), in both: as HF's `T5DenseGatedActDense` and `T5DenseActDense` (dropout after the
  activation) and T5X's intermediate dropout.
  """
  mlp_dim: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  activations: Tuple[str, ...] = ('gelu', 'linear')

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    emb = x.shape[-1]
    dense = functools.partial(Dense, dtype=self.dtype)
    hidden = None
    for name, act in zip(mlp_input_names(self.activations), self.activations):
      h = ACTIVATIONS[act](dense(self.mlp_dim, axes=('embed', 'mlp'), name=name)(x))
      hidden = h if hidden is None else hidden * h
    hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
    return dense(emb, axes=('mlp', 'embed'), name='wo')(hidden)
