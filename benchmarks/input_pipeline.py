"""Can the host feed the accelerators? Throughput and start-up of promptjax's input pipelines on a corpus
of the paper's shape (Wu et al. 2022: the 313 training templates of `d4_train`, 769 / 193 tokens).

A P3-layout corpus is generated in a temporary directory (`promptjax.tasks.p3.write_p3_split`: the release's
TFRecord shards, ``info``/``stats`` JSON), one subset per `d4_train` template name, so the real `d4_train`
mixture (capped rates) reads it; inputs are random token ids with lengths drawn around P3's (log-normal,
median ~110, clipped to 8-900), targets 1-30 tokens + EOS. Nothing is downloaded. Measured, in this process:

* **MTL reader** (`promptjax.data.feeds.dataset_batches`, what `promptjax train` reads): seconds to the
  first batch, then examples/s and CPU seconds per example over the next batches, as the only host
  (``--hosts 1``) and as host 0 of 16 (``seqio.ShardInfo``: with fewer files than hosts, every host reads
  every file and keeps 1/16).
* **Meta sampler** (`promptjax.data.meta_sampler.meta_batches`, FOMAML / Reptile's input: M clones, T support
  batches of b plus a query batch, one task per batch): the same figures per example of a meta-batch.
* **One task alone**: the same reader on one template, the per-example CPU cost the meta sampler is compared
  with (it runs one stream per task and split).
* **Demand**: the examples/s one host must deliver for a T5-Large MTL step at `--mfu` on `--chips` TPU v4
  chips (275 TFLOP/s bf16 each) shared by `--feeding_hosts` hosts, from 6 × parameters × tokens FLOPs per
  example; reported as measured ÷ demand.

Usage:
  python benchmarks/input_pipeline.py                      # 313 subsets x 1000 examples (~1 GB, a few minutes)
  python benchmarks/input_pipeline.py --examples 3000      # the size the figures in the README came from
  python benchmarks/input_pipeline.py --subsets 8 --examples 200 --batches 2 --meta_batches 1   # smoke test
Results: benchmarks/results/input_pipeline.json (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, write_record  # noqa: E402

LENGTHS = {'inputs': 769, 'targets': 193}   # Wu et al. 2022, App. A: 768 / 192 tokens + EOS
T5_LARGE_PARAMS = 783.15e6                   # T5.1.1-Large (LM-adapted, Wu et al.'s backbone): N of 6·N·tokens
V4_PEAK = 275e12                             # TPU v4 dense bf16 FLOP/s per chip


def _cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def write_corpus(root: str, subsets, examples: int, shards: int, seed: int = 0) -> float:
  """The P3-layout corpus: `examples` train records per subset. Returns the seconds it took."""
  from promptjax.tasks import p3
  t0 = time.time()
  rng = np.random.default_rng(seed)
  for name in subsets:
    def records():
      for _ in range(examples):
        n = int(np.clip(rng.lognormal(np.log(110), 0.7), 8, 900))
        m = int(rng.integers(1, 31))
        yield {'inputs': rng.integers(3, 32000, n).tolist(), 'inputs_pretokenized': 'x' * n,
               'targets': rng.integers(3, 32000, m).tolist() + [1], 'targets_pretokenized': 'y' * m}
    p3.write_p3_split(os.path.join(root, name), 'train', records(), num_shards=shards)
  return time.time() - t0


def _measure(batches, count_examples, num_batches: int):
  """(seconds to the first batch, examples/s and CPU seconds per example over the next `num_batches`)."""
  c0, t0 = _cpu_seconds(), time.time()
  first = next(batches)
  t_first = time.time() - t0
  c1, t1, n = _cpu_seconds(), time.time(), 0
  for _ in range(num_batches):
    n += count_examples(next(batches))
  wall, cpu = time.time() - t1, _cpu_seconds() - c1
  del first, c0
  return {'first_batch_s': t_first, 'examples_per_s': n / wall, 'cpu_s_per_example': cpu / n,
          'examples': n, 'seconds': wall}


def mtl(batch_size: int, hosts: int, num_batches: int, name: str = 'd4_train', reader: str = 'seqio'):
  from promptjax.data import feeds
  cfg = feeds.DatasetConfig(name, LENGTHS, batch_size=batch_size, shuffle=True, seed=0, reader=reader)
  it = feeds.dataset_batches(cfg, process_index=0, process_count=hosts)
  return _measure(it, lambda b: int(b['encoder_input_tokens'].shape[0]), num_batches)


def meta(meta_batch_size: int, inner_steps: int, batch: int, hosts: int, num_batches: int,
         name: str = 'd4_train', reader: str = 'seqio'):
  from promptjax.data import meta_sampler
  cfg = meta_sampler.MetaDataConfig(name, LENGTHS, meta_batch_size=meta_batch_size, inner_steps=inner_steps,
                                    support_batch_size=batch, query_batch_size=batch, reader=reader)
  it = meta_sampler.meta_batches(cfg, process_index=0, process_count=hosts)

  def count(b):
    return int(np.prod(b['support/encoder_input_tokens'].shape[:-1]) + np.prod(b['query/encoder_input_tokens'].shape[:-1]))
  return _measure(it, count, num_batches)


def demand(mfu: float, chips: int, hosts: int) -> float:
  """Examples/s one of `hosts` hosts must deliver to keep a T5-Large MTL step at `mfu` on `chips` v4 chips."""
  flops_per_example = 6 * T5_LARGE_PARAMS * (LENGTHS['inputs'] + LENGTHS['targets'])
  return mfu * chips * V4_PEAK / flops_per_example / hosts


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--subsets', type=int, default=313, help='how many d4_train templates (313: all)')
  parser.add_argument('--examples', type=int, default=1000, help='train records per subset')
  parser.add_argument('--shards', type=int, default=2, help='TFRecord shards per split (fewer than 16 hosts)')
  parser.add_argument('--batch_size', type=int, default=512, help='global MTL batch (shared by --hosts)')
  parser.add_argument('--batches', type=int, default=20, help='MTL batches timed after the first')
  parser.add_argument('--host_batches', type=int, default=200,
                      help="batches timed as host 0 of 16 with the flat reader (seqio's: --batches; it reads ~12/s)")
  parser.add_argument('--meta_batch_size', type=int, default=128)
  parser.add_argument('--inner_steps', type=int, default=7)
  parser.add_argument('--inner_batch_size', type=int, default=16)
  parser.add_argument('--meta_batches', type=int, default=3, help='meta-batches timed after the first')
  parser.add_argument('--mfu', type=float, default=0.45)
  parser.add_argument('--chips', type=int, default=32)
  parser.add_argument('--feeding_hosts', type=int, default=8)
  parser.add_argument('--readers', default='seqio,flat', help="DATA_READERs to measure ('seqio', 'flat')")
  parser.add_argument('--resharded', type=int, default=16,
                      help='also measure the flat reader as host 0 of 16 on a copy with this many shards per '
                           'subset (0: skip)')
  parser.add_argument('--corpus', default=None, help='reuse (or keep) the generated corpus here')
  parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results',
                                                    'input_pipeline.json'))
  args = parser.parse_args(argv)

  from promptjax import tasks
  from promptjax.tasks import facts
  import seqio
  subsets = facts.p3_mixtures()['d4_train'][:args.subsets]
  root = args.corpus or tempfile.mkdtemp(prefix='p3_corpus_')
  record = machine_info(subsets=len(subsets), examples_per_subset=args.examples, shards=args.shards,
                        lengths=LENGTHS)
  try:
    if not os.path.isdir(os.path.join(root, subsets[-1])):
      record['corpus_write_s'] = write_corpus(root, subsets, args.examples, args.shards)
    tasks.set_data_dir('p3', root)
    # Only token ids are read: seqio's bundled test SentencePiece model stands in for T5's vocabulary file.
    tasks.set_vocabulary_path('t5', os.path.join(os.path.dirname(seqio.__file__), 'test_data', 'sentencepiece',
                                                 'sentencepiece.model'))
    if len(subsets) < 313:   # a smaller corpus: the mixture of the generated subsets, with the same capped rates
      from promptjax.tasks import p3
      p3.register_p3_mixture('d4_train_bench', subsets, p3.capped_rate)
    name = 'd4_train' if len(subsets) == 313 else 'd4_train_bench'
    record['demand_examples_per_s_per_host'] = demand(args.mfu, args.chips, args.feeding_hosts)
    results = {}
    for reader in args.readers.split(','):
      for hosts in (1, 16):
        key = f'{reader}/mtl_{hosts}_hosts'
        batches = args.host_batches if hosts > 1 and reader == 'flat' else args.batches
        results[key] = mtl(args.batch_size, hosts, batches, name, reader)
        print(key, results[key], flush=True)
      # As many examples as the meta sampler's timed batches, so the CPU per example compares like with like.
      meta_examples = args.meta_batches * args.meta_batch_size * (args.inner_steps + 1) * args.inner_batch_size
      results[f'{reader}/one_task'] = mtl(args.batch_size // 16, 1, max(args.batches, meta_examples // (args.batch_size // 16)),
                                          subsets[0], reader)
      print(f'{reader}/one_task', results[f'{reader}/one_task'], flush=True)
      for hosts in (1, 16):
        key = f'{reader}/meta_{hosts}_hosts'
        results[key] = meta(args.meta_batch_size, args.inner_steps, args.inner_batch_size, hosts,
                            args.meta_batches, name, reader)
        print(key, results[key], flush=True)
    if args.resharded and 'flat' in args.readers.split(','):
      # The same records, `--resharded` files per subset: every host reads only its own files.
      resharded = root + f'_{args.resharded}_shards'
      if not os.path.isdir(os.path.join(resharded, subsets[-1])):
        record['resharded_corpus_write_s'] = write_corpus(resharded, subsets, args.examples, args.resharded)
      tasks.set_data_dir('p3', resharded)
      key = f'flat/mtl_16_hosts_{args.resharded}_shards'
      results[key] = mtl(args.batch_size, 16, args.host_batches, name, 'flat')
      print(key, results[key], flush=True)
      tasks.set_data_dir('p3', root)
      if args.corpus is None:
        shutil.rmtree(resharded, ignore_errors=True)
    record['results'] = results
    d = record['demand_examples_per_s_per_host']
    record['ratios'] = {k: v['examples_per_s'] / d for k, v in results.items() if not k.endswith('one_task')}
    for reader in args.readers.split(','):
      record[f'{reader}/meta_cpu_per_example_vs_one_task'] = (results[f'{reader}/meta_1_hosts']['cpu_s_per_example']
                                                              / results[f'{reader}/one_task']['cpu_s_per_example'])
      if reader != 'seqio' and 'seqio' in args.readers.split(','):
        record[f'{reader}/vs_seqio'] = {
            k.split('/', 1)[1]: {'examples_per_s': results[k]['examples_per_s'] / results['seqio/' + k.split('/', 1)[1]]['examples_per_s'],
                                 'first_batch_s': results[k]['first_batch_s'] / results['seqio/' + k.split('/', 1)[1]]['first_batch_s']}
            for k in results if k.startswith(reader + '/') and 'seqio/' + k.split('/', 1)[1] in results}
    write_record(record, args.out)
    print({k: round(v, 2) for k, v in record['ratios'].items()}, flush=True)
  finally:
    if args.corpus is None:
      shutil.rmtree(root, ignore_errors=True)
  return record


if __name__ == '__main__':
  main()
