"""Qin et al. 2023's downstream prompt-tuning protocol on CrossFit target tasks (`papers/002_*` §4.2, §5.3).

"For prompt tuning, we select the learning rate from {5e-1, 4e-1, 3e-1, 2e-1} based on the validation
performance ... We set the batch size, total training steps and evaluation interval to 8, 3000 and 50"
and "We evaluate the model with the best validation performance on the test set" (§4.3.2, §5.3), for each
of the 5 seeds (train/dev samples) of every target task; ARG is then computed against plain prompt
tuning from a random prompt (`metrics.arg_vs_baseline`, per-task means over seeds first).

Per (task, seed): the prompt (the meta-learned / multi-task prompt of a checkpoint, or a fresh one) is
tuned on the seed's train file — shuffled every epoch with ``numpy.random.default_rng([seed, epoch])``,
batches of 8 (the last partial batch of an epoch is dropped, 3000 steps in all) — with the transformer
frozen; every ``eval_interval`` steps the dev file is decoded greedily and scored with the task's
CrossFit metric; the prompt with the best dev score (the earliest on ties) is scored on the test file.
All learning rates of the grid are tuned in one compiled program: Adafactor's update is linear in the
learning rate (``optax.adafactor(1)`` then a per-learning-rate scale), vmapped over the grid.
The optimizer is the papers' Adafactor (decay 0.8, update clipping 1.0, no parameter scaling, gradient
clipping 1.0); Qin et al. do not name theirs (Lester et al.'s prompt tuning uses Adafactor).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from promptjax.evaluation import generation
from promptjax.meta import inner
from promptjax.training import optimizers as opt_lib


@dataclasses.dataclass(frozen=True)
class DownstreamConfig:
  learning_rates: Tuple[float, ...] = (5e-1, 4e-1, 3e-1, 2e-1)
  batch_size: int = 8
  total_steps: int = 3000
  eval_interval: int = 50
  seeds: Tuple[int, ...] = (100, 13, 21, 42, 87)
  max_decode_length: int = 64
  global_norm_clip: Optional[float] = 1.0


def _batch_indices(n: int, batch: int, steps: int, seed: int) -> np.ndarray:
  """[steps, batch] example indices: epochs of a seeded permutation, partial batches dropped."""
  per_epoch = max(1, n // batch)
  if n < batch:
    raise ValueError(f'the train file has {n} examples, fewer than the batch size {batch}')
  out, epoch = [], 0
  while len(out) < steps:
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    out.extend(perm[:per_epoch * batch].reshape(per_epoch, batch))
    epoch += 1
  return np.stack(out[:steps]).astype(np.int32)


@functools.lru_cache(maxsize=8)
def _segment_fn(model, cfg: DownstreamConfig):
  """jit(vmap over learning rates) of `eval_interval` prompt-tuning steps."""
  base = opt_lib.adafactor(1.0, global_norm_clip=cfg.global_norm_clip)

  def one(transformer, prompt, state, lr, inputs, targets, idx):
    def step(carry, rows):
      p, s = carry
      batch = {'encoder_input_tokens': inputs[rows], 'decoder_target_tokens': targets[rows]}
      loss, g = jax.value_and_grad(lambda q: model.loss_fn(inner.join_prompt(transformer, q), batch)[0])(p)
      u, s = base.update(g, s, p)
      return (optax.apply_updates(p, jax.tree.map(lambda x: lr * x, u)), s), loss
    (prompt, state), losses = jax.lax.scan(step, (prompt, state), idx)
    return prompt, state, losses

  return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0, None, None, None))), base


def tune_and_select(model, params, train: generation.TextSet, dev: generation.TextSet, metric: str,
                    cfg: DownstreamConfig, seed: int) -> Dict[str, Any]:
  """Tunes every learning rate of the grid; returns the best-on-dev prompt and the dev curves."""
  transformer, prompt = inner.split_prompt(params)
  fn, base = _segment_fn(model, cfg)
  n_lr = len(cfg.learning_rates)
  prompts = jax.tree.map(lambda x: jnp.broadcast_to(x, (n_lr,) + x.shape), prompt)
  states = jax.vmap(base.init)(prompts)
  lrs = jnp.asarray(cfg.learning_rates, jnp.float32)
  idx = _batch_indices(train.num_examples, cfg.batch_size, cfg.total_steps, seed)
  inputs, targets = jnp.asarray(train.inputs), jnp.asarray(train.targets)
  best = {'score': -np.inf, 'step': None, 'learning_rate': None, 'prompt': None}
  curves = {float(lr): [] for lr in cfg.learning_rates}
  for start in range(0, cfg.total_steps, cfg.eval_interval):
    seg = idx[start:start + cfg.eval_interval]
    prompts, states, _ = fn(transformer, prompts, states, lrs, inputs, targets, jnp.asarray(seg))
    step = start + len(seg)
    for i, lr in enumerate(cfg.learning_rates):
      p_i = jax.tree.map(lambda x: x[i], prompts)
      score = generation.evaluate_generative(model, inner.join_prompt(transformer, p_i), dev, metric,
                                             cfg.max_decode_length)['score']
      curves[float(lr)].append((step, float(score)))
      if score > best['score']:
        best = {'score': float(score), 'step': step, 'learning_rate': float(lr), 'prompt': jax.device_get(p_i)}
  best['dev_curves'] = curves
  return best


def evaluate_task(model, params, task: str, cfg: DownstreamConfig = DownstreamConfig(), *,
                  task_feature_lengths: Optional[Mapping[str, int]] = None,
                  name_for_seed=None, prompt_dir: Optional[str] = None) -> Dict[str, Any]:
  """Qin et al.'s protocol on one CrossFit target task: per seed, best dev → test; the mean over seeds.

  `task` is the CrossFit name (``glue-rte``); `name_for_seed(task, seed)` gives the seqio task name
  (default `promptjax.tasks.crossfit.seqio_task_name`). With `prompt_dir`, each seed's best-on-dev prompt is
  exported there as ``<seqio task name>.npy`` (``.npz`` deep; `promptjax.models.export_prompt`), the input of
  ``promptjax similarity`` (Qin et al. A.6).
  """
  from promptjax.tasks import crossfit
  name_for_seed = name_for_seed or crossfit.seqio_task_name
  per_seed = {}
  for seed in cfg.seeds:
    name = name_for_seed(task, seed)
    metric = crossfit.get_task_info(name).metric
    train, dev, test = (generation.load_texts(name, s, task_feature_lengths) for s in ('train', 'dev', 'test'))
    best = tune_and_select(model, params, train, dev, metric, cfg, seed)
    transformer, _ = inner.split_prompt(params)
    result = generation.evaluate_generative(model, inner.join_prompt(transformer, best['prompt']), test, metric,
                                            cfg.max_decode_length)
    per_seed[seed] = {'test': float(result['score']), 'dev': best['score'], 'step': best['step'],
                      'learning_rate': best['learning_rate'], 'metric': metric, 'dev_curves': best['dev_curves']}
    if prompt_dir:
      import os
      from promptjax.models import export_prompt
      os.makedirs(prompt_dir, exist_ok=True)
      per_seed[seed]['prompt_file'] = export_prompt(best['prompt'], os.path.join(prompt_dir, name))
  return {'task': task, 'test_mean': float(np.mean([v['test'] for v in per_seed.values()])), 'seeds': per_seed}


def evaluate_tasks(model, params, tasks: Sequence[str], cfg: DownstreamConfig = DownstreamConfig(), *,
                   output_dir: Optional[str] = None, baseline: Optional[str] = None,
                   task_feature_lengths: Optional[Mapping[str, int]] = None) -> Dict[str, Any]:
  """`evaluate_task` for every target task; with `baseline` (a previous output_dir, e.g. prompt tuning
  from a random prompt), Qin et al.'s ARG of this run over it. Writes ``downstream.json`` and ``prompts/``
  (every seed's tuned prompt, for ``promptjax similarity``)."""
  import json
  import os
  from promptjax.evaluation import metrics
  if baseline and not os.path.exists(os.path.join(baseline, 'downstream.json')):
    raise generation.EvaluationError(f'baseline {baseline!r} has no downstream.json; run the baseline first.')
  prompt_dir = os.path.join(output_dir, 'prompts') if output_dir else None
  results = {t: evaluate_task(model, params, t, cfg, task_feature_lengths=task_feature_lengths,
                              prompt_dir=prompt_dir) for t in tasks}
  summary: Dict[str, Any] = {'tasks': {t: r['test_mean'] for t, r in results.items()}, 'details': results,
                             'config': dataclasses.asdict(cfg)}
  if baseline:
    path = os.path.join(baseline, 'downstream.json')
    if not os.path.exists(path):
      raise generation.EvaluationError(f'baseline {baseline!r} has no downstream.json; run the baseline first.')
    with open(path) as f:
      base = json.load(f)['tasks']
    missing = set(summary['tasks']) - set(base)
    if missing:
      raise generation.EvaluationError(f'baseline {baseline!r} has no results for {sorted(missing)}.')
    summary['arg_vs_baseline'] = metrics.arg_vs_baseline(summary['tasks'], {t: base[t] for t in summary['tasks']})
    summary['baseline'] = baseline
  if output_dir:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, 'downstream.json'), 'w') as f:
      json.dump(summary, f, indent=1, sort_keys=True, default=str)
  return summary


def run(*, model, checkpoint_path: Optional[str], output_dir: str, target_tasks: Sequence[str],
        config: DownstreamConfig = DownstreamConfig(), baseline: Optional[str] = None,
        task_feature_lengths: Optional[Mapping[str, int]] = None, seed: int = 0,
        module: Optional[str] = 'promptjax.tasks') -> Dict[str, Any]:
  """`promptjax downstream`: load the checkpoint (its prompt, or a fresh one) and run `evaluate_tasks`."""
  import importlib
  from promptjax.evaluation.run import load_params
  if module:
    importlib.import_module(module)
  if model.prompt.kind == 'none':
    raise generation.EvaluationError('Downstream prompt tuning needs a prompt: set PromptConfig.kind.')
  model, params = load_params(model, checkpoint_path, seed=seed)
  return evaluate_tasks(model, params, list(target_tasks), config, output_dir=output_dir, baseline=baseline,
                        task_feature_lengths=task_feature_lengths)
