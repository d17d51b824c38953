"""Optimizers against independent references: a numpy Adafactor (Shazeer & Stern 2018), closed forms
for clipping and schedules, and the trainable-group masks on the tiny model."""

import functools
import math

import gin
import jax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from promptjax.models import PromptConfig, PromptableT5, get_config
from promptjax.training import optimizers as opt_lib

# The tiny model, one layer per stack and a small vocabulary: the same tree layout, less to compile.
CFG = get_config('tiny', vocab_size=512, num_encoder_layers=1, num_decoder_layers=1)
PROMPT_LEN = 7  # [7, 8] prompt tables: a shape no transformer leaf has.


# --------------------------------------------------------------------------------------------------
# Reference Adafactor, written from the paper (Shazeer & Stern 2018, Algorithms 4 and 5; the T5 /
# Mesh TF configuration): float64 numpy, row/column *sums* as in the paper, no parameter scaling,
# no momentum.

def reference_adafactor(params, grads_seq, *, lr=1e-3, continue_from_step=0, decay_rate=0.8, eps1=1e-30,
                        d=1.0, min_dim=128, global_norm_clip=None, weight_decay=0.0,
                        beta2_dtype=np.float64):
  """The update (new minus old parameters) of every step of `grads_seq` (a list of dicts of
  gradients). lr and weight_decay may be callables of the 0-based step index k - 1; `beta2_dtype`
  is the precision β2_t is computed in (float64 unless a test says why not)."""
  x = {k: np.asarray(v, np.float64) for k, v in params.items()}
  factored = {k: v.ndim == 2 and min(v.shape) >= min_dim for k, v in x.items()}
  r = {k: np.zeros(v.shape[0]) for k, v in x.items() if factored[k]}
  c = {k: np.zeros(v.shape[1]) for k, v in x.items() if factored[k]}
  v = {k: np.zeros(val.shape) for k, val in x.items() if not factored[k]}
  deltas = []
  for k_step, grads in enumerate(grads_seq, start=1):
    g = {k: np.asarray(val, np.float64) for k, val in grads.items()}
    if global_norm_clip is not None:
      norm = math.sqrt(sum(float(np.sum(val ** 2)) for val in g.values()))
      g = {k: val / max(1.0, norm / global_norm_clip) for k, val in g.items()}
    t = continue_from_step + k_step
    beta2 = float(beta2_dtype(1.0) - beta2_dtype(t) ** beta2_dtype(-decay_rate))
    alpha = lr(k_step - 1) if callable(lr) else lr
    wd = weight_decay(k_step - 1) if callable(weight_decay) else weight_decay
    deltas.append({})
    for k in x:
      g2 = g[k] ** 2 + eps1
      if factored[k]:
        r[k] = beta2 * r[k] + (1 - beta2) * g2 @ np.ones(g2.shape[1])
        c[k] = beta2 * c[k] + (1 - beta2) * np.ones(g2.shape[0]) @ g2
        v_hat = np.outer(r[k], c[k]) / np.sum(r[k])
      else:
        v[k] = beta2 * v[k] + (1 - beta2) * g2
        v_hat = v[k]
      u = g[k] / np.sqrt(v_hat)
      u = u / max(1.0, math.sqrt(np.mean(u ** 2)) / d)
      deltas[-1][k] = -alpha * u - wd * x[k]
      x[k] = x[k] + deltas[-1][k]
  return deltas


def _small_problem(shapes, steps=5, seed=0):
  rng = np.random.default_rng(seed)
  params = {k: rng.normal(size=s) for k, s in shapes.items()}
  # Step-dependent scales: the global norm is sometimes below 1, sometimes far above.
  scales = [0.002, 3.0, 0.05, 20.0, 0.5][:steps]
  grads_seq = []
  for scale in scales:
    g = {k: rng.normal(size=s) for k, s in shapes.items()}
    norm = math.sqrt(sum(np.sum(val ** 2) for val in g.values()))
    grads_seq.append({k: val * scale / norm for k, val in g.items()})
  return params, grads_seq


def _run_optax(tx, params, grads_seq):
  """Per-step updates of `tx`, in float64 (jax x64 enabled only inside)."""
  with jax.enable_x64(True):
    p = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
    state = tx.init(p)
    update = jax.jit(tx.update)
    out = []
    for g in grads_seq:
      updates, state = update({k: jnp.asarray(val, jnp.float64) for k, val in g.items()}, state, p)
      p = optax.apply_updates(p, updates)
      out.append({k: np.asarray(val, np.float64) for k, val in updates.items()})
    return out


def _assert_updates_close(got, want, rtol, leaf_atol=0.0):
  """Every step's update of every leaf, element by element (plus `leaf_atol` times the leaf's
  largest update, for updates where two terms cancel)."""
  assert len(got) == len(want)
  for step, (g, w) in enumerate(zip(got, want), start=1):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], rtol=rtol, atol=leaf_atol * np.max(np.abs(w[k])),
                                 err_msg=f'step {step}, {k}')


def _max_rel_diff(a, b):
  return max(np.max(np.abs(x[k] - y[k]) / np.abs(y[k])) for x, y in zip(a, b) for k in y)


# One factored matrix (>= 128 x 128), a vector, a small unfactored matrix; and the same with
# min_dim_size_to_factor lowered so a 20 x 32 "prompt" is factored and a 3 x 4 matrix still is not.
PROBLEMS = {
    'default_min_dim': ({'w': (128, 160), 'scale': (16,), 'small': (3, 4)}, 128),
    'lowered_min_dim': ({'prompt': (20, 32), 'scale': (16,), 'small': (3, 4)}, 4),
}


@pytest.mark.parametrize('problem', sorted(PROBLEMS))
@pytest.mark.parametrize('global_norm_clip', [1.0, None])
def test_adafactor_matches_numpy_reference(problem, global_norm_clip):
  shapes, min_dim = PROBLEMS[problem]
  params, grads_seq = _small_problem(shapes)
  tx = opt_lib.adafactor(1e-3, min_dim_size_to_factor=min_dim, global_norm_clip=global_norm_clip)
  got = _run_optax(tx, params, grads_seq)
  want = reference_adafactor(params, grads_seq, lr=1e-3, min_dim=min_dim,
                             global_norm_clip=global_norm_clip)
  _assert_updates_close(got, want, rtol=1e-6)
  # The clipping matters for these gradients: the reference without it is far off.
  other = reference_adafactor(params, grads_seq, lr=1e-3, min_dim=min_dim,
                              global_norm_clip=None if global_norm_clip else 1.0)
  assert _max_rel_diff(other, want) > 1e-2


@pytest.mark.parametrize('problem', sorted(PROBLEMS))
def test_adafactor_continue_from_step_continues_the_beta2_schedule(problem):
  shapes, min_dim = PROBLEMS[problem]
  params, grads_seq = _small_problem(shapes, seed=1)
  tx = opt_lib.adafactor(1e-3, continue_from_step=1000, min_dim_size_to_factor=min_dim)
  got = _run_optax(tx, params, grads_seq)
  want = reference_adafactor(params, grads_seq, continue_from_step=1000, min_dim=min_dim,
                             global_norm_clip=1.0)
  fresh = reference_adafactor(params, grads_seq, continue_from_step=0, min_dim=min_dim,
                              global_norm_clip=1.0)
  # optax evaluates β2_t = 1 - t^-0.8 in float32 even under x64; near t = 1000, 1 - β2 ≈ 0.004
  # carries a ~1e-5 relative rounding error, which bounds the match with the float64 reference ...
  _assert_updates_close(got, want, rtol=2e-5)
  # ... and with β2_t rounded to float32 (everything else float64) the match is again 1e-6.
  want32 = reference_adafactor(params, grads_seq, continue_from_step=1000, min_dim=min_dim,
                               global_norm_clip=1.0, beta2_dtype=np.float32)
  _assert_updates_close(got, want32, rtol=1e-6)
  assert _max_rel_diff(fresh, want) > 1e-1  # offset 1000 vs 0 differ far beyond the tolerance


def test_continue_from_step_equals_t5x_counter_restored_to_the_global_step():
  """continue_from_step=S with a fresh state == optax/T5X Adafactor whose step counter already holds S."""
  shapes, _ = PROBLEMS['default_min_dim']
  params, grads_seq = _small_problem(shapes, seed=2)
  ours = _run_optax(opt_lib.adafactor(1e-3, continue_from_step=1000, global_norm_clip=None), params,
                    grads_seq)
  plain = optax.adafactor(1e-3, multiply_by_parameter_scale=False)
  with jax.enable_x64(True):
    p = {k: jnp.asarray(v) for k, v in params.items()}
    state = plain.init(p)
    state = (state[0]._replace(count=jnp.asarray(1000, jnp.int32)),) + tuple(state[1:])
    theirs = []
    update = jax.jit(plain.update)
    for g in grads_seq:
      u, state = update({k: jnp.asarray(v) for k, v in g.items()}, state, p)
      p = optax.apply_updates(p, u)
      theirs.append({k: np.asarray(v) for k, v in u.items()})
  _assert_updates_close(ours, theirs, rtol=1e-12)


def test_adafactor_with_schedule_and_weight_decay_matches_reference():
  shapes, min_dim = PROBLEMS['lowered_min_dim']
  params, grads_seq = _small_problem(shapes, seed=3)
  lr = opt_lib.rsqrt_decay_schedule(0.5, warmup_steps=2)
  tx = opt_lib.adafactor(lr, min_dim_size_to_factor=min_dim, weight_decay_rate=1e-2)
  want = reference_adafactor(params, grads_seq, lr=lambda s: 0.5 / math.sqrt(max(s, 2)),
                             min_dim=min_dim, global_norm_clip=1.0, weight_decay=1e-2)
  # -lr·U and -wd·X nearly cancel in a few elements: also allow 1e-7 of the leaf's largest update.
  _assert_updates_close(_run_optax(tx, params, grads_seq), want, rtol=1e-6, leaf_atol=1e-7)
  # Qin et al.'s PyTorch-style decay: X <- X - lr * wd * X (lr 0.5, weight decay 1e-5).
  tx = opt_lib.adafactor(0.5, min_dim_size_to_factor=min_dim, weight_decay_rate=1e-5,
                         weight_decay_rate_lr_exponent=1.0)
  want = reference_adafactor(params, grads_seq, lr=0.5, min_dim=min_dim, global_norm_clip=1.0,
                             weight_decay=0.5 * 1e-5)
  _assert_updates_close(_run_optax(tx, params, grads_seq), want, rtol=1e-6, leaf_atol=1e-7)
  no_decay = reference_adafactor(params, grads_seq, lr=0.5, min_dim=min_dim, global_norm_clip=1.0)
  assert not np.allclose(no_decay[0]['prompt'], want[0]['prompt'], rtol=1e-6, atol=0)


def test_short_prompt_is_not_factored_unless_min_dim_is_lowered():
  params = {'prompt': jnp.zeros((20, 256)), 'embedding': jnp.zeros((512, 128))}
  state = opt_lib.adafactor().init(params)
  v, v_row, v_col = (optax.tree.get(state, n) for n in ('v', 'v_row', 'v_col'))
  assert v['prompt'].shape == (20, 256)  # a full second moment
  assert v_row['prompt'].shape == v_col['prompt'].shape == (1,)  # placeholders
  assert v['embedding'].shape == (1,)  # factored: row and column statistics only
  assert sorted([v_row['embedding'].shape, v_col['embedding'].shape]) == [(128,), (512,)]
  state = opt_lib.adafactor(min_dim_size_to_factor=16).init(params)
  v, v_row, v_col = (optax.tree.get(state, n) for n in ('v', 'v_row', 'v_col'))
  assert v['prompt'].shape == (1,)
  assert sorted([v_row['prompt'].shape, v_col['prompt'].shape]) == [(20,), (256,)]


# --------------------------------------------------------------------------------------------------
# Global-norm clipping in closed form. With ε1 = 1 and no update clipping, the first Adafactor step
# is Δ = -lr · ĝ / sqrt(ĝ² + 1) with ĝ = g / max(1, ‖g‖ / c): the clipped gradient is recoverable.

def _first_step_closed_form(g, lr, norm, c=1.0):
  gc = g / max(1.0, norm / c)
  return -lr * gc / np.sqrt(gc ** 2 + 1.0)


@pytest.mark.parametrize('norm', [0.5, 5.0])
def test_global_norm_clipping_closed_form(norm):
  rng = np.random.default_rng(4)
  g = {'a': rng.normal(size=(3, 5)), 'b': rng.normal(size=(7,))}
  total = math.sqrt(sum(np.sum(v ** 2) for v in g.values()))
  g = {k: (v * norm / total).astype(np.float32) for k, v in g.items()}
  params = {k: jnp.zeros(v.shape) for k, v in g.items()}
  for clip in (1.0, None):
    tx = opt_lib.adafactor(0.1, epsilon1=1.0, clipping_threshold=None, global_norm_clip=clip)
    updates, _ = jax.jit(tx.update)(g, tx.init(params), params)
    for k in g:
      want = _first_step_closed_form(g[k].astype(np.float64), 0.1, norm if clip else 0.0)
      np.testing.assert_allclose(updates[k], want, rtol=1e-5, err_msg=f'{k} clip={clip}')


# --------------------------------------------------------------------------------------------------
# Trainable groups on the tiny model.

@functools.lru_cache(maxsize=None)
def _params(kind):
  """The tiny model's parameter tree (transformer + `prompt` for a shallow/deep prompt) with random
  values. Built from `abstract_params` (no XLA compile of `init_params`, ~9 s a model on CPU) and
  checked against the model with `check_params`."""
  model = PromptableT5(CFG, PromptConfig(kind=kind, length=PROMPT_LEN) if kind else PromptConfig())
  abstract = nn.meta.unbox(model.abstract_params())
  params = _random_like(abstract, seed=0)
  model.check_params(params, include_prompt=bool(kind))
  assert ('prompt' in params) == bool(kind)
  return params


def _random_like(tree, seed, scale=1.0):
  """Standard normal values (times `scale`) for a tree of arrays, ShapeDtypeStructs or shapes."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(scale * rng.normal(size=getattr(x, 'shape', x)),
                            getattr(x, 'dtype', jnp.float32)),
      tree, is_leaf=lambda x: isinstance(x, tuple))


def _is_prompt(path):
  return path[0].key == 'prompt'


def _split(tree):
  flat = jax.tree_util.tree_leaves_with_path(tree)
  return ([v for p, v in flat if not _is_prompt(p)], [v for p, v in flat if _is_prompt(p)])


@pytest.mark.parametrize('kind', ['shallow', 'deep'])
@pytest.mark.parametrize('trainable,aliases', [
    ('transformer', ('T✓P✗', 't0', 'MTL-T✓P✗')),
    ('prompt', ('T✗P✓', 'ppt', 'MTL-T✗P✓')),
    ('all', ('T✓P✓', 'mtl_prompt', 'MTL-T✓P✓')),
])
def test_masks_freeze_exactly_and_keep_no_state(kind, trainable, aliases):
  params = _params(kind)
  for alias in aliases:
    assert opt_lib.trainable_labels(params, alias) == opt_lib.trainable_labels(params, trainable)
  tx = opt_lib.masked_optimizer(opt_lib.adafactor(1e-3), params, trainable)
  state = tx.init(params)
  step = jax.jit(lambda p, s, g: (lambda u, s2: (optax.apply_updates(p, u), s2))(
      *tx.update(g, s, p)))
  new = params
  for i in range(3):
    new, state = step(new, state, _random_like(params, seed=10 + i))

  old_t, old_p = _split(params)
  new_t, new_p = _split(new)
  t_trains, p_trains = trainable in ('all', 'transformer'), trainable in ('all', 'prompt')
  assert old_p and len(old_t) > 20 and (len(old_p) > 1) == (kind == 'deep')
  for old, now in zip(old_t, new_t):
    assert (not np.array_equal(old, now)) if t_trains else np.array_equal(old, now)
  for old, now in zip(old_p, new_p):
    assert (not np.array_equal(old, now)) if p_trains else np.array_equal(old, now)

  # State: one unfactored second moment per trainable leaf (tiny dims < 128), two 1-element
  # factored placeholders, and one step counter; nothing for frozen leaves.
  trained = (old_t if t_trains else []) + (old_p if p_trains else [])
  state_shapes = [tuple(x.shape) for x in jax.tree_util.tree_leaves(state)]
  assert len(state_shapes) == 3 * len(trained) + 1
  assert sorted(s for s in state_shapes if np.prod(s) > 1) == sorted(
      tuple(x.shape) for x in trained)
  if not p_trains:
    assert (PROMPT_LEN, CFG.emb_dim) not in state_shapes


def test_clipping_norm_covers_trainable_gradients_only():
  params = _params('deep')
  grads = _random_like(params, seed=3, scale=1e3)  # huge frozen (transformer) gradients
  prompt_norm = float(optax.tree.norm(grads['prompt']))
  assert prompt_norm > 1.0
  grads['token_embedder']['embedding'] = jnp.full_like(grads['token_embedder']['embedding'], jnp.nan)

  tx = opt_lib.masked_optimizer(
      opt_lib.adafactor(0.1, epsilon1=1.0, clipping_threshold=None), params, 'prompt')
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  t_up, p_up = _split(updates)
  assert all(np.array_equal(u, np.zeros_like(u)) for u in t_up)  # exactly zero, even from NaN
  for u, g in zip(p_up, _split(grads)[1]):
    want = _first_step_closed_form(np.asarray(g, np.float64), 0.1, prompt_norm)
    np.testing.assert_allclose(u, want, rtol=1e-5)

  # The same with plain SGD: Δ = -g_prompt / max(1, ‖g_prompt‖).
  tx = opt_lib.masked_optimizer(opt_lib.sgd(1.0, global_norm_clip=1.0), params, 'prompt')
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for u, g in zip(_split(updates)[1], _split(grads)[1]):
    np.testing.assert_allclose(u, -np.asarray(g) / prompt_norm, rtol=1e-6)


def test_group_errors():
  with_prompt, without = _params('shallow'), _params(None)
  with pytest.raises(ValueError, match=r"Unknown trainable group 'bogus'.*'all', 'transformer', "
                     r"'prompt'.*'ppt'"):
    opt_lib.trainable_labels(with_prompt, 'bogus')
  with pytest.raises(ValueError, match="no 'prompt' subtree"):
    opt_lib.trainable_labels(without, 'prompt')
  with pytest.raises(ValueError, match="trainable='ppt'.*no 'prompt' subtree"):
    opt_lib.masked_optimizer(opt_lib.adafactor(), without, 'ppt')
  with pytest.raises(ValueError, match='Unknown trainable group'):
    opt_lib.masked_optimizer(opt_lib.adafactor(), None, 'T?P?')
  with pytest.raises(ValueError, match="Unknown top-level parameter subtree.*'psi'"):
    opt_lib.trainable_labels({**without, 'psi': jnp.zeros(3)}, 'all')
  # Without params the group is checked at init.
  tx = opt_lib.masked_optimizer(opt_lib.adafactor(), None, 'prompt')
  with pytest.raises(ValueError, match="no 'prompt' subtree"):
    tx.init(without)
  # A model without a prompt: 'all' and 'transformer' train everything (T0).
  labels = opt_lib.trainable_labels(without, 't0')
  assert set(jax.tree_util.tree_leaves(labels)) == {opt_lib.TRAINABLE}


def test_labels_from_abstract_params():
  model = PromptableT5(CFG, PromptConfig(kind='deep', length=PROMPT_LEN))
  mask = opt_lib.trainable_mask(model.abstract_params(), 'prompt')
  assert sum(jax.tree_util.tree_leaves(mask)) == len(jax.tree_util.tree_leaves(mask['prompt']))
  tx = opt_lib.masked_optimizer(opt_lib.adafactor(), model.abstract_params(), 'prompt')
  state = jax.eval_shape(tx.init, nn.meta.unbox(model.abstract_params()))
  assert len(jax.tree_util.tree_leaves(state)) == 3 * len(jax.tree_util.tree_leaves(mask['prompt'])) + 1


# --------------------------------------------------------------------------------------------------
# Schedules (closed forms).

def test_schedules_closed_form():
  rsqrt = opt_lib.rsqrt_decay_schedule(1.0, warmup_steps=100)
  for s in (0, 50, 100, 400, 10_000):
    assert float(rsqrt(s)) == pytest.approx(1.0 / math.sqrt(max(s, 100)), rel=1e-6)
  warm = opt_lib.rsqrt_decay_schedule(1.0, warmup_steps=100, linear_warmup=True)
  assert float(warm(50)) == pytest.approx(0.5 / 10.0, rel=1e-6)
  resumed = opt_lib.rsqrt_decay_schedule(1.0, continue_from_step=1_100_000)
  assert float(resumed(0)) == pytest.approx(1.0 / math.sqrt(1_100_000), rel=1e-6)
  assert float(opt_lib.rsqrt_decay_schedule(0.1, warmup_steps=0)(0)) == pytest.approx(0.1)
  assert float(opt_lib.constant_schedule(1e-3)(12345)) == pytest.approx(1e-3)

  lin = opt_lib.warmup_linear_decay_schedule(1.0, warmup_steps=10, total_steps=110)
  for s in (0, 5, 10, 35, 60, 110, 200):
    want = s / 10 if s < 10 else max(0.0, (110 - s) / 100)
    assert float(lin(s)) == pytest.approx(want, abs=1e-6)
  supmer = opt_lib.warmup_linear_decay_schedule(0.1, warmup_steps=0, total_steps=100_000)
  assert float(supmer(0)) == pytest.approx(0.1) and float(supmer(50_000)) == pytest.approx(0.05)

  cos = opt_lib.warmup_cosine_decay_schedule(1.0, warmup_steps=10, total_steps=110, end_value=0.1)
  for s in (0, 5, 10, 35, 60, 110, 200):
    frac = min(max(s - 10, 0), 100) / 100
    want = s / 10 if s < 10 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))
    assert float(cos(s)) == pytest.approx(want, abs=1e-6)
  with pytest.raises(ValueError):
    opt_lib.warmup_linear_decay_schedule(1.0, warmup_steps=10, total_steps=10)


# --------------------------------------------------------------------------------------------------
# Gin.

@pytest.fixture
def clean_gin():
  from promptjax import cli
  cli.register_gin_configurables()   # gin lives at the edge: the CLI registers the factory
  gin.clear_config()
  yield
  gin.clear_config()


def _toy_params():
  """The model's top-level layout with a few small leaves (the gin tests check wiring, not size)."""
  shapes = {'token_embedder': {'embedding': (16, 4)}, 'encoder': {'scale': (4,)},
            'decoder': {'kernel': (4, 6)}, 'prompt': {'prompt': (3, 4)}}
  return _random_like(shapes, seed=5)


def _first_prompt_step(tx, params, seed=0):
  grads = _random_like(params, seed=seed, scale=1e-3)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return grads, updates


def test_gin_binds_the_factory(clean_gin):
  gin.parse_config("""
      create_optimizer.learning_rate = 0.01
      create_optimizer.trainable = 'T✗P✓'
      create_optimizer.global_norm_clip = 1.0
  """)
  tx = gin.get_configurable(opt_lib.create_optimizer)()
  assert isinstance(tx, optax.GradientTransformation)
  params = _toy_params()
  grads, updates = _first_prompt_step(tx, params)
  t_up, p_up = _split(updates)
  assert all(not np.any(u) for u in t_up)
  # First Adafactor step (β2_1 = 0): U = g / sqrt(g² + ε1) = sign(g), RMS 1, so Δ = -lr · sign(g).
  for u, g in zip(p_up, _split(grads)[1]):
    np.testing.assert_allclose(u, -0.01 * np.sign(g), rtol=1e-6)

  gin.clear_config()
  gin.parse_config("""
      create_optimizer.learning_rate = @rsqrt_decay_schedule()
      rsqrt_decay_schedule.base_learning_rate = 1.0
      rsqrt_decay_schedule.warmup_steps = 100
  """)
  grads, updates = _first_prompt_step(gin.get_configurable(opt_lib.create_optimizer)(), params)  # trainable='all'
  for u, g in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(grads)):
    np.testing.assert_allclose(u, -0.1 * np.sign(g), rtol=1e-6)

  gin.clear_config()
  gin.parse_config("""
      create_optimizer.name = 'sgd'
      create_optimizer.learning_rate = 3e-5
      create_optimizer.trainable = 'prompt'
  """)
  grads, updates = _first_prompt_step(gin.get_configurable(opt_lib.create_optimizer)(params=params), params)
  np.testing.assert_allclose(updates['prompt']['prompt'], -3e-5 * grads['prompt']['prompt'],
                             rtol=1e-6)


def test_gin_unknown_bindings_raise(clean_gin):
  with pytest.raises(ValueError, match='bogus'):
    gin.parse_config('create_optimizer.bogus = 1')
  gin.parse_config("""
      create_optimizer.name = 'sgd'
      create_optimizer.decay_rate = 0.8
  """)
  with pytest.raises(ValueError, match=r"'sgd' has no option\(s\) \['decay_rate'\]"):
    gin.get_configurable(opt_lib.create_optimizer)()
  gin.clear_config()
  gin.parse_config("create_optimizer.name = 'lion'")
  with pytest.raises(ValueError, match="Unknown optimizer 'lion'"):
    gin.get_configurable(opt_lib.create_optimizer)()


def test_library_functions_work_without_gin(clean_gin):
  tx = opt_lib.create_optimizer('adamw', 1e-3, 'transformer', weight_decay=0.01)
  params = _toy_params()
  _, updates = _first_prompt_step(tx, params)
  assert not np.any(updates['prompt']['prompt'])
  assert np.all(updates['token_embedder']['embedding'] != 0)
  # 'all' comes back unmasked, so a caller's own mask (the trainer's) applies exactly once.
  tx = opt_lib.masked_optimizer(opt_lib.create_optimizer(learning_rate=0.01), params, 'prompt')
  grads, updates = _first_prompt_step(tx, params)
  assert not np.any(updates['decoder']['kernel'])
  np.testing.assert_allclose(updates['prompt']['prompt'], -0.01 * np.sign(grads['prompt']['prompt']),
                             rtol=1e-6)
