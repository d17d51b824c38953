"""SUPMER (`promptjax.supmer.algorithm`) against independent references written here.

1. Curriculum: b of Eq. 10 / Alg. 2 lines 5-6 on similarities written out by hand; the moments of the λ
   draws against the Beta distribution's closed-form mean.
2. ψ_φ (Eq. 5): the affine and official-MLP forms against numpy formulas; h = identity at
   initialization; the downstream optax transformation with h = identity and any gate equals plain SGD.
3. Task augmentation (Eq. 4): λ = 0 equals `model.loss_fn` on the plain query set (float64 and the float32
   production path); 0 < λ < 1 equals a soft-target cross-entropy written with explicit vocabulary
   distributions Ỹ = (1 − λ)Y_i + λY_j.
4. Meta-gradients against central finite differences (float64) of a meta-objective built here from
   `model.loss_fn`, `model.encode`/`decode` and `jax.grad` only: the exact φ-gradient through the inner
   step (affine and official MLP), the first-order θ-gradient, and the full second-order θ-gradient (Eq. 8).
5. Ablations: ψ off + no augmentation is prompt-only FoMAML (`promptjax.meta.algorithms`, one SGD inner
   step); the train step's curriculum state (Alg. 1 line 18) and the next step's b.

Float64: the model pins float32 in its norms, attention and loss, so the FD references run with the same
test-local shim as tests/meta/test_maml_reference.py (tests/helpers.py: `jnp.float32` means float64 in the
model modules).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from promptjax.supmer import algorithm as supmer
from promptjax.meta.algorithms import MetaConfig, meta_gradient
from promptjax.models.model import shift_right
from promptjax.training import train_step as ts
from tests.helpers import float64_model, padded_batch, tiny_prompt_model

M, S, Q = 2, 2, 2
L, VOCAB, ENC_LEN, TGT_LEN = 3, 64, 6, 3
ALPHA = 1.0           # inner lr: large enough that the inner step (and second-order terms) matter
B_K = 0.5             # the curriculum target of L_reg
FD_STEP = 1e-5
_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _batch(rng, lead):
  return {**padded_batch(rng, lead, ENC_LEN, TGT_LEN, VOCAB, min_enc_len=3),
          'encoder_input_vectors': np.zeros(lead + (1, 8), np.float32),
          'encoder_input_vector_positions': -np.ones(lead + (1,), np.int32)}


def _sets(seed=0):
  rng = np.random.RandomState(seed)
  return {'support': _batch(rng, (M, S)), 'query': _batch(rng, (M, Q)), 'mix_query': _batch(rng, (M, Q))}


def _task(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def _phi(cfg, seed=1, scale=1.0):
  """A φ away from its initialization (so every part of ψ matters)."""
  phi = supmer.init_phi(cfg, L, 8, jax.random.PRNGKey(seed))
  rng = np.random.RandomState(seed)
  noise = lambda x, s: x + scale * s * rng.standard_normal(x.shape)
  phi = {'gate': {'kernel': noise(phi['gate']['kernel'], 0.5), 'bias': noise(phi['gate']['bias'], 0.5)},
         'transform': {k: noise(v, 0.3 if k in ('kernel', 'down', 'up') else 0.05)
                       for k, v in phi['transform'].items()}}
  return jax.tree.map(lambda x: np.asarray(x, np.float64), phi)


@pytest.fixture(scope='module')
def base():
  model = tiny_prompt_model(VOCAB, L)
  return model, model.init_params(jax.random.PRNGKey(0))


@pytest.fixture
def f64(base):
  with float64_model(*base) as model_and_params:
    yield model_and_params


# ------------------------------------------------------------------------------------------------
# References.

def ref_gate(phi, h_rep):
  return 1.0 / (1.0 + jnp.exp(-(h_rep @ phi['gate']['kernel'] + phi['gate']['bias'])))


def ref_psi(phi, g, h_rep, transform):
  z = ref_gate(phi, h_rep)
  t = phi['transform']
  if transform == 'affine':
    h = g @ t['kernel'] + t['bias']
  else:
    n = jnp.sqrt(jnp.sum(g * g, -1, keepdims=True))
    u = g / n + jnp.maximum((g / n) @ t['down'] + t['down_bias'], 0.0) @ t['up'] + t['up_bias']
    h = n * u / jnp.sqrt(jnp.sum(u * u, -1, keepdims=True))
  return z * h + (1.0 - z) * g


def ref_rep(model, params, batch):
  enc, _ = model.encode(params, batch['encoder_input_tokens'])
  mask = (batch['encoder_input_tokens'] > 0)[..., None]
  return jnp.sum(jnp.where(mask, enc[:, L:], 0.0), (0, 1)) / jnp.sum(mask)


def ref_soft_loss(model, params, q, mq, lam):
  """−Σ Ỹ log p / Σ Ỹ with explicit soft target distributions over the vocabulary; the encoder mask is the
  union of the masks of the sides with non-zero weight."""
  enc_i, m_i = model.encode(params, q['encoder_input_tokens'])
  enc_j, m_j = model.encode(params, mq['encoder_input_tokens'])
  mixed = (1 - lam) * jnp.where(m_i[..., None], enc_i, 0.0) + lam * jnp.where(m_j[..., None], enc_j, 0.0)
  t_i, t_j = q['decoder_target_tokens'], mq['decoder_target_tokens']
  mask = jnp.logical_or(jnp.logical_and(m_i, lam != 1), jnp.logical_and(m_j, lam != 0))
  logits = model.decode(params, mixed, mask, jnp.where(t_i > 0, t_i, t_j), shift_right(t_i))
  logp = jax.nn.log_softmax(logits, -1)
  y = ((1 - lam) * (t_i > 0)[..., None] * jax.nn.one_hot(t_i, logits.shape[-1], dtype=logp.dtype)
       + lam * (t_j > 0)[..., None] * jax.nn.one_hot(t_j, logits.shape[-1], dtype=logp.dtype))
  return -jnp.sum(y * logp) / jnp.sum(y)


def ref_objective(model, frozen, sets, lam, transform, theta0, first_order):
  """J(θ, φ) = mean_i L_{Q̃_i}(θ − α ψ_φ(∇L_{S_i}(θ))) + mean_i ‖z_i − b‖², with ∇L_S and H taken
  at θ_0 (first order in θ) or at θ (second order); the L_reg term (φ only) uses H at θ_0."""
  def join(p):
    return {**frozen, 'prompt': {'prompt': p}}

  def objective(theta, phi):
    total = 0.0
    for i in range(M):
      sup, q, mq = (_task(sets[k], i) for k in ('support', 'query', 'mix_query'))
      at = theta0 if first_order else theta
      g = jax.grad(lambda p: model.loss_fn(join(p), sup)[0])(at)
      h_rep = ref_rep(model, join(at), sup)
      adapted = theta - ALPHA * ref_psi(phi, g, h_rep, transform)
      reg = jnp.sum((ref_gate(phi, ref_rep(model, join(theta0), sup)) - B_K) ** 2)   # Eq. 20: ‖z − b‖²
      total = total + ref_soft_loss(model, join(adapted), q, mq, lam[i]) + reg
    return total / M
  return objective


def _directional_fd(fn, x, v, h=FD_STEP):
  plus = fn(jax.tree.map(lambda a, b: a + h * b, x, v))
  minus = fn(jax.tree.map(lambda a, b: a - h * b, x, v))
  return float((plus - minus) / (2 * h))


def _dot(a, b):
  return float(sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def _directions(tree, n, seed):
  rng = np.random.RandomState(seed)
  return [jax.tree.map(lambda x: rng.standard_normal(np.shape(x)), tree) for _ in range(n)]


# ------------------------------------------------------------------------------------------------
# 1. Curriculum.

def test_curriculum_b_against_algorithm_2():
  # Alg. 2 lines 5-6 by hand for m = 2 (Table 6): s' = (1+s)/2, b = (2^s' − 1) / (2 − 1).
  sims = np.array([-1.0, -0.5, 0.0, 0.3, 1.0])
  want_m2 = np.array([0.0, 2 ** 0.25 - 1, 2 ** 0.5 - 1, 2 ** 0.65 - 1, 1.0])
  np.testing.assert_allclose(supmer.curriculum_b(jnp.asarray(sims), 2.0), want_m2, rtol=1e-6, atol=1e-7)
  # m = 3: (3^s' − 1) / 2; m = 1: the limit s'.
  want_m3 = np.array([0.0, (3 ** 0.25 - 1) / 2, (3 ** 0.5 - 1) / 2, (3 ** 0.65 - 1) / 2, 1.0])
  np.testing.assert_allclose(supmer.curriculum_b(jnp.asarray(sims), 3.0), want_m3, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(supmer.curriculum_b(jnp.asarray(sims), 1.0), (1 + sims) / 2, rtol=1e-6)


def test_mixing_ratio_distribution():
  alpha, n = 0.5, 20000
  key = jax.random.PRNGKey(3)
  draw = _jit(supmer.mixing_ratios, static_argnums=(2, 3))
  for b in (0.25, 1.0):
    # Beta(α, bα) has mean α / (α + bα) = 1 / (1 + b); 'increasing' = Beta(bα, α): b / (1 + b).
    lam = draw(key, b, n, supmer.SupmerConfig(mixup_alpha=alpha))
    assert abs(float(jnp.mean(lam)) - 1 / (1 + b)) < 0.01
    lam = draw(key, b, n, supmer.SupmerConfig(mixup_alpha=alpha, beta_form='increasing'))
    assert abs(float(jnp.mean(lam)) - b / (1 + b)) < 0.01
  # b = 1: Beta(α, α) is symmetric, variance 1 / (4(2α + 1)).
  lam = np.asarray(draw(key, 1.0, n, supmer.SupmerConfig(mixup_alpha=alpha)))
  assert abs(lam.var() - 1 / (4 * (2 * alpha + 1))) < 0.005
  # b = 0 (s = −1, the first step): the point mass at λ = 1.
  np.testing.assert_array_equal(supmer.mixing_ratios(key, 0.0, 5, supmer.SupmerConfig()), np.ones(5))


# ------------------------------------------------------------------------------------------------
# 2. ψ.

@pytest.mark.parametrize('transform', ['affine', 'official_mlp'])
def test_psi_formula_and_identity_init(transform):
  cfg = supmer.SupmerConfig(transform=transform)
  rng = np.random.RandomState(0)
  g = rng.standard_normal((L, 8)) * 1e-2
  h_rep = rng.standard_normal(8)
  phi = _phi(cfg)
  z = 1 / (1 + np.exp(-(h_rep @ phi['gate']['kernel'] + phi['gate']['bias'])))
  t = phi['transform']
  if transform == 'affine':
    h = g @ t['kernel'] + t['bias']
  else:
    unit = g / np.linalg.norm(g, axis=-1, keepdims=True)
    u = unit + np.maximum(unit @ t['down'] + t['down_bias'], 0) @ t['up'] + t['up_bias']
    h = np.linalg.norm(g, axis=-1, keepdims=True) * u / np.linalg.norm(u, axis=-1, keepdims=True)
    # Norm rescaling: each row keeps its input norm, and h is positively homogeneous.
    np.testing.assert_allclose(np.linalg.norm(h, axis=-1), np.linalg.norm(g, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(supmer.transform(phi, 7.0 * g, cfg), 7.0 * h, rtol=2e-5, atol=1e-8)
  out, zz = supmer.regulate(phi, g, h_rep, cfg)
  np.testing.assert_allclose(zz, z, rtol=1e-5)
  np.testing.assert_allclose(out, z * h + (1 - z) * g, rtol=2e-5, atol=1e-9)
  # At initialization h is the identity and z = gate_init everywhere, so ψ(g) = g.
  init = supmer.init_phi(supmer.SupmerConfig(transform=transform, gate_init=0.3), L, 8)
  out, zz = supmer.regulate(init, g, h_rep, cfg)
  np.testing.assert_allclose(zz, np.full(8, 0.3), rtol=1e-6)
  np.testing.assert_allclose(out, g, rtol=1e-5, atol=1e-10)


def test_downstream_transformation(base):
  model, params = base
  cfg = supmer.SupmerConfig()
  rng = np.random.RandomState(5)
  phi = supmer.init_phi(cfg, L, 8)  # h = identity ...
  phi['gate'] = {'kernel': rng.standard_normal((8, 8)), 'bias': rng.standard_normal(8)}  # ... and any z
  batch = _task(_sets()['support'], 0)
  h_rep, want_rep, grads = _jit(lambda p: (
      supmer.support_representation(model, p, batch), ref_rep(model, p, batch),
      jax.grad(lambda q: model.loss_fn({**p, 'prompt': q}, batch)[0])(p['prompt'])))(params)
  np.testing.assert_allclose(h_rep, want_rep, rtol=1e-5, atol=1e-6)
  lr = 0.3
  tx = optax.chain(supmer.psi_transformation(phi, cfg), optax.sgd(lr))
  updates, _ = tx.update(grads, tx.init(params['prompt']), params['prompt'], support_representation=h_rep)
  np.testing.assert_allclose(updates['prompt'], -lr * grads['prompt'], rtol=1e-6, atol=1e-9)
  # A non-identity h: the update is −lr·ψ(g) by the hand formula (on a full parameter tree, too).
  phi = _phi(cfg)
  full = {k: jax.tree.map(jnp.zeros_like, v) for k, v in params.items()}
  full['prompt'] = grads
  tx = optax.chain(supmer.psi_transformation(phi, cfg), optax.sgd(lr))
  updates = tx.update(full, tx.init(params), params, support_representation=h_rep)[0]
  want = -lr * ref_psi(phi, np.asarray(grads['prompt'], np.float64), np.asarray(h_rep, np.float64),
                       'affine')
  np.testing.assert_allclose(updates['prompt']['prompt'], want, rtol=1e-5, atol=1e-8)
  assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates['encoder']))


# ------------------------------------------------------------------------------------------------
# 3. Task augmentation.

def test_mixup_lambda_zero_is_the_plain_query_loss(base, f64):
  sets = _sets(1)
  q, mq = _task(sets['query'], 0), _task(sets['mix_query'], 0)
  for model, params, tol in (base + (1e-6,), f64 + (1e-13,)):
    got, want = _jit(lambda p: (supmer.mixup_loss(model, p, q, mq, 0.0), model.loss_fn(p, q)[0]))(params)
    assert abs(float(got) - float(want)) <= tol * abs(float(want)), (got, want)
  model, params = f64
  lams = jnp.asarray([0.3, 1.0])
  got, want = _jit(lambda p: jax.vmap(lambda l: (supmer.mixup_loss(model, p, q, mq, l),
                                                 ref_soft_loss(model, p, q, mq, l)))(lams))(params)
  np.testing.assert_allclose(got, want, rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# 4. Meta-gradients vs finite differences.

def _gradient(model, params, phi, sets, lam, cfg):
  transformer = {k: v for k, v in params.items() if k != 'prompt'}
  fn = _jit(lambda p, f: supmer.supmer_gradient(model, transformer, p, f, sets, lam, B_K, cfg))
  return fn(params['prompt'], phi)


@pytest.mark.parametrize('transform', ['affine', 'official_mlp'])
def test_first_order_gradients_match_finite_differences(f64, transform):
  model, params = f64
  cfg = supmer.SupmerConfig(transform=transform, inner_learning_rate=ALPHA, reg_coefficient=1.0,
                            second_order=False)
  sets = jax.tree.map(jnp.asarray, _sets(2))
  lam = jnp.asarray([0.3, 0.8])
  phi = _phi(cfg, scale=1.0)
  out = _gradient(model, params, phi, sets, lam, cfg)
  frozen = {k: v for k, v in params.items() if k != 'prompt'}
  theta0 = params['prompt']['prompt']
  obj = _jit(ref_objective(model, frozen, sets, lam, transform, theta0, first_order=True))
  errs = []
  for v in _directions(phi, 2, 7):
    fd = _directional_fd(lambda f: obj(theta0, f), phi, v)
    errs.append(abs(_dot(out.phi_grad, v) - fd) / abs(fd))
  if transform == 'affine':  # first order in θ: ∂θ'/∂θ = I, ∇L_S and H frozen at θ_0
    for v in _directions(theta0, 2, 8):
      fd = _directional_fd(lambda t: obj(t, phi), theta0, v)
      errs.append(abs(_dot(out.prompt_grad['prompt'], v) - fd) / abs(fd))
  print(f'{transform}: FD relative errors {errs}')
  assert max(errs) < 1e-7, errs


@pytest.mark.parametrize('backward', ['hvp', 'autodiff'])
def test_second_order_theta_gradient_matches_finite_differences(f64, backward):
  """Both backward passes of the second-order gradient: Hessian-vector products (the default) and JAX
  reversing the stored support pass."""
  model, params = f64
  cfg = supmer.SupmerConfig(inner_learning_rate=ALPHA, second_order_backward=backward)
  assert cfg.second_order   # second order is the default (Eq. 8, App. A.1)
  sets = jax.tree.map(jnp.asarray, _sets(3))
  lam = jnp.asarray([0.6, 0.2])
  phi = _phi(cfg, seed=4)
  out = _gradient(model, params, phi, sets, lam, cfg)
  fo = _gradient(model, params, phi, sets, lam, dataclasses_replace(cfg, second_order=False))
  frozen = {k: v for k, v in params.items() if k != 'prompt'}
  theta0 = params['prompt']['prompt']
  obj = _jit(ref_objective(model, frozen, sets, lam, 'affine', theta0, first_order=False))
  errs = []
  for v in _directions(theta0, 2, 9):
    fd = _directional_fd(lambda t: obj(t, phi), theta0, v)
    errs.append(abs(_dot(out.prompt_grad['prompt'], v) - fd) / abs(fd))
    # The test discriminates: the first-order gradient misses the second-order term by far more.
    assert abs(_dot(fo.prompt_grad['prompt'], v) - fd) / abs(fd) > 1e-3
  fd = _directional_fd(lambda f: obj(theta0, f), phi, _directions(phi, 1, 10)[0])
  errs.append(abs(_dot(out.phi_grad, _directions(phi, 1, 10)[0]) - fd) / abs(fd))
  print(f'second order: FD relative errors {errs}')
  assert max(errs) < 1e-7, errs


def dataclasses_replace(cfg, **kw):
  import dataclasses
  return dataclasses.replace(cfg, **kw)


# ------------------------------------------------------------------------------------------------
# 5. Ablations and the train step.

def test_no_psi_no_augmentation_is_prompt_fomaml(base):
  model, params = base
  sets = jax.tree.map(jnp.asarray, _sets(4))
  cfg = supmer.SupmerConfig(inner_learning_rate=0.5, gradient_regularization=False, task_augmentation=False,
                            similarity='raw', second_order=False)
  out = _gradient(model, params, supmer.init_phi(cfg, L, 8), sets, jnp.zeros(M), cfg)
  meta = MetaConfig('fomaml', inner_steps=1, inner_optimizer=optax.sgd(0.5), inner_learning_rate=0.5,
                    inner_global_norm_clip=None)
  support = jax.tree.map(lambda x: x[:, None], sets['support'])
  loss, grads, _ = _jit(lambda p: meta_gradient(model, p, support, sets['query'], meta, trainable='prompt'))(params)
  np.testing.assert_allclose(out.prompt_grad['prompt'], grads['prompt']['prompt'], rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(out.loss, loss, rtol=1e-5)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(out.phi_grad))
  # Eq. 10's similarity: cos(g_s, g_q) of the raw support and query gradients at θ.
  vg = jax.grad(lambda p, b: model.loss_fn({**params, 'prompt': p}, b)[0])
  gs, gq = _jit(lambda p: (jax.vmap(vg, (None, 0))(p, sets['support']),
                           jax.vmap(vg, (None, 0))(p, sets['query'])))(params['prompt'])
  gs, gq = (np.asarray(g['prompt']).reshape(M, -1) for g in (gs, gq))
  sims = np.sum(gs * gq, 1) / np.linalg.norm(gs, axis=1) / np.linalg.norm(gq, axis=1)
  np.testing.assert_allclose(out.similarity, np.mean(sims), rtol=1e-4)


def test_train_step_curriculum_state(base):
  """Step 1: s = −1 gives b = 0 and λ = 1 (Beta(α, 0)); the stored s is mean_i cos(ψ(g_s,i), g_q,i) with
  g_q at θ on the λ = 1 mixed query set; L_reg is ‖z − b‖² from the gate's formula; step 2 uses
  b = 2^((1+s)/2) − 1."""
  model, params = base
  cfg = supmer.SupmerConfig()
  state_params = {**params, 'supmer': supmer.init_supmer_params(cfg, model)}
  state_params['supmer']['phi'] = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _phi(cfg, scale=0.3))
  opt = supmer.table6_optimizer(cfg, total_steps=10)
  state = ts.TrainState.create(state_params, opt)
  sets = _sets(5)
  flat = {f'{s}/{k}': v for s in supmer.SETS for k, v in sets[s].items()}
  step = _jit(supmer.make_train_step(model, opt, cfg))
  new, metrics = step(state, flat)
  phi = jax.tree.map(lambda x: np.asarray(x, np.float64), state_params['supmer']['phi'])

  def join(p):
    return {**params, 'prompt': {'prompt': p}}

  theta = params['prompt']['prompt']

  @_jit
  def grads_and_reps(theta):
    out = []
    for i in range(M):
      sup, q, mq = (_task(sets[k], i) for k in ('support', 'query', 'mix_query'))
      out.append((jax.grad(lambda p: model.loss_fn(join(p), sup)[0])(theta), ref_rep(model, join(theta), sup),
                  jax.grad(lambda p: ref_soft_loss(model, join(p), q, mq, 1.0))(theta)))
    return out

  sims, regs = [], []
  for gs, rep, gq in grads_and_reps(theta):
    reg = ref_psi(phi, np.asarray(gs, np.float64), np.asarray(rep, np.float64), 'affine')
    gq = np.asarray(gq, np.float64)
    sims.append(float(np.sum(reg * gq) / np.linalg.norm(reg) / np.linalg.norm(gq)))
    regs.append(float(np.sum((ref_gate(phi, np.asarray(rep, np.float64)) - 0.0) ** 2)))   # ‖z − b‖², b = 0
  s1 = float(new.params['supmer']['curriculum']['similarity'])
  assert float(metrics['curriculum_b']) == 0.0 and float(metrics['mixing_ratio_mean']) == 1.0
  # Eq. 20: L_reg = ‖z − b‖², the squared norm summed over the d gate dimensions (mean over the tasks).
  np.testing.assert_allclose(float(metrics['reg_loss']), np.mean(regs), rtol=1e-4)
  np.testing.assert_allclose(s1, np.mean(sims), rtol=1e-4)
  # The transformer is frozen; θ moves by Adam's first step (≈ lr = 0.1 per element), φ by ≈ 1e-4.
  for k in ('encoder', 'decoder', 'token_embedder'):
    assert all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(new.params[k]), jax.tree.leaves(params[k])))
  np.testing.assert_allclose(np.abs(new.params['prompt']['prompt'] - theta), 0.1, rtol=1e-3)
  d_phi = np.abs(new.params['supmer']['phi']['transform']['kernel'] - state_params['supmer']['phi']['transform']['kernel'])
  assert 0.5e-4 < d_phi.max() <= 1.01e-4
  _, metrics2 = step(new, flat)
  np.testing.assert_allclose(float(metrics2['curriculum_b']), 2 ** ((1 + s1) / 2) - 1, rtol=1e-5)
