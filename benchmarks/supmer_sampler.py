"""Memory of SUPMER's meta-batch sampler on an anchor-task corpus larger than a tenth of the host's memory:
``SupmerDataConfig.storage='memory'`` (every example converted into memory) against ``'index'`` (a record
index; the drawn tasks' records read and converted at each step).

A corpus in the construction's output layout (`promptjax.supmer.tasks`: ``manifest.json``,
``<format>/<split>-SSSSS-of-NNNNN.tfrecord``) is generated in a temporary directory: Pan et al. 2023's
Table 6 sizes (support 32 + query 32 per task, inputs up to 512 tokens, T5-base's d = 768), two formats,
``sp_same_cluster`` (sentence pairs) and ``cls_cluster_centroid`` (4 centroid vectors of 768 floats per
record, most of the bytes). Each storage runs in a process of its own: seconds to the first meta-batch,
meta-batches per second after it (Table 6: 4 tasks per step), and the peak resident memory (``ru_maxrss``);
``index_saved`` is ``'index'`` reading the record index the construction saves beside the shards
(`promptjax.supmer.tasks.write_index`, its writing timed) instead of reading every record to build it.
Nothing is downloaded; seqio's test SentencePiece model stands in for T5's vocabulary.

Usage:
  python benchmarks/supmer_sampler.py                      # 2.6 GB corpus (> 24 GiB / 10), ~10 min on 2 cores
  python benchmarks/supmer_sampler.py --gigabytes 0.05 --steps 3   # smoke test
Results: benchmarks/results/supmer_sampler.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, write_record  # noqa: E402

DIM = 768
SIZES = {'support': 32, 'query': 32}
FORMATS = ('sp_same_cluster', 'cls_cluster_centroid')
LENGTHS = {'inputs': 512, 'targets': 8}


def write_corpus(root: str, gigabytes: float, shards: int = 8, seed: int = 0) -> dict:
  """The construction layout with about `gigabytes` of records; returns the manifest."""
  import tensorflow as tf
  from promptjax.supmer.construct import to_tf_example
  rng = np.random.default_rng(seed)
  words = [f'w{i}' for i in range(3000)]
  per_task = SIZES['support'] + SIZES['query']
  vector_record = 4 * DIM * 4 + 900          # bytes of a cls_cluster_centroid record, about
  text_record = 900
  tasks = int(gigabytes * 1e9 / (per_task * (vector_record + text_record)))
  written = {}
  for fmt in FORMATS:
    for split, n_tasks in (('train', tasks), ('validation', max(2, tasks // 50))):
      os.makedirs(os.path.join(root, fmt), exist_ok=True)
      paths = [os.path.join(root, fmt, f'{split}-{i:05d}-of-{shards:05d}.tfrecord') for i in range(shards)]
      writers = [tf.io.TFRecordWriter(p) for p in paths]
      for t in range(n_tasks):
        for j in range(per_task):
          text = ' '.join(rng.choice(words, size=int(rng.integers(40, 160))))
          rec = {'inputs_pretokenized': f'{text} Question: A, B, C or D? <extra_id_0> .', 'targets_pretokenized':
                 '<extra_id_0> A', 'answer_choices': ['A', 'B', 'C', 'D'], 'meta_task': f'{fmt}_{split}_{t:07d}',
                 'role': 'support' if j < SIZES['support'] else 'query', 'format': fmt, 'label': 0,
                 'anchor': 'x', 'anchor_cluster': 0}
          if fmt == 'cls_cluster_centroid':
            rec.update({'option_clusters': [0, 1, 2, 3], 'encoder_input_vectors':
                        rng.standard_normal(4 * DIM).astype(np.float32).tolist(),
                        'encoder_input_vector_positions': [1, 3, 5, 7]})
          writers[(t * per_task + j) % shards].write(to_tf_example(rec))
      for w in writers:
        w.close()
      written[(fmt, split)] = n_tasks
  manifest = {'formats': list(FORMATS), 'embedding_dim': DIM, 'vocab_name': 't5',
              'config': {'support_size': SIZES['support'], 'query_size': SIZES['query']},
              'tasks': {f'{f}/{s}': n for (f, s), n in written.items()}}
  with open(os.path.join(root, 'manifest.json'), 'w') as f:
    json.dump(manifest, f)
  return manifest


def measure(root: str, storage: str, steps: int) -> dict:
  """In this process: time to the first meta-batch, meta-batches/s, peak RSS."""
  import resource
  import time
  import seqio
  from promptjax import tasks
  from promptjax.supmer import tasks as st
  tasks.set_data_dir('supmer', root)
  tasks.set_vocabulary_path('t5', os.path.join(os.path.dirname(seqio.__file__), 'test_data', 'sentencepiece',
                                               'sentencepiece.model'))
  cfg = st.SupmerDataConfig(task_feature_lengths=LENGTHS, meta_batch_size=4,
                            storage='index' if storage == 'index_saved' else storage)
  t0 = time.time()
  it = st.supmer_meta_batches(cfg)
  next(it)
  first = time.time() - t0
  t1 = time.time()
  for _ in range(steps):
    next(it)
  rate = steps / (time.time() - t1)
  return {'storage': storage, 'first_batch_s': first, 'meta_batches_per_s': rate,
          'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _drop_indexes(root: str) -> None:
  """Removes saved record indexes (`promptjax.supmer.tasks.write_index`), so 'index' builds its own."""
  for d, _, files in os.walk(root):
    for f in files:
      if '.index.' in f:
        os.remove(os.path.join(d, f))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--gigabytes', type=float, default=2.6)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--corpus', default=None, help='reuse (or keep) the generated corpus here')
  parser.add_argument('--storages', default='index,index_saved,memory',
                      help="'index_saved': 'index' reading the record index saved beside the shards")
  parser.add_argument('--measure', default=None, help=argparse.SUPPRESS)   # the child process
  parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results',
                                                    'supmer_sampler.json'))
  args = parser.parse_args(argv)
  if args.measure:
    print('RESULT ' + json.dumps(measure(args.corpus, args.measure, args.steps)), flush=True)
    return None
  root = args.corpus or tempfile.mkdtemp(prefix='supmer_corpus_')
  record = machine_info(gigabytes_requested=args.gigabytes, lengths=LENGTHS, sizes=SIZES)
  try:
    if not os.path.exists(os.path.join(root, 'manifest.json')):
      record['manifest'] = write_corpus(root, args.gigabytes)
    record['corpus_bytes'] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
    results = {}
    for storage in args.storages.split(','):
      _drop_indexes(root)
      if storage == 'index_saved':   # the construction's saved record index (written here, timed)
        import time
        from promptjax.supmer import tasks as st
        t0 = time.time()
        st.write_indexes(root)
        record['index_write_s'] = time.time() - t0
      out = subprocess.run([sys.executable, os.path.abspath(__file__), '--corpus', root, '--measure', storage,
                            '--steps', str(args.steps)], capture_output=True, text=True,
                           env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
      line = [l for l in out.stdout.splitlines() if l.startswith('RESULT ')]
      results[storage] = json.loads(line[0][7:]) if line else {'error': out.stderr[-2000:]}
      print(storage, results[storage], flush=True)
    record['results'] = results
    if all('peak_rss_gb' in results.get(s, {}) for s in ('index', 'memory')):
      record['memory_over_index_rss'] = results['memory']['peak_rss_gb'] / results['index']['peak_rss_gb']
    if all('first_batch_s' in results.get(s, {}) for s in ('index', 'index_saved')):
      record['scan_over_saved_first_batch'] = results['index']['first_batch_s'] / results['index_saved']['first_batch_s']
    write_record(record, args.out)
  finally:
    if args.corpus is None:
      shutil.rmtree(root, ignore_errors=True)
  return record


if __name__ == '__main__':
  main()
