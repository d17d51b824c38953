"""The train state and the one jitted train step (MTL: `grad` of the shared loss; Wu et al. §3).

Gradient accumulation: a batch of B examples is split into `num_microbatches` strided micro-batches
(rows i, i+n, i+2n, … so every data shard contributes to each), the *summed* token loss is
differentiated per micro-batch with `lax.scan`, and the sum of gradients is divided once by the
full batch's normalizer (number of target tokens, of examples, or a constant). The result equals the
full-batch gradient of the normalized loss, so the micro-batch count changes memory, not the math.

Only trainable groups are differentiated (`trainable` = 'all' | 'transformer' | 'prompt'): a frozen
transformer costs no weight gradients in MTL-T✗P✓. The optimizer (an optax transform over the whole
tree whose frozen leaves are masked, see `promptjax.training.optimizers`) receives zeros for frozen
leaves, which it ignores.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from promptjax.models import losses
from promptjax.models.model import PromptableT5

Params = Any
Batch = Mapping[str, jax.Array]

from promptjax.training import optimizers as opt_lib


@flax.struct.dataclass
class TrainState:
  """step (int32 scalar), params (transformer + prompt), opt_state (optax state)."""
  step: jax.Array
  params: Params
  opt_state: Any

  @classmethod
  def create(cls, params: Params, optimizer: optax.GradientTransformation, step: int = 0) -> 'TrainState':
    return cls(step=jnp.asarray(step, jnp.int32), params=params, opt_state=optimizer.init(params))


def trainable_keys(params: Params, trainable: str) -> Tuple[str, ...]:
  """Top-level parameter groups that `trainable` (a group of `optimizers.GROUPS` or an alias) trains."""
  group = opt_lib.canonical_group(trainable)
  wanted = {'all': opt_lib.TRANSFORMER_KEYS + (opt_lib.PROMPT_KEY,), 'transformer': opt_lib.TRANSFORMER_KEYS,
            'prompt': (opt_lib.PROMPT_KEY,)}[group]
  keys = tuple(k for k in wanted if k in params)
  if not keys:
    raise ValueError(f'Nothing to train: trainable={trainable!r} but the parameters have only '
                     f'{sorted(params)} (a prompt-only run needs a prompt: PromptConfig.kind = "shallow" or "deep").')
  return keys


def _normalizer(model: PromptableT5, aux: Mapping[str, jax.Array]) -> jax.Array:
  return losses.normalizer(model.loss_normalization, aux['num_tokens'], aux['num_examples'])


def _split_microbatches(batch: Batch, n: int) -> Batch:
  """[B, ...] -> [n, B/n, ...] with micro-batch i = rows i, i+n, … (strided across data shards)."""
  def split(x):
    b = x.shape[0]
    if b % n:
      raise ValueError(f'batch size {b} is not divisible by num_microbatches={n}')
    return jnp.swapaxes(x.reshape((b // n, n) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def loss_and_grads(model: PromptableT5, params: Params, batch: Batch, rng: Optional[jax.Array],
                   trainable: str = 'all', num_microbatches: int = 1
                   ) -> Tuple[jax.Array, Params, Dict[str, jax.Array]]:
  """(normalized loss, grads for the whole tree with zeros on frozen groups, aux sums)."""
  keys = trainable_keys(params, trainable)
  summed = dataclasses.replace(model, loss_normalization='none')

  def sum_loss(train_part, frozen_part, mb, mb_rng):
    total, aux = summed.loss_fn({**frozen_part, **train_part}, mb, mb_rng)
    return total, aux

  train_part = {k: params[k] for k in keys}
  frozen_part = {k: v for k, v in params.items() if k not in keys}
  grad_fn = jax.value_and_grad(sum_loss, has_aux=True)

  if num_microbatches <= 1:
    (total, aux), grads = grad_fn(train_part, frozen_part, batch, rng)
  else:
    mbs = _split_microbatches(batch, num_microbatches)

    def body(carry, xs):
      i, mb = xs
      mb_rng = None if rng is None else jax.random.fold_in(rng, i)
      (t, a), g = grad_fn(train_part, frozen_part, mb, mb_rng)
      return jax.tree.map(jnp.add, carry, (t, a, g)), None

    zeros = jax.tree.map(jnp.zeros_like, train_part)
    aux0 = {k: jnp.zeros((), jnp.float32) for k in ('cross_ent_sum', 'z_loss_sum', 'num_tokens', 'num_examples')}
    (total, aux, grads), _ = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), aux0, zeros), (jnp.arange(num_microbatches), mbs))

  denom = _normalizer(model, aux)
  grads = jax.tree.map(lambda g: (g / denom).astype(g.dtype), grads)
  full = {k: grads[k] if k in grads else jax.tree.map(jnp.zeros_like, v) for k, v in params.items()}
  return total / denom, full, aux


GradsFn = Callable[[Params, Batch, Optional[jax.Array]], Tuple[jax.Array, Params, Dict[str, jax.Array]]]


def make_train_step(model: PromptableT5, optimizer: optax.GradientTransformation, *, trainable: str = 'all',
                    num_microbatches: int = 1, dropout_seed: Optional[int] = 0,
                    learning_rate_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
                    grads_fn: Optional[GradsFn] = None):
  """Returns ``step(state, batch) -> (state, metrics)`` (pure; jit it with the trainer's shardings).

  Dropout uses ``fold_in(PRNGKey(dropout_seed), step)``, so a resumed run draws the same masks; pass
  ``dropout_seed=None`` to train without dropout.

  `grads_fn(params, batch, rng) -> (loss, grads, metrics)` replaces the MTL gradient (`loss_and_grads`),
  e.g. with a meta-gradient (`promptjax.meta.algorithms.make_meta_train_step`); its metrics (with
  ``num_tokens`` for the tokens/s summary) are reported next to ``loss`` and ``grad_norm``.
  """
  if grads_fn is None:
    def grads_fn(params, batch, rng):
      loss, grads, aux = loss_and_grads(model, params, batch, rng, trainable, num_microbatches)
      return loss, grads, {'num_tokens': aux['num_tokens'], 'num_examples': aux['num_examples']}

  def step(state: TrainState, batch: Batch):
    rng = None
    if dropout_seed is not None and model.config.dropout_rate > 0:
      rng = jax.random.fold_in(jax.random.PRNGKey(dropout_seed), state.step)
    loss, grads, extra = grads_fn(state.params, batch, rng)
    keys = trainable_keys(state.params, trainable)
    grad_norm = optax.tree.norm({k: grads[k] for k in keys})
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'grad_norm': grad_norm, **extra}
    if learning_rate_fn is not None:
      metrics['learning_rate'] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step
