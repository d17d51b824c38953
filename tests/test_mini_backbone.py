"""The bundled LM-adapted mini backbone (`promptjax/tasks/data/mini_lm_adapted`) is what its script makes."""

import json
import os
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file

from promptjax.demo import BACKBONE as BUNDLED

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), '..'))


def test_the_committed_backbone_is_what_the_script_makes(tmp_path):
  # In a process of its own with XLA's default flags (this suite's conftest changes the device count and the
  # optimization level, and XLA's arithmetic with them): `make backbone`'s conditions.
  out = str(tmp_path / 'backbone')
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'make_mini_backbone.py'), '--out', out],
                 env=env, check=True, capture_output=True)
  assert json.load(open(os.path.join(out, 'config.json'))) == json.load(open(os.path.join(BUNDLED, 'config.json')))
  fresh, committed = load_file(os.path.join(out, 'model.safetensors')), load_file(os.path.join(BUNDLED, 'model.safetensors'))
  assert sorted(fresh) == sorted(committed)
  with open(os.path.join(out, 'model.safetensors'), 'rb') as a, open(os.path.join(BUNDLED, 'model.safetensors'), 'rb') as b:
    if a.read() == b.read():
      return
  # Another CPU's XLA may round differently over the 250 training steps; the weights must still agree closely.
  for k in committed:
    scale = float(np.abs(committed[k]).max()) or 1.0
    np.testing.assert_allclose(fresh[k], committed[k], atol=1e-3 * scale, err_msg=k)
