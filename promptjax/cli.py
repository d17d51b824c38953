"""``promptjax train|eval|fewshot|compare``: gin-configured entry points that speak T5X's flags.

  promptjax train --gin_file=promptjax/configs/runs/train.gin --gin_file=promptjax/configs/models/t5_1_1_tiny.gin \\
      --gin_file=promptjax/configs/mtl_prompt.gin --gin.MODEL_DIR="'/tmp/run'" \\
      --gin.MIXTURE_OR_TASK_NAME="'mini_train'" --gin.TRAIN_STEPS=100
  python -m promptjax.train ...         # the same as `promptjax train ...`
  promptjax eval --gin_file=runs/eval.gin --gin_file=models/t5_1_1_tiny.gin --gin_file=mtl_prompt.gin \
      --gin.CHECKPOINT_PATH="'/tmp/run'" --gin.EVAL_OUTPUT_DIR="'/tmp/run/eval/0shot'" \
      --gin.MIXTURE_OR_TASK_NAME="'mini_heldout_rank_classification'"
  promptjax fewshot --gin_file=runs/fewshot.gin ...   # the same macros; 16-shot prompt tuning first
  promptjax downstream --gin_file=runs/downstream.gin ...   # Qin et al.'s CrossFit protocol (TARGET_TASKS)
  promptjax compare RUN_A RUN_B ... [--output_dir DIR] [--reference NAME] [--within_dataset]
  promptjax similarity PROMPT_OR_DIR ... [--target NAME] [--top_k 5] [--threshold 0.99 | --rank K]
      [--output_dir DIR]                 # Qin et al. A.6-A.7 task similarity of tuned prompts

Flags (T5X's): ``--gin_file`` (repeatable), ``--gin_bindings`` (repeatable), ``--gin.NAME=VALUE``
(shorthand for ``--gin_bindings='NAME = VALUE'``), ``--gin_search_paths`` (comma-separated; the repository's
``promptjax/configs/`` and its parent are always searched), ``--dry_run`` (shapes, shardings and memory only),
and for multi-host runs ``--coordinator_address``, ``--process_count``, ``--process_index``, or
``--multiprocess`` to let JAX detect them (Cloud TPU pods, SLURM).

Gin is only used here: the library underneath takes plain arguments. Every failure a user can cause
(missing gin file, unknown binding, unknown task, mesh larger than the devices, mismatched checkpoint,
NaN loss) prints one ``error:`` line naming the fix and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence, Tuple

import gin

from promptjax.errors import PromptjaxError

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
    gin.parse_config_files_and_bindings(resolved, list(bindings), finalize_config=False)
  except (ValueError, KeyError, SyntaxError, IOError) as e:
    msg = str(e).strip().splitlines()
    raise CliError('bad gin configuration: ' + ' '.join(m.strip() for m in msg[:3])) from e
  finally:
    logging.getLogger().removeFilter(quiet)


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
  if args.multiprocess and not args.process_count:
    import jax
    jax.distributed.initialize()  # auto-detected on Cloud TPU pods, SLURM, Open MPI, ...
    return
  if args.process_count and args.process_count > 1:
    import jax
    if jax.config.jax_platforms in (None, '', 'cpu') or os.environ.get('JAX_PLATFORMS') == 'cpu':
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=args.coordinator_address,
                               num_processes=args.process_count, process_id=args.process_index)


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


def _write_config(model_dir: str) -> None:
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, 'config.gin'), 'w') as f:
    f.write(gin.config_str())


def _configure(args, bindings: List[str]) -> None:
  """Registers the configurables and parses the gin files and bindings of a gin-configured command."""
  register_gin_configurables()
  parse_gin(args.gin_file, list(args.gin_bindings) + bindings,
            [p for s in args.gin_search_paths for p in s.split(',') if p])


def run_train(args, bindings: List[str]) -> int:
  _configure(args, bindings)
  _check_required_macros(dry_run=args.dry_run)
  from promptjax.training import trainer
  if args.dry_run:
    report = gin.get_configurable(trainer.train)(dry_run=True)
    print(report)
    return 0
  _init_distributed(args)
  model_dir = _macro('MODEL_DIR')
  if isinstance(model_dir, str):
    import jax
    if jax.process_index() == 0:
      _write_config(model_dir)
  result = gin.get_configurable(trainer.train)()
  first, last = (min(result.losses), max(result.losses)) if result.losses else (None, None)
  if first is not None:
    print(f'step {first}: loss {result.losses[first]:.4f} ... step {last}: loss {result.losses[last]:.4f}'
          + (' (preempted: checkpoint saved)' if result.preempted else ''))
  return 0


def run_eval(args, bindings: List[str]) -> int:
  _configure(args, bindings)
  _check_required_macros()
  from promptjax import evaluation
  output_dir = _macro('EVAL_OUTPUT_DIR')
  if isinstance(output_dir, str):
    _write_config(output_dir)
  fewshot = gin.query_parameter('promptjax.evaluation.evaluate.fewshot') if args.command == 'fewshot' else None
  if args.command == 'fewshot' and fewshot is None:
    raise CliError('`promptjax fewshot` needs a few-shot configuration: add --gin_file=runs/fewshot.gin.')
  kwargs = {} if args.command == 'fewshot' else {'fewshot': None}
  summary = gin.get_configurable(evaluation.evaluate)(**kwargs)
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
  from promptjax import evaluation
  summary = gin.get_configurable(evaluation.downstream_run)()
  for task, score in summary['tasks'].items():
    print(f'{task}: test {score * 100:.1f} (mean over seeds)')
  if 'arg_vs_baseline' in summary:
    print(f'ARG over {summary["baseline"]}: {summary["arg_vs_baseline"] * 100:.1f}')
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


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    argv, bindings = split_gin_args(argv)
  except SystemExit as e:
    print(e, file=sys.stderr)
    return EXIT_USAGE
  parser = argparse.ArgumentParser(prog='promptjax', description=__doc__.split('\n')[0])
  parser.add_argument('command', choices=('train', 'eval', 'fewshot', 'downstream', 'compare', 'similarity'))
  parser.add_argument('runs', nargs='*', help='compare: run directories (or NAME=PATH); similarity: prompt '
                      'files or directories of them (or NAME=PATH)')
  parser.add_argument('--output_dir', default=None, help='compare: where table.md and the plots go; '
                      'similarity: where similarity.json and similarity.png go')
  parser.add_argument('--target', default=None, help='similarity: rank the other prompts as sources for it')
  parser.add_argument('--top_k', type=int, default=None, help='similarity: keep the k best sources (A.7: 5)')
  parser.add_argument('--threshold', type=float, default=None, help='similarity: GPM energy threshold (0.99)')
  parser.add_argument('--rank', type=int, default=None, help='similarity: fixed subspace rank instead')
  parser.add_argument('--reference', default=None, help='compare: the run p-values compare against')
  parser.add_argument('--within_dataset', action='store_true',
                      help='compare: ARG averaged within each dataset first (the official script)')
  parser.add_argument('--num_resamples', type=int, default=1000)
  parser.add_argument('--bootstrap_seed', type=int, default=100)
  parser.add_argument('--gin_file', action='append', default=[])
  parser.add_argument('--gin_bindings', action='append', default=[])
  parser.add_argument('--gin_search_paths', action='append', default=[])
  parser.add_argument('--dry_run', action='store_true')
  parser.add_argument('--coordinator_address', default=None)
  parser.add_argument('--process_count', type=int, default=None)
  parser.add_argument('--process_index', type=int, default=None)
  parser.add_argument('--multiprocess', action='store_true',
                      help='call jax.distributed.initialize() with auto-detection (TPU pods, SLURM)')
  args = parser.parse_args(argv)

  if args.runs and args.command not in ('compare', 'similarity'):
    print(f'error: unexpected arguments {args.runs} (only `compare` and `similarity` take paths)', file=sys.stderr)
    return EXIT_USAGE
  try:
    if args.command == 'train':
      return run_train(args, bindings)
    if args.command in ('eval', 'fewshot'):
      return run_eval(args, bindings)
    if args.command == 'downstream':
      return run_downstream(args, bindings)
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
