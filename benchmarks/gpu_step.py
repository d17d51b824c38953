"""Accelerator throughput: the MTL train step of T5-Large (bf16 activations, fp32 parameters) and a FOMAML
meta-step, tokens/s and MFU against the card's bf16 peak, side by side with HF PyTorch's MTL step on the same
card; JSON out. Runs on CPU as a smoke test (MFU is then reported against `--peak_tflops` if given).

  promptjax MTL   exactly what `promptjax train` runs (`trainer.setup` with `MultiTask`, `Setup.init_state`,
                  the jitted step with the state donated) for `get_config(--size, dtype='bfloat16')`: fp32
                  parameters, bf16 activations (fp32 softmax, norms, loss), a shallow prompt of 20 trained
                  with everything (MTL-T✓P✓, Wu et al. 2022 §3), the papers' Adafactor, data-parallel over
                  every local device (`MESH_SHAPE` = (n, 1); `--model_axis` for model parallelism).
  promptjax meta  `MetaLearning(MetaConfig('fomaml', T))` (Wu et al. 2022 App. B/C: T prompt-only inner
                  Adafactor steps, then the query gradient of all parameters) with `--clones` clones of
                  `--clone_batch` rows, chunked by `--clone_chunk`.
  pytorch MTL     `transformers.T5ForConditionalGeneration` (T5 v1.1 shapes, untied) on the same device
                  (`cuda` when there is one), `torch.autocast(dtype=torch.bfloat16)`, transformers' Adafactor,
                  the same batch.

FLOPs are the matmul FLOPs of `train_step.model_flops` (forward + backward, 6·N·params for the dense parts,
attention and the LM head counted). A FOMAML meta-step counts each prompt-only inner step as 2/3 of a full
step (forward and the input-gradient half of the backward; no weight gradients) and the query step as one:
M × (T·2/3 + 1) full steps of `--clone_batch` rows. MFU = FLOPs / step time / peak, with the peak from
`--peak_tflops` or the card's dense bf16 figure (`PEAK_BF16_TFLOPS`, by `device_kind`).

From the MTL MFU it projects the paper's largest run (T5-XL MTL on d4_train, `--project_flops` = 1.7e20
FLOPs; Wu et al. 2022 spent 40 A100-days) in days of this card: FLOPs / (MFU × peak) / 86400.

Usage:
  python benchmarks/gpu_step.py                                  # on a GPU: Large, batch 32, 512/128
  python benchmarks/gpu_step.py --size tiny --batch 4 --input_len 32 --target_len 8 --clones 2 \
      --clone_batch 2 --inner_steps 1 --steps 1 --rounds 1       # CPU smoke test
Results: benchmarks/results/gpu_step.json (git-ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import numpy as np

import common  # noqa: E402  (benchmarks/common.py: the repository on sys.path, machine facts)
import train_step  # noqa: E402  (shapes, FLOPs and batches shared with the CPU step benchmark)

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {'H100 80GB HBM3': 989.0, 'H100 SXM': 989.0, 'H100 PCIe': 756.0, 'H200': 989.0,
                    'A100': 312.0, 'L4': 121.0, 'A10G': 70.0}


def peak_tflops(device_kind: str, override):
  if override:
    return float(override)
  for name, tflops in PEAK_BF16_TFLOPS.items():
    if name.lower() in device_kind.lower():
      return tflops
  return None


def _timed(step, steps, rounds_times):
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = step()
  rounds_times.append((time.perf_counter() - t0) / steps)
  return loss


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--size', default='t5_1_1_lm100k_large')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--input_len', type=int, default=512)
  p.add_argument('--target_len', type=int, default=128)
  p.add_argument('--clones', type=int, default=8)
  p.add_argument('--clone_batch', type=int, default=4)
  p.add_argument('--clone_chunk', type=int, default=None)
  p.add_argument('--inner_steps', type=int, default=7)
  p.add_argument('--model_axis', type=int, default=1)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--which', default='promptjax,meta,pytorch')
  p.add_argument('--peak_tflops', type=float, default=None)
  p.add_argument('--project_flops', type=float, default=1.7e20)
  p.add_argument('--out', default=os.path.join(common.REPO_ROOT, 'benchmarks', 'results', 'gpu_step.json'))
  args = p.parse_args(argv)
  which = [w for w in args.which.split(',') if w]

  import jax
  from promptjax.data.meta_sampler import MetaDataConfig
  from promptjax.meta import MetaConfig, MetaLearning
  from promptjax.models import PromptConfig, PromptableT5, get_config
  from promptjax.training import optimizers, partitioning, trainer
  from promptjax.training.method import MultiTask

  device = jax.devices()[0]
  kind = getattr(device, 'device_kind', device.platform)
  peak = peak_tflops(kind, args.peak_tflops)
  n_dev = jax.device_count()
  mesh = (n_dev // args.model_axis, args.model_axis)
  model = PromptableT5(get_config(args.size, dtype='bfloat16'), PromptConfig(kind='shallow', length=20))
  shapes = train_step.shapes_from_size(args.size, args.batch, args.input_len + 20, args.target_len)
  lengths = {'inputs': args.input_len, 'targets': args.target_len}
  runners, flops = {}, {}

  if 'promptjax' in which:
    run = trainer.setup(model, MultiTask(trainer.DatasetConfig('none', lengths, batch_size=args.batch)),
                        total_steps=1000, optimizer=optimizers.adafactor(1e-3), trainable='all', mesh_shape=mesh)
    state = {'s': run.init_state(seed=0)}
    batch = partitioning.make_global_batch(train_step.make_batch(dataclasses.replace(
        shapes, input_len=args.input_len)), run.mesh)

    def pj_step():
      state['s'], metrics = run.step_fn(state['s'], batch)
      return float(metrics['loss'])
    runners['promptjax_mtl'] = pj_step
    flops['promptjax_mtl'] = train_step.model_flops(shapes)['total']

  if 'meta' in which:
    meta = MetaConfig('fomaml', inner_steps=args.inner_steps, inner_optimizer=optimizers.adafactor(1e-3),
                      inner_learning_rate=1e-3, chunk_size=args.clone_chunk)
    data = MetaDataConfig('none', lengths, meta_batch_size=args.clones, inner_steps=args.inner_steps,
                          support_batch_size=args.clone_batch, query_batch_size=args.clone_batch, module=None)
    method = MetaLearning(meta, data)
    meta_run = trainer.setup(model, method, total_steps=1000, optimizer=optimizers.adafactor(1e-3),
                             trainable='all', mesh_shape=mesh)
    meta_state = {'s': meta_run.init_state(seed=0)}
    rng = np.random.RandomState(1)
    meta_batch = {}
    for k, v in method.abstract_batch(model).items():
      hi = 2 if k.endswith('loss_weights') else model.config.vocab_size
      meta_batch[k] = rng.randint(1, hi, size=v.shape).astype(np.int32)
    meta_batch = partitioning.make_global_batch(meta_batch, meta_run.mesh)

    def meta_step():
      meta_state['s'], metrics = meta_run.step_fn(meta_state['s'], meta_batch)
      return float(metrics['loss'])
    runners['promptjax_fomaml'] = meta_step
    clone = train_step.model_flops(dataclasses.replace(shapes, batch=args.clone_batch))['total']
    flops['promptjax_fomaml'] = args.clones * (args.inner_steps * 2 / 3 + 1) * clone

  if 'pytorch' in which:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration
    from transformers.optimization import Adafactor
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch.manual_seed(0)
    hf = T5ForConditionalGeneration(train_step._hf_config(shapes, T5Config)).float().to(dev).train()  # pylint: disable=protected-access
    opt = Adafactor(hf.parameters(), lr=1e-3, scale_parameter=False, relative_step=False, warmup_init=False)
    b = train_step.make_batch(shapes)   # the prompt's 20 positions as ordinary input tokens
    ids = torch.from_numpy(b['encoder_input_tokens']).long().to(dev)
    labels = torch.from_numpy(b['decoder_target_tokens']).long().to(dev)

    def torch_step():
      with torch.autocast(device_type=dev, dtype=torch.bfloat16):
        loss = hf(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
      return float(loss.detach())
    runners['pytorch_mtl'] = torch_step
    flops['pytorch_mtl'] = train_step.model_flops(shapes)['total']

  first = {}
  for name, step in runners.items():   # compile / warm up
    t0 = time.perf_counter()
    step()
    first[name] = time.perf_counter() - t0
  times = {k: [] for k in runners}
  for r in range(args.rounds):
    for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
      _timed(runners[name], args.steps, times[name])
  results = {}
  for name in runners:
    sec = statistics.median(times[name])
    tokens = (args.clones * (args.inner_steps + 1) * args.clone_batch if 'fomaml' in name else args.batch) * (
        args.input_len + 20 + args.target_len)
    mfu = flops[name] / sec / (peak * 1e12) if peak else None
    results[name] = dict(step_seconds=sec, first_call_seconds=first[name], tokens_per_second=tokens / sec,
                         model_tflops_per_second=flops[name] / sec / 1e12, mfu=mfu)
  projection = None
  if 'promptjax_mtl' in results and results['promptjax_mtl']['mfu']:
    achieved = results['promptjax_mtl']['mfu'] * peak * 1e12
    projection = dict(flops=args.project_flops, days_of_this_card=args.project_flops / achieved / 86400,
                      paper_a100_days=40)
  print(f'{kind} x {n_dev} (mesh {mesh}), peak {peak} TFLOP/s bf16; {args.size}, batch {args.batch}, '
        f'{args.input_len}+20/{args.target_len} tokens; FOMAML {args.clones} clones x {args.clone_batch} rows, '
        f'T = {args.inner_steps}')
  for name, r in results.items():
    mfu = f'{100 * r["mfu"]:.1f}%' if r['mfu'] is not None else 'n/a'
    print(f'  {name:18s} {r["step_seconds"]:8.3f} s/step {r["tokens_per_second"]:10.0f} tokens/s '
          f'{r["model_tflops_per_second"]:8.2f} TFLOP/s  MFU {mfu}')
  if 'promptjax_mtl' in results and 'pytorch_mtl' in results:
    print(f'  promptjax / pytorch MTL throughput: '
          f'{results["promptjax_mtl"]["tokens_per_second"] / results["pytorch_mtl"]["tokens_per_second"]:.2f}x')
  if projection:
    print(f'  T5-XL MTL on d4_train ({args.project_flops:.2g} FLOPs) at this MFU: '
          f'{projection["days_of_this_card"]:.1f} days of this card (the paper: 40 A100-days)')
  common.write_record(dict(benchmark='gpu_step', args=vars(args), device_kind=kind, devices=n_dev,
                           peak_tflops=peak, results=results, projection=projection,
                           machine=common.machine_info()), args.out)
  return results


if __name__ == '__main__':
  main()
