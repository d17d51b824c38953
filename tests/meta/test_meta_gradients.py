"""Meta-gradients of `promptjax.meta.algorithms` against independent references.

1. FOMAML, adapted Reptile (Wu et al. 2022 Algorithms 1-2), prompt Reptile and MTL equal an explicit
   per-clone Python loop written here from `model.loss_fn`, `jax.grad` and optax only (Adafactor and
   SGD inner optimizers, inner gradient clipping, carried inner state, prompt-only outer training, a
   reused T=1 support batch).
2. The vmapped / chunked / scanned paths agree: chunk_size None, 2 and 1 give the same gradients.
3. Wu et al. Appendix B: for small α the FOMAML, MAML and adapted-Reptile meta-gradients match their
   first-order expansions up to O(α²) (error ratio ≈ 4 when α halves), the zeroth-order terms alone
   only up to O(α) (ratio ≈ 2), and g_Reptile = m∘Σ_j g_j + g_FOMAML holds exactly; MAML (outer
   trainable 'all', through the inner loop) also equals an unrolled second-order Python reference.
   MAML through Adafactor with clipping and clone chunks equals `jax.grad` of the inner loop unrolled in
   Python, with either backward pass (Hessian-vector products, or JAX reversing the loop).

The module runs with jax_enable_x64 (restored afterwards) and float64 *parameters*, so that inner
updates φ + u and Reptile's (φ − φ_b)/α carry no float32 parameter round-off (with α = 1e-3 one
float32 ulp of φ is ~1e-4 of the meta-gradient). Activations stay float32 (T5Config.dtype; the model
pins its norms, softmax and loss to float32 anyway): a float64 model compiles about twice as slowly,
and float32-level gradient noise (~1e-7 relative) is far below every tolerance and every O(α²) error
measured here (≥ 2e-5).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from promptjax.meta.algorithms import MetaConfig, meta_gradient
from promptjax.models import PromptableT5, PromptConfig, get_config
from promptjax.training import optimizers

M, T, B = 4, 4, 2          # clones, inner steps, examples per batch
ENC_LEN, DEC_LEN = 6, 4
PROMPT = 'prompt'
DTYPE = 'float32'          # the model's activation dtype (its parameters here are float64, see the docstring)
ADA_LR = 1e-3
SGD_LR = 0.3
SGD_CLIP = 0.1             # the prompt gradient norm is ~0.15 here: this clip bites in the inner loop
NO_CLIP = 1e30             # a traced clip this large scales by exactly 1
ADAFACTOR = optimizers.adafactor(ADA_LR, global_norm_clip=None)
# Compile time dominates this file (2 CPU cores): XLA's CPU backend optimizations are turned off.
_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


@pytest.fixture(scope='module')
def env():
  prev = jax.config.read('jax_enable_x64')
  jax.config.update('jax_enable_x64', True)
  try:
    model = PromptableT5(get_config('tiny', vocab_size=64, num_encoder_layers=1, num_decoder_layers=1,
                                    dtype=DTYPE), PromptConfig(kind='shallow', length=3))
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), model.init_params(jax.random.PRNGKey(0)))
    rng = np.random.RandomState(0)
    data = {'support': _batch(rng, (M, T, B)), 'support1': _batch(rng, (M, 1, B)), 'query': _batch(rng, (M, B))}
    value_and_grad = _jit(jax.value_and_grad(lambda p, batch: model.loss_fn(p, batch)[0]))
    yield dict(model=model, params=params, data=data, value_and_grad=value_and_grad, cache={})
  finally:
    jax.config.update('jax_enable_x64', prev)


def _batch(rng, lead):
  """Random tokens in [2, 64) with padding: inputs of 4..6 tokens, targets of 1..3 tokens + EOS=1."""
  n = int(np.prod(lead))
  enc = rng.randint(2, 64, size=(n, ENC_LEN))
  dec = rng.randint(2, 64, size=(n, DEC_LEN))
  for i in range(n):
    enc[i, rng.randint(4, ENC_LEN + 1):] = 0
    length = rng.randint(1, DEC_LEN)
    dec[i, length] = 1
    dec[i, length + 1:] = 0
  return {'encoder_input_tokens': jnp.asarray(enc.reshape(lead + (ENC_LEN,)), jnp.int32),
          'decoder_target_tokens': jnp.asarray(dec.reshape(lead + (DEC_LEN,)), jnp.int32)}


def _take(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def _zeros(tree):
  return jax.tree.map(jnp.zeros_like, tree)


def _clip(tree, max_norm):
  return tree if max_norm is None else optax.clip_by_global_norm(max_norm).update(tree, None)[0]


def _max_err(a, b):
  """max over leaves of max|a − b| / max(1, max|b|) (absolute error, relative for large leaves)."""
  errs = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y)) / max(1.0, float(jnp.max(jnp.abs(y))))), a, b)
  return max(jax.tree.leaves(errs))


def _assert_close(got, want, tol):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  err = _max_err(got, want)
  assert err <= tol, f'max error {err:.3g} > {tol}'
  return err


# ------------------------------------------------------------------------------------------------
# The reference: an explicit loop over clones and inner steps.

def _jitted(env, opt):
  key = ('opt', id(opt))
  if key not in env['cache']:
    env['cache'][key] = (opt, _jit(opt.init), _jit(opt.update))
  return env['cache'][key][1:]


def reference(env, support, query, *, algorithm, opt, alpha, steps, clip, trainable='all',
              carry=False, query_step=True):
  """(loss, grads, support losses [steps]) of one meta-batch, clone by clone, step by step."""
  vg, params = env['value_and_grad'], env['params']
  opt = optax.GradientTransformation(*_jitted(env, opt))
  keys = tuple(params) if trainable == 'all' else (PROMPT,)
  num = jax.tree.leaves(query)[0].shape[0]
  acc, loss_acc, s_losses = _zeros(params), 0.0, np.zeros(steps)
  state = opt.init(params[PROMPT])
  for b in range(num):
    sup_b, q_b = _take(support, b), _take(query, b)
    n_sup = jax.tree.leaves(sup_b)[0].shape[0]
    sup_t = [_take(sup_b, t if n_sup > 1 else 0) for t in range(steps)]
    if algorithm == 'mtl':
      grads_b, loss_b = _zeros(params), 0.0
      for batch in sup_t + [q_b]:
        l, g = vg(params, batch)
        grads_b = jax.tree.map(lambda a, x: a + x / (steps + 1), grads_b, g)
        loss_b += float(l) / (steps + 1)
      s_losses += [float(vg(params, batch)[0]) for batch in sup_t]
      acc = jax.tree.map(jnp.add, acc, {k: grads_b[k] if k in keys else _zeros(params[k]) for k in params})
      loss_acc += loss_b
      continue
    if not carry:
      state = opt.init(params[PROMPT])
    prompt = params[PROMPT]
    for t in range(steps):
      l, g = vg({**params, PROMPT: prompt}, sup_t[t])
      s_losses[t] += float(l)
      u, state = opt.update(_clip(g[PROMPT], clip), state, prompt)
      prompt = optax.apply_updates(prompt, u)
    adapted = {**params, PROMPT: prompt}
    q_loss, g_q = vg(adapted, q_b)
    loss_acc += float(q_loss)
    if algorithm == 'fomaml':
      contrib = {k: g_q[k] if k in keys else _zeros(params[k]) for k in params}
    elif algorithm == 'reptile' and not query_step:
      contrib = {k: _zeros(params[k]) for k in params}
      contrib[PROMPT] = jax.tree.map(lambda a, x: (a - x) / alpha, params[PROMPT], prompt)
    elif algorithm == 'reptile':
      g_joint = _clip({k: g_q[k] for k in keys}, clip)
      new = dict(adapted)
      if PROMPT in keys:
        u, state = opt.update(g_joint[PROMPT], state, prompt)
        new[PROMPT] = optax.apply_updates(prompt, u)
      tr = {k: params[k] for k in keys if k != PROMPT}
      if tr:
        u, _ = opt.update({k: g_joint[k] for k in tr}, opt.init(tr), tr)   # fresh transformer state
        new.update(optax.apply_updates(tr, u))
      contrib = {k: jax.tree.map(lambda a, x: (a - x) / alpha, params[k], new[k]) if k in keys
                 else _zeros(params[k]) for k in params}
    else:
      raise ValueError(algorithm)
    acc = jax.tree.map(jnp.add, acc, contrib)
  return loss_acc / num, jax.tree.map(lambda g: g / num, acc), s_losses / num


# ------------------------------------------------------------------------------------------------
# 1. The implementation against the reference.

def _adafactor(algorithm, **kw):
  return dict(algorithm=algorithm, inner_optimizer=ADAFACTOR, inner_learning_rate=ADA_LR,
              inner_global_norm_clip=1.0, **kw)


# name: (MetaConfig kwargs, trainable, support key). 'support' has one batch per inner step
# ([M, T, B, len]); 'support1' has one batch reused for all T steps ([M, 1, B, len]).
CASES = {
    'fomaml_adafactor': (_adafactor('fomaml'), 'all', 'support'),
    'reptile_adafactor': (_adafactor('reptile'), 'all', 'support'),
    'reptile_adafactor_carry': (_adafactor('reptile', carry_inner_state=True), 'all', 'support'),
    'reptile_adafactor_prompt': (_adafactor('reptile'), 'prompt', 'support'),
    'prompt_reptile_adafactor': (_adafactor('reptile', reptile_query_step=False), 'all', 'support'),
    'mtl': (dict(algorithm='mtl', inner_learning_rate=SGD_LR), 'all', 'support'),
    # SGD, the support batch reused at every step; run through `_traced` (shared with test 3).
    'fomaml_sgd_reused': (dict(algorithm='fomaml', inner_optimizer=optax.sgd(SGD_LR), inner_learning_rate=SGD_LR,
                               inner_global_norm_clip=SGD_CLIP), 'all', 'support1'),
    'reptile_sgd_reused': (dict(algorithm='reptile', inner_optimizer=optax.sgd(SGD_LR), inner_learning_rate=SGD_LR,
                                inner_global_norm_clip=SGD_CLIP), 'all', 'support1'),
}
TRACED = ('fomaml_sgd_reused', 'reptile_sgd_reused')


def _traced(env, algorithm, chunk_size=None):
  """meta_gradient with SGD(α) and the clip as traced arguments (one compile for every α and clip):
  fn(params, support, query, α, clip). inner_learning_rate=1, so Reptile returns φ − mean_b φ_b and
  is divided by α here (the division by `inner_learning_rate` itself is checked by the Adafactor cases)."""
  key = ('traced', algorithm, chunk_size)
  if key not in env['cache']:
    def fn(p, sup, q, a, clip):
      cfg = MetaConfig(algorithm=algorithm, inner_steps=T, inner_optimizer=optax.sgd(a),
                       inner_learning_rate=1.0, inner_global_norm_clip=clip, chunk_size=chunk_size)
      loss, grads, metrics = meta_gradient(env['model'], p, sup, q, cfg, trainable='all')
      if algorithm == 'reptile':
        grads = jax.tree.map(lambda g: g / a, grads)
      return loss, grads, metrics
    env['cache'][key] = _jit(fn)
  return env['cache'][key]


def run_case(env, name, **overrides):
  """meta_gradient of a case (jitted, memoized per (name, overrides))."""
  key = (name, tuple(sorted(overrides.items())))
  if key not in env['cache']:
    kwargs, trainable, sup = CASES[name]
    if name in TRACED:
      assert set(overrides) <= {'chunk_size'}
      fn = _traced(env, kwargs['algorithm'], **overrides)
      out = fn(env['params'], env['data'][sup], env['data']['query'], kwargs['inner_learning_rate'],
               kwargs['inner_global_norm_clip'])
    else:
      cfg = MetaConfig(inner_steps=T, **{**kwargs, **overrides})
      fn = _jit(lambda p, s, q: meta_gradient(env['model'], p, s, q, cfg, trainable=trainable))
      out = fn(env['params'], env['data'][sup], env['data']['query'])
    env['cache'][key] = jax.block_until_ready(out)
  return env['cache'][key]


@pytest.mark.parametrize('name', list(CASES))
def test_matches_per_clone_loop(env, name):
  kwargs, trainable, sup = CASES[name]
  loss, grads, metrics = run_case(env, name)
  ref_loss, ref_grads, ref_s = reference(
      env, env['data'][sup], env['data']['query'], algorithm=kwargs['algorithm'],
      opt=kwargs.get('inner_optimizer', ADAFACTOR), alpha=kwargs['inner_learning_rate'], steps=T,
      clip=kwargs.get('inner_global_norm_clip'), trainable=trainable,
      carry=kwargs.get('carry_inner_state', False), query_step=kwargs.get('reptile_query_step', True))
  err = _assert_close(grads, ref_grads, 1e-5)
  print(f'{name}: max grad error {err:.2e}')
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  np.testing.assert_allclose([float(metrics['support_loss_first']), float(metrics['support_loss_last'])],
                             [ref_s[0], ref_s[-1]], rtol=1e-5)
  assert float(optax.tree.norm(grads[PROMPT])) > 1e-3
  if trainable == 'prompt' or (kwargs['algorithm'] == 'reptile' and not kwargs.get('reptile_query_step', True)):
    for k in grads:
      if k != PROMPT:
        assert all(bool(jnp.all(g == 0)) for g in jax.tree.leaves(grads[k])), k
  else:
    assert float(optax.tree.norm(grads['decoder'])) > 1e-3


def test_carried_state_differs_from_fresh_state(env):
  """carry_inner_state changes the result (Adafactor's step count and moments carry across clones)."""
  fresh, carried = run_case(env, 'reptile_adafactor')[1], run_case(env, 'reptile_adafactor_carry')[1]
  assert _max_err(carried, fresh) > 1e-3


MAML_ADAFACTOR = optimizers.adafactor(0.05, global_norm_clip=None)   # large enough for a visible 2nd-order term


def _maml_adafactor_reference(env):
  """(support, query, jax.value_and_grad of the meta-objective with the inner loop written as a plain Python
  loop of optax calls, clone by clone, FoMAML's gradient): 2 clones, 2 inner steps (memoized)."""
  if 'maml_adafactor' not in env['cache']:
    params, model = env['params'], env['model']
    support = jax.tree.map(lambda x: x[:2, :2], env['data']['support'])
    query = jax.tree.map(lambda x: x[:2], env['data']['query'])
    loss = lambda p, batch: model.loss_fn(p, batch)[0]

    def outer(phi):
      total = 0.0
      for b in range(2):
        prompt, state = phi[PROMPT], MAML_ADAFACTOR.init(phi[PROMPT])
        for t in range(2):
          g = jax.grad(lambda q: loss({**phi, PROMPT: q}, _take(_take(support, b), t)))(prompt)
          u, state = MAML_ADAFACTOR.update(_clip(g, SGD_CLIP), state, prompt)
          prompt = optax.apply_updates(prompt, u)
        total = total + loss({**phi, PROMPT: prompt}, _take(query, b))
      return total / 2

    cfg = MetaConfig('fomaml', inner_steps=2, inner_optimizer=MAML_ADAFACTOR, inner_learning_rate=0.05,
                     inner_global_norm_clip=SGD_CLIP)
    fomaml = _jit(lambda p: meta_gradient(model, p, support, query, cfg, trainable='all'))(params)[1]
    env['cache']['maml_adafactor'] = (support, query, _jit(jax.value_and_grad(outer))(params), fomaml)
  return env['cache']['maml_adafactor']


@pytest.mark.parametrize('backward', ['hvp', 'autodiff'])
def test_maml_adafactor_clipped_matches_unrolled_autodiff(env, backward):
  """Second-order MAML through a stateful, parameter-scaled inner optimizer (Adafactor) with clipping that
  bites, outer trainable 'all': both backward passes (`maml_backward`) equal `jax.grad` of the inner loop
  unrolled in Python; FoMAML differs from it by far more than the tolerance (the second-order term is
  material). The HVP backward runs its 2 clones' products in two parts (`hvp_chunks`' default), the
  autodiff one the clones in two chunks of one (`chunk_size`)."""
  support, query, (ref_loss, ref_grads), fomaml = _maml_adafactor_reference(env)
  cfg = MetaConfig('maml', inner_steps=2, inner_optimizer=MAML_ADAFACTOR, inner_learning_rate=0.05,
                   inner_global_norm_clip=SGD_CLIP, chunk_size=None if backward == 'hvp' else 1,
                   maml_backward=backward)
  assert backward != 'hvp' or cfg.hvp_parts(2) == 2
  loss, grads, _ = _jit(lambda p: meta_gradient(env['model'], p, support, query, cfg, trainable='all'))(env['params'])
  err = _assert_close(grads, ref_grads, 1e-5)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  print(f'maml {backward}: max error {err:.2e}; FoMAML against it {_max_err(fomaml, ref_grads):.2e}')
  assert _max_err(fomaml, ref_grads) > 100 * 1e-5


def test_hvp_chunks_that_do_not_divide_the_clones_are_refused(env):
  from promptjax.errors import MetaError
  with pytest.raises(MetaError, match='hvp_chunks must be >= 1'):
    MetaConfig('maml', hvp_chunks=0)
  cfg = MetaConfig('maml', inner_steps=T, inner_optimizer=optax.sgd(SGD_LR), inner_learning_rate=SGD_LR, hvp_chunks=3)
  with pytest.raises(MetaError, match='hvp_chunks=3 does not divide the 4 clones'):
    meta_gradient(env['model'], env['params'], env['data']['support'], env['data']['query'], cfg)
  assert MetaConfig('maml').hvp_parts(3) == 1 and MetaConfig('maml').hvp_parts(4) == 2


# ------------------------------------------------------------------------------------------------
# 2. Chunked and vmapped paths agree.

# Reptile with SGD: Adafactor's scale-free update G/sqrt(V) turns the float32 round-off of small
# gradient entries into ~1e-6 relative differences of (φ − φ_b)/α between vmap widths (Adafactor
# Reptile is checked against the loop at 1e-5 above, its chunk-1 path by the carried-state case).
@pytest.mark.parametrize('name', ['fomaml_adafactor', 'reptile_sgd_reused'])
def test_chunk_size_does_not_change_the_result(env, name):
  loss, grads, _ = run_case(env, name)
  for chunk in (2, 1):
    c_loss, c_grads, _ = run_case(env, name, chunk_size=chunk)
    err = _assert_close(c_grads, grads, 1e-6)
    print(f'{name} chunk_size={chunk}: max grad error {err:.2e}')
    np.testing.assert_allclose(float(c_loss), float(loss), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# 3. Wu et al. Appendix B: first-order expansions for small α (SGD, no clipping, one support batch
# reused at every step, every clone the same task so the meta-gradient is that task's).

ALPHAS = (0.04, 0.02, 0.01, 0.005)


def _mask(tree):
  """m∘v: keep the prompt, zero every transformer leaf."""
  return {k: (v if k == PROMPT else _zeros(v)) for k, v in tree.items()}


def _tree_norm(a, b):
  return float(optax.tree.norm(jax.tree.map(jnp.subtract, a, b)))


def _axpy(*terms):
  """Σ c_i v_i for (c_i, v_i) pairs."""
  out = jax.tree.map(lambda x: terms[0][0] * x, terms[0][1])
  for c, v in terms[1:]:
    out = jax.tree.map(lambda o, x: o + c * x, out, v)
  return out


@pytest.fixture(scope='module')
def appendix_b(env):
  model, params = env['model'], env['params']
  sup_b, q_b = _take(_take(env['data']['support1'], 0), 0), _take(env['data']['query'], 0)
  sup = jax.tree.map(lambda x: jnp.broadcast_to(x, (M, 1) + x.shape), sup_b)   # [M, 1, B, len]
  query = jax.tree.map(lambda x: jnp.broadcast_to(x, (M,) + x.shape), q_b)     # [M, B, len]

  def maml(p, a):
    cfg = MetaConfig(algorithm='maml', inner_steps=T, inner_optimizer=optax.sgd(a), inner_learning_rate=1.0,
                     inner_global_norm_clip=None)
    return meta_gradient(model, p, sup, query, cfg, trainable='all')[1]

  fns = {'fomaml': lambda p, a: _traced(env, 'fomaml')(p, sup, query, a, NO_CLIP)[1],
         'reptile': lambda p, a: _traced(env, 'reptile')(p, sup, query, a, NO_CLIP)[1],
         'maml': _jit(maml)}
  results = {a: {alg: jax.block_until_ready(fn(params, a)) for alg, fn in fns.items()} for a in ALPHAS}

  loss = lambda p, batch: model.loss_fn(p, batch)[0]
  hvp = _jit(lambda p, v, batch: jax.jvp(lambda q: jax.grad(loss)(q, batch), (p,), (v,))[1])
  vg = env['value_and_grad']
  g0, g_bar = vg(params, sup_b)[1], vg(params, q_b)[1]
  mg0 = _mask(g0)
  terms = dict(g0=g0, g_bar=g_bar, mg0=mg0,
               Hbar_mg0=hvp(params, mg0, q_b),             # H̄ (m∘g0)
               H0_mg0=hvp(params, mg0, sup_b),             # H0 (m∘g0)
               H0_mgbar=hvp(params, _mask(g_bar), sup_b),  # H0 (m∘ḡ)
               H0_gbar=hvp(params, g_bar, sup_b))          # H0 ḡ
  return dict(results=results, terms=terms, sup_b=sup_b, q_b=q_b)


def _expansions(terms, a, t=T):
  """{algorithm: (zeroth-order, first-order approximation)} at α = a."""
  g_bar, mg0 = terms['g_bar'], terms['mg0']
  return {
      # g_FOMAML = L'_test(φ_T) = ḡ − αT H̄ m∘g0 + O(α²)
      'fomaml': (g_bar, _axpy((1, g_bar), (-a * t, terms['Hbar_mg0']))),
      # g_MAML = U'(φ0)ᵀ⋯U'(φ_{T-1})ᵀ L'_test(φ_T) with U'(φ) = I − α diag(m) H(φ), so
      # U'ᵀ = I − α H diag(m): g_MAML = ḡ − αT H0 (m∘ḡ) − αT H̄ (m∘g0) + O(α²). The paper's "M∘H0 ḡ" is
      # this product (Hessian columns masked); its transformer rows are MAML's extra transformer term.
      'maml': (g_bar, _axpy((1, g_bar), (-a * t, terms['H0_mgbar']), (-a * t, terms['Hbar_mg0']))),
      # g_Reptile = m∘Σ_j g_j + g_FOMAML = ḡ + T m∘g0 − α T(T−1)/2 m∘(H0 m∘g0) − αT H̄ m∘g0 + O(α²)
      'reptile': (_axpy((1, g_bar), (t, mg0)),
                  _axpy((1, g_bar), (t, mg0), (-a * t * (t - 1) / 2, _mask(terms['H0_mg0'])),
                        (-a * t, terms['Hbar_mg0']))),
  }


def _errors(appendix_b, alg, order, terms=None):
  terms = terms or appendix_b['terms']
  return [_tree_norm(appendix_b['results'][a][alg], _expansions(terms, a)[alg][order]) for a in ALPHAS]


def _ratios(errs):
  return [e1 / e2 for e1, e2 in zip(errs, errs[1:])]


@pytest.mark.parametrize('alg', ['fomaml', 'maml', 'reptile'])
def test_appendix_b_first_order_expansion(appendix_b, alg):
  first, zeroth = _errors(appendix_b, alg, 1), _errors(appendix_b, alg, 0)
  print(f'{alg}: first-order errors {np.round(first, 7)} ratios {np.round(_ratios(first), 3)}; '
        f'zeroth-order errors {np.round(zeroth, 5)} ratios {np.round(_ratios(zeroth), 3)}')
  assert all(3.0 < r < 5.0 for r in _ratios(first)), _ratios(first)     # O(α²)
  assert all(1.6 < r < 2.4 for r in _ratios(zeroth)), _ratios(zeroth)   # O(α): the α terms matter
  assert all(e1 < 0.2 * e0 for e1, e0 in zip(first, zeroth))


def test_appendix_b_maml_mask_reading(appendix_b):
  """Masking the Hessian's rows instead (ḡ − αT m∘(H0 ḡ) − αT H̄ m∘g0) is only O(α) accurate."""
  terms = dict(appendix_b['terms'], H0_mgbar=_mask(appendix_b['terms']['H0_gbar']))
  wrong = _errors(appendix_b, 'maml', 1, terms)
  print(f'maml, rows masked: errors {np.round(wrong, 5)} ratios {np.round(_ratios(wrong), 3)}')
  assert all(1.6 < r < 2.4 for r in _ratios(wrong)), _ratios(wrong)


def test_appendix_b_exact_identities(env, appendix_b):
  """Up to round-off: g_FOMAML = L'_test(φ_T), g_Reptile = m∘Σ_{j<T} g_j + g_FOMAML with
  g_j = L'_train(φ_j), and g_MAML (trainable 'all') = jax.grad of an unrolled Python inner loop."""
  vg, params, model = env['value_and_grad'], env['params'], env['model']
  sup_b, q_b = appendix_b['sup_b'], appendix_b['q_b']
  loss = lambda p, batch: model.loss_fn(p, batch)[0]

  @_jit
  def maml_reference(p, a):
    def outer(phi):
      prompt = phi[PROMPT]
      for _ in range(T):
        g = jax.grad(lambda q: loss({**phi, PROMPT: q}, sup_b))(prompt)
        prompt = jax.tree.map(lambda x, y: x - a * y, prompt, g)   # U(φ) = φ − α m∘L'_train(φ)
      return loss({**phi, PROMPT: prompt}, q_b)
    return jax.grad(outer)(p)

  a = ALPHAS[0]
  res = appendix_b['results'][a]
  phi, sum_g = params, _zeros(params)
  for _ in range(T):
    g = vg(phi, sup_b)[1]
    sum_g = jax.tree.map(jnp.add, sum_g, g)
    phi = {**phi, PROMPT: jax.tree.map(lambda x, y: x - a * y, phi[PROMPT], g[PROMPT])}
  errs = [_assert_close(res['fomaml'], vg(phi, q_b)[1], 1e-5),
          _assert_close(res['reptile'], _axpy((1, _mask(sum_g)), (1, res['fomaml'])), 1e-5),
          _assert_close(res['maml'], maml_reference(params, a), 1e-5)]
  print('exact identities (fomaml, reptile, maml): max errors', errs)
