"""Hugging Face `T5ForConditionalGeneration` <-> T5X parameter names, for original T5 and T5.1.1.

HF stores torch Linear weights as [out, in]; T5X kernels are [in, out], so every kernel is transposed.
HF's relative attention bias lives in block 0 as [buckets, heads]; T5X keeps one [heads, buckets] table
per stack (`encoder/relpos_bias/rel_embedding`). `shared.weight` is `token_embedder/embedding`.

The two architectures (`promptjax.models.config`) in HF's config.json:

* T5.1.1 / LM-adapted / Flan-T5 (`google/t5-v1_1-*`, `google/t5-base-lm-adapt`, `google/flan-t5-*`):
  ``feed_forward_proj='gated-gelu'``, ``tie_word_embeddings=false``; `DenseReluDense.wi_0/wi_1/wo` are
  `mlp/wi_0`, `mlp/wi_1`, `mlp/wo`, and `lm_head.weight` [vocab, d] is `decoder/logits_dense/kernel` [d, vocab].
* Original T5 (`t5-small` … `t5-11b`): ``feed_forward_proj='relu'`` and ``tie_word_embeddings=true`` (HF's
  defaults, which those config.json files leave unset); `DenseReluDense.wi/wo` are `mlp/wi`, `mlp/wo`, and
  there is no `lm_head.weight` (a stored copy must equal `shared.weight`): HF scales the decoder output by
  d_model**-0.5 and multiplies it by `shared.weight`, as `T5Config.logits_via_embedding`.

HF builds the other two combinations as well (ReLU with an untied lm_head, gated GELU with a tied one),
and so does promptjax: the MLP and the output projection are independent switches, as in T5X. Other
`feed_forward_proj` values (e.g. 'gated-silu') are refused.

Reads `model.safetensors` (or sharded `model.safetensors.index.json`) and `pytorch_model.bin`
(or its sharded index; needs torch), writes config.json + model.safetensors that
`transformers.T5ForConditionalGeneration.from_pretrained` loads.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np

from promptjax.models.config import T5_1_0, T5_1_1, T5Config, describe_architecture, mlp_input_names

Params = Dict[str, Any]

# Keys HF may store that carry no extra information (tied copies of `shared.weight`, and a relative
# attention bias some old checkpoints keep in cross-attention although T5 never uses it there).
_IGNORED_SUFFIXES = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight',
                     'EncDecAttention.relative_attention_bias.weight')


# HF's feed_forward_proj <-> T5Config.mlp_activations ('gated-gelu' is HF's tanh GELU, 'gelu_new').
_HF_MLP = {'relu': T5_1_0, 'gated-gelu': T5_1_1, 'gated-gelu_new': T5_1_1}


def config_from_hf(hf: Mapping[str, Any]) -> T5Config:
  """T5Config from an HF T5 `config.json` dict: original T5 (feed_forward_proj 'relu', HF's default, and
  tie_word_embeddings true, HF's default) or T5.1.1 / LM-adapted / Flan-T5 ('gated-gelu', untied)."""
  proj = hf.get('feed_forward_proj', 'relu')
  if proj not in _HF_MLP:
    raise ValueError(f"HF config has feed_forward_proj={proj!r}; promptjax implements 'relu' (original T5: "
                     "t5-small ... t5-11b) and 'gated-gelu' (T5.1.1, LM-adapted T5, Flan-T5).")
  return T5Config(
      mlp_activations=_HF_MLP[proj], logits_via_embedding=bool(hf.get('tie_word_embeddings', True)),
      vocab_size=hf['vocab_size'], emb_dim=hf['d_model'], num_heads=hf['num_heads'],
      num_encoder_layers=hf['num_layers'],
      num_decoder_layers=hf.get('num_decoder_layers') or hf['num_layers'],
      head_dim=hf['d_kv'], mlp_dim=hf['d_ff'],
      relative_attention_num_buckets=hf.get('relative_attention_num_buckets', 32),
      relative_attention_max_distance=hf.get('relative_attention_max_distance', 128),
      dropout_rate=hf.get('dropout_rate', 0.0),
      layer_norm_epsilon=hf.get('layer_norm_epsilon', 1e-6))


def hf_config_dict(config: T5Config) -> Dict[str, Any]:
  """The HF `config.json` contents for a T5Config."""
  if config.mlp_activations == T5_1_1:
    mlp = {'feed_forward_proj': 'gated-gelu', 'dense_act_fn': 'gelu_new', 'is_gated_act': True}
  elif config.mlp_activations == T5_1_0:
    mlp = {'feed_forward_proj': 'relu', 'dense_act_fn': 'relu', 'is_gated_act': False}
  else:
    raise ValueError(f'mlp_activations={config.mlp_activations!r} has no HF T5 equivalent; HF has '
                     f'{T5_1_1!r} (gated-gelu) and {T5_1_0!r} (relu).')
  return {
      'architectures': ['T5ForConditionalGeneration'], 'model_type': 't5',
      'vocab_size': config.vocab_size, 'd_model': config.emb_dim, 'd_kv': config.head_dim,
      'd_ff': config.mlp_dim, 'num_layers': config.num_encoder_layers,
      'num_decoder_layers': config.num_decoder_layers, 'num_heads': config.num_heads,
      'relative_attention_num_buckets': config.relative_attention_num_buckets,
      'relative_attention_max_distance': config.relative_attention_max_distance,
      'dropout_rate': config.dropout_rate, 'layer_norm_epsilon': config.layer_norm_epsilon,
      **mlp, 'tie_word_embeddings': config.logits_via_embedding, 'is_encoder_decoder': True,
      'initializer_factor': 1.0,
      'pad_token_id': 0, 'eos_token_id': 1, 'decoder_start_token_id': 0, 'use_cache': True,
  }


def _name_map(config: T5Config) -> Iterator[Tuple[Tuple[str, ...], str, bool]]:
  """Yields (T5X path, HF key, transpose?) for every transformer parameter."""
  yield ('token_embedder', 'embedding'), 'shared.weight', False
  if not config.logits_via_embedding:
    yield ('decoder', 'logits_dense', 'kernel'), 'lm_head.weight', True
  for stack, n in (('encoder', config.num_encoder_layers), ('decoder', config.num_decoder_layers)):
    yield ((stack, 'relpos_bias', 'rel_embedding'),
           f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight', True)
    yield (stack, f'{stack}_norm', 'scale'), f'{stack}.final_layer_norm.weight', False
    for i in range(n):
      blk = f'{stack}.block.{i}.layer'
      lp = (stack, f'layers_{i}')
      if stack == 'encoder':
        attns = [('pre_attention_layer_norm', 'attention', f'{blk}.0', 'SelfAttention')]
        mlp_idx = 1
      else:
        attns = [('pre_self_attention_layer_norm', 'self_attention', f'{blk}.0', 'SelfAttention'),
                 ('pre_cross_attention_layer_norm', 'encoder_decoder_attention', f'{blk}.1',
                  'EncDecAttention')]
        mlp_idx = 2
      for ln, att, hf_layer, hf_att in attns:
        yield lp + (ln, 'scale'), f'{hf_layer}.layer_norm.weight', False
        for t5x, hf in (('query', 'q'), ('key', 'k'), ('value', 'v'), ('out', 'o')):
          yield lp + (att, t5x, 'kernel'), f'{hf_layer}.{hf_att}.{hf}.weight', True
      yield lp + ('pre_mlp_layer_norm', 'scale'), f'{blk}.{mlp_idx}.layer_norm.weight', False
      for w in mlp_input_names(config.mlp_activations) + ('wo',):
        yield lp + ('mlp', w, 'kernel'), f'{blk}.{mlp_idx}.DenseReluDense.{w}.weight', True


def _set(tree: Dict, path: Tuple[str, ...], value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: Tuple[str, ...]):
  for k in path:
    tree = tree[k]
  return tree


def from_hf_state_dict(state_dict: Mapping[str, Any], config: T5Config) -> Params:
  """HF T5 state dict (name -> array/tensor) -> transformer params with T5X names (float32 numpy).

  Raises ValueError naming the first missing or unexpected key, or a key with the wrong shape.
  """
  from promptjax.models.model import PromptableT5  # local: avoid an import cycle at package import

  sd = {k: v for k, v in state_dict.items()}
  params: Params = {}
  used = set()
  arch = describe_architecture(config)
  for path, key, transpose in _name_map(config):
    if key not in sd:
      raise ValueError(f'HF checkpoint is missing {key!r} (needed for {"/".join(path)}); is this a '
                       f'{arch} checkpoint with {config.num_encoder_layers} encoder and '
                       f'{config.num_decoder_layers} decoder layers?')
    arr = _to_numpy(sd[key])
    _set(params, path, np.ascontiguousarray(arr.T if transpose else arr))
    used.add(key)
  if config.logits_via_embedding and 'lm_head.weight' in sd:
    # A tied model may store its output projection too (HF's state_dict() does); it must be the embedding.
    if not np.array_equal(_to_numpy(sd['lm_head.weight']), params['token_embedder']['embedding']):
      raise ValueError("HF checkpoint has its own 'lm_head.weight', different from 'shared.weight', but its "
                       'config has tie_word_embeddings=true (HF would ignore lm_head.weight); set '
                       'tie_word_embeddings to false in config.json if the lm_head is meant to be used.')
    used.add('lm_head.weight')
  extra = sorted(k for k in sd if k not in used and not k.endswith(_IGNORED_SUFFIXES))
  if extra:
    raise ValueError(f'HF checkpoint has unexpected key {extra[0]!r} ({len(extra)} in all) for a {arch} '
                     f'model with {config.num_encoder_layers}+{config.num_decoder_layers} layers.')
  PromptableT5(config).check_params(params, include_prompt=False)
  return params


def to_hf_state_dict(params: Params, config: T5Config) -> Dict[str, np.ndarray]:
  """Transformer params (T5X names) -> HF T5 state dict of float32 numpy arrays."""
  out = {}
  for path, key, transpose in _name_map(config):
    try:
      arr = np.asarray(_get(params, path), np.float32)
    except KeyError:
      raise ValueError(f'Parameter {"/".join(path)!r} is missing; cannot export {key!r}.') from None
    out[key] = np.ascontiguousarray(arr.T if transpose else arr)
  return out


def _to_numpy(x) -> np.ndarray:
  if hasattr(x, 'detach'):  # torch tensor (bf16 has no numpy dtype)
    return x.detach().float().cpu().numpy()
  return np.asarray(x, dtype=np.float32)


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
  from safetensors.flax import load_file  # jnp arrays: keeps bfloat16 readable
  return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}


def _read_torch_bin(path: str) -> Dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise ImportError(f'Reading {path} (a PyTorch checkpoint) needs torch; install '
                      "'torch==2.13.0' or convert the checkpoint to safetensors.") from e
  sd = torch.load(path, map_location='cpu', weights_only=True)
  return {k: _to_numpy(v) for k, v in sd.items()}


def read_hf_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads an HF model directory or weights file: safetensors preferred, then pytorch_model.bin;
  sharded checkpoints through their `*.index.json`."""
  if os.path.isfile(path):
    return _read_safetensors(path) if path.endswith('.safetensors') else _read_torch_bin(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'HF checkpoint path {path!r} does not exist.')
  for name, reader in (('model.safetensors', _read_safetensors),
                       ('pytorch_model.bin', _read_torch_bin)):
    single = os.path.join(path, name)
    if os.path.exists(single):
      return reader(single)
    index = os.path.join(path, name + '.index.json')
    if os.path.exists(index):
      with open(index) as f:
        shards = sorted(set(json.load(f)['weight_map'].values()))
      sd = {}
      for shard in shards:
        sd.update(reader(os.path.join(path, shard)))
      return sd
  raise FileNotFoundError(
      f'No HF weights in {path!r}: expected model.safetensors, pytorch_model.bin or a sharded '
      f'*.index.json (found: {sorted(os.listdir(path))[:10]}).')


def load_hf_checkpoint(path: str, config: Optional[T5Config] = None) -> Tuple[Params, T5Config]:
  """Imports an HF T5 checkpoint directory (config.json + weights) -> (params, config).

  `config` overrides/replaces config.json (needed when `path` is a bare weights file).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'HF checkpoint path {path!r} does not exist.')
  if config is None:
    cfg_path = os.path.join(path, 'config.json') if os.path.isdir(path) else None
    if cfg_path is None or not os.path.exists(cfg_path):
      raise FileNotFoundError(f'No config.json next to HF weights {path!r}; pass config=T5Config(...).')
    with open(cfg_path) as f:
      config = config_from_hf(json.load(f))
  return from_hf_state_dict(read_hf_state_dict(path), config), config


def export_hf(params: Params, config: T5Config, out_dir: str) -> str:
  """Writes the transformer (the prompt is not part of HF's model) as an HF directory:
  config.json + model.safetensors, loadable by `T5ForConditionalGeneration.from_pretrained`."""
  from safetensors.numpy import save_file
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    json.dump(hf_config_dict(config), f, indent=2)
  save_file(to_hf_state_dict(params, config), os.path.join(out_dir, 'model.safetensors'),
            metadata={'format': 'pt'})
  return out_dir
