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
