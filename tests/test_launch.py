"""launch/tpu_pod.py and launch/slurm_gpu.py: what --print shows is exactly what would run (gcloud flags,
the trainer's argv through the ssh --command quoting, the sbatch script's process wiring), nothing runs in
print mode, the commands do what they say when bash runs them (with fake gcloud/srun/python), and bad
input is one ``error:`` line with exit status 2."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(REPO, 'launch', 'tpu_pod.py')
SLURM = os.path.join(REPO, 'launch', 'slurm_gpu.py')
BASH = shutil.which('bash')
PAPER = 'paper/wu2022_large_mtl_prompt.gin'
POD = ['--name', 'pj', '--zone', 'europe-west4-a']

sys.path.insert(0, os.path.join(REPO, 'launch'))
import _common  # pylint: disable=wrong-import-position
import tpu_pod  # pylint: disable=wrong-import-position


@pytest.fixture
def fake_bin(tmp_path):
  """A PATH holding only fakes of every tool the launchers call; each records that it was called."""
  d = tmp_path / 'bin'
  d.mkdir()
  log = tmp_path / 'called'
  for tool in ('gcloud', 'sbatch', 'srun', 'scontrol', 'tar', 'ssh'):
    p = d / tool
    p.write_text(f'#!{BASH}\nprintf "%s\\0" {tool} "$@" >> {shlex.quote(str(log))}\nprintf "\\n" >> '
                 f'{shlex.quote(str(log))}\n')
    p.chmod(0o755)
  return d, log


def launch(script, *args, path=None, cwd=None):
  env = {k: v for k, v in os.environ.items() if not k.startswith('PROMPTJAX_')}
  env['PATH'] = str(path) if path else '/nonexistent'
  return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env,
                        cwd=cwd or REPO, timeout=30)


def commands(stdout):
  return [shlex.split(l) for l in stdout.splitlines() if l.strip() and not l.startswith('#')]


def ssh_command(argv):
  """The --command=... value of a gcloud ssh argv."""
  (cmd,) = [a[len('--command='):] for a in argv if a.startswith('--command=')]
  return cmd


def nohup_argv(remote):
  """The argv started by `nohup ... >` inside a remote command line."""
  tokens = shlex.split(remote)
  i = tokens.index('nohup')
  return tokens[i + 1:tokens.index('>', i)]


def assert_one_error(r, *fragments):
  assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr
  assert r.stdout == ''
  for f in fragments:
    assert f in lines[0], lines[0]


def bash_syntax_ok(text):
  r = subprocess.run([BASH, '-n'], input=text, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------------------------
# Quoting.

@pytest.mark.parametrize('arg', [
    "--gin.MODEL_DIR='gs://b/r'", '--gin.MESH_SHAPE=(64, 1)', "--gin.X={'inputs': 769, 'targets': 193}",
    'plain', '', "it's", 'a"b', '$HOME', '`x`', 'wow!', "--gin.Y='a $b \"c\" !'", 'back\\slash', 'new\nline',
    "--gin.Z=\"'dq'\""])
def test_quote_round_trips_through_bash_and_shlex(arg):
  q = _common.quote(arg)
  assert shlex.split(q) == [arg] if arg else shlex.split(q) == ['']
  out = subprocess.run([BASH, '-c', f'printf "%s\\0" {q}'], capture_output=True, text=True, env={}).stdout
  assert out == arg + '\0'


def test_quote_writes_gin_strings_the_way_people_type_them():
  assert _common.quote("--gin.MODEL_DIR='gs://b/r'") == '--gin.MODEL_DIR="\'gs://b/r\'"'
  assert _common.quote('--gin.MESH_SHAPE=(64, 1)') == "--gin.MESH_SHAPE='(64, 1)'"
  assert _common.quote('--gin_file=paper/x.gin') == '--gin_file=paper/x.gin'


# ------------------------------------------------------------------------------------------------
# TPU pod: print mode.

def test_tpu_create_prints_the_gcloud_command(fake_bin):
  path, log = fake_bin
  r = launch(TPU, 'create', *POD, '--accelerator-type', 'v3-64', '--spot', '--project', 'p1', '--print', path=path)
  assert r.returncode == 0, r.stderr
  assert commands(r.stdout) == [['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'pj', '--accelerator-type=v3-64',
                                 '--version=tpu-ubuntu2204-base', '--zone=europe-west4-a', '--project=p1', '--spot']]
  assert '8 TPU VM workers x 8 JAX devices = 64 devices' in r.stdout
  bash_syntax_ok(r.stdout)
  assert not log.exists()


def test_tpu_create_preemptible_and_runtime_per_generation():
  r = launch(TPU, 'create', *POD, '--accelerator-type', 'v5litepod-16', '--preemptible', '--print')
  (cmd,) = commands(r.stdout)
  assert '--version=v2-alpha-tpuv5-lite' in cmd and '--preemptible' in cmd and '--spot' not in cmd
  r = launch(TPU, 'create', *POD, '--accelerator-type', 'v4-32', '--version', 'tpu-vm-v4-base', '--print')
  (cmd,) = commands(r.stdout)
  assert '--version=tpu-vm-v4-base' in cmd and not {'--spot', '--preemptible'} & set(cmd)


@pytest.mark.parametrize('accel,workers,devices', [
    ('v2-8', 1, 8), ('v3-8', 1, 8), ('v3-64', 8, 64), ('v4-8', 1, 4), ('v4-64', 8, 32), ('v5p-128', 16, 64),
    ('v5litepod-8', 1, 8), ('v5litepod-16', 4, 16), ('v6e-256', 64, 256)])
def test_accelerator_topology(accel, workers, devices):
  t = tpu_pod.parse_accelerator(accel)
  assert (t.workers, t.devices) == (workers, devices)


def test_tpu_setup_copies_the_checkout_and_installs_on_every_worker(fake_bin):
  path, log = fake_bin
  r = launch(TPU, 'setup', *POD, '--print', path=path)
  assert r.returncode == 0, r.stderr
  tar, scp, ssh = commands(r.stdout)
  assert tar[:3] == ['tar', '-czf', '/tmp/promptjax-src-pj.tgz'] and tar[-3:] == ['-C', REPO, '.']
  assert '--exclude=.venv' in tar and '--exclude=.git' in tar
  assert scp[:7] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', '/tmp/promptjax-src-pj.tgz', 'pj:promptjax-src.tgz']
  assert '--worker=all' in scp and '--zone=europe-west4-a' in scp
  assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'pj'] and '--worker=all' in ssh
  remote = ssh_command(ssh)
  bash_syntax_ok(remote)
  steps = [shlex.split(s) for s in remote.split(' && ')]
  assert ['tar', '-xzf', 'promptjax-src.tgz', '-C', 'promptjax'] in steps
  assert ['.venv/bin/python', '-m', 'pip', 'install', '-q', '-c', 'requirements/constraints.txt', '-e', '.'] in steps
  jax_pin = re.search(r"'jax==([\w.]+)'", open(os.path.join(REPO, 'setup.py')).read()).group(1)
  assert ['.venv/bin/python', '-m', 'pip', 'install', '-q', '-c', 'requirements/constraints.txt',
          f'jax[tpu]=={jax_pin}', '-f', tpu_pod.LIBTPU_URL] in steps
  assert 'python3.11 -m venv .venv' in remote
  assert not log.exists()


def test_tpu_setup_from_git():
  r = launch(TPU, 'setup', *POD, '--repo-url', 'https://example.com/x/promptjax.git', '--ref', 'v1', '--print')
  (ssh,) = commands(r.stdout)
  remote = ssh_command(ssh)
  assert 'git clone -q https://example.com/x/promptjax.git promptjax' in remote
  assert 'git -C promptjax fetch -q origin v1' in remote and 'tar' not in remote
  bash_syntax_ok(remote)


def _run_args(*extra):
  return ['run', *POD, '--accelerator-type', 'v3-64', f'--gin_file={PAPER}', '--model_dir=gs://bucket/run',
          '--p3-dir=gs://bucket/p3', '--t5-vocab=gs://t5-data/vocabs/cc_all.32000/sentencepiece.model',
          '--env', 'XLA_PYTHON_CLIENT_MEM_FRACTION=.9', "--gin.MESH_SHAPE=(64, 1)", '--print', *extra]


EXPECTED_TPU_ARGV = ['.venv/bin/python', '-m', 'promptjax.train', f'--gin_file={PAPER}',
                     "--gin.MODEL_DIR='gs://bucket/run'", '--gin.MESH_SHAPE=(64, 1)',
                     "--gin.MIXTURE_OR_TASK_NAME='d4_train'", '--gin.NUM_MICROBATCHES=8',
                     """--gin.promptjax.models.PromptConfig.init_file='/a b/$c "d" !'""", '--process_count=8']


def test_tpu_run_train_argv_survives_the_ssh_quoting(fake_bin):
  path, log = fake_bin
  r = launch(TPU, *_run_args("--gin.MIXTURE_OR_TASK_NAME='d4_train'", '--', '--gin.NUM_MICROBATCHES=8',
                             """--gin.promptjax.models.PromptConfig.init_file='/a b/$c "d" !'"""), path=path)
  assert r.returncode == 0, r.stderr
  (ssh,) = commands(r.stdout)
  assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'pj']
  assert '--worker=all' in ssh and '--zone=europe-west4-a' in ssh
  remote = ssh_command(ssh)
  assert nohup_argv(remote) == EXPECTED_TPU_ARGV
  tokens = shlex.split(remote)
  assert tokens[:2] == ['cd', 'promptjax']
  for var in ('PROMPTJAX_P3_DIR=gs://bucket/p3', 'PROMPTJAX_T5_VOCAB=gs://t5-data/vocabs/cc_all.32000/'
              'sentencepiece.model', 'XLA_PYTHON_CLIENT_MEM_FRACTION=.9'):
    assert tokens[tokens.index(var) - 1] == 'export'
  assert tokens[tokens.index('>') + 1] == 'logs/train.log'
  bash_syntax_ok(r.stdout)
  bash_syntax_ok(remote)
  assert not log.exists()


def test_tpu_run_gin_model_dir_as_typed_and_single_host():
  r = launch(TPU, 'run', *POD, '--accelerator-type', 'v3-8', '--gin_file', 'promptjax/configs/' + PAPER,
             "--gin.MODEL_DIR='gs://b/r'", '--gin.MESH_SHAPE=(8,1)', '--print')
  assert r.returncode == 0, r.stderr
  (ssh,) = commands(r.stdout)
  assert nohup_argv(ssh_command(ssh)) == ['.venv/bin/python', '-m', 'promptjax.train',
                                          f'--gin_file=promptjax/configs/{PAPER}', "--gin.MODEL_DIR='gs://b/r'",
                                          '--gin.MESH_SHAPE=(8,1)']  # one host: no --process_count


def test_tpu_run_stop_and_logs_do_what_they_say_on_a_worker(tmp_path):
  """Runs the printed remote commands with bash in a fake worker $HOME whose .venv/bin/python records its
  argv and environment and then waits: argv arrives intact, a second run refuses, stop sends SIGTERM."""
  home = tmp_path / 'home'
  venv = home / 'promptjax' / '.venv' / 'bin'
  venv.mkdir(parents=True)
  (venv / 'python').write_text(f'#!{BASH}\nprintf "%s\\0" "$@" > "$HOME/argv.tmp"; env > "$HOME/env"\n'
                               'mv "$HOME/argv.tmp" "$HOME/argv"; echo training; exec sleep 60\n')
  (venv / 'python').chmod(0o755)
  extra = ('--', '--gin.NUM_MICROBATCHES=8', """--gin.promptjax.models.PromptConfig.init_file='/a b/$c "d" !'""")
  run_args = _run_args("--gin.MIXTURE_OR_TASK_NAME='d4_train'", *extra)
  env = {'HOME': str(home), 'PATH': os.environ['PATH']}

  def remote(*args):
    r = launch(TPU, *args)
    assert r.returncode == 0, r.stderr
    (ssh,) = commands(r.stdout)
    return subprocess.run([BASH, '-c', ssh_command(ssh)], cwd=home, env=env, capture_output=True, text=True,
                          timeout=30)

  pid = None
  try:
    r = remote(*run_args)
    assert r.returncode == 0 and 'started promptjax.train' in r.stdout, r.stderr
    pid = int((home / 'promptjax' / 'logs' / 'train.pid').read_text())
    for _ in range(200):
      if (home / 'argv').exists() and 'training' in (home / 'promptjax/logs/train.log').read_text():
        break
      time.sleep(0.05)
    assert (home / 'argv').read_text().split('\0')[:-1] == EXPECTED_TPU_ARGV[1:]
    got_env = (home / 'env').read_text().splitlines()
    assert 'PROMPTJAX_P3_DIR=gs://bucket/p3' in got_env and 'XLA_PYTHON_CLIENT_MEM_FRACTION=.9' in got_env

    again = remote(*run_args)
    assert again.returncode == 1 and 'already running' in again.stderr

    logs = remote('logs', *POD, '--print')
    assert logs.stdout.strip() == 'training'

    stop = remote('stop', *POD, '--print')
    assert 'sent SIGTERM' in stop.stdout, stop.stderr
    for _ in range(100):
      try:
        os.kill(pid, 0)
      except ProcessLookupError:
        pid = None
        break
      time.sleep(0.05)
    assert pid is None, 'the trainer is still running after stop'
    assert 'not running' in remote('stop', *POD, '--print').stdout
  finally:
    if pid is not None:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass


def test_tpu_stop_logs_delete_print(fake_bin):
  path, log = fake_bin
  (stop,) = commands(launch(TPU, 'stop', *POD, '--kill', '--print', path=path).stdout)
  assert '--worker=all' in stop and 'kill -KILL' in ssh_command(stop)
  (logs,) = commands(launch(TPU, 'logs', *POD, '--worker', '3', '-f', '--print', path=path).stdout)
  assert '--worker=3' in logs and shlex.split(ssh_command(logs)) == ['tail', '-n', '100', '-F',
                                                                     'promptjax/logs/train.log']
  (delete,) = commands(launch(TPU, 'delete', *POD, '--yes', '--print', path=path).stdout)
  assert delete == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'pj', '--zone=europe-west4-a', '--quiet']
  assert not log.exists()


def test_tpu_without_print_runs_the_same_command(fake_bin):
  path, log = fake_bin
  r = launch(TPU, 'delete', *POD, '--yes', path=path)
  assert r.returncode == 0, r.stderr
  assert log.read_text().split('\0')[:-1] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'pj',
                                              '--zone=europe-west4-a', '--quiet']


@pytest.mark.parametrize('args,fragment', [
    (['create', '--zone', 'z', '--accelerator-type', 'v3-64'], '--name'),
    (['create', '--name', 'pj', '--accelerator-type', 'v3-64'], '--zone'),
    (['create', *POD], '--accelerator-type'),
    (['create', *POD, '--accelerator-type', 'v3_64'], "accelerator type 'v3_64'"),
    (['create', *POD, '--accelerator-type', 'v3-12'], "'v3-12'"),
    (['create', *POD, '--accelerator-type', 'tpu-64'], "'tpu-64'"),
    (['create', *POD, '--accelerator-type', 'v3-64', '--spot', '--preemptible'], 'not allowed'),
    (['create', '--name', 'Bad_Name', '--zone', 'z', '--accelerator-type', 'v3-8'], 'TPU name'),
    (['create', *POD, '--accelerator-type', 'v3-8', '--gin.X=1'], 'only `run`'),
    (['launch', *POD], 'invalid choice'),
    ([], 'required'),
    (['run', *POD, '--accelerator-type', 'v3-64', '--model_dir=gs://b/r'], '--gin_file'),
    (['run', *POD, '--accelerator-type', 'v3-64', f'--gin_file={PAPER}'], '--model_dir'),
    (['run', *POD, '--accelerator-type', 'v3-64', '--gin_file=paper/nope.gin', '--model_dir=gs://b/r'],
     "'paper/nope.gin' not found"),
    (['run', *POD, '--accelerator-type', 'v3-64', f'--gin_file={PAPER}', '--model_dir=gs://b/r',
      '--gin.MESH_SHAPE=(32, 1)'], 'MESH_SHAPE (32, 1)'),
    (['run', *POD, '--accelerator-type', 'v3-64', f'--gin_file={PAPER}', '--model_dir=gs://b/r',
      '--gin.MESH_SHAPE=(-1, 3)'], '3 does not divide'),
    (['run', *POD, '--accelerator-type', 'v3-64', f'--gin_file={PAPER}', '--model_dir=gs://b/r',
      '--gin.MESH_SHAPE=(64, 1)', '--gin.BATCH_SIZE=100'], 'BATCH_SIZE=100'),
    (['run', *POD, '--accelerator-type', 'v3-64', f'--gin_file={PAPER}', '--model_dir=gs://b/r',
      '--gin.MESH_SHAPE'], 'needs a value'),
    (['run', *POD, '--accelerator-type', 'v3-64', f'--gin_file={PAPER}', '--model_dir=gs://b/r',
      '--gin.MESH_SHAPE=(64, 1)', '--env', 'BAD NAME=1'], '--env'),
])
def test_tpu_errors_are_one_line_exit_2(args, fragment, fake_bin):
  path, log = fake_bin
  assert_one_error(launch(TPU, *args, '--print', path=path), fragment)
  assert not log.exists()


def test_tpu_gin_file_outside_the_checkout_is_refused(tmp_path):
  f = tmp_path / 'mine.gin'
  f.write_text("include 'runs/train.gin'\n")
  r = launch(TPU, 'run', *POD, '--accelerator-type', 'v3-8', f'--gin_file={f}', '--model_dir=gs://b/r', '--print')
  assert_one_error(r, 'outside the repository')


def test_tpu_without_gcloud_is_one_error_line():
  assert_one_error(launch(TPU, 'delete', *POD), 'gcloud not found')


def test_mesh_check_can_be_skipped():
  r = launch(TPU, 'run', *POD, '--accelerator-type', 'v3-64', f'--gin_file={PAPER}', '--model_dir=gs://b/r',
             '--no-mesh-check', '--print')
  assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------------------------
# SLURM.

def _slurm_args(*extra):
  return ['--nodes', '8', '--gpus-per-node', '8', '--time', '2-00:00:00', '--partition', 'gpu', '--account',
          'proj', '--cpus-per-node', '32', f'--gin_file={PAPER}', '--model_dir=/shared/runs/large',
          '--p3-dir=/shared/data/p3', '--t5-vocab=/shared/vocab/spm.model', '--gin.MESH_SHAPE=(64, 1)',
          '--print', *extra]


def split_print(stdout):
  """(commands before the heredoc, the script, commands after it) of slurm_gpu.py --print."""
  m = re.match(r"(?s)(.*)^cat > (\S+) <<'PROMPTJAX_SBATCH_EOF'\n(.*?)^PROMPTJAX_SBATCH_EOF\n(.*)$", stdout, re.M)
  assert m, stdout
  return commands(m.group(1)), m.group(2), m.group(3), commands(m.group(4))


def test_slurm_print_shows_the_script_and_the_sbatch_command(fake_bin, tmp_path):
  path, log = fake_bin
  script_path = str(tmp_path / 'job.sbatch')
  r = launch(SLURM, *_slurm_args('--script', script_path, '--', '--gin.NUM_MICROBATCHES=2'), path=path)
  assert r.returncode == 0, r.stderr
  before, written, script, after = split_print(r.stdout)
  assert written == script_path and before == [['mkdir', '-p'] + sorted([str(tmp_path), os.path.join(REPO, 'launch', 'runs')])]
  assert after == [['sbatch', script_path]]
  assert not os.path.exists(script_path) and not log.exists()
  bash_syntax_ok(script)
  bash_syntax_ok(r.stdout)
  assert script.startswith('#!/bin/bash\n')
  sbatch = [l[len('#SBATCH '):] for l in script.splitlines() if l.startswith('#SBATCH ')]
  for opt in ('--nodes=8', '--ntasks-per-node=1', '--gpus-per-node=8', '--time=2-00:00:00', '--partition=gpu',
              '--account=proj', '--cpus-per-task=32', '--job-name=promptjax'):
    assert opt in sbatch, sbatch
  lines = script.splitlines()
  assert 'export PROMPTJAX_P3_DIR=/shared/data/p3' in lines
  assert 'export PROMPTJAX_T5_VOCAB=/shared/vocab/spm.model' in lines
  assert 'export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7' in lines
  assert f'cd {REPO}' in lines
  assert '--process_count="$SLURM_NTASKS"' in script
  assert '--coordinator_address="$MASTER_ADDR:$MASTER_PORT"' in script
  assert """'exec "$@" --process_index="$SLURM_PROCID"'""" in script
  assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in script


def test_slurm_script_starts_one_correctly_wired_process_per_node(tmp_path):
  """Runs the printed script with bash, fake scontrol/srun (3 "nodes") and a fake python that records
  each process's argv and environment."""
  bindir = tmp_path / 'bin'
  bindir.mkdir()
  (bindir / 'scontrol').write_text(f'#!{BASH}\nprintf "node007\\nnode008\\nnode009\\n"\n')
  (bindir / 'srun').write_text(
      f'#!{BASH}\nwhile [[ $1 == -* ]]; do echo "$1" >> "$OUT/srun_opts"; shift; done\n'
      'for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i SLURM_LOCALID=0 "$@" & done; wait\n')
  fake_python = tmp_path / 'python'
  fake_python.write_text(f'#!{BASH}\nprintf "%s\\0" "$@" > "$OUT/argv.$SLURM_PROCID"\n'
                         'env > "$OUT/env.$SLURM_PROCID"\n')
  for p in (bindir / 'scontrol', bindir / 'srun', fake_python):
    p.chmod(0o755)
  r = launch(SLURM, '--nodes', '3', '--gpus-per-node', '4', f'--gin_file={PAPER}', '--model_dir=/shared/r',
             '--p3-dir=/shared/p3', '--python', str(fake_python), '--gin.MESH_SHAPE=(-1, 2)',
             '--script', str(tmp_path / 'x.sbatch'), '--print')
  assert_one_error(r, 'BATCH_SIZE=4096', '3 processes')  # the paper row's batch on 3 nodes
  r = launch(SLURM, '--nodes', '3', '--gpus-per-node', '4', f'--gin_file={PAPER}', '--model_dir=/shared/r',
             '--p3-dir=/shared/p3', '--python', str(fake_python), '--gin.MESH_SHAPE=(-1, 2)',
             '--gin.BATCH_SIZE=4095', '--script', str(tmp_path / 'x.sbatch'), '--print')
  assert r.returncode == 0, r.stderr
  _, _, script, _ = split_print(r.stdout)
  out = tmp_path / 'out'
  out.mkdir()
  env = {'PATH': f'{bindir}:/usr/bin:/bin', 'OUT': str(out), 'SLURM_NTASKS': '3', 'SLURM_JOB_ID': '4242',
         'SLURM_JOB_NODELIST': 'node[007-009]', 'HOME': str(tmp_path)}
  res = subprocess.run([BASH, '-c', script], env=env, capture_output=True, text=True, timeout=30)
  assert res.returncode == 0, res.stderr
  assert 'coordinator node007:24242' in res.stdout
  assert '--kill-on-bad-exit=1' in (out / 'srun_opts').read_text().split()
  for i in range(3):
    argv = (out / f'argv.{i}').read_text().split('\0')[:-1]
    assert argv == ['-m', 'promptjax.train', f'--gin_file={PAPER}', "--gin.MODEL_DIR='/shared/r'",
                    '--gin.MESH_SHAPE=(-1, 2)', '--gin.BATCH_SIZE=4095', '--coordinator_address=node007:24242',
                    '--process_count=3', f'--process_index={i}']
    got_env = (out / f'env.{i}').read_text().splitlines()
    assert 'PROMPTJAX_P3_DIR=/shared/p3' in got_env and 'JAX_LOCAL_DEVICE_IDS=0,1,2,3' in got_env


def test_slurm_without_print_writes_and_submits(fake_bin, tmp_path):
  path, log = fake_bin
  script_path = tmp_path / 'sub' / 'job.sbatch'
  args = [a for a in _slurm_args('--script', str(script_path), '--output', str(tmp_path / 'logs' / '%j.out'))
          if a != '--print']
  r = launch(SLURM, *args, path=path)
  assert r.returncode == 0, r.stderr
  assert log.read_text().split('\0')[:-1] == ['sbatch', str(script_path)]
  printed = split_print(launch(SLURM, *args, '--print').stdout)[2]
  assert script_path.read_text() == printed
  assert (tmp_path / 'logs').is_dir()


@pytest.mark.parametrize('args,fragment', [
    (['--gin_file', PAPER, '--model_dir=/r'], '--nodes'),
    (['--nodes', 'eight', '--gin_file', PAPER, '--model_dir=/r'], "node count (--nodes) 'eight'"),
    (['--nodes', '0', '--gin_file', PAPER, '--model_dir=/r'], "'0'"),
    (['--nodes', '2', '--gpus-per-node', '8x', '--gin_file', PAPER, '--model_dir=/r'], "'8x'"),
    (['--nodes', '2', '--gin_file', PAPER, '--model_dir=/r', '--time', '3h'], "--time '3h'"),
    (['--nodes', '2', '--model_dir=/r'], '--gin_file'),
    (['--nodes', '2', '--gin_file', PAPER], '--model_dir'),
    (['--nodes', '2', '--gin_file', 'paper/nope.gin', '--model_dir=/r'], "'paper/nope.gin' not found"),
    (['--nodes', '8', '--gin_file', PAPER, '--model_dir=/r', '--gin.MESH_SHAPE=(32, 1)'], 'MESH_SHAPE (32, 1)'),
    (['--nodes', '2', '--gpus-per-node', '6', '--gin_file', PAPER, '--model_dir=/r', '--gin.MESH_SHAPE=(3, 4)'],
     'straddle'),
    (['--nodes', '2', '--gin_file', PAPER, '--model_dir=/r', '--gin.MESH_SHAPE=(16, 1)', '--port', 'x'], "'x'"),
    (['--nodes', '2', '--gin_file', PAPER, '--model_dir=/r', '--gin.MESH_SHAPE=(16, 1)', '--bogus'],
     'unrecognized arguments'),
])
def test_slurm_errors_are_one_line_exit_2(args, fragment, fake_bin):
  path, log = fake_bin
  assert_one_error(launch(SLURM, *args, '--print', path=path), fragment)
  assert not log.exists()


def test_slurm_without_sbatch_is_one_error_line(tmp_path):
  script_path = tmp_path / 'job.sbatch'
  args = [a for a in _slurm_args('--script', str(script_path)) if a != '--print']
  assert_one_error(launch(SLURM, *args), 'sbatch not found')
  assert not script_path.exists()


def test_slurm_gin_file_outside_the_checkout_goes_by_absolute_path(tmp_path):
  f = tmp_path / 'mine.gin'
  f.write_text("include 'paper/wu2022_large_mtl_prompt.gin'\nMESH_SHAPE = (16, 1)\n")
  r = launch(SLURM, '--nodes', '2', f'--gin_file={f}', '--model_dir=/r', '--print', cwd=str(tmp_path))
  assert r.returncode == 0, r.stderr
  assert f'  --gin_file={f}\n' in split_print(r.stdout)[2]
  r = launch(SLURM, '--nodes', '2', '--gin_file=mine.gin', '--model_dir=/r', '--print', cwd=str(tmp_path))
  assert f'  --gin_file={f}\n' in split_print(r.stdout)[2]  # relative to the cwd: made absolute
