"""``promptjax train|eval|fewshot|downstream|compare|similarity``: gin-configured entry points that speak T5X's flags.

  promptjax train --gin_file=runs/train.gin --gin_file=models/t5_1_1_mini.gin --gin_file=mtl_prompt.gin \\
      --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'mini_train'" --gin.TRAIN_STEPS=100
  python -m promptjax.train ...         # the same as `promptjax train ...`
  promptjax eval --gin_file=runs/eval.gin --gin_file=models/t5_1_1_mini.gin --gin_file=mtl_prompt.gin \\
      --gin.CHECKPOINT_PATH="'/tmp/run'" --gin.EVAL_OUTPUT_DIR="'/tmp/run/eval/0shot'" \\
      --gin.MIXTURE_OR_TASK_NAME="'mini_heldout_rank_classification'"
  promptjax fewshot --gin_file=runs/fewshot.gin ...   # the same macros; 16-shot prompt tuning first
  promptjax downstream --gin_file=runs/downstream.gin ...   # Qin et al.'s CrossFit protocol (TARGET_TASKS)
  promptjax compare RUN_A RUN_B ... [--output_dir DIR] [--reference NAME] [--within_dataset]
  promptjax similarity PROMPT_OR_DIR ... [--target NAME] [--top_k 5] [--threshold 0.99 | --rank K]
      [--output_dir DIR]                 # Qin et al. A.6-A.7 task similarity of tuned prompts
  promptjax COMMAND --help               # the command's flags and main macros

Flags (T5X's): ``--gin_file`` (repeatable), ``--gin_bindings`` (repeatable), ``--gin.NAME=VALUE``
(shorthand for ``--gin_bindings='NAME = VALUE'``), ``--gin_search_paths`` (comma-separated; the package's
``configs/`` and the working directory are always searched), ``--dry_run`` (shapes, shardings and memory
only; with ``--compile`` also XLA's memory analysis of the compiled sharded step, on CPU over as many fake
devices as ``MESH_SHAPE`` names), ``--restore_fallback`` (resume from the newest readable checkpoint); for multi-host runs
``--coordinator_address``, ``--process_count``, ``--process_index``, or ``--multiprocess`` /
``--multiprocess_gpu`` to let JAX detect them (Cloud TPU pods, SLURM); absl's ``--alsologtostderr``,
``--logtostderr``, ``-v`` and ``--tfds_data_dir``.

Gin is only used here: the library underneath takes plain arguments. Every failure a user can cause
(missing gin file, unparsable or unknown binding, a command-line macro nothing reads, no model file,
unknown task, mesh larger than the devices, mismatched or unreadable checkpoint, NaN loss) prints one
``error:`` line naming the fix and exits with status 2, before anything is written where it can be.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import math
import os
import sys
import tokenize
from typing import List, Optional, Sequence, Tuple

import gin

from promptjax.errors import PromptjaxError, first_line

GIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')  # package data
EXIT_USAGE = 2

_registered = False


def register_gin_configurables() -> None:
  """Makes the library's classes and functions configurable from gin, under their module names."""
  global _registered
  if _registered:
    return
  from promptjax import models
  from promptjax.data import feeds, meta_sampler
  from promptjax.meta import algorithms as meta_algorithms, method as meta_method
  from promptjax.supmer import algorithm as supmer_algorithm, method as supmer_method
  from promptjax.training import method, optimizers, trainer
  gin.external_configurable(models.PromptableT5, module='promptjax.models')
  gin.external_configurable(models.PromptConfig, module='promptjax.models')
  gin.external_configurable(models.get_config, module='promptjax.models')
  gin.external_configurable(feeds.DatasetConfig, module='promptjax.training')
  gin.external_configurable(feeds.epoch_steps, module='promptjax.data')
  gin.external_configurable(trainer.train, module='promptjax.training')
  gin.external_configurable(method.MultiTask, module='promptjax.training')
  gin.external_configurable(meta_algorithms.MetaConfig, module='promptjax.meta')
  gin.external_configurable(meta_sampler.MetaDataConfig, module='promptjax.meta')
  gin.external_configurable(meta_method.MetaLearning, module='promptjax.meta')
  gin.external_configurable(supmer_algorithm.SupmerConfig, module='promptjax.supmer')
  gin.external_configurable(supmer_method.Supmer, module='promptjax.supmer')
  from promptjax import evaluation
  gin.external_configurable(evaluation.evaluate, module='promptjax.evaluation')
  gin.external_configurable(evaluation.FewShotConfig, module='promptjax.evaluation')
  gin.external_configurable(evaluation.downstream_run, name='downstream_run', module='promptjax.evaluation')
  gin.external_configurable(evaluation.DownstreamConfig, module='promptjax.evaluation')
  for fn in (optimizers.constant_schedule, optimizers.rsqrt_decay_schedule,
             optimizers.warmup_linear_decay_schedule, optimizers.warmup_cosine_decay_schedule):
    gin.external_configurable(fn, module='promptjax.training.optimizers')
  gin.external_configurable(optimizers.create_optimizer, module='promptjax.training.optimizers',
                            allowlist=optimizers.FACTORY_ALLOWLIST)
  from promptjax import tasks
  from promptjax.supmer import datasets as supmer_datasets, tasks as supmer_tasks
  gin.external_configurable(tasks.configure_data, module='promptjax.tasks')
  gin.external_configurable(supmer_tasks.SupmerDataConfig, module='promptjax.supmer.tasks')
  # gin macros cannot build strings: these turn DATASET / DATA_SEED macros into task names, lengths, shots.
  for fn in (supmer_datasets.rank_task, supmer_datasets.domain_task, supmer_datasets.rank_mixture,
             supmer_datasets.feature_lengths, supmer_datasets.num_train_examples):
    gin.external_configurable(fn, module='promptjax.supmer.datasets')
  _registered = True


def split_gin_args(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
  """Pulls ``--gin.NAME=VALUE`` out of argv as gin bindings ``NAME = VALUE`` (T5X's rewrite)."""
  rest, bindings = [], []
  for arg in argv:
    if arg.startswith('--gin.'):
      name, sep, value = arg[len('--gin.'):].partition('=')
      if not sep:
        raise SystemExit(f'error: {arg} needs a value: --gin.{name}=VALUE')
      bindings.append(f'{name} = {value}')
    else:
      rest.append(arg)
  return rest, bindings


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str]) -> None:
  """Parses gin files and bindings; raises `CliError` with one readable line on any problem."""
  for path in list(search_paths) + [GIN_DIR, os.getcwd()]:
    if path and os.path.isdir(path) and path not in gin.config._LOCATION_PREFIXES:  # pylint: disable=protected-access
      gin.add_config_file_search_path(path)
  resolved = []
  for f in gin_files:
    path = _find_gin_file(f, search_paths)
    if not path:
      raise CliError(f'gin file {f!r} not found (searched the working directory, {GIN_DIR} and '
                     f'--gin_search_paths). Check the path or add its folder to --gin_search_paths.')
    resolved.append(path)
  quiet = _QuietGinSearch()
  logging.getLogger().addFilter(quiet)
  try:
    gin.parse_config_files_and_bindings(resolved, [], finalize_config=False)
    for binding in bindings:
      try:
        gin.parse_config(binding)
      except (ValueError, KeyError, SyntaxError, tokenize.TokenError) as e:
        raise CliError(_binding_error(binding, e)) from e
  except (ValueError, KeyError, SyntaxError, IOError, tokenize.TokenError) as e:
    msg = str(e).strip().splitlines()
    raise CliError('bad gin configuration: ' + ' '.join(m.strip() for m in msg[:3])) from e
  finally:
    logging.getLogger().removeFilter(quiet)


def _binding_error(binding: str, e: BaseException) -> str:
  """One line for a command-line binding gin cannot parse, naming it (and the quotes a string needs)."""
  name, _, value = binding.partition('=')
  name, value = name.strip(), value.strip()
  text = ' '.join(str(e).strip().splitlines()[:1]) or type(e).__name__
  if isinstance(e, tokenize.TokenError) or 'EOF' in text:
    return f'bad gin binding --gin.{name}={value}: the value is not complete ({text}); check its brackets.'
  if value and value[0] not in '\'"[({%@-.0123456789' and value not in ('True', 'False', 'None'):
    return (f'bad gin binding --gin.{name}={value}: a string value needs quotes inside the shell quotes: '
            f'--gin.{name}="\'{value}\'".')
  return f'bad gin binding --gin.{name}={value}: {text}'


class _QuietGinSearch(logging.Filter):
  """gin logs an error for every search-path prefix an ``include`` is not found under; hide those."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.getMessage()).startswith('Path not found')


def _find_gin_file(f: str, search_paths: Sequence[str]) -> Optional[str]:
  for base in ['', os.getcwd(), GIN_DIR] + list(search_paths):
    path = os.path.join(base, f) if base else f
    if os.path.isfile(path):
      return path
  return None


class CliError(Exception):
  pass


def _init_distributed(args) -> None:
  """`jax.distributed.initialize` for a multi-host run (a no-op for a single process); a failure is one
  `CliError` naming the flags."""
  import jax
  try:
    if (args.multiprocess or getattr(args, 'multiprocess_gpu', False)) and not args.process_count:
      jax.distributed.initialize()  # auto-detected on Cloud TPU pods, SLURM, Open MPI, ...
    elif args.process_count and args.process_count > 1:
      if jax.config.jax_platforms in (None, '', 'cpu') or os.environ.get('JAX_PLATFORMS') == 'cpu':
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')
      jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                 num_processes=args.process_count, process_id=args.process_index)
  except (ValueError, RuntimeError) as e:
    raise CliError(f'multi-host start-up failed ({first_line(e)}): --multiprocess joins a cluster JAX can '
                   'detect (Cloud TPU pod, SLURM, Open MPI); elsewhere give --coordinator_address=HOST:PORT '
                   '--process_count=N --process_index=I, or drop the flag for one process.') from e


def _macro(name: str):
  try:
    return gin.query_parameter(f'%{name}')
  except ValueError:
    return None


MACROS = ('MODEL_DIR', 'MIXTURE_OR_TASK_NAME', 'MIXTURE_OR_TASK_MODULE', 'TASK_FEATURE_LENGTHS', 'TRAIN_STEPS',
          'BATCH_SIZE', 'INITIAL_CHECKPOINT_PATH', 'CHECKPOINT_PATH', 'EVAL_OUTPUT_DIR', 'TARGET_TASKS')


def _check_required_macros(dry_run: bool = False) -> None:
  """gin does not enforce ``NAME = %gin.REQUIRED`` through macro references; do it here."""
  missing = []
  for name in MACROS:
    if dry_run and name in ('MODEL_DIR', 'INITIAL_CHECKPOINT_PATH'):
      continue
    try:
      value = gin.query_parameter(f'%{name}')
    except ValueError:
      continue
    if repr(value) == '%gin.REQUIRED':
      missing.append(name)
  if missing:
    raise CliError('required gin macro(s) not set: ' + ', '.join(missing) + '. Pass e.g. '
                   + ' '.join(f'--gin.{m}=...' for m in missing) + ' (strings in quotes: --gin.MODEL_DIR="\'/tmp/run\'").')


# T5X macros promptjax has no use for: named in the error instead of "did you mean".
_T5X_ONLY_MACROS = {
    'USE_CACHED_TASKS': 'its seqio tasks are read as registered, with no cached variants',
    'MIXTURE_OR_TASK_MODULE': 'set it in the gin file of the command that reads it',
}


def _macro_references(value, found: set) -> None:
  if isinstance(value, gin.config.ConfigurableReference):
    if value.selector == 'gin.macro' and value.scopes:
      found.add(value.scopes[-1])
  elif isinstance(value, dict):
    for v in value.values():
      _macro_references(v, found)
  elif isinstance(value, (list, tuple)):
    for v in value:
      _macro_references(v, found)


def read_macros() -> set:
  """The macros some binding of the parsed configuration reads (``%NAME``)."""
  read = set()
  for params in gin.config._CONFIG.values():  # pylint: disable=protected-access
    for value in params.values():
      _macro_references(value, read)
  return read


def check_command_line_macros(bindings: Sequence[str]) -> None:
  """A macro bound on the command line (``--gin.NAME=VALUE``) that no binding of the parsed
  configuration reads is a typo or a T5X macro without meaning here: refuse it instead of running with
  the default."""
  read = read_macros()
  for binding in bindings:
    name = binding.partition('=')[0].strip()
    if not name.isidentifier() or not name.isupper() or name in read:
      continue
    if name in _T5X_ONLY_MACROS:
      hint = f'it is a T5X macro promptjax does not use ({_T5X_ONLY_MACROS[name]}).'
    else:
      close = difflib.get_close_matches(name, sorted(read), n=1, cutoff=0.75)
      hint = f'did you mean {close[0]}?' if close else 'check its spelling and the gin files given.'
    raise CliError(f'--gin.{name} is not read by any configuration of this command: {hint}')


def _write_config(directory: str) -> None:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'config.gin'), 'w') as f:
    f.write(gin.config_str())


# The run file each command needs, and a parameter only it binds.
_RUN_FILES = {'train': ('runs/train.gin', 'promptjax.training.train.model_dir'),
              'eval': ('runs/eval.gin', 'promptjax.evaluation.evaluate.checkpoint_path'),
              'fewshot': ('runs/fewshot.gin', 'promptjax.evaluation.evaluate.fewshot'),
              'downstream': ('runs/downstream.gin', 'promptjax.evaluation.downstream_run.checkpoint_path')}


def _is_bound(parameter: str) -> bool:
  try:
    gin.query_parameter(parameter)
    return True
  except ValueError:
    return False


def parse_command_gin(command: str, gin_files: Sequence[str], bindings: Sequence[str],
                      search_paths: Sequence[str] = ()) -> None:
  """Parses a command's gin files and bindings as `promptjax <command>` does: in the short form
  (`promptjax train --gin_file=mtl_prompt.gin ...`, the command's run file not included) the run file goes
  first."""
  parse_gin(gin_files, bindings, search_paths)
  run_file, bound = _RUN_FILES.get(command, (None, None))
  if run_file and not _is_bound(bound):
    gin.clear_config()
    parse_gin([run_file] + list(gin_files), bindings, search_paths)


def _configure(args, bindings: List[str]) -> None:
  """Registers the configurables and parses the gin files and bindings of a gin-configured command;
  checks that a model file was given and that every macro bound on the command line is read."""
  register_gin_configurables()
  bindings = list(args.gin_bindings) + bindings
  search = [p for s in args.gin_search_paths for p in s.split(',') if p]
  parse_command_gin(args.command, args.gin_file, bindings, search)
  if _macro('MODEL') is None:
    raise CliError('no model configuration: add a model gin file, e.g. --gin_file=models/t5_1_1_mini.gin '
                   '(the bundled mini model) or models/t5_1_1_lm100k_large.gin (the papers\' LM-adapted T5).')
  check_command_line_macros(bindings)


def _dry_run_steps() -> str:
  """A TRAIN_STEPS computed from the data (``@promptjax.data.epoch_steps()``, a row that states epochs) is
  computed once here; where the data cannot be read the dry run, which reads no data, goes on with 1 step
  and says so in one line after its report."""
  from promptjax.errors import DataError
  ref = _macro('TRAIN_STEPS')
  if not isinstance(ref, gin.config.ConfigurableReference):
    return ''
  try:
    gin.bind_parameter('%TRAIN_STEPS', ref.scoped_configurable_fn())
    return ''
  except DataError as e:
    gin.bind_parameter('%TRAIN_STEPS', 1)
    return (f'\nTRAIN_STEPS = {ref!r} needs the training data, which cannot be read here ({first_line(e)}); '
            'the estimate above assumes 1 step.')


def _compile_devices() -> None:
  """For ``--dry_run --compile``: a mesh of MESH_SHAPE's size needs that many devices; where jax has not
  started yet and runs on CPU, create them (``jax_num_cpu_devices``, as
  ``XLA_FLAGS=--xla_force_host_platform_device_count``)."""
  import jax
  from jax._src import xla_bridge
  shape = _macro('MESH_SHAPE')
  if not shape or any(int(x) < 1 for x in shape) or xla_bridge.backends_are_initialized():
    return   # all devices / -1: the mesh takes what there is; a started backend keeps its devices
  if os.environ.get('JAX_PLATFORMS', 'cpu').split(',')[0] in ('cpu', ''):
    jax.config.update('jax_platforms', 'cpu')
    jax.config.update('jax_num_cpu_devices', max(math.prod(int(x) for x in shape), 1))


def dry_run_report(args, bindings: List[str]):
  """``promptjax train --dry_run [--compile]``: configures the run from `args` / `bindings` and returns
  (its `DryRunReport`, a note line or '') without allocating, reading data or writing files."""
  _configure(args, bindings)
  _check_required_macros(dry_run=True)
  from promptjax.training import trainer
  note = _dry_run_steps()
  if args.compile:
    _compile_devices()
  return gin.get_configurable(trainer.train)(dry_run=True, compile_step=args.compile), note


def run_train(args, bindings: List[str]) -> int:
  if args.dry_run:
    report, note = dry_run_report(args, bindings)
    print(f"{report}{note}")
    return 0
  _configure(args, bindings)
  _check_required_macros(dry_run=False)
  if args.compile:
    raise CliError('--compile goes with --dry_run (it compiles the step to measure its memory, and trains nothing).')
  from promptjax.training import trainer
  _init_distributed(args)
  # train() writes config.gin into MODEL_DIR only once the run is validated (never over a refused one).
  result = gin.get_configurable(trainer.train)(run_record={'config.gin': gin.config_str()},
                                               restore_fallback=args.restore_fallback)
  if not result.losses:
    print(f'nothing to train: {result.model_dir} is at step {result.step} and TRAIN_STEPS is '
          f'{_macro("TRAIN_STEPS")}.')
  first, last = (min(result.losses), max(result.losses)) if result.losses else (None, None)
  if first is not None:
    print(f'step {first}: loss {result.losses[first]:.4f} ... step {last}: loss {result.losses[last]:.4f}'
          + (' (preempted: checkpoint saved)' if result.preempted else ''))
  return 0


def run_eval(args, bindings: List[str]) -> int:
  _configure(args, bindings)
  _check_required_macros()
  _init_distributed(args)
  from promptjax import evaluation
  output_dir = _macro('EVAL_OUTPUT_DIR')
  fewshot = gin.query_parameter('promptjax.evaluation.evaluate.fewshot') if args.command == 'fewshot' else None
  if args.command == 'fewshot' and fewshot is None:
    raise CliError('`promptjax fewshot` needs a few-shot configuration: add --gin_file=runs/fewshot.gin.')
  kwargs = {} if args.command == 'fewshot' else {'fewshot': None}
  summary = gin.get_configurable(evaluation.evaluate)(**kwargs)
  import jax
  if isinstance(output_dir, str) and jax.process_index() == 0:
    _write_config(output_dir)   # after the evaluation: a failed one leaves no directory behind
  for task, acc in summary['tasks'].items():
    print(f'{task}: accuracy {acc * 100:.1f}')
  for task, scores in summary.get('generative', {}).items():
    print(f'{task}: ' + ', '.join(f'{k} {v * 100:.1f}' for k, v in scores.items()))
  if summary['tasks']:
    print(f'ARG {summary["arg"] * 100:.1f} over {len(summary["tasks"])} templates '
          f'({summary["arg_within_dataset"] * 100:.1f} averaged within datasets first)')
  print(f'results in {output_dir}')
  return 0


def run_downstream(args, bindings: List[str]) -> int:
  _configure(args, bindings)
  _check_required_macros()
  _init_distributed(args)
  from promptjax import evaluation
  summary = gin.get_configurable(evaluation.downstream_run)()
  for task, score in summary['tasks'].items():
    print(f'{task}: test {score * 100:.1f} (mean over seeds)')
  if 'arg_vs_baseline' in summary:
    print(f'ARG over {summary["baseline"]}: {summary["arg_vs_baseline"] * 100:.1f}'
          + (' (per seed: {mean:.1f} ± {std:.1f})'.format(**{k: v * 100 for k, v in s.items() if k != 'per_seed'})
             if (s := summary.get('arg_vs_baseline_over_seeds')) else ''))
  return 0


def run_compare(args) -> int:
  from promptjax.evaluation import report
  if not args.runs:
    raise CliError('compare needs run directories: promptjax compare RUN_A RUN_B ... (or NAME=PATH).')
  runs = [report.load_run(r) for r in args.runs]
  out = args.output_dir or os.path.join(os.path.dirname(os.path.abspath(runs[0].path)), 'comparison')
  comparison = report.write_report(runs, out, reference=args.reference, within_dataset=args.within_dataset,
                                   num_resamples=args.num_resamples, seed=args.bootstrap_seed)
  print(comparison['table'])
  print('wrote ' + ', '.join([os.path.join(out, 'table.md')] + comparison['plots']))
  return 0


def run_similarity(args) -> int:
  from promptjax.evaluation import similarity
  if not args.runs:
    raise CliError('similarity needs prompts: promptjax similarity PROMPT.npy DIR ... (or NAME=PATH).')
  if args.threshold is not None and args.rank is not None:
    raise CliError('Give --threshold (GPM energy) or --rank (fixed k), not both.')
  prompts = similarity.load_prompts(args.runs)
  out = similarity.write_similarity(prompts, args.output_dir, args.target, args.top_k, args.threshold, args.rank)
  if 'ranking' in out:
    print(f'source tasks for {out["target"]}, most correlated first:')
    for name, score in out['ranking']:
      print(f'  {name}: {score:.3f}')
  else:
    names = out['names']
    print('| target \\ source | ' + ' | '.join(names) + ' |')
    print('|---' * (len(names) + 1) + '|')
    for name, row in zip(names, out['matrix']):
      print(f'| {name} | ' + ' | '.join(f'{v:.3f}' for v in row) + ' |')
  if args.output_dir:
    print(f'wrote {os.path.join(args.output_dir, "similarity.json")}, {os.path.join(args.output_dir, "similarity.png")}')
  return 0


_MAIN_MACROS = {
    'train': 'MODEL_DIR, MIXTURE_OR_TASK_NAME, TRAIN_STEPS (counted from 0), BATCH_SIZE, TASK_FEATURE_LENGTHS, '
             'INITIAL_CHECKPOINT_PATH, LEARNING_RATE, TRAINABLE, MESH_SHAPE, NUM_MICROBATCHES, CHECKPOINT_PERIOD, '
             'KEEP_CHECKPOINTS, EVAL_PERIOD, EVAL_BATCHES, KEEP_BEST, EARLY_STOPPING_PATIENCE, RANDOM_SEED, '
             'DROPOUT_RATE (runs/train.gin, models/*.gin)',
    'eval': 'CHECKPOINT_PATH, EVAL_OUTPUT_DIR, MIXTURE_OR_TASK_NAME, EVAL_SPLIT, TASK_FEATURE_LENGTHS, '
            'LENGTH_NORMALIZE, USE_PROMPT, EXAMPLES_PER_BATCH, MAX_DECODE_LENGTH (runs/eval.gin)',
    'downstream': 'CHECKPOINT_PATH, EVAL_OUTPUT_DIR, TARGET_TASKS, DOWNSTREAM_SEEDS (runs/downstream.gin)',
}
_MAIN_MACROS['fewshot'] = _MAIN_MACROS['eval'] + '; FEWSHOT_SEED and the tuning options of runs/fewshot.gin'
_COMMAND_HELP = {
    'train': 'continued pretraining / meta-learning / SUPMER (runs/train.gin + models/*.gin + a method file)',
    'eval': 'zero-shot rank classification and seqio generative evaluation of a checkpoint (runs/eval.gin)',
    'fewshot': 'few-shot prompt tuning, then evaluation (runs/fewshot.gin)',
    'downstream': "Qin et al. 2023's CrossFit downstream protocol (runs/downstream.gin)",
    'compare': 'ARG table with paired-bootstrap p-values and plots over evaluated runs',
    'similarity': 'task similarity of tuned prompts (Qin et al. 2023, A.6-A.7)',
}


def _gin_flags(p: argparse.ArgumentParser, command: str) -> None:
  g = p.add_argument_group('gin (T5X\'s flags)')
  g.add_argument('--gin_file', action='append', default=[], help='a gin file (repeatable), e.g. runs/train.gin')
  g.add_argument('--gin_bindings', action='append', default=[], help="a binding 'NAME = VALUE' (repeatable)")
  g.add_argument('--gin_search_paths', action='append', default=[], help='comma-separated folders to search')
  g.add_argument('--gin.NAME=VALUE', dest='_gin_shorthand', metavar='', help='shorthand for --gin_bindings')
  d = p.add_argument_group('multi-host')
  d.add_argument('--coordinator_address', default=None)
  d.add_argument('--process_count', type=int, default=None)
  d.add_argument('--process_index', type=int, default=None)
  d.add_argument('--multiprocess', action='store_true',
                 help='call jax.distributed.initialize() with auto-detection (TPU pods, SLURM)')
  d.add_argument('--multiprocess_gpu', action='store_true', help='T5X\'s name for --multiprocess on GPUs')
  if command == 'train':
    p.add_argument('--dry_run', action='store_true', help='shapes, shardings and memory only')
    p.add_argument('--compile', action='store_true',
                   help='with --dry_run: also compile the sharded step and report XLA\'s per-device memory (on '
                        'CPU, with as many fake devices as MESH_SHAPE needs)')
    p.add_argument('--restore_fallback', action='store_true',
                   help='resume from the newest readable checkpoint, moving unreadable newer ones aside')


def _absl_flags(p: argparse.ArgumentParser) -> None:
  """The absl/T5X flags users pass by habit: logging goes to stderr (promptjax has no log files)."""
  g = p.add_argument_group('logging (absl\'s flags)')
  g.add_argument('--alsologtostderr', action='store_true', help='INFO logs of every library to stderr too')
  g.add_argument('--logtostderr', action='store_true', help='the same as --alsologtostderr here')
  g.add_argument('-v', '--verbosity', type=int, default=0, help='absl verbosity (>= 1: DEBUG logs)')
  g.add_argument('--tfds_data_dir', default=None, help='TFDS data directory (sets TFDS_DATA_DIR)')


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='promptjax', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
  for command, text in _COMMAND_HELP.items():
    epilog = f'main macros: {_MAIN_MACROS[command]}' if command in _MAIN_MACROS else None
    p = sub.add_parser(command, help=text, description=text, epilog=epilog)
    _absl_flags(p)
    if command in _MAIN_MACROS:
      _gin_flags(p, command)
      continue
    p.add_argument('runs', nargs='*', help='compare: run directories (or NAME=PATH); similarity: prompt '
                   'files or directories of them (or NAME=PATH)')
    p.add_argument('--output_dir', default=None, help='where the table/plots (compare) or similarity.json '
                   'and similarity.png (similarity) go')
    if command == 'compare':
      p.add_argument('--reference', default=None, help='the run p-values compare against')
      p.add_argument('--within_dataset', action='store_true',
                     help='ARG averaged within each dataset first (the official script)')
      p.add_argument('--num_resamples', type=int, default=1000)
      p.add_argument('--bootstrap_seed', type=int, default=100)
    else:
      p.add_argument('--target', default=None, help='rank the other prompts as sources for it')
      p.add_argument('--top_k', type=int, default=None, help='keep the k best sources (A.7: 5)')
      p.add_argument('--threshold', type=float, default=None, help='GPM energy threshold (0.99)')
      p.add_argument('--rank', type=int, default=None, help='fixed subspace rank instead')
  return parser


def _configure_logging(args) -> None:
  """promptjax's own INFO lines (restoring, saving, resumed) on stderr; every library's with
  --alsologtostderr / --logtostderr; TensorFlow's C++ start-up noise hidden unless asked for."""
  verbose = args.alsologtostderr or args.logtostderr
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '0' if verbose else '3')
  if args.tfds_data_dir:
    os.environ['TFDS_DATA_DIR'] = args.tfds_data_dir
  level = logging.DEBUG if args.verbosity >= 1 else logging.INFO
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter('%(levelname).1s %(asctime)s %(name)s] %(message)s', '%H:%M:%S'))
  ours = logging.getLogger('promptjax')
  if not any(getattr(h, '_promptjax', False) for h in ours.handlers):
    handler._promptjax = True  # pylint: disable=protected-access
    ours.addHandler(handler)
    ours.propagate = False
  ours.setLevel(level)
  if args.command in _MAIN_MACROS and not verbose:
    _quiet_import('tensorflow')   # its C++ start-up lines (oneDNN, CUDA stubs) ignore TF_CPP_MIN_LOG_LEVEL
  if verbose:
    logging.getLogger().setLevel(level)
    try:
      from absl import logging as absl_logging
      absl_logging.set_verbosity(absl_logging.DEBUG if args.verbosity >= 1 else absl_logging.INFO)
      absl_logging.set_stderrthreshold('info')
    except ImportError:
      pass


def _quiet_import(module: str) -> None:
  """Imports `module` with the process's stderr (file descriptor 2) sent to /dev/null."""
  import importlib
  saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(null, 2)
  try:
    importlib.import_module(module)
  except ImportError:
    pass
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(null)


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    argv, bindings = split_gin_args(argv)
  except SystemExit as e:
    print(e, file=sys.stderr)
    return EXIT_USAGE
  args = build_parser().parse_args(argv)
  _configure_logging(args)
  try:
    if args.command == 'train':
      return run_train(args, bindings)
    if args.command in ('eval', 'fewshot'):
      return run_eval(args, bindings)
    if args.command == 'downstream':
      return run_downstream(args, bindings)
    if bindings:
      raise CliError(f'`promptjax {args.command}` takes no gin bindings ({bindings[0]}).')
    if args.command == 'compare':
      return run_compare(args)
    if args.command == 'similarity':
      return run_similarity(args)
  except (CliError, PromptjaxError) as e:
    # gin appends "In call to configurable ..." to exceptions raised inside configurables: drop it.
    print(f"error: {str(e).split(chr(10) + '  In call to configurable')[0]}", file=sys.stderr)
    return EXIT_USAGE
  except ValueError as e:
    if 'gin' in type(e).__module__ or 'REQUIRED' in str(e) or 'gin' in str(e).lower():
      print(f'error: bad gin configuration: {str(e).splitlines()[0]}', file=sys.stderr)
      return EXIT_USAGE
    raise
  return 0


def train_main() -> int:
  return main(['train'] + sys.argv[1:])


if __name__ == '__main__':
  sys.exit(main())
