"""A small deterministic training setup shared by the multi-process test and its worker."""

import numpy as np

STEPS = 5
VOCAB = 256


def setup():
  from promptjax.models import PromptableT5, PromptConfig, get_config
  from promptjax.training import trainer
  model = PromptableT5(get_config('tiny', vocab_size=VOCAB), PromptConfig(kind='shallow', length=4))
  cfg = trainer.DatasetConfig('none', {'inputs': 16, 'targets': 4}, batch_size=8)
  rng = np.random.RandomState(0)
  batches = []
  for _ in range(STEPS):
    enc = rng.randint(3, VOCAB, size=(8, 16)).astype(np.int32)
    tgt = rng.randint(3, VOCAB, size=(8, 4)).astype(np.int32)
    tgt[:, -1] = 1
    batches.append({'encoder_input_tokens': enc, 'decoder_target_tokens': tgt})
  return model, cfg, batches


def dry_run_reports(paper_files):
  """Yields (name, printed report) of ``promptjax train --gin_file=paper/<name> --dry_run`` for each file,
  run in-process from the repository root with a clean gin config."""
  import contextlib
  import io
  import os
  import gin
  from promptjax import cli
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  cwd = os.getcwd()
  os.chdir(repo)
  try:
    for name in paper_files:
      gin.clear_config()
      out = io.StringIO()
      try:
        with contextlib.redirect_stdout(out):
          code = cli.main(['train', f'--gin_file=paper/{name}', "--gin.MODEL_DIR='/tmp/unused'", '--dry_run'])
      finally:
        gin.clear_config()
      assert code == 0, name
      yield name, out.getvalue()
  finally:
    os.chdir(cwd)
