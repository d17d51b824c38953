"""Soft prompts: shallow (input-level prompt tuning) and deep (per-layer prefix tuning).

Wu et al. (2022) §2 and Appendix C: a shallow prompt is an [L, d] table prepended to the
embedded encoder input (source side only, L = 20); a deep prompt adds L key/value vectors to every
attention layer, on the source *and* the target side: encoder self-attention, decoder self-attention and
decoder cross-attention. Prefix positions are always visible (also under the causal mask) and get zero
relative-position bias.

Parameter layout (a subtree `prompt/` beside the transformer's own, names mirroring T5X's):

  shallow: prompt/prompt                                              [L, embed]
  deep:    prompt/encoder/layers_{i}/attention/{key,value}            [L, joined_kv]
           prompt/decoder/layers_{i}/self_attention/{key,value}       [L, joined_kv]
           prompt/decoder/layers_{i}/encoder_decoder_attention/{key,value}
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from promptjax.models.config import T5Config

PROMPT_KINDS = ('none', 'shallow', 'deep')
PROMPT_INITS = ('vocab_sample', 'uniform', 'class_labels', 'file')


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """Which soft prompt the model carries and how it is initialized.

  Attributes:
    kind: 'none' (T✓P✗, no prompt parameters), 'shallow' or 'deep'.
    length: number of prompt tokens L (20 in Wu et al.; 100 in Qin et al.).
    init: 'vocab_sample' — rows of the token embedding sampled without replacement from the first
      `init_vocab_size` ids (Lester et al. 2021; the papers' default); 'uniform' — U(-init_range,
      init_range); 'class_labels' — the embeddings of the label words in `init_labels` (each a tuple of
      token ids, multi-piece words averaged), the remaining rows vocab-sampled; 'file' — a numpy file
      (`.npy` [L, d] for shallow, `.npz` of parameter paths for deep, as written by
      `promptjax.checkpoints.export_prompt`).
      For deep prompts, the embedding-based inits give each layer the keys/values that layer's
      (normalized) projections produce for the chosen embeddings; cross-attention prefixes use the
      encoder's final norm, as encoder outputs do.
  """
  kind: str = 'none'
  length: int = 20
  init: str = 'vocab_sample'
  init_vocab_size: int = 5000
  init_range: float = 0.5
  init_labels: Tuple[Tuple[int, ...], ...] = ()
  init_file: Optional[str] = None

  def __post_init__(self):
    if self.kind not in PROMPT_KINDS:
      raise ValueError(f'Unknown prompt kind {self.kind!r}; choose one of {PROMPT_KINDS}.')
    if self.init not in PROMPT_INITS:
      raise ValueError(f'Unknown prompt init {self.init!r}; choose one of {PROMPT_INITS}.')
    if self.kind != 'none' and self.length < 0:
      raise ValueError(f'Prompt length must be >= 0, got {self.length}.')
    if self.init == 'file' and not self.init_file:
      raise ValueError("prompt init 'file' needs init_file=<path to .npy/.npz>.")

  @property
  def enabled(self) -> bool:
    return self.kind != 'none'


def _placeholder_init(key, shape, dtype=jnp.float32):
  # The module-level initializer; `init_prompt_params` applies the configured one (it needs the
  # transformer's embeddings, which a linen initializer cannot see).
  return jax.random.uniform(key, shape, dtype, -0.5, 0.5)


class ShallowPrompt(nn.Module):
  """Input-level prompt: returns the [L, embed] table `prompt`."""
  length: int
  emb_dim: int

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param('prompt', nn.with_logical_partitioning(_placeholder_init, ('prompt', 'embed')),
                      (self.length, self.emb_dim), jnp.float32)


class _PrefixKV(nn.Module):
  length: int
  features: int

  @nn.compact
  def __call__(self):
    mk = lambda n: self.param(n, nn.with_logical_partitioning(_placeholder_init,
                                                              ('prompt', 'joined_kv')),
                              (self.length, self.features), jnp.float32)
    return mk('key'), mk('value')


class _PrefixLayer(nn.Module):
  length: int
  features: int
  attention_names: Tuple[str, ...]

  @nn.compact
  def __call__(self):
    return {n: _PrefixKV(self.length, self.features, name=n)() for n in self.attention_names}


class _PrefixStack(nn.Module):
  length: int
  features: int
  num_layers: int
  attention_names: Tuple[str, ...]

  @nn.compact
  def __call__(self):
    return [_PrefixLayer(self.length, self.features, self.attention_names, name=f'layers_{i}')()
            for i in range(self.num_layers)]


class DeepPrompt(nn.Module):
  """Per-layer prefix keys/values; returns {'encoder': [{'attention': (k, v)}, ...],
  'decoder': [{'self_attention': (k, v), 'encoder_decoder_attention': (k, v)}, ...]}."""
  length: int
  config: T5Config

  @nn.compact
  def __call__(self):
    c = self.config
    features = c.num_heads * c.head_dim
    return {
        'encoder': _PrefixStack(self.length, features, c.num_encoder_layers, ('attention',),
                                name='encoder')(),
        'decoder': _PrefixStack(self.length, features, c.num_decoder_layers,
                                ('self_attention', 'encoder_decoder_attention'), name='decoder')(),
    }


def make_prompt_module(prompt: PromptConfig, config: T5Config) -> Optional[nn.Module]:
  if prompt.kind == 'shallow':
    return ShallowPrompt(prompt.length, config.emb_dim, name='prompt')
  if prompt.kind == 'deep':
    return DeepPrompt(prompt.length, config, name='prompt')
  return None


# --------------------------------------------------------------------------------------------------
# Initialization from the transformer's parameters.


def _rms_norm(x, scale, eps, xp=np):
  x = xp.asarray(x, np.float32)
  return x / xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True) + eps) * xp.asarray(scale)


def _embedding_rows(rng, prompt: PromptConfig, embedding: np.ndarray, xp=np) -> np.ndarray:
  """[L, embed] rows: vocab-sampled, or label words first then vocab-sampled."""
  L = prompt.length
  vocab = min(prompt.init_vocab_size, embedding.shape[0])
  rows = []
  if prompt.init == 'class_labels':
    for ids in prompt.init_labels[:L]:
      rows.append(xp.mean(embedding[np.asarray(ids, np.int32)], axis=0, keepdims=True))
  need = L - len(rows)
  if need > 0:
    if need > vocab:
      raise ValueError(f'Cannot sample {need} distinct prompt rows from {vocab} vocabulary rows.')
    ids = xp.asarray(jax.random.choice(rng, vocab, (need,), replace=False))
    rows.append(embedding[ids])
  return xp.concatenate(rows).astype(np.float32) if rows else xp.zeros((0, embedding.shape[1]), np.float32)


def init_prompt_params(rng: jax.Array, prompt: PromptConfig, config: T5Config,
                       transformer_params: Mapping[str, Any], xp=np) -> Optional[Dict[str, Any]]:
  """Builds the `prompt` subtree with the configured initializer (None for kind='none').

  Args:
    rng: PRNG key.
    prompt: the prompt configuration.
    config: the architecture.
    transformer_params: the transformer's parameters (T5X names), used by the embedding-based inits.
    xp: `numpy` (on the host, reading only the pieces it needs) or `jax.numpy` (traceable, e.g. inside
      T5X's jitted initialization; the same values up to float rounding of the deep-prompt projections).
  """
  if not prompt.enabled:
    return None
  if prompt.init == 'file':
    return load_prompt_file(prompt.init_file, prompt, config)
  if prompt.init == 'uniform':
    shapes = prompt_shapes(prompt, config)
    keys = jax.random.split(rng, len(shapes))
    flat = {path: xp.asarray(jax.random.uniform(k, shape, jnp.float32, -prompt.init_range,
                                                prompt.init_range))
            for k, (path, shape) in zip(keys, sorted(shapes.items()))}
    return traverse_util.unflatten_dict(flat)
  emb = xp.asarray(transformer_params['token_embedder']['embedding'], np.float32)
  rows = _embedding_rows(rng, prompt, emb, xp)  # [L, d]
  if prompt.kind == 'shallow':
    return {'prompt': rows}
  eps = config.layer_norm_epsilon
  tp = transformer_params

  def kv(x, attn):
    return {'key': xp.asarray(x @ xp.asarray(attn['key']['kernel']), np.float32),
            'value': xp.asarray(x @ xp.asarray(attn['value']['kernel']), np.float32)}

  enc = {}
  for i in range(config.num_encoder_layers):
    lp = tp['encoder'][f'layers_{i}']
    x = _rms_norm(rows, lp['pre_attention_layer_norm']['scale'], eps, xp)
    enc[f'layers_{i}'] = {'attention': kv(x, lp['attention'])}
  cross_in = _rms_norm(rows, tp['encoder']['encoder_norm']['scale'], eps, xp)
  dec = {}
  for i in range(config.num_decoder_layers):
    lp = tp['decoder'][f'layers_{i}']
    x = _rms_norm(rows, lp['pre_self_attention_layer_norm']['scale'], eps, xp)
    dec[f'layers_{i}'] = {'self_attention': kv(x, lp['self_attention']),
                          'encoder_decoder_attention': kv(cross_in, lp['encoder_decoder_attention'])}
  return {'encoder': enc, 'decoder': dec}


def prompt_shapes(prompt: PromptConfig, config: T5Config) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """Flat {path: shape} of the prompt subtree (paths relative to `prompt/`)."""
  if prompt.kind == 'shallow':
    return {('prompt',): (prompt.length, config.emb_dim)}
  if prompt.kind == 'deep':
    f = config.num_heads * config.head_dim
    out = {}
    for i in range(config.num_encoder_layers):
      for kv in ('key', 'value'):
        out[('encoder', f'layers_{i}', 'attention', kv)] = (prompt.length, f)
    for i in range(config.num_decoder_layers):
      for att in ('self_attention', 'encoder_decoder_attention'):
        for kv in ('key', 'value'):
          out[('decoder', f'layers_{i}', att, kv)] = (prompt.length, f)
    return out
  return {}


def _check_prompt_tree(flat, prompt: PromptConfig, config: T5Config, source: str):
  expected = prompt_shapes(prompt, config)
  missing = sorted(set(expected) - set(flat))
  extra = sorted(set(flat) - set(expected))
  if missing or extra:
    raise ValueError(
        f'Prompt in {source} does not match a {prompt.kind} prompt of this model: '
        f'missing {["/".join(p) for p in missing][:5]}, unexpected {["/".join(p) for p in extra][:5]}.')
  for path, shape in expected.items():
    if tuple(flat[path].shape) != tuple(shape):
      raise ValueError(f'Prompt parameter prompt/{"/".join(path)} in {source} has shape '
                       f'{tuple(flat[path].shape)}, expected {tuple(shape)} '
                       f'(prompt length {prompt.length}, model {config}).')


def export_prompt(prompt_params: Mapping[str, Any], path: str) -> str:
  """Writes a prompt subtree: a shallow prompt as `<path>.npy` [L, d] (the format prompt-tuning
  codebases load), a deep prompt as `<path>.npz` keyed by parameter path (a given .npy/.npz suffix is
  replaced by the right one). Returns the path written."""
  flat = traverse_util.flatten_dict(prompt_params)
  base = path[:-4] if path.endswith(('.npy', '.npz')) else path
  if set(flat) == {('prompt',)}:
    path = base + '.npy'
    np.save(path, np.asarray(flat[('prompt',)], np.float32))
  else:
    path = base + '.npz'
    np.savez(path, **{'/'.join(k): np.asarray(v, np.float32) for k, v in flat.items()})
  return path


def load_prompt_file(path: str, prompt: PromptConfig, config: T5Config) -> Dict[str, Any]:
  """Reads a prompt written by `export_prompt` and checks it against the configuration."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'Prompt file {path!r} does not exist (PromptConfig.init_file).')
  if path.endswith('.npz'):
    with np.load(path) as z:
      flat = {tuple(k.split('/')): np.asarray(z[k], np.float32) for k in z.files}
  else:
    flat = {('prompt',): np.asarray(np.load(path), np.float32)}
  _check_prompt_tree(flat, prompt, config, path)
  return traverse_util.unflatten_dict(flat)
