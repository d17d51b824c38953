"""Independent references for the T5 tests: random HF PyTorch models and a float64 numpy T5 with prefix
attention written directly from the equations (relative position buckets taken from HF's code).

Nothing here imports promptjax's model code.
"""

from __future__ import annotations

import numpy as np
import torch
import transformers

# Configurations the parity tests run on: an odd head count with d_kv != d_model / heads and unequal
# encoder/decoder depth; a "regular" one; and a T5-v1.1-like bucket setting. T5.1.1 (gated GELU, untied
# lm_head) unless an entry says otherwise: `t5_v1_0` is original T5 (ReLU, tied embedding, d_ff = 4 d,
# heads x d_kv = d, unequal depths), `flan_t5` a Flan-T5-shaped T5.1.1 (heads x d_kv != d, like flan-t5-small).
HF_CONFIGS = {
    'odd_heads': dict(vocab_size=97, d_model=16, d_kv=5, d_ff=24, num_layers=2, num_decoder_layers=3,
                      num_heads=3, relative_attention_num_buckets=8,
                      relative_attention_max_distance=20),
    'regular': dict(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1,
                    num_heads=4, relative_attention_num_buckets=32,
                    relative_attention_max_distance=128),
    't5_v1_0': dict(vocab_size=80, d_model=16, d_kv=4, d_ff=64, num_layers=2, num_decoder_layers=1,
                    num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                    feed_forward_proj='relu', tie_word_embeddings=True),
    'flan_t5': dict(vocab_size=72, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_decoder_layers=1,
                    num_heads=3, relative_attention_num_buckets=32, relative_attention_max_distance=128),
}
_T5_1_1 = dict(feed_forward_proj='gated-gelu', tie_word_embeddings=False)


def make_hf_model(name: str, seed: int = 0) -> transformers.T5ForConditionalGeneration:
  cfg = transformers.T5Config(**{**_T5_1_1, **HF_CONFIGS[name]}, dropout_rate=0.0,
                              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name_, p in model.named_parameters():
      if 'layer_norm' in name_:  # default ones would hide a missing/misplaced scale
        p.copy_(torch.rand(p.shape, generator=g) + 0.5)
      elif 'relative_attention_bias' in name_:
        p.copy_(torch.randn(p.shape, generator=g))
  return model


def make_batch(vocab: int, batch: int = 3, n: int = 11, t: int = 7, seed: int = 0):
  """Right-padded encoder inputs and targets ending in EOS=1 (different lengths per row)."""
  rng = np.random.RandomState(seed)
  enc = np.zeros((batch, n), np.int32)
  tgt = np.zeros((batch, t), np.int32)
  for b in range(batch):
    ln = n - 3 * b if b else n
    enc[b, :ln - 1] = rng.randint(2, vocab, ln - 1)
    enc[b, ln - 1] = 1
    lt = t - 2 * b if b else t
    tgt[b, :lt - 1] = rng.randint(2, vocab, lt - 1)
    tgt[b, lt - 1] = 1
  dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return {'encoder_input_tokens': enc, 'decoder_target_tokens': tgt, 'decoder_input_tokens': dec_in}


def hf_forward(model, batch, inputs_embeds=None, attention_mask=None):
  """HF logits [b, t, vocab] and HF's loss (mean CE over non-padding targets)."""
  enc = torch.tensor(batch['encoder_input_tokens'], dtype=torch.long)
  labels = torch.tensor(batch['decoder_target_tokens'], dtype=torch.long)
  labels = torch.where(labels > 0, labels, torch.full_like(labels, -100))
  kwargs = dict(decoder_input_ids=torch.tensor(batch['decoder_input_tokens'], dtype=torch.long),
                labels=labels)
  if inputs_embeds is None:
    kwargs.update(input_ids=enc, attention_mask=(enc > 0).long())
  else:
    kwargs.update(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
  with torch.no_grad():
    out = model(**kwargs)
  return out.logits.numpy(), float(out.loss)


# --------------------------------------------------------------------------------------------------
# float64 numpy T5 (T5.1.1 or original T5, told apart by the parameter names) with optional deep-prompt
# prefixes, on a T5X-named parameter tree.


def _bucket(rel, bidirectional, num_buckets, max_distance):
  return transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
      torch.tensor(rel), bidirectional=bidirectional, num_buckets=num_buckets,
      max_distance=max_distance).numpy()


def _rms(x, scale, eps=1e-6):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def _gelu(x):
  return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def _softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def prefix_attention(xq, xkv, p, heads, head_dim, pos_bias, key_visible, prefix):
  """One attention block with prefix keys/values, from the equations.

  xq [q, d], xkv [k, d]; pos_bias [heads, q, k] or None; key_visible [q, k] bool;
  prefix (K [L, heads*head_dim], V [...]) or None. Prefix keys: always visible, zero position bias.
  """
  q = (xq @ p['query']['kernel']).reshape(len(xq), heads, head_dim)
  k = (xkv @ p['key']['kernel']).reshape(len(xkv), heads, head_dim)
  v = (xkv @ p['value']['kernel']).reshape(len(xkv), heads, head_dim)
  scores = np.einsum('qhd,khd->hqk', q, k)
  if pos_bias is not None:
    scores = scores + pos_bias
  scores = np.where(key_visible[None], scores, -1e10)
  values = v
  if prefix is not None and prefix[0].shape[0] > 0:
    L = prefix[0].shape[0]
    pk = np.asarray(prefix[0], np.float64).reshape(L, heads, head_dim)
    pv = np.asarray(prefix[1], np.float64).reshape(L, heads, head_dim)
    scores = np.concatenate([np.einsum('qhd,khd->hqk', q, pk), scores], axis=-1)  # bias 0, visible
    values = np.concatenate([pv, v], axis=0)
  w = _softmax(scores)
  out = np.einsum('hqk,khd->qhd', w, values).reshape(len(xq), heads * head_dim)
  return out @ p['out']['kernel']


def _mlp(x, p):
  if 'wi' in p:  # original T5: ReLU
    return np.maximum(x @ p['wi']['kernel'], 0.0) @ p['wo']['kernel']
  return (_gelu(x @ p['wi_0']['kernel']) * (x @ p['wi_1']['kernel'])) @ p['wo']['kernel']


def numpy_t5_logits(params, cfg, enc_tokens, dec_inputs, prompt=None):
  """Logits [b, t, vocab] for one batch. `cfg` is a dict with keys num_heads, head_dim,
  num_buckets, max_distance, eps. `prompt`: None or the deep prompt subtree (T5X-like names)."""
  P = _to_f64(params)
  H, D = cfg['num_heads'], cfg['head_dim']
  nb, md, eps = cfg['num_buckets'], cfg['max_distance'], cfg.get('eps', 1e-6)
  emb = P['token_embedder']['embedding']
  enc_layers = sorted((k for k in P['encoder'] if k.startswith('layers_')), key=lambda s: int(s[7:]))
  dec_layers = sorted((k for k in P['decoder'] if k.startswith('layers_')), key=lambda s: int(s[7:]))
  out = []
  for b in range(enc_tokens.shape[0]):
    x = emb[enc_tokens[b]]
    n = len(x)
    valid = enc_tokens[b] > 0
    rel = np.arange(n)[None, :] - np.arange(n)[:, None]
    pb = P['encoder']['relpos_bias']['rel_embedding'][:, _bucket(rel, True, nb, md)]
    vis = np.broadcast_to(valid[None, :], (n, n))
    for name in enc_layers:
      lp = P['encoder'][name]
      pre = None if prompt is None else _kv(prompt['encoder'][name]['attention'])
      h = _rms(x, lp['pre_attention_layer_norm']['scale'], eps)
      x = x + prefix_attention(h, h, lp['attention'], H, D, pb, vis, pre)
      x = x + _mlp(_rms(x, lp['pre_mlp_layer_norm']['scale'], eps), lp['mlp'])
    encoded = _rms(x, P['encoder']['encoder_norm']['scale'], eps)

    y = emb[dec_inputs[b]]
    t = len(y)
    rel = np.arange(t)[None, :] - np.arange(t)[:, None]
    pbd = P['decoder']['relpos_bias']['rel_embedding'][:, _bucket(rel, False, nb, md)]
    causal = np.tril(np.ones((t, t), bool))
    cross_vis = np.broadcast_to(valid[None, :], (t, n))
    for name in dec_layers:
      lp = P['decoder'][name]
      pre_s = pre_c = None
      if prompt is not None:
        pre_s = _kv(prompt['decoder'][name]['self_attention'])
        pre_c = _kv(prompt['decoder'][name]['encoder_decoder_attention'])
      h = _rms(y, lp['pre_self_attention_layer_norm']['scale'], eps)
      y = y + prefix_attention(h, h, lp['self_attention'], H, D, pbd, causal, pre_s)
      h = _rms(y, lp['pre_cross_attention_layer_norm']['scale'], eps)
      y = y + prefix_attention(h, encoded, lp['encoder_decoder_attention'], H, D, None, cross_vis,
                               pre_c)
      y = y + _mlp(_rms(y, lp['pre_mlp_layer_norm']['scale'], eps), lp['mlp'])
    y = _rms(y, P['decoder']['decoder_norm']['scale'], eps)
    if 'logits_dense' in P['decoder']:
      out.append(y @ P['decoder']['logits_dense']['kernel'])
    else:  # original T5: tied to the embedding, output scaled by d**-0.5
      out.append((y * emb.shape[1] ** -0.5) @ emb.T)
  return np.stack(out)


def _kv(d):
  return (d['key'], d['value'])


def _to_f64(tree):
  if isinstance(tree, dict):
    return {k: _to_f64(v) for k, v in tree.items()}
  return np.asarray(tree, np.float64)
