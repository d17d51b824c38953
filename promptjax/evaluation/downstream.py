"""Qin et al. 2023's downstream prompt-tuning protocol on CrossFit target tasks (§4.2, §5.3).

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
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from promptjax.data import feeds
from promptjax.evaluation import generation
from promptjax.meta import inner
from promptjax.models.prompts import prompt_shapes
from promptjax.training import optimizers as opt_lib


OPTIMIZERS = ('adafactor', 'adamw')
SCORINGS = ('generative', 'rank')
TRAINABLE = ('prompt', 'all')


@dataclasses.dataclass(frozen=True)
class DownstreamConfig:
  """One downstream prompt-tuning protocol. The defaults are Qin et al.'s (§5.3); `pan2023` gives SUPMER's.

  Attributes:
    learning_rates: the grid, tuned side by side (vmapped); the best on dev is kept.
    batch_size, total_steps, eval_interval: steps of `batch_size` examples (partial batches dropped).
    epochs: if set, ``total_steps = epochs × (train examples // batch_size)`` (at least one step per epoch).
    seeds: the task's seeds (one train/dev/test sample each); the test score is averaged over them.
    max_decode_length: generated tokens for ``scoring='generative'``.
    global_norm_clip: gradient clipping before the optimizer (None: none).
    optimizer: ``adafactor`` (the papers' Adafactor; Qin et al. name none) or ``adamw`` (Pan et al. C.1:
      AdamW, PyTorch's defaults with ``weight_decay``).
    weight_decay: AdamW's decoupled weight decay (PyTorch's default 0.01).
    scoring: ``generative`` (greedy decoding scored by the task's CrossFit metric, Qin et al.) or ``rank``
      (rank-classification accuracy on ``<task>_rank_classification``: the verbalizer classes of
      SUPMER's text-to-text classification tasks).
    task_name_format: how a task and seed name the seqio task, e.g. ``'supmer_{task}_{seed}'``; empty
      = CrossFit's `seqio_task_name` (``glue-rte`` → ``crossfit_glue_rte_13``).
    dev_split, test_split: the split names (CrossFit's ``dev`` / ``test``).
    length_normalize: rank scoring with length-normalized log-likelihoods.
    trainable: ``prompt`` (prompt tuning, the transformer frozen) or ``all`` (full-model fine-tuning with no
      prompt: Qin et al. 2023's fine-tuning baseline, §5.2-5.3, lr from {5e-4, 3e-4, 2e-4, 1e-4}); the grid
      is tuned side by side either way, so ``all`` holds one copy of the model per learning rate.
    data_seed: if set, every run reads the task sample of this seed, and `seeds` only seed the runs (batch
      order): SUPMER samples its few-shot data once (data seed 100) and repeats training with seeds 10–50.
      None: one sample per seed (CrossFit's five samples, Qin et al.).
    prefix_mlp_dim: Prefix-Tuning's reparameterization (Li & Liang 2021, §4.3): a deep prompt is tuned as
      P = MLP(P'), with P' [L, d_model] and MLP = Linear(d_model, prefix_mlp_dim) → tanh → Linear(·, every
      layer's keys and values), the MLP dropped after training (the kept and exported prompt is P). P' is
      drawn from N(0, 1) and the Linear layers as PyTorch's defaults, per run seed (Li & Liang's code uses
      `nn.Embedding` and `nn.Linear`); the checkpoint's prompt is not used. None: the prompt is tuned
      directly.
  """
  learning_rates: Tuple[float, ...] = (5e-1, 4e-1, 3e-1, 2e-1)
  batch_size: int = 8
  total_steps: int = 3000
  eval_interval: int = 50
  seeds: Tuple[int, ...] = (100, 13, 21, 42, 87)
  max_decode_length: int = 64
  global_norm_clip: Optional[float] = 1.0
  epochs: Optional[int] = None
  optimizer: str = 'adafactor'
  weight_decay: float = 0.01
  scoring: str = 'generative'
  task_name_format: str = ''
  dev_split: str = 'dev'
  test_split: str = 'test'
  length_normalize: bool = False
  data_seed: Optional[int] = None
  trainable: str = 'prompt'
  prefix_mlp_dim: Optional[int] = None

  def __post_init__(self):
    if self.prefix_mlp_dim is not None and (self.trainable != 'prompt' or self.prefix_mlp_dim < 1):
      raise generation.EvaluationError(f'DownstreamConfig.prefix_mlp_dim={self.prefix_mlp_dim} reparameterizes a '
                                       "tuned deep prompt: it needs trainable='prompt' and a size >= 1.")
    if self.trainable not in TRAINABLE:
      raise generation.EvaluationError(f'DownstreamConfig.trainable={self.trainable!r}: use one of {TRAINABLE}.')
    if self.optimizer not in OPTIMIZERS:
      raise generation.EvaluationError(f'DownstreamConfig.optimizer={self.optimizer!r}: use one of {OPTIMIZERS}.')
    if self.scoring not in SCORINGS:
      raise generation.EvaluationError(f'DownstreamConfig.scoring={self.scoring!r}: use one of {SCORINGS}.')

  def num_steps(self, num_examples: int) -> int:
    if self.epochs is None:
      return self.total_steps
    return int(self.epochs) * max(1, num_examples // self.batch_size)

  def seqio_name(self, task: str, seed: int) -> str:
    if self.task_name_format:
      return self.task_name_format.format(task=task, seed=seed)
    from promptjax.tasks import crossfit
    return crossfit.seqio_task_name(task, seed)


def pan2023(**overrides) -> DownstreamConfig:
  """SUPMER's downstream prompt tuning (Pan et al. 2023, Appendix C.1): AdamW, batch 32, 200 epochs, dev
  every 10 steps, learning rate from {0.1, 0.2, 0.3}, runs with seeds 10–50 on the data sample of seed 100
  (the official code's default ``data_seed``), rank classification of the verbalizer classes, tasks
  ``supmer_<dataset>_<data seed>`` with splits train / validation / test."""
  kw = dict(learning_rates=(1e-1, 2e-1, 3e-1), batch_size=32, epochs=200, eval_interval=10,
            seeds=(10, 20, 30, 40, 50), data_seed=100, optimizer='adamw', scoring='rank',
            task_name_format='supmer_{task}_{seed}', dev_split='validation', test_split='test')
  kw.update(overrides)
  return DownstreamConfig(**kw)


def split_tuned(params, cfg: DownstreamConfig):
  """(fixed, tuned): the transformer and the prompt, or nothing and every parameter (``trainable='all'``)."""
  return ({}, params) if cfg.trainable == 'all' else inner.split_prompt(params)


def join_tuned(fixed, tuned, cfg: DownstreamConfig):
  return tuned if cfg.trainable == 'all' else inner.join_prompt(fixed, tuned)


def prefix_mlp_init(shapes: Mapping[Tuple[str, ...], Tuple[int, ...]], d_model: int, mlp_dim: int,
                    seed: int) -> Dict[str, Any]:
  """Prefix-Tuning's tuned parameters (`DownstreamConfig.prefix_mlp_dim`): ``source`` P' [L, d_model] ~ N(0, 1)
  and the MLP's ``w1`` [d_model, mlp_dim], ``b1``, ``w2`` [mlp_dim, D], ``b2`` [D] ~ U(±1/sqrt(fan_in)) (PyTorch's
  `nn.Linear` defaults), D the size of one position of the deep prompt of `shapes` (every layer's keys and
  values)."""
  length = {shape[0] for shape in shapes.values()}
  if len(length) != 1:
    raise generation.EvaluationError(f'Prefix-Tuning needs a deep prompt of one length, got shapes {shapes}.')
  (length,) = length
  total = sum(int(np.prod(shape[1:])) for shape in shapes.values())
  k = jax.random.split(jax.random.PRNGKey(seed), 5)
  def uniform(key, shape, fan_in):
    bound = 1.0 / np.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)
  return {'source': jax.random.normal(k[0], (length, d_model), jnp.float32),
          'w1': uniform(k[1], (d_model, mlp_dim), d_model), 'b1': uniform(k[2], (mlp_dim,), d_model),
          'w2': uniform(k[3], (mlp_dim, total), mlp_dim), 'b2': uniform(k[4], (total,), mlp_dim)}


def prefix_mlp_prompt(tuned: Mapping[str, Any], shapes: Mapping[Tuple[str, ...], Tuple[int, ...]]) -> Dict[str, Any]:
  """The deep prompt P = MLP(P') (Li & Liang 2021): tanh(P' w1 + b1) w2 + b2, split into the prompt's
  parameters in the sorted order of their paths."""
  out = jnp.tanh(tuned['source'] @ tuned['w1'] + tuned['b1']) @ tuned['w2'] + tuned['b2']   # [L, D]
  flat, at = {}, 0
  for path in sorted(shapes):
    shape = tuple(shapes[path])
    size = int(np.prod(shape[1:]))
    flat[path] = out[:, at:at + size].reshape(shape)
    at += size
  return traverse_util.unflatten_dict(flat)


def _to_prompt(model, cfg: DownstreamConfig) -> Callable:
  """Tuned parameters -> the model's prompt subtree (the identity without `prefix_mlp_dim`)."""
  if cfg.prefix_mlp_dim is None:
    return lambda tuned: tuned
  shapes = prompt_shapes(model.prompt, model.config)
  return lambda tuned: prefix_mlp_prompt(tuned, shapes)


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
def _segment_fn(model, cfg: DownstreamConfig, gradient_fn: Optional[Callable] = None):
  """jit(vmap over learning rates) of `eval_interval` prompt-tuning steps.

  `gradient_fn(grad, transformer, prompt, batch) -> grad` transforms every prompt gradient before the
  optimizer (SUPMER's frozen meta-gradient regularizer ψ*, Pan et al. Eq. 6); None = the plain gradient.
  """
  if cfg.optimizer == 'adamw':
    base = opt_lib.adamw(1.0, weight_decay=cfg.weight_decay, global_norm_clip=cfg.global_norm_clip)
  else:
    base = opt_lib.adafactor(1.0, global_norm_clip=cfg.global_norm_clip)

  to_prompt = _to_prompt(model, cfg)

  def one(transformer, prompt, state, lr, inputs, targets, idx):
    def step(carry, rows):
      p, s = carry
      batch = {'encoder_input_tokens': inputs[rows], 'decoder_target_tokens': targets[rows]}
      loss, g = jax.value_and_grad(lambda q: model.loss_fn(join_tuned(transformer, to_prompt(q), cfg), batch)[0])(p)
      if gradient_fn is not None:
        g = gradient_fn(g, transformer, p, batch)
      u, s = base.update(g, s, p)
      return (optax.apply_updates(p, jax.tree.map(lambda x: lr * x, u)), s), loss
    (prompt, state), losses = jax.lax.scan(step, (prompt, state), idx)
    return prompt, state, losses

  return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0, None, None, None))), base


class _Scorer:
  """The dev / test score of a prompt: greedy generation + the CrossFit metric, or rank classification."""

  def __init__(self, model, transformer, name: str, split: str, cfg: DownstreamConfig,
               task_feature_lengths: Optional[Mapping[str, int]]):
    self.model, self.transformer, self.cfg = model, transformer, cfg
    if cfg.scoring == 'generative':
      from promptjax.tasks import crossfit
      self.metric = crossfit.get_task_info(name).metric if name in crossfit.registered_tasks() else 'ACC'
      self.texts = generation.load_texts(name, split, task_feature_lengths)
    else:
      from promptjax.evaluation import rank_classification as rc
      from promptjax.tasks.p3 import RANK_SUFFIX
      self.metric = 'ACC'
      rank_name = name + RANK_SUFFIX
      rc.check_rank_task(rank_name, split)
      self.choices = rc.load_choices(rank_name, split, task_feature_lengths)
      self.scorer = rc.get_scorer(model, cfg.length_normalize)

  def __call__(self, prompt) -> float:
    params = join_tuned(self.transformer, prompt, self.cfg)
    if self.cfg.scoring == 'generative':
      return float(generation.evaluate_generative(self.model, params, self.texts, self.metric,
                                                  self.cfg.max_decode_length)['score'])
    from promptjax.evaluation import rank_classification as rc
    return float(rc.rank_classify(self.scorer, params, self.choices).accuracy)



def tune_and_select(model, params, train: generation.TextSet, dev, metric: Optional[str],
                    cfg: DownstreamConfig, seed: int, gradient_fn: Optional[Callable] = None) -> Dict[str, Any]:
  """Tunes every learning rate of the grid; returns the best-on-dev prompt (with ``trainable='all'``: the
  best parameters, under the same ``'prompt'`` key) and the dev curves.

  `dev` is a `generation.TextSet` (scored with the CrossFit `metric`) or any callable prompt -> score.
  """
  transformer, prompt = split_tuned(params, cfg)
  to_prompt = _to_prompt(model, cfg)
  if cfg.prefix_mlp_dim is not None:
    if gradient_fn is not None:
      raise generation.EvaluationError('Prefix-Tuning (DownstreamConfig.prefix_mlp_dim) takes no gradient '
                                       'transformation (USE_SUPMER_REGULARIZER = False).')
    prompt = prefix_mlp_init(prompt_shapes(model.prompt, model.config), model.config.emb_dim,
                             cfg.prefix_mlp_dim, seed)
  if isinstance(dev, generation.TextSet):
    texts = dev
    dev = lambda p: float(generation.evaluate_generative(  # pylint: disable=unnecessary-lambda-assignment
        model, join_tuned(transformer, p, cfg), texts, metric, cfg.max_decode_length)['score'])
  fn, base = _segment_fn(model, cfg, gradient_fn)
  n_lr = len(cfg.learning_rates)
  prompts = jax.tree.map(lambda x: jnp.broadcast_to(x, (n_lr,) + x.shape), prompt)
  states = jax.vmap(base.init)(prompts)
  lrs = jnp.asarray(cfg.learning_rates, jnp.float32)
  total = cfg.num_steps(train.num_examples)
  idx = _batch_indices(train.num_examples, cfg.batch_size, total, seed)
  inputs, targets = jnp.asarray(train.inputs), jnp.asarray(train.targets)
  best = {'score': -np.inf, 'step': None, 'learning_rate': None, 'prompt': None}
  curves = {float(lr): [] for lr in cfg.learning_rates}
  for start in range(0, total, cfg.eval_interval):
    seg = idx[start:start + cfg.eval_interval]
    prompts, states, _ = fn(transformer, prompts, states, lrs, inputs, targets, jnp.asarray(seg))
    step = start + len(seg)
    for i, lr in enumerate(cfg.learning_rates):
      p_i = to_prompt(jax.tree.map(lambda x: x[i], prompts))   # Prefix-Tuning: the MLP dropped here
      score = dev(p_i)
      curves[float(lr)].append((step, float(score)))
      if score > best['score']:
        best = {'score': float(score), 'step': step, 'learning_rate': float(lr), 'prompt': jax.device_get(p_i)}
  best['dev_curves'] = curves
  return best


def evaluate_task(model, params, task: str, cfg: DownstreamConfig = DownstreamConfig(), *,
                  task_feature_lengths: Optional[Mapping[str, int]] = None,
                  name_for_seed=None, prompt_dir: Optional[str] = None,
                  gradient_fn: Optional[Callable] = None) -> Dict[str, Any]:
  """The protocol on one target task: per seed, best dev → test; the mean over seeds.

  `task` is the dataset name (CrossFit's ``glue-rte``, or SUPMER's ``sst2``); the seqio task of a seed is
  `DownstreamConfig.seqio_name` (or `name_for_seed(task, seed)`). With `prompt_dir`, each seed's
  best-on-dev prompt is exported there as ``<seqio task name>.npy`` (``<name>_run<seed>`` with a `data_seed`;
  ``.npz`` deep;
  `promptjax.models.export_prompt`), the input of ``promptjax similarity`` (Qin et al. A.6).
  `gradient_fn` transforms each prompt gradient (SUPMER's frozen ψ*; see `_segment_fn`).
  `task_feature_lengths` may be a callable task -> lengths (per-dataset input lengths, Pan et al. C.1).
  """
  name_for_seed = name_for_seed or cfg.seqio_name
  if callable(task_feature_lengths):   # per-dataset lengths, e.g. supmer_downstream.feature_lengths
    task_feature_lengths = task_feature_lengths(task)
  transformer, _ = split_tuned(params, cfg)
  per_seed = {}
  for seed in cfg.seeds:
    name = name_for_seed(task, seed if cfg.data_seed is None else cfg.data_seed)
    train = generation.load_texts(name, 'train', task_feature_lengths)
    dev = _Scorer(model, transformer, name, cfg.dev_split, cfg, task_feature_lengths)
    test = _Scorer(model, transformer, name, cfg.test_split, cfg, task_feature_lengths)
    best = tune_and_select(model, params, train, dev, dev.metric, cfg, seed, gradient_fn)
    per_seed[seed] = {'test': test(best['prompt']), 'dev': best['score'], 'step': best['step'],
                      'learning_rate': best['learning_rate'], 'metric': dev.metric, 'dev_curves': best['dev_curves']}
    if prompt_dir and cfg.trainable == 'prompt':
      import os
      from promptjax.models import export_prompt
      os.makedirs(prompt_dir, exist_ok=True)
      stem = name if cfg.data_seed is None else f'{name}_run{seed}'
      per_seed[seed]['prompt_file'] = export_prompt(best['prompt'], os.path.join(prompt_dir, stem))
  return {'task': task, 'test_mean': float(np.mean([v['test'] for v in per_seed.values()])), 'seeds': per_seed}


def evaluate_tasks(model, params, tasks: Sequence[str], cfg: DownstreamConfig = DownstreamConfig(), *,
                   output_dir: Optional[str] = None, baseline: Optional[str] = None,
                   task_feature_lengths: Optional[Mapping[str, int]] = None,
                   gradient_fn: Optional[Callable] = None,
                   checkpoint: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """`evaluate_task` for every target task; with `baseline` (a previous output_dir, e.g. prompt tuning
  from a random prompt), Qin et al.'s ARG of this run over it. Writes ``downstream.json`` (with
  `checkpoint`, the {path, step} tuned from, if given) and ``prompts/`` (every seed's tuned prompt, for
  ``promptjax similarity``); with several processes every process tunes the same prompts and process 0
  alone writes."""
  import json
  import os
  from promptjax.evaluation import metrics
  from promptjax.evaluation.rank_classification import writes_files
  if baseline and not os.path.exists(os.path.join(baseline, 'downstream.json')):
    raise generation.EvaluationError(f'baseline {baseline!r} has no downstream.json; run the baseline first.')
  output_dir = output_dir if writes_files() else None
  prompt_dir = os.path.join(output_dir, 'prompts') if output_dir else None
  results = {t: evaluate_task(model, params, t, cfg, task_feature_lengths=task_feature_lengths,
                              prompt_dir=prompt_dir, gradient_fn=gradient_fn) for t in tasks}
  summary: Dict[str, Any] = {'tasks': {t: r['test_mean'] for t, r in results.items()}, 'details': results,
                             'config': dataclasses.asdict(cfg)}
  if checkpoint is not None:
    summary['checkpoint'] = dict(checkpoint)
  if baseline:
    path = os.path.join(baseline, 'downstream.json')
    if not os.path.exists(path):
      raise generation.EvaluationError(f'baseline {baseline!r} has no downstream.json; run the baseline first.')
    with open(path) as f:
      base_json = json.load(f)
    base = base_json['tasks']
    missing = set(summary['tasks']) - set(base)
    if missing:
      raise generation.EvaluationError(f'baseline {baseline!r} has no results for {sorted(missing)}.')
    summary['arg_vs_baseline'] = metrics.arg_vs_baseline(summary['tasks'], {t: base[t] for t in summary['tasks']})
    over_seeds = metrics.arg_vs_baseline_over_seeds(
        {t: results[t] for t in summary['tasks']}, base_json.get('details', {}))
    if over_seeds:   # Qin et al. Table 2: the mean ± std of the per-seed ARGs
      summary['arg_vs_baseline_over_seeds'] = over_seeds
    summary['baseline'] = baseline
  if output_dir:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, 'downstream.json'), 'w') as f:
      json.dump(summary, f, indent=1, sort_keys=True, default=str)
  return summary


def supmer_gradient_fn(model, phi, supmer_cfg) -> Callable:
  """The frozen ψ* of SUPMER on every prompt gradient (Pan et al. §3.4, Eq. 6): SUPMER's optax transformation
  `psi_transformation(φ*)` with the gate's H the mean encoder state of the step's batch at the current
  prompt (`promptjax.supmer.algorithm`)."""
  from promptjax.supmer import algorithm as supmer_lib
  tx = supmer_lib.psi_transformation(phi, supmer_cfg)

  def fn(grad, transformer, prompt, batch):
    h = jax.lax.stop_gradient(supmer_lib.support_representation(model, inner.join_prompt(transformer, prompt), batch))
    return tx.update(grad, tx.init(prompt), support_representation=h)[0]
  return fn


def normal_prompt(shapes: Mapping[Tuple[str, ...], Tuple[int, ...]], std: float, seed: int) -> Dict[str, Any]:
  """A fresh prompt subtree (`shapes`: {path: shape}, `promptjax.models.prompts.prompt_shapes`) with every
  entry drawn from N(0, std²) (Pan et al. 2023, App. B: vanilla prompt tuning's prompt "randomly initialized
  from a normal distribution"); seeded."""
  from flax import traverse_util
  paths = sorted(shapes)
  keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 1), len(paths))
  return traverse_util.unflatten_dict({p: np.asarray(std * jax.random.normal(k, shapes[p], jnp.float32))
                                       for k, p in zip(keys, paths)})


def run(*, model, checkpoint_path: Optional[str], output_dir: str, target_tasks: Sequence[str],
        config: DownstreamConfig = DownstreamConfig(), baseline: Optional[str] = None,
        task_feature_lengths: Optional[Mapping[str, int]] = None, seed: int = 0,
        module: Optional[str] = 'promptjax.tasks', use_supmer_regularizer: bool = False,
        fresh_prompt_std: Optional[float] = None) -> Dict[str, Any]:
  """`promptjax downstream`: load the checkpoint (its prompt, or a fresh one) and run `evaluate_tasks`.

  `use_supmer_regularizer`: apply the checkpoint's frozen SUPMER regularizer ψ* to every prompt gradient
  (the checkpoint must come from a SUPMER run). `fresh_prompt_std`: tune a fresh prompt drawn from
  N(0, std²) (`normal_prompt`) instead of the model's ``PromptConfig.init`` (vanilla prompt tuning, Pan et
  al. App. B); the checkpoint must hold no trained prompt."""
  from promptjax.evaluation.run import load_params_with_info
  feeds.import_task_module(module)
  if model.prompt.kind == 'none' and config.trainable == 'prompt':
    raise generation.EvaluationError('Downstream prompt tuning needs a prompt: set PromptConfig.kind (or '
                                     "DownstreamConfig.trainable='all' to fine-tune the whole model).")
  if model.prompt.kind != 'none' and config.trainable == 'all':
    raise generation.EvaluationError("DownstreamConfig.trainable='all' fine-tunes the model without a prompt "
                                     "(Qin et al. 2023's fine-tuning baseline): set PromptConfig.kind = 'none'.")
  gradient_fn = None
  if use_supmer_regularizer:
    from promptjax.evaluation.run import load_supmer
    phi, supmer_cfg = load_supmer(checkpoint_path)
    gradient_fn = supmer_gradient_fn(model, jax.tree.map(jnp.asarray, phi), supmer_cfg)
  if fresh_prompt_std is None:
    model, params, checkpoint = load_params_with_info(model, checkpoint_path, seed=seed)
  else:
    from promptjax.models import PromptConfig
    try:  # the model without a prompt refuses a checkpoint that holds a trained one
      _, transformer, checkpoint = load_params_with_info(
          dataclasses.replace(model, prompt=PromptConfig(kind='none')), checkpoint_path, seed=seed)
    except generation.EvaluationError as e:
      if 'holds a trained' not in str(e):
        raise
      raise generation.EvaluationError(
          f'FRESH_PROMPT_STD tunes a fresh prompt drawn from N(0, std²) (vanilla prompt tuning), but '
          f'CHECKPOINT_PATH={checkpoint_path} holds a trained prompt: give the backbone\'s weights.') from None
    from promptjax.models.prompts import prompt_shapes
    params = {**transformer, 'prompt': normal_prompt(prompt_shapes(model.prompt, model.config), fresh_prompt_std,
                                                     seed)}
  return evaluate_tasks(model, params, list(target_tasks), config, output_dir=output_dir, baseline=baseline,
                        task_feature_lengths=task_feature_lengths, gradient_fn=gradient_fn,
                        checkpoint=checkpoint.to_json())
