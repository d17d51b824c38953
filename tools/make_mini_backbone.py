"""Writes the bundled mini backbone: the LM-adapted T5 that `make demo` starts continued pretraining from.

It is the stand-in for the LM-adapted T5 (Lester et al., 2021) that Wu et al. 2022 start from (§4): a
`models/t5_1_1_mini.gin` model trained from scratch with the prefix-LM objective on the bundled corpus
(`mini_text_prefix_lm`, `promptjax/tasks/data/text`), through `promptjax train` with fixed settings and seed,
then exported in Hugging Face's layout (config.json + model.safetensors, `promptjax.checkpoints.hf`), which
``INITIAL_CHECKPOINT_PATH`` and `promptjax eval` read. Deterministic: the same code, data and jax version give
the same bytes, which `tests/test_mini_backbone.py` checks by re-running it. About a minute on 2 CPU cores:

    .venv/bin/python tools/make_mini_backbone.py        # or: make backbone

Regenerate it (and commit it) after changing the mini benchmark's corpus or vocabulary.
"""

from __future__ import annotations

import argparse
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


def make(out_dir: str = OUT, steps: int = STEPS) -> str:
  import gin
  from promptjax import cli
  from promptjax.checkpoints import hf
  from promptjax.evaluation import run as run_lib
  from promptjax.models import PromptConfig, PromptableT5, get_config
  with tempfile.TemporaryDirectory() as tmp:
    flags = [f'--gin.{k}={v}' for k, v in SETTINGS.items()]
    gin.clear_config()
    rc = cli.main(['train', '--gin_file=runs/train.gin', f'--gin_file={demo.MODEL_GIN}', '--gin_file=t0.gin',
                   f"--gin.MODEL_DIR='{tmp}'", f'--gin.TRAIN_STEPS={steps}', f'--gin.CHECKPOINT_PERIOD={steps}'] + flags)
    gin.clear_config()
    if rc:
      raise SystemExit(f'make_mini_backbone: LM adaptation failed (exit {rc})')
    model = PromptableT5(get_config('mini'), PromptConfig(kind='none'))
    _, params = run_lib.load_params(model, os.path.join(tmp, f'checkpoint_{steps}'))
    return hf.export_hf(params, model.config, out_dir)


def main(argv: Optional[List[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=OUT)
  parser.add_argument('--steps', type=int, default=STEPS)
  args = parser.parse_args(argv)
  print(f'wrote {make(args.out, args.steps)}')


if __name__ == '__main__':
  main()
