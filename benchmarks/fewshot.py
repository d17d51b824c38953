"""Few-shot prompt tuning: 16 templates in one vmapped program vs one template at a time (promptjax).

Wu et al.'s 16-shot protocol (`promptjax.evaluation.fewshot`): per template, tune only the prompt on one
batch of 16 training instances for `epochs` Adafactor steps (lr 1e-3, clip 1.0), transformer frozen.
`PromptTuner` vmaps the tuning loop over `templates_per_program` templates in one compiled program. This
benchmark measures what that buys on the mini model of `make demo` (`models/t5_1_1_mini.gin`: T5 v1.1,
2 + 2 layers, d 64, 4 heads x 16, MLP 128, vocab 1664; random weights from `init_params(PRNGKey(0))`) with a 20-token shallow or
deep prompt:

  batches   16 distinct training batches of 16 instances from the 10 bundled held-out templates
            (`mini_heldout_rank_classification`, split `train`, 64 instances each, whole sequences):
            template i % 10 with `select_examples(task, 64, 16, seed=100 + i // 10)`, i = 0..15,
            built by `training_batch` (gold targets).
  (a) all   `PromptTuner(model, FewShotConfig(epochs=E, templates_per_program=16)).tune(params, all 16)`:
            one call of one program; every batch padded to the group's longest input / target.
  (b) one   `PromptTuner(model, FewShotConfig(epochs=E, templates_per_program=1)).tune(params, [batch 0])`:
            one template alone, padded to its own lengths.
  (c) loop  (with `--sequential`) the same width-1 tuner on all 16 batches: 16 calls, one after the other,
            each padded to its own lengths (one compiled program per distinct padded shape).

Each measurement first runs untimed once (it compiles there; the compile time is reported as that call
minus the median timed call), then `--repeats` timed calls, with `jax.block_until_ready` on the outputs.
The measurements take turns per repeat, the order reversed every other repeat. Reported per prompt kind:
median wall times and ratio = (a) / (16 x (b)) (the goal is <= 0.25: vmapping 16 templates costs at most
4 single-template tunings), and with `--sequential` also (a) / (c). Before timing, the script checks that
the vmapped tuning gives the same prompt as tuning template 0 alone (max |difference|).

The protocol tunes for 100 epochs; the default `--epochs 20` keeps the run at about 2-4 minutes on a 2-core
CPU (with 100 epochs one call of (a) takes about a minute there). Every epoch is the same scan step, so the
times scale linearly with `--epochs` (the compile time does not) and the ratios do not depend on it.

Usage:
  python benchmarks/fewshot.py                                 # shallow and deep, 20 epochs, 3 repeats
  python benchmarks/fewshot.py --epochs 100 --repeats 1        # the protocol's 100 epochs (~6 min here)
  python benchmarks/fewshot.py --kinds deep --repeats 5 --sequential
  python benchmarks/fewshot.py --kinds shallow --epochs 5 --repeats 1   # smoke test
Results are also written to benchmarks/results/fewshot.json (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

import common  # noqa: E402  (benchmarks/common.py: the repository on sys.path, machine facts)

REPO_ROOT = common.REPO_ROOT

HELDOUT = 'mini_heldout_rank_classification'
PRESET = 'mini'   # the model of `make demo` (`get_config('mini')`)
NUM_TEMPLATES = 16
NUM_SHOTS = 16


def mini_model(kind: str, length: int = 20):
  from promptjax.models import PromptConfig, PromptableT5, get_config
  return PromptableT5(get_config(PRESET), PromptConfig(kind=kind, length=length))


def make_batches(mixture: str = HELDOUT, n: int = NUM_TEMPLATES, shots: int = NUM_SHOTS):
  """`n` distinct training batches: template i % #templates, selection seed 100 + i // #templates."""
  from promptjax.evaluation import fewshot as fs
  from promptjax.evaluation import rank_classification as rc
  tasks = rc.task_names(mixture)
  train = {}
  batches, meta = [], []
  for i in range(n):
    task, seed = tasks[i % len(tasks)], 100 + i // len(tasks)
    if task not in train:
      train[task] = rc.load_choices(task, 'train')
    rows = fs.select_examples(task, train[task].num_examples, shots, seed)
    b = fs.training_batch(train[task], rows)
    batches.append({k: np.asarray(v, np.int32) for k, v in b.items()})
    meta.append(dict(task=task, seed=seed, rows=[int(r) for r in rows],
                     input_len=int(b['encoder_input_tokens'].shape[1]),
                     target_len=int(b['decoder_target_tokens'].shape[1])))
  return batches, meta


def _cache_size(jitted) -> Optional[int]:
  """Number of programs a `jax.jit` function has compiled (None if this jax does not say)."""
  try:
    return int(jitted._cache_size())
  except Exception:  # pylint: disable=broad-except
    return None


def _timed(fn: Callable[[], object]) -> float:
  import jax
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def bench_kind(kind: str, batches, epochs: int, repeats: int, sequential: bool, prompt_length: int) -> Dict:
  import jax
  from promptjax.evaluation.fewshot import FewShotConfig, PromptTuner

  model = mini_model(kind, prompt_length)
  params = model.init_params(jax.random.PRNGKey(0))
  all_tuner = PromptTuner(model, FewShotConfig(epochs=epochs, templates_per_program=len(batches)))
  one_tuner = PromptTuner(model, FewShotConfig(epochs=epochs, templates_per_program=1))
  runs: Dict[str, Callable[[], object]] = {
      'all': lambda: all_tuner.tune(params, batches),
      'one': lambda: one_tuner.tune(params, batches[:1]),
  }
  if sequential:
    runs['loop'] = lambda: one_tuner.tune(params, batches)

  res: Dict[str, Dict] = {}
  outs = {}
  for name, fn in runs.items():
    t0 = time.perf_counter()
    outs[name] = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    res[name] = dict(first_call_s=first, times=[])
    print(f'  {kind} {name}: first call (incl. compile) {first:.2f}s', flush=True)

  # The vmapped result for template 0 must equal tuning template 0 alone.
  pa, la = outs['all']
  po, lo = outs['one']
  diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(pa[0]), jax.tree.leaves(po[0])))
  loss_diff = float(np.max(np.abs(la[0] - lo[0])))
  print(f'  {kind}: template 0 tuned in the group vs alone: max |prompt diff| {diff:.2e}, '
        f'max |loss diff| {loss_diff:.2e}; loss {float(lo[0, 0]):.4f} -> {float(lo[0, -1]):.4f}', flush=True)

  order = list(runs)
  for rep in range(repeats):
    for name in (order if rep % 2 == 0 else order[::-1]):
      dt = _timed(runs[name])
      res[name]['times'].append(dt)
      print(f'    repeat {rep}: {kind} {name:4s} {dt:7.3f}s', flush=True)

  for name, r in res.items():
    r['median_s'] = statistics.median(r['times'])
    r['min_s'] = min(r['times'])
    r['compile_s_estimate'] = r['first_call_s'] - r['median_s']
  n = len(batches)
  out = dict(kind=kind, prompt_length=prompt_length, epochs=epochs, num_templates=n, results=res,
             check=dict(max_abs_prompt_diff=diff, max_abs_loss_diff=loss_diff,
                        loss_first=float(lo[0, 0]), loss_last=float(lo[0, -1])),
             ratio=res['all']['median_s'] / (n * res['one']['median_s']),
             ratio_min=res['all']['min_s'] / (n * res['one']['min_s']),
             templates_per_s_all=n / res['all']['median_s'], templates_per_s_one=1 / res['one']['median_s'],
             compiled_programs_width1=_cache_size(one_tuner._tune))
  if sequential:
    out['ratio_loop'] = res['all']['median_s'] / res['loop']['median_s']
  return out


def main(argv: Optional[List[str]] = None) -> Dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--epochs', type=int, default=20,
                 help='tuning steps on the one batch (the protocol has 100; the default is lower so that '
                      'the run takes minutes on a 2-core CPU: every step costs the same, so the ratios do not '
                      'depend on it)')
  p.add_argument('--kinds', default='shallow,deep', help='comma-separated prompt kinds (shallow, deep)')
  p.add_argument('--repeats', type=int, default=3, help='timed calls per measurement (median reported)')
  p.add_argument('--prompt_length', type=int, default=20)
  p.add_argument('--sequential', action='store_true',
                 help='also time the width-1 tuner on all 16 templates one after the other')
  p.add_argument('--output', default=os.path.join(REPO_ROOT, 'benchmarks', 'results', 'fewshot.json'))
  args = p.parse_args(argv)
  kinds = [k.strip() for k in args.kinds.split(',') if k.strip()]
  bad = [k for k in kinds if k not in ('shallow', 'deep')]
  if bad:
    p.error(f'unknown prompt kind(s) {bad}; choose from shallow, deep')

  import jax
  import promptjax.tasks  # noqa: F401  (registers the bundled tasks)
  print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, '
        f'jax {jax.__version__} {jax.devices()}', flush=True)
  t0 = time.perf_counter()
  batches, meta = make_batches()
  print(f'data: {len(batches)} batches of {NUM_SHOTS} from {HELDOUT} (train), read in '
        f'{time.perf_counter() - t0:.1f}s; input lengths {[m["input_len"] for m in meta]}, target lengths '
        f'{[m["target_len"] for m in meta]}', flush=True)

  per_kind = {}
  for kind in kinds:
    per_kind[kind] = bench_kind(kind, batches, args.epochs, args.repeats, args.sequential, args.prompt_length)

  n = len(batches)
  print()
  hdr = (f'{"kind":8s} {"(a) all 16 s":>12s} {"(b) one s":>10s} {"16 x (b) s":>10s} {"ratio":>6s} '
         f'{"compile (a)":>11s} {"compile (b)":>11s}' + (f' {"(c) loop s":>10s} {"(a)/(c)":>7s}'
                                                        if args.sequential else ''))
  print(hdr)
  print('-' * len(hdr))
  for kind, r in per_kind.items():
    a, b = r['results']['all'], r['results']['one']
    line = (f'{kind:8s} {a["median_s"]:12.3f} {b["median_s"]:10.3f} {n * b["median_s"]:10.3f} '
            f'{r["ratio"]:6.3f} {a["compile_s_estimate"]:10.2f}s {b["compile_s_estimate"]:10.2f}s')
    if args.sequential:
      line += f' {r["results"]["loop"]["median_s"]:10.3f} {r["ratio_loop"]:7.3f}'
    print(line)
  for kind, r in per_kind.items():
    print(f'{kind}: ratio (a) / (16 x (b)) = {r["ratio"]:.3f} (median), {r["ratio_min"]:.3f} (min); goal <= 0.25')

  out = dict(epochs=args.epochs, repeats=args.repeats, num_templates=n, num_shots=NUM_SHOTS,
             model=dict(preset=PRESET), batches=meta, kinds=per_kind,
             machine=common.machine_info())
  return common.write_record(out, args.output)


if __name__ == '__main__':
  main()
