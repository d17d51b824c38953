"""SUPMER (Pan et al. 2023): meta-prompt learning with meta-gradient regularization and
curriculum-based task augmentation (§3.3-3.5, Appendix A.1, A.3, A.4 Algorithms 1-2, Table 6).

Only the shallow soft prompt θ [L, d] and the regularizer parameters φ are trained; the transformer is
frozen (SUPMER tunes the prompt only). A meta-step sees M anchor tasks (Table 6: 4), task i with a
support set S_i, a query set Q_i and the query set Q_j of its mix partner τ_j (Alg. 2 line 8), as one
flat batch ``'support/<f>' [M, S, ...]``, ``'query/<f>' [M, Q, ...]``, ``'mix_query/<f>' [M, Q, ...]``.

Meta-gradient regularization (§3.4, Eq. 5-6). For a prompt gradient g [L, d]

  ψ_φ(g) = z ⊙ h(g) + (1 − z) ⊙ g,        z = σ(H W + b) ∈ (0, 1)^d  (one gate per embedding
                                           dimension, shared by the L prompt tokens)

where H ∈ R^d is the mean encoder output state of the support inputs: the final (layer-normed) encoder
states at the *input-token* positions (``encoder_input_tokens > 0``; the L prompt positions and padding
excluded), averaged over all those positions of all S support examples (a token-weighted mean), computed
at the un-adapted prompt θ in the same forward pass as the support loss. h is a learned transformation,
applied to each prompt token's gradient row g_l ∈ R^d:

* ``'affine'`` (the paper: "affine transformation h(·) (e.g., rotation)"): h(g)_l = g_l A + c_l with A
  [d, d] shared by the tokens and c [L, d]; initialized A = I, c = 0 (h = identity).
* ``'official_mlp'`` (the official code's low-rank 2-layer ReLU MLP per prompt token, with norm
  rescaling): with ĝ_l = g_l / ‖g_l‖, u_l = ĝ_l + relu(ĝ_l D + e) U + f (D [d, r], U [r, d]) and
  h(g)_l = ‖g_l‖ · u_l / ‖u_l‖ — the MLP acts on the direction of the row, and the output is rescaled
  to the row's input norm (so h(c·g) = c·h(g) for c > 0 and only directions are learned; prompt gradients
  are ~1e-3 and an MLP on raw values would see only its biases). Initialized D ~ N(0, 1/d), e = 0,
  U = 0, f = 0, so u = ĝ and h = identity (up to the ε of the norms, 1e-12).

The gate starts at z ≡ `gate_init` (W = 0, b = logit(gate_init); 0.5 by default): with h = identity at
initialization ψ is then the identity too, and SUPMER starts as prompt-only MAML.

Regularized loss (A.3, Eq. 20): L_reg = ‖z − b_k‖² = Σ_d (z_d − b_k)², the squared norm over the d
gate dimensions (z_i of task i has its own H), averaged over the tasks as the query loss is below (one
L_reg per task: Σ_i [L_{Q_i} + λ L_reg,i] up to the common factor 1/M), added with coefficient λ
(`reg_coefficient`, Table 6: 1.0) to the objective of φ only (Alg. 1 line 20); b_k is a constant (the
curriculum's current value).

Task augmentation (§3.3, Eq. 4, Alg. 2 lines 7-12). For task i and a mixing ratio λ_i (one per task):

  H̃_i = (1 − λ_i) H^q_i ⊙ m_i + λ_i H^q_j ⊙ m_j,     mask m̃ = m_i ∨ m_j

on the *encoder output states* [Q, L+n, d] of the query examples (example q of Q_i with example q of Q_j),
both encoded with task i's current prompt; padding states are zeroed before mixing and the mixed
sequence attends to the union of the two masks (a position valid in one only carries that one's
weighted state) — the union of the masks of the sides with non-zero weight, so that λ = 0 gives exactly
m_i (and λ = 1 exactly m_j): a zeroed state is not masked out by itself (its attention logit is 0).
The decoder is teacher-forced with τ_i's decoder inputs (SUPMER's targets are ``<extra_id_0> word`` with
one-token verbalizers — yes/no/maybe, A-D —: the sentinel and the label positions see the same decoder
inputs, BOS and ``<extra_id_0>``, in both tasks, so they mix exactly; later positions, e.g. EOS, are
conditioned on τ_i's label) and its causal/target mask is the union of the
two targets' masks. The soft targets Ỹ_t = (1 − λ) w_{i,t}·onehot(y_{i,t}) + λ w_{j,t}·onehot(y_{j,t})
over the vocabulary (targets of different lengths mix position by position; where only one has a label the
soft label has mass (1 − λ) or λ) give the soft-label cross-entropy Σ_t −Σ_v Ỹ_{t,v} log p_{t,v}
(= KL(Ỹ‖p) + const), normalized like the model's loss (`PromptableT5.loss_normalization`) by the soft
counts: tokens Σ_t [(1 − λ)w_i + λ w_j], examples Σ_q [(1 − λ)·1[any w_i] + λ·1[any w_j]]. At λ = 0
this is exactly `model.loss_fn` on Q_i.

Curriculum (§3.5, Eq. 10, Alg. 2 lines 5-9). λ_i ~ Beta(α, b·α) with

  b = (m^{(1+s)/2} − 1) / (m − 1)          (m = `curve`, Table 6: 2.0; m = 1: b = (1+s)/2, the limit)

and s the average cosine similarity between support and query gradients of the previous meta-step
(Alg. 1 lines 15, 18; s = −1 before the first step). Which vectors: Alg. 1 line 15 compares the
*regulated* support gradient ψ_φ(g_s) with the query gradient g_q = ∇_θ L_{Q̃}(θ) at the un-adapted prompt
(line 13: on the augmented query set) — the default ``similarity='regulated'``; Eq. 10 compares the raw
g_s with g_q (``similarity='raw'``). ``similarity_query='adapted'`` uses the query gradient at the adapted
prompt θ' instead (free: it is the first-order outer gradient; 'initial' costs one more query
forward/backward). ``similarity_decay`` κ makes s a running average s ← κ s + (1 − κ) mean_i s_i (0 = Alg. 1
line 18: the last step's mean).
Note on the paper: with Beta(α, bα) a *small* b (early, s ≈ −1) gives a *large* mean λ = 1/(1 + b) (b = 0:
λ = 1, the query set replaced by τ_j's), while §3.5's text ("a smaller λ is preferable [at the
beginning]") and A.3 ("a higher value of b_k indicates [...] a larger distribution deviation") describe
the opposite monotonicity. The formula of Eq. 10 / Alg. 2 is the default (``beta_form='alg2'``);
``beta_form='increasing'`` draws λ ~ Beta(b·α, α) (mean b / (1 + b): 0 → 1/2 as b grows), the text's
reading. Without curriculum (ablation) b = 1: Beta(α, α) (Eq. 4). The λ draws are a pure function of
(`seed`, step): ``fold_in(PRNGKey(seed), step)``, so resumed runs draw the same λ. Table 6 does not give
α; `mixup_alpha` defaults to 0.5.

The meta step (§3.4, Eq. 6-8, Alg. 1). With α₁ = `inner_learning_rate` (Table 6: 0.1), one SGD inner step
per task on the prompt only:

  θ'_i = θ − α₁ ψ_φ(∇_θ L_{S_i}(θ)),       L_outer(θ, φ) = mean_i L_{Q̃_i}(θ'_i)

(mean over the M tasks where Alg. 1 sums: a constant factor, which Adam does not see except through ε).
The θ-update uses ∇_θ L_outer and the φ-update ∇_φ [L_outer + λ L_reg] (Alg. 1 lines 19-20).

* default (``second_order=True``, the paper: Eq. 8 and the gradients g_θ, g_φ of App. A.1, Eq. 13-15, which
  carry the Hessian H_0 of the support loss): the full Eq. 8, differentiating through ∇_θ L_S(θ) and H(θ)
  (z depends on θ through H); L_reg still only updates φ (its H is a constant). Cost: a Hessian-vector
  product per task through the support pass. By default (``second_order_backward='hvp'``) it is one
  `jax.jvp` of the support gradient that recomputes the support pass after the query's backward pass
  (`_support_pass_hvp_backward`), so nothing of the support pass is kept; ``'autodiff'`` lets JAX reverse
  the stored support forward and backward passes. Both give the same gradient. Measured (XLA's analysis of
  the compiled step, T5-base, M = 4 tasks of 32 + 32 examples, 512 input + 100 prompt tokens, all tasks
  in one program, per device on one CPU device): 353 GiB peak with 'hvp' against 507 GiB with 'autodiff'
  (first order: ~300 GiB of temporaries; 149 vs 106 TFLOP for second vs first order with 'autodiff').
  That is beyond one accelerator either way: shard over several devices (MESH_SHAPE) or use smaller task
  batches.
* ``second_order=False`` (first order in θ, the official code's ``create_graph=False``): g_s and H are
  constants (stop_gradient), so ∂θ'/∂θ = I and the θ-gradient is mean_i ∇L_{Q̃_i}(θ'_i); the φ-gradient
  is still exact through the inner step, −α₁ mean_i (∂ψ_φ(g_s,i)/∂φ)ᵀ ∇L_{Q̃_i}(θ'_i) (g_s does not
  depend on φ).

The M tasks are vmapped; the transformer is shared (broadcast), only prompt copies are batched, and the
transformer gets no gradient. Dropout is off in the SUPMER step (the model's `encode`/`decode` are
deterministic), a deviation from the official PyTorch code's train-mode dropout.

Ablations (Table 4 rows of §4): ``task_augmentation=False`` (query loss on the plain query set),
``curriculum=False`` (λ ~ Beta(α, α), b = 1), ``gradient_regularization=False`` (ψ = identity: plain
prompt-only FoMAML θ' = θ − α₁ g; φ is kept but gets zero gradients). The 'one format only' ablation is
the data's `formats` option.

Outer optimizers (Table 6): Adam, lr 0.1 for θ and 1e-4 for φ, linear decay with no warm-up over 100k
steps: `outer_optimizer` is an `optax.multi_transform` over the parts {'prompt', 'phi', 'frozen'}
(transformer and curriculum state frozen).

Parameters and checkpoints. The trainer keeps φ and the curriculum state next to the prompt, in a
top-level ``'supmer'`` subtree of the train state's params: ``{'phi': {'gate': ..., 'transform': ...},
'curriculum': {'similarity': s}}`` — saved, sharded (replicated) and restored like every parameter.

Downstream (§3.4 "we fix φ* and further adapt θ* as Eq. (6)"): `psi_transformation(φ*, cfg)` is an optax
transformation g ↦ ψ_φ*(g) taking the support representation H as an extra argument (compute it with
`support_representation(model, params, batch)`); chain it before the downstream optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Iterator, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from promptjax.data import feeds, meta_sampler
from promptjax.errors import MetaError
from promptjax.meta.inner import PROMPT, after_cotangent, join_prompt, split_prompt
from promptjax.models import losses
from promptjax.supmer import tasks as supmer_tasks
from promptjax.training import train_step as ts

Params = Any
Batch = Mapping[str, jax.Array]

SUPMER_KEY = 'supmer'
TRANSFORMS = ('affine', 'official_mlp')
SIMILARITIES = ('regulated', 'raw')
SIMILARITY_QUERIES = ('initial', 'adapted')
BETA_FORMS = ('alg2', 'increasing')
SETS = ('support', 'query', 'mix_query')
VECTOR_FEATURES = feeds.VECTOR_FEATURES
_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class SupmerConfig:
  """SUPMER's meta step (see the module docstring; defaults = Table 6 where it gives a value).

  Attributes:
    inner_learning_rate: α₁ of Eq. 6 (Table 6: 0.1).
    transform: h of Eq. 5: 'affine' (paper) | 'official_mlp' (official code).
    mlp_rank: r of 'official_mlp'.
    gate_init: the initial gate value z (W = 0, b = logit(gate_init)).
    reg_coefficient: λ of Eq. 20 (Table 6: 1.0).
    mixup_alpha: α of Beta(α, bα) (not in Table 6).
    curve: m of Eq. 10 (Table 6: 2.0).
    similarity: 'regulated' (Alg. 1 line 15: cos(ψ(g_s), g_q)) | 'raw' (Eq. 10: cos(g_s, g_q)).
    similarity_query: where g_q is taken: 'initial' (θ, Alg. 1 line 13) | 'adapted' (θ').
    similarity_decay: κ of the running average of s (0: Alg. 1 line 18).
    beta_form: 'alg2' (λ ~ Beta(α, bα), Eq. 10 / Alg. 2) | 'increasing' (Beta(bα, α), §3.5's text).
    second_order: the full Eq. 8 (through ∇_θ L_S and H; the paper, App. A.1); False: first order in θ
      (the official code).
    second_order_backward: how the second-order gradient goes back through the support pass: 'hvp' (one
      Hessian-vector product per task, recomputing the support pass: the default, less memory) or
      'autodiff' (JAX reverses the stored support forward and backward passes). The same gradient.
    task_augmentation: mixup of query sets (ablation: False).
    curriculum: the curriculum of b (ablation: False, b = 1).
    gradient_regularization: ψ_φ (ablation: False, plain prompt FoMAML).
    phi_optimizer: optax transformation for φ (None: Adam with `phi_learning_rate`, constant).
    phi_learning_rate: β₂ (Table 6: 1e-4), used when `phi_optimizer` is None.
    seed: seed of the λ draws (folded with the step).
  """
  inner_learning_rate: float = 0.1
  transform: str = 'affine'
  mlp_rank: int = 32
  gate_init: float = 0.5
  reg_coefficient: float = 1.0
  mixup_alpha: float = 0.5
  curve: float = 2.0
  similarity: str = 'regulated'
  similarity_query: str = 'initial'
  similarity_decay: float = 0.0
  beta_form: str = 'alg2'
  second_order: bool = True
  second_order_backward: str = 'hvp'
  task_augmentation: bool = True
  curriculum: bool = True
  gradient_regularization: bool = True
  phi_optimizer: Optional[optax.GradientTransformation] = None
  phi_learning_rate: float = 1e-4
  seed: int = 0

  def __post_init__(self):
    for name, value, allowed in (('transform', self.transform, TRANSFORMS),
                                 ('similarity', self.similarity, SIMILARITIES),
                                 ('similarity_query', self.similarity_query, SIMILARITY_QUERIES),
                                 ('beta_form', self.beta_form, BETA_FORMS),
                                 ('second_order_backward', self.second_order_backward, ('hvp', 'autodiff'))):
      if value not in allowed:
        raise MetaError(f'SupmerConfig.{name}={value!r}; choose one of {allowed}.')
    if not 0.0 < self.gate_init < 1.0:
      raise MetaError(f'SupmerConfig.gate_init must be in (0, 1), got {self.gate_init}.')
    if self.curve <= 0:
      raise MetaError(f'SupmerConfig.curve (m) must be > 0, got {self.curve}.')
    if self.mixup_alpha <= 0:
      raise MetaError(f'SupmerConfig.mixup_alpha must be > 0, got {self.mixup_alpha}.')
    if not 0.0 <= self.similarity_decay < 1.0:
      raise MetaError(f'SupmerConfig.similarity_decay must be in [0, 1), got {self.similarity_decay}.')
    if self.mlp_rank < 1:
      raise MetaError(f'SupmerConfig.mlp_rank must be >= 1, got {self.mlp_rank}.')

  def signature(self) -> Dict[str, Any]:
    """The fields that define the parameters and the objective (for checkpoint compatibility)."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
           if f.name not in ('phi_optimizer', 'second_order_backward')}   # the backward: the same gradient
    return {k: (float(v) if isinstance(v, float) else v) for k, v in out.items()}

  @property
  def optimizer_for_phi(self) -> optax.GradientTransformation:
    return self.phi_optimizer if self.phi_optimizer is not None else optax.adam(self.phi_learning_rate)


def check_model(model) -> None:
  """SUPMER regulates the gradient of a shallow prompt [L, d]; raises MetaError otherwise."""
  if model.prompt.kind != 'shallow':
    raise MetaError(f'SUPMER tunes a shallow soft prompt [L, d] (Lester et al. prompt tuning), but the model '
                    f'has prompt kind {model.prompt.kind!r}: use PromptConfig.kind = "shallow".')


# ------------------------------------------------------------------------------------------------
# φ: parameters, gate, transformation, ψ.

def init_phi(cfg: SupmerConfig, prompt_length: int, emb_dim: int, rng: Optional[jax.Array] = None) -> Params:
  """φ = {'gate': {'kernel' [d, d], 'bias' [d]}, 'transform': ...} (float32), h = identity, z = gate_init."""
  d = emb_dim
  logit = float(np.log(cfg.gate_init) - np.log1p(-cfg.gate_init))
  gate = {'kernel': jnp.zeros((d, d), jnp.float32), 'bias': jnp.full((d,), logit, jnp.float32)}
  if cfg.transform == 'affine':
    transform = {'kernel': jnp.eye(d, dtype=jnp.float32), 'bias': jnp.zeros((prompt_length, d), jnp.float32)}
  else:
    rng = jax.random.PRNGKey(cfg.seed) if rng is None else rng
    r = cfg.mlp_rank
    transform = {'down': jax.random.normal(rng, (d, r), jnp.float32) / np.sqrt(d),
                 'down_bias': jnp.zeros((r,), jnp.float32),
                 'up': jnp.zeros((r, d), jnp.float32), 'up_bias': jnp.zeros((d,), jnp.float32)}
  return {'gate': gate, 'transform': transform}


def init_supmer_params(cfg: SupmerConfig, model, rng: Optional[jax.Array] = None) -> Params:
  """The trainer's 'supmer' subtree: {'phi': φ, 'curriculum': {'similarity': −1}} (Alg. 1 line 6)."""
  check_model(model)
  return {'phi': init_phi(cfg, model.prompt.length, model.config.emb_dim, rng),
          'curriculum': {'similarity': jnp.asarray(-1.0, jnp.float32)}}


def gate(phi: Params, h_rep: jax.Array) -> jax.Array:
  """z = σ(H W + b): H [d] -> z [d]."""
  g = phi['gate']
  return jax.nn.sigmoid(h_rep @ g['kernel'].astype(h_rep.dtype) + g['bias'].astype(h_rep.dtype))


def _norm(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + _EPS ** 2)


def transform(phi: Params, g: jax.Array, cfg: SupmerConfig) -> jax.Array:
  """h(g) for a prompt gradient g [L, d] (see the module docstring)."""
  t = jax.tree.map(lambda x: x.astype(g.dtype), phi['transform'])
  if cfg.transform == 'affine':
    return g @ t['kernel'] + t['bias']
  norm = _norm(g)
  unit = g / norm
  u = unit + jax.nn.relu(unit @ t['down'] + t['down_bias']) @ t['up'] + t['up_bias']
  return norm * u / _norm(u)


def regulate(phi: Params, g: jax.Array, h_rep: jax.Array, cfg: SupmerConfig) -> Tuple[jax.Array, jax.Array]:
  """(ψ_φ(g) = z ⊙ h(g) + (1 − z) ⊙ g, z) for g [L, d] and the support representation H [d] (Eq. 5)."""
  z = gate(phi, h_rep.astype(g.dtype))
  return z * transform(phi, g, cfg) + (1.0 - z) * g, z


def _prompt_leaf(prompt: Params) -> jax.Array:
  return prompt[PROMPT]


def psi(phi: Params, prompt_grad: Params, h_rep: jax.Array, cfg: SupmerConfig) -> Tuple[Params, jax.Array]:
  """ψ on a shallow prompt subtree {'prompt': [L, d]}; (ψ(g) subtree, z)."""
  if not cfg.gradient_regularization:
    return prompt_grad, jnp.zeros(h_rep.shape, h_rep.dtype)
  out, z = regulate(phi, _prompt_leaf(prompt_grad), h_rep, cfg)
  return {**prompt_grad, PROMPT: out}, z


# ------------------------------------------------------------------------------------------------
# Curriculum.

def curriculum_b(similarity: jax.Array, curve: float) -> jax.Array:
  """b = (m^{(1+s)/2} − 1) / (m − 1) (Eq. 10 / Alg. 2 lines 5-6); (1+s)/2 at m = 1 (the limit)."""
  s = (1.0 + similarity) / 2.0
  if curve == 1.0:
    return s
  return (jnp.power(curve, s) - 1.0) / (curve - 1.0)


def mixing_ratios(rng: jax.Array, b: jax.Array, num_tasks: int, cfg: SupmerConfig) -> jax.Array:
  """λ_i [M] ~ Beta(α, bα) ('alg2') or Beta(bα, α) ('increasing'); b is floored at 0 (Beta(α, 0) is the
  point mass at 1, which jax.random.beta returns)."""
  b = jnp.maximum(jnp.asarray(b, jnp.float32), 0.0)
  a = jnp.asarray(cfg.mixup_alpha, jnp.float32)
  p, q = (a, b * a) if cfg.beta_form == 'alg2' else (b * a, a)
  return jax.random.beta(rng, p, q, (num_tasks,), jnp.float32)


def cosine_similarity(a: Params, b: Params) -> jax.Array:
  dot = sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  na = jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(a)))
  nb = jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(b)))
  return dot / jnp.maximum(na * nb, _EPS)


# ------------------------------------------------------------------------------------------------
# Losses on encoder states.

def encode(model, params: Params, batch: Batch) -> Tuple[jax.Array, jax.Array]:
  """model.encode, with the inserted-vector features when the batch has them (SUPMER's centroid format)."""
  kwargs = {f: batch[f] for f in VECTOR_FEATURES if f in batch}
  return model.encode(params, batch['encoder_input_tokens'], **kwargs)


def _weights(batch: Batch) -> jax.Array:
  w = batch.get('decoder_loss_weights')
  return losses.default_loss_weights(batch['decoder_target_tokens']) if w is None else w.astype(jnp.float32)


def _normalize(model, total: jax.Array, num_tokens: jax.Array, num_examples: jax.Array) -> jax.Array:
  return total / losses.normalizer(model.loss_normalization, num_tokens, num_examples)


def representation(model, encoded: jax.Array, tokens: jax.Array) -> jax.Array:
  """H [d]: mean encoder output state over the input-token positions (tokens > 0; prompt positions and
  padding excluded) of all examples: encoded [b, L+n, d], tokens [b, n]."""
  states = encoded[:, encoded.shape[1] - tokens.shape[1]:]
  states = states.astype(jnp.promote_types(states.dtype, jnp.float32))
  mask = (tokens > 0).astype(states.dtype)[..., None]
  return jnp.sum(states * mask, axis=(0, 1)) / jnp.maximum(jnp.sum(mask), 1.0)


def plain_loss(model, params: Params, batch: Batch) -> Tuple[jax.Array, jax.Array]:
  """(the model's normalized loss on `batch` (= model.loss_fn without dropout), H [d])."""
  encoded, mask = encode(model, params, batch)
  logits = model.decode(params, encoded, mask, batch['decoder_target_tokens'], batch.get('decoder_input_tokens'))
  loss, _ = losses.cross_entropy_loss(logits, batch['decoder_target_tokens'], _weights(batch),
                                      model.loss_normalization, model.z_loss)
  return loss, representation(model, encoded, batch['encoder_input_tokens'])


def mixup_loss(model, params: Params, query: Batch, mix_query: Batch, lam: jax.Array) -> jax.Array:
  """Soft-label cross-entropy of the mixed query set (Eq. 4; module docstring): encoder states
  (1 − λ) H_i ⊙ m_i + λ H_j ⊙ m_j under the mask m_i ∨ m_j, targets (1 − λ) Y_i + λ Y_j."""
  enc_i, m_i = encode(model, params, query)
  enc_j, m_j = encode(model, params, mix_query)
  dtype = jnp.promote_types(enc_i.dtype, jnp.float32)
  lam = jnp.asarray(lam).astype(dtype)
  mixed = ((1.0 - lam) * enc_i.astype(dtype) * m_i[..., None]
           + lam * enc_j.astype(dtype) * m_j[..., None]).astype(enc_i.dtype)
  t_i, t_j = query['decoder_target_tokens'], mix_query['decoder_target_tokens']
  w_i, w_j = _weights(query), _weights(mix_query)
  dec_in = query.get('decoder_input_tokens')
  if dec_in is None:
    from promptjax.models.model import shift_right
    dec_in = shift_right(t_i)  # τ_i's decoder inputs (not those of the union mask tokens below)
  mask = (m_i & (lam < 1)) | (m_j & (lam > 0))  # the union; at λ = 0 (1) exactly m_i (m_j)
  logits = model.decode(params, mixed, mask, jnp.where(t_i > 0, t_i, t_j), dec_in)
  tot_i, aux_i = losses.cross_entropy_loss(logits, t_i, w_i, 'none', model.z_loss)
  tot_j, aux_j = losses.cross_entropy_loss(logits, t_j, w_j, 'none', model.z_loss)
  mix = lambda a, b: (1.0 - lam) * a + lam * b
  return _normalize(model, mix(tot_i, tot_j), mix(aux_i['num_tokens'], aux_j['num_tokens']),
                    mix(aux_i['num_examples'], aux_j['num_examples']))


# ------------------------------------------------------------------------------------------------
# The meta-gradient.

def split_batch(flat: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
  """{'support/f', 'query/f', 'mix_query/f'} -> {'support': {f: ...}, 'query': ..., 'mix_query': ...}."""
  out = {s: {} for s in SETS}
  for k, v in flat.items():
    prefix, _, feature = k.partition('/')
    if prefix in out:
      out[prefix][feature] = v
  missing = [s for s in ('support', 'query') if not out[s]]
  if missing:
    raise MetaError(f'a SUPMER meta-batch needs support/..., query/... (and mix_query/...) features; '
                    f'missing {missing} in {sorted(flat)}.')
  return out


class SupmerOutput(NamedTuple):
  loss: jax.Array            # mean query (mixup) loss at the adapted prompts
  prompt_grad: Params        # ∂ mean_i L_{Q̃_i}(θ'_i) / ∂θ
  phi_grad: Params           # ∂ [mean_i L_{Q̃_i}(θ'_i) + λ L_reg] / ∂φ
  similarity: jax.Array      # mean_i s_i (Alg. 1 line 18)
  metrics: Dict[str, jax.Array]


def supmer_gradient(model, transformer: Params, prompt: Params, phi: Params, sets: Mapping[str, Batch],
                    lam: jax.Array, b: jax.Array, cfg: SupmerConfig) -> SupmerOutput:
  """One meta-batch: θ (prompt) and φ gradients, the similarity of Alg. 1 line 15 and metrics.

  Args:
    model: a `PromptableT5` with a shallow prompt.
    transformer: its frozen transformer parameters (shared by the tasks).
    prompt: θ, the prompt subtree {'prompt': [L, d]}.
    phi: φ (`init_phi`).
    sets: {'support': {f: [M, S, ...]}, 'query': {f: [M, Q, ...]}, 'mix_query': {f: [M, Q, ...]}}.
    lam: λ_i [M] (ignored without task augmentation).
    b: b_k, the target of L_reg.
    cfg: the configuration.
  """
  support, query = sets['support'], sets['query']
  augment = cfg.task_augmentation
  if augment and not sets.get('mix_query'):
    raise MetaError('task augmentation needs mix_query/... features (or task_augmentation=False).')
  mix_query = sets['mix_query'] if augment else query
  alpha = cfg.inner_learning_rate
  b = jax.lax.stop_gradient(jnp.asarray(b, jnp.float32))

  def support_fn(p, sup):
    return plain_loss(model, join_prompt(transformer, p), sup)

  def query_fn(p, q, mq, l):
    params = join_prompt(transformer, p)
    return mixup_loss(model, params, q, mq, l) if augment else plain_loss(model, params, q)[0]

  support_grads = jax.vmap(jax.value_and_grad(support_fn, has_aux=True), in_axes=(None, 0))

  def outer(theta, phi_, offsets, frozen_support):
    if frozen_support is None:  # second order: through ∇_θ L_S(θ) and H(θ)
      if cfg.second_order_backward == 'hvp':
        (s_losses, reps), g_s = _support_pass_hvp_backward(support_fn, theta, support)
      else:
        (s_losses, reps), g_s = support_grads(theta, support)
    else:
      s_losses, reps, g_s = frozen_support

    def one(g, rep, off, q, mq, l):
      reg_g, z = psi(phi_, g, rep, cfg)
      adapted = jax.tree.map(lambda t, u, o: t - alpha * u + o, theta, reg_g, off)
      return query_fn(adapted, q, mq, l), reg_g

    q_losses, reg_gs = jax.vmap(one, in_axes=(0, 0, 0, 0, 0, 0))(g_s, reps, offsets, query, mix_query, lam)
    if cfg.gradient_regularization:
      z_reg = jax.vmap(lambda r: gate(phi_, r))(jax.lax.stop_gradient(reps))
      reg = jnp.mean(jnp.sum(jnp.square(z_reg - b), axis=-1))   # mean_i ‖z_i − b‖² (Eq. 20)
    else:
      z_reg, reg = jnp.zeros_like(reps), jnp.zeros((), jnp.float32)
    q_loss = jnp.mean(q_losses)
    aux = dict(q_loss=q_loss, reg=reg, s_losses=s_losses, g_s=g_s, reg_gs=reg_gs, z=z_reg)
    return q_loss, cfg.reg_coefficient * reg, aux

  m = lam.shape[0]
  offsets = jax.tree.map(lambda x: jnp.zeros((m,) + x.shape, x.dtype), prompt)
  if cfg.second_order:
    frozen = None
  else:
    (s_l, reps), g_s = support_grads(prompt, support)
    frozen = jax.lax.stop_gradient((s_l, reps, g_s))

  # One backward pass: L_reg depends on φ only (its H is a constant), so ∂/∂θ of the sum is ∂/∂θ of the
  # query loss (Alg. 1 lines 19-20); the zero offsets give the per-task gradients at θ'_i.
  def objective(theta, phi_, offs):
    q_loss, reg, aux = outer(theta, phi_, offs, frozen)
    return q_loss + reg, aux

  (_, aux), (g_theta, g_phi, g_off) = jax.value_and_grad(objective, argnums=(0, 1, 2), has_aux=True)(
      prompt, phi, offsets)
  q_loss = aux['q_loss']

  g_s, reg_gs = jax.lax.stop_gradient((aux['g_s'], aux['reg_gs']))
  if cfg.similarity_query == 'adapted':
    g_q = jax.tree.map(lambda g: g * m, g_off)  # ∇L_{Q̃_i}(θ'_i) per task (the objective is a mean)
  else:
    g_q = jax.vmap(jax.grad(query_fn), in_axes=(None, 0, 0, 0))(
        jax.lax.stop_gradient(prompt), query, mix_query, lam)
  first = reg_gs if cfg.similarity == 'regulated' else g_s
  sims = jax.vmap(cosine_similarity)(first, jax.lax.stop_gradient(g_q))
  metrics = {'query_loss': q_loss, 'support_loss': jnp.mean(aux['s_losses']), 'reg_loss': aux['reg'],
             'similarity': jnp.mean(sims), 'gate_mean': jnp.mean(aux['z']),
             'mixing_ratio_mean': jnp.mean(lam) if augment else jnp.zeros((), jnp.float32),
             'curriculum_b': b}
  return SupmerOutput(q_loss, g_theta, g_phi, jnp.mean(sims), metrics)


def _support_pass_hvp_backward(support_fn: Callable, theta: Params, support: Batch):
  """``vmap(value_and_grad(support_fn, has_aux=True), in_axes=(None, 0))(theta, support)``: per task
  ((L_S, H), ∇_θ L_S), with a backward pass written by hand for the second-order gradient.

  JAX's own backward pass reverses the stored support forward and backward passes. Here, with cotangents
  (c_L, c_H, v) of (L_S, H, ∇_θ L_S), the cotangent of θ is ∂/∂θ [c_L L_S + ⟨c_H, H⟩] + ∇²L_S v. Both come
  from one `jax.jvp`: G(θ, a, c) = ∇_θ [a L_S(θ) + ⟨c, H(θ)⟩] is linear in (a, c), so its derivative at
  (θ, 1, 0) along (v, c_L, c_H) is exactly that sum (forward-over-reverse; the support pass is recomputed,
  nothing of it is stored)."""
  def primal(th, sup):
    return jax.vmap(jax.value_and_grad(support_fn, has_aux=True), in_axes=(None, 0))(th, sup)

  @jax.custom_vjp
  def run(th, sup):
    return primal(th, sup)

  def run_fwd(th, sup):
    return primal(th, sup), (th, sup)

  def run_bwd(res, cts):
    th, sup = res
    (ct_loss, ct_rep), ct_g = cts
    m = ct_loss.shape[0]
    th, sup = after_cotangent((th, sup), ct_g)
    thetas = jax.tree.map(lambda x: jnp.broadcast_to(x, (m,) + x.shape), th)

    def g(ths, a, c):
      def total(ths_):
        ls, reps = jax.vmap(support_fn)(ths_, sup)
        return jnp.sum(a * ls) + jnp.sum(c * reps)
      return jax.grad(total)(ths)

    _, tangent = jax.jvp(g, (thetas, jnp.ones_like(ct_loss), jnp.zeros_like(ct_rep)), (ct_g, ct_loss, ct_rep))
    return jax.tree.map(lambda t: jnp.sum(t, 0), tangent), None

  run.defvjp(run_fwd, run_bwd)
  return run(theta, support)


def validation_loss(model, params: Params, batch: Mapping[str, Any], cfg: SupmerConfig) -> jax.Array:
  """The meta-validation loss of a flat meta-batch of validation tasks (App. C.2: θ and φ are chosen by
  "the lowest validation loss"): mean_i L_{Q_i}(θ − α₁ ψ_φ(∇_θ L_{S_i}(θ))) — one ψ-regulated inner step
  on each task's support set, the loss of its query set as it is (no task augmentation), as the
  official code validates. `params` are the trainer's (the model's plus the 'supmer' subtree)."""
  sets = split_batch(batch)
  transformer, prompt = split_prompt({k: v for k, v in params.items() if k != SUPMER_KEY})
  phi = params[SUPMER_KEY]['phi']

  def one(support, query):
    support_loss = lambda p: plain_loss(model, join_prompt(transformer, p), support)
    (_, rep), g = jax.value_and_grad(support_loss, has_aux=True)(prompt)
    reg_g, _ = psi(phi, g, rep, cfg)
    adapted = jax.tree.map(lambda t, u: t - cfg.inner_learning_rate * u, prompt, reg_g)
    return plain_loss(model, join_prompt(transformer, adapted), query)[0]

  return jnp.mean(jax.vmap(one)(sets['support'], sets['query']))


# ------------------------------------------------------------------------------------------------
# Outer optimizer and the train step.

def outer_labels(params: Params) -> Params:
  """'prompt' on the prompt, 'phi' on supmer/phi, 'frozen' on the transformer and supmer/curriculum."""
  out = {}
  for k, v in params.items():
    if k == PROMPT:
      out[k] = jax.tree.map(lambda _: 'prompt', v)
    elif k == SUPMER_KEY:
      out[k] = {kk: jax.tree.map(lambda _, kk=kk: 'phi' if kk == 'phi' else 'frozen', vv) for kk, vv in v.items()}
    else:
      out[k] = jax.tree.map(lambda _: 'frozen', v)
  return out


def outer_optimizer(prompt_optimizer: optax.GradientTransformation,
                    phi_optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """`optax.multi_transform` over θ ('prompt'), φ ('phi') and the rest ('frozen': zero updates, no state)."""
  return optax.multi_transform({'prompt': prompt_optimizer, 'phi': phi_optimizer,
                                'frozen': optax.set_to_zero()}, outer_labels)


def table6_adam(learning_rate: float, total_steps: int) -> optax.GradientTransformation:
  """Table 6's optimizer: Adam, `learning_rate` decayed linearly to 0 over `total_steps`, no warm-up."""
  return optax.adam(optax.linear_schedule(learning_rate, 0.0, total_steps))


def table6_optimizer(cfg: SupmerConfig, total_steps: int = 100_000, prompt_learning_rate: float = 0.1,
                     phi_learning_rate: Optional[float] = None) -> optax.GradientTransformation:
  """Table 6: Adam, lr 0.1 (θ) and 1e-4 (φ), each decayed linearly to 0 over `total_steps`, no warm-up."""
  phi_lr = cfg.phi_learning_rate if phi_learning_rate is None else phi_learning_rate
  return outer_optimizer(table6_adam(prompt_learning_rate, total_steps), table6_adam(phi_lr, total_steps))


def make_train_step(model, optimizer: optax.GradientTransformation, cfg: SupmerConfig, *,
                    learning_rate_fn: Optional[Callable[[jax.Array], jax.Array]] = None):
  """``step(state, flat_batch) -> (state, metrics)`` for a `TrainState` whose params are the model's plus
  the 'supmer' subtree (`init_supmer_params`); `optimizer` is an `outer_optimizer`."""
  check_model(model)

  def step(state, batch):
    params = state.params
    sets = split_batch(batch)
    sup_state = params[SUPMER_KEY]
    model_params = {k: v for k, v in params.items() if k != SUPMER_KEY}
    transformer, prompt = split_prompt(model_params)
    s_prev = sup_state['curriculum']['similarity']
    b = curriculum_b(s_prev, cfg.curve) if cfg.curriculum else jnp.ones((), jnp.float32)
    m = jax.tree.leaves(sets['query'])[0].shape[0]
    lam = mixing_ratios(jax.random.fold_in(jax.random.PRNGKey(cfg.seed), state.step), b, m, cfg)
    out = supmer_gradient(model, transformer, prompt, sup_state['phi'], sets, lam, b, cfg)
    grads = {k: jax.tree.map(jnp.zeros_like, v) for k, v in transformer.items()}
    grads[PROMPT] = out.prompt_grad
    grads[SUPMER_KEY] = {'phi': out.phi_grad,
                         'curriculum': jax.tree.map(jnp.zeros_like, sup_state['curriculum'])}
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    new = optax.apply_updates(params, updates)
    s_new = cfg.similarity_decay * s_prev + (1.0 - cfg.similarity_decay) * out.similarity
    new[SUPMER_KEY] = {**new[SUPMER_KEY], 'curriculum': {'similarity': s_new.astype(s_prev.dtype)}}
    rows = lambda t: jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), t)
    num_tokens = sum(jnp.sum(_weights(rows(sets[s]))) for s in SETS if sets.get(s))
    examples = sum(int(np.prod(sets[s]['decoder_target_tokens'].shape[:2])) for s in SETS if sets.get(s))
    metrics = {'loss': out.loss, 'grad_norm': optax.tree.norm({'prompt': out.prompt_grad, 'phi': out.phi_grad}),
               'prompt_grad_norm': optax.tree.norm(out.prompt_grad), 'phi_grad_norm': optax.tree.norm(out.phi_grad),
               **out.metrics, 'num_tokens': num_tokens, 'num_examples': jnp.asarray(examples, jnp.float32)}
    if learning_rate_fn is not None:
      metrics['learning_rate'] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
    return ts.TrainState(step=state.step + 1, params=new, opt_state=opt_state), metrics

  return step


# ------------------------------------------------------------------------------------------------
# Downstream: ψ* as an optax transformation.

def support_representation(model, params: Params, batch: Batch) -> jax.Array:
  """H [d] of a (downstream) batch at `params`: the mean encoder state over its input tokens."""
  encoded, _ = encode(model, params, batch)
  return representation(model, encoded, batch['encoder_input_tokens'])


def psi_transformation(phi: Params, cfg: SupmerConfig) -> optax.GradientTransformationExtraArgs:
  """A stateless optax transformation g ↦ ψ_φ(g) with φ fixed (downstream prompt tuning, §3.4 / Eq. 6).

  ``update(grads, state, params=None, *, support_representation=H)``: `grads` is the prompt subtree
  {'prompt': [L, d]} or a full parameter tree with a 'prompt' subtree (only the prompt is transformed).
  Chain it before the downstream optimizer, e.g. ``optax.chain(psi_transformation(φ*, cfg),
  optax.sgd(α₁))`` for Eq. 6, and pass ``support_representation=support_representation(model, params,
  batch)`` computed on the step's batch (optax.chain forwards the extra argument)."""
  phi = jax.lax.stop_gradient(phi)

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None, *, support_representation, **extra):
    del params, extra
    if isinstance(updates.get(PROMPT), Mapping):  # a full parameter tree
      new, _ = psi(phi, updates[PROMPT], support_representation, cfg)
      return {**updates, PROMPT: new}, state
    new, _ = psi(phi, updates, support_representation, cfg)
    return new, state

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------------------------------------------
# Data.

def meta_batches_from_sampler(meta_data_cfg, *, start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """SUPMER batches from the generic meta-batch sampler (`promptjax.data.meta_sampler`, inner_steps 1):
  support [M, 1, S, ...] -> [M, S, ...]; the mix partner of task i is task (i − 1) mod M of the same
  meta-batch (``mix_query = roll(query, 1)``), not an independent draw from p(T) as Alg. 2 line 8 (the
  SUPMER data pipeline, `promptjax.supmer.tasks.supmer_meta_batches`, draws it properly)."""
  if meta_data_cfg.inner_steps != 1:
    raise MetaError(f'SUPMER runs one inner step; the sampler draws {meta_data_cfg.inner_steps} support '
                    'batches per task (set MetaDataConfig.inner_steps = 1).')
  for flat in meta_sampler.meta_batches(meta_data_cfg, start_step=start_step):
    out = {}
    for k, v in flat.items():
      prefix, _, feature = k.partition('/')
      if prefix == 'support':
        out[k] = v[:, 0]
      elif prefix == 'query':
        out[k] = v
        out['mix_query/' + feature] = np.roll(v, 1, axis=0)
    yield out


def default_batches(data_cfg, *, start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """SUPMER's data from `start_step`: the anchor meta-tasks (`promptjax.supmer.tasks.supmer_meta_batches`)
  for a `SupmerDataConfig`, or any seqio mixture through the generic sampler for a `MetaDataConfig`."""
  if isinstance(data_cfg, meta_sampler.MetaDataConfig):
    return meta_batches_from_sampler(data_cfg, start_step=start_step)
  return supmer_tasks.supmer_meta_batches(data_cfg, start_step=start_step)
