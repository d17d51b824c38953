"""Zero-shot rank classification: score every answer choice by its target log-likelihood, pick the argmax.

Wu et al. 2022 (§2) predict ``argmax_{y'} LM(f(x), f(y'))`` and report accuracy per
template. The paper does not say how LM(f(x), f(y')) is normalized; the official code behind its Table 1
scores a choice by the mean log-likelihood of its target tokens (the summed log-likelihood divided by the
number of target tokens, EOS included), and that is the default here (``length_normalize=True``).
``length_normalize=False`` is the sum, as T0 (Sanh et al. 2022) / T5X rank classification.

Data: any ``<task>_rank_classification`` task (one record per (instance, choice) with ``idx`` =
[instance, choice] and ``is_correct``), read without shuffling and regrouped by instance (`load_choices`).
Instances may have different numbers of choices: the choice axis is padded to the largest count and
padded choices can never win. An instance may have several correct choices; it counts as correct when
the prediction is one of them.

Speed: the encoder runs once per instance, not once per choice — its output is repeated over the
choice axis for the decoder (`ChoiceScorer`). Inputs are padded to multiples of 16, targets to the task's
longest choice (answers are mostly 1-2 pieces, so no bucket), with a fixed number of instances per
batch, so one task compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Collection, Dict, List, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from promptjax.models import losses
from promptjax.errors import EvaluationError


def _round_up(n: int, multiple: int) -> int:
  return max(multiple, -(-int(n) // multiple) * multiple)


def _bucket(n: int, multiple: int = 1) -> int:
  """A padded size for `n` from a short list, so that one compiled program serves many shapes: powers of
  two up to 8 (when `multiple` is 1), above that four sizes per octave (at most 25% padding), always a
  multiple of `multiple`."""
  n = max(int(n), 1)
  if n <= 8 and multiple == 1:
    return 1 << (n - 1).bit_length()
  return _round_up(n, max(multiple, 1 << max((n - 1).bit_length() - 3, 0)))


@dataclasses.dataclass
class ChoiceSet:
  """The instances of one rank-classification task, grouped: inputs [E, L], targets [E, C, T].

  ``valid`` [E, C] marks real choices (instances with fewer choices are padded), ``correct`` [E, C] the
  correct ones; ``example_ids`` [E] are the ``idx[0]`` values; texts are kept for the prediction files.
  """
  task: str
  inputs: np.ndarray
  targets: np.ndarray
  valid: np.ndarray
  correct: np.ndarray
  example_ids: np.ndarray
  input_texts: List[str]
  choice_texts: List[List[str]]

  @property
  def num_examples(self) -> int:
    return int(self.inputs.shape[0])

  @property
  def num_choices(self) -> np.ndarray:
    return self.valid.sum(-1)

  @property
  def random_baseline(self) -> float:
    """Expected accuracy of a uniform random guess: mean over instances of #correct / #choices."""
    return float(np.mean(self.correct.sum(-1) / np.maximum(self.num_choices, 1)))

  def gold_targets(self) -> np.ndarray:
    """[E, T]: the first correct choice of each instance (the few-shot training target)."""
    first = np.argmax(self.correct, axis=-1)
    return self.targets[np.arange(self.num_examples), first]

  def subset(self, rows: Sequence[int]) -> 'ChoiceSet':
    rows = np.asarray(rows, np.int64)
    return dataclasses.replace(
        self, inputs=self.inputs[rows], targets=self.targets[rows], valid=self.valid[rows],
        correct=self.correct[rows], example_ids=self.example_ids[rows],
        input_texts=[self.input_texts[i] for i in rows], choice_texts=[self.choice_texts[i] for i in rows])


def _text(x) -> str:
  return x.decode('utf-8') if isinstance(x, bytes) else str(x)


def check_rank_task(task_name: str, split: str = 'validation') -> None:
  """Raises a readable `EvaluationError` unless `task_name` is a rank-classification Task with `split`."""
  import seqio
  from promptjax.tasks import utils as task_utils
  task = task_utils.get_task_or_mixture(task_name)
  if not isinstance(task, seqio.Task):
    raise EvaluationError(f'{task_name!r} is a mixture; rank-classify its tasks one by one '
                          f'(promptjax.evaluation.rank_classification.task_names).')
  if split not in task.splits:
    raise EvaluationError(f'Task {task_name!r} has no split {split!r} (it has {list(task.splits)}).')
  spec = task.get_dataset(None, split=split, shuffle=False, num_epochs=1).element_spec
  if 'idx' not in spec or 'is_correct' not in spec:
    raise EvaluationError(
        f'Task {task_name!r} has no idx / is_correct features, so it is not a rank-classification task. '
        f'Use its <name>_rank_classification view (e.g. mini_heldout_rank_classification).')


def load_choices(task_name: str, split: str = 'validation',
                 task_feature_lengths: Optional[Mapping[str, int]] = None,
                 max_examples: Optional[int] = None) -> ChoiceSet:
  """Reads a rank-classification task and groups its records by instance.

  `task_feature_lengths` trims inputs / targets (EOS appended after trimming, seqio's convention);
  None keeps whole sequences. `max_examples` keeps the first instances only.
  """
  from promptjax.tasks import utils as task_utils
  task = task_utils.get_task_or_mixture(task_name)
  import seqio
  if not isinstance(task, seqio.Task):
    raise EvaluationError(f'{task_name!r} is a mixture; rank-classify its tasks one by one '
                          f'(promptjax.evaluation.rank_classification.task_names).')
  lengths = dict(task_feature_lengths) if task_feature_lengths else None
  ds = task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1)
  if 'idx' not in ds.element_spec or 'is_correct' not in ds.element_spec:
    raise EvaluationError(
        f'Task {task_name!r} has no idx / is_correct features, so it is not a rank-classification task. '
        f'Use its <name>_rank_classification view (e.g. mini_heldout_rank_classification).')
  groups: Dict[int, dict] = {}
  order: List[int] = []
  for ex in task_utils.iterate(ds, task_name):
    i, j = int(ex['idx'][0]), int(ex['idx'][1])
    if i not in groups:
      if max_examples is not None and len(groups) >= max_examples:
        break
      groups[i] = {'inputs': ex['inputs'], 'text': _text(ex.get('inputs_pretokenized', b'')), 'choices': {}}
      order.append(i)
    groups[i]['choices'][j] = (ex['targets'], bool(ex['is_correct']),
                               _text(ex.get('targets_pretokenized', b'')).strip())
  if not groups:
    raise EvaluationError(f'Task {task_name!r} has no {split!r} records.')
  E = len(order)
  C = max(len(g['choices']) for g in groups.values())
  L = max(len(g['inputs']) for g in groups.values())
  T = max(len(t) for g in groups.values() for t, _, _ in g['choices'].values())
  inputs = np.zeros((E, L), np.int32)
  targets = np.zeros((E, C, T), np.int32)
  valid = np.zeros((E, C), bool)
  correct = np.zeros((E, C), bool)
  choice_texts = []
  for e, i in enumerate(order):
    g = groups[i]
    inputs[e, :len(g['inputs'])] = g['inputs']
    texts = []
    for c, j in enumerate(sorted(g['choices'])):
      t, ok, text = g['choices'][j]
      targets[e, c, :len(t)] = t
      valid[e, c], correct[e, c] = True, ok
      texts.append(text)
    choice_texts.append(texts)
  return ChoiceSet(task_name, inputs, targets, valid, correct, np.asarray(order, np.int64),
                   [groups[i]['text'] for i in order], choice_texts)


def _tokens(row: np.ndarray) -> List[int]:
  """The ids of a padded row, without padding and without a final EOS (id 1)."""
  ids = [int(t) for t in row if t != 0]
  return ids[:-1] if ids and ids[-1] == 1 else ids


def demonstration_tokens(inputs: np.ndarray, target: np.ndarray, sentinel_ids: Collection[int] = ()) -> List[int]:
  """One in-context demonstration: an instance's input with its gold answer. A target that starts with a
  sentinel of the input (``<extra_id_0> word``, the cloze form of SUPMER's and PPT's templates) fills that
  sentinel with the rest of the target; any other target follows the input."""
  x, y = _tokens(inputs), _tokens(target)
  if y and y[0] in sentinel_ids and y[0] in x:
    at = x.index(y[0])
    return x[:at] + y[1:] + x[at + 1:]
  return x + y


def with_demonstrations(choices: ChoiceSet, demonstrations: ChoiceSet, sentinel_ids: Collection[int] = (),
                        max_input_length: Optional[int] = None) -> ChoiceSet:
  """`choices` with the instances of `demonstrations` (input and gold answer, `demonstration_tokens`, in
  their order) before every input: few-shot in-context inference (Brown et al. 2020). With
  `max_input_length`, the first demonstrations are dropped from an instance whose context would not fit
  (its own input is never cut)."""
  demos = [demonstration_tokens(x, y, sentinel_ids)
           for x, y in zip(demonstrations.inputs, demonstrations.gold_targets())]
  rows = []
  for x in choices.inputs:
    own = [int(t) for t in x if t != 0]
    kept = list(demos)
    while kept and max_input_length is not None and sum(map(len, kept)) + len(own) > max_input_length:
      kept.pop(0)
    rows.append([t for d in kept for t in d] + own)
  inputs = np.zeros((len(rows), max(map(len, rows))), np.int32)
  for e, r in enumerate(rows):
    inputs[e, :len(r)] = r
  return dataclasses.replace(choices, inputs=inputs)


def task_names(mixture_or_task: str) -> List[str]:
  """The tasks of a mixture (sorted, nested mixtures flattened), or [the task]."""
  import seqio
  from promptjax.tasks import utils as task_utils
  m = task_utils.get_task_or_mixture(mixture_or_task)
  if isinstance(m, seqio.Task):
    return [m.name]
  return sorted(t.name for t in m.tasks)


class ChoiceScorer:
  """Jitted scores [E, C] of every choice of `examples_per_batch` instances at a time.

  The encoder runs once per instance; its output is repeated C times for the decoder. Any
  `PromptableT5` parameters (with or without a prompt) can be passed to `scores`.
  """

  def __init__(self, model, length_normalize: bool = True, examples_per_batch: int = 32):
    self.model = model
    self.length_normalize = length_normalize
    self.examples_per_batch = int(examples_per_batch)
    self._fn = jax.jit(self._score)

  def _score(self, params, inputs, targets):
    E, C, T = targets.shape
    encoded, mask = self.model.encode(params, inputs)
    encoded = jnp.repeat(encoded, C, axis=0)
    mask = jnp.repeat(mask, C, axis=0)
    flat = targets.reshape(E * C, T)
    logits = self.model.decode(params, encoded, mask, flat)
    ll = losses.sequence_log_likelihood(logits, flat, losses.default_loss_weights(flat),
                                        self.length_normalize)
    return ll.reshape(E, C)

  def scores(self, params, choices: ChoiceSet, progress: Optional[str] = None) -> np.ndarray:
    """[E, C] float32 log-likelihood scores; padded choices get -inf."""
    n = self.examples_per_batch
    # Padded to a few bucketed sizes (padding is masked: padded input tokens are 0, padded target tokens carry
    # no loss weight, padded choices get -inf), so that templates of different shapes share compiled programs.
    L = _bucket(choices.inputs.shape[1], 16)
    T = _bucket(choices.targets.shape[2])
    E, C = choices.valid.shape
    C_pad = _bucket(C)
    out = np.full((E, C), -np.inf, np.float32)
    starts = range(0, E, n)
    if progress:
      from tqdm.auto import tqdm
      starts = tqdm(starts, desc=progress, leave=False, unit='batch')
    for s in starts:
      rows = slice(s, min(s + n, E))
      m = rows.stop - rows.start
      inp = np.zeros((n, L), np.int32)
      tgt = np.zeros((n, C_pad, T), np.int32)
      inp[:m, :choices.inputs.shape[1]] = choices.inputs[rows]
      tgt[:m, :C, :choices.targets.shape[2]] = choices.targets[rows]
      out[rows] = np.asarray(self._fn(params, inp, tgt))[:m, :C]
    return np.where(choices.valid, out, -np.inf)


@functools.lru_cache(maxsize=16)
def get_scorer(model, length_normalize: bool = True, examples_per_batch: int = 32) -> ChoiceScorer:
  """One `ChoiceScorer` (compiled once per shape) per (model, options) in this process."""
  return ChoiceScorer(model, length_normalize, examples_per_batch)


@dataclasses.dataclass
class TaskResult:
  """Accuracy of one template, with every per-instance prediction."""
  task: str
  accuracy: float
  num_examples: int
  random_baseline: float
  scores: np.ndarray          # [E, C], -inf on padded choices
  predictions: np.ndarray     # [E] index of the argmax choice
  correct: np.ndarray         # [E] bool: prediction is a correct choice
  choices: ChoiceSet

  def metrics(self) -> Dict[str, Any]:
    return {'accuracy': self.accuracy, 'num_examples': self.num_examples,
            'random_baseline': self.random_baseline}

  def records(self) -> List[Dict[str, Any]]:
    """One JSON-able dict per instance (the prediction file's lines)."""
    c = self.choices
    out = []
    for e in range(c.num_examples):
      k = int(c.valid[e].sum())
      out.append({'idx': int(c.example_ids[e]), 'input': c.input_texts[e], 'choices': c.choice_texts[e],
                  'scores': [float(x) for x in self.scores[e, :k]], 'prediction': int(self.predictions[e]),
                  'gold': [int(j) for j in np.flatnonzero(c.correct[e])], 'correct': bool(self.correct[e])})
    return out


def classify(scores: np.ndarray, choices: ChoiceSet) -> TaskResult:
  """Argmax over valid choices (the first on ties) and accuracy."""
  scores = np.where(choices.valid, scores, -np.inf)
  pred = np.argmax(scores, axis=-1)
  ok = choices.correct[np.arange(choices.num_examples), pred] & choices.valid[np.arange(choices.num_examples), pred]
  return TaskResult(choices.task, float(np.mean(ok)), choices.num_examples, choices.random_baseline,
                    scores, pred, ok, choices)


def rank_classify(scorer: ChoiceScorer, params, choices: ChoiceSet, progress: Optional[str] = None
                  ) -> TaskResult:
  return classify(scorer.scores(params, choices, progress=progress), choices)


def writes_files() -> bool:
  """Whether this process writes evaluation outputs: with several processes (``jax.process_count() > 1``)
  every process reads the whole split and computes the same results, and process 0 alone writes them."""
  return jax.process_index() == 0


def write_results(results: Mapping[str, TaskResult], output_dir: str, extra: Optional[Mapping] = None
                  ) -> str:
  """Writes ``metrics.json`` ({'tasks': {task: metrics}, **extra}) and ``predictions/<task>.jsonl`` (process 0
  only, `writes_files`); returns the path of ``metrics.json``."""
  path = os.path.join(output_dir, 'metrics.json')
  if not writes_files():
    return path
  os.makedirs(os.path.join(output_dir, 'predictions'), exist_ok=True)
  for name, r in results.items():
    with open(os.path.join(output_dir, 'predictions', f'{name}.jsonl'), 'w') as f:
      for rec in r.records():
        f.write(json.dumps(rec, sort_keys=True) + '\n')
  metrics = {'tasks': {name: r.metrics() for name, r in sorted(results.items())}}
  metrics.update(extra or {})
  with open(path, 'w') as f:
    json.dump(metrics, f, indent=1, sort_keys=True)
  return path


def read_results(output_dir: str) -> Dict[str, Any]:
  """{'metrics': metrics.json, 'correct': {task: bool array in prediction-file order}}."""
  path = os.path.join(output_dir, 'metrics.json')
  if not os.path.exists(path):
    raise EvaluationError(f'No evaluation results in {output_dir!r} (no metrics.json). Run `promptjax eval` '
                          f'or `promptjax fewshot` with EVAL_OUTPUT_DIR pointing there first.')
  with open(path) as f:
    metrics = json.load(f)
  correct = {}
  for task in metrics['tasks']:
    p = os.path.join(output_dir, 'predictions', f'{task}.jsonl')
    if os.path.exists(p):
      with open(p) as f:
        rows = [json.loads(line) for line in f if line.strip()]
      rows.sort(key=lambda r: r['idx'])
      correct[task] = np.asarray([r['correct'] for r in rows], bool)
  return {'metrics': metrics, 'correct': correct}
