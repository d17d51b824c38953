"""The full optimizer step of the promptjax trainer vs an HF PyTorch training step, plus micro-batching
and prompt-only training inside promptjax.

One step = forward + backward + global-norm gradient clipping (1.0) + Adafactor update of a T5 v1.1
(fp32, dropout 0) carrying a shallow soft prompt of `--prompt_len` tokens, on a random full-length
batch (`train_step.make_batch`). Weights are random, built from a config (nothing is downloaded).

  promptjax  exactly what `promptjax.training.trainer.train` jits (`trainer.setup` with the `MultiTask`
             method): PromptableT5(get_config(size), PromptConfig('shallow', prompt_len)), params from
             `Setup.init_state` on a 1-device ('data', 'model') mesh, optimizer
             `masked_optimizer(adafactor(learning_rate=1e-3), params, trainable)` (= clip_by_global_norm
             1.0 + optax.adafactor with decay_rate 0.8, update clipping 1.0, no parameter scaling,
             factoring only for dims >= 128), `make_train_step(model, opt, trainable=...,
             num_microbatches=..., dropout_seed=None)` under jax.jit with the trainer's
             in/out shardings and the TrainState donated. The executable is compiled ahead of time
             (`jitted.lower(...).compile()`), which also gives XLA's buffer-assignment sizes.
  pytorch    transformers.T5ForConditionalGeneration(T5Config(... feed_forward_proj='gated-gelu',
             tie_word_embeddings=False)) built by `train_step._hf_config` with the same sizes, plus an
             nn.Parameter prompt [prompt_len, d_model] (rows of the embedding) prepended to the
             embedded inputs via `inputs_embeds` (so both frameworks run the same encoder length
             prompt_len + input_len); loss from `labels`; then
             torch.nn.utils.clip_grad_norm_(trainable, 1.0) and
             transformers.optimization.Adafactor(lr=1e-3, scale_parameter=False, relative_step=False,
             warmup_init=False, clip_threshold=1.0, decay_rate=-0.8); zero_grad(set_to_none=True).
             torch.set_num_threads per variant (below). 'prompt' freezes the model (requires_grad
             False) and optimizes only the prompt. (HF's init gives a much larger initial loss than
             promptjax's; the weights differ, the work per step does not.)

Variants (all share one global batch per size):
  pj            promptjax, trainable='all', num_microbatches=1
  pj_mbN        promptjax, trainable='all', num_microbatches=N (N from --microbatches, > 1)
  pj_prompt     promptjax, trainable='prompt' (frozen transformer: no weight gradients)
  torch         pytorch, everything trainable (transformer + prompt), os.cpu_count() threads
  torch_prompt  pytorch, prompt only
  torch@1, torch_prompt@1   the same with torch.set_num_threads(1) (set before each of their steps).
                On a 2-core VM shared with other jobs, PyTorch's OpenMP barriers make 2 threads far
                slower than 1 when a core is taken away (see the README), so both are shown.
                The default --variants runs the 2-thread ones on tiny only (time budget).

Timing: per size, every variant is built (promptjax: compiled) and run once untimed (plus `--warmup`
steps), then the variants take turns for `--rounds`
rounds of `--steps` synchronized steps each (A, B, C, ..., then the reverse order, ...), so slow phases
of a noisy machine hit all of them. tokens/s = batch * (input_len + target_len) / median step time
(prompt positions are not counted as tokens; both frameworks process them).

Memory (CPU: `jax.devices()[0].memory_stats()` is None, so process RSS is used, no psutil):
  * glibc malloc is switched, via mallopt at start-up, to a fixed 256 KiB mmap threshold and a 1 MiB trim
    threshold, so freed large buffers (XLA's and PyTorch's CPU allocators both use malloc) go back
    to the OS and RSS tracks live memory instead of the allocator's high-water mark.
  * `step peak` = max over rounds of (VmHWM during the variant's timed steps − VmRSS just before
    them); VmHWM is reset before each measurement by writing 5 to /proc/self/clear_refs, after
    waiting (gc + polling, untimed) until RSS stops falling, since XLA releases a step's buffers
    asynchronously after its outputs are ready. This is
    the transient memory of a step: activations, gradients, optimizer temporaries (and for PyTorch
    the grads, which set_to_none frees after every step). All variants live in one process, so the
    other variants' persistent state is part of the baseline and not counted.
  * `state` = bytes of the persistent training state (params + optimizer state) of the variant,
    summed over its arrays / tensors.
  * `peak est.` = state + step peak: the footprint one variant would need alone.
  * promptjax also gets `XLA temp`: temp_size_in_bytes of the compiled step's memory_analysis(),
    the size XLA's buffer assignment reserves for all intermediates (exact, noise-free).

Usage:
  python benchmarks/train_loop.py                                   # tiny + small, modest shapes
  python benchmarks/train_loop.py --sizes small --shapes small=8x128x32 --rounds 4 --output /tmp/l.json
  python benchmarks/train_loop.py --sizes tiny --variants pj,torch --rounds 2 --steps 1   # smoke test
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import Shapes, _hf_config, make_batch, shapes_from_size  # noqa: E402  (also puts the repo root on sys.path)

DEFAULT_SHAPES = {'tiny': (8, 128, 32), 'small': (4, 64, 16)}  # batch x input_len x target_len


# ------------------------------------------------------------------------------------------------
# Memory.

def configure_malloc(mmap_threshold: int = 256 << 10, trim_threshold: int = 1 << 20) -> bool:
  """Fixed glibc mmap/trim thresholds so freed large buffers leave RSS (see module docstring)."""
  try:
    libc = ctypes.CDLL('libc.so.6')
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and bool(
        libc.mallopt(m_trim_threshold, trim_threshold))
  except OSError:
    return False


def _status_kb(field: str) -> Optional[int]:
  try:
    with open('/proc/self/status') as fh:
      for line in fh:
        if line.startswith(field + ':'):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def rss_bytes() -> Optional[int]:
  kb = _status_kb('VmRSS')
  return None if kb is None else kb * 1024


def reset_peak_rss() -> bool:
  try:
    with open('/proc/self/clear_refs', 'w') as fh:
      fh.write('5')
    return True
  except OSError:
    return False


def peak_rss_bytes() -> Optional[int]:
  kb = _status_kb('VmHWM')
  if kb is None:  # no /proc: fall back to the process-lifetime peak (not resettable)
    import resource
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return kb * 1024


def settle_rss(timeout_s: float = 2.0, poll_s: float = 0.02) -> Optional[int]:
  """gc, then wait until RSS stops falling: XLA frees a step's buffers (and runs donations) after its
  outputs are ready, so right after a step the previous variant's temporaries may still be resident."""
  import gc
  gc.collect()
  last, stable, t0 = rss_bytes(), 0, time.perf_counter()
  while last is not None and stable < 3 and time.perf_counter() - t0 < timeout_s:
    time.sleep(poll_s)
    now = rss_bytes()
    stable = stable + 1 if now >= last - (1 << 20) else 0
    last = min(last, now)
  return rss_bytes()


def _tree_bytes(tree) -> int:
  import jax
  return int(sum(x.nbytes for x in jax.tree_util.tree_leaves(tree) if hasattr(x, 'nbytes')))


# ------------------------------------------------------------------------------------------------
# Runners: `step()` runs one synchronized step and returns the loss as a float.

class Variant:
  def __init__(self, name: str, framework: str, trainable: str, microbatches: int = 1,
               threads: Optional[int] = None):
    self.name, self.framework, self.trainable, self.microbatches = name, framework, trainable, microbatches
    self.threads = threads  # PyTorch intra-op threads (None: os.cpu_count())
    self.step: Callable[[], float] = None
    self.info: Dict = {}

  @property
  def label(self) -> str:
    extra = f', mb={self.microbatches}' if self.framework == 'promptjax' else ''
    if self.framework == 'pytorch':
      extra = f', {self.threads or os.cpu_count()} thread{"s" if (self.threads or os.cpu_count()) > 1 else ""}'
    return f'{self.framework} ({self.trainable}{extra})'


def setup_promptjax(v: Variant, size: str, prompt_len: int, batch_np) -> None:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from promptjax.models import PromptableT5, get_config
  from promptjax.models.prompts import PromptConfig
  from promptjax.data.feeds import DatasetConfig
  from promptjax.training import partitioning, trainer
  from promptjax.training.method import MultiTask

  prompt = PromptConfig(kind='shallow', length=prompt_len) if prompt_len else PromptConfig()
  model = PromptableT5(get_config(size), prompt)
  # Exactly what the trainer builds (its default optimizer: the papers' Adafactor, masked to `trainable`).
  data = DatasetConfig('benchmark', {}, batch_size=len(batch_np['encoder_input_tokens']))
  run = trainer.setup(model, MultiTask(data, v.microbatches), total_steps=1, trainable=v.trainable,
                      mesh_shape=(1, 1), dropout_seed=None)
  state = run.init_state(seed=0)
  batch = partitioning.make_global_batch(batch_np, run.mesh)
  jitted = run.step_fn
  t0 = time.perf_counter()
  compiled = jitted.lower(state, batch).compile()
  v.info['compile_s'] = time.perf_counter() - t0
  try:
    ma = compiled.memory_analysis()
    v.info['xla_temp_bytes'] = int(ma.temp_size_in_bytes)
    v.info['xla_argument_bytes'] = int(ma.argument_size_in_bytes)
    v.info['xla_output_bytes'] = int(ma.output_size_in_bytes)
    v.info['xla_alias_bytes'] = int(ma.alias_size_in_bytes)
  except Exception as e:  # noqa: BLE001 - memory_analysis is best effort
    v.info['xla_memory_analysis_error'] = repr(e)
  v.info['state_bytes'] = _tree_bytes(state)
  holder = {'state': state}

  def step():
    holder['state'], metrics = compiled(holder['state'], batch)
    jax.block_until_ready((holder['state'], metrics))
    return float(metrics['loss'])

  v.step = step


def setup_pytorch(v: Variant, s: Shapes, prompt_len: int, batch_np) -> None:
  import torch
  from transformers import T5Config, T5ForConditionalGeneration
  from transformers.optimization import Adafactor

  threads = v.threads or os.cpu_count() or 1
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = T5ForConditionalGeneration(_hf_config(s, T5Config)).float()
  model.train()
  rng = np.random.RandomState(0)
  rows = torch.from_numpy(rng.choice(min(5000, s.vocab), size=prompt_len, replace=False))
  prompt = torch.nn.Parameter(model.shared.weight.detach()[rows].clone())  # [L, d], vocab-sampled
  if v.trainable == 'prompt':
    model.requires_grad_(False)
    trainable = [prompt]
  else:
    trainable = list(model.parameters()) + [prompt]
  opt = Adafactor(trainable, lr=1e-3, scale_parameter=False, relative_step=False, warmup_init=False,
                  clip_threshold=1.0, decay_rate=-0.8)
  input_ids = torch.from_numpy(batch_np['encoder_input_tokens']).long()
  labels = torch.from_numpy(batch_np['decoder_target_tokens']).long()
  attention_mask = torch.ones((s.batch, prompt_len + s.input_len), dtype=torch.long)

  def step():
    if torch.get_num_threads() != threads:  # variants with other thread counts share the process
      torch.set_num_threads(threads)
    embedded = model.shared(input_ids)
    if prompt_len:
      embedded = torch.cat([prompt.unsqueeze(0).expand(s.batch, -1, -1), embedded], dim=1)
    out = model(inputs_embeds=embedded, attention_mask=attention_mask, labels=labels)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(out.loss.detach())

  def state_bytes():
    n = sum(p.numel() * p.element_size() for p in list(model.parameters()) + [prompt])
    for st in opt.state.values():
      n += sum(t.numel() * t.element_size() for t in st.values() if torch.is_tensor(t))
    return int(n)

  v.step = step
  v.info['threads'] = threads
  v.info['_state_bytes_fn'] = state_bytes


def xla_memory_breakdown(size: str, prompt_len: int, batch_np) -> Dict[str, int]:
  """XLA temp bytes of three programs that share promptjax's loss_and_grads (trainable='all', mb=1):
  the gradients alone (returned as outputs, so also their size), the step with
  `adafactor(global_norm_clip=None)`, and the step with `adafactor()` (clip 1.0, the trainer's).
  Shows what the optimizer and the global-norm clipping add to a step's intermediates."""
  import jax
  import jax.numpy as jnp
  from promptjax.models import PromptableT5, get_config
  from promptjax.models.prompts import PromptConfig
  from promptjax.training import optimizers as opt_lib
  from promptjax.training import train_step as ts

  prompt = PromptConfig(kind='shallow', length=prompt_len) if prompt_len else PromptConfig()
  model = PromptableT5(get_config(size), prompt)
  params = model.init_params(jax.random.PRNGKey(0))
  batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
  out = dict(param_bytes=_tree_bytes(params))

  def temp(f, *args, donate=()):
    ma = jax.jit(f, donate_argnums=donate).lower(*args).compile().memory_analysis()
    return int(ma.temp_size_in_bytes), int(ma.output_size_in_bytes)

  out['grads_temp_bytes'], out['grads_output_bytes'] = temp(
      lambda p, b: ts.loss_and_grads(model, p, b, None)[:2], params, batch)
  for key, opt in (('step_no_clip', opt_lib.adafactor(global_norm_clip=None)),
                   ('step_clip', opt_lib.adafactor())):
    state = ts.TrainState.create(params, opt)
    out[key + '_temp_bytes'], _ = temp(ts.make_train_step(model, opt, dropout_seed=None), state, batch,
                                       donate=(0,))
  return out


# ------------------------------------------------------------------------------------------------

def build_variants(names: List[str], microbatches: List[int]) -> List[Variant]:
  out = []
  for full in names:
    name, _, threads = full.partition('@')
    if threads and not name.startswith('torch'):
      raise ValueError(f'{full!r}: @THREADS applies to the torch variants only')
    if name in ('torch', 'torch_prompt'):
      out.append(Variant(full, 'pytorch', 'prompt' if name == 'torch_prompt' else 'all',
                         threads=int(threads) if threads else None))
      continue
    if name == 'pj':
      out.append(Variant('pj', 'promptjax', 'all', 1))
    elif name == 'pj_mb':
      out.extend(Variant(f'pj_mb{n}', 'promptjax', 'all', n) for n in microbatches if n > 1)
    elif name.startswith('pj_mb') and name[5:].isdigit():
      out.append(Variant(name, 'promptjax', 'all', int(name[5:])))
    elif name == 'pj_prompt':
      out.append(Variant('pj_prompt', 'promptjax', 'prompt', 1))
    else:
      raise ValueError(f'unknown variant {name!r}')
  return out


def _mib(x: Optional[float]) -> str:
  return '–' if x is None else f'{x / 2 ** 20:.1f}'


def run_size(size: str, shape, args) -> Dict:
  batch, input_len, target_len = shape
  s = shapes_from_size(size, batch, input_len, target_len)
  batch_np = make_batch(s)
  names = [n.split(':', 1)[1] if ':' in n else n for n in args.variants
           if ':' not in n or n.split(':', 1)[0] == size]
  variants = build_variants(names, args.microbatches)
  for v in variants:
    if v.microbatches > 1 and batch % v.microbatches:
      raise SystemExit(f'{size}: batch {batch} is not divisible by num_microbatches={v.microbatches}')
  print(f'\n=== {size}: batch {batch}, input_len {input_len} (+{args.prompt_len} prompt), '
        f'target_len {target_len}, {s.tokens} tokens/step ===', flush=True)

  for v in variants:
    t0 = time.perf_counter()
    if v.framework == 'promptjax':
      setup_promptjax(v, size, args.prompt_len, batch_np)
    else:
      setup_pytorch(v, s, args.prompt_len, batch_np)
    t1 = time.perf_counter()
    v.info['first_loss'] = v.step()
    t2 = time.perf_counter()
    for _ in range(args.warmup):
      v.step()
    if '_state_bytes_fn' in v.info:  # PyTorch's Adafactor creates its state in the first step
      v.info['state_bytes'] = v.info.pop('_state_bytes_fn')()
    v.info.update(setup_s=t1 - t0, first_step_s=t2 - t1, times=[], step_peak_bytes=[])
    extra = f", compile {v.info['compile_s']:.1f}s" if 'compile_s' in v.info else ''
    print(f'{v.name:13s} setup {t1 - t0:5.1f}s{extra}, first step {t2 - t1:5.2f}s, '
          f'loss {v.info["first_loss"]:.4f}', flush=True)

  can_reset = reset_peak_rss()
  for rnd in range(args.rounds):
    order = variants if rnd % 2 == 0 else variants[::-1]
    for v in order:
      ts = []
      settle_rss()  # the previous variant's freed buffers must leave RSS before the baseline is read
      reset_peak_rss()
      rss0 = rss_bytes()
      for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = v.step()
        ts.append(time.perf_counter() - t0)
      peak = peak_rss_bytes()
      if can_reset and rss0 is not None and peak is not None:
        v.info['step_peak_bytes'].append(max(0, peak - rss0))
      v.info['times'].extend(ts)
      v.info['last_loss'] = loss
    print(f'  round {rnd}: ' + '  '.join(f'{v.name} {statistics.median(v.info["times"][-args.steps:]) * 1e3:.0f}ms'
                                         for v in variants), flush=True)

  rows = {}
  for v in variants:
    times = v.info['times']
    med = statistics.median(times)
    peaks = v.info['step_peak_bytes']
    step_peak = max(peaks) if peaks else None
    rows[v.name] = dict(label=v.label, framework=v.framework, trainable=v.trainable,
                        microbatches=v.microbatches, median_step_s=med, min_step_s=min(times),
                        tokens_per_s=s.tokens / med, step_peak_bytes=step_peak,
                        step_peak_bytes_per_round=peaks,
                        peak_estimate_bytes=(None if step_peak is None else v.info['state_bytes'] + step_peak),
                        **{k: val for k, val in v.info.items() if k not in ('step_peak_bytes',)})

  ratios = {}
  def ratio(a, b, key):
    if a in rows and b in rows:
      ratios[key] = rows[a]['tokens_per_s'] / rows[b]['tokens_per_s']
      ratios[key + ' (min step times)'] = rows[b]['min_step_s'] / rows[a]['min_step_s']
  for name, r in rows.items():
    if r['framework'] == 'pytorch':
      ref = 'pj' if r['trainable'] == 'all' else 'pj_prompt'
      ratio(ref, name, f"promptjax/pytorch ({r['trainable']}, {r['threads']} thread"
                       f"{'s' if r['threads'] > 1 else ''})")
  for n in args.microbatches:
    if n > 1:
      ratio(f'pj_mb{n}', 'pj', f'promptjax mb={n} / mb=1')
  ratio('pj_prompt', 'pj', 'promptjax prompt / all')
  for name, r in rows.items():
    if r['framework'] == 'pytorch' and r['trainable'] == 'prompt':
      ratio(name, name.replace('torch_prompt', 'torch'), f"pytorch prompt / all ({r['threads']} thread"
                                                          f"{'s' if r['threads'] > 1 else ''})")

  del variants  # frees this size's models before the next size
  breakdown = xla_memory_breakdown(size, args.prompt_len, batch_np) if args.memory_breakdown else None
  return dict(size=size, shapes=s.__dict__, tokens_per_step=s.tokens, prompt_len=args.prompt_len,
              rows=rows, ratios=ratios, xla_memory_breakdown=breakdown)


def markdown(result: Dict) -> str:
  s = result['shapes']
  lines = [f"**{result['size']}** (batch {s['batch']}, input {s['input_len']} + prompt "
           f"{result['prompt_len']}, target {s['target_len']}; {result['tokens_per_step']} tokens/step)",
           '',
           '| variant | median ms | min ms | tokens/s | state MiB | step peak MiB (RSS) | peak est. MiB | XLA temp MiB | first loss |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in result['rows'].values():
    lines.append(f"| {r['label']} | {r['median_step_s'] * 1e3:.1f} | {r['min_step_s'] * 1e3:.1f} | "
                 f"{r['tokens_per_s']:.0f} | {_mib(r['state_bytes'])} | {_mib(r['step_peak_bytes'])} | "
                 f"{_mib(r['peak_estimate_bytes'])} | {_mib(r.get('xla_temp_bytes'))} | "
                 f"{r['first_loss']:.4f} |")
  lines.append('')
  b = result.get('xla_memory_breakdown')
  if b:
    lines += [f"XLA temp MiB (trainable='all', mb=1; params {_mib(b['param_bytes'])}): grads only "
              f"{_mib(b['grads_temp_bytes'])} (+ {_mib(b['grads_output_bytes'])} grads as outputs), "
              f"step with Adafactor, no global-norm clip {_mib(b['step_no_clip_temp_bytes'])}, "
              f"step with clip 1.0 {_mib(b['step_clip_temp_bytes'])}", '']
  for k, val in result['ratios'].items():
    if not k.endswith('(min step times)'):
      lines.append(f"* {k}: **{val:.2f}×** tokens/s (min step times: "
                   f"{result['ratios'][k + ' (min step times)']:.2f}×)")
  return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> Dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--sizes', default='tiny,small', help='comma-separated promptjax size presets')
  p.add_argument('--shapes', default='',
                 help='per-size BATCHxINPUT_LENxTARGET_LEN overrides, e.g. "tiny=8x128x32,small=4x64x16" '
                      f'(defaults: {", ".join(f"{k}={b}x{n}x{t}" for k, (b, n, t) in DEFAULT_SHAPES.items())}; '
                      'other sizes default to 8x256x64)')
  p.add_argument('--prompt_len', type=int, default=20, help='shallow prompt length (0: no prompt, '
                                                            'then pj_prompt/torch_prompt are skipped)')
  p.add_argument('--microbatches', default='2,4', help='num_microbatches values (besides 1) for pj_mb')
  p.add_argument('--variants',
                 default='pj,torch@1,tiny:torch,pj_mb,pj_prompt,torch_prompt@1,tiny:torch_prompt',
                 help='comma-separated: pj, pj_mb (all of --microbatches) or pj_mbN, pj_prompt, torch, '
                      'torch_prompt; a torch variant may end in @THREADS (default: os.cpu_count()); '
                      'SIZE:VARIANT runs VARIANT for that size only. The default runs PyTorch with '
                      'os.cpu_count() threads on tiny only: on the shared 2-core VM a 2-thread T5-small '
                      'step took 5-8x longer than a 1-thread one, which alone would blow the time budget')
  p.add_argument('--steps', type=int, default=1, help='timed steps per variant and round')
  p.add_argument('--rounds', type=int, default=3, help='interleaved rounds (order reverses each round)')
  p.add_argument('--warmup', type=int, default=0, help='untimed steps after the first step')
  p.add_argument('--memory_breakdown', action='store_true',
                 help='also compile grads-only / no-clip / clip steps and report their XLA temp sizes '
                      '(3 more compiles per size)')
  p.add_argument('--output', default='', help='optional JSON output path')
  args = p.parse_args(argv)

  args.microbatches = [int(x) for x in args.microbatches.split(',') if x.strip()]
  args.variants = [x.strip() for x in args.variants.split(',') if x.strip()]
  if not args.prompt_len:
    args.variants = [x for x in args.variants if not x.partition('@')[0].endswith('_prompt')]
  for x in args.variants:  # fail before anything is built
    build_variants([x.split(':', 1)[-1]], args.microbatches)
  shapes = dict(DEFAULT_SHAPES)
  for item in filter(None, (x.strip() for x in args.shapes.split(','))):
    size, dims = item.split('=')
    shapes[size] = tuple(int(d) for d in dims.lower().split('x'))
  sizes = [x.strip() for x in args.sizes.split(',') if x.strip()]

  malloc_ok = configure_malloc()
  import jax
  import torch
  import transformers
  machine = dict(cpus=os.cpu_count(), processor=platform.processor() or platform.machine(),
                 jax=jax.__version__, backend=jax.default_backend(), torch=torch.__version__,
                 transformers=transformers.__version__,
                 jax_memory_stats=jax.devices()[0].memory_stats() is not None,
                 malloc_thresholds_set=malloc_ok, peak_rss_resettable=reset_peak_rss(),
                 loadavg=os.getloadavg())
  print(f'machine: {machine}', flush=True)
  t_start = time.perf_counter()
  results = [run_size(size, shapes.get(size, (8, 256, 64)), args) for size in sizes]
  total_s = time.perf_counter() - t_start

  print()
  for r in results:
    print(markdown(r))
    print()
  print(f'total wall time {total_s:.0f}s; load average at end {os.getloadavg()}')
  out = dict(results=results, machine=machine, args=vars(args), total_s=total_s,
             loadavg_end=os.getloadavg(), time=time.strftime('%Y-%m-%d %H:%M:%S'),
             command=' '.join(['python', 'benchmarks/train_loop.py'] + (sys.argv[1:] if argv is None else argv)))
  if args.output:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, 'w') as fh:
      json.dump(out, fh, indent=2, default=str)
    print(f'wrote {args.output}')
  return out


if __name__ == '__main__':
  main()
