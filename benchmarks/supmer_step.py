"""SUPMER meta-step time ÷ prompt-only FoMAML step time, same model, same batch sizes, one run.

Both steps are one jitted `TrainState -> TrainState` update of a frozen T5 v1.1 with a shallow prompt on a
meta-batch of M tasks × (support S + query Q examples), inputs `input_len` and targets `target_len` tokens:

  supmer  `promptjax.supmer.algorithm.make_train_step` with the default `SupmerConfig` (ψ 'affine', first order
          in θ, exact in φ, mixup task augmentation, curriculum with Alg. 1's query gradient at θ) and the
          Table 6 optimizer (Adam over prompt and φ); `--variants` adds the ablations / options.
  fomaml  `promptjax.meta.make_meta_train_step` with MetaConfig('fomaml', inner_steps=1, SGD α₁), trainable
          'prompt' (the transformer frozen), Adam on the prompt; support [M, 1, S, ...], query [M, Q, ...].

Work per step (forward+backward passes over the encoder-decoder): FoMAML = support f+b at θ, query f+b at
θ'. SUPMER adds the mix-partner query set (the query forward/backward runs over 2·Q encoder rows: τ_i's
and τ_j's query sets, mixed before the decoder), and — for the curriculum's similarity with
``similarity_query='initial'`` (Alg. 1 line 13) — one more query f+b at θ; ``similarity_query='adapted'``
drops that one. Counting encoder-decoder f+b passes over S (= Q) rows as units: FoMAML 2; SUPMER ≈ 1
(support) + 1.5 (query at θ': two encoder passes, one decoder) + 1.5 (query at θ for the similarity) = 4,
an expected ratio ≈ 2 (≈ 1.25 with 'adapted'); ψ itself ([L, d] matmuls) is negligible.

Reported: median step time over `--steps` timed steps after one compile step, and the ratio.

Usage:
  python benchmarks/supmer_step.py                                  # mini model, M=4, S=Q=8
  python benchmarks/supmer_step.py --size base --tasks 4 --support 32 --query 32 --input_len 128
Results are written to benchmarks/results/supmer_step.json (git-ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO_ROOT, machine_info, write_record  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

VARIANTS = {
    'supmer': {},
    'supmer_adapted_similarity': {'similarity_query': 'adapted'},
    'supmer_no_augmentation': {'task_augmentation': False},
    'supmer_official_mlp': {'transform': 'official_mlp'},
    'supmer_second_order': {'second_order': True},
}


def batches(rng, args, vocab):
  def one(lead):
    enc = rng.randint(2, vocab, size=lead + (args.input_len,)).astype(np.int32)
    tgt = rng.randint(2, vocab, size=lead + (args.target_len,)).astype(np.int32)
    tgt[..., -1] = 1
    return {'encoder_input_tokens': enc, 'decoder_target_tokens': tgt}
  m = args.tasks
  sets = {'support': one((m, args.support)), 'query': one((m, args.query)), 'mix_query': one((m, args.query))}
  supmer_batch = {f'{s}/{k}': v for s, d in sets.items() for k, v in d.items()}
  fomaml_batch = {**{f'support/{k}': v[:, None] for k, v in sets['support'].items()},
                  **{f'query/{k}': v for k, v in sets['query'].items()}}
  return supmer_batch, fomaml_batch


def time_step(step, state, batch, steps):
  step = jax.jit(step)  # no donation: the runs share the (frozen) transformer arrays
  batch = jax.tree.map(jnp.asarray, batch)
  t0 = time.perf_counter()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready((state, m))
    times.append(time.perf_counter() - t0)
  return compile_s, times, float(m['loss'])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--size', default='mini')
  p.add_argument('--prompt_length', type=int, default=100)
  p.add_argument('--tasks', type=int, default=4)
  p.add_argument('--support', type=int, default=8)
  p.add_argument('--query', type=int, default=8)
  p.add_argument('--input_len', type=int, default=64)
  p.add_argument('--target_len', type=int, default=4)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--variants', default='supmer,supmer_adapted_similarity')
  p.add_argument('--out', default=os.path.join(REPO_ROOT, 'benchmarks', 'results', 'supmer_step.json'))
  args = p.parse_args(argv)

  from promptjax.meta import MetaConfig, make_meta_train_step
  from promptjax.supmer import algorithm as supmer
  from promptjax.models import PromptableT5, PromptConfig, get_config
  from promptjax.training import optimizers, train_step as ts
  model = PromptableT5(get_config(args.size), PromptConfig(kind='shallow', length=args.prompt_length))
  params = model.init_params(jax.random.PRNGKey(0))
  supmer_batch, fomaml_batch = batches(np.random.RandomState(0), args, model.config.vocab_size)
  results = {}

  # Prompt-only FoMAML: one SGD inner step (α₁ = 0.1), Adam on the prompt, transformer frozen.
  meta = MetaConfig('fomaml', inner_steps=1, inner_optimizer=optax.sgd(0.1), inner_learning_rate=0.1,
                    inner_global_norm_clip=None)
  opt = optimizers.masked_optimizer(optax.adam(0.1), params, 'prompt')
  step = make_meta_train_step(model, opt, meta, trainable='prompt', dropout_seed=None)
  results['fomaml'] = time_step(step, ts.TrainState.create(params, opt), fomaml_batch, args.steps)

  for name in args.variants.split(','):
    cfg = supmer.SupmerConfig(**VARIANTS[name])
    sparams = {**params, 'supmer': supmer.init_supmer_params(cfg, model)}
    opt = supmer.table6_optimizer(cfg)
    results[name] = time_step(supmer.make_train_step(model, opt, cfg), ts.TrainState.create(sparams, opt),
                              supmer_batch, args.steps)

  base = statistics.median(results['fomaml'][1])
  print(f'model {args.size}, prompt {args.prompt_length}, M={args.tasks}, S={args.support}, Q={args.query}, '
        f'inputs {args.input_len}, targets {args.target_len}; {jax.devices()}')
  print(f'{"step":<28s} {"compile s":>10s} {"median s":>10s} {"min s":>10s} {"ratio":>7s}')
  record = {'args': vars(args), 'machine': machine_info(), 'steps': {}}
  for name, (c, times, loss) in results.items():
    med = statistics.median(times)
    print(f'{name:<28s} {c:10.2f} {med:10.4f} {min(times):10.4f} {med / base:7.2f}')
    record['steps'][name] = {'compile_s': c, 'median_s': med, 'min_s': min(times), 'times_s': times,
                             'ratio_to_fomaml': med / base, 'loss': loss}
  write_record(record, args.out)


if __name__ == '__main__':
  main()
