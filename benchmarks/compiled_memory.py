"""Per-device memory of every paper row's train step: the dry run's analytic estimate next to XLA's memory
analysis of the real compiled, sharded step (`promptjax train --dry_run --compile`).

For each `promptjax/configs/paper/*.gin` (or `--only` a few), one subprocess creates as many CPU devices as
the file's `MESH_SHAPE` needs (`jax_num_cpu_devices`), builds the run exactly as `promptjax train` does
(model, method, optimizer, shardings, `--gin.MODEL_DIR` a throw-away path; no data is read and nothing is
allocated: parameters, optimizer state and batch are abstract), lowers and compiles the jitted step for the
method's abstract batch (`Method.abstract_batch`) and records:

  estimate   `DryRunReport.per_device_bytes`: params, optimizer state, gradients, activations (the residuals
             autodiff saves per layer, traced at the per-device shapes), total; for a remat row also the
             total without remat, which is what XLA:CPU compiles (it does not honour remat: the compiled
             temporaries of `jax.checkpoint`-ed layer stacks equal the plain ones, jax-ml/jax#19822)
  compiled   XLA's `memory_analysis()` of the compiled step: arguments, outputs, aliased (the donated state),
             temporaries, peak = arguments + outputs - aliased + temporaries; compile seconds

XLA:CPU is not the accelerator's compiler (other fusions, no TPU/GPU memory-saving passes), so the compiled
numbers are those of the CPU program; they check the estimate's order and catch programs whose temporaries
explode. Files that are not training rows (evaluation / downstream rows) are listed as such. The backend's
LLVM optimization level is 0 (`--xla_backend_optimization_level=0`): it speeds up compilation and does not
change buffer assignment.

Usage:
  python benchmarks/compiled_memory.py                                  # every paper file (long)
  python benchmarks/compiled_memory.py --only wu2022_large_mtl_prompt,wu2022_large_fomaml
  python benchmarks/compiled_memory.py --only pan2023_mini_ppt          # smoke test (seconds)
Results: benchmarks/results/compiled_memory.json (git-ignored) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import common  # noqa: E402  (benchmarks/common.py: the repository on sys.path, machine facts)

PAPER_DIR = os.path.join(common.REPO_ROOT, 'promptjax', 'configs', 'paper')


def _one(gin_file: str, out: str) -> None:
  """In a fresh process: the dry run with the compiled step, as `promptjax train --dry_run --compile`."""
  from promptjax import cli
  with tempfile.TemporaryDirectory() as model_dir:
    argv, bindings = cli.split_gin_args(['train', f'--gin_file={gin_file}', f"--gin.MODEL_DIR='{model_dir}'",
                                         '--dry_run', '--compile'])
    report, _ = cli.dry_run_report(cli.build_parser().parse_args(argv), bindings)
    import jax
    record = dict(estimate=report.per_device_bytes, compiled=report.compiled, devices=jax.device_count(),
                  params=sum(report.param_counts.values()))
  with open(out, 'w') as fh:
    json.dump(record, fh)


def _gib(x):
  return f'{x / 2**30:.2f}'


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--only', default='', help='comma-separated file names (without .gin) under configs/paper')
  p.add_argument('--timeout', type=int, default=1800, help='seconds per file')
  p.add_argument('--one', default=None, help=argparse.SUPPRESS)
  p.add_argument('--one_out', default=None, help=argparse.SUPPRESS)
  p.add_argument('--out', default=os.path.join(common.REPO_ROOT, 'benchmarks', 'results', 'compiled_memory.json'))
  args = p.parse_args(argv)
  if args.one:
    return _one(args.one, args.one_out)

  names = [n for n in args.only.split(',') if n] or sorted(
      os.path.basename(f)[:-4] for f in glob.glob(os.path.join(PAPER_DIR, '*.gin')))
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip())
  results = {}
  for name in names:
    with tempfile.TemporaryDirectory() as d:
      out = os.path.join(d, 'r.json')
      t0 = time.time()
      try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--one', f'paper/{name}.gin',
                               '--one_out', out], env=env, capture_output=True, text=True, timeout=args.timeout)
      except subprocess.TimeoutExpired:
        results[name] = {'error': f'no result within {args.timeout} s'}
        print(f'{name}: timed out', flush=True)
        continue
      if proc.returncode == 0 and os.path.exists(out):
        with open(out) as fh:
          results[name] = json.load(fh)
      else:
        lines = [l.strip() for l in (proc.stdout + proc.stderr).splitlines()
                 if l.strip() and 'In call to configurable' not in l]
        errors = [l for l in lines if 'Error: ' in l or l.startswith('error: ')]
        results[name] = {'error': (errors or lines or [f'exit {proc.returncode}'])[-1]}
      results[name]['wall_seconds'] = time.time() - t0
    r = results[name]
    common.write_record(dict(benchmark='compiled_memory', results=results, machine=common.machine_info()),
                        args.out)   # after every file: a long run keeps what it has
    print(f'{name}: ' + (f"estimate {_gib(r['estimate']['total'])} GiB, compiled peak "
                         f"{_gib(r['compiled']['peak'])} GiB" if 'compiled' in r else r['error']), flush=True)

  print('\n| row file | devices | estimate GiB (params / opt / grads / act / total) | without remat | compiled GiB '
        '(args / temps / peak) | peak ÷ estimate (÷ without remat) | compile s |')
  print('|---|---|---|---|---|---|---|')
  for name, r in results.items():
    if 'compiled' not in r:
      print(f'| {name} | | {r["error"][:120]} | | | | |')
      continue
    e, c = r['estimate'], r['compiled']
    est = ' / '.join(_gib(e[k]) for k in ('params', 'optimizer_state', 'gradients', 'activations (estimate)', 'total'))
    comp = ' / '.join(_gib(c[k]) for k in ('arguments', 'temporaries', 'peak'))
    plain = c.get('estimate_without_remat')
    ratio = f'{c["peak"] / e["total"]:.2f}' + (f' ({c["peak"] / plain:.2f})' if plain else '')
    print(f'| {name} | {r["devices"]} | {est} | {_gib(plain) if plain else "(no remat)"} | {comp} | {ratio} | '
          f'{c["compile_seconds"]:.0f} |')
  common.write_record(dict(benchmark='compiled_memory', results=results, machine=common.machine_info()), args.out)


if __name__ == '__main__':
  main()
