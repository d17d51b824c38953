"""The one path from a checkpoint (HF, T5X, or a promptjax MODEL_DIR / ``checkpoint_<step>``) to parameters.

`load_transformer` gives the transformer weights a training run starts from (``INITIAL_CHECKPOINT_PATH``);
`load_params` gives (model, params) ready to evaluate, with the prompt rules of ``promptjax eval``
(`load_params_with_info` also says which checkpoint directory and step were read);
`load_subtree` reads a method's extra parameter subtree (e.g. SUPMER's φ under 'supmer'). Every failure
is a `RestoreError` whose message names the path and the fix.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np

from promptjax.checkpoints import is_hf_checkpoint, load_checkpoint, t5x
from promptjax.errors import PromptjaxError
from promptjax.models import PromptableT5, PromptConfig

NON_MODEL_KEYS = ('prompt', 'supmer')   # subtrees that are not transformer weights


class RestoreError(PromptjaxError, ValueError):
  """A checkpoint that cannot be read, or does not fit the model (``mismatch``)."""

  def __init__(self, message: str, mismatch: bool = False):
    super().__init__(message)
    self.mismatch = mismatch


_HUB_ID = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$')


def missing_path_message(path: Any, macro: str = 'CHECKPOINT_PATH') -> str:
  """Why `path` (not on local disk) cannot be read, and the fix: Hub ids and gs:// paths are copied first."""
  path = str(path)
  if path.startswith('gs://'):
    return (f'{macro}={path!r} is on Google Cloud Storage; checkpoints are read from local disk. Copy it '
            f'first, e.g. gsutil -m cp -r {path} DIR, and give {macro}=\'DIR/{os.path.basename(path.rstrip("/"))}\'.')
  if _HUB_ID.match(path) and not path.startswith('.'):
    return (f'{macro}={path!r} does not exist and looks like a Hugging Face Hub id; hub ids must be '
            f'downloaded first, e.g. huggingface-cli download {path} --local-dir DIR, then give the '
            f'local directory: {macro}=\'DIR\'.')
  return f'{macro}={path!r} does not exist.'


def load_transformer(model: PromptableT5, path: str) -> Dict[str, Any]:
  """Transformer weights (T5X names) from `path`, checked against `model` (no prompt is read)."""
  if not os.path.exists(path):
    raise RestoreError(missing_path_message(path, 'INITIAL_CHECKPOINT_PATH'))
  try:
    params, _ = load_checkpoint(path, relative_attention_max_distance=model.config.relative_attention_max_distance)
  except (FileNotFoundError, ValueError) as e:
    raise RestoreError(str(e)) from e
  try:
    model.check_params(params, include_prompt=False)
  except ValueError as e:
    raise RestoreError(f'does not fit the model: {e}', mismatch=True) from e
  return params


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
  """Which checkpoint parameters came from: the directory read (a MODEL_DIR resolves to its highest
  ``checkpoint_<step>``; HF weights as given; None for a random init) and its training step (None when the
  checkpoint records none, e.g. HF weights)."""
  path: Optional[str]
  step: Optional[int]

  def to_json(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


def _read(model: PromptableT5, path: str) -> Tuple[Dict[str, Any], CheckpointInfo]:
  if not os.path.exists(path):
    raise RestoreError(missing_path_message(path))
  try:
    if is_hf_checkpoint(path):
      loaded, _ = load_checkpoint(path, model.config)
      return loaded, CheckpointInfo(os.path.abspath(path), None)
    loaded, step = t5x.load_t5x_checkpoint_with_step(path)
    return loaded, CheckpointInfo(os.path.abspath(t5x.find_t5x_checkpoint(path)), step)
  except (FileNotFoundError, ValueError) as e:
    raise RestoreError(f'CHECKPOINT_PATH={path}: {e}') from e


def load_params(model: PromptableT5, checkpoint_path: Optional[str], *, use_prompt: bool = True,
                seed: int = 0) -> Tuple[PromptableT5, Dict[str, Any]]:
  """(model, params) ready to evaluate.

  ``use_prompt=True`` keeps the checkpoint's prompt when it has one and the model asks for one (a model
  without a prompt on a checkpoint with one is refused: the prompt would be dropped silently); a model
  with a prompt whose checkpoint has none (T0-style MTL-T✓P✗, a plain LM-adapted T5) gets a fresh prompt
  (``PromptConfig.init``, from the loaded embedding). ``use_prompt=False`` drops any prompt. Without a
  checkpoint the parameters are a seeded random init.
  """
  return load_params_with_info(model, checkpoint_path, use_prompt=use_prompt, seed=seed)[:2]


def load_params_with_info(model: PromptableT5, checkpoint_path: Optional[str], *, use_prompt: bool = True,
                          seed: int = 0) -> Tuple[PromptableT5, Dict[str, Any], CheckpointInfo]:
  """`load_params` and the `CheckpointInfo` (path, step) of what was read."""
  if not use_prompt and model.prompt.kind != 'none':
    model = PromptableT5(model.config, PromptConfig(kind='none'), loss_normalization=model.loss_normalization)
  if checkpoint_path is None:
    return model, model.init_params(jax.random.PRNGKey(seed)), CheckpointInfo(None, None)
  loaded, info = _read(model, checkpoint_path)
  transformer = {k: v for k, v in loaded.items() if k not in NON_MODEL_KEYS}
  try:
    model.check_params(transformer, include_prompt=False)
  except ValueError as e:
    raise RestoreError(f'CHECKPOINT_PATH={checkpoint_path} does not fit the model: {e} Pick the model '
                       f'gin file (and vocabulary size) the checkpoint was trained with.', mismatch=True) from e
  if use_prompt and model.prompt.kind == 'none' and 'prompt' in loaded:
    raise RestoreError(f'CHECKPOINT_PATH={checkpoint_path} holds a trained {_describe_prompt(loaded["prompt"])}, '
                       f'but the model has none: give the method gin file it was trained with (e.g. '
                       f'mtl_prompt.gin) to evaluate with it, or USE_PROMPT=False to evaluate without it.',
                       mismatch=True)
  params = model.init_params(jax.random.PRNGKey(seed), transformer_params=transformer)
  if model.prompt.kind != 'none' and 'prompt' in loaded:
    try:
      model.check_params({**transformer, 'prompt': loaded['prompt']})
    except ValueError as e:
      raise RestoreError(f'CHECKPOINT_PATH={checkpoint_path}: its prompt does not fit the model\'s '
                         f'PromptConfig ({e}). Use the prompt kind/length it was trained with, or '
                         f'use_prompt=False.', mismatch=True) from e
    params = {**params, 'prompt': jax.tree.map(np.asarray, loaded['prompt'])}
  return model, params, info


def _describe_prompt(prompt: Any) -> str:
  if isinstance(prompt, dict) and 'prompt' in prompt and hasattr(prompt['prompt'], 'shape'):
    return f'shallow prompt of length {prompt["prompt"].shape[0]}'
  first = jax.tree.leaves(prompt)[0]
  return f'deep prompt of length {first.shape[0]}'


def load_subtree(checkpoint_path: Optional[str], key: str) -> Optional[Dict[str, Any]]:
  """The top-level parameter subtree `key` of a promptjax checkpoint as numpy (None when it has none)."""
  if checkpoint_path is None or not os.path.exists(checkpoint_path):
    raise RestoreError(missing_path_message(checkpoint_path))
  loaded = t5x.load_t5x_checkpoint(checkpoint_path)
  if key not in loaded:
    return None
  return jax.tree.map(np.asarray, loaded[key])
