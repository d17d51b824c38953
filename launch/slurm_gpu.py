#!/usr/bin/env python3
"""Multi-node GPU training under SLURM: writes an sbatch script and submits it (see launch/README.md).

  launch/slurm_gpu.py --nodes 8 --gpus-per-node 8 --time 2-00:00:00 --partition gpu --account myproj \\
      --gin_file=paper/wu2022_large_mtl_prompt.gin --model_dir=/shared/runs/wu2022_large \\
      --p3-dir=/shared/data/p3 --t5-vocab=/shared/vocab/sentencepiece.model --gin.MESH_SHAPE='(64, 1)'

One process per node owning all of that node's GPUs (``--ntasks-per-node=1``): the layout the trainer's
mesh expects (promptjax/training/partitioning.py: "one process per host with all its local devices"), with
one input pipeline per node. ``JAX_LOCAL_DEVICE_IDS`` is set because JAX's SLURM auto-detection would
otherwise give each process only GPU ``$SLURM_LOCALID``. Process i runs ``python -m promptjax.train ...
--coordinator_address=$MASTER_ADDR:$MASTER_PORT --process_count=$SLURM_NTASKS --process_index=$SLURM_PROCID``
with MASTER_ADDR the job's first node.

``--print`` (alias ``--dry-run``) prints what it would run (writing the script, then ``sbatch``) as a bash
script and runs nothing. Arguments ``--gin.NAME=VALUE`` and everything after ``--`` go to the trainer.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import sys
from typing import List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # pylint: disable=wrong-import-position

HEREDOC = 'PROMPTJAX_SBATCH_EOF'
# Slurm --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or UNLIMITED.
_TIME = re.compile(r'^(\d+|\d+:\d\d|\d+:\d\d:\d\d|\d+-\d+|\d+-\d+:\d\d|\d+-\d+:\d\d:\d\d|unlimited|infinite)$',
                   re.I)
_JOB_NAME = re.compile(r'^[\w.+-]+$')


def build_parser() -> C.ArgParser:
  p = C.ArgParser(prog='slurm_gpu.py', description=__doc__.split('\n')[0])
  p.add_argument('--nodes', required=True, help='number of nodes (one trainer process each)')
  p.add_argument('--gpus-per-node', '--gpus_per_node', dest='gpus_per_node', default='8',
                 help='GPUs per node, all owned by the node\'s process (default: 8)')
  p.add_argument('--time', help='wall-clock limit, e.g. 24:00:00 or 2-00:00:00 (default: the partition\'s)')
  p.add_argument('--partition', help='SLURM partition')
  p.add_argument('--account', help='SLURM account')
  p.add_argument('--job-name', default='promptjax', help='job name (default: promptjax)')
  p.add_argument('--cpus-per-node', help='CPUs for each node\'s process (input pipeline); default: SLURM\'s')
  p.add_argument('--exclusive', action='store_true', help='whole nodes only (#SBATCH --exclusive)')
  p.add_argument('--sbatch-option', action='append', default=[], metavar='OPT',
                 help='extra #SBATCH line (repeatable), e.g. --sbatch-option=--qos=high or '
                      '--sbatch-option=--gres=gpu:8 on clusters without --gpus-per-node')
  p.add_argument('--port', help='coordinator port (default: 20000 + job id %% 20000)')
  p.add_argument('--repo-dir', default=C.REPO_DIR,
                 help='the checkout on the shared file system (default: this one)')
  p.add_argument('--python', help='interpreter with promptjax and jax[cuda12] (default: REPO/.venv/bin/python)')
  p.add_argument('--setup', action='append', default=[], metavar='CMD',
                 help='shell line run on each node before training (repeatable), e.g. "module load cuda/12.4"')
  p.add_argument('--script', help='where to write the sbatch script (default: REPO/launch/runs/JOB-TIME.sbatch)')
  p.add_argument('--output', help='SLURM log file (default: REPO/launch/runs/%%x-%%j.out)')
  C.add_train_args(p)
  p.add_argument('--print', '--dry-run', dest='print_only', action='store_true',
                 help='print the script and the sbatch command instead of running anything')
  return p


def _sbatch_option(opt: str) -> str:
  if not opt.startswith('-') or '\n' in opt:
    raise C.LaunchError(f'--sbatch-option {opt!r}: expected one sbatch flag such as --qos=high')
  return opt


def make_script(args, train_args: Sequence[str]) -> str:
  nodes = C.positive_int(args.nodes, 'node count (--nodes)')
  gpus = C.positive_int(args.gpus_per_node, 'GPUs per node (--gpus-per-node)')
  if args.time and not _TIME.match(args.time):
    raise C.LaunchError(f'cannot parse --time {args.time!r}: use minutes, HH:MM:SS or D-HH:MM:SS')
  if not _JOB_NAME.match(args.job_name):
    raise C.LaunchError(f'bad --job-name {args.job_name!r}: use letters, digits, ".", "_", "+" and "-"')
  if args.port is not None:
    port = C.positive_int(args.port, 'coordinator port (--port)')
    if port > 65535:
      raise C.LaunchError(f'cannot parse coordinator port {args.port!r}: expected 1-65535')
  repo = os.path.abspath(args.repo_dir)
  if not os.path.isdir(repo):
    raise C.LaunchError(f'--repo-dir {args.repo_dir!r} is not a directory')
  python = args.python or os.path.join(repo, '.venv', 'bin', 'python')
  argv, gin_paths = C.train_argv(args, train_args, repo, True, python)
  C.check_topology(args, gin_paths, train_args, repo, nodes * gpus, nodes,
                   f'{nodes} node{"s" if nodes > 1 else ""} x {gpus} GPUs')
  env = C.env_vars(args)

  sb = [f'--job-name={args.job_name}', f'--nodes={nodes}', '--ntasks-per-node=1', f'--gpus-per-node={gpus}']
  cpus = C.positive_int(args.cpus_per_node, 'CPU count (--cpus-per-node)') if args.cpus_per_node else None
  if cpus:
    sb.append(f'--cpus-per-task={cpus}')  # repeated on srun: newer SLURM does not pass it on
  sb += [f'--time={args.time}'] if args.time else []
  sb += [f'--partition={args.partition}'] if args.partition else []
  sb += [f'--account={args.account}'] if args.account else []
  sb += ['--exclusive'] if args.exclusive else []
  sb.append(f'--output={output_path(args, repo)}')
  sb += [_sbatch_option(o) for o in args.sbatch_option]

  lines = ['#!/bin/bash'] + [f'#SBATCH {o}' for o in sb] + [
      '# Written by launch/slurm_gpu.py: one promptjax.train process per node, owning all its GPUs.',
      'set -eo pipefail',
      '',
      f'cd {C.quote(repo)}',
  ]
  lines += list(args.setup)
  lines.append('set -u')
  lines += [f'export {name}={C.quote(value)}' for name, value in env]
  lines += [
      '# JAX would give each SLURM task only GPU $SLURM_LOCALID; this process drives all of them.',
      f'export JAX_LOCAL_DEVICE_IDS={",".join(str(i) for i in range(gpus))}',
      'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
      f'MASTER_PORT={port}' if args.port is not None else 'MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))',
      'export MASTER_ADDR MASTER_PORT',
      f'echo "promptjax: $SLURM_NTASKS processes x {gpus} GPUs, coordinator $MASTER_ADDR:$MASTER_PORT"',
      '',
      'TRAIN=(',
  ]
  lines += [f'  {C.join(argv[:3])}'] + [f'  {C.quote(a)}' for a in argv[3:]]
  lines += [
      '  --coordinator_address="$MASTER_ADDR:$MASTER_PORT"',
      '  --process_count="$SLURM_NTASKS"',
      ')',
      '# $SLURM_PROCID differs per task, so it is expanded inside each task.',
      'srun --ntasks="$SLURM_NTASKS" --ntasks-per-node=1 --kill-on-bad-exit=1'
      + (f' --cpus-per-task={cpus}' if cpus else '') + ' \\',
      '  bash -c \'exec "$@" --process_index="$SLURM_PROCID"\' promptjax-train "${TRAIN[@]}"',
  ]
  return '\n'.join(lines) + '\n'


def output_path(args, repo: str) -> str:
  return args.output or os.path.join(repo, 'launch', 'runs', '%x-%j.out')


def script_path(args, repo: str) -> str:
  if args.script:
    return os.path.abspath(args.script)
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  return os.path.join(repo, 'launch', 'runs', f'{args.job_name}-{stamp}.sbatch')


def _dirs(args, repo: str, path: str) -> List[str]:
  dirs = [os.path.dirname(path)]
  out_dir = os.path.dirname(output_path(args, repo))
  if '%' not in out_dir:  # SLURM does not create the log's directory
    dirs.append(out_dir)
  return sorted(set(d for d in dirs if d))


def _main(argv: List[str]) -> int:
  own, train_args = C.split_train_args(argv)
  args = build_parser().parse_args(own)
  script = make_script(args, train_args)
  repo = os.path.abspath(args.repo_dir)
  path = script_path(args, repo)
  dirs = _dirs(args, repo, path)
  if args.print_only:
    print(C.join(['mkdir', '-p'] + dirs))
    print(f"cat > {C.quote(path)} <<'{HEREDOC}'")
    print(script, end='')
    print(HEREDOC)
    print(C.join(['sbatch', path]))
    return 0
  if shutil.which('sbatch') is None:
    raise C.LaunchError('sbatch not found on PATH (run this on a SLURM login node, or use --print)')
  for d in dirs:
    os.makedirs(d, exist_ok=True)
  with open(path, 'w') as f:
    f.write(script)
  print(f'wrote {path}', file=sys.stderr)
  return C.execute([['sbatch', path]], False)


def main(argv: Optional[Sequence[str]] = None) -> int:
  return C.main_wrapper(_main, argv)


if __name__ == '__main__':
  sys.exit(main())
