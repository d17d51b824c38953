"""Few-shot prompt tuning of many templates in one compiled program (Wu et al. 2022 §4, Appendix C).

"In few-shot finetuning, we train on one batch of 16 randomly selected examples for 100 epochs (the
same batch throughout training) ... we do not manually balance the label distribution" (Wu et al. 2022,
Appendix C). Per evaluation template: choose `num_shots` training instances with a recorded seed, tune
only the prompt (shallow or deep; from the continued-pretraining checkpoint, or a fresh one) on that one
batch for `epochs` steps with the transformer frozen, then rank-classify the evaluation split.

The optimizer is the official code's (``configs/fewshot_eval.jsonnet``: Adafactor lr 1e-3,
``scale_parameter=False``, ``relative_step=False``, gradient clipping 1.0) — promptjax's
`optimizers.adafactor(1e-3)`. The target of each training instance is its (first) correct choice.

Many templates at once: the tuning step is the meta-learning inner loop (`promptjax.meta.inner`,
one `lax.scan` of optax steps on a reused batch) vmapped over templates — prompt copies and batches
are stacked, the transformer is shared. `templates_per_program` is the size knob (vmap width; the
last group is padded by repeating a template, so one program serves every group). Each template's
batch is padded to the group's longest input/target; padding is masked, so the result equals tuning
the template alone (tested).

Example selection: instance positions drawn without replacement by
``numpy.random.default_rng([seed, crc32(task name)])`` — independent of which other templates are
tuned, and written to ``selected_examples.json`` (task -> the ``idx`` of each chosen instance).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import zlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from promptjax.evaluation import rank_classification as rc
from promptjax.meta import inner
from promptjax.training import optimizers as opt_lib


@dataclasses.dataclass(frozen=True)
class FewShotConfig:
  """Wu et al.'s few-shot protocol: 16 instances, 100 epochs of one batch, Adafactor 1e-3, clip 1.0."""
  num_shots: int = 16
  epochs: int = 100
  learning_rate: float = 1e-3
  global_norm_clip: Optional[float] = 1.0
  seed: int = 100
  train_split: str = 'train'
  templates_per_program: Optional[int] = None
  dropout_seed: Optional[int] = None   # None: no dropout while tuning


def select_examples(task: str, num_available: int, num_shots: int, seed: int) -> np.ndarray:
  """Positions of the chosen instances (sorted), a pure function of (task, seed)."""
  if num_shots > num_available:
    raise rc.EvaluationError(f'Task {task!r} has {num_available} training instances, fewer than '
                             f'num_shots={num_shots}.')
  rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
  return np.sort(rng.choice(num_available, size=num_shots, replace=False))


def training_batch(train: rc.ChoiceSet, rows: np.ndarray) -> Dict[str, np.ndarray]:
  """{'encoder_input_tokens', 'decoder_target_tokens'} of the chosen instances (gold targets)."""
  return {'encoder_input_tokens': train.inputs[rows], 'decoder_target_tokens': train.gold_targets()[rows]}


def _pad_stack(batches: Sequence[Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
  out = {}
  for key in batches[0]:
    width = rc._round_up(max(b[key].shape[1] for b in batches), 8)
    stacked = np.zeros((len(batches), batches[0][key].shape[0], width), np.int32)
    for i, b in enumerate(batches):
      stacked[i, :, :b[key].shape[1]] = b[key]
    out[key] = stacked
  return out


class PromptTuner:
  """Tunes one prompt per template, `templates_per_program` templates per compiled call."""

  def __init__(self, model, cfg: FewShotConfig):
    self.model = model
    self.cfg = cfg
    self.optimizer = opt_lib.adafactor(cfg.learning_rate, global_norm_clip=cfg.global_norm_clip)

    def loss_fn(params, batch, rng):
      return model.loss_fn(params, batch, rng)[0]

    def one(transformer, prompt, batch, rng):
      rng = rng if cfg.dropout_seed is not None else None
      tuned, _, losses = inner.inner_loop(loss_fn, transformer, prompt, batch, self.optimizer,
                                          num_steps=cfg.epochs, rng=rng)
      return tuned, losses

    self._tune = jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0)))

  def tune(self, params, batches: Sequence[Mapping[str, np.ndarray]], keys: Sequence[int] = None,
           progress: bool = False) -> Tuple[List[Any], np.ndarray]:
    """Tuned prompt subtrees (one per batch) and the training losses [N, epochs] before each step.

    `keys` (default 0..N-1) seed each template's dropout stream, so grouping does not change results.
    """
    transformer, prompt = inner.split_prompt(params)
    n = len(batches)
    width = self.cfg.templates_per_program or n
    keys = list(range(n)) if keys is None else list(keys)
    base = jax.random.PRNGKey(0 if self.cfg.dropout_seed is None else self.cfg.dropout_seed)
    prompts, losses = [], []
    groups = range(0, n, width)
    if progress:
      from tqdm.auto import tqdm
      groups = tqdm(groups, desc='few-shot prompt tuning', leave=False, unit='group')
    for s in groups:
      idx = list(range(s, min(s + width, n)))
      real = len(idx)
      idx += [idx[-1]] * (width - real)           # pad the last group: one program for all groups
      stacked = _pad_stack([batches[i] for i in idx])
      rngs = jnp.stack([jax.random.fold_in(base, keys[i]) for i in idx])
      tuned, loss = self._tune(transformer, prompt, stacked, rngs)
      tuned = jax.device_get(tuned)
      for j in range(real):
        prompts.append(jax.tree.map(lambda x: x[j], tuned))
      losses.append(np.asarray(loss)[:real])
    return prompts, np.concatenate(losses, 0)


@functools.lru_cache(maxsize=16)
def get_tuner(model, cfg: FewShotConfig) -> PromptTuner:
  """One `PromptTuner` (one compiled program per shape) per (model, config) in this process."""
  return PromptTuner(model, cfg)


def dataset_of(task: str) -> str:
  """The dataset a template belongs to (for within-dataset ARG averaging and per-dataset plots)."""
  name = task[:-len('_rank_classification')] if task.endswith('_rank_classification') else task
  from promptjax.tasks import facts, mini
  subsets = mini.manifest()['p3']['subsets']
  if name in subsets:
    return subsets[name]['dataset']
  info = facts.p3_task_info()
  if name in info:
    dataset, subset, _ = info[name]
    return f'{dataset}/{subset}' if subset else dataset
  return name


def summary(results: Mapping[str, rc.TaskResult]) -> Dict[str, Any]:
  """ARG (over templates, and within-dataset first) of a set of template results."""
  from promptjax.evaluation import metrics
  acc = {t: r.accuracy for t, r in results.items()}
  base = {t: r.random_baseline for t, r in results.items()}
  ds = {t: dataset_of(t) for t in results}
  return {'arg': metrics.average_relative_gain(acc, base),
          'arg_within_dataset': metrics.average_relative_gain(acc, base, ds, within_dataset=True),
          'datasets': ds, 'mean_accuracy': float(np.mean(list(acc.values())))}


def evaluate_zero_shot(model, params, tasks: Sequence[str], *, split: str = 'validation',
                       length_normalize: bool = True, examples_per_batch: int = 32,
                       task_feature_lengths: Optional[Mapping[str, int]] = None,
                       max_examples: Optional[int] = None, output_dir: Optional[str] = None,
                       progress: bool = True, eval_choices: Optional[Mapping[str, rc.ChoiceSet]] = None,
                       demonstrations: int = 0, demonstration_split: str = 'train', demonstration_seed: int = 100
                       ) -> Dict[str, rc.TaskResult]:
  """Rank classification of every task with `params` as they are (with their prompt, if any).

  `eval_choices` (task -> `ChoiceSet`) skips reading the data again. `demonstrations` > 0 is few-shot
  in-context inference: that many instances of `demonstration_split`, chosen per task as few-shot tuning
  chooses its examples (`select_examples` with `demonstration_seed`), each its input with its gold answer,
  precede every input (`rank_classification.with_demonstrations`; inputs at most TASK_FEATURE_LENGTHS'
  ``inputs`` long, the first demonstrations dropped where they do not fit).
  """
  scorer = rc.get_scorer(model, length_normalize, examples_per_batch)
  results, chosen = {}, {}
  for task in _progress(tasks, progress, 'zero-shot'):
    choices = (eval_choices or {}).get(task) or rc.load_choices(task, split, task_feature_lengths, max_examples)
    if demonstrations:
      pool = rc.load_choices(task, demonstration_split, task_feature_lengths)
      rows = select_examples(task, pool.num_examples, demonstrations, demonstration_seed)
      choices = rc.with_demonstrations(choices, pool.subset(rows), _sentinel_ids(task),
                                       (task_feature_lengths or {}).get('inputs'))
      chosen[task] = [int(i) for i in pool.example_ids[rows]]
    results[task] = rc.rank_classify(scorer, params, choices)
  if output_dir:
    extra = {'summary': summary(results), 'setting': f'{demonstrations}-shot in-context' if demonstrations
             else '0-shot', 'split': split, 'length_normalize': length_normalize}
    if demonstrations:
      extra['demonstrations'] = {'split': demonstration_split, 'seed': demonstration_seed, 'examples': chosen}
    rc.write_results(results, output_dir, extra)
  return results


def _sentinel_ids(task: str) -> List[int]:
  """The sentinel ids (``<extra_id_N>``) of the task's target vocabulary."""
  from promptjax.tasks import utils as task_utils
  vocab = task_utils.get_task_or_mixture(task).output_features['targets'].vocabulary
  extra = int(getattr(vocab, 'extra_ids', 0) or 0)
  return list(range(vocab.vocab_size - extra, vocab.vocab_size))


def evaluate_few_shot(model, params, tasks: Sequence[str], cfg: FewShotConfig = FewShotConfig(), *,
                      split: str = 'validation', length_normalize: bool = True,
                      examples_per_batch: int = 32, task_feature_lengths: Optional[Mapping[str, int]] = None,
                      max_examples: Optional[int] = None, output_dir: Optional[str] = None,
                      progress: bool = True, eval_choices: Optional[Mapping[str, rc.ChoiceSet]] = None,
                      train_choices: Optional[Mapping[str, rc.ChoiceSet]] = None) -> Dict[str, rc.TaskResult]:
  """Wu et al.'s 16-shot protocol on every task: select, tune (vmapped over templates), rank-classify.

  `eval_choices` / `train_choices` (task -> `ChoiceSet` of the eval / training split) skip reading data.
  """
  batches, selected = [], {}
  for task in tasks:
    train = (train_choices or {}).get(task) or rc.load_choices(task, cfg.train_split, task_feature_lengths)
    rows = select_examples(task, train.num_examples, cfg.num_shots, cfg.seed)
    selected[task] = [int(i) for i in train.example_ids[rows]]
    batches.append(training_batch(train, rows))
  prompts, train_losses = get_tuner(model, cfg).tune(params, batches, progress=progress and rc.writes_files())
  scorer = rc.get_scorer(model, length_normalize, examples_per_batch)
  transformer, _ = inner.split_prompt(params)
  results = {}
  for task, prompt in zip(_progress(tasks, progress, '16-shot eval'), prompts):
    choices = (eval_choices or {}).get(task) or rc.load_choices(task, split, task_feature_lengths, max_examples)
    results[task] = rc.rank_classify(scorer, inner.join_prompt(transformer, prompt), choices)
  if output_dir and rc.writes_files():
    extra = {'summary': summary(results), 'setting': f'{cfg.num_shots}-shot', 'split': split,
             'length_normalize': length_normalize, 'fewshot': dataclasses.asdict(cfg),
             'train_loss': {t: [float(train_losses[i, 0]), float(train_losses[i, -1])]
                            for i, t in enumerate(tasks)}}
    rc.write_results(results, output_dir, extra)
    with open(os.path.join(output_dir, 'selected_examples.json'), 'w') as f:
      json.dump({'seed': cfg.seed, 'num_shots': cfg.num_shots, 'split': cfg.train_split,
                 'examples': selected}, f, indent=1, sort_keys=True)
  return results


def _progress(items, on: bool, desc: str):
  if not on or not rc.writes_files():   # one progress bar, on process 0
    return items
  from tqdm.auto import tqdm
  return tqdm(items, desc=desc, leave=False, unit='template')
