"""T5 architecture configuration (original T5 and T5.1.1) and size presets.

Two architectures, told apart as T5X's network config tells them apart (`mlp_activations`,
`logits_via_embedding`):

* **T5.1.1** (`mlp_activations=('gelu', 'linear')`, `logits_via_embedding=False`, the default): gated-GELU
  MLP, an output projection `decoder/logits_dense` of its own. The T5.1.1 / LM-adapted ("lm100k")
  checkpoints of Raffel et al. (2020) and Lester et al. (2021) as released in T5X
  (`t5_1_1_{small,base,large,xl,xxl}`, `t5_1_1_lm100k_*`), and Flan-T5 (Chung et al. 2022,
  `flan_t5_{small,base,large,xl,xxl}`: instruction-tuned from the LM-adapted checkpoints, same shapes).
* **Original T5** (T5 v1.0, `mlp_activations=('relu',)`, `logits_via_embedding=True`): ReLU MLP, output
  projection tied to the input embedding (Raffel et al. 2020, §2.1; sizes §3.7): `t5_{small,base,large,3b,
  11b}`, HF's `t5-small` … `t5-11b`.

``tiny`` and ``mini`` are T5.1.1-shaped test / demo sizes.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import jax.numpy as jnp

# The MLP activation names T5X's `mlp_activations` uses that promptjax implements ('gelu' is tanh-approximated
# GELU, jax.nn.gelu's default and HF's 'gelu_new'; 'linear' is the identity, the gate of a gated MLP).
MLP_ACTIVATIONS = ('relu', 'gelu', 'linear')
T5_1_1 = ('gelu', 'linear')
T5_1_0 = ('relu',)


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Architecture and numerics of a T5 encoder-decoder (original T5 or T5.1.1; see the module docstring).

  Attributes:
    vocab_size: rows of `token_embedder/embedding` (and columns of `decoder/logits_dense/kernel`).
    emb_dim: model width d (`embed` axis).
    num_heads: attention heads (`heads` axis).
    num_encoder_layers / num_decoder_layers: stack depths.
    head_dim: per-head width (`kv` axis); need not equal emb_dim // num_heads.
    mlp_dim: hidden width of the MLP (`mlp` axis).
    mlp_activations: T5X's MLP activations, one input kernel each, multiplied together: ('gelu',
      'linear') = T5.1.1's gated GELU, wo(gelu(x @ wi_0) * (x @ wi_1)); ('relu',) = original T5's
      wo(relu(x @ wi)). One activation names its kernel `mlp/wi`, several `mlp/wi_0`, `mlp/wi_1`, ...
      Names: `MLP_ACTIVATIONS`.
    logits_via_embedding: original T5's tied output projection: logits = (y * emb_dim**-0.5) @
      embedding^T with the decoder output y and `token_embedder/embedding` (as HF's
      `T5ForConditionalGeneration` with tie_word_embeddings=True and T5X's `logits_via_embedding`); there
      is no `decoder/logits_dense`. False (T5.1.1): logits = y @ `decoder/logits_dense/kernel`, unscaled.
    relative_attention_num_buckets / relative_attention_max_distance: T5 relative position buckets,
      one table per stack (`encoder/relpos_bias`, `decoder/relpos_bias`) shared by its layers.
    dropout_rate: dropout after attention/MLP blocks, on the MLP's hidden activations and on embeddings.
      0.0 is promptjax's default (``DROPOUT_RATE`` in the model gin files); the papers do not state it,
      and 0.1 is T5's fine-tuning default (and the value in HF's T5 configs).
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
  mlp_activations: Tuple[str, ...] = T5_1_1
  logits_via_embedding: bool = False

  def __post_init__(self):
    # A tuple whatever was given (a list from JSON or gin, one name as a string): the config stays hashable.
    acts = self.mlp_activations
    acts = (acts,) if isinstance(acts, str) else tuple(acts)
    object.__setattr__(self, 'mlp_activations', acts)
    unknown = [a for a in acts if a not in MLP_ACTIVATIONS]
    if not acts or unknown:
      raise ValueError(f'mlp_activations={acts!r}: give one or more of {", ".join(MLP_ACTIVATIONS)} '
                       f"(T5.1.1: {T5_1_1!r}; original T5: {T5_1_0!r}).")

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **kwargs) -> 'T5Config':
    return dataclasses.replace(self, **kwargs)


def mlp_input_names(activations: Tuple[str, ...]) -> Tuple[str, ...]:
  """The MLP input kernels for `mlp_activations` (T5X's names, also HF's): ('wi',) or ('wi_0', 'wi_1', ...)."""
  return ('wi',) if len(activations) == 1 else tuple(f'wi_{i}' for i in range(len(activations)))


def describe_architecture(config: T5Config) -> str:
  """'original T5 (...)', 'T5.1.1 (...)' or the two switches, for messages."""
  mlp = {T5_1_1: 'gated-GELU MLP mlp/wi_0, mlp/wi_1', T5_1_0: 'ReLU MLP mlp/wi'}.get(
      config.mlp_activations, f'MLP activations {config.mlp_activations}')
  out = ('output projection tied to token_embedder/embedding' if config.logits_via_embedding
         else 'output projection decoder/logits_dense')
  name = {(T5_1_1, False): 'T5.1.1 ', (T5_1_0, True): 'original T5 '}.get(
      (config.mlp_activations, config.logits_via_embedding), '')
  return f'{name}({mlp}, {out})'


_ORIGINAL_T5 = dict(vocab_size=32128, mlp_activations=T5_1_0, logits_via_embedding=True)

_PRESETS = {
    'tiny': dict(vocab_size=32128, emb_dim=8, num_heads=2, num_encoder_layers=2,
                 num_decoder_layers=2, head_dim=4, mlp_dim=16,
                 relative_attention_num_buckets=8, relative_attention_max_distance=16),
    # `make demo`'s model for the bundled mini benchmark (its vocabulary: 1600 ids, padded to 1664).
    'mini': dict(vocab_size=1664, emb_dim=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                 head_dim=16, mlp_dim=128, relative_attention_num_buckets=16,
                 relative_attention_max_distance=64),
    # T5.1.1 sizes (the same shapes for the LM-adapted "lm100k" checkpoints of Lester et al., 2021, and
    # for Flan-T5, Chung et al. 2022).
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
    # Original T5 (Raffel et al. 2020, §3.7; HF's t5-small ... t5-11b config.json): ReLU MLP, tied
    # input/output embedding, d_ff = 4 d for small ... large; 3B and 11B widen d_ff and the heads instead of d.
    't5_small': dict(_ORIGINAL_T5, emb_dim=512, num_heads=8, num_encoder_layers=6, num_decoder_layers=6,
                     head_dim=64, mlp_dim=2048),
    't5_base': dict(_ORIGINAL_T5, emb_dim=768, num_heads=12, num_encoder_layers=12, num_decoder_layers=12,
                    head_dim=64, mlp_dim=3072),
    't5_large': dict(_ORIGINAL_T5, emb_dim=1024, num_heads=16, num_encoder_layers=24, num_decoder_layers=24,
                     head_dim=64, mlp_dim=4096),
    't5_3b': dict(_ORIGINAL_T5, emb_dim=1024, num_heads=32, num_encoder_layers=24, num_decoder_layers=24,
                  head_dim=128, mlp_dim=16384),
    't5_11b': dict(_ORIGINAL_T5, emb_dim=1024, num_heads=128, num_encoder_layers=24, num_decoder_layers=24,
                   head_dim=128, mlp_dim=65536),
}

_ALIASES = {}
for _size in ('small', 'base', 'large', 'xl', 'xxl'):
  _ALIASES[f't5_1_1_{_size}'] = _size
  _ALIASES[f't5_1_1_lm100k_{_size}'] = _size
  _ALIASES[f't5_lm_adapt_{_size}'] = _size
  _ALIASES[f'flan_t5_{_size}'] = _size
_ALIASES['t5_1_1_tiny'] = 'tiny'
# T5X's spelling of the two largest original sizes (its checkpoint directories t5_3B, t5_11B).
_ALIASES['t5_3B'] = 't5_3b'
_ALIASES['t5_11B'] = 't5_11b'


def preset_names():
  return sorted(set(_PRESETS) | set(_ALIASES))


def get_config(name: str, **overrides) -> T5Config:
  """Returns the T5Config of a size preset (e.g. 'small', 't5_1_1_large', 't5_1_1_lm100k_xl', 't5_base',
  'flan_t5_xl')."""
  key = _ALIASES.get(name, name)
  if key not in _PRESETS:
    raise ValueError(
        f'Unknown model size {name!r}. Known sizes: {", ".join(preset_names())}.')
  return T5Config(**{**_PRESETS[key], **overrides})
