"""Profiling helpers for the promptjax training step (companion of `benchmarks/train_step.py`).

Subcommands (all on the T5-small-shaped config of train_step.py unless --size/--batch/... say otherwise):

  ab      A/B timing of promptjax *variants* compiled in one process and timed interleaved (round-robin,
          order reversed every other round), optionally next to the HF runners of train_step.py:
            python benchmarks/profile_promptjax.py ab --variants dense3d,current --with hf_flax,pytorch
          Before timing, each variant's loss and gradients are compared with the first variant's.
  parts   Times pieces of the step: forward loss, value_and_grad, full step, Adafactor alone, the
          lm_head + cross-entropy alone; prints XLA's cost_analysis of forward / grad / step.
  trace   jax.profiler trace of two steps; sums the per-op (thunk) times by category (YNN dot fusions,
          Eigen dots, copies/transposes, elementwise, scatter/gather) and lists the top ops with their
          shapes and source op names. Per-op times overlap when XLA runs independent ops concurrently
          (Eigen dots run asynchronously), so use `ab` for decisions and `trace` for orientation.

Variants are monkeypatches of `promptjax.models.layers` that keep the parameter tree and the math:

  current     the library as it is (`layers.Dense` flattens the input to [tokens, in] around the matmul).
  dense3d     layers.Dense as `jnp.dot(x[..., in], kernel)` on the N-d input (the original formulation;
              bitwise-identical gradients, but XLA then materializes transposed copies of dy for the
              weight gradients x^T @ dy: ~15% slower full step on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import gzip
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
for _p in (REPO_ROOT, BENCH_DIR):
  if _p not in sys.path:
    sys.path.insert(0, _p)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import train_step as tsb  # noqa: E402
from promptjax.models import PromptableT5, get_config, layers  # noqa: E402
from promptjax.models import losses  # noqa: E402

# ------------------------------------------------------------------------------------------------
# Variants (same parameter tree and initializers as the library module they replace).

_param = layers._param  # pylint: disable=protected-access


class Dense3D(nn.Module):
  """The original layers.Dense: y = x @ kernel on the N-d input."""
  features: int
  axes: tuple
  kernel_init: object = layers.default_kernel_init
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = _param(self, 'kernel', self.kernel_init, (x.shape[-1], self.features), self.axes)
    return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))


VARIANTS = ('current', 'dense3d')


@contextlib.contextmanager
def patched(variant: str):
  """Applies the variant while tracing (restores the library afterwards)."""
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r}; choose from {VARIANTS}')
  saved = layers.Dense
  try:
    if variant == 'dense3d':
      layers.Dense = Dense3D
    yield
  finally:
    layers.Dense = saved


# ------------------------------------------------------------------------------------------------

class Setup:
  def __init__(self, args):
    self.shapes = tsb.shapes_from_size(args.size, args.batch, args.input_len, args.target_len)
    self.batch_np = tsb.make_batch(self.shapes)
    self.batch = {k: jnp.asarray(v) for k, v in self.batch_np.items()}
    self.model = PromptableT5(get_config(args.size))
    self.params = self.model.init_params(jax.random.PRNGKey(0))
    self.opt = optax.adafactor(**tsb.OPTAX_ADAFACTOR_KWARGS)

  def make_step(self, with_grads=False):
    # A fresh Python function per call: jax.jit caches traces per function object, so reusing one
    # function across variants would silently reuse the first variant's trace.
    model, opt = self.model, self.opt

    def step(params, opt_state, batch):
      (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch)
      updates, opt_state = opt.update(grads, opt_state, params)
      out = (optax.apply_updates(params, updates), opt_state, loss)
      return out + (grads,) if with_grads else out
    return step

  def fresh_state(self):
    params = jax.tree_util.tree_map(jnp.array, self.params)
    return params, self.opt.init(params)


def cmd_ab(args):
  su = Setup(args)
  variants = [v for v in args.variants.split(',') if v]
  others = [w for w in args.with_.split(',') if w]
  compiled, state, times, ref = {}, {}, {}, None
  for v in variants:
    with patched(v):
      p, o = su.fresh_state()
      c = jax.jit(su.make_step(with_grads=True), donate_argnums=(0, 1)).lower(p, o, su.batch).compile()
    p, o = su.fresh_state()
    p, o, loss, grads = c(p, o, su.batch)
    leaves = jax.tree_util.tree_leaves(grads)
    if ref is None:
      ref = (float(loss), leaves)
    diff = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
               for a, b in zip(leaves, ref[1]))
    print(f'{v:24s} loss {float(loss):.7f} (first variant {ref[0]:.7f}), max relative grad '
          f'difference {diff:.2e}', flush=True)
    compiled[v], state[v], times[v] = c, (p, o), []
  runners = {}
  for w in others:
    runners[w] = tsb.SETUPS[w](su.shapes, args.size, su.batch_np)
    runners[w].step()
    times[w] = []
  names = variants + others
  for r in range(args.rounds):
    for n in (names if r % 2 == 0 else names[::-1]):
      t0 = time.perf_counter()
      if n in compiled:
        p, o = state[n]
        p, o, loss, _ = compiled[n](p, o, su.batch)
        jax.block_until_ready(loss)
        state[n] = (p, o)
      else:
        runners[n].step()
      times[n].append(time.perf_counter() - t0)
    print(f'  round {r}: ' + '  '.join(f'{n} {times[n][-1] * 1e3:.0f}ms' for n in names), flush=True)
  base = names[0]
  print(f'\n{"name":24s} {"median ms":>10s} {"min ms":>9s} {"tokens/s":>9s} {"median vs " + base:>18s}')
  out = {}
  for n in names:
    med, mn = statistics.median(times[n]), min(times[n])
    out[n] = dict(median_s=med, min_s=mn, times=times[n], tokens_per_s=su.shapes.tokens / med)
    print(f'{n:24s} {med * 1e3:10.1f} {mn * 1e3:9.1f} {su.shapes.tokens / med:9.1f} '
          f'{statistics.median(times[base]) / med:17.3f}x')
  if args.output:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, 'w') as fh:
      json.dump(out, fh, indent=2)


def _time(fn, *a, n=5):
  jax.block_until_ready(fn(*a))
  ts = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*a))
    ts.append(time.perf_counter() - t0)
  return min(ts), statistics.median(ts)


def cmd_parts(args):
  su = Setup(args)
  model, batch, params, opt = su.model, su.batch, su.params, su.opt
  opt_state = opt.init(params)
  with patched(args.variant):
    fwd = jax.jit(lambda p, b: model.loss_fn(p, b)[0]).lower(params, batch).compile()
    vg = jax.jit(jax.value_and_grad(lambda p, b: model.loss_fn(p, b)[0])).lower(params, batch).compile()
    step = jax.jit(su.make_step()).lower(params, opt_state, batch).compile()
  for name, c in (('forward', fwd), ('value_and_grad', vg), ('step', step)):
    ca = c.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    print(f'cost_analysis {name:15s} flops {ca.get("flops", 0) / 1e9:7.1f} G   bytes accessed '
          f'{ca.get("bytes accessed", 0) / 1e9:6.2f} G   transcendentals '
          f'{ca.get("transcendentals", 0) / 1e9:5.2f} G')
  rows = [('forward loss', fwd, (params, batch)), ('value_and_grad', vg, (params, batch)),
          ('full step (no donation)', step, (params, opt_state, batch))]
  grads = jax.tree_util.tree_map(lambda x: x * 1e-2, params)
  rows.append(('Adafactor update + apply', jax.jit(
      lambda g, o, p: optax.apply_updates(p, opt.update(g, o, p)[0])), (grads, opt_state, params)))
  c = model.config
  t = su.shapes.target_len
  x = jax.random.normal(jax.random.PRNGKey(1), (su.shapes.batch, t, c.emb_dim))
  kernel = params['decoder']['logits_dense']['kernel']
  tgt, w = batch['decoder_target_tokens'], batch['decoder_loss_weights']
  with patched(args.variant):
    dense = layers.Dense(c.vocab_size, axes=('embed', 'vocab'))
    head = lambda x, k: losses.cross_entropy_loss(
        dense.apply({'params': {'kernel': k}}, x), tgt, w)[0]
    rows.append(('lm_head + CE fwd', jax.jit(head).lower(x, kernel).compile(), (x, kernel)))
    rows.append(('lm_head + CE fwd+bwd',
                 jax.jit(jax.grad(head, argnums=(0, 1))).lower(x, kernel).compile(), (x, kernel)))
  for name, fn, a in rows:
    mn, md = _time(fn, *a, n=args.steps)
    print(f'{name:28s} min {mn * 1e3:8.1f} ms   median {md * 1e3:8.1f} ms', flush=True)


def _category(name):
  if name.startswith('ynn_fusion'):
    return 'YNN dot fusions'
  if name.startswith('dot'):
    return 'Eigen dots (async; times understated)'
  if 'scatter' in name:
    return 'scatter'
  if 'gather' in name:
    return 'gather'
  if 'transpose' in name or name.startswith(('copy', 'bitcast_copy')):
    return 'copies / transposes'
  return 'elementwise / reductions / other'


def cmd_trace(args):
  su = Setup(args)
  p, o = su.fresh_state()
  with patched(args.variant):
    c = jax.jit(su.make_step(), donate_argnums=(0, 1)).lower(p, o, su.batch).compile()
  hlo = c.as_text()
  for _ in range(2):
    p, o, loss = c(p, o, su.batch)
  jax.block_until_ready(loss)
  tdir = args.trace_dir or tempfile.mkdtemp(prefix='promptjax_trace_')
  shutil.rmtree(tdir, ignore_errors=True)
  n = args.steps
  with jax.profiler.trace(tdir, create_perfetto_trace=True):
    for _ in range(n):
      p, o, loss = c(p, o, su.batch)
      jax.block_until_ready(loss)
  events = json.load(gzip.open(glob.glob(os.path.join(tdir, '**', 'perfetto_trace.json.gz'),
                                         recursive=True)[0]))
  events = events['traceEvents'] if isinstance(events, dict) else events
  info = {}
  entry = hlo[hlo.index('ENTRY'):]
  for line in entry.split('\n'):
    m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = (\S+) ', line)
    if m:
      op = re.search(r'op_name="([^"]*)"', line)
      info[m.group(1)] = (m.group(2), op.group(1) if op else '')
  dur = collections.defaultdict(float)
  for e in events:
    if e.get('ph') == 'X' and e['name'] in info:
      dur[e['name']] += e.get('dur', 0) / n / 1e3
  cats = collections.defaultdict(float)
  for k, v in dur.items():
    cats[_category(k)] += v
  total = sum(dur.values())
  print(f'summed op time per step: {total:.1f} ms (trace in {tdir})')
  for k, v in sorted(cats.items(), key=lambda kv: -kv[1]):
    print(f'  {k:40s} {v:8.1f} ms  {100 * v / total:5.1f}%')
  print(f'\ntop {args.top} ops:')
  for k, v in sorted(dur.items(), key=lambda kv: -kv[1])[:args.top]:
    shape, op = info[k]
    print(f'{v:8.1f} ms  {k:28s} {shape:26s} {re.sub(r"^jit[(][^)]*[)]/", "", op)[-90:]}')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest='cmd', required=True)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument('--size', default='small')
  common.add_argument('--batch', type=int, default=8)
  common.add_argument('--input_len', type=int, default=256)
  common.add_argument('--target_len', type=int, default=64)
  a = sub.add_parser('ab', parents=[common], help='interleaved A/B timing of variants')
  a.add_argument('--variants', default='dense3d,current',
                 help=f'comma-separated, the first is the reference; choose from {VARIANTS}')
  a.add_argument('--with', dest='with_', default='',
                 help='also time these train_step.py runners in the same rounds (hf_flax,pytorch)')
  a.add_argument('--rounds', type=int, default=8)
  a.add_argument('--output', default='')
  b = sub.add_parser('parts', parents=[common], help='time pieces of the step')
  b.add_argument('--variant', default='current', choices=VARIANTS)
  b.add_argument('--steps', type=int, default=5)
  t = sub.add_parser('trace', parents=[common], help='per-op profile of the step')
  t.add_argument('--variant', default='current', choices=VARIANTS)
  t.add_argument('--steps', type=int, default=2)
  t.add_argument('--top', type=int, default=30)
  t.add_argument('--trace_dir', default='')
  args = p.parse_args(argv)
  dict(ab=cmd_ab, parts=cmd_parts, trace=cmd_trace)[args.cmd](args)


if __name__ == '__main__':
  main()
