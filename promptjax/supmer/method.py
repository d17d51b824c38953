"""SUPMER (Pan et al. 2023, Alg. 1) as a training method of the generic loop
(`promptjax.training.method.Method`): only the prompt θ and the regularizer φ train; φ and the curriculum
state live in a top-level 'supmer' parameter subtree, checkpointed and resumed with the rest."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator

import jax

from promptjax.data import meta_sampler
from promptjax.data.feeds import DatasetConfig, abstract_features
from promptjax.errors import TrainingError
from promptjax.supmer import algorithm as supmer_lib
from promptjax.training import optimizers as opt_lib
from promptjax.training.method import meta_validation


@dataclasses.dataclass
class Supmer:
  """SUPMER's meta-step over anchor meta-tasks.

  Attributes:
    config: the meta-step (`SupmerConfig`).
    data_cfg: the anchor meta-tasks (`promptjax.supmer.tasks.SupmerDataConfig`), or a `MetaDataConfig`
      with inner_steps 1 to read any seqio mixture through the generic meta-batch sampler.
  """
  config: supmer_lib.SupmerConfig
  data_cfg: Any
  num_microbatches = 1   # one meta-batch per step, no accumulation

  def check(self, model, trainable, mesh) -> None:
    del mesh
    try:
      supmer_lib.check_model(model)
    except ValueError as e:
      raise TrainingError(str(e)) from e
    if opt_lib.canonical_group(trainable) != 'prompt':
      raise TrainingError(f'SUPMER tunes only the prompt (and φ), but TRAINABLE={trainable!r}: use '
                          "TRAINABLE = 'prompt' (supmer.gin sets it).")
    if self.data_cfg is not None and not isinstance(self.data_cfg, meta_sampler.MetaDataConfig):
      from promptjax.supmer import tasks as supmer_tasks
      supmer_tasks.check_embedding_width(self.data_cfg, model.config.emb_dim)

  def data(self) -> DatasetConfig:
    """The data described for the checkpoint info."""
    cfg = self.data_cfg
    m = getattr(cfg, 'meta_batch_size', 1)
    rows = max(getattr(cfg, 'support_batch_size', 1), getattr(cfg, 'query_batch_size', 1))
    return DatasetConfig(getattr(cfg, 'mixture_or_task_name', 'supmer_batches'),
                         dict(getattr(cfg, 'task_feature_lengths', {}) or {}), batch_size=m * rows,
                         seed=getattr(cfg, 'seed', 0), module=getattr(cfg, 'module', None))

  def _task_shape(self):
    """(tasks M, feature lengths, support rows, query rows, SUPMER's own data with centroid vectors?).
    SUPMER's own data take the construction's sizes (Table 6: 32 / 32; the data's manifest decides in a
    real run)."""
    from promptjax.supmer import construct, tasks as supmer_tasks
    cfg = self.data_cfg
    if isinstance(cfg, meta_sampler.MetaDataConfig):
      return cfg.meta_batch_size, cfg.task_feature_lengths, cfg.support_batch_size, cfg.query_batch_size, False
    cfg = cfg or supmer_tasks.SupmerDataConfig()
    defaults = construct.ConstructConfig()
    return cfg.meta_batch_size, cfg.task_feature_lengths, defaults.support_size, defaults.query_size, True

  def activation_rows(self) -> int:
    """The rows a meta-step runs through the model, whose activations the outer gradient needs (the dry
    run's estimate): query and mixed query of each task, with the support rows once (first order, and
    second order with `second_order_backward='hvp'`: its Hessian-vector product recomputes the support pass
    instead of keeping it, and the compiled T5-base row holds 352.8 GiB against this count's 385 GiB) or
    twice (second order with 'autodiff', for the backward pass it differentiates)."""
    m, _, support, query, _ = self._task_shape()
    twice = self.config.second_order and self.config.second_order_backward == 'autodiff'
    return m * (support * (2 if twice else 1) + 2 * query)

  def extra_params(self, model, rng) -> Dict[str, Any]:
    return {supmer_lib.SUPMER_KEY: supmer_lib.init_supmer_params(self.config, model, rng)}

  def optimizer(self, optimizer, abstract_params, trainable, total_steps):
    del abstract_params, trainable
    if optimizer is None:
      optimizer = supmer_lib.table6_adam(0.1, total_steps)
    return supmer_lib.outer_optimizer(optimizer, self.config.optimizer_for_phi)

  def make_step(self, model, optimizer, *, trainable, dropout_seed, learning_rate_fn):
    del trainable, dropout_seed
    return supmer_lib.make_train_step(model, optimizer, self.config, learning_rate_fn=learning_rate_fn)

  def batches(self, start_step: int) -> Iterator[Dict[str, Any]]:
    if self.data_cfg is None:
      raise TrainingError('A SUPMER run needs its data (Supmer.data_cfg), or batches=... .')
    try:
      return supmer_lib.default_batches(self.data_cfg, start_step=start_step)
    except ValueError as e:
      raise TrainingError(str(e)) from e

  def abstract_batch(self, model) -> Dict[str, jax.ShapeDtypeStruct]:
    """The global meta-batch: support / query / mix_query [M, S or Q, ...]; with SUPMER's own data, the
    inserted centroid vectors too (the model's width). Sizes: `_task_shape`."""
    import numpy as np
    from promptjax.supmer import tasks as supmer_tasks
    m, lengths, support, query, vectors = self._task_shape()
    sizes = {'support': support, 'query': query, 'mix_query': query}
    out = {}
    for role, rows in sizes.items():
      feats = dict(abstract_features(lengths, (m, rows)))
      if vectors:
        v = supmer_tasks.NUM_VECTORS
        feats['encoder_input_vectors'] = jax.ShapeDtypeStruct((m, rows, v, model.config.emb_dim), np.float32)
        feats['encoder_input_vector_positions'] = jax.ShapeDtypeStruct((m, rows, v), np.int32)
      out.update({f'{role}/{k}': x for k, x in feats.items()})
    return out

  def validation(self, model, mesh, num_batches: int, trainable: str):
    """params -> the meta-validation loss (`algorithm.validation_loss`) on the first `num_batches`
    meta-batches of the validation tasks (the construction's 'validation' split, App. C.2's 5%; the
    generic sampler's 'validation' split), the same tasks at every validation."""
    del trainable   # θ and φ
    if self.data_cfg is None:
      return None
    if isinstance(self.data_cfg, meta_sampler.MetaDataConfig):
      cfg = dataclasses.replace(self.data_cfg, support_split='validation', query_split=None)
    else:
      cfg = dataclasses.replace(self.data_cfg, split='validation')
    fn = jax.jit(lambda p, b: supmer_lib.validation_loss(model, p, b, self.config))
    return meta_validation(fn, lambda: supmer_lib.default_batches(cfg), num_batches, mesh)

  def signature(self) -> Dict[str, Any]:
    return {'meta': 'supmer', 'supmer': self.config.signature()}

  def summary(self) -> str:
    cfg = self.config
    return (f'SUPMER: transform {cfg.transform}, inner lr {cfg.inner_learning_rate}, reg λ {cfg.reg_coefficient}, '
            f'mixup α {cfg.mixup_alpha}, curve m {cfg.curve}, similarity {cfg.similarity}/{cfg.similarity_query}, '
            f'{"second" if cfg.second_order else "first"} order; task augmentation {cfg.task_augmentation}, '
            f'curriculum {cfg.curriculum}, ψ {cfg.gradient_regularization}')
