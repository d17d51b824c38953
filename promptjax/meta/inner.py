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

`second_order_inner_loops` is the same second-order loop (for a chunk of clones) with a hand-written backward pass (the default of
`MetaConfig.maml_backward`). Differentiating `inner_loop` lets JAX reverse each step's backward pass, so it
keeps every step's forward *and* backward intermediates. The backward of one step is
p_{t+1} = F(p_t, s_t, g_t) with g_t = ∇_p L(W, p_t): the cotangent of p_t is the transpose of ∂F (prompt-
sized, cheap) plus H(W, p_t)[:, p]·v with v the cotangent of g_t, a Hessian-vector product that
`jax.jvp` of the gradient computes (forward-over-reverse) after the query. The forward keeps only the
trajectory (p_t, s_t, g_t: prompt-sized); the backward recomputes one step at a time. Both give the same
gradient up to round-off (tests/meta).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
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


def after_cotangent(tree: Any, cotangent: Any) -> Any:
  """`tree`, for a recomputation in a hand-written backward pass that must wait for `cotangent`.

  The recomputation must neither be merged with the forward pass's (an optimization barrier, as
  `jax.checkpoint` uses) nor start before the cotangent arrives. With one inner step the loops disappear
  and XLA:CPU, which does not order work by an optimization barrier alone, ran the recomputed forward pass
  before the query's backward pass and held both sets of activations (MAML: 3.0x FoMAML's memory instead
  of 1.8x). So the floating-point leaves also get an exact no-op that depends on the cotangent, + 0·Σct (a
  NaN cotangent gives a NaN gradient either way)."""
  tree, cotangent = jax.lax.optimization_barrier((tree, cotangent))
  zero = jnp.sum(jnp.asarray([jnp.sum(c) for c in jax.tree.leaves(cotangent)])) * 0.0
  return jax.tree.map(lambda x: x + zero.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.inexact) else x, tree)


def second_order_inner_loops(loss_fn: LossFn, trainable: Params, frozen: Params, prompts: Params,
                             support: Batch, inner_opt: optax.GradientTransformation, states: Any = None, *,
                             global_norm_clip: Optional[float] = None, rngs: Optional[jax.Array] = None,
                             hvp_chunks: int = 1) -> Tuple[Params, Any, jax.Array]:
  """The inner loops of a chunk of clones, second order, with the backward pass written as Hessian-vector
  products: what `jax.vmap` of `inner_loop(..., first_order=False)` returns, differentiating to the same
  gradient.

  Args:
    loss_fn: as for `inner_loop`.
    trainable: the transformer groups the outer gradient differentiates (their cotangent, H[W, p]·v, needs
      weight gradients: one transformer-sized sum over the clones, never one per clone).
    frozen: the other transformer groups (constants).
    prompts: each clone's initial prompt, [M, ...].
    support: [M, T, batch, ...], one batch per step.
    inner_opt: the inner optimizer; `states` its per-clone states [M, ...] (None: fresh).
    global_norm_clip: as for `inner_loop`.
    rngs: per-clone dropout keys [M] (None: no dropout).
    hvp_chunks: the backward pass computes the Hessian-vector products of M / hvp_chunks clones at a time
      (clone i of chunk j is clone j + i·hvp_chunks, as `MetaConfig.chunk_size` splits), which divides
      their activation memory by hvp_chunks; M must be a multiple of it.

  Returns:
    (adapted prompts [M, ...], final states, support losses [M, T]).

  The forward keeps only the trajectory (p_t, s_t, g_t: prompt-sized). The backward runs the steps in
  reverse: with p_{t+1} = F(p_t, s_t, g_t) and g_t = ∇_p L(W, p_t), the cotangent of p_t is the transpose
  of ∂F (prompt-sized, cheap) plus H(W, p_t)[:, p]·v, v the cotangent of g_t, which one `jax.jvp` of the
  gradient computes (forward-over-reverse). Memory does not grow with T: one step's forward and tangent
  activations at a time, instead of the forward and backward intermediates of every step.
  """
  if states is None:
    states = jax.vmap(inner_opt.init)(prompts)
  rng_axis = None if rngs is None else 0

  def clone_loss(w, p, batch, r):
    return loss_fn(join_prompt({**frozen, **w}, p), batch, r)

  def losses(w, p, batch, r, i):
    """[M] losses of the clones at step i."""
    step_rngs = None if r is None else jax.vmap(lambda k: jax.random.fold_in(k, i))(r)
    return jax.vmap(clone_loss, in_axes=(None, 0, 0, rng_axis))(w, p, batch, step_rngs)

  def update(p, s, g):
    updates, s = inner_opt.update(clip_by_global_norm(g, global_norm_clip), s, p)
    return optax.apply_updates(p, updates), s

  steps_first = lambda t: jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), t)   # [M, T, ...] <-> [T, M, ...]

  def summed(w, p, batch, r, i, weights=None):
    ls = losses(w, p, batch, r, i)
    return jnp.sum(ls if weights is None else weights * ls), ls

  def forward(w, p, sup, s, r):
    def step(carry, xs):
      p, s = carry
      i, batch = xs
      (_, ls), g = jax.value_and_grad(summed, argnums=1, has_aux=True)(w, p, batch, r, i)
      return jax.vmap(update)(p, s, g), (ls, (p, s, g))
    steps = jax.tree.leaves(sup)[0].shape[1]
    (p_t, s_t), (ls, trajectory) = jax.lax.scan(step, (p, s), (jnp.arange(steps), steps_first(sup)))
    return (p_t, s_t, jnp.swapaxes(ls, 0, 1)), trajectory

  @jax.custom_vjp
  def run(w, p, sup, s, r):
    return forward(w, p, sup, s, r)[0]

  def run_fwd(w, p, sup, s, r):
    out, trajectory = forward(w, p, sup, s, r)
    return out, (w, sup, r, trajectory)

  def run_bwd(res, cts):
    w, sup, r, (ps, ss, gs) = res      # the trajectory is [T, M, ...]
    ct_p, ct_s, ct_losses = cts
    # The optimizer state's integer leaves (step counts) have float0 cotangents, kept out of the scan.
    s_leaves, s_def = jax.tree.flatten(states)
    floats = [jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in s_leaves]

    def float_part(tree):
      return [x for f, x in zip(floats, jax.tree.leaves(tree)) if f]

    def with_ints(float_values):
      it = iter(float_values)
      return jax.tree.unflatten(s_def, [next(it) if f else np.zeros(jnp.shape(x), jax.dtypes.float0)
                                        for f, x in zip(floats, s_leaves)])

    def step(carry, xs):
      ct_p, ct_s_f, ct_w = carry
      i, batch, p, s, g, ct_l = xs
      batch, p = after_cotangent((batch, p), ct_p)
      ct_p_direct, ct_s_prev, ct_g = jax.vjp(jax.vmap(update), p, s, g)[1]((ct_p, with_ints(ct_s_f)))
      add = lambda a, b: jax.tree.map(jnp.add, a, b)

      def hvp(q, v, c_l, b, rr):
        # G(q, c) = ∇_(W, q) Σ_m c_m L_m(W, q_m) at c = 1, differentiated along (v, c_l):
        # Σ_m H_m[:, p]·v_m + Σ_m c_l_m ∇L_m, both parts of the cotangent in one forward-over-reverse pass.
        grads = lambda q_, c: jax.grad(lambda w_, q__: summed(w_, q__, b, rr, i, c)[0], argnums=(0, 1))(w, q_)
        return jax.jvp(grads, (q, jnp.ones_like(c_l)), (v, c_l))[1]

      if hvp_chunks == 1:
        h_w, h_p = hvp(p, ct_g, ct_l, batch, r)
      else:
        def chunk(acc, x):
          h_w_c, h_p_c = hvp(*x)
          return add(acc, h_w_c), h_p_c
        h_w, h_p = jax.lax.scan(chunk, jax.tree.map(jnp.zeros_like, w), split_clones(
            (p, ct_g, ct_l, batch, r), hvp_chunks))
        h_p = _unsplit(h_p)
      return (add(ct_p_direct, h_p), float_part(ct_s_prev), add(ct_w, h_w)), None

    steps = ct_losses.shape[1]
    carry = (ct_p, float_part(ct_s), jax.tree.map(jnp.zeros_like, w))
    xs = (jnp.arange(steps), steps_first(sup), ps, ss, gs, jnp.swapaxes(ct_losses, 0, 1))
    (ct_p0, ct_s0, ct_w), _ = jax.lax.scan(step, carry, xs, reverse=True)
    return ct_w, ct_p0, None, with_ints(ct_s0), None

  run.defvjp(run_fwd, run_bwd)
  return run(trainable, prompts, support, states, rngs)


def split_clones(tree: Any, n: int) -> Any:
  """[M, ...] -> [n, M / n, ...]; chunk j holds clones j, j + n, ... (every chunk spans every data shard)."""
  return jax.tree.map(lambda x: jnp.swapaxes(x.reshape((x.shape[0] // n, n) + x.shape[1:]), 0, 1), tree)


def _unsplit(tree: Any) -> Any:
  """The inverse of `split_clones`."""
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:]), tree)
