"""Side-by-side benchmark of one T5 v1.1 training step: promptjax vs HF PyTorch vs HF Flax.

One step = forward + backward + Adafactor update of a T5 v1.1 model (fp32, dropout 0) on a random batch
of `batch` examples with `input_len` encoder tokens and `target_len` decoder tokens. All three frameworks
build the same architecture from a config with random weights (no downloads):

  promptjax  PromptableT5(get_config(size)).loss_fn, jax.value_and_grad + optax Adafactor + apply_updates
             in one jax.jit (params / optimizer state donated).
  pytorch    transformers.T5ForConditionalGeneration (feed_forward_proj='gated-gelu', untied lm_head),
             loss from `labels`, transformers.optimization.Adafactor(lr=1e-3, scale_parameter=False,
             relative_step=False, warmup_init=False), torch.set_num_threads(#cores).
  hf_flax    transformers.FlaxT5ForConditionalGeneration (same config), token cross-entropy averaged over
             the target tokens, optax Adafactor, all in one jax.jit (params / optimizer state donated).

Both JAX variants use the same optimizer:
  optax.adafactor(learning_rate=1e-3, multiply_by_parameter_scale=False, decay_rate=0.8,
                  clipping_threshold=1.0)
(≈ the PyTorch settings above: factored second moments, no parameter scaling, update clipping at 1.0.)

Reported per framework: median step time over `--steps` timed steps (after warm-up/compilation),
tokens/s with tokens = batch * (input_len + target_len), the analytic model FLOPs per step (see
`model_flops`) divided by the step time, and that rate as a fraction of a reference: the best fp32
matmul rate (jax.jit of an M x M @ M x M matmul, M = 2048) measured on the same machine.

Usage:
  python benchmarks/train_step.py                       # all frameworks, T5-small shapes, batch 8
  python benchmarks/train_step.py --which promptjax,hf_flax --steps 5
  python benchmarks/train_step.py --size tiny --batch 2 --input_len 16 --target_len 8 --steps 2
Results are also written to benchmarks/results/train_step.json (git-ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

import common  # noqa: E402  (benchmarks/common.py: the repository on sys.path, machine facts)

REPO_ROOT = common.REPO_ROOT

FRAMEWORKS = ('promptjax', 'pytorch', 'hf_flax')

# Adafactor as used by both JAX variants (documented in the module docstring and the README).
OPTAX_ADAFACTOR_KWARGS = dict(learning_rate=1e-3, multiply_by_parameter_scale=False, decay_rate=0.8,
                              clipping_threshold=1.0)


# ------------------------------------------------------------------------------------------------
# Shapes and FLOPs.

@dataclasses.dataclass(frozen=True)
class Shapes:
  vocab: int
  d_model: int
  num_heads: int
  d_kv: int
  d_ff: int
  enc_layers: int
  dec_layers: int
  num_buckets: int
  max_distance: int
  batch: int
  input_len: int
  target_len: int

  @property
  def tokens(self) -> int:
    return self.batch * (self.input_len + self.target_len)


def shapes_from_size(size: str, batch: int, input_len: int, target_len: int) -> Shapes:
  from promptjax.models import get_config
  c = get_config(size)
  return Shapes(vocab=c.vocab_size, d_model=c.emb_dim, num_heads=c.num_heads, d_kv=c.head_dim,
                d_ff=c.mlp_dim, enc_layers=c.num_encoder_layers, dec_layers=c.num_decoder_layers,
                num_buckets=c.relative_attention_num_buckets,
                max_distance=c.relative_attention_max_distance, batch=batch, input_len=input_len,
                target_len=target_len)


def model_flops(s: Shapes) -> Dict[str, float]:
  """Analytic FLOPs of one training step (forward + backward), counting matmuls only.

  A matmul with a [in, out] weight applied to n token vectors costs 2*n*in*out FLOPs forward and twice
  that backward (grad w.r.t. input and w.r.t. weight), i.e. 6 * n * params in a training step.
  With d = d_model, a = num_heads * d_kv, f = d_ff, B = batch, N = input_len, T = target_len:

    dense    = 6 * [ L_enc * B*N * (4*d*a + 3*d*f)                      # enc q,k,v,o + wi_0,wi_1,wo
                   + L_dec * ( B*T * (4*d*a + 2*d*a + 3*d*f)             # dec self q,k,v,o; cross q,o; mlp
                             + B*N * 2*d*a ) ]                           # cross-attention k,v of encoded
    attention = 3 * 4*B*a * [ L_enc * N*N + L_dec * (T*T + T*N) ]        # Q.K^T and P.V (2 flops/MAC each,
                                                                          #  forward), x3 for backward
    lm_head  = 6 * B*T * d * vocab                                        # untied [d, vocab] projection
    total    = dense + attention + lm_head

  The embedding lookup (a gather), norms, softmax, GELU, the loss and the optimizer update are not
  counted (they are O(params + activations), not matmuls). The causal mask is not exploited (full T*T).
  """
  d, a, f = s.d_model, s.num_heads * s.d_kv, s.d_ff
  B, N, T = s.batch, s.input_len, s.target_len
  dense = 6 * (s.enc_layers * B * N * (4 * d * a + 3 * d * f)
               + s.dec_layers * (B * T * (6 * d * a + 3 * d * f) + B * N * 2 * d * a))
  attention = 3 * 4 * B * a * (s.enc_layers * N * N + s.dec_layers * (T * T + T * N))
  lm_head = 6 * B * T * d * s.vocab
  return dict(dense=float(dense), attention=float(attention), lm_head=float(lm_head),
              total=float(dense + attention + lm_head))


def make_batch(s: Shapes, seed: int = 0) -> Dict[str, np.ndarray]:
  """Random full-length (no padding) batch; targets end with EOS = 1; decoder inputs = shift right."""
  rng = np.random.RandomState(seed)
  inputs = rng.randint(2, s.vocab, size=(s.batch, s.input_len)).astype(np.int32)
  targets = rng.randint(2, s.vocab, size=(s.batch, s.target_len)).astype(np.int32)
  targets[:, -1] = 1
  dec_inputs = np.concatenate([np.zeros((s.batch, 1), np.int32), targets[:, :-1]], axis=1)
  return dict(encoder_input_tokens=inputs, decoder_target_tokens=targets,
              decoder_input_tokens=dec_inputs,
              decoder_loss_weights=np.ones((s.batch, s.target_len), np.float32))


# ------------------------------------------------------------------------------------------------
# Runners. Each `setup_*` returns a `step()` callable that runs one synchronized training step and
# returns the loss as a Python float (so timing includes device synchronization).

class Runner:
  name: str
  step: Callable[[], float]
  extras: Dict


def setup_promptjax(s: Shapes, size: str, batch_np) -> Runner:
  import jax
  import jax.numpy as jnp
  import optax
  from promptjax.models import PromptableT5, get_config

  model = PromptableT5(get_config(size))
  params = model.init_params(jax.random.PRNGKey(0))
  opt = optax.adafactor(**OPTAX_ADAFACTOR_KWARGS)
  opt_state = opt.init(params)
  batch = {k: jnp.asarray(v) for k, v in batch_np.items()}

  def train_step(params, opt_state, batch):
    (loss, aux), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  jitted = jax.jit(train_step, donate_argnums=(0, 1))
  state = {'params': params, 'opt_state': opt_state}

  def step():
    state['params'], state['opt_state'], loss = jitted(state['params'], state['opt_state'], batch)
    return float(jax.block_until_ready(loss))

  r = Runner()
  r.name, r.step = 'promptjax', step
  r.extras = dict(jitted=jitted, state=state, batch=batch, model=model, opt=opt)
  return r


def _hf_config(s: Shapes, cls):
  return cls(vocab_size=s.vocab, d_model=s.d_model, d_kv=s.d_kv, d_ff=s.d_ff,
             num_layers=s.enc_layers, num_decoder_layers=s.dec_layers, num_heads=s.num_heads,
             relative_attention_num_buckets=s.num_buckets,
             relative_attention_max_distance=s.max_distance, dropout_rate=0.0,
             layer_norm_epsilon=1e-6, feed_forward_proj='gated-gelu', tie_word_embeddings=False,
             decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def setup_pytorch(s: Shapes, size: str, batch_np) -> Runner:
  import torch
  from transformers import T5Config, T5ForConditionalGeneration
  from transformers.optimization import Adafactor

  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  model = T5ForConditionalGeneration(_hf_config(s, T5Config)).float()
  model.train()
  opt = Adafactor(model.parameters(), lr=1e-3, scale_parameter=False, relative_step=False,
                  warmup_init=False)
  input_ids = torch.from_numpy(batch_np['encoder_input_tokens']).long()
  labels = torch.from_numpy(batch_np['decoder_target_tokens']).long()
  attention_mask = torch.ones_like(input_ids)

  def step():
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(out.loss.detach())

  r = Runner()
  r.name, r.step = 'pytorch', step
  r.extras = dict(threads=torch.get_num_threads())
  return r


def _install_jnp_clip_shim():
  """transformers' Flax T5 calls jnp.clip(x, a_min=..., a_max=...); jax 0.10 removed those keywords."""
  import jax.numpy as jnp
  if getattr(jnp.clip, '_benchmark_shim', False):
    return
  orig = jnp.clip

  def clip(arr=None, min=None, max=None, *, a=None, a_min=None, a_max=None, **kw):  # noqa: A002
    if arr is None:
      arr = a
    return orig(arr, min if a_min is None else a_min, max if a_max is None else a_max, **kw)

  clip._benchmark_shim = True
  jnp.clip = clip
  try:
    from transformers.models.t5 import modeling_flax_t5
    modeling_flax_t5.jnp.clip = clip  # same module object; kept explicit
  except ImportError:
    pass


def setup_hf_flax(s: Shapes, size: str, batch_np) -> Runner:
  import jax
  import jax.numpy as jnp
  import optax
  _install_jnp_clip_shim()
  from transformers import FlaxT5ForConditionalGeneration, T5Config

  model = FlaxT5ForConditionalGeneration(_hf_config(s, T5Config), seed=0, dtype=jnp.float32)
  params = model.params
  opt = optax.adafactor(**OPTAX_ADAFACTOR_KWARGS)
  opt_state = opt.init(params)
  input_ids = jnp.asarray(batch_np['encoder_input_tokens'])
  dec_inputs = jnp.asarray(batch_np['decoder_input_tokens'])
  targets = jnp.asarray(batch_np['decoder_target_tokens'])
  attention_mask = jnp.ones_like(input_ids)
  decoder_attention_mask = jnp.ones_like(dec_inputs)

  def loss_fn(params):
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   decoder_input_ids=dec_inputs, decoder_attention_mask=decoder_attention_mask,
                   params=params, train=False).logits
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  def train_step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  jitted = jax.jit(train_step, donate_argnums=(0, 1))
  state = {'params': params, 'opt_state': opt_state}

  def step():
    state['params'], state['opt_state'], loss = jitted(state['params'], state['opt_state'])
    return float(jax.block_until_ready(loss))

  r = Runner()
  r.name, r.step = 'hf_flax', step
  r.extras = dict(jitted=jitted, state=state)
  return r


SETUPS = dict(promptjax=setup_promptjax, pytorch=setup_pytorch, hf_flax=setup_hf_flax)


# ------------------------------------------------------------------------------------------------
# Reference matmul rate.

def matmul_rate(m: int = 2048, repeats: int = 10) -> Dict[str, float]:
  """Best-of-`repeats` fp32 FLOP/s of a jitted [m, m] @ [m, m] matmul (2*m^3 FLOPs)."""
  import jax
  import jax.numpy as jnp
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (m, m), jnp.float32)
  b = jax.random.normal(kb, (m, m), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, b))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - t0)
  flops = 2.0 * m ** 3
  return dict(m=m, best_s=min(times), median_s=statistics.median(times),
              flops_per_s=flops / min(times), median_flops_per_s=flops / statistics.median(times))


# ------------------------------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> Dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--steps', type=int, default=5, help='timed steps per framework and round')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps after compilation')
  p.add_argument('--rounds', type=int, default=2,
                 help='interleave the frameworks over this many timing rounds, `--steps` each (fairer '
                      'on a shared machine; `--rounds 10 --steps 1` alternates single steps)')
  p.add_argument('--which', default=','.join(FRAMEWORKS),
                 help=f'comma-separated subset of {",".join(FRAMEWORKS)}')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--input_len', type=int, default=256)
  p.add_argument('--target_len', type=int, default=64)
  p.add_argument('--size', default='small', help='promptjax size preset (small, tiny, base, ...)')
  p.add_argument('--matmul_size', type=int, default=2048)
  p.add_argument('--no_matmul', action='store_true', help='skip the reference matmul')
  p.add_argument('--output', default=os.path.join(REPO_ROOT, 'benchmarks', 'results',
                                                  'train_step.json'))
  args = p.parse_args(argv)

  which = [w.strip() for w in args.which.split(',') if w.strip()]
  bad = [w for w in which if w not in FRAMEWORKS]
  if bad:
    p.error(f'unknown framework(s) {bad}; choose from {FRAMEWORKS}')

  import jax
  s = shapes_from_size(args.size, args.batch, args.input_len, args.target_len)
  flops = model_flops(s)
  batch_np = make_batch(s)
  print(f'shapes: {s}')
  print(f'tokens/step: {s.tokens}   model FLOPs/step: {flops["total"] / 1e9:.1f} G '
        f'(dense {flops["dense"] / 1e9:.1f}, attention {flops["attention"] / 1e9:.1f}, '
        f'lm_head {flops["lm_head"] / 1e9:.1f})')
  print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, '
        f'jax {jax.__version__} backend {jax.default_backend()}', flush=True)

  mm_runs = []

  def measure_matmul(label):
    if args.no_matmul:
      return
    m = matmul_rate(args.matmul_size)
    m['when'] = label
    mm_runs.append(m)
    print(f'reference matmul {m["m"]}^3 fp32 ({label}): {m["flops_per_s"] / 1e9:.1f} GFLOP/s (best), '
          f'{m["median_flops_per_s"] / 1e9:.1f} GFLOP/s (median)', flush=True)

  measure_matmul('start')

  runners, results = {}, {}
  for name in which:
    t0 = time.perf_counter()
    r = SETUPS[name](s, args.size, batch_np)
    t1 = time.perf_counter()
    first_loss = r.step()  # compiles (JAX) / first step
    t2 = time.perf_counter()
    for _ in range(args.warmup):
      r.step()
    runners[name] = r
    results[name] = dict(setup_s=t1 - t0, first_step_s=t2 - t1, first_loss=first_loss, times=[])
    print(f'{name}: setup {t1 - t0:.1f}s, first step (incl. compile) {t2 - t1:.1f}s, '
          f'loss {first_loss:.4f}', flush=True)

  for rnd in range(args.rounds):
    for name in (which if rnd % 2 == 0 else which[::-1]):  # alternate the order between rounds
      r = runners[name]
      ts = []
      for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = r.step()
        ts.append(time.perf_counter() - t0)
      results[name]['times'].extend(ts)
      results[name]['last_loss'] = loss
      print(f'  round {rnd}: {name:9s} median {statistics.median(ts) * 1e3:8.1f} ms  '
            f'min {min(ts) * 1e3:8.1f} ms', flush=True)
    measure_matmul(f'after round {rnd}')

  # The reference rate is the best matmul rate seen in the run (the machine is shared, so the rate
  # drifts; each round re-measures it).
  mm = max(mm_runs, key=lambda m: m['flops_per_s']) if mm_runs else None

  for name in which:
    res = results[name]
    med = statistics.median(res['times'])
    res.update(median_step_s=med, min_step_s=min(res['times']), tokens_per_s=s.tokens / med,
               model_flops_per_s=flops['total'] / med)
    if mm:
      res['fraction_of_matmul_rate'] = res['model_flops_per_s'] / mm['flops_per_s']

  # Table.
  print()
  hdr = f'{"framework":10s} {"median ms":>10s} {"min ms":>9s} {"tokens/s":>9s} {"GFLOP/s":>8s} ' \
        f'{"of matmul":>9s}'
  print(hdr)
  print('-' * len(hdr))
  for name in which:
    res = results[name]
    frac = f'{res["fraction_of_matmul_rate"] * 100:8.1f}%' if mm else f'{"-":>9s}'
    print(f'{name:10s} {res["median_step_s"] * 1e3:10.1f} {res["min_step_s"] * 1e3:9.1f} '
          f'{res["tokens_per_s"]:9.1f} {res["model_flops_per_s"] / 1e9:8.1f} {frac}')
  if mm:
    print(f'reference matmul rate: {mm["flops_per_s"] / 1e9:.1f} GFLOP/s (best of {len(mm_runs)} '
          f'measurements)')
  ratios = {}
  if 'promptjax' in results:
    for other in ('pytorch', 'hf_flax'):
      if other in results:
        ratio = results['promptjax']['tokens_per_s'] / results[other]['tokens_per_s']
        ratio_min = results[other]['min_step_s'] / results['promptjax']['min_step_s']
        ratios[f'promptjax/{other}'] = ratio
        ratios[f'promptjax/{other} (min step times)'] = ratio_min
        print(f'promptjax / {other}: {ratio:.3f}x tokens/s (median step times), '
              f'{ratio_min:.3f}x (min step times)')

  out = dict(shapes=dataclasses.asdict(s), size=args.size, tokens_per_step=s.tokens, flops=flops,
             matmul=mm, matmul_runs=mm_runs, results=results, ratios=ratios, steps=args.steps, rounds=args.rounds,
             warmup=args.warmup, optax_adafactor=OPTAX_ADAFACTOR_KWARGS,
             machine=common.machine_info())
  return common.write_record(out, args.output)


if __name__ == '__main__':
  main()
