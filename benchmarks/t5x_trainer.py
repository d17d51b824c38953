"""Start-up and step time of the same MTL run under promptjax's trainer and T5X's own `Trainer`, side by side.

Both train `PromptableT5(get_config(--size), shallow prompt of --prompt_len)` (MTL-T✓P✓, Wu et al. 2022
§3) from the same initial parameters (`init_params(PRNGKey(0))`) with the same masked optax Adafactor (the
papers' settings, lr 1e-3) on the same random batches (`--batch` rows of `--input_len` / `--target_len`
tokens), on this machine's devices (one data-parallel mesh for promptjax, T5X's `PjitPartitioner` with
one model partition):

  promptjax  `trainer.setup(...)` (the `MultiTask` method, what `promptjax train` runs), `Setup.init_state`,
             the jitted step with the state donated;
  t5x        `promptjax.interop.t5x.T5XModel` with `optimizer(adafactor, 'all')`, `t5x.utils.
             TrainStateInitializer(...).from_scratch`, `t5x.trainer.Trainer.train(iterator, num_steps=1)`
             per step (T5X's metrics, summaries off).

Start-up: from nothing built to the first step's loss on the host (state creation, compilation, one
step). Steps: after that, `--rounds` rounds in which each trainer runs `--steps` steps (order reversed
every other round); the median step time gives examples/s. The per-step losses of the two are compared
(`tests/interop/test_t5x_trainer.py` asserts they agree to 1e-5 on a tiny model). Neither writes
checkpoints here.

Usage:
  python benchmarks/t5x_trainer.py                                   # small, batch 8, 256/64, 3 rounds x 3 steps
  python benchmarks/t5x_trainer.py --size tiny --batch 8 --input_len 32 --target_len 8 --rounds 1 --steps 2  # smoke
Results: benchmarks/results/t5x_trainer.json (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import common  # noqa: E402  (benchmarks/common.py: the repository on sys.path, machine facts)
import train_step  # noqa: E402  (random full-length batches shared with the step benchmark)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--size', default='small')
  p.add_argument('--prompt_len', type=int, default=20)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--input_len', type=int, default=256)
  p.add_argument('--target_len', type=int, default=64)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--out', default=os.path.join(common.REPO_ROOT, 'benchmarks', 'results', 't5x_trainer.json'))
  args = p.parse_args(argv)

  import jax
  from t5x import partitioning as t5x_partitioning, trainer as t5x_trainer, utils as t5x_utils
  from promptjax.interop import t5x as pj_t5x
  from promptjax.models import PromptConfig, PromptableT5, get_config
  from promptjax.training import optimizers, partitioning, trainer
  from promptjax.training.method import MultiTask

  model = PromptableT5(get_config(args.size), PromptConfig(kind='shallow', length=args.prompt_len))
  lengths = {'inputs': args.input_len, 'targets': args.target_len}
  shapes = train_step.shapes_from_size(args.size, args.batch, args.input_len, args.target_len)
  batches = [train_step.make_batch(shapes, seed) for seed in (0, 1)]
  adafactor = lambda: optimizers.adafactor(1e-3)

  # promptjax: start-up = setup + init + compile + first step.
  t0 = time.perf_counter()
  run = trainer.setup(model, MultiTask(trainer.DatasetConfig('none', lengths, batch_size=args.batch)),
                      total_steps=1000, optimizer=adafactor(), trainable='all')
  state = run.init_state(seed=0)
  pj_losses = []

  def pj_step(b):
    nonlocal state
    state, metrics = run.step_fn(state, partitioning.make_global_batch(b, run.mesh))
    pj_losses.append(float(metrics['loss']))
  pj_step(batches[0])
  pj_startup = time.perf_counter() - t0

  # T5X: start-up = model + initializer + from_scratch + Trainer + first step.
  t0 = time.perf_counter()
  opt_def = pj_t5x.optimizer(adafactor(), 'all')
  net = pj_t5x.T5XModel(model, optimizer_def=opt_def)
  partitioner = t5x_partitioning.PjitPartitioner(num_partitions=1)
  init = t5x_utils.TrainStateInitializer(opt_def, net.get_initial_variables,
                                         {k: v.shape for k, v in batches[0].items()}, partitioner,
                                         {k: v.dtype for k, v in batches[0].items()})
  t5x_state = init.from_scratch(jax.random.PRNGKey(0))
  t = t5x_trainer.Trainer(net, t5x_state, partitioner, eval_names=[], summary_dir=None,
                          train_state_axes=init.train_state_axes, rng=jax.random.PRNGKey(0),
                          learning_rate_fn=pj_t5x.learning_rate_fn(opt_def), num_microbatches=None)
  t5x_losses = []

  def t5x_step(b):
    t5x_losses.append(float(t.train(iter([b]), num_steps=1).result()['loss'].value))
  t5x_step(batches[0])
  t5x_startup = time.perf_counter() - t0

  runners = {'promptjax': pj_step, 't5x': t5x_step}
  times = {k: [] for k in runners}
  step = 1
  for r in range(args.rounds):
    for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
      for s in range(args.steps):
        b = batches[(step + s) % 2]
        t0 = time.perf_counter()
        runners[name](b)
        times[name].append(time.perf_counter() - t0)
    step += args.steps
  t.close()
  med = {k: statistics.median(v) for k, v in times.items()}
  n = min(len(pj_losses), len(t5x_losses))
  results = {
      'startup_seconds': {'promptjax': pj_startup, 't5x': t5x_startup},
      'median_step_seconds': med,
      'examples_per_second': {k: args.batch / v for k, v in med.items()},
      't5x_over_promptjax': {'startup': t5x_startup / pj_startup, 'step': med['t5x'] / med['promptjax']},
      'first_step_loss': {'promptjax': pj_losses[0], 't5x': t5x_losses[0]},
      'max_abs_loss_difference_first_step': abs(pj_losses[0] - t5x_losses[0]),
  }
  print(f'{args.size}, batch {args.batch}, {args.input_len}/{args.target_len} tokens, prompt {args.prompt_len}, '
        f'{jax.device_count()} device(s)')
  print(f'  {"":10s} {"start-up s":>11s} {"step s":>8s} {"examples/s":>11s}')
  for k in runners:
    print(f'  {k:10s} {results["startup_seconds"][k]:11.2f} {med[k]:8.3f} {args.batch / med[k]:11.1f}')
  print(f'  T5X / promptjax: start-up {results["t5x_over_promptjax"]["startup"]:.2f}x, step '
        f'{results["t5x_over_promptjax"]["step"]:.2f}x; first-step loss {pj_losses[0]:.5f} vs {t5x_losses[0]:.5f} '
        f'({n} steps each)')
  common.write_record(dict(benchmark='t5x_trainer', args=vars(args), results=results,
                           machine=common.machine_info()), args.out)
  return results


if __name__ == '__main__':
  main()
