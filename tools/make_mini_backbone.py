"""Writes the bundled mini backbone: the LM-adapted T5 that `make demo` starts continued pretraining from.

It is the stand-in for the LM-adapted T5 (Lester et al., 2021) that Wu et al. 2022 start from (§4): a
`models/t5_1_1_mini.gin` model trained from scratch with the prefix-LM objective on the bundled corpus
(`mini_text_prefix_lm`, `promptjax/tasks/data/text`), through `promptjax train` with fixed settings and seed,
then exported in Hugging Face's layout (config.json + model.safetensors, `promptjax.checkpoints.hf`), which
``INITIAL_CHECKPOINT_PATH`` and `promptjax eval` read, with `trajectory.json` beside them: the settings, the
training loss of every step and the SHA-256 of model.safetensors. Deterministic: the same code, data and jax
version give the same bytes. `tests/test_mini_backbone.py` re-runs the first steps and compares their losses
with the recorded trajectory (``PROMPTJAX_FULL_BACKBONE_CHECK=1``: all steps and the bytes). About a minute
on 2 CPU cores:

    .venv/bin/python tools/make_mini_backbone.py        # or: make backbone

Regenerate it (and commit it) after changing the mini benchmark's corpus or vocabulary.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import tempfile
from typing import List, Optional

from promptjax import demo

OUT = demo.BACKBONE
STEPS = 250
SETTINGS = {  # prefix LM from scratch; batch 32 of 64 + 64 tokens; Adafactor faster than the papers' 1e-3
    'MIXTURE_OR_TASK_NAME': "'mini_text_prefix_lm'", 'BATCH_SIZE': 32, 'LEARNING_RATE': 1e-2,
    'TASK_FEATURE_LENGTHS': "{'inputs': 64, 'targets': 64}", 'TRAINABLE': '"all"', 'RANDOM_SEED': 0,
    'MESH_SHAPE': '(1, 1)',  # one device, whatever XLA_FLAGS says: the same reductions, the same bytes
}


def sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def _losses(summary_dir: str) -> list:
  """The training loss of every step, from the run's TensorBoard summaries (logged every step here)."""
  import tensorflow as tf
  losses = {}
  for path in glob.glob(os.path.join(summary_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.tag == 'loss':
          losses[int(event.step)] = float(tf.make_ndarray(v.tensor))
  return [losses[s] for s in sorted(losses)]


def make(out_dir: str = OUT, steps: int = STEPS, trajectory_only: bool = False) -> str:
  """Trains and writes the backbone and its trajectory.json to `out_dir` (`trajectory_only`: the
  trajectory alone, without the weights or their hash)."""
  import gin
  from promptjax import cli
  from promptjax.checkpoints import hf
  from promptjax.evaluation import run as run_lib
  from promptjax.models import PromptConfig, PromptableT5, get_config
  with tempfile.TemporaryDirectory() as tmp:
    flags = [f'--gin.{k}={v}' for k, v in SETTINGS.items()]
    gin.clear_config()
    rc = cli.main(['train', '--gin_file=runs/train.gin', f'--gin_file={demo.MODEL_GIN}', '--gin_file=t0.gin',
                   f"--gin.MODEL_DIR='{tmp}'", f'--gin.TRAIN_STEPS={steps}', f'--gin.CHECKPOINT_PERIOD={steps}',
                   '--gin.promptjax.training.train.log_period=1'] + flags)
    gin.clear_config()
    if rc:
      raise SystemExit(f'make_mini_backbone: LM adaptation failed (exit {rc})')
    losses = _losses(os.path.join(tmp, 'train'))
    if len(losses) != steps:
      raise SystemExit(f'make_mini_backbone: {len(losses)} logged losses for {steps} steps')
    record = {'steps': steps, 'settings': SETTINGS, 'loss': losses}
    if trajectory_only:
      os.makedirs(out_dir, exist_ok=True)
    else:
      model = PromptableT5(get_config('mini'), PromptConfig(kind='none'))
      _, params = run_lib.load_params(model, os.path.join(tmp, f'checkpoint_{steps}'))
      out_dir = hf.export_hf(params, model.config, out_dir)
      record['model.safetensors sha256'] = sha256(os.path.join(out_dir, 'model.safetensors'))
  with open(os.path.join(out_dir, 'trajectory.json'), 'w') as f:
    json.dump(record, f, indent=1)
    f.write('\n')
  return out_dir


def main(argv: Optional[List[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=OUT)
  parser.add_argument('--steps', type=int, default=STEPS)
  parser.add_argument('--trajectory_only', action='store_true',
                      help='write only trajectory.json (the losses), not the weights')
  args = parser.parse_args(argv)
  print(f'wrote {make(args.out, args.steps, args.trajectory_only)}')


if __name__ == '__main__':
  main()
