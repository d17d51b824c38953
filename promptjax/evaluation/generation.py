"""Greedy decoding and generative evaluation with CrossFit's metrics.

CrossFit tasks (Ye et al. 2021; Qin et al. 2023 evaluate on them) are text-to-text: the model generates
the answer and the task's metric (`crossfit_metrics`) compares it with the references (max over
references where the metric allows several). `greedy_decode` generates up to `max_length` tokens
(argmax at each step, stopping at EOS); every step re-runs the teacher-forced decoder on the prefix
(no key/value cache: targets here are short, and the same `PromptableT5.decode` serves shallow and deep
prompts).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict, List, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from promptjax.evaluation import crossfit_metrics
from promptjax.evaluation.rank_classification import EvaluationError, _round_up
from promptjax.models.model import shift_right

EOS = 1


@functools.lru_cache(maxsize=16)
def _decoder(model, max_length: int):
  def run(params, inputs):
    encoded, mask = model.encode(params, inputs)
    b = inputs.shape[0]
    ones = jnp.ones((b, max_length), jnp.int32)

    def body(i, carry):
      tokens, done = carry
      logits = model.decode(params, encoded, mask, ones, decoder_input_tokens=shift_right(tokens))
      nxt = jnp.argmax(logits[:, i].astype(jnp.float32), axis=-1).astype(jnp.int32)
      nxt = jnp.where(done, 0, nxt)
      return tokens.at[:, i].set(nxt), done | (nxt == EOS)

    tokens, _ = jax.lax.fori_loop(0, max_length, body, (jnp.zeros((b, max_length), jnp.int32),
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
