"""`promptjax eval` / `promptjax fewshot`: evaluate a checkpoint on a task or mixture (T5X's eval macros).

``CHECKPOINT_PATH`` (a promptjax / T5X MODEL_DIR or ``checkpoint_<step>``, or HF weights),
``EVAL_OUTPUT_DIR``, ``MIXTURE_OR_TASK_NAME`` (a rank-classification task or a mixture of them, e.g.
``mini_heldout_rank_classification`` or ``green_rank_classification``). Every task is evaluated on
its own (per-template accuracy); ``EVAL_OUTPUT_DIR`` gets ``metrics.json`` (per task + ARG) and
``predictions/<task>.jsonl`` (every instance's choice scores, prediction and gold), and, few-shot,
``selected_examples.json``.

The prompt: ``use_prompt=True`` evaluates with the checkpoint's prompt when it has one and the model
config asks for one; a model with a prompt whose checkpoint has none (T0-style MTL-T✓P✗, or a plain
LM-adapted T5) gets a fresh prompt (``PromptConfig.init``, from the loaded embedding) — the "fresh
prompt" of few-shot prompt tuning. ``use_prompt=False`` drops any prompt (zero-shot without it).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Mapping, Optional

import jax
import numpy as np

from promptjax.evaluation import fewshot as fewshot_lib
from promptjax.evaluation import rank_classification as rc


def load_params(model, checkpoint_path: Optional[str], *, use_prompt: bool = True, seed: int = 0):
  """(model, params) ready to evaluate; see the module docstring for the prompt rules."""
  from promptjax.models import PromptableT5, PromptConfig
  if not use_prompt and model.prompt.kind != 'none':
    model = PromptableT5(model.config, PromptConfig(kind='none'), loss_normalization=model.loss_normalization)
  if checkpoint_path is None:
    return model, model.init_params(jax.random.PRNGKey(seed))
  from promptjax.checkpoints import load_checkpoint, is_hf_checkpoint
  from promptjax.checkpoints import t5x
  if not os.path.exists(checkpoint_path):
    raise rc.EvaluationError(f'CHECKPOINT_PATH={checkpoint_path!r} does not exist.')
  try:
    if is_hf_checkpoint(checkpoint_path):
      loaded, _ = load_checkpoint(checkpoint_path, model.config)
    else:
      loaded = t5x.load_t5x_checkpoint(checkpoint_path)
  except (FileNotFoundError, ValueError) as e:
    raise rc.EvaluationError(f'CHECKPOINT_PATH={checkpoint_path}: {e}') from e
  transformer = {k: v for k, v in loaded.items() if k != 'prompt'}
  try:
    model.check_params(transformer, include_prompt=False)
  except ValueError as e:
    raise rc.EvaluationError(f'CHECKPOINT_PATH={checkpoint_path} does not fit the model: {e} Pick the model '
                             f'gin file (and vocabulary size) the checkpoint was trained with.') from e
  params = model.init_params(jax.random.PRNGKey(seed), transformer_params=transformer)
  if model.prompt.kind != 'none' and 'prompt' in loaded:
    try:
      model.check_params({**transformer, 'prompt': loaded['prompt']})
    except ValueError as e:
      raise rc.EvaluationError(f'CHECKPOINT_PATH={checkpoint_path}: its prompt does not fit the model\'s '
                               f'PromptConfig ({e}). Use the prompt kind/length it was trained with, or '
                               f'use_prompt=False.') from e
    params = {**params, 'prompt': jax.tree.map(np.asarray, loaded['prompt'])}
  return model, params


def evaluate(*, model, checkpoint_path: Optional[str], output_dir: str, mixture_or_task_name: str,
             split: str = 'validation', use_prompt: bool = True, length_normalize: bool = False,
             task_feature_lengths: Optional[Mapping[str, int]] = None, examples_per_batch: int = 32,
             max_examples: Optional[int] = None, fewshot: Optional[fewshot_lib.FewShotConfig] = None,
             seed: int = 0, module: Optional[str] = 'promptjax.tasks', progress: bool = True
             ) -> Dict[str, Any]:
  """Zero-shot (``fewshot=None``) or few-shot rank classification of every task; returns the summary."""
  if module:
    import importlib
    importlib.import_module(module)
  tasks = rc.task_names(mixture_or_task_name)
  for task in tasks:   # fail before any work on a task that cannot be rank-classified
    rc.check_rank_task(task, split)
    if fewshot is not None:
      rc.check_rank_task(task, fewshot.train_split)
  model, params = load_params(model, checkpoint_path, use_prompt=use_prompt or fewshot is not None, seed=seed)
  kwargs = dict(split=split, length_normalize=length_normalize, examples_per_batch=examples_per_batch,
                task_feature_lengths=task_feature_lengths, max_examples=max_examples, output_dir=output_dir,
                progress=progress)
  if fewshot is None:
    results = fewshot_lib.evaluate_zero_shot(model, params, tasks, **kwargs)
  else:
    if model.prompt.kind == 'none':
      raise rc.EvaluationError('Few-shot prompt tuning needs a prompt: set PromptConfig.kind to shallow or deep '
                               '(a checkpoint without a prompt gets a fresh one).')
    results = fewshot_lib.evaluate_few_shot(model, params, tasks, fewshot, **kwargs)
  summary = fewshot_lib.summary(results)
  summary['tasks'] = {t: r.accuracy for t, r in results.items()}
  return summary


