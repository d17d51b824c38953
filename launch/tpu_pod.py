#!/usr/bin/env python3
"""Cloud TPU VM pods: create, set up, train on every worker, stop, delete (see launch/README.md).

  launch/tpu_pod.py create --name pj --zone europe-west4-a --accelerator-type v3-64 [--spot]
  launch/tpu_pod.py setup  --name pj --zone europe-west4-a           # copy this checkout, venv, jax[tpu]
  launch/tpu_pod.py run    --name pj --zone europe-west4-a --accelerator-type v3-64 \\
      --gin_file=paper/wu2022_large_mtl_prompt.gin --model_dir=gs://bucket/wu2022_large \\
      --p3-dir=gs://bucket/p3 --t5-vocab=gs://t5-data/vocabs/cc_all.32000/sentencepiece.model \\
      --gin.MESH_SHAPE='(64, 1)'
  launch/tpu_pod.py logs   --name pj --zone europe-west4-a [--follow]
  launch/tpu_pod.py stop   --name pj --zone europe-west4-a           # SIGTERM: checkpoint, then exit
  launch/tpu_pod.py delete --name pj --zone europe-west4-a

``--print`` (alias ``--dry-run``) prints the commands as a bash script and runs nothing. Arguments
``--gin.NAME=VALUE`` and everything after ``--`` go to the trainer unchanged.
"""

from __future__ import annotations

import os
import re
import sys
from typing import List, NamedTuple, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # pylint: disable=wrong-import-position

LIBTPU_URL = 'https://storage.googleapis.com/jax-releases/libtpu_releases.html'
DEFAULT_PYTHON = 'python3.11'  # setup.py: python_requires >= 3.11; Ubuntu 22.04 images ship 3.10
REMOTE_TARBALL = 'promptjax-src.tgz'
TAR_EXCLUDES = ('.git', '.venv', '__pycache__', '*.egg-info', '.pytest_cache', './logs', './demo_output',
                './launch/runs', './benchmarks/results')

# Runtime (software) versions per TPU generation (cloud.google.com/tpu/docs/runtimes).
DEFAULT_VERSIONS = {
    'v2': 'tpu-ubuntu2204-base',
    'v3': 'tpu-ubuntu2204-base',
    'v4': 'tpu-ubuntu2204-base',
    'v5litepod': 'v2-alpha-tpuv5-lite',
    'v5p': 'v2-alpha-tpuv5',
    'v6e': 'v2-alpha-tpuv6e',
}
_ACCEL = re.compile(r'^(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)$')
_ACCEL_EXAMPLES = 'v3-64, v4-32, v5p-128, v5litepod-16 or v6e-16'


class Topology(NamedTuple):
  accelerator: str
  generation: str
  workers: int   # TPU VM hosts = JAX processes
  devices: int   # JAX devices in the slice

  def describe(self) -> str:
    workers = f'{self.workers} TPU VM worker' + ('s' if self.workers > 1 else '')
    return f'{self.accelerator}: {workers} x {self.devices // self.workers} JAX devices = {self.devices} devices'


def parse_accelerator(text: str) -> Topology:
  """``v3-64`` -> 8 workers, 64 devices. The number counts TensorCores (v2-v5p) or chips (v5e, v6e).

  v2/v3: 8 cores (4 chips, 2 devices each) per worker. v4/v5p: 2 cores per chip form one (megacore)
  device, 4 chips per worker. v5e (v5litepod)/v6e: one device per chip; 1, 4 or 8 chips on one
  worker, larger slices 4 chips per worker.
  """
  m = _ACCEL.match(str(text).strip().lower())
  if not m:
    raise C.LaunchError(f'cannot parse accelerator type {text!r}: expected GENERATION-SIZE such as '
                        f'{_ACCEL_EXAMPLES}')
  gen, size = m.group(1), int(m.group(2))
  if gen in ('v2', 'v3', 'v4', 'v5p'):
    if size < 8 or size % 8:
      raise C.LaunchError(f'cannot parse accelerator type {text!r}: {gen} sizes count TensorCores in '
                          f'multiples of 8 ({gen}-8, {gen}-32, ...)')
    devices = size if gen in ('v2', 'v3') else size // 2
    return Topology(f'{gen}-{size}', gen, size // 8, devices)
  if size in (1, 4, 8):
    return Topology(f'{gen}-{size}', gen, 1, size)
  if size % 16:
    raise C.LaunchError(f'cannot parse accelerator type {text!r}: {gen} sizes are 1, 4, 8 or a multiple '
                        f'of 16 chips')
  return Topology(f'{gen}-{size}', gen, size // 4, size)


# ------------------------------------------------------------------------------------------------

def _gcloud(args, verb: str, *rest: str, ssh: bool = False) -> List[str]:
  cmd = ['gcloud', 'compute', 'tpus', 'tpu-vm', verb, *rest, f'--zone={args.zone}']
  if args.project:
    cmd.append(f'--project={args.project}')
  if ssh and args.internal_ip:
    cmd.append('--internal-ip')
  if ssh and args.tunnel_through_iap:
    cmd.append('--tunnel-through-iap')
  return cmd


def _ssh(args, remote: Sequence[str], worker: str = 'all') -> List[str]:
  """``gcloud ... ssh NAME --worker=all --command=SCRIPT``: SCRIPT is one bash line, run in $HOME."""
  return _gcloud(args, 'ssh', args.name, f'--worker={worker}', ssh=True) + ['--command=' + ' && '.join(remote)]


def _dir(args) -> str:
  return C.quote(args.remote_dir)


def _running(pidfile: str) -> str:
  return f'[ -f {pidfile} ] && kill -0 "$(cat {pidfile})" 2>/dev/null'


def _jax_version() -> Optional[str]:
  try:
    with open(os.path.join(C.REPO_DIR, 'setup.py')) as f:
      m = re.search(r"""['"]jax==([\w.]+)['"]""", f.read())
    return m.group(1) if m else None
  except OSError:
    return None


def cmd_create(args, train_args) -> int:
  topo = parse_accelerator(args.accelerator_type)
  cmd = _gcloud(args, 'create', args.name, f'--accelerator-type={topo.accelerator}',
                f'--version={args.version or DEFAULT_VERSIONS[topo.generation]}')
  cmd += ['--spot'] if args.spot else ['--preemptible'] if args.preemptible else []
  notes = [topo.describe() + f'; a multi-host MESH_SHAPE (data, model) must use all {topo.devices}']
  return C.execute([cmd], args.print_only, notes)


def cmd_setup(args, train_args) -> int:
  d = _dir(args)
  py = C.quote(args.python)
  cmds, remote = [], []
  if args.repo_url:
    ref = C.quote(args.ref)
    remote.append(f'if [ -d {d}/.git ]; then git -C {d} fetch -q origin {ref}; else git clone -q '
                  f'{C.quote(args.repo_url)} {d} && git -C {d} fetch -q origin {ref}; fi')
    remote.append(f'git -C {d} checkout -q --detach FETCH_HEAD')
  else:
    tarball = f'/tmp/promptjax-src-{args.name}.tgz'
    cmds.append(['tar', '-czf', tarball] + [f'--exclude={x}' for x in TAR_EXCLUDES] + ['-C', C.REPO_DIR, '.'])
    cmds.append(_gcloud(args, 'scp', tarball, f'{args.name}:{REMOTE_TARBALL}', '--worker=all', ssh=True))
    remote += [f'mkdir -p {d}', f'tar -xzf {REMOTE_TARBALL} -C {d}', f'rm -f {REMOTE_TARBALL}']
  jax_req = f'jax[tpu]=={args.jax_version}' if args.jax_version else 'jax[tpu]'
  remote += [
      # Needs the internet on every worker (apt, PyPI, storage.googleapis.com; Cloud NAT without public IPs).
      f"if ! {py} -c 'import ensurepip, venv' >/dev/null 2>&1; then sudo apt-get update -q && "
      f'sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q {py} {py}-venv; fi',
      f'cd {d}',
      f'(test -x .venv/bin/python || {py} -m venv .venv)',
      '.venv/bin/python -m pip install -q --upgrade pip',
      '.venv/bin/python -m pip install -q -c requirements/constraints.txt -e .',
      f'.venv/bin/python -m pip install -q -c requirements/constraints.txt {C.quote(jax_req)} -f {LIBTPU_URL}',
      ".venv/bin/python -c 'import jax, promptjax; print(\"promptjax ready, jax\", jax.__version__)'",
  ]
  cmds.append(_ssh(args, remote))
  return C.execute(cmds, args.print_only)


def train_command(args, train_args: Sequence[str], topo: Topology) -> List[str]:
  """The trainer's argv on every worker (after checking MESH_SHAPE / BATCH_SIZE against the slice)."""
  argv, gin_paths = C.train_argv(args, train_args, C.REPO_DIR, False, '.venv/bin/python')
  if topo.workers > 1:
    # Makes the trainer call jax.distributed.initialize(), which reads the coordinator and this worker's
    # index from the TPU metadata; Orbax needs it for multi-host checkpoints.
    argv.append(f'--process_count={topo.workers}')
  C.check_topology(args, gin_paths, train_args, C.REPO_DIR, topo.devices, topo.workers,
                   f'a {topo.accelerator}')
  return argv


def cmd_run(args, train_args) -> int:
  topo = parse_accelerator(args.accelerator_type)
  argv = train_command(args, train_args, topo)
  notes = [topo.describe()]
  if args.model_dir and topo.workers > 1 and not args.model_dir.startswith('gs://'):
    notes.append(f'warning: MODEL_DIR {args.model_dir} is not on GCS: every worker must see the same '
                 'MODEL_DIR (they all write checkpoints)')
  log = C.quote(args.log_file)
  pidfile = C.quote(_pidfile(args))
  remote = [
      f'cd {_dir(args)}',
      f'mkdir -p {C.quote(os.path.dirname(args.log_file) or ".")}',
      f'if {_running(pidfile)}; then echo "error: $(hostname): promptjax.train is already running '
      f'(pid $(cat {pidfile})); stop it first" >&2; exit 1; fi',
  ]
  remote += [f'export {name}={C.quote(value)}' for name, value in C.env_vars(args)]
  remote.append(f'{{ nohup {C.join(argv)} > {log} 2>&1 < /dev/null & echo $! > {pidfile}; }}')
  remote.append(f'echo "$(hostname): started promptjax.train, pid $(cat {pidfile}), log '
                f'{args.remote_dir}/{args.log_file}"')
  return C.execute([_ssh(args, remote)], args.print_only, notes)


def _pidfile(args) -> str:
  return os.path.splitext(args.log_file)[0] + '.pid'


def cmd_stop(args, train_args) -> int:
  pidfile = C.quote(_pidfile(args))
  sig = 'KILL' if args.kill else 'TERM'
  remote = [f'cd {_dir(args)}',
            f'if {_running(pidfile)}; then kill -{sig} "$(cat {pidfile})" && echo "$(hostname): sent SIG{sig} '
            f'to promptjax.train"; else echo "$(hostname): promptjax.train is not running"; fi']
  return C.execute([_ssh(args, remote)], args.print_only)


def cmd_logs(args, train_args) -> int:
  tail = ['tail', '-n', str(args.lines)] + (['-F'] if args.follow else [])
  remote = [C.join(tail + [f'{args.remote_dir}/{args.log_file}'])]
  return C.execute([_ssh(args, remote, worker=str(args.worker))], args.print_only)


def cmd_delete(args, train_args) -> int:
  cmd = _gcloud(args, 'delete', args.name) + (['--quiet'] if args.yes else [])
  return C.execute([cmd], args.print_only)


# ------------------------------------------------------------------------------------------------

def _name(text: str) -> str:
  if not re.match(r'^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$', text):
    raise C.LaunchError(f'bad TPU name {text!r}: use lowercase letters, digits and hyphens, starting with a '
                        'letter')
  return text


def build_parser() -> C.ArgParser:
  common = C.ArgParser(add_help=False)
  common.add_argument('--name', required=True, type=_name, help='TPU VM name')
  common.add_argument('--zone', required=True, help='e.g. europe-west4-a (v3), us-central2-b (v4)')
  common.add_argument('--project', help='Google Cloud project (default: gcloud config)')
  common.add_argument('--internal-ip', action='store_true', help='ssh/scp over internal IPs')
  common.add_argument('--tunnel-through-iap', action='store_true', help='ssh/scp through IAP')
  common.add_argument('--remote-dir', default='promptjax',
                      help='the checkout on each worker, relative to $HOME (default: promptjax)')
  common.add_argument('--print', '--dry-run', dest='print_only', action='store_true',
                      help='print the commands instead of running them')

  p = C.ArgParser(prog='tpu_pod.py', description=__doc__.split('\n')[0])
  sub = p.add_subparsers(dest='command', metavar='{create,setup,run,logs,stop,delete}', parser_class=C.ArgParser)
  sub.required = True

  s = sub.add_parser('create', parents=[common], help='create the TPU VM (pod slice)')
  s.add_argument('--accelerator-type', '--accelerator_type', dest='accelerator_type', required=True,
                 help=f'e.g. {_ACCEL_EXAMPLES}')
  s.add_argument('--version', help='TPU runtime; default per generation (tpu-ubuntu2204-base for v2-v4)')
  g = s.add_mutually_exclusive_group()
  g.add_argument('--spot', action='store_true', help='Spot capacity (can be preempted at any time)')
  g.add_argument('--preemptible', action='store_true', help='legacy preemptible capacity')
  s.set_defaults(fn=cmd_create)

  s = sub.add_parser('setup', parents=[common], help='checkout + venv + jax[tpu] on every worker (needs internet)')
  s.add_argument('--repo-url', help='git clone this URL on the workers instead of copying this checkout')
  s.add_argument('--ref', default='HEAD', help='branch, tag or commit with --repo-url (default: HEAD)')
  s.add_argument('--python', default=DEFAULT_PYTHON, help=f'interpreter for the venv (default: {DEFAULT_PYTHON})')
  s.add_argument('--jax-version', default=_jax_version(), help='jax[tpu] version (default: setup.py\'s jax pin)')
  s.set_defaults(fn=cmd_setup)

  s = sub.add_parser('run', parents=[common], help='start training on every worker (nohup, logs to a file)')
  s.add_argument('--accelerator-type', '--accelerator_type', dest='accelerator_type', required=True,
                 help='the slice created, e.g. v3-64: sets --process_count and checks MESH_SHAPE')
  C.add_train_args(s)
  s.add_argument('--log-file', default='logs/train.log', help='relative to --remote-dir (default: logs/train.log)')
  s.set_defaults(fn=cmd_run)

  s = sub.add_parser('logs', parents=[common], help="show a worker's training log")
  s.add_argument('--worker', type=int, default=0)
  s.add_argument('--lines', type=int, default=100)
  s.add_argument('--follow', '-f', action='store_true')
  s.add_argument('--log-file', default='logs/train.log')
  s.set_defaults(fn=cmd_logs)

  s = sub.add_parser('stop', parents=[common], help='SIGTERM the trainer on every worker (it checkpoints)')
  s.add_argument('--kill', action='store_true', help='SIGKILL instead (no final checkpoint)')
  s.add_argument('--log-file', default='logs/train.log')
  s.set_defaults(fn=cmd_stop)

  s = sub.add_parser('delete', parents=[common], help='delete the TPU VM')
  s.add_argument('--yes', action='store_true', help="don't ask for confirmation")
  s.set_defaults(fn=cmd_delete)
  return p


def _main(argv: List[str]) -> int:
  own, train_args = C.split_train_args(argv)
  args = build_parser().parse_args(own)
  if train_args and args.command != 'run':
    raise C.LaunchError(f'{train_args[0]}: only `run` takes trainer arguments')
  return args.fn(args, train_args)


def main(argv: Optional[Sequence[str]] = None) -> int:
  return C.main_wrapper(_main, argv)


if __name__ == '__main__':
  sys.exit(main())
