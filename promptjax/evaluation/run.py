"""`promptjax eval` / `promptjax fewshot`: evaluate a checkpoint on a task or mixture (T5X's eval macros).

``CHECKPOINT_PATH`` (a promptjax / T5X MODEL_DIR or ``checkpoint_<step>``, or HF weights),
``EVAL_OUTPUT_DIR``, ``MIXTURE_OR_TASK_NAME`` (a rank-classification task or a mixture of them, e.g.
``mini_heldout_rank_classification`` or ``green_rank_classification``, or a generative task with seqio
``metric_fns`` such as ``crossfit_glue_sst2_13``, scored by ``seqio.Evaluator`` on greedy predictions:
`promptjax.evaluation.generation.evaluate_with_seqio`; its metrics go under ``generative`` in
``metrics.json``, seqio's loggers write ``<task>-metrics.jsonl`` / ``<task>-<step:06>.jsonl``). Every task is
evaluated on its own (per-template accuracy); ``EVAL_OUTPUT_DIR`` gets ``metrics.json`` (per task + ARG) and
``predictions/<task>.jsonl`` (every instance's choice scores, prediction and gold), and, few-shot,
``selected_examples.json``. ``metrics.json`` records the checkpoint evaluated (``checkpoint``: the
directory read, e.g. ``<MODEL_DIR>/checkpoint_<step>``, and its step; the step is null for
HF weights; both null for a random init), and seqio's TensorBoard summaries are written at that step
(0 without one).

Several processes (``jax.process_count() > 1``, e.g. ``promptjax eval`` under ``jax.distributed``): every
process reads the whole split in the same order and computes the same results (nothing is sharded: the
model and its parameters are local to each process), and process 0 alone writes files and shows progress
(`rank_classification.writes_files`).

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

from promptjax.checkpoints import restore
from promptjax.data import feeds
from promptjax.evaluation import fewshot as fewshot_lib
from promptjax.evaluation import rank_classification as rc
from promptjax.supmer import algorithm as supmer_lib


def load_params(model, checkpoint_path: Optional[str], *, use_prompt: bool = True, seed: int = 0):
  """(model, params) ready to evaluate (`promptjax.checkpoints.restore.load_params`: the module docstring's
  prompt rules), failures as `EvaluationError`. `checkpoint_path` is a MODEL_DIR (its highest step), a
  ``checkpoint_<step>``, T5X or HF weights, or None (a seeded random init)."""
  return load_params_with_info(model, checkpoint_path, use_prompt=use_prompt, seed=seed)[:2]


def load_params_with_info(model, checkpoint_path: Optional[str], *, use_prompt: bool = True, seed: int = 0):
  """`load_params` and the `restore.CheckpointInfo` (directory read, step) of the checkpoint."""
  try:
    return restore.load_params_with_info(model, checkpoint_path, use_prompt=use_prompt, seed=seed)
  except restore.RestoreError as e:
    raise rc.EvaluationError(str(e)) from e


def load_supmer(checkpoint_path: str):
  """(φ, SupmerConfig) of a SUPMER checkpoint (the trainer's 'supmer' subtree), for downstream prompt tuning
  with the frozen regularizer ψ* (Pan et al. 2023, §3.4). The config's transform is read from φ's
  parameters ('affine' or 'official_mlp')."""
  if checkpoint_path is None or not os.path.exists(checkpoint_path):
    raise rc.EvaluationError(f'The frozen SUPMER regularizer needs CHECKPOINT_PATH of a SUPMER run; got '
                             f'{checkpoint_path!r}.')
  sub = restore.load_subtree(checkpoint_path, supmer_lib.SUPMER_KEY)
  if sub is None:
    raise rc.EvaluationError(f'CHECKPOINT_PATH={checkpoint_path} has no SUPMER regularizer (no '
                             f"'{supmer_lib.SUPMER_KEY}' parameters): train it with supmer.gin, or set "
                             f'USE_SUPMER_REGULARIZER=False (plain prompt tuning from its prompt).')
  phi = sub['phi']
  kind = 'affine' if 'kernel' in phi['transform'] else 'official_mlp'
  return phi, supmer_lib.SupmerConfig(transform=kind)


def _is_generative(task_name: str, split: str) -> bool:
  """A task that is no rank-classification view but has seqio ``metric_fns`` (e.g. CrossFit's)."""
  from promptjax.evaluation import generation
  try:
    rc.check_rank_task(task_name, split)
    return False
  except rc.EvaluationError:
    if generation.generative_task_names([task_name]):
      return True
    raise


def evaluate(*, model, checkpoint_path: Optional[str], output_dir: str, mixture_or_task_name: str,
             split: str = 'validation', use_prompt: bool = True, length_normalize: bool = True,
             task_feature_lengths: Optional[Mapping[str, int]] = None, examples_per_batch: int = 32,
             max_examples: Optional[int] = None, fewshot: Optional[fewshot_lib.FewShotConfig] = None,
             seed: int = 0, module: Optional[str] = 'promptjax.tasks', progress: bool = True,
             max_decode_length: Optional[int] = 64, demonstrations: int = 0,
             demonstration_split: str = 'train', demonstration_seed: int = 100) -> Dict[str, Any]:
  """Zero-shot (``fewshot=None``) or few-shot rank classification of every rank-classification task, and
  (zero-shot) greedy generation scored by ``seqio.Evaluator`` of every task with seqio ``metric_fns``;
  returns the summary (``generative``: {task: {metric: value}} for the latter). `demonstrations` > 0:
  few-shot in-context inference of the rank-classification tasks (`fewshot.evaluate_zero_shot`)."""
  if demonstrations and (fewshot is not None or demonstrations < 0):
    raise rc.EvaluationError(f'DEMONSTRATIONS={demonstrations}: in-context demonstrations are for zero-shot '
                             '`promptjax eval` (a number >= 0), not with few-shot prompt tuning.')
  feeds.import_task_module(module)
  tasks = rc.task_names(mixture_or_task_name)
  generative = []
  for task in tasks:   # fail before any work on a task that cannot be evaluated
    if _is_generative(task, split):
      if fewshot is not None:
        raise rc.EvaluationError(f'Task {task!r} is generative (scored by its seqio metric_fns); few-shot prompt '
                                 f'tuning here is rank classification. Tune it with `promptjax downstream`.')
      if split not in seqio_splits(task):
        raise rc.EvaluationError(f'Task {task!r} has no split {split!r} (it has {seqio_splits(task)}); set '
                                 f'EVAL_SPLIT to one of them.')
      generative.append(task)
    elif fewshot is not None:
      rc.check_rank_task(task, fewshot.train_split)
  ranked = [t for t in tasks if t not in generative]
  model, params, checkpoint = load_params_with_info(model, checkpoint_path,
                                                    use_prompt=use_prompt or fewshot is not None, seed=seed)
  progress = progress and rc.writes_files()
  kwargs = dict(split=split, length_normalize=length_normalize, examples_per_batch=examples_per_batch,
                task_feature_lengths=task_feature_lengths, max_examples=max_examples, output_dir=output_dir,
                progress=progress)
  results = {}
  if ranked and fewshot is None:
    results = fewshot_lib.evaluate_zero_shot(model, params, ranked, demonstrations=demonstrations,
                                             demonstration_split=demonstration_split,
                                             demonstration_seed=demonstration_seed, **kwargs)
  elif ranked:
    if model.prompt.kind == 'none':
      raise rc.EvaluationError('Few-shot prompt tuning needs a prompt: set PromptConfig.kind to shallow or deep '
                               '(a checkpoint without a prompt gets a fresh one).')
    results = fewshot_lib.evaluate_few_shot(model, params, ranked, fewshot, **kwargs)
  summary = fewshot_lib.summary(results) if results else {}
  summary['tasks'] = {t: r.accuracy for t, r in results.items()}
  summary['checkpoint'] = checkpoint.to_json()
  extra = {'checkpoint': summary['checkpoint']}
  if generative:
    from promptjax.evaluation import generation
    scores = {}
    for task in fewshot_lib._progress(generative, progress, 'generative'):  # pylint: disable=protected-access
      scores[task] = generation.evaluate_with_seqio(
          model, params, task, split=split, output_dir=output_dir, task_feature_lengths=task_feature_lengths,
          max_decode_length=max_decode_length, batch_size=examples_per_batch, step=checkpoint.step or 0)
    summary['generative'] = scores
    extra.update(generative=scores, split=split)
  _merge_metrics(output_dir, extra)
  return summary


def seqio_splits(task_name: str):
  import seqio
  return list(seqio.get_mixture_or_task(task_name).splits)


def _merge_metrics(output_dir: Optional[str], extra: Mapping[str, Any]) -> None:
  """Adds `extra` to ``metrics.json`` (created with no rank-classification tasks if absent; process 0 only)."""
  if not output_dir or not rc.writes_files():
    return
  import json
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, 'metrics.json')
  metrics = {'tasks': {}}
  if os.path.exists(path):
    with open(path) as f:
      metrics = json.load(f)
  metrics.update(extra)
  with open(path, 'w') as f:
    json.dump(metrics, f, indent=1, sort_keys=True)
