"""Token cross-entropy and per-example target log-likelihoods, computed in float32.

The loss normalization is a named switch because the papers' codebases differ:
  'num_real_target_tokens'  mean over tokens with non-zero loss weight (PyTorch/HF `CrossEntropyLoss`,
                            the official Wu et al. and Qin et al. code) — the default;
  'num_examples'            per-example summed loss, averaged over the batch;
  'none'                    plain weighted sum (T5X's default `loss_normalizing_factor=None`);
  a float                   weighted sum divided by that constant (T5X's fixed normalizing factor).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp

Array = jax.Array
LOSS_NORMALIZATIONS = ('num_real_target_tokens', 'num_examples', 'none')


def token_log_likelihood(logits: Array, targets: Array) -> Array:
  """log p(target_t | ...) for every position: logits [b, t, vocab], targets [b, t] -> [b, t] float32."""
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked - lse


def default_loss_weights(targets: Array) -> Array:
  """T5X's decoder_loss_weights: 1 on real target tokens (EOS included), 0 on padding."""
  return (targets > 0).astype(jnp.float32)


def sequence_log_likelihood(logits: Array, targets: Array, weights: Optional[Array] = None,
                            length_normalize: bool = False) -> Array:
  """Per-example target log-likelihood [b]: sum_t w_t log p(y_t), or that sum / sum_t w_t when
  `length_normalize` (the length counts EOS when EOS has weight 1, as the official Wu et al. code)."""
  if weights is None:
    weights = default_loss_weights(targets)
  weights = weights.astype(jnp.float32)
  ll = jnp.sum(token_log_likelihood(logits, targets) * weights, axis=-1)
  if length_normalize:
    ll = ll / jnp.maximum(jnp.sum(weights, axis=-1), 1e-8)
  return ll


def normalizer(normalization: Union[str, float], num_tokens: Array, num_examples: Array) -> Array:
  """The denominator of the loss for a `normalization` (see the module docstring): the token count, the
  example count, 1 ('none'), or the given constant."""
  if isinstance(normalization, str):
    if normalization == 'num_real_target_tokens':
      return jnp.maximum(num_tokens, 1e-8)
    if normalization == 'num_examples':
      return jnp.maximum(num_examples, 1e-8)
    if normalization == 'none':
      return jnp.asarray(1.0, jnp.float32)
    raise ValueError(f'Unknown loss normalization {normalization!r}; choose one of '
                     f'{LOSS_NORMALIZATIONS} or a float.')
  return jnp.asarray(float(normalization), jnp.float32)


def cross_entropy_loss(logits: Array, targets: Array, weights: Optional[Array] = None,
                       normalization: Union[str, float] = 'num_real_target_tokens',
                       z_loss: float = 0.0) -> Tuple[Array, Dict[str, Array]]:
  """Weighted token cross-entropy. logits [b, t, vocab], targets/weights [b, t].

  Returns (loss, aux) where aux has 'cross_ent_sum', 'z_loss_sum', 'num_tokens', 'num_examples'.
  `z_loss` adds z_loss * log(Z)^2 per token (T5X's auxiliary loss; 0 in the papers).
  """
  if weights is None:
    weights = default_loss_weights(targets)
  weights = weights.astype(jnp.float32)
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  token_ce = (lse - picked) * weights
  token_z = z_loss * jnp.square(lse) * weights
  total = jnp.sum(token_ce) + jnp.sum(token_z)
  num_tokens = jnp.sum(weights)
  num_examples = jnp.sum(jnp.any(weights > 0, axis=-1).astype(jnp.float32))
  loss = total / normalizer(normalization, num_tokens, num_examples)
  aux = {'cross_ent_sum': jnp.sum(token_ce), 'z_loss_sum': jnp.sum(token_z),
         'num_tokens': num_tokens, 'num_examples': num_examples}
  return loss, aux
