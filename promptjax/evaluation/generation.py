"""Greedy decoding and generative evaluation with CrossFit's metrics.

CrossFit tasks (Ye et al. 2021; Qin et al. 2023 evaluate on them) are text-to-text: the model generates
the answer and the task's metric (`crossfit_metrics`) compares it with the references (max over
references where the metric allows several). `greedy_decode` generates up to `max_length` tokens
(argmax at each step, stopping at EOS; the loop ends when every row has emitted EOS); every step re-runs the teacher-forced decoder on the prefix
(no key/value cache: targets here are short, and the same `PromptableT5.decode` serves shallow and deep
prompts).

`evaluate_with_seqio` runs ``seqio.Evaluator`` on any task that has ``metric_fns`` (the CrossFit tasks carry
their CrossFit metric and a postprocessor that returns all references; `promptjax.tasks.crossfit`): greedy
predictions come from `seqio_predict_fn`, seqio decodes, postprocesses and scores them, and its
``JSONLogger`` / ``TensorBoardLogger`` write ``<task>-metrics.jsonl``, ``<task>-<step:06>.jsonl`` (inputs, targets, predictions)
and TensorBoard summaries into the output directory. `promptjax eval` uses it for every task of
``MIXTURE_OR_TASK_NAME`` that is not a rank-classification task.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict, List, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from promptjax.tasks import crossfit_metrics
from promptjax.evaluation.rank_classification import EvaluationError, _round_up
from promptjax.models.model import shift_right

EOS = 1


@functools.lru_cache(maxsize=16)
def _decoder(model, max_length: int):
  def run(params, inputs):
    encoded, mask = model.encode(params, inputs)
    b = inputs.shape[0]
    ones = jnp.ones((b, max_length), jnp.int32)

    def cond(carry):
      i, _, done = carry
      return (i < max_length) & ~jnp.all(done)

    def body(carry):
      i, tokens, done = carry
      logits = model.decode(params, encoded, mask, ones, decoder_input_tokens=shift_right(tokens))
      step = jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False)
      nxt = jnp.argmax(step.astype(jnp.float32), axis=-1).astype(jnp.int32)
      nxt = jnp.where(done, 0, nxt)
      return i + 1, tokens.at[:, i].set(nxt), done | (nxt == EOS)

    _, tokens, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), jnp.zeros((b, max_length), jnp.int32),
                                                   jnp.zeros((b,), bool)))
    return tokens
  return jax.jit(run)


def greedy_decode(model, params, inputs: np.ndarray, max_length: int, batch_size: int = 32) -> np.ndarray:
  """[n, max_length] generated ids (EOS kept, zeros after it) for encoder inputs [n, L]."""
  fn = _decoder(model, int(max_length))
  n, L = inputs.shape
  width = _round_up(L, 16)
  out = np.zeros((n, max_length), np.int32)
  for s in range(0, n, batch_size):
    chunk = np.zeros((batch_size, width), np.int32)
    m = min(batch_size, n - s)
    chunk[:m, :L] = inputs[s:s + m]
    out[s:s + m] = np.asarray(fn(params, chunk))[:m]
  return out


def strip_eos(ids: Sequence[int]) -> List[int]:
  ids = list(int(i) for i in ids)
  return ids[:ids.index(EOS)] if EOS in ids else [i for i in ids if i > 0]


@dataclasses.dataclass
class TextSet:
  """Encoder inputs [n, L] of a text-to-text task split and every instance's references."""
  task: str
  inputs: np.ndarray
  targets: np.ndarray
  references: List[List[str]]
  vocabulary: object

  @property
  def num_examples(self) -> int:
    return int(self.inputs.shape[0])


def load_texts(task_name: str, split: str, task_feature_lengths: Optional[Mapping[str, int]] = None
               ) -> TextSet:
  """Reads a (CrossFit-style) task: tokenized inputs/targets and the references (``answers`` if present)."""
  import seqio
  from promptjax.tasks import utils as task_utils
  task = task_utils.get_task_or_mixture(task_name)
  if not isinstance(task, seqio.Task):
    raise EvaluationError(f'{task_name!r} is a mixture; evaluate its tasks one by one.')
  ds = task.get_dataset(dict(task_feature_lengths) if task_feature_lengths else None, split=split,
                        shuffle=False, num_epochs=1)
  rows = list(task_utils.iterate(ds, task_name))
  if not rows:
    raise EvaluationError(f'Task {task_name!r} has no {split!r} examples.')
  L = max(len(r['inputs']) for r in rows)
  T = max(len(r['targets']) for r in rows)
  inputs = np.zeros((len(rows), L), np.int32)
  targets = np.zeros((len(rows), T), np.int32)
  refs = []
  dec = lambda x: x.decode('utf-8') if isinstance(x, bytes) else str(x)
  for i, r in enumerate(rows):
    inputs[i, :len(r['inputs'])] = r['inputs']
    targets[i, :len(r['targets'])] = r['targets']
    if 'answers' in r:
      refs.append([dec(a) for a in np.atleast_1d(r['answers'])])
    else:
      refs.append([dec(r.get('targets_pretokenized', b''))])
  return TextSet(task_name, inputs, targets, refs, task.output_features['targets'].vocabulary)


def predict_texts(model, params, texts: TextSet, max_length: int, batch_size: int = 32) -> List[str]:
  ids = greedy_decode(model, params, texts.inputs, max_length, batch_size)
  return [texts.vocabulary.decode(strip_eos(row)) for row in ids]


def evaluate_generative(model, params, texts: TextSet, metric: str, max_length: int = 64,
                        batch_size: int = 32) -> Dict[str, object]:
  """{'score': the CrossFit metric of greedy predictions, 'predictions': [...]}."""
  preds = predict_texts(model, params, texts, max_length, batch_size)
  return {'score': crossfit_metrics.evaluate(preds, texts.references, metric), 'predictions': preds}


def seqio_predict_fn(model, params, max_length: int, batch_size: int = 32):
  """A ``seqio.Evaluator`` ``predict_fn``: [max_length] greedy token ids per enumerated example (EOS kept,
  zeros after it: seqio stacks them into one array and its vocabulary decodes up to EOS).

  Trailing all-padding input columns are cut before decoding (they are masked, so the result is the same).
  """
  def predict_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes
    indices, rows = [], []
    for index, features in dataset.as_numpy_iterator():
      indices.append(int(index))
      rows.append(np.asarray(features['encoder_input_tokens'], np.int32))
    if not rows:
      return []
    inputs = np.stack(rows)
    used = np.nonzero(inputs.any(axis=0))[0]
    inputs = inputs[:, :int(used[-1]) + 1 if used.size else 1]
    ids = greedy_decode(model, params, inputs, max_length, batch_size)
    return list(zip(indices, ids))
  return predict_fn


def generative_task_names(tasks: Sequence[str]) -> List[str]:
  """The tasks among `tasks` that seqio can score from predictions (they have ``metric_fns``)."""
  import seqio
  return [t for t in tasks if seqio.get_mixture_or_task(t).predict_metric_fns]


def evaluate_with_seqio(model, params, task_name: str, *, split: str, output_dir: Optional[str] = None,
                        task_feature_lengths: Optional[Mapping[str, int]] = None,
                        max_decode_length: Optional[int] = None, batch_size: int = 32, step: int = 0
                        ) -> Dict[str, float]:
  """Greedy-decodes `task_name`'s `split` and scores it with the task's seqio ``metric_fns``.

  Sequence lengths: `task_feature_lengths` if given (inputs / targets are trimmed to them, EOS kept),
  otherwise the longest example. The decoder generates up to `max_decode_length` tokens (default: the
  targets length). Returns ``{metric name: value}``; with `output_dir`, seqio's JSON and TensorBoard
  loggers write there.
  """
  import seqio
  task = seqio.get_mixture_or_task(task_name)
  if not isinstance(task, seqio.Task):
    raise EvaluationError(f'{task_name!r} is a mixture; evaluate its tasks one by one.')
  if split not in task.splits:
    raise EvaluationError(f'Task {task_name!r} has no split {split!r} (it has {list(task.splits)}); set '
                          f'EVAL_SPLIT to one of them.')
  if not task.predict_metric_fns:
    raise EvaluationError(f'Task {task_name!r} has no metric_fns, so seqio cannot score its predictions.')
  loggers = [seqio.JSONLogger, seqio.TensorBoardLogger] if output_dir else []
  evaluator = seqio.Evaluator(
      mixture_or_task_name=task_name, feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split=split, sequence_length=dict(task_feature_lengths) if task_feature_lengths else None,
      logger_cls=loggers, log_dir=output_dir, use_memory_cache=True, async_compute_metrics=False)
  targets_len = int(evaluator.model_feature_shapes['decoder_target_tokens'][-1])
  length = min(targets_len, int(max_decode_length)) if max_decode_length else targets_len
  metrics, _ = evaluator.evaluate(compute_metrics=True, step=step,
                                  predict_fn=seqio_predict_fn(model, params, length, batch_size))
  evaluator.close()
  return {k: float(v) for k, v in metrics.result()[task_name].items()}
