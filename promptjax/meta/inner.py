"""The one inner loop every meta-learning algorithm of promptjax reuses: prompt-only updates.

Wu et al. 2022 (§3, Appendix B, Algorithms 1-2) and Qin et al. 2023 (§3.2, §4.3) both adapt *only the
prompt* in the inner loop: a clone of the model runs ``inner_steps``
optimizer steps on support batches, updating ``params['prompt']`` while the transformer stays fixed.
Clones therefore share the transformer; only the prompt copies are vmapped (`vmap` over the
meta-batch axis with the transformer broadcast).

  prompt_{t+1} = prompt_t + inner_opt.update(clip(∇_prompt L(T, prompt_t; support_t)))

`lax.scan` runs the steps. The inner optimizer is any optax transformation over the prompt subtree
(Adafactor lr 1e-3 in Wu et al.; SGD lr 3e-5 in Qin et al.); its state starts fresh per clone unless a
state is passed in (the official Wu et al. code carries it from clone to clone: `MetaConfig.carry_inner_state`).

First order (FOMAML, Reptile): the adapted prompt is a constant of the outer gradient
(`stop_gradient`). Second order (MAML): the outer gradient flows through every inner update
(`first_order=False`); `remat=True` recomputes each step's forward pass in the backward pass instead of
storing it (`jax.checkpoint` on the scan body).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

Params = Any
Batch = Mapping[str, jax.Array]
PROMPT = 'prompt'


def split_prompt(params: Params) -> Tuple[Params, Params]:
  """(transformer subtrees, prompt subtree) of a PromptableT5 parameter tree."""
  if PROMPT not in params:
    raise ValueError('Meta-learning adapts the prompt in its inner loop, but the parameters have no '
                     f'prompt (only {sorted(params)}): use PromptConfig(kind="shallow" or "deep").')
  return {k: v for k, v in params.items() if k != PROMPT}, params[PROMPT]


def join_prompt(transformer: Params, prompt: Params) -> Params:
  return {**transformer, PROMPT: prompt}


def clip_by_global_norm(tree: Params, max_norm: Optional[float]) -> Params:
  """`optax.clip_by_global_norm` applied once to `tree` (stateless), or `tree` if `max_norm` is None."""
  if max_norm is None:
    return tree
  return optax.clip_by_global_norm(max_norm).update(tree, optax.EmptyState())[0]


LossFn = Callable[[Params, Batch, Optional[jax.Array]], jax.Array]


def inner_loop(loss_fn: LossFn, transformer: Params, prompt: Params, support: Batch,
               inner_opt: optax.GradientTransformation, inner_state: Any = None, *,
               first_order: bool = True, global_norm_clip: Optional[float] = None,
               rng: Optional[jax.Array] = None, remat: bool = False, num_steps: Optional[int] = None
               ) -> Tuple[Params, Any, jax.Array]:
  """Runs prompt-only inner steps on `support` ([T, batch, ...] per feature: one batch per step).

  With `num_steps`, `support` is one batch (no step axis) reused for every one of the `num_steps`
  steps, without copying it (few-shot prompt tuning: the same 16 examples for 100 epochs).

  Args:
    loss_fn: ``loss_fn(params, batch, rng) -> scalar`` (the model's normalized loss).
    transformer: the shared transformer parameters (not updated; constant under `first_order`).
    prompt: the initial prompt subtree.
    support: support batches with a leading inner-step axis T.
    inner_opt: the inner optax optimizer over the prompt subtree.
    inner_state: its state to start from (None: ``inner_opt.init(prompt)``, a fresh clone).
    first_order: stop gradients through the trajectory (FOMAML, Reptile); False for MAML.
    global_norm_clip: clip each inner gradient to this global norm first (Wu et al.: 1.0).
    rng: dropout key (folded with the step index), or None for no dropout.
    remat: rematerialize each step's forward pass in the backward pass (second order only).
    num_steps: reuse the single batch `support` for this many steps.

  Returns:
    (adapted prompt, final inner optimizer state, support losses [T] before each step).
  """
  if first_order:  # the whole trajectory is a constant of the outer gradient
    transformer, prompt = jax.lax.stop_gradient((transformer, prompt))
  state = inner_opt.init(prompt) if inner_state is None else inner_state

  def step(carry, xs):
    p, s = carry
    i, batch = xs if num_steps is None else (xs, support)
    step_rng = None if rng is None else jax.random.fold_in(rng, i)
    loss, g = jax.value_and_grad(lambda q: loss_fn(join_prompt(transformer, q), batch, step_rng))(p)
    g = clip_by_global_norm(g, global_norm_clip)
    updates, s = inner_opt.update(g, s, p)
    return (optax.apply_updates(p, updates), s), loss

  if remat and not first_order:
    step = jax.checkpoint(step)
  if num_steps is None:
    xs = (jnp.arange(jax.tree.leaves(support)[0].shape[0]), support)
  else:
    xs = jnp.arange(num_steps)
  (prompt, state), losses = jax.lax.scan(step, (prompt, state), xs)
  return prompt, state, losses
