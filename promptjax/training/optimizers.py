"""Optimizers: optax Adafactor as the papers configure it, T5X-style schedules, trainable groups.

Everything here returns a plain `optax.GradientTransformation`; nothing is hand-written that optax
already provides.

Adafactor (Wu et al. 2022, Appendix C; Shazeer & Stern 2018). The continued-pretraining
runs "follow Raffel et al. (2020) and Sanh et al. (2022) and use Adafactor with a 0.001 learning rate
[...] We clip gradients to unit norm", i.e. the T5/T5X Adafactor: no parameter scaling
(`multiply_by_parameter_scale=False`), second-moment decay β2_t = 1 − t^(−0.8), ε1 = 1e-30, update
clipping at RMS 1.0, no momentum, and clipping of the gradient by its global norm 1.0 (`adafactor`
chains `optax.clip_by_global_norm` *before* `optax.adafactor`, as T5X's
`global_norm_clip_threshold` does).

The step counter (`continue_from_step`). optax's Adafactor state counts updates from 0, so a fresh optimizer
would restart the β2_t schedule at t = 1 (β2_1 = 0: the first update sees only the current gradient).
T5X keeps counting from the global step stored in the checkpoint it continues from. promptjax imports
the parameters of a T5X / HF checkpoint but not its optimizer state (`promptjax.checkpoints`), so
`adafactor(continue_from_step=S)` makes the schedule continue from global step S: the k-th update of this
optimizer (k = 1, 2, ...) uses t = S + k. (Resuming a promptjax run restores its own optax state,
counter included: keep the same continue_from_step.) This is the
*opposite* of T5X's `Adafactor.step_offset` and optax's `decay_offset`, which are *subtracted*
from a counter that already holds the global step ("set this to the first step of fine-tuning to
reset the accumulators"); we pass `decay_offset=-continue_from_step` to optax. `continue_from_step=S` with a fresh
state equals T5X with its step restored to S and its step_offset 0, except that the second moments
themselves restart from zero: with β2 close to 1 the first updates are then up to ~(1−β2_S)^(−1/2)
times larger before update clipping, which bounds their RMS by `clipping_threshold` (x learning rate).

Factoring and short prompts (DESIGN note). Adafactor factors a parameter's second moment into row and
column statistics only when its *second-largest* dimension is >= `min_dim_size_to_factor` (128, as in
T5X and Mesh TF). A shallow prompt [L, d] with L = 20 (Wu) or 100 (Qin, SUPMER), and every
deep-prompt key/value table [L, heads·head_dim], therefore keeps a full, unfactored second moment `v`
of the prompt's own shape (optax leaves 1-element placeholders in `v_row`/`v_col`): the update is
g / sqrt(v) element by element (RMSProp without momentum), with update clipping per table. The memory
cost is one extra copy of the prompt, negligible. HF transformers' PyTorch `Adafactor` factors every
tensor of rank >= 2; pass `min_dim_size_to_factor=1` to reproduce that (the factored rank-1 estimate
then mixes statistics across the L prompt positions). Vectors (layer-norm scales) are never factored,
and in the T5 embedding [vocab, d] / logits [d, vocab] only when d >= 128.

Trainable groups (Wu et al. §3). Parameters are one pytree with the transformer (`token_embedder`,
`encoder`, `decoder`) and, when the model has one, the prompt (`prompt`). `masked_optimizer` trains a
group by *label*, with `optax.multi_transform({'trainable': opt, 'frozen': optax.set_to_zero()})`:
frozen leaves get exactly zero updates and no optimizer state, and every statistic computed inside
`opt` -- notably the global gradient norm of `adafactor`'s clipping -- is computed over the trainable
leaves only (the norm of the gradient of what is being trained; gradients of frozen leaves, even huge
or NaN, never touch the update). To clip by the norm of the full gradient instead, chain
`optax.clip_by_global_norm` outside the masked optimizer and pass `global_norm_clip=None`.

Other optimizers: `sgd` for inner loops (Qin et al. 2023, §5.3: inner learning rate
3e-5), `adamw` for SUPMER (Pan et al. 2023, Table 6: Adam, linear schedule, no warm-up).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import optax

from promptjax.models.groups import (GROUP_ALIASES, GROUPS, PROMPT_KEY, TRANSFORMER_KEYS,  # re-exported
                                     canonical_group)

Params = Any
ScalarOrSchedule = Union[float, optax.Schedule]

# Labels of `trainable_labels`, the keys of `masked_optimizer`'s multi_transform.
TRAINABLE = 'trainable'
FROZEN = 'frozen'

# --------------------------------------------------------------------------------------------------
# Trainable groups.


def _key_name(key: Any) -> Any:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return getattr(key, attr)
  return key


def _top_level_keys(params: Params) -> Tuple[str, ...]:
  if not isinstance(params, Mapping):
    raise ValueError(f'Expected a parameter mapping with top-level keys '
                     f'{TRANSFORMER_KEYS + (PROMPT_KEY,)}, got {type(params).__name__}.')
  keys = tuple(params.keys())
  unknown = [k for k in keys if k not in TRANSFORMER_KEYS + (PROMPT_KEY,)]
  if unknown:
    raise ValueError(f'Unknown top-level parameter subtree(s) {unknown}: parameters must consist of '
                     f'the transformer {list(TRANSFORMER_KEYS)} and optionally {PROMPT_KEY!r}.')
  return keys


def trainable_labels(params: Params, trainable: str = 'all') -> Params:
  """A pytree like `params` with 'trainable' / 'frozen' at every leaf (Wu et al. §3).

  Args:
    params: the model parameters, or an abstract version of them (ShapeDtypeStructs, optionally
      boxed with flax partitioning metadata; labels then follow that structure).
    trainable: 'all', 'transformer' or 'prompt', or an alias from `GROUP_ALIASES`.

  Raises:
    ValueError: an unknown group name (the message lists the valid ones), 'prompt' requested for
      parameters without a `prompt` subtree, a group with no parameters at all, or unknown top-level
      parameter subtrees.
  """
  group = canonical_group(trainable)
  keys = _top_level_keys(params)
  if group == 'prompt' and PROMPT_KEY not in keys:
    raise ValueError(f'trainable={trainable!r} trains only the prompt, but the parameters have no '
                     f'{PROMPT_KEY!r} subtree (top-level keys: {sorted(keys)}); build the model with '
                     f"PromptConfig(kind='shallow' or 'deep').")

  def label(path, _):
    is_prompt = _key_name(path[0]) == PROMPT_KEY
    train = group == 'all' or (group == 'prompt') == is_prompt
    return TRAINABLE if train else FROZEN

  labels = jax.tree_util.tree_map_with_path(label, params)
  if TRAINABLE not in jax.tree_util.tree_leaves(labels):
    raise ValueError(f'trainable={trainable!r} selects no parameters (top-level keys: '
                     f'{sorted(keys)}).')
  return labels


def trainable_mask(params: Params, trainable: str = 'all') -> Params:
  """Boolean version of `trainable_labels` (True = trainable), e.g. for `optax.masked` or the
  prompt masks m / M of Wu et al. Appendix B."""
  return jax.tree_util.tree_map(lambda l: l == TRAINABLE, trainable_labels(params, trainable))


def masked_optimizer(opt: optax.GradientTransformation, params_or_abstract: Optional[Params] = None,
                     trainable: str = 'all') -> optax.GradientTransformationExtraArgs:
  """Applies `opt` to the `trainable` group only; every other leaf gets an exactly-zero update.

  Built on `optax.multi_transform({'trainable': opt, 'frozen': optax.set_to_zero()}, labels)`:
  `opt` sees the trainable leaves only (frozen ones are `optax.MaskedNode`s inside it), so it keeps
  no state for frozen leaves and any global statistic it computes -- the global-norm gradient
  clipping of `adafactor` -- covers the trainable gradients only. Frozen gradients are never read
  (NaN or huge frozen gradients do not leak into the update).

  Args:
    opt: the optimizer for the trainable parameters (e.g. `adafactor()`).
    params_or_abstract: parameters or their abstract shapes; when given, the group is validated now
      (otherwise at `init`). Labels are recomputed from the tree passed to `init`/`update`, so the
      same optimizer works for dict or FrozenDict parameters.
    trainable: 'all', 'transformer' or 'prompt' (or an alias, see `GROUP_ALIASES`).

  Returns:
    An optax transformation whose state is `multi_transform`'s (`inner_states['trainable']` holds
    `opt`'s state over the trainable leaves, `inner_states['frozen']` is empty).
  """
  canonical_group(trainable)  # Unknown names fail here, with or without params.
  if params_or_abstract is not None:
    trainable_labels(params_or_abstract, trainable)  # Fail early with a clear message.
  masked = optax.multi_transform({TRAINABLE: opt, FROZEN: optax.set_to_zero()},
                                 lambda tree: trainable_labels(tree, trainable))
  entry = _LEARNING_RATES.get(id(opt))
  return _remember(masked, entry[1]) if entry is not None and entry[0] is opt else masked


# The learning rate each optimizer built here was given, so the trainer can log it (T5X logs
# `learning_rate`) without wrapping the state in `optax.inject_hyperparams` (which would change the
# checkpoint layout). Keyed by id; the optimizer is kept alive with its entry so the id stays unique.
_LEARNING_RATES: Dict[int, Tuple[optax.GradientTransformation, ScalarOrSchedule]] = {}


def _remember(tx: optax.GradientTransformation, learning_rate: Optional[ScalarOrSchedule]):
  if learning_rate is not None:
    _LEARNING_RATES[id(tx)] = (tx, learning_rate)
  return tx


def learning_rate_schedule(tx: Optional[optax.GradientTransformation]) -> Optional[Callable[[Any], Any]]:
  """The learning rate (a schedule of the update count) `tx` was built with by this module's optimizer
  functions, or None for an optimizer built elsewhere."""
  entry = _LEARNING_RATES.get(id(tx)) if tx is not None else None
  if entry is None or entry[0] is not tx:
    return None
  lr = entry[1]
  return lr if callable(lr) else (lambda step: lr)


# --------------------------------------------------------------------------------------------------
# Optimizers.

def _with_global_norm_clip(tx: optax.GradientTransformation, global_norm_clip: Optional[float],
                           learning_rate: ScalarOrSchedule) -> optax.GradientTransformation:
  if global_norm_clip is not None:
    tx = optax.chain(optax.clip_by_global_norm(global_norm_clip), tx)
  return _remember(tx, learning_rate)


def adafactor(learning_rate: ScalarOrSchedule = 1e-3, *,
              decay_rate: float = 0.8,
              continue_from_step: int = 0,
              clipping_threshold: Optional[float] = 1.0,
              multiply_by_parameter_scale: bool = False,
              min_dim_size_to_factor: int = 128,
              momentum: Optional[float] = None,
              weight_decay_rate: Optional[ScalarOrSchedule] = None,
              weight_decay_rate_lr_exponent: Optional[float] = None,
              epsilon1: float = 1e-30,
              factored: bool = True,
              global_norm_clip: Optional[float] = 1.0) -> optax.GradientTransformation:
  """Adafactor as in T5X and Wu et al. 2022 Appendix C: `optax.adafactor` after global-norm clipping.

  The update of a parameter X with gradient G at the k-th step (Shazeer & Stern 2018, Alg. 4/5):
    G ← G / max(1, ‖all trainable G‖₂ / global_norm_clip)                     (if global_norm_clip)
    β2 = 1 − t^(−decay_rate),  t = continue_from_step + k
    factored (2nd-largest dim >= min_dim_size_to_factor): row/column means R, C of G² + ε1
      decayed with β2, V̂ = R Cᵀ / mean(R);  otherwise V = β2 V + (1 − β2)(G² + ε1), V̂ = V
    U = G / sqrt(V̂);  U ← U / max(1, RMS(U) / clipping_threshold)
    X ← X − lr_k · U − wd_k · X

  Args:
    learning_rate: a float or an optax schedule (see `rsqrt_decay_schedule` etc.); Wu et al. use a
      constant 1e-3, Qin et al. 0.5 for prompt-only meta/multi-task training (§5.3).
    decay_rate: exponent of the β2_t schedule (0.8 in T5/T5X).
    continue_from_step: global step the run continues from (e.g. the imported checkpoint's step): the k-th
      update uses t = continue_from_step + k. Note the sign: T5X's/optax's offsets are subtracted (see the
      module docstring). Must be >= 0.
    clipping_threshold: update clipping threshold d on the RMS of each update (None disables).
    multiply_by_parameter_scale: scale steps by each parameter's RMS (off in the papers).
    min_dim_size_to_factor: factor only when two dimensions are at least this large (128): a 20×d
      or 100×d prompt keeps a full, unfactored second moment (see the module docstring).
    momentum: optional first-moment EMA (T5X's beta1; None in the papers).
    weight_decay_rate: decoupled weight decay wd: X ← X − wd·X − lr·U (T5X's and optax's convention,
      not multiplied by the learning rate). A float or a schedule.
    weight_decay_rate_lr_exponent: as in T5X, use wd_k = (weight_decay_rate or 1) · lr_k ** exponent;
      exponent 1 gives the PyTorch/HF Adafactor convention X ← X − lr·wd·X (e.g. Qin et al.'s lr 0.5,
      weight decay 1e-5).
    epsilon1: ε1 added to G² (1e-30).
    factored: whether to factor second moments at all.
    global_norm_clip: clip the gradient to this global L2 norm before the Adafactor statistics
      (1.0 in Wu et al.: "we clip gradients to unit norm"); None disables. Inside
      `masked_optimizer` the norm is over the trainable gradients only.

  Returns:
    `optax.chain(optax.clip_by_global_norm(global_norm_clip), optax.adafactor(...))`.
  """
  if continue_from_step < 0:
    raise ValueError(f'continue_from_step must be >= 0 (the global step to continue from), got '
                     f'{continue_from_step}.')
  if weight_decay_rate_lr_exponent:
    rate = 1.0 if weight_decay_rate is None else weight_decay_rate
    if callable(rate) or callable(learning_rate):
      def wd_schedule(count, rate=rate, exponent=weight_decay_rate_lr_exponent):
        r = rate(count) if callable(rate) else rate
        lr = learning_rate(count) if callable(learning_rate) else learning_rate
        return r * lr ** exponent
      weight_decay_rate = wd_schedule
    else:
      weight_decay_rate = rate * learning_rate ** weight_decay_rate_lr_exponent
  tx = optax.adafactor(
      learning_rate=learning_rate,
      min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate,
      decay_offset=-continue_from_step,  # optax uses t = count - decay_offset + 1.
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold,
      momentum=momentum,
      weight_decay_rate=weight_decay_rate,
      eps=epsilon1,
      factored=factored)
  return _with_global_norm_clip(tx, global_norm_clip, learning_rate)


def sgd(learning_rate: ScalarOrSchedule, *, momentum: Optional[float] = None, nesterov: bool = False,
        global_norm_clip: Optional[float] = None) -> optax.GradientTransformation:
  """Plain SGD, X ← X − lr·G, for inner loops (Qin et al. 2023 §5.3: inner learning rate 3e-5 for
  MAML / FoMAML / Reptile prompt updates); `optax.sgd` with optional global-norm clipping."""
  return _with_global_norm_clip(optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
                                global_norm_clip, learning_rate)


def adamw(learning_rate: ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.0, global_norm_clip: Optional[float] = None
          ) -> optax.GradientTransformation:
  """Adam(W) with PyTorch's defaults (SUPMER, Pan et al. 2023 Table 6: Adam, linear schedule, no
  warm-up; its downstream tuning uses AdamW, Appendix C.1). `weight_decay` follows AdamW
  (multiplied by the learning rate); 0 gives Adam."""
  return _with_global_norm_clip(
      optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay),
      global_norm_clip, learning_rate)


# --------------------------------------------------------------------------------------------------
# Learning-rate schedules (callables of the optimizer's update count, starting at 0).

def constant_schedule(value: float = 1e-3) -> optax.Schedule:
  """A constant learning rate (Wu et al. Appendix C: 1e-3; T5X's `constant` factor)."""
  return optax.constant_schedule(value)


def rsqrt_decay_schedule(base_learning_rate: float = 1.0, warmup_steps: int = 10_000, *,
                         linear_warmup: bool = False, continue_from_step: int = 0) -> optax.Schedule:
  """T5X's 'constant * rsqrt_decay' (the T5 pre-training default): lr = base / sqrt(max(step, warmup)).

  `step` = update count + `continue_from_step` (T5X evaluates its schedules at the global step). The lr is
  constant (base / sqrt(warmup)) for the first `warmup_steps`, then decays as 1/sqrt(step). With
  `linear_warmup` (T5X's 'constant * linear_warmup * rsqrt_decay') it is also multiplied by
  min(1, step / warmup_steps). With warmup_steps = 0 the denominator is floored at sqrt(1) instead of
  dividing by zero at step 0.
  """
  floor = float(max(warmup_steps, 1))

  def schedule(count):
    step = jnp.asarray(count, jnp.result_type(float)) + continue_from_step  # float64 under x64
    lr = base_learning_rate / jnp.sqrt(jnp.maximum(step, floor))
    if linear_warmup and warmup_steps > 0:
      lr = lr * jnp.minimum(1.0, step / warmup_steps)
    return lr
  return schedule


def warmup_linear_decay_schedule(peak_value: float, warmup_steps: int, total_steps: int,
                                 init_value: float = 0.0, end_value: float = 0.0) -> optax.Schedule:
  """Linear warm-up from `init_value` to `peak_value` over `warmup_steps`, then linear decay to
  `end_value` at `total_steps` (HF's `get_linear_schedule_with_warmup` with the default 0 ends; SUPMER
  Table 6 uses it with no warm-up and 100,000 steps). Constant `end_value` afterwards."""
  if not 0 <= warmup_steps < total_steps:
    raise ValueError(f'Need 0 <= warmup_steps < total_steps, got {warmup_steps}, {total_steps}.')
  decay = optax.linear_schedule(peak_value, end_value, total_steps - warmup_steps)
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(init_value, peak_value, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def warmup_cosine_decay_schedule(peak_value: float, warmup_steps: int, total_steps: int,
                                 init_value: float = 0.0, end_value: float = 0.0) -> optax.Schedule:
  """Linear warm-up to `peak_value`, then cosine decay to `end_value` at `total_steps` (counted from
  step 0, warm-up included): `optax.warmup_cosine_decay_schedule`."""
  if not 0 <= warmup_steps < total_steps:
    raise ValueError(f'Need 0 <= warmup_steps < total_steps, got {warmup_steps}, {total_steps}.')
  return optax.warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps, total_steps,
                                            end_value)


# --------------------------------------------------------------------------------------------------
# Gin factory.

OPTIMIZERS: Mapping[str, Callable[..., optax.GradientTransformation]] = {
    'adafactor': adafactor, 'sgd': sgd, 'adam': adamw, 'adamw': adamw}


def _options(builder: Callable[..., Any]) -> Tuple[str, ...]:
  return tuple(p for p in inspect.signature(builder).parameters if p != 'learning_rate')


FACTORY_ALLOWLIST = sorted({'name', 'learning_rate', 'trainable'}.union(
    *(_options(b) for b in OPTIMIZERS.values())))


def create_optimizer(name: str = 'adafactor', learning_rate: ScalarOrSchedule = 1e-3,
                     trainable: str = 'all', params: Optional[Params] = None,
                     **kwargs) -> optax.GradientTransformation:
  """`masked_optimizer(OPTIMIZERS[name](learning_rate, **kwargs), params, trainable)`, for gin.

  Gin files bind e.g.::

    create_optimizer.name = 'adafactor'
    create_optimizer.learning_rate = 1e-3          # or @rsqrt_decay_schedule()
    create_optimizer.trainable = 'T✓P✓'            # Wu et al.'s MTL-T✓P✓
    create_optimizer.global_norm_clip = 1.0

  Binding a name no optimizer accepts fails when the config is parsed; an option of another
  optimizer (e.g. `decay_rate` with name='sgd') raises ValueError here. For trainable='all' the
  optimizer is returned unmasked (a mask that freezes nothing changes no update), so a caller that
  applies `masked_optimizer` itself -- as `promptjax.training.trainer.train` does with its own
  `trainable` -- wraps it exactly once; other groups are wrapped here.

  Args:
    name: 'adafactor' (default), 'sgd', 'adam' / 'adamw'.
    learning_rate: a float or an optax schedule.
    trainable: 'all', 'transformer', 'prompt' or an alias (`GROUP_ALIASES`).
    params: optional parameters / abstract shapes to validate the group against now.
    **kwargs: keyword options of the chosen optimizer function.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f'Unknown optimizer {name!r}; valid: {sorted(OPTIMIZERS)}.')
  builder = OPTIMIZERS[name]
  valid = _options(builder)
  unknown = sorted(set(kwargs) - set(valid))
  if unknown:
    raise ValueError(f'Optimizer {name!r} has no option(s) {unknown}; valid: {list(valid)}.')
  opt = builder(learning_rate, **kwargs)
  if canonical_group(trainable) == 'all':
    if params is not None:
      trainable_labels(params, trainable)  # Still validate the parameter tree.
    return opt
  return masked_optimizer(opt, params, trainable)
