"""promptjax's prompt-only second-order MAML meta-gradient against two independent references.

The meta-objective of one meta-batch of M clones, with SGD(α) inner steps on the prompt P only:

  F(P) = mean_m L(U_T^m(P); query_m),   U^m_{t+1}(P) = U^m_t(P) − α ∇_P L(U^m_t(P); support_{m,t}),

and `meta_gradient(..., MetaConfig('maml', ...), trainable='prompt')['prompt']` must equal ∇F(P0):

1. central finite differences of F (computed here from `model.loss_fn` and `jax.grad` only, not from
   `promptjax.meta`) over *every* coordinate of a tiny [3, 8] prompt, in float64;
2. PyTorch: the same weights exported to HF (`hf.export_hf`) and loaded by
   `T5ForConditionalGeneration` in float64, the prompt fed as ``inputs_embeds = [P; E(x)]`` with the
   attention mask extended by L, the inner steps written with `torch.func.grad` (differentiated
   through: create_graph semantics) and the outer gradient with `torch.func.grad` of that.

Float64. promptjax's model pins float32 in several places whatever `T5Config.dtype` says (RMSNorm
statistics, attention logits/softmax, the relative-position and mask biases, the loss), so with x64
on and float64 parameters it still computes in mixed float32 precision: a float64 FD check of it
is impossible. The references therefore run on a *test-local* float64 shim (tests/helpers.py): inside `jax.enable_x64`
the `jnp` module seen by `promptjax.models.layers`, `promptjax.models.t5` and
`promptjax.models.losses` is swapped (monkeypatch, restored afterwards) for a proxy whose
``float32`` is ``float64``; `test_shim_is_float64_and_matches_hf` proves the traced loss then has no
f32 value at all and equals HF float64. `promptjax.meta` itself is not touched. The real float32
path (no shim) is checked separately against the torch float64 reference, with the same TOL.
HF's T5 is not fully float64 either: even after `.double()` it computes the RMSNorm variance and the
attention softmax in float32, which bounds the torch reference's accuracy at ~1e-6 relative on
gradients (observed), still two orders below TOL.

The second-order term matters here: α is large enough that MAML and FOMAML (same settings) differ by
far more than the tolerance, and FOMAML is checked against its own torch reference, so a
first-order bug (a missing / stopped second-order term) would fail.
"""

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp
import optax

import promptjax.models.layers as layers_mod
from promptjax.checkpoints import hf as hf_ckpt
from promptjax.meta.algorithms import MetaConfig, meta_gradient
from tests.helpers import float64_model, padded_batch, tiny_prompt_model

TOL = 1e-4          # relative error of the full prompt gradient vector (the brief's bound)
ALPHA = 1.0         # inner SGD learning rate: makes the second-order term large on this tiny model
L = 3               # prompt length
M = 2               # clones per meta-batch
B = 2               # examples per support / query batch
ENC_LEN, TGT_LEN = 6, 4
VOCAB = 64
FD_STEP = 1e-4      # central differences in float64: truncation ~h², round-off ~1e-16 / h


def _rel(got, want):
  got, want = np.ravel(np.asarray(got, np.float64)), np.ravel(np.asarray(want, np.float64))
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _batch(rng):
  """Right-padded encoder inputs and targets ending in EOS=1, random lengths (at least one row full)."""
  return padded_batch(rng, (B,), ENC_LEN, TGT_LEN, VOCAB)


def _stack(batches):
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def _meta_batch(seed, steps):
  """support [M, steps, B, len] (a different batch per clone and step), query [M, B, len]."""
  rng = np.random.RandomState(seed)
  support = _stack([_stack([_batch(rng) for _ in range(steps)]) for _ in range(M)])
  query = _stack([_batch(rng) for _ in range(M)])
  return support, query


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """float32 model + params (the production path), and the same weights as an HF float64 model."""
  model = tiny_prompt_model(VOCAB, L)
  params = model.init_params(jax.random.PRNGKey(0))
  out = str(tmp_path_factory.mktemp('hf'))
  hf_ckpt.export_hf(params, model.config, out)
  import transformers
  hf = transformers.T5ForConditionalGeneration.from_pretrained(out, attn_implementation='eager')
  hf = hf.double().eval().requires_grad_(False)
  return model, params, hf


@pytest.fixture
def f64(setup):
  """Per test: x64 on and the float64 shim installed, both undone afterwards (tests without this
  fixture run the unmodified float32 model); yields (float64 model, float64 params)."""
  model, params, _ = setup
  with float64_model(model, params) as model_and_params:
    yield model_and_params


# --------------------------------------------------------------------------------------------------
# References.


def _jax_meta_objective(model, params, support, query, steps):
  """F(P) from model.loss_fn + jax.grad only (no promptjax.meta code)."""
  frozen = {k: v for k, v in params.items() if k != 'prompt'}

  def loss(p, batch):
    return model.loss_fn({**frozen, 'prompt': {'prompt': p}}, batch)[0]

  def clone(p, sup, q):
    for t in range(steps):
      p = p - ALPHA * jax.grad(loss)(p, {k: v[t] for k, v in sup.items()})
    return loss(p, q)

  def objective(p0):
    return jnp.mean(jax.vmap(clone, in_axes=(None, 0, 0))(p0, support, query))

  return objective


def _torch_loss(hf, prompt, batch):
  """HF's loss (mean CE over target tokens > 0, EOS included) with inputs_embeds = [P; E(x)]."""
  enc = torch.tensor(batch['encoder_input_tokens'], dtype=torch.long)
  tgt = torch.tensor(batch['decoder_target_tokens'], dtype=torch.long)
  b = enc.shape[0]
  embeds = torch.cat([prompt[None].expand(b, -1, -1), hf.shared(enc)], dim=1)
  mask = torch.cat([torch.ones(b, prompt.shape[0], dtype=torch.long), (enc > 0).long()], dim=1)
  dec_in = torch.cat([torch.zeros(b, 1, dtype=torch.long), tgt[:, :-1]], dim=1)
  labels = torch.where(tgt > 0, tgt, torch.full_like(tgt, -100))
  return hf(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=dec_in, labels=labels).loss


def _torch_meta_gradients(hf, prompt0, support, query, steps):
  """(MAML, FOMAML) prompt meta-gradients, mean over clones, with torch.func in float64."""
  grad_loss = torch.func.grad(lambda p, batch: _torch_loss(hf, p, batch))

  def adapt(p, sup):
    for t in range(steps):
      p = p - ALPHA * grad_loss(p, sup[t])  # inside torch.func.grad below: differentiated through
    return p

  maml, fomaml = [], []
  for m in range(M):
    sup = [{k: v[m, t] for k, v in support.items()} for t in range(steps)]
    q = {k: v[m] for k, v in query.items()}
    maml.append(torch.func.grad(lambda p: _torch_loss(hf, adapt(p, sup), q))(prompt0))
    fomaml.append(grad_loss(adapt(prompt0, sup).detach(), q))
  return torch.stack(maml).mean(0).numpy(), torch.stack(fomaml).mean(0).numpy()


def _meta(model, params, support, query, algorithm, steps, **kw):
  cfg = MetaConfig(algorithm, inner_steps=steps, inner_optimizer=optax.sgd(ALPHA),
                   inner_learning_rate=ALPHA, inner_global_norm_clip=None, **kw)
  fn = jax.jit(lambda p, s, q: meta_gradient(model, p, s, q, cfg, trainable='prompt'))
  return fn(params, support, query)


_RESULTS = {}
_TORCH = {}


def _torch_reference(hf, prompt0, steps):
  """torch (MAML, FOMAML) meta-gradients on the meta-batch of `steps` (memoized)."""
  if steps not in _TORCH:
    support, query = _meta_batch(seed=steps, steps=steps)
    _TORCH[steps] = _torch_meta_gradients(hf, torch.tensor(np.asarray(prompt0, np.float64)),
                                          support, query, steps)
  return _TORCH[steps]


def _promptjax_float64(model64, params64, steps):
  """promptjax's float64 MAML and FOMAML results on the meta-batch of `steps`, as numpy (computed once
  and shared by the FD and the torch test: compiling the second-order step dominates the runtime)."""
  if steps not in _RESULTS:
    support, query = _meta_batch(seed=steps, steps=steps)
    loss, grads, _ = _meta(model64, params64, support, query, 'maml', steps)
    _, fo_grads, _ = _meta(model64, params64, support, query, 'fomaml', steps)
    assert grads['prompt']['prompt'].dtype == jnp.float64
    _RESULTS[steps] = dict(
        support=support, query=query, loss=float(loss),
        maml=np.asarray(grads['prompt']['prompt']), fomaml=np.asarray(fo_grads['prompt']['prompt']),
        frozen_max=max(float(jnp.max(jnp.abs(g))) for k, v in grads.items() if k != 'prompt'
                       for g in jax.tree.leaves(v)))
  return _RESULTS[steps]


# --------------------------------------------------------------------------------------------------
# Tests.


def test_shim_is_float64_and_matches_hf(setup, f64):
  """Sanity first, so a failure points at the model and not at MAML: the shimmed model is float64
  throughout, and its loss and prompt gradient equal HF float64's. (HF's T5 itself keeps its RMSNorm
  variance and attention softmax in float32 even in a float64 model, so agreement is ~1e-8 relative,
  not 1e-15; that floor is 4 orders below TOL.)"""
  _, _, hf = setup
  model64, params64 = f64
  rng = np.random.RandomState(100)
  batch = _batch(rng)
  jaxpr = str(jax.make_jaxpr(lambda p: model64.loss_fn(p, batch)[0])(params64))
  assert 'f32' not in jaxpr
  p0 = params64['prompt']['prompt']
  prompt_t = torch.tensor(np.asarray(p0))
  grad_fn = jax.jit(jax.value_and_grad(
      lambda p, b: model64.loss_fn({**params64, 'prompt': {'prompt': p}}, b)[0]))
  for _ in range(3):
    batch = _batch(rng)
    loss, g = grad_fn(p0, batch)
    assert loss.dtype == jnp.float64
    want = float(_torch_loss(hf, prompt_t, batch))
    g_t = torch.func.grad(lambda p: _torch_loss(hf, p, batch))(prompt_t).numpy()
    print(f'plain loss: rel err vs HF {abs(float(loss) - want) / want:.1e}; '
          f'prompt grad rel err vs HF {_rel(g, g_t):.1e}')
    np.testing.assert_allclose(float(loss), want, rtol=1e-7)
    assert _rel(g, g_t) <= 1e-6


@pytest.mark.parametrize('steps', [1, 2])
def test_maml_matches_finite_differences(f64, steps):
  """∇F by central differences over all 24 prompt coordinates, float64, F from model.loss_fn/jax.grad."""
  model64, params64 = f64
  r = _promptjax_float64(model64, params64, steps)
  assert r['frozen_max'] == 0.0  # trainable='prompt': zero gradient on the transformer
  p0 = params64['prompt']['prompt']
  objective = jax.jit(jax.vmap(_jax_meta_objective(model64, params64, r['support'], r['query'], steps)))
  eye = jnp.eye(p0.size, dtype=jnp.float64).reshape((p0.size,) + p0.shape)
  f = np.asarray(objective(jnp.concatenate([p0[None], p0 + FD_STEP * eye, p0 - FD_STEP * eye])))
  np.testing.assert_allclose(r['loss'], f[0], rtol=1e-12)  # the reported loss is F(P0)
  fd = ((f[1:1 + p0.size] - f[1 + p0.size:]) / (2 * FD_STEP)).reshape(p0.shape)
  err = _rel(r['maml'], fd)
  fo_gap = _rel(r['fomaml'], fd)
  print(f'T={steps}: maml rel err vs central FD = {err:.2e}; fomaml rel distance from FD = {fo_gap:.2e}')
  assert err <= TOL
  # The second-order term is not negligible: first-order MAML is far from the true gradient.
  assert fo_gap > 100 * TOL


@pytest.mark.parametrize('steps', [1, 2])
def test_maml_matches_torch_func(setup, f64, steps):
  """∇F by torch.func (grad of the query loss after grad-based inner steps) on the HF float64 model."""
  _, _, hf = setup
  model64, params64 = f64
  r = _promptjax_float64(model64, params64, steps)
  want_maml, want_fomaml = _torch_reference(hf, params64['prompt']['prompt'], steps)
  err = _rel(r['maml'], want_maml)
  fo_err = _rel(r['fomaml'], want_fomaml)
  gap = _rel(want_fomaml, want_maml)
  print(f'T={steps}: maml rel err vs torch = {err:.2e}; fomaml rel err vs torch = {fo_err:.2e}; '
        f'torch |fomaml - maml| / |maml| = {gap:.2e}')
  assert err <= TOL
  assert fo_err <= TOL
  assert gap > 100 * TOL


def test_float32_path_matches_float64_reference(setup):
  """The unmodified float32 production model (no shim, x64 off): its plain loss and its MAML
  meta-gradient (T=1) agree with the HF float64 reference, the meta-gradient within the same TOL."""
  model, params, hf = setup
  assert not jax.config.jax_enable_x64 and layers_mod.jnp is jnp
  prompt_t = torch.tensor(np.asarray(params['prompt']['prompt']), dtype=torch.float64)
  batch = _batch(np.random.RandomState(200))
  np.testing.assert_allclose(float(jax.jit(lambda p, b: model.loss_fn(p, b)[0])(params, batch)),
                             float(_torch_loss(hf, prompt_t, batch)), rtol=1e-5)
  support, query = _meta_batch(seed=1, steps=1)
  want_maml, _ = _torch_reference(hf, params['prompt']['prompt'], 1)
  _, grads, _ = _meta(model, params, support, query, 'maml', 1)
  got = grads['prompt']['prompt']
  assert got.dtype == jnp.float32
  err = _rel(got, want_maml)
  print(f'float32 maml T=1: rel err vs torch float64 = {err:.2e}')
  assert err <= TOL
