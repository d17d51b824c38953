"""T5 v1.1 architecture configuration and size presets.

The presets are the T5.1.1 / LM-adapted ("lm100k") architectures of Raffel et al. (2020) as released in
T5X (`t5_1_1_{small,base,large,xl,xxl}`); the LM-adapted checkpoints of Lester et al. (2021) share the
architecture of the corresponding T5.1.1 size. ``tiny`` is a test size.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Architecture and numerics of a T5 v1.1 encoder-decoder.

  Attributes:
    vocab_size: rows of `token_embedder/embedding` and columns of `decoder/logits_dense/kernel`.
    emb_dim: model width d (`embed` axis).
    num_heads: attention heads (`heads` axis).
    num_encoder_layers / num_decoder_layers: stack depths.
    head_dim: per-head width (`kv` axis); need not equal emb_dim // num_heads.
    mlp_dim: hidden width of the gated-GELU MLP (`mlp` axis).
    relative_attention_num_buckets / relative_attention_max_distance: T5 relative position buckets,
      one table per stack (`encoder/relpos_bias`, `decoder/relpos_bias`) shared by its layers.
    dropout_rate: dropout after attention/MLP blocks and on embeddings. 0.0 is promptjax's default
      (``DROPOUT_RATE`` in the model gin files); the papers do not state it, and 0.1 is T5's
      fine-tuning default (and the value in HF's T5 v1.1 LM-adapted configs).
    layer_norm_epsilon: RMS-norm epsilon.
    dtype: activation/computation dtype (float32 or bfloat16). Parameters stay float32; softmax
      and the loss are always computed in float32.
    remat: rematerialize each layer in the backward pass (saves activation memory).
  """

  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  head_dim: int = 64
  mlp_dim: int = 1024
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  dtype: str = 'float32'
  remat: bool = False

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **kwargs) -> 'T5Config':
    return dataclasses.replace(self, **kwargs)


# T5.1.1 sizes (same shapes for the LM-adapted "lm100k" checkpoints of Lester et al., 2021).
_PRESETS = {
    'tiny': dict(vocab_size=32128, emb_dim=8, num_heads=2, num_encoder_layers=2,
                 num_decoder_layers=2, head_dim=4, mlp_dim=16,
                 relative_attention_num_buckets=8, relative_attention_max_distance=16),
    # `make demo`'s model for the bundled mini benchmark (its vocabulary: 1600 ids, padded to 1664).
    'mini': dict(vocab_size=1664, emb_dim=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                 head_dim=16, mlp_dim=128, relative_attention_num_buckets=16,
                 relative_attention_max_distance=64),
    'small': dict(emb_dim=512, num_heads=6, num_encoder_layers=8, num_decoder_layers=8,
                  head_dim=64, mlp_dim=1024),
    'base': dict(emb_dim=768, num_heads=12, num_encoder_layers=12, num_decoder_layers=12,
                 head_dim=64, mlp_dim=2048),
    'large': dict(emb_dim=1024, num_heads=16, num_encoder_layers=24, num_decoder_layers=24,
                  head_dim=64, mlp_dim=2816),
    'xl': dict(emb_dim=2048, num_heads=32, num_encoder_layers=24, num_decoder_layers=24,
               head_dim=64, mlp_dim=5120),
    'xxl': dict(emb_dim=4096, num_heads=64, num_encoder_layers=24, num_decoder_layers=24,
                head_dim=64, mlp_dim=10240),
}

_ALIASES = {}
for _size in ('small', 'base', 'large', 'xl', 'xxl'):
  _ALIASES[f't5_1_1_{_size}'] = _size
  _ALIASES[f't5_1_1_lm100k_{_size}'] = _size
  _ALIASES[f't5_lm_adapt_{_size}'] = _size
_ALIASES['t5_1_1_tiny'] = 'tiny'


def preset_names():
  return sorted(set(_PRESETS) | set(_ALIASES))


def get_config(name: str, **overrides) -> T5Config:
  """Returns the T5Config of a size preset (e.g. 'small', 't5_1_1_large', 't5_1_1_lm100k_xl')."""
  key = _ALIASES.get(name, name)
  if key not in _PRESETS:
    raise ValueError(
        f'Unknown model size {name!r}. Known sizes: {", ".join(preset_names())}.')
  return T5Config(**{**_PRESETS[key], **overrides})
