import json
import os
import sys

import pytest

# Make tests/reference_t5.py importable as `reference_t5` and keep JAX on the CPU in tests.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# 8 CPU devices for the sharding tests (jit still defaults to device 0 elsewhere).
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
# Compile time dominates these small programs: XLA's LLVM backend without its optimization passes compiles
# them about a quarter faster (measured on test_t5, test_fewshot, test_trainer: 312 s -> 236 s). Results may
# differ from optimized code in the last bits (e.g. fused multiply-adds), within every comparison's tolerance;
# the bit-identity tests (resume, sharding) compare runs made under the same flags.
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = os.environ['XLA_FLAGS'] + ' --xla_backend_optimization_level=0'

# One persistent XLA compilation cache per test run, shared by the xdist workers and every CLI subprocess
# (they inherit the environment): tests build the same small programs again and again in new jit wrappers
# and new processes, and a cache hit skips XLA's compile. The controller creates it before the workers start;
# a run that sets JAX_COMPILATION_CACHE_DIR itself keeps its own.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import atexit
  import shutil
  import tempfile
  _cache_dir = tempfile.mkdtemp(prefix='promptjax-test-xla-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache_dir
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)

SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data'))


def shared_path(*parts):
  """`SHARED_DATA/parts...`, or skip the calling test with the reason when it is absent (a clone without
  ../shared)."""
  path = os.path.join(SHARED_DATA, *parts)
  if not os.path.exists(path):
    pytest.skip(f'needs {path} (../shared/data beside the checkout)')
  return path


@pytest.fixture(scope='session')
def supmer_construction(tmp_path_factory, worker_id):
  """(output_dir, manifest) of the mini SUPMER anchor-task construction (Beam DirectRunner on the bundled
  corpus, support = query = 4): built once per run and read by tests/supmer/*. Under xdist the workers share
  one build through a file lock in the run's common temporary directory."""
  pytest.importorskip('apache_beam', reason='Apache Beam is not installed (setup.py: the beam extra)')
  from promptjax.supmer import construct as sc
  root = tmp_path_factory.getbasetemp()
  if worker_id != 'master':
    root = root.parent          # shared by the xdist workers of this run
  out = str(root / 'supmer_construction')
  done = os.path.join(out, 'manifest.json')
  import filelock
  with filelock.FileLock(str(root / 'supmer_construction.lock')):
    if not os.path.exists(done):
      sc.construct(sc.mini_config(out, support_size=4, query_size=4))
  with open(done) as f:
    return out, json.load(f)


# The longest test files first: `make test` runs `pytest -n 3 --dist loadfile --no-loadscope-reorder`, which
# hands files to the workers in collection order (without the flag, xdist orders files by their number
# of tests and a one-test file like the demo's runs last, alone). Longest-first keeps the workers busy to
# the end. The order is by the per-file times of a `--junitxml` run of the whole suite; files under ~10 s
# are not listed and keep their order after these. Re-measure when a file grows.
_LONG_FILES = (  # seconds in a --junitxml run of the whole suite (two workers sharing 2 cores)
    'test_paper_rows.py',                       # ~255 alone (ten ledger rows end to end at mini scale)
    'training/test_trainer.py',                 # ~185
    'interop/test_t5x_end_to_end.py',           # ~60 (one test: T5X train, eval, infer; promptjax eval)
    'test_demo.py',                             # ~60 (one test)
    'meta/test_meta_gradients.py',              # ~100
    'supmer/test_end_to_end.py',                # ~90
    'training/test_multiprocess.py',            # ~65 (one test)
    'supmer/test_baselines.py',                 # ~70
    'training/test_hardening.py',               # ~60
    'meta/test_meta_training.py',               # ~50 (~125 before its two CLI runs became ledger rows)
    'interop/test_t5x_trainer.py',              # ~85
    'models/test_decoding_cache.py',            # ~35
    'evaluation/test_eval_cli.py',              # ~55
    'supmer/test_algorithm.py',                 # ~55
    'models/test_t5.py',                        # ~55
    'supmer/test_train.py',                     # ~50
    'evaluation/test_fewshot.py',               # ~45
    'data/test_meta_sampler.py',                # ~35
    'evaluation/test_downstream.py',            # ~30
    'test_mini_backbone.py',                    # ~30 (the backbone script's first steps in a subprocess)
    'training/test_partitioning.py',            # ~30
    'training/test_compiled_memory.py',         # ~25
    'data/test_flat_mixture.py',                # ~25
    'tasks/test_mini.py',                       # ~25
    'meta/test_maml_reference.py',              # ~25
    'evaluation/test_rank_classification.py',   # ~20
    'models/test_t5_parity.py',                 # ~20
    'test_tour.py',                             # ~20
    'models/test_input_vectors.py',             # ~15
    'training/test_method.py',                  # ~15
    'interop/test_t5x_finetune.py',             # ~15
    'models/test_prompts.py',                   # ~15
    'supmer/test_construct.py',                 # ~15
    'tasks/test_crossfit.py',                   # ~15
    'supmer/test_datasets.py',                  # ~15
    'test_readme.py',                           # ~15
    'checkpoints/test_t5x.py',                  # ~15
    'supmer/test_downstream_protocol.py',       # ~10
    'tasks/test_mini_benchmark_data.py',        # ~10
    'tasks/test_p3.py',                         # ~10
)


def pytest_collection_modifyitems(session, config, items):
  del session, config
  root = os.path.dirname(__file__)

  def rank(item):
    rel = os.path.relpath(str(item.fspath), root).replace(os.sep, '/')
    return _LONG_FILES.index(rel) if rel in _LONG_FILES else len(_LONG_FILES)
  items.sort(key=rank)   # stable: the order within a file and among the rest is kept
