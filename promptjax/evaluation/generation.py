"""Greedy decoding and generative evaluation with CrossFit's metrics.

CrossFit tasks (Ye et al. 2021; Qin et al. 2023 evaluate on them) are text-to-text: the model generates
the answer and the task's metric (`crossfit_metrics`) compares it with the references (max over
references where the metric allows several). `greedy_decode` generates up to `max_length` tokens
(argmax at each step, stopping at EOS; the loop ends when every row has emitted EOS). Each step runs
one decoder position against a key/value cache (`PromptableT5.init_decoding_cache` / `decode_step`; a deep
prompt's decoder prefixes sit in the cache); ``use_cache=False`` re-runs the teacher-forced decoder on the
whole prefix instead, the same tokens at a cost that grows with the square of the length
(`benchmarks/decoding.py`).

`evaluate_with_seqio` runs ``seqio.Evaluator`` on any task that has ``metric_fns`` (the CrossFit tasks carry
their CrossFit metric and a postprocessor that returns all references; `promptjax.tasks.crossfit`): greedy
predictions come from `seqio_predict_fn`, seqio decodes, postprocesses and scores them, and its
``JSONLogger`` / ``TensorBoardLogger`` write ``<task>-metrics.jsonl``, ``<task>-<step:06>.jsonl`` (inputs, targets, predictions)
and TensorBoard summaries (``<task>/events.*``, tags ``eval/<metric>``) at the evaluated checkpoint's step
into the output directory. `promptjax eval` uses it for every task of ``MIXTURE_OR_TASK_NAME`` that is not
a rank-classification task.

For one's own seqio evaluation script: `seqio_predict_fn` and `seqio_score_fn` are seqio's ``predict_fn`` /
``score_fn`` of a promptjax model (``seqio.Evaluator.evaluate(predict_fn=..., score_fn=...)``); the
rank-classification views carry seqio's rank-classification score metric (`promptjax.tasks.p3`).

Several processes (``jax.process_count() > 1``): every process reads and decodes the whole split (the
same deterministic work, so the metrics agree), and only process 0 gives seqio its loggers.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Dict, List, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from promptjax.tasks import crossfit_metrics
from promptjax.evaluation.rank_classification import EvaluationError, _round_up
from promptjax.models.model import shift_right

EOS = 1


def greedy_tokens(model, params, inputs: jax.Array, max_length: int, use_cache: bool = True) -> jax.Array:
  """Traceable greedy decoding: [b, max_length] ids (EOS kept, zeros after it) for encoder inputs [b, n].

  With `use_cache` (the default) each step runs the decoder on one position against the key/value cache
  (`PromptableT5.decode_step`); without, each step re-runs the teacher-forced decoder on the whole prefix
  (the reference the cached path is tested against).
  """
  encoded, mask = model.encode(params, inputs)
  b = inputs.shape[0]

  def cond(carry):
    i, _, done, _ = carry
    return (i < max_length) & ~jnp.all(done)

  def body(carry):
    i, tokens, done, cache = carry
    if use_cache:
      previous = jnp.where(i > 0, jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(i - 1, 0), axis=1,
                                                               keepdims=False), 0)
      step, cache = model.decode_step(params, cache, previous, i)
    else:
      logits = model.decode(params, encoded, mask, jnp.ones_like(tokens), decoder_input_tokens=shift_right(tokens))
      step = jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False)
    nxt = jnp.argmax(step.astype(jnp.float32), axis=-1).astype(jnp.int32)
    nxt = jnp.where(done, 0, nxt)
    return i + 1, tokens.at[:, i].set(nxt), done | (nxt == EOS), cache

  cache = model.init_decoding_cache(params, encoded, mask, max_length) if use_cache else ()
  _, tokens, _, _ = jax.lax.while_loop(
      cond, body, (jnp.int32(0), jnp.zeros((b, max_length), jnp.int32), jnp.zeros((b,), bool), cache))
  return tokens


@functools.lru_cache(maxsize=16)
def _decoder(model, max_length: int, use_cache: bool = True):
  return jax.jit(functools.partial(greedy_tokens, model, max_length=max_length, use_cache=use_cache))


def _padded_batches(arrays: Sequence[np.ndarray], batch_size: int, multiples: Sequence[int]):
  """(start, rows, [padded chunk per array]): `batch_size` rows at a time, every array zero-padded to a
  width that is a multiple of its entry in `multiples` (one compiled shape per task)."""
  n = arrays[0].shape[0]
  widths = [_round_up(a.shape[1], m) for a, m in zip(arrays, multiples)]
  for s in range(0, n, batch_size):
    m = min(batch_size, n - s)
    chunks = []
    for a, w in zip(arrays, widths):
      chunk = np.zeros((batch_size, w), np.int32)
      chunk[:m, :a.shape[1]] = a[s:s + m]
      chunks.append(chunk)
    yield s, m, chunks


def greedy_decode(model, params, inputs: np.ndarray, max_length: int, batch_size: int = 32,
                  use_cache: bool = True) -> np.ndarray:
  """[n, max_length] generated ids (EOS kept, zeros after it) for encoder inputs [n, L] (`greedy_tokens`)."""
  fn = _decoder(model, int(max_length), bool(use_cache))
  out = np.zeros((inputs.shape[0], max_length), np.int32)
  for s, m, (chunk,) in _padded_batches([inputs], batch_size, [16]):
    out[s:s + m] = np.asarray(fn(params, chunk))[:m]
  return out


@functools.lru_cache(maxsize=16)
def _sequence_scorer(model, length_normalize: bool):
  return jax.jit(functools.partial(model.score_batch, length_normalize=length_normalize))


def score_targets(model, params, inputs: np.ndarray, targets: np.ndarray, length_normalize: bool = False,
                  batch_size: int = 32) -> np.ndarray:
  """[n] target log-likelihoods (`PromptableT5.score_batch`: summed, or divided by the number of target
  tokens including EOS) of encoder inputs [n, L] and targets [n, T]."""
  fn = _sequence_scorer(model, bool(length_normalize))
  out = np.zeros((inputs.shape[0],), np.float32)
  for s, m, (enc, tgt) in _padded_batches([inputs, targets], batch_size, [16, 8]):
    out[s:s + m] = np.asarray(fn(params, {'encoder_input_tokens': enc, 'decoder_target_tokens': tgt}))[:m]
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


def _enumerated_features(dataset, keys: Sequence[str]):
  """(indices, {key: [n, width] int32}) of seqio's enumerated model-feature dataset; trailing columns that
  are padding in every row are cut (they are masked, so results are the same)."""
  indices, rows = [], {k: [] for k in keys}
  for index, features in dataset.as_numpy_iterator():
    indices.append(int(index))
    for k in keys:
      rows[k].append(np.asarray(features[k], np.int32))
  arrays = {}
  for k in keys:
    a = np.stack(rows[k]) if indices else np.zeros((0, 1), np.int32)
    used = np.nonzero(a.any(axis=0))[0]
    arrays[k] = a[:, :int(used[-1]) + 1 if used.size else 1]
  return indices, arrays


def seqio_predict_fn(model, params, max_length: int, batch_size: int = 32):
  """A ``seqio.Evaluator`` ``predict_fn(dataset, model_feature_shapes=None) -> [(index, token ids)]``:
  [max_length] greedy token ids per enumerated example (EOS kept, zeros after it: seqio stacks them into
  one array and its vocabulary decodes up to EOS). seqio calls it for tasks with predict ``metric_fns``
  (the CrossFit tasks)."""
  def predict_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes
    indices, arrays = _enumerated_features(dataset, ['encoder_input_tokens'])
    if not indices:
      return []
    ids = greedy_decode(model, params, arrays['encoder_input_tokens'], max_length, batch_size)
    return list(zip(indices, ids))
  return predict_fn


def seqio_score_fn(model, params, length_normalize: bool = False, batch_size: int = 32):
  """A ``seqio.Evaluator`` ``score_fn(dataset, model_feature_shapes=None) -> [(index, score)]``: the
  log-likelihood of each enumerated example's targets (EOS included), summed as T5X's ``score_batch`` or,
  ``length_normalize``, divided by the number of target tokens. seqio calls it for tasks with score
  metrics: the rank-classification views, whose `promptjax.tasks.p3.rank_classification_accuracy`
  divides the summed scores by the target length itself, so its accuracy equals `promptjax eval`'s
  (both length-normalized by default, as the official Wu et al. 2022 code)."""
  def score_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes
    indices, arrays = _enumerated_features(dataset, ['encoder_input_tokens', 'decoder_target_tokens'])
    if not indices:
      return []
    scores = score_targets(model, params, arrays['encoder_input_tokens'], arrays['decoder_target_tokens'],
                           length_normalize, batch_size)
    return [(i, float(x)) for i, x in zip(indices, scores)]
  return score_fn


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
  loggers write there (process 0 only) at `step` (`promptjax eval`: the evaluated checkpoint's step).
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
  loggers = []
  if output_dir and jax.process_index() == 0:
    os.makedirs(output_dir, exist_ok=True)   # seqio's JSONLogger writes into it without creating it
    loggers = [seqio.JSONLogger, seqio.TensorBoardLogger]
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
