"""What both launchers share: one-line errors, shell quoting, gin file checks, the mesh check, printing.

Standard library only, so the launchers run with any ``python3`` (>= 3.8) on a laptop or login node
without the project's virtualenv; nothing here imports JAX or promptjax.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Iterable, List, Optional, Sequence, Tuple

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(REPO_DIR, 'promptjax', 'configs')
EXIT_USAGE = 2

# Data locations the tasks read (promptjax/tasks/config.py): launcher flag -> environment variable.
DATA_ENV_FLAGS = (
    ('p3_dir', 'PROMPTJAX_P3_DIR', 'P3 TFRecords (the d4_train / d4_dev / d4_score_eval mixtures)'),
    ('crossfit_dir', 'PROMPTJAX_CROSSFIT_DIR', 'CrossFit TSVs'),
    ('text_dir', 'PROMPTJAX_TEXT_DIR', 'plain-text corpus for the self-supervised tasks'),
    ('t5_vocab', 'PROMPTJAX_T5_VOCAB', 'the T5 SentencePiece model (e.g. gs://t5-data/vocabs/cc_all.32000/'
                                       'sentencepiece.model)'),
)


class LaunchError(Exception):
  """A problem the user can fix; printed as one ``error:`` line, exit status 2."""


class ArgParser(argparse.ArgumentParser):
  """argparse, but a usage problem is one ``error:`` line (no usage dump) and exit status 2."""

  def error(self, message: str):
    raise LaunchError(f'{message} (see {self.prog} --help)')


def fail(message: str) -> int:
  print(f'error: {message}', file=sys.stderr)
  return EXIT_USAGE


# ------------------------------------------------------------------------------------------------
# Quoting.

_SAFE = re.compile(r'^[\w@%+=:,./-]+$')
_FLAG = re.compile(r'^(--?[\w.-]+=)(.*)$', re.S)


def quote(arg: str) -> str:
  """Quotes one argument for bash; ``--gin.X='v'`` comes out as ``--gin.X="'v'"``, as people type it.

  Always round-trips through bash and `shlex.split`. Double quotes are used only for text without
  ``"``, ``$``, `` ` ``, ``\\`` and ``!`` (history expansion), where they mean the same as single quotes.
  """
  if arg and _SAFE.match(arg):
    return arg
  m = _FLAG.match(arg)
  head, value = (m.group(1), m.group(2)) if m else ('', arg)
  if m and not _SAFE.match(head):
    head, value = '', arg
  if "'" not in value:
    return head + shlex.quote(value) if value else head + "''"
  if not re.search(r'["$`\\!\n]', value):
    return f'{head}"{value}"'
  return head + shlex.quote(value)


def join(argv: Iterable[str]) -> str:
  return ' '.join(quote(a) for a in argv)


def gin_string(value: str) -> str:
  """A Python/gin string literal: ``gs://b/r`` -> ``'gs://b/r'``."""
  return repr(value)


# ------------------------------------------------------------------------------------------------
# Arguments shared by the launchers.

def split_train_args(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
  """Separates trainer arguments from the launcher's: every ``--gin.NAME=VALUE`` and all after ``--``.

  They are passed to ``python -m promptjax.train`` unchanged (after the launcher's own ones).
  """
  argv = list(argv)
  after: List[str] = []
  if '--' in argv:
    i = argv.index('--')
    argv, after = argv[:i], argv[i + 1:]
  own = [a for a in argv if not a.startswith('--gin.')]
  train = [a for a in argv if a.startswith('--gin.')] + after
  for a in train:
    if a.startswith('--gin.') and '=' not in a:
      raise LaunchError(f'{a} needs a value: --gin.NAME=VALUE (a string value needs gin quotes: '
                        f'--gin.MODEL_DIR="\'gs://bucket/run\'")')
  return own, train


def add_train_args(p: argparse.ArgumentParser) -> None:
  p.add_argument('--gin_file', '--gin-file', dest='gin_file', action='append', default=[], metavar='FILE',
                 help='gin file (repeatable), a path or relative to promptjax/configs/, e.g. '
                      'paper/wu2022_large_mtl_prompt.gin (required)')
  p.add_argument('--model_dir', '--model-dir', dest='model_dir', metavar='DIR',
                 help="the run's directory, passed as --gin.MODEL_DIR=\"'DIR'\" (required)")
  for dest, env, what in DATA_ENV_FLAGS:
    p.add_argument('--' + dest.replace('_', '-'), '--' + dest, dest=dest, metavar='PATH',
                   help=f'sets {env}: {what}')
  p.add_argument('--env', action='append', default=[], metavar='NAME=VALUE',
                 help='another environment variable for the trainer (repeatable), e.g. '
                      'XLA_PYTHON_CLIENT_MEM_FRACTION=.9')
  p.add_argument('--no-mesh-check', action='store_true',
                 help="skip the launcher's check of MESH_SHAPE against the device count")


def env_vars(args) -> List[Tuple[str, str]]:
  out = [(env, getattr(args, dest)) for dest, env, _ in DATA_ENV_FLAGS if getattr(args, dest)]
  for item in args.env:
    name, sep, value = item.partition('=')
    if not sep or not re.match(r'^[A-Za-z_][A-Za-z0-9_]*$', name):
      raise LaunchError(f'--env {item!r}: expected NAME=VALUE with NAME a shell variable name')
    out.append((name, value))
  return out


def positive_int(text: str, what: str) -> int:
  try:
    n = int(str(text).strip())
  except ValueError:
    n = 0
  if n < 1:
    raise LaunchError(f'cannot parse {what} {text!r}: expected a positive integer')
  return n


# ------------------------------------------------------------------------------------------------
# Gin files.

def find_gin_file(name: str, repo_dir: str = REPO_DIR) -> Optional[str]:
  """The file the trainer would read for ``--gin_file=name`` (its search: cwd, promptjax/configs/, repo)."""
  for base in ('', os.getcwd(), os.path.join(repo_dir, 'promptjax', 'configs'), repo_dir):
    path = os.path.join(base, name) if base else name
    if os.path.isfile(path):
      return os.path.abspath(path)
  return None


def _trainer_lookup(name: str, repo_dir: str) -> Optional[str]:
  """The file ``--gin_file=name`` means to the trainer started in ``repo_dir`` (as the launchers do)."""
  for base in (repo_dir, os.path.join(repo_dir, 'promptjax', 'configs'), repo_dir):
    path = os.path.join(base, name)
    if os.path.isfile(path):
      return os.path.realpath(path)
  return None


def gin_file_arg(name: str, repo_dir: str, shared_fs: bool) -> str:
  """Checks ``name`` and returns the ``--gin_file`` value that means the same file to the trainer.

  The trainer runs in the checkout. What the user typed is kept when it means the same file there;
  otherwise the path relative to the checkout is used. A file outside the checkout is passed by its
  absolute path on a shared file system (``shared_fs``, SLURM) and refused otherwise (TPU workers get
  only the checkout).
  """
  path = find_gin_file(name, repo_dir)
  if not path:
    raise LaunchError(f'gin file {name!r} not found (looked in the working directory, '
                      f'{os.path.join(repo_dir, "promptjax", "configs")} and {repo_dir})')
  real = os.path.realpath(path)
  if not os.path.isabs(name) and _trainer_lookup(name, repo_dir) == real:
    return name
  rel = os.path.relpath(real, os.path.realpath(repo_dir))
  if not rel.startswith(os.pardir + os.sep):
    return rel
  if shared_fs:
    return real
  raise LaunchError(f'gin file {name!r} is outside the repository ({repo_dir}), so the workers will not '
                    f'have it: move it under promptjax/configs/ and run setup again')


_INCLUDE = re.compile(r'''^\s*include\s+['"](.+?)['"]\s*$''')


def _gin_lines(path: str, repo_dir: str, seen: Tuple[str, ...] = ()) -> Iterable[str]:
  """The gin file's lines with its includes spliced in (in gin's order)."""
  if path in seen or len(seen) > 20:
    return
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except OSError:
    return
  for line in lines:
    m = _INCLUDE.match(line)
    if m:
      inc = m.group(1)
      for base in (os.path.dirname(path), os.path.join(repo_dir, 'promptjax', 'configs'), repo_dir):
        cand = os.path.join(base, inc)
        if os.path.isfile(cand):
          yield from _gin_lines(os.path.abspath(cand), repo_dir, seen + (path,))
          break
      # An include found only via --gin_search_paths is not followed here; the trainer reports real misses.
    else:
      yield line


_NOT_SET = object()


def gin_macro(name: str, gin_paths: Sequence[str], train_args: Sequence[str], repo_dir: str):
  """The value a gin macro ends up with (files in order, then --gin.NAME / --gin_bindings overrides).

  Returns (value, where) or (_NOT_SET, None) when it is not set or is not a Python literal.
  """
  value, where = _NOT_SET, None
  assign = re.compile(rf'^\s*{re.escape(name)}\s*=\s*(.+?)\s*$')
  for path in gin_paths:
    for line in _gin_lines(path, repo_dir):
      m = assign.match(line.split('#', 1)[0])
      if m:
        value, where = m.group(1), os.path.relpath(path, repo_dir)
  for a in train_args:
    if a.startswith(f'--gin.{name}='):
      value, where = a.split('=', 1)[1], f'--gin.{name}'
    elif a.startswith('--gin_bindings='):
      m = assign.match(a.split('=', 1)[1])
      if m:
        value, where = m.group(1), '--gin_bindings'
  if value is _NOT_SET:
    return _NOT_SET, None
  try:
    return ast.literal_eval(value), where
  except (ValueError, SyntaxError):
    return _NOT_SET, None


def check_mesh(mesh, where: str, devices: int, processes: int, topology: str) -> None:
  """The trainer's multi-host mesh rules (promptjax/training/partitioning.py), checked before launch."""
  if mesh is None or mesh is _NOT_SET:
    return
  fix = (f'set --gin.MESH_SHAPE=\'({devices}, 1)\' (data parallel) or \'(-1, M)\' with a model axis M '
         f'dividing {devices // processes}')
  if not (isinstance(mesh, (tuple, list)) and len(mesh) == 2 and all(isinstance(x, int) for x in mesh)):
    raise LaunchError(f'MESH_SHAPE {mesh!r} from {where} is not two integers (data, model): {fix}')
  data, model = mesh
  known = (data if data > 0 else 1) * (model if model > 0 else 1)
  if -1 in mesh:
    if devices % known:
      raise LaunchError(f'MESH_SHAPE {tuple(mesh)} from {where}: {known} does not divide the {devices} '
                        f'devices of {topology}; {fix}')
    data, model = (devices // known, model) if data == -1 else (data, devices // known)
  elif data * model != devices and (processes > 1 or data * model > devices):
    raise LaunchError(f'MESH_SHAPE {tuple(mesh)} from {where} uses {data * model} devices, but {topology} '
                      f'has {devices} and a multi-host mesh must use all of them; {fix}')
  local = devices // processes
  if processes > 1 and ((model <= local and local % model) or (model > local and model % local)):
    raise LaunchError(f'MESH_SHAPE {tuple(mesh)} from {where}: the model axis {model} would straddle the '
                      f'hosts of {topology} ({local} devices each) unevenly; {fix}')


def check_batch(batch, where: str, processes: int, topology: str) -> None:
  if isinstance(batch, int) and processes > 1 and batch % processes:
    raise LaunchError(f'BATCH_SIZE={batch} from {where} is not divisible by the {processes} processes '
                      f'of {topology}')


def check_topology(args, gin_paths: Sequence[str], train_args: Sequence[str], repo_dir: str,
                   devices: int, processes: int, topology: str) -> None:
  if args.no_mesh_check:
    return
  mesh, where = gin_macro('MESH_SHAPE', gin_paths, train_args, repo_dir)
  check_mesh(mesh, where, devices, processes, topology)
  batch, where = gin_macro('BATCH_SIZE', gin_paths, train_args, repo_dir)
  check_batch(batch, where, processes, topology)


def train_argv(args, train_args: Sequence[str], repo_dir: str, shared_fs: bool,
               python: str) -> Tuple[List[str], List[str]]:
  """``python -m promptjax.train --gin_file=... --gin.MODEL_DIR='...' [extra]`` and the gin files read."""
  if not args.gin_file:
    raise LaunchError('the following arguments are required: --gin_file (e.g. '
                      '--gin_file=paper/wu2022_large_mtl_prompt.gin)')
  if not args.model_dir and not any(a.startswith('--gin.MODEL_DIR=') for a in train_args):
    raise LaunchError('the following arguments are required: --model_dir (e.g. --model_dir=gs://bucket/run)')
  gin_args = [gin_file_arg(f, repo_dir, shared_fs) for f in args.gin_file]
  argv = [python, '-m', 'promptjax.train'] + [f'--gin_file={g}' for g in gin_args]
  if args.model_dir:
    argv.append(f'--gin.MODEL_DIR={gin_string(args.model_dir)}')
  paths = [find_gin_file(f, repo_dir) for f in args.gin_file]
  return argv + list(train_args), paths


# ------------------------------------------------------------------------------------------------
# Running.

def execute(commands: Sequence[Sequence[str]], print_only: bool, comments: Sequence[str] = ()) -> int:
  """Prints the commands (as a bash script) or runs them in order, stopping at the first failure."""
  if print_only:
    for c in comments:
      print(f'# {c}')
    for cmd in commands:
      print(join(cmd))
    return 0
  missing = sorted({c[0] for c in commands if shutil.which(c[0]) is None})
  if missing:
    raise LaunchError(f'{", ".join(missing)} not found on PATH (install it, or use --print to see the '
                      f'commands)')
  for c in comments:
    print(f'# {c}', file=sys.stderr)
  for cmd in commands:
    print('+ ' + join(cmd), file=sys.stderr, flush=True)
    rc = subprocess.call(list(cmd))
    if rc:
      print(f'error: {cmd[0]} exited with status {rc}', file=sys.stderr)
      return rc
  return 0


def main_wrapper(fn, argv: Optional[Sequence[str]]) -> int:
  try:
    return fn(list(sys.argv[1:] if argv is None else argv))
  except LaunchError as e:
    return fail(str(e))
  except KeyboardInterrupt:
    return 130
