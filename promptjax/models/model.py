"""`PromptableT5`: the pure-function model interface every algorithm in promptjax uses.

Parameters are one plain pytree: the transformer under T5X names and, when a prompt is configured, a
`prompt` subtree. All methods are pure functions of (params, batch, rng) and can be jitted, vmapped
(e.g. over prompt copies) and differentiated.

A batch follows T5X's EncDecFeatureConverter:
  encoder_input_tokens  [b, n] int32, 0 = padding
  decoder_target_tokens [b, t] int32, ends with EOS=1, 0 = padding
  decoder_input_tokens  [b, t] int32 (optional: targets shifted right with 0 as BOS)
  decoder_loss_weights  [b, t] (optional: 1 where decoder_target_tokens > 0)
  encoder_input_vectors          [b, V, embed] float (optional, with the next one)
  encoder_input_vector_positions [b, V] int32, -1 = unused (optional): the token embedding at each listed
    input position is replaced by its vector before the shallow prompt is prepended (SUPMER's centroid
    template, `promptjax.supmer.tasks`); absent = plain token embeddings.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp

from promptjax.models.config import T5Config, describe_architecture
from promptjax.models.prompts import PromptConfig, init_prompt_params
from promptjax.models.t5 import Transformer
from promptjax.models import losses

Params = Dict[str, Any]
Batch = Mapping[str, jax.Array]


def shift_right(targets: jax.Array, bos_id: int = 0) -> jax.Array:
  """Decoder inputs from targets: [y1, y2, ..., yT] -> [bos, y1, ..., y(T-1)] (padding stays 0)."""
  shifted = jnp.pad(targets, ((0, 0), (1, 0)), constant_values=bos_id)[:, :-1]
  return jnp.where(shifted < 0, 0, shifted)


def _decoder_inputs(batch: Batch) -> jax.Array:
  if 'decoder_input_tokens' in batch:
    return batch['decoder_input_tokens']
  return shift_right(batch['decoder_target_tokens'])


VECTOR_FEATURES = ('encoder_input_vectors', 'encoder_input_vector_positions')


def _input_vectors(batch: Batch) -> Dict[str, jax.Array]:
  """The optional inserted-vector features of a batch (both or none)."""
  present = [k for k in VECTOR_FEATURES if k in batch]
  if len(present) == 1:
    missing = [k for k in VECTOR_FEATURES if k not in batch][0]
    raise ValueError(f'batch has {present[0]} but not {missing}; give both or neither.')
  return {k: batch[k] for k in present}


def _loss_weights(batch: Batch) -> jax.Array:
  if 'decoder_loss_weights' in batch:
    return batch['decoder_loss_weights']
  return losses.default_loss_weights(batch['decoder_target_tokens'])


@dataclasses.dataclass(frozen=True)
class PromptableT5:
  """A T5 (original T5 or T5.1.1, `T5Config`) with an optional soft prompt, exposed as pure functions.

  Attributes:
    config: architecture (`promptjax.models.get_config('small')`, ...).
    prompt: which prompt (none / shallow / deep), its length and initializer.
    loss_normalization: see `promptjax.models.losses` ('num_real_target_tokens' by default).
    z_loss: T5X's auxiliary log-partition loss coefficient (0 in the papers).
  """
  config: T5Config
  prompt: PromptConfig = PromptConfig()
  loss_normalization: Union[str, float] = 'num_real_target_tokens'
  z_loss: float = 0.0

  @property
  def module(self) -> Transformer:
    return Transformer(self.config, self.prompt)

  # ----------------------------------------------------------------------------------------------
  # Parameters.

  def _dummy_inputs(self):
    return jnp.ones((1, 4), jnp.int32), jnp.ones((1, 2), jnp.int32)

  def init_transformer(self, rng: jax.Array) -> Params:
    """Fresh transformer parameters (no prompt) from `rng`; jit it, with out_shardings to create them sharded."""
    params = dict(nn.meta.unbox(self.module.init(rng, *self._dummy_inputs())['params']))
    params.pop('prompt', None)
    return params

  def init_params(self, rng: jax.Array, transformer_params: Optional[Params] = None) -> Params:
    """Fresh parameters; with `transformer_params` (e.g. an imported checkpoint) only the prompt is
    initialized, from those weights (vocab-sampled rows come from the loaded embedding)."""
    init_rng, prompt_rng = jax.random.split(rng)
    if transformer_params is None:
      params = jax.jit(self.init_transformer)(init_rng)
    else:
      params = dict(transformer_params)
      params.pop('prompt', None)
      self.check_params(params, include_prompt=False)
    prompt = init_prompt_params(prompt_rng, self.prompt, self.config, params)
    if prompt is not None:
      params['prompt'] = jax.tree_util.tree_map(jnp.asarray, prompt)
    return params

  def abstract_params(self) -> Any:
    """Boxed abstract parameters (ShapeDtypeStructs with logical axis metadata); no allocation. Traced
    once per model configuration (a fresh tree each call)."""
    try:
      cached = _abstract_params(self)
    except TypeError:   # an unhashable field: trace every time
      cached = _abstract_params.__wrapped__(self)
    return jax.tree_util.tree_map(lambda x: x, cached)

  def param_shapes(self) -> Params:
    return jax.tree_util.tree_map(lambda x: tuple(x.shape), nn.meta.unbox(self.abstract_params()))

  def logical_axes(self) -> Params:
    """PartitionSpecs of logical axis names (`vocab`, `embed`, `joined_kv`, `mlp`, ...) per param."""
    return nn.get_partition_spec(self.abstract_params())

  def check_params(self, params: Params, include_prompt: bool = True) -> None:
    """Raises ValueError naming the first missing/unexpected key or mismatched shape."""
    expected = self.param_shapes()
    if not include_prompt:
      expected.pop('prompt', None)
    exp = traverse_util.flatten_dict(expected, sep='/', is_leaf=lambda _, x: isinstance(x, tuple))
    got = {k: tuple(jnp.shape(v)) for k, v in traverse_util.flatten_dict(params, sep='/').items()}
    missing = sorted(set(exp) - set(got))
    extra = sorted(set(got) - set(exp))
    if missing:
      raise ValueError(f'Parameter {missing[0]!r} is missing ({len(missing)} missing in all) for '
                       f'model {self.config}.{self._architecture_hint(missing + extra)}')
    if extra:
      raise ValueError(f'Unexpected parameter {extra[0]!r} ({len(extra)} unexpected in all) for '
                       f'model {self.config}.{self._architecture_hint(extra)}')
    for k in sorted(exp):
      if exp[k] != got[k]:
        raise ValueError(f'Parameter {k!r} has shape {got[k]}, but the model expects {exp[k]} '
                         f'(config {self.config}).')

  def _architecture_hint(self, keys) -> str:
    if not any(k.endswith(('/mlp/wi/kernel', '/mlp/wi_0/kernel', 'logits_dense/kernel')) for k in keys):
      return ''
    return (f' The parameters are of another T5 architecture than the model, {describe_architecture(self.config)}: '
            "original T5 has mlp/wi and no decoder/logits_dense (get_config('t5_base'), ...), T5.1.1 and "
            "Flan-T5 have mlp/wi_0, mlp/wi_1 and decoder/logits_dense (get_config('t5_1_1_base'), ...).")

  # ----------------------------------------------------------------------------------------------
  # Computation.

  def _apply(self, params, *args, dropout_rng=None, method=None, **kwargs):
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else None
    return self.module.apply({'params': params}, *args, rngs=rngs, method=method, **kwargs)

  def logits(self, params: Params, batch: Batch, dropout_rng: Optional[jax.Array] = None
             ) -> jax.Array:
    """Teacher-forced logits [b, t, vocab] (activation dtype); dropout only with `dropout_rng`."""
    return self._apply(params, batch['encoder_input_tokens'], _decoder_inputs(batch),
                       batch['decoder_target_tokens'], enable_dropout=dropout_rng is not None,
                       dropout_rng=dropout_rng, **_input_vectors(batch))

  def encode(self, params: Params, encoder_input_tokens: jax.Array,
             encoder_input_vectors: Optional[jax.Array] = None,
             encoder_input_vector_positions: Optional[jax.Array] = None
             ) -> Tuple[jax.Array, jax.Array]:
    """-> (encoded [b, L+n, embed], encoder_mask [b, L+n]); reuse across answer choices. Optional
    inserted vectors [b, V, embed] at input positions [b, V] (-1 = unused), see the module docstring."""
    return self._apply(params, encoder_input_tokens, method=Transformer.encode,
                       encoder_input_vectors=encoder_input_vectors,
                       encoder_input_vector_positions=encoder_input_vector_positions)

  def decode(self, params: Params, encoded: jax.Array, encoder_mask: jax.Array,
             decoder_target_tokens: jax.Array, decoder_input_tokens: Optional[jax.Array] = None
             ) -> jax.Array:
    if decoder_input_tokens is None:
      decoder_input_tokens = shift_right(decoder_target_tokens)
    return self._apply(params, encoded, encoder_mask, decoder_input_tokens, decoder_target_tokens,
                       method=Transformer.decode)

  def init_decoding_cache(self, params: Params, encoded: jax.Array, encoder_mask: jax.Array,
                          max_length: int) -> Dict[str, Any]:
    """The key/value cache for generating up to `max_length` tokens from `encode`'s output: per decoder
    layer the cross-attention keys/values (computed once) and self-attention buffers (a deep prompt's
    prefix first), every array with the batch on axis 0 (`promptjax.models.t5.Decoder`)."""
    return self._apply(params, encoded, encoder_mask, max_length, method=Transformer.init_decoding)

  def decode_step(self, params: Params, cache: Dict[str, Any], tokens: jax.Array, index: jax.Array
                  ) -> Tuple[jax.Array, Dict[str, Any]]:
    """One cached decoding step: the previous tokens [b] (or [b, 1]; 0 = BOS at index 0) at position
    `index` (scalar or [b]) -> (logits [b, vocab], updated cache). Equals row `index` of `decode`'s
    teacher-forced logits."""
    return self._apply(params, cache, tokens, index, method=Transformer.decode_step)

  def loss_fn(self, params: Params, batch: Batch, dropout_rng: Optional[jax.Array] = None
              ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """loss(params, batch, rng) -> (scalar, aux): the one loss every algorithm differentiates."""
    logits = self.logits(params, batch, dropout_rng)
    return losses.cross_entropy_loss(logits, batch['decoder_target_tokens'], _loss_weights(batch),
                                     self.loss_normalization, self.z_loss)

  def score_batch(self, params: Params, batch: Batch, length_normalize: bool = False) -> jax.Array:
    """Per-example target log-likelihood [b] (summed, or divided by the number of weighted target
    tokens, EOS included), for rank classification."""
    logits = self.logits(params, batch)
    return losses.sequence_log_likelihood(logits, batch['decoder_target_tokens'],
                                          _loss_weights(batch), length_normalize)


@functools.lru_cache(maxsize=32)
def _abstract_params(model: PromptableT5) -> Any:
  return jax.eval_shape(model.module.init, jax.random.PRNGKey(0), *model._dummy_inputs())['params']  # pylint: disable=protected-access
