"""Greedy decoding throughput (generated tokens/s): promptjax with its key/value cache, promptjax without
(every step re-runs the teacher-forced decoder on the whole prefix), and HF PyTorch `generate`, side by
side in one process on the same model and inputs.

  model      T5 v1.1 of `get_config(--size)` (default 'small': vocab 32128, d 512, 6 heads x 64, MLP 1024,
             8 + 8 layers), fp32, random weights from `PromptableT5.init_params(PRNGKey(0))`, no prompt, or
             with `--prompt deep` a 20-token deep prompt (its decoder prefixes sit in the cache; HF has no
             deep prompt, so then HF is not run). Exported with `promptjax.checkpoints.hf.export_hf` and
             loaded by `transformers.T5ForConditionalGeneration.from_pretrained` (fp32, eval mode).
  inputs     `--batch` rows of `--input_len` random token ids (no padding).
  decoding   greedy, `--lengths` target lengths (default 64 and 128): promptjax's
             `generation.greedy_tokens(use_cache=True / False)` jitted once per length; HF's
             `generate(do_sample=False, num_beams=1, max_new_tokens=T, use_cache=True)` under
             `torch.inference_mode()`, one run per `--torch_threads` entry. A random model almost never
             emits EOS, so every run generates T tokens per row; the tokens each run generated are counted
             (up to and including EOS) and the runs' outputs compared.

Each decoder first runs once untimed (promptjax compiles there). Then the decoders take turns over
`--rounds` timed rounds, the order reversed every other round, and the median round gives tokens/s. The
ratios in the summary are the ones to read (this machine's speed drifts): cached / uncached and promptjax
cached / HF at each length.

Usage:
  python benchmarks/decoding.py                                  # small, batch 8, input 64, T = 64, 128
  python benchmarks/decoding.py --prompt deep --lengths 128
  python benchmarks/decoding.py --size tiny --batch 2 --input_len 8 --lengths 8 --rounds 1   # smoke test
Results are also written to benchmarks/results/decoding.json (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Callable, Dict, List

import numpy as np

import common  # noqa: E402  (benchmarks/common.py: the repository on sys.path, machine facts)


def _generated(tokens: np.ndarray) -> int:
  """Tokens generated per row up to and including the first EOS (1), summed over rows."""
  total = 0
  for row in tokens:
    eos = np.nonzero(row == 1)[0]
    total += int(eos[0]) + 1 if eos.size else len(row)
  return total


def main(argv=None):
  ncpu = os.cpu_count() or 1
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--size', default='small')
  p.add_argument('--prompt', default='none', choices=['none', 'deep'])
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--input_len', type=int, default=64)
  p.add_argument('--lengths', default='64,128')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--torch_threads', default=f'{ncpu},1' if ncpu > 1 else '1',
                 help='comma-separated torch.set_num_threads values, one HF run each')
  p.add_argument('--no_uncached', action='store_true', help='skip the uncached promptjax decoder')
  p.add_argument('--out', default=os.path.join(common.REPO_ROOT, 'benchmarks', 'results', 'decoding.json'))
  args = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  from promptjax.evaluation import generation
  from promptjax.models import PromptConfig, PromptableT5, get_config

  lengths = [int(x) for x in args.lengths.split(',') if x.strip()]
  threads = [int(t) for t in args.torch_threads.split(',') if t.strip()]
  config = get_config(args.size)
  model = PromptableT5(config, PromptConfig(kind=args.prompt, length=20))
  params = model.init_params(jax.random.PRNGKey(0))
  inputs = np.random.RandomState(0).randint(2, config.vocab_size, (args.batch, args.input_len)).astype(np.int32)

  decoders: Dict[str, Callable[[int], np.ndarray]] = {}
  compiled = {}

  def jax_decoder(use_cache):
    def run(length):
      key = (use_cache, length)
      if key not in compiled:
        compiled[key] = jax.jit(lambda p, x: generation.greedy_tokens(model, p, x, length, use_cache=use_cache))
      return np.asarray(jax.block_until_ready(compiled[key](params, jnp.asarray(inputs))))
    return run

  decoders['promptjax_cached'] = jax_decoder(True)
  if not args.no_uncached:
    decoders['promptjax_uncached'] = jax_decoder(False)

  torch = None
  if args.prompt == 'none':
    import torch
    import transformers
    from promptjax.checkpoints.hf import export_hf
    with tempfile.TemporaryDirectory() as d:
      export_hf(jax.device_get(params), config, d)
      hf_model = transformers.T5ForConditionalGeneration.from_pretrained(d).float().eval()
    ids = torch.as_tensor(inputs, dtype=torch.long)

    def hf_decoder(n_threads):
      def run(length):
        torch.set_num_threads(n_threads)
        with torch.inference_mode():
          out = hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  num_beams=1, max_new_tokens=length, min_new_tokens=0, use_cache=True,
                                  decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
        tokens = out[:, 1:].numpy().astype(np.int32)          # drop the decoder start token
        return np.pad(tokens, ((0, 0), (0, length - tokens.shape[1])))
      return run

    for n in threads:
      decoders[f'pytorch_{n}t'] = hf_decoder(n)

  results: Dict[str, Dict] = {}
  for length in lengths:
    outputs, warm, times = {}, {}, {name: [] for name in decoders}
    for name, fn in decoders.items():
      t0 = time.perf_counter()
      outputs[name] = fn(length)
      warm[name] = time.perf_counter() - t0
    names = list(decoders)
    for r in range(args.rounds):
      for name in (names if r % 2 == 0 else names[::-1]):
        t0 = time.perf_counter()
        decoders[name](length)
        times[name].append(time.perf_counter() - t0)
    ref = outputs['promptjax_cached']
    row = {}
    for name in names:
      med = statistics.median(times[name])
      tokens = _generated(outputs[name])
      row[name] = dict(seconds=med, first_call_seconds=warm[name], generated_tokens=tokens,
                       tokens_per_second=tokens / med,
                       same_tokens_as_cached=bool(np.array_equal(outputs[name], ref)),
                       rows_equal_to_cached=int(np.sum(np.all(outputs[name] == ref, axis=1))))
    results[str(length)] = row
    print(f'\nT = {length} (batch {args.batch}, input {args.input_len}, {args.size}, prompt {args.prompt})')
    print(f'  {"decoder":22s} {"s/run":>8s} {"tokens/s":>10s} {"first call s":>12s} {"= cached rows":>14s}')
    for name in names:
      x = row[name]
      print(f'  {name:22s} {x["seconds"]:8.3f} {x["tokens_per_second"]:10.1f} {x["first_call_seconds"]:12.2f} '
            f'{x["rows_equal_to_cached"]:>7d}/{args.batch}')

  summary = {}
  for length, row in results.items():
    c = row['promptjax_cached']['tokens_per_second']
    if 'promptjax_uncached' in row:
      summary[f'cached_over_uncached_T{length}'] = c / row['promptjax_uncached']['tokens_per_second']
    for name in row:
      if name.startswith('pytorch'):
        summary[f'cached_over_{name}_T{length}'] = c / row[name]['tokens_per_second']
  print('\nsummary (throughput ratios):')
  for k, v in summary.items():
    print(f'  {k:40s} {v:7.2f}')
  out = dict(benchmark='decoding', args=vars(args), results=results, summary=summary,
             machine=common.machine_info(**({'torch': torch.__version__} if torch else {})))
  common.write_record(out, args.out)
  return out


if __name__ == '__main__':
  main()
