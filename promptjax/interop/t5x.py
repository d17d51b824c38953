"""promptjax's network as a T5X model: T5X's `Trainer`, `PjitPartitioner` and checkpointer run it unchanged.

`T5XModel` is a `t5x.models.EncoderDecoderModel` whose `module` is promptjax's T5 (`T5XModule`, the
`promptjax.models.t5.Transformer` behind `PromptableT5`: T5.1.1 or original T5) with its shallow prompt
(Lester et al. 2021) or deep prompt (Li & Liang 2021; Wu et al. 2022 §2). Parameter names are T5X's (a stock
T5X checkpoint of the same architecture restores into the transformer; the prompt is the extra `prompt/`
subtree), and `get_initial_variables` emits the `params_axes` collection T5X's partitioner reads.
`optimizer` wraps an optax optimizer of `promptjax.training.optimizers` (default: the papers' Adafactor) for
T5X, masked to the trainable group ('all' = T✓P✓, 'transformer' = T✓P✗, 'prompt' = T✗P✓, Wu et al. 2022 §3).

Loss: the model's `loss_normalization` and `z_loss` become T5X's `loss_normalizing_factor` and `z_loss`
('num_real_target_tokens' -> 'NUM_REAL_TARGET_TOKENS', 'none' -> None, a float stays a float), so both
trainers minimize the same loss. T5X computes it itself (`t5x.models.BaseTransformerModel.loss_fn`).

Decoding: `predict_batch` runs T5X's own decoding function (`decode_fn`: `t5x.decoding.temperature_sample`
by default, whose default top-k of 1 is greedy decoding, as `promptjax eval`; `t5x.decoding.beam_search` for
beams) over promptjax's key/value cache (`PromptableT5.init_decoding_cache` / `decode_step`; a deep prompt's
decoder prefixes sit in the cache), with `num_decodes`, `return_all_decodes`, `decoder_params` (e.g.
`temperature`, `topk`, `decode_rng`) and forced target prefixes (`prompt_with_targets`) as in T5X.

Meta-learning: `MetaTrainer` (a `t5x.trainer.Trainer` whose step is promptjax's meta-gradient) and
`meta_dataset` (promptjax's meta-batch sampler as T5X's ``get_dataset_fn``), bound by
``configs/t5x/runs/meta_pretrain.gin``.

Not supported: packed examples (segment ids / positions; use an unpacked feature converter).

This module imports T5X; `import promptjax` does not import it.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping, Optional

import flax
from flax import traverse_util
from flax.linen import partitioning as flax_partitioning
import jax
import jax.numpy as jnp
import numpy as np
import optax
from t5x import decoding as t5x_decoding
from t5x import models as t5x_models
from t5x import optimizers as t5x_optimizers
from t5x import trainer as t5x_trainer

from promptjax.data.feeds import abstract_features
from promptjax.errors import DataError, TrainingError
from promptjax.models.model import PromptableT5
from promptjax.models.prompts import init_prompt_params
from promptjax.models.t5 import Transformer
from promptjax.training import optimizers as opt_lib
from promptjax.training import partitioning
from promptjax.training.method import masked_default_optimizer

_PACKING_FEATURES = ('encoder_segment_ids', 'decoder_segment_ids', 'encoder_positions', 'decoder_positions')
_FLAX_CACHE = ("promptjax.interop.t5x.T5XModule has no flax 'cache' collection (decode=True): promptjax's "
               'key/value cache is explicit; decode through T5XModel.predict_batch, which passes it to T5X\'s '
               'decoding functions.')


class T5XModule(Transformer):
  """`Transformer` with the call signature T5X's `EncoderDecoderModel` uses. Packing features must be None."""

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
               encoder_segment_ids=None, decoder_segment_ids=None, encoder_positions=None,
               decoder_positions=None, *, enable_dropout: bool = True, decode: bool = False,
               max_decode_length: Optional[int] = None):
    if decode or max_decode_length is not None:
      raise NotImplementedError(_FLAX_CACHE)
    given = dict(zip(_PACKING_FEATURES, (encoder_segment_ids, decoder_segment_ids, encoder_positions,
                                         decoder_positions)))
    packed = [k for k, v in given.items() if v is not None]
    if packed:
      raise DataError(f'promptjax.interop.t5x.T5XModel got {packed[0]}: packed examples are not supported. Use '
                      "promptjax's T5X run files (promptjax/configs/t5x/runs/pretrain.gin, finetune.gin) or bind "
                      'train/utils.DatasetConfig.pack = False and train_eval/utils.DatasetConfig.pack = False '
                      "(T5X's run files bind these scoped ones, which an unscoped binding does not override).")
    return super().__call__(jnp.asarray(encoder_input_tokens, jnp.int32),
                            jnp.asarray(decoder_input_tokens, jnp.int32),
                            None if decoder_target_tokens is None else
                            jnp.asarray(decoder_target_tokens, jnp.int32), enable_dropout)


def loss_normalizing_factor(model: PromptableT5):
  """T5X's `loss_normalizing_factor` for the model's `loss_normalization` (see `promptjax.models.losses`)."""
  norm = model.loss_normalization
  if not isinstance(norm, str):
    return float(norm)
  if norm == 'num_real_target_tokens':
    return 'NUM_REAL_TARGET_TOKENS'
  if norm == 'none':
    return None
  raise TrainingError(f'PromptableT5.loss_normalization={norm!r} has no T5X equivalent; use '
                      "'num_real_target_tokens', 'none' or a float with promptjax.interop.t5x.T5XModel.")


def params_axes(model: PromptableT5) -> Mapping[str, Any]:
  """T5X's `params_axes` collection: `<name>_axes` AxisMetadata (logical axis names) per parameter."""
  flat = traverse_util.flatten_dict(model.logical_axes(),
                                    is_leaf=lambda _, x: isinstance(x, jax.sharding.PartitionSpec))
  return traverse_util.unflatten_dict({k[:-1] + (k[-1] + '_axes',): flax_partitioning.AxisMetadata(tuple(v))
                                       for k, v in flat.items()})


class OptaxWrapper(t5x_optimizers.OptaxWrapper):
  """T5X's `OptaxWrapper` that also partitions factored Adafactor states (T5X's rules stop at optax's
  `FactoredState`): each state leaf follows its parameter's logical axes, a factored row/column statistic
  the parameter's axes minus the averaged dimension, anything else replicated
  (`promptjax.training.partitioning.optimizer_state_specs`)."""

  def derive_logical_axes(self, optimizer, param_logical_axes):
    axes = jax.tree_util.tree_map(lambda x: None, optimizer.state_dict())
    axes['target'] = param_logical_axes
    state_axes = partitioning.optimizer_state_specs(optimizer.state.param_states, optimizer.target,
                                                    flax.core.unfreeze(param_logical_axes))
    axes['state']['param_states'] = flax.serialization.to_state_dict(state_axes)
    return optimizer.restore_state(flax.core.unfreeze(axes))


def optimizer(optimizer: Optional[optax.GradientTransformation] = None, trainable: str = 'all'
              ) -> OptaxWrapper:
  """T5X's `optimizer_def`: `optimizer` (None: the papers' Adafactor, lr 1e-3, `optimizers.adafactor`)
  masked to `trainable` ('all', 'transformer', 'prompt'; frozen leaves get zero updates and no state)."""
  return OptaxWrapper(masked_default_optimizer(optimizer, None, trainable))


def learning_rate_fn(optimizer_def: OptaxWrapper):
  """The learning rate T5X's `Trainer` logs (the optax optimizer applies its own schedule)."""
  schedule = opt_lib.learning_rate_schedule(getattr(optimizer_def, 'optax_optimizer', None))
  return schedule or (lambda step: jnp.zeros((), jnp.float32))


class T5XModel(t5x_models.EncoderDecoderModel):
  """A `PromptableT5` as a T5X `EncoderDecoderModel` (see the module docstring).

  Args:
    model: the promptjax model (architecture, prompt, loss normalization, z_loss).
    input_vocabulary, output_vocabulary: seqio vocabularies (T5X's feature converter and evaluation).
    optimizer_def: T5X's optimizer (`optimizer(...)`; None: `optimizer()`, Adafactor on everything).
    decode_fn: T5X's decoding function (default `t5x.decoding.temperature_sample`, greedy at its default
      top-k of 1; `t5x.decoding.beam_search` for beam search).
    label_smoothing, feature_converter_cls, default_decoder_params: as in T5X.
    prompt_init_checkpoint: a checkpoint whose transformer the run starts from (T5X's
      ``INITIAL_CHECKPOINT_PATH``; ``runs/finetune.gin`` binds it). The prompt is then initialized from
      *its* weights, exactly as `promptjax train` does with that ``INITIAL_CHECKPOINT_PATH`` and
      ``RANDOM_SEED`` = `prompt_init_seed` (vocab-sampled rows of the loaded embedding, Lester et al. 2021;
      a deep prompt's keys/values from the loaded layers): computed once on the host, so T5X's jitted
      initialization carries only the prompt. T5X restores the transformer itself and keeps this prompt,
      which the checkpoint lacks (``fallback_to_scratch``). None: the prompt comes from the freshly
      initialized transformer.
    prompt_init_seed: the seed of that prompt (None: 0, `promptjax train`'s default ``RANDOM_SEED``).
  """

  def __init__(self, model: PromptableT5, input_vocabulary=None, output_vocabulary=None,
               optimizer_def=None, label_smoothing: float = 0.0, feature_converter_cls=None,
               decode_fn=t5x_decoding.temperature_sample, default_decoder_params=None,
               prompt_init_checkpoint: Optional[str] = None, prompt_init_seed: Optional[int] = None):
    self.promptable = model
    self.prompt_init_checkpoint = prompt_init_checkpoint
    self.prompt_init_seed = 0 if prompt_init_seed is None else int(prompt_init_seed)
    super().__init__(module=T5XModule(model.config, model.prompt), input_vocabulary=input_vocabulary,
                     output_vocabulary=output_vocabulary or input_vocabulary,
                     optimizer_def=optimizer() if optimizer_def is None else optimizer_def,
                     decode_fn=decode_fn, feature_converter_cls=feature_converter_cls,
                     label_smoothing=label_smoothing, z_loss=model.z_loss,
                     loss_normalizing_factor=loss_normalizing_factor(model),
                     default_decoder_params=default_decoder_params)

  @functools.cached_property
  def _checkpoint_prompt(self):
    """The prompt `promptjax train` initializes on `prompt_init_checkpoint` with `prompt_init_seed`."""
    from promptjax.checkpoints import restore
    try:
      loaded = restore.load_transformer(self.promptable, self.prompt_init_checkpoint)
    except restore.RestoreError as e:
      raise TrainingError(f'promptjax.interop.t5x.T5XModel.prompt_init_checkpoint='
                          f'{self.prompt_init_checkpoint} (INITIAL_CHECKPOINT_PATH): {e}') from e
    with jax.ensure_compile_time_eval():   # host values even when T5X's jitted init calls this first
      prompt_rng = jax.random.split(jax.random.PRNGKey(self.prompt_init_seed))[1]
      prompt = init_prompt_params(prompt_rng, self.promptable.prompt, self.promptable.config, loaded)
    return jax.tree_util.tree_map(np.asarray, prompt)

  def get_initial_variables(self, rng, input_shapes=None, input_types=None):
    """{'params': the values of `PromptableT5.init_params(rng)`, 'params_axes': their logical axes}.
    Traceable (T5X jits it). The prompt comes from the freshly initialized transformer (a deep prompt's
    projections equal the host-side ones up to float rounding), or with `prompt_init_checkpoint` from that
    checkpoint's transformer (constants computed once on the host)."""
    del input_shapes, input_types  # parameter values do not depend on them
    init_rng, prompt_rng = jax.random.split(rng)
    from_checkpoint = bool(self.prompt_init_checkpoint) and self.promptable.prompt.enabled
    prompt = self._checkpoint_prompt if from_checkpoint else None   # a checkpoint that does not fit fails first
    params = self.promptable.init_transformer(init_rng)
    if not from_checkpoint:
      prompt = init_prompt_params(prompt_rng, self.promptable.prompt, self.promptable.config, params, xp=jnp)
    if prompt is not None:
      params['prompt'] = jax.tree_util.tree_map(jnp.asarray, prompt)
    return flax.core.freeze({'params': params, 'params_axes': params_axes(self.promptable)})

  def predict_batch_with_aux(self, params, batch, rng=None, decoder_params=None, return_all_decodes=None,
                             num_decodes=None, prompt_with_targets=False):
    """T5X's `EncoderDecoderModel.predict_batch_with_aux` over promptjax's explicit key/value cache: the
    same arguments and returns (decodes [b, max_len] and {'scores': [b]}, or [b, num_decodes, ...] with
    `return_all_decodes`), decoding up to the batch's target length with `decode_fn`."""
    if return_all_decodes is None:
      return_all_decodes = self._default_decoder_params.return_all_decodes
    if num_decodes is None:
      num_decodes = self._default_decoder_params.num_decodes
    eos_id = self.output_vocabulary.eos_id if self.output_vocabulary is not None else 1
    decoder_input_tokens = jnp.asarray(batch['decoder_input_tokens'], jnp.int32)
    if prompt_with_targets:   # forced prefixes; EOS removed so that decoding does not stop at the prompt
      prompt = decoder_input_tokens * (decoder_input_tokens != eos_id)
    else:
      prompt = jnp.zeros_like(decoder_input_tokens)
    model = self.promptable
    encoded, mask = model.encode(params, jnp.asarray(batch['encoder_input_tokens'], jnp.int32))
    cache = model.init_decoding_cache(params, encoded, mask, decoder_input_tokens.shape[1])

    def tokens_to_logits(state: t5x_decoding.DecodingState):
      return model.decode_step(params, state.cache, state.cur_token, state.cur_index)

    decoder_params = dict(decoder_params or {})
    if rng is not None:
      if decoder_params.get('decode_rng') is not None:
        raise ValueError(f"Got RNG both from the `rng` argument ({rng}) and decoder_params['decode_rng'] "
                         f"({decoder_params['decode_rng']}); give one or the other.")
      decoder_params['decode_rng'] = rng
    decoder_params.setdefault('eos_id', eos_id or 1)
    decodes, scores = self._decode_fn(inputs=prompt, cache=cache, tokens_to_logits=tokens_to_logits,
                                      num_decodes=num_decodes, cache_offset=0, **decoder_params)
    if return_all_decodes:
      return decodes, {'scores': scores}
    return decodes[:, -1, :], {'scores': scores[:, -1]}


# ------------------------------------------------------------------------------------------------------
# Meta-learning under T5X's trainer.

class MetaTrainer(t5x_trainer.Trainer):
  """T5X's `Trainer` whose step is promptjax's meta-learning step: FOMAML / adapted Reptile (Wu et al. 2022
  App. B), prompt-only MAML / FoMAML / Reptile (Qin et al. 2023 §4.3), the meta-gradient of
  `promptjax.meta.algorithms.meta_gradient` fed to T5X's optimizer (`T5XModel.optimizer_def`, masked to
  the trainable group) through `t5x.trainer.apply_grads`. Everything else (partitioner, checkpoints,
  summaries, learning-rate logging) is T5X's.

  Bind it as ``train.trainer_cls`` with `meta_dataset` as ``train.get_dataset_fn`` (the meta-batches:
  `promptjax.data.meta_sampler`'s ``support/<feature>`` [M, T, b, ...] and ``query/<feature>`` [M, b, ...],
  clones sharded over the 'data' axis like promptjax's trainer); ``promptjax/configs/t5x/fomaml.gin`` does.

  Args (besides `t5x.trainer.Trainer`'s):
    meta_config: the algorithm (`promptjax.meta.MetaConfig`).
    trainable: the outer trainable group ('all' for Wu et al., 'prompt' for Qin et al.); it must be the
      group `optimizer(trainable=...)` masks to.
  """

  def __init__(self, model, train_state, partitioner, eval_names, summary_dir, train_state_axes, rng,
               learning_rate_fn, num_microbatches=None, weight_metrics_computer=None, *,
               meta_config=None, trainable: str = 'all'):
    if meta_config is None:
      raise TrainingError('MetaTrainer needs meta_config (a promptjax.meta.MetaConfig); bind '
                          'promptjax.interop.t5x.MetaTrainer.meta_config, e.g. with promptjax/configs/t5x/fomaml.gin.')
    if num_microbatches not in (None, 1):
      raise TrainingError(f'MetaTrainer takes no micro-batches (got num_microbatches={num_microbatches}): a '
                          'meta-step chunks its clones instead (MetaConfig.chunk_size).')
    if not isinstance(model, T5XModel):
      raise TrainingError(f'MetaTrainer trains a promptjax.interop.t5x.T5XModel, got {type(model).__name__}.')
    self._meta_config = meta_config
    self._meta_trainable = trainable
    super().__init__(model=model, train_state=train_state, partitioner=partitioner, eval_names=eval_names,
                     summary_dir=summary_dir, train_state_axes=train_state_axes, rng=rng,
                     learning_rate_fn=learning_rate_fn, num_microbatches=None,
                     weight_metrics_computer=weight_metrics_computer)

  @functools.cached_property
  def _partitioned_train_step(self):
    from promptjax.meta import algorithms
    from t5x import metrics as t5x_metrics
    model, meta, trainable = self._model.promptable, self._meta_config, self._meta_trainable
    dropout = model.config.dropout_rate > 0

    def train_step(train_state, batch):
      support, query = algorithms.split_meta_batch(batch)
      params = flax.core.unfreeze(train_state.params)
      rng = self._get_step_rng(train_state.step) if dropout else None
      loss, grads, _ = algorithms.meta_gradient(model, params, support, query, meta, trainable=trainable,
                                                rng=rng)
      if isinstance(train_state.params, flax.core.FrozenDict):
        grads = flax.core.freeze(grads)
      metrics = {'loss': t5x_metrics.AveragePerStep.from_model_output(loss)}
      return t5x_trainer.apply_grads(train_state, grads, metrics, self._learning_rate_fn(train_state.step),
                                     self._weight_metrics_computer)

    return self._partitioner.partition(train_step, in_axis_resources=(self._train_state_axes,
                                                                      self._partitioner.data_partition_spec),
                                       out_axis_resources=(self._train_state_axes, None), donate_argnums=(0,))


def _latest_t5x_step(model_dir: Optional[str]) -> int:
  """The step of MODEL_DIR's newest readable T5X checkpoint (`promptjax.checkpoints.t5x`), 0 without one."""
  from promptjax.checkpoints import t5x as t5x_checkpoints
  if not model_dir or not os.path.isdir(model_dir):
    return 0
  try:
    return t5x_checkpoints.t5x_checkpoint_step(model_dir) or 0
  except (OSError, ValueError):   # no checkpoint yet
    return 0


def meta_dataset(cfg, shard_id: int, num_shards: int, feature_converter_cls=None, num_epochs=None,
                 continue_from_last_checkpoint: bool = False, *, data_cfg=None, model_dir: Optional[str] = None,
                 initial_step: int = 0):
  """T5X's ``train.get_dataset_fn`` for `MetaTrainer`: this host's share of promptjax's meta-batches
  (`promptjax.data.meta_sampler.meta_batches` of `data_cfg`, host `shard_id` of `num_shards`) as a
  ``tf.data.Dataset``. T5X's ``DatasetConfig`` (`cfg`) must name the same task and have ``batch_size`` =
  the meta-batch size M (T5X shards batches by it).

  Exact resume: the sampler is a pure function of the step, so it starts at the meta-step of the newest
  readable ``checkpoint_<step>`` in `model_dir` minus `initial_step` (the step of T5X's ``INITIAL_CHECKPOINT_PATH``,
  which T5X's step count includes; 0 from scratch).
  """
  import tensorflow as tf
  from promptjax.data import meta_sampler
  del feature_converter_cls, num_epochs, continue_from_last_checkpoint  # meta-batches are built here
  if data_cfg is None:
    raise DataError('meta_dataset needs data_cfg (a promptjax.meta.MetaDataConfig); bind '
                    'promptjax.interop.t5x.meta_dataset.data_cfg, e.g. with promptjax/configs/t5x/fomaml.gin.')
  if cfg is not None and cfg.batch_size != data_cfg.meta_batch_size:
    raise DataError(f'T5X\'s DatasetConfig.batch_size ({cfg.batch_size}) must be the meta-batch size '
                    f'({data_cfg.meta_batch_size}): T5X shards the clones by it. Set BATCH_SIZE = META_BATCH_SIZE.')
  start = max(_latest_t5x_step(model_dir) - int(initial_step), 0)
  m_local = data_cfg.meta_batch_size // num_shards
  spec = {}
  for role, lead in (('support', (m_local, data_cfg.support_batches, data_cfg.support_batch_size)),
                     ('query', (m_local, data_cfg.query_batch_size))):
    for k, x in abstract_features(data_cfg.task_feature_lengths, lead).items():
      spec[f'{role}/{k}'] = tf.TensorSpec(x.shape, tf.int32)
  return tf.data.Dataset.from_generator(
      lambda: meta_sampler.meta_batches(data_cfg, start_step=start, process_index=shard_id,
                                        process_count=num_shards),
      output_signature=spec)
