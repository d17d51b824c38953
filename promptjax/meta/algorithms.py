"""Meta-gradients for promptability: FOMAML and adapted Reptile (Wu et al. 2022), prompt-only MAML /
FoMAML / Reptile / MTL (Qin et al. 2023), all on the one inner loop of `promptjax.meta.inner`.

A meta-batch holds M clones (tasks). Clone b has support batches ``support[b]`` ([T, batch, ...]: one
per inner step; a T axis of 1 is broadcast to all steps, the official Wu et al. FOMAML's reuse of one
support batch) and a query batch ``query[b]`` ([batch, ...]). With φ the parameters, m the prompt mask
and α the inner learning rate (Wu et al. Appendix B):

* ``fomaml``: φ_b = T prompt-only inner steps from φ; g = mean_b ∇L_query_b(φ_b) for every trainable
  parameter (Algorithm 1; the first-order approximation: no gradient through the inner steps).
* ``maml``: g = mean_b ∂/∂φ L_query_b(U_T(φ)), differentiating through the inner updates (Qin et al.
  Eq. 2-3: second order). ``maml_backward='hvp'`` (the default) runs the backward pass through the inner
  loop as one Hessian-vector product per step (`promptjax.meta.inner.second_order_inner_loops`): memory
  independent of T; ``'autodiff'`` lets JAX reverse the inner loop, which keeps every step's forward and
  backward intermediates (`MetaConfig.remat` then rematerializes each step). Both give the same gradient.
* ``reptile``: Wu et al.'s adapted Reptile (Algorithm 2): after the T prompt steps one more step of *all*
  trainable parameters on the query batch with the inner optimizer, φ_b^{T+1}; g = (φ − mean_b φ_b^{T+1}) / α.
  With ``reptile_query_step=False`` it is plain Reptile (Nichol et al. 2018) on the prompt: g = (φ −
  mean_b φ_b^T) / α, which is Qin et al.'s prompt-only Reptile (the query batch is then only reported).
* ``mtl``: no inner loop; g = ∇ mean_b mean(L(support_b,1..T), L(query_b)) — Qin et al.'s multi-task
  baseline sees both the support and the query sets (§4.3: "fair data access").

Shared transformer, vmapped prompts. Only the prompt changes in the inner loop, so clones share the
transformer and only prompt copies are vmapped. For ``fomaml``/``maml``/``mtl`` the transformer
gradient is taken of the *mean* query loss over the vmapped clones (the transpose of broadcasting the
transformer is a sum): one transformer-sized gradient per chunk, never a stack of per-clone gradients.
Adapted Reptile needs per-clone full updates (the full step goes through a stateful, non-linear
optimizer), so there each chunk of ``chunk_size`` clones holds ``chunk_size`` transformer gradients.
Clones are processed ``chunk_size`` at a time (vmap width) in a `lax.scan` over M / chunk_size chunks
(clone i of chunk j is clone j + i·(M / chunk_size), so a chunk spans every data shard); the
result does not depend on the chunk size.

Inner optimizer state. Fresh per clone by default (paper semantics); ``carry_inner_state=True`` carries
it from clone to clone within a meta-step (the official Wu et al. code, which keeps one inner optimizer;
clones are then sequential, chunk_size 1; the state restarts at each outer step). For adapted Reptile the
full step updates the prompt with the clone's inner state and the transformer with a fresh inner state
(per-parameter step counts, as PyTorch's per-parameter optimizer state has); the joint gradient is
first clipped to ``inner_global_norm_clip`` (Wu et al.: 1.0), as is every prompt-only inner gradient.

Losses are the model's normalized losses (`PromptableT5.loss_normalization`, per clone and batch).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from promptjax.meta import inner as inner_lib
from promptjax.meta.inner import PROMPT, join_prompt, split_prompt
from promptjax.errors import MetaError

Params = Any
Batch = Mapping[str, jax.Array]

ALGORITHMS = ('fomaml', 'maml', 'reptile', 'mtl')
MAML_BACKWARDS = ('hvp', 'autodiff')


@dataclasses.dataclass(frozen=True)
class MetaConfig:
  """One meta-learning algorithm and its inner loop.

  Attributes:
    algorithm: 'fomaml' | 'maml' | 'reptile' | 'mtl' (see the module docstring).
    inner_steps: T, prompt-only inner steps per clone (Wu: 7; Qin: 1 / 1 / 10 for MAML/FoMAML/Reptile).
    inner_optimizer: optax transformation over the prompt (Wu: Adafactor lr 1e-3; Qin: SGD lr 3e-5);
      None means `promptjax.training.optimizers.sgd(inner_learning_rate)`. Build it *without* its own
      gradient clipping: `inner_global_norm_clip` clips.
    inner_learning_rate: α; Reptile's meta-gradient divides by it (Algorithm 2: 1 / (αB)).
    inner_global_norm_clip: clip every inner gradient to this global norm (Wu et al.: 1.0; None: off).
    reptile_query_step: adapted Reptile's final full step on the query batch (Wu, default True);
      False gives plain prompt Reptile (Qin).
    carry_inner_state: carry the inner optimizer state from clone to clone (official Wu code).
    chunk_size: clones per vmap chunk (None: all M at once); M must be a multiple of it.
    remat: rematerialize inner steps in MAML's second-order backward pass (``maml_backward='autodiff'``).
    maml_backward: how MAML differentiates through the inner loop: 'hvp' (a Hessian-vector product per
      step, recomputing that step: the default) or 'autodiff' (JAX reverses the whole loop).
    hvp_chunks: with 'hvp', the Hessian-vector products of a clone chunk run in this many parts, one after
      the other (less activation memory); it must divide the clone chunk. None: 2 when each device holds an
      even number of the chunk's clones (an HVP holds about twice a gradient's activations, so half the
      clones' HVPs hold about what the query's gradient does), else 1. `MetaLearning.check` resolves it
      from the mesh; `meta_gradient` alone counts the chunk's clones (one device).
  """
  algorithm: str = 'fomaml'
  inner_steps: int = 7
  inner_optimizer: Optional[optax.GradientTransformation] = None
  inner_learning_rate: float = 1e-3
  inner_global_norm_clip: Optional[float] = 1.0
  reptile_query_step: bool = True
  carry_inner_state: bool = False
  chunk_size: Optional[int] = None
  remat: bool = False
  maml_backward: str = 'hvp'
  hvp_chunks: Optional[int] = None

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise MetaError(f'Unknown meta-learning algorithm {self.algorithm!r}; choose one of {ALGORITHMS}.')
    if self.inner_steps < 1 and self.algorithm != 'mtl':
      raise MetaError(f'inner_steps must be >= 1 for {self.algorithm}, got {self.inner_steps}.')
    if not self.inner_learning_rate or callable(self.inner_learning_rate):
      raise MetaError('inner_learning_rate must be a positive float (Reptile divides by it).')
    if self.maml_backward not in MAML_BACKWARDS:
      raise MetaError(f'Unknown maml_backward {self.maml_backward!r}; choose one of {MAML_BACKWARDS}.')
    if self.hvp_chunks is not None and self.hvp_chunks < 1:
      raise MetaError(f'hvp_chunks must be >= 1, got {self.hvp_chunks}.')
    if self.chunk_size is not None and self.chunk_size < 1:
      raise MetaError(f'chunk_size must be >= 1 or None, got {self.chunk_size}.')

  def hvp_parts(self, clones: int) -> int:
    """The parts the Hessian-vector products of `clones` clones run in (`hvp_chunks`)."""
    if self.hvp_chunks is not None:
      return self.hvp_chunks
    return 2 if clones % 2 == 0 else 1

  @property
  def optimizer(self) -> optax.GradientTransformation:
    if self.inner_optimizer is not None:
      return self.inner_optimizer
    return optax.sgd(self.inner_learning_rate)


def _num_clones(query: Batch) -> int:
  return jax.tree.leaves(query)[0].shape[0]


def _support_steps(support: Batch, inner_steps: int) -> Batch:
  """[M, T or 1, b, ...] -> [M, inner_steps, b, ...] (a single support batch is reused every step)."""
  def fix(x):
    t = x.shape[1]
    if t == inner_steps:
      return x
    if t == 1:
      return jnp.broadcast_to(x, (x.shape[0], inner_steps) + x.shape[2:])
    raise MetaError(f'support batches have {t} inner steps but inner_steps={inner_steps}; give one '
                    f'support batch per inner step, or one to reuse for every step.')
  return jax.tree.map(fix, support)


def _axis(x: Any) -> Optional[int]:
  """vmap in_axes for an optional batched argument: 0, or None when the argument is None."""
  return None if x is None else 0


def meta_gradient(model, params: Params, support: Batch, query: Batch, cfg: MetaConfig, *,
                  trainable: str = 'all', rng: Optional[jax.Array] = None
                  ) -> Tuple[jax.Array, Params, Dict[str, jax.Array]]:
  """The meta-gradient of one meta-batch.

  Args:
    model: a `PromptableT5` with a prompt.
    params: its parameters {'token_embedder', 'encoder', 'decoder', 'prompt'}.
    support: per feature [M, T (or 1), batch, ...].
    query: per feature [M, batch, ...].
    cfg: the algorithm.
    trainable: the outer trainable group ('all' for Wu et al., 'prompt' for Qin et al.).
    rng: dropout key (None: no dropout).

  Returns:
    (mean query loss at the adapted prompt — for ``mtl`` the mean training loss over support and
    query —, gradient tree like `params` with zeros on frozen groups, metrics).
  """
  from promptjax.models.losses import default_loss_weights
  from promptjax.training.train_step import trainable_keys
  transformer, prompt = split_prompt(params)
  keys = trainable_keys(params, trainable)
  train_prompt = PROMPT in keys
  tr_train = {k: transformer[k] for k in keys if k != PROMPT}  # the trainable transformer groups
  tr_frozen = {k: v for k, v in transformer.items() if k not in tr_train}
  m = _num_clones(query)
  chunk = cfg.chunk_size or m
  if cfg.carry_inner_state:
    chunk = 1
  if m % chunk:
    raise MetaError(f'meta-batch size {m} is not a multiple of chunk_size={chunk}.')
  if cfg.algorithm == 'maml' and cfg.maml_backward == 'hvp' and chunk % cfg.hvp_parts(chunk):
    raise MetaError(f'hvp_chunks={cfg.hvp_chunks} does not divide the {chunk} clones of a chunk.')
  n_chunks = m // chunk
  steps = max(cfg.inner_steps, 1)
  support = _support_steps(support, steps)
  rngs = None if rng is None else jax.random.split(rng, m)
  opt = cfg.optimizer

  def loss_fn(p, batch, r):
    return model.loss_fn(p, batch, r)[0]

  def num_tokens(batch):
    w = batch.get('decoder_loss_weights')
    return jnp.sum(default_loss_weights(batch['decoder_target_tokens']) if w is None
                   else w.astype(jnp.float32))

  def run_inner(tr, p, sup, r, state):
    return inner_lib.inner_loop(loss_fn, tr, p, sup, opt, state, first_order=cfg.algorithm != 'maml',
                                global_norm_clip=cfg.inner_global_norm_clip, rng=r, remat=cfg.remat)

  def vinner(tr, p, sup_c, r_c, states_c):
    return jax.vmap(run_inner, in_axes=(None, None, 0, _axis(r_c),
                                        _axis(states_c)))(tr, p, sup_c, r_c, states_c)

  def qrng(r_c):
    return None if r_c is None else jax.vmap(lambda r: jax.random.fold_in(r, steps))(r_c)

  # Each chunk function: (states_c or None, support_c, query_c, rngs_c) ->
  #   (final states_c or None, {'transformer': summed grads, 'prompt': summed grads, 'loss': summed, ...}).
  def chunk_fomaml_maml(states_c, sup_c, q_c, r_c):
    q_r = qrng(r_c)

    if cfg.algorithm == 'fomaml':
      adapted, states, s_losses = vinner(transformer, prompt, sup_c, r_c, states_c)

      def total(tr_t, adapted_p):
        tr = {**tr_frozen, **tr_t}
        losses = jax.vmap(lambda p, q, r: loss_fn(join_prompt(tr, p), q, r),
                          in_axes=(0, 0, _axis(q_r)))(adapted_p, q_c, q_r)
        return jnp.sum(losses)

      loss, (g_t, g_p) = jax.value_and_grad(total, argnums=(0, 1))(tr_train, adapted)
      g_p = jax.tree.map(lambda g: jnp.sum(g, axis=0), g_p)
    else:  # maml: through the inner loop.
      def total(tr_t, p0):
        tr = {**tr_frozen, **tr_t}
        if cfg.maml_backward == 'hvp':
          prompts = jax.tree.map(lambda x: jnp.broadcast_to(x, (chunk,) + x.shape), p0)
          adapted, states, s_losses = inner_lib.second_order_inner_loops(
              loss_fn, tr_t, tr_frozen, prompts, sup_c, opt, states_c,
              global_norm_clip=cfg.inner_global_norm_clip, rngs=r_c, hvp_chunks=cfg.hvp_parts(chunk))
        else:
          adapted, states, s_losses = vinner(tr, p0, sup_c, r_c, states_c)
        losses = jax.vmap(lambda p, q, r: loss_fn(join_prompt(tr, p), q, r),
                          in_axes=(0, 0, _axis(q_r)))(adapted, q_c, q_r)
        return jnp.sum(losses), (states, s_losses)

      (loss, (states, s_losses)), (g_t, g_p) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
          tr_train, prompt)
    return states, {'transformer': g_t, 'prompt': g_p, 'loss': loss, 'support_losses': jnp.sum(s_losses, 0)}

  def chunk_reptile(states_c, sup_c, q_c, r_c):
    q_r = qrng(r_c)

    def clone(sup, q, r, qr, state):
      adapted, state, s_losses = run_inner(transformer, prompt, sup, r, state)
      if not cfg.reptile_query_step:
        q_loss = loss_fn(join_prompt(transformer, adapted), q, qr)
        delta_t = jax.tree.map(jnp.zeros_like, tr_train)
        return state, delta_t, jax.tree.map(jnp.subtract, adapted, prompt), q_loss, s_losses

      def q_loss_fn(tr_t, p):
        return loss_fn(join_prompt({**tr_frozen, **tr_t}, p), q, qr)

      q_loss, (g_t, g_p) = jax.value_and_grad(q_loss_fn, argnums=(0, 1))(tr_train, adapted)
      g_t, g_p = inner_lib.clip_by_global_norm((g_t, g_p), cfg.inner_global_norm_clip)
      if train_prompt:
        u_p, state = opt.update(g_p, state, adapted)
        new_prompt = optax.apply_updates(adapted, u_p)
      else:
        new_prompt = adapted
      if tr_train:
        u_t, _ = opt.update(g_t, opt.init(tr_train), tr_train)  # a fresh state for the transformer
      else:
        u_t = {}
      return state, u_t, jax.tree.map(jnp.subtract, new_prompt, prompt), q_loss, s_losses

    states, d_t, d_p, q_losses, s_losses = jax.vmap(
        clone, in_axes=(0, 0, _axis(r_c), _axis(q_r),
                        _axis(states_c)))(sup_c, q_c, r_c, q_r, states_c)
    # Meta-gradient contribution: (φ − φ_b) / α, summed here and divided by M below.
    g_t = jax.tree.map(lambda d: -jnp.sum(d, 0) / cfg.inner_learning_rate, d_t)
    g_p = jax.tree.map(lambda d: -jnp.sum(d, 0) / cfg.inner_learning_rate, d_p)
    return states, {'transformer': g_t, 'prompt': g_p, 'loss': jnp.sum(q_losses),
                    'support_losses': jnp.sum(s_losses, 0)}

  def chunk_mtl(states_c, sup_c, q_c, r_c):
    q_r = qrng(r_c)

    def total(tr_t, p):
      tr = {**tr_frozen, **tr_t}
      params_ = join_prompt(tr, p)

      def clone(sup, q, r, qr):
        s_losses = jax.vmap(lambda b, i: loss_fn(params_, b, None if r is None else jax.random.fold_in(r, i)))(
            sup, jnp.arange(steps))
        return (jnp.sum(s_losses) + loss_fn(params_, q, qr)) / (steps + 1), s_losses

      losses, s_losses = jax.vmap(clone, in_axes=(0, 0, _axis(r_c),
                                                  _axis(q_r)))(sup_c, q_c, r_c, q_r)
      return jnp.sum(losses), jnp.sum(s_losses, 0)

    (loss, s_losses), (g_t, g_p) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(tr_train, prompt)
    return states_c, {'transformer': g_t, 'prompt': g_p, 'loss': loss, 'support_losses': s_losses}

  chunk_fn = {'fomaml': chunk_fomaml_maml, 'maml': chunk_fomaml_maml, 'reptile': chunk_reptile,
              'mtl': chunk_mtl}[cfg.algorithm]

  split = inner_lib.split_clones
  xs = (split(support, n_chunks), split(query, n_chunks), None if rngs is None else split(rngs, n_chunks))
  if cfg.carry_inner_state and cfg.algorithm != 'mtl':
    init_state = opt.init(prompt)

    def body(carry, x):
      acc, state = carry
      sup_c, q_c, r_c = x
      states, out = chunk_fn(jax.tree.map(lambda s: s[None], state), sup_c, q_c, r_c)
      return (jax.tree.map(jnp.add, acc, out), jax.tree.map(lambda s: s[0], states)), None
  else:
    init_state = None

    def body(carry, x):
      acc, _ = carry
      sup_c, q_c, r_c = x
      _, out = chunk_fn(None, sup_c, q_c, r_c)
      return (jax.tree.map(jnp.add, acc, out), None), None

  init_states_c = None if init_state is None else jax.tree.map(lambda s: s[None], init_state)
  if n_chunks == 1:
    _, acc = chunk_fn(init_states_c, *jax.tree.map(lambda x: x[0], xs))
  else:
    out_shape = jax.eval_shape(lambda x: chunk_fn(init_states_c, *x)[1], jax.tree.map(lambda x: x[0], xs))
    acc0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)
    (acc, _), _ = jax.lax.scan(body, (acc0, init_state), xs)

  mean = lambda t: jax.tree.map(lambda g: g / m, t)
  g_t, g_p = mean(acc['transformer']), mean(acc['prompt'])
  grads = {k: g_t[k] if k in g_t else jax.tree.map(jnp.zeros_like, v) for k, v in transformer.items()}
  grads[PROMPT] = g_p if train_prompt else jax.tree.map(jnp.zeros_like, prompt)
  s_losses = acc['support_losses'] / m
  rows = lambda t: jax.tree.map(lambda x: x.reshape((-1, x.shape[-1])), t)  # [examples, length]
  tokens = num_tokens(rows(support)) + num_tokens(rows(query))
  examples = sum(int(np.prod(t['decoder_target_tokens'].shape[:-1])) for t in (support, query))
  metrics = {'query_loss': acc['loss'] / m, 'support_loss_first': s_losses[0],
             'support_loss_last': s_losses[-1], 'num_tokens': tokens,
             'num_examples': jnp.asarray(examples, jnp.float32)}
  return acc['loss'] / m, grads, metrics


def split_meta_batch(flat: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """{'support/<feature>': ..., 'query/<feature>': ...} -> (support, query) feature dicts."""
  support = {k.split('/', 1)[1]: v for k, v in flat.items() if k.startswith('support/')}
  query = {k.split('/', 1)[1]: v for k, v in flat.items() if k.startswith('query/')}
  if not support or not query:
    raise MetaError(f'a meta-batch needs support/... and query/... features, got {sorted(flat)}.')
  return support, query


def make_meta_train_step(model, optimizer: optax.GradientTransformation, cfg: MetaConfig, *,
                         trainable: str = 'all', dropout_seed: Optional[int] = 0,
                         learning_rate_fn: Optional[Callable[[jax.Array], jax.Array]] = None):
  """``step(state, flat_meta_batch) -> (state, metrics)``: the trainer's train step
  (`promptjax.training.train_step.make_train_step`) with the meta-gradient in place of the MTL gradient,
  fed to the outer optimizer (Wu et al.: Adafactor lr 1e-3, clip 1.0, all parameters; Qin et al.:
  Adafactor lr 0.5 on the prompt)."""
  from promptjax.training import train_step as ts

  def grads_fn(params, batch, rng):
    support, query = split_meta_batch(batch)
    return meta_gradient(model, params, support, query, cfg, trainable=trainable, rng=rng)

  return ts.make_train_step(model, optimizer, trainable=trainable, dropout_seed=dropout_seed,
                            learning_rate_fn=learning_rate_fn, grads_fn=grads_fn)
