"""A 2-process jax.distributed run on localhost (4 CPU devices each, gloo collectives) matches 1 process."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests.training import common

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  from promptjax.training import trainer
  from promptjax.training.method import MultiTask
  model, cfg, batches = common.setup()
  single = trainer.train(model_dir=str(tmp_path / 'single'), model=model, method=MultiTask(cfg),
                         total_steps=common.STEPS, mesh_shape=(4, 2), batches=iter(batches), progress=False,
                         async_checkpointing=False)
  port = str(_free_port())
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0',
         'PYTHONPATH': os.pathsep.join([os.path.dirname(os.path.dirname(HERE)), os.environ.get('PYTHONPATH', '')])}
  out = str(tmp_path / 'losses.json')
  procs = [subprocess.Popen([sys.executable, os.path.join(HERE, 'multiprocess_worker.py'), str(i), '2', port,
                             str(tmp_path / 'multi'), out], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=500)
    assert p.returncode == 0, err[-3000:]
  with open(out) as f:
    multi = json.load(f)
  assert multi['devices'] == 8 and multi['local_devices'] == 4
  got = [multi['losses'][str(s)] for s in range(1, common.STEPS + 1)]
  want = [single.losses[s] for s in range(1, common.STEPS + 1)]
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  assert os.path.exists(tmp_path / 'multi' / f'checkpoint_{common.STEPS}' / 'commit_success.txt')
