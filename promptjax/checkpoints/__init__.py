"""Checkpoint import/export: HF T5 (safetensors / pytorch_model.bin) and T5X (legacy msgpack + zarr,
orbax; both ways), prompt export (`promptjax.models.export_prompt`), shallow prompts as PEFT adapters
(`promptjax.checkpoints.peft`, imported on its own: it is not loaded with the package)."""

from __future__ import annotations

import os
from typing import Optional, Tuple

from promptjax.checkpoints.hf import (config_from_hf, export_hf, from_hf_state_dict, load_hf_checkpoint,
                                      to_hf_state_dict)
from promptjax.models.config import T5Config

_HF_FILES = ('config.json', 'model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
             'pytorch_model.bin.index.json')


_T5X_NAMES = ('find_t5x_checkpoint', 'load_t5x_checkpoint', 'load_t5x_checkpoint_with_step',
              't5x_config_from_params', 'export_t5x_checkpoint')


def __getattr__(name):
  # The T5X names load promptjax.checkpoints.t5x on first use, so that `python -m promptjax.checkpoints.t5x`
  # does not find its own module already imported by this package.
  if name in _T5X_NAMES:
    from promptjax.checkpoints import t5x
    return getattr(t5x, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def is_hf_checkpoint(path: str) -> bool:
  if os.path.isfile(path):
    return path.endswith(('.safetensors', '.bin'))
  return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in _HF_FILES)


def load_checkpoint(path: str, config: Optional[T5Config] = None,
                    relative_attention_max_distance: int = 128) -> Tuple[dict, T5Config]:
  """Imports transformer weights from an HF directory/file or a T5X checkpoint -> (params, config).

  The format is detected from the files. For T5X the architecture is inferred from the shapes
  (`relative_attention_max_distance` is not stored in T5X checkpoints: 128 for all released T5 sizes);
  a given `config` is checked against the weights instead.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'Checkpoint path {path!r} does not exist.')
  if is_hf_checkpoint(path):
    return load_hf_checkpoint(path, config)
  from promptjax.checkpoints.t5x import load_t5x_checkpoint, t5x_config_from_params
  params = load_t5x_checkpoint(path)
  if config is None:
    config = t5x_config_from_params(params, relative_attention_max_distance)
  from promptjax.models.model import PromptableT5
  PromptableT5(config).check_params(params, include_prompt=False)
  return params, config
