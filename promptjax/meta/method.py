"""Meta-learning as a training method of the generic loop (`promptjax.training.method.Method`).

Each step is one meta-batch: M clones, each T prompt-only inner steps on its support batches and a query
batch (Wu et al. 2022 App. B; Qin et al. 2023 §4.3); the meta-gradient feeds the outer optimizer. Clones
are sharded over the mesh's 'data' axis.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator

import jax

from promptjax.data import meta_sampler
from promptjax.data.feeds import DatasetConfig, abstract_features
from promptjax.errors import TrainingError
from promptjax.meta import algorithms
from promptjax.training.method import ModelOnlyMethod, meta_validation


@dataclasses.dataclass
class MetaLearning(ModelOnlyMethod):
  """FOMAML / MAML / Reptile / MTL over meta-batches (see `promptjax.meta.algorithms`).

  Attributes:
    config: the algorithm and its inner loop (`MetaConfig`).
    data_cfg: the meta-batch sampler's configuration (`MetaDataConfig`).
  """
  config: algorithms.MetaConfig
  data_cfg: meta_sampler.MetaDataConfig

  def check(self, model, trainable, mesh) -> None:
    del trainable
    meta, data = self.config, self.data_cfg
    if model.prompt.kind == 'none':
      raise TrainingError(f'{meta.algorithm} adapts a prompt in its inner loop, but the model has none: use a '
                          'method gin file with a prompt (PromptConfig.kind = "shallow" or "deep").')
    if data.inner_steps != meta.inner_steps:
      raise TrainingError(f'The meta-batch sampler draws {data.inner_steps} support batches per clone but the '
                          f'algorithm runs inner_steps={meta.inner_steps}; bind both to the INNER_STEPS macro.')
    chunk = meta.chunk_size or data.meta_batch_size
    if data.meta_batch_size % chunk:
      raise TrainingError(f'META_BATCH_SIZE={data.meta_batch_size} is not a multiple of the clone chunk size '
                          f'{chunk} (MetaConfig.chunk_size).')
    data_axis = dict(mesh.shape)['data']
    if meta.algorithm == 'maml' and meta.maml_backward == 'hvp' and meta.hvp_chunks is None:
      # Halve the HVPs only where every device holds an even number of a chunk's clones: a split of the
      # clone axis below the device count would reshard the clones.
      per_device = (1 if meta.carry_inner_state else chunk) // data_axis
      self.config = dataclasses.replace(meta, hvp_chunks=meta.hvp_parts(per_device) if per_device else 1)
    if data.meta_batch_size % data_axis:
      raise TrainingError(
          f'META_BATCH_SIZE={data.meta_batch_size} clones do not divide over the mesh\'s data axis '
          f'({data_axis}): clones are sharded over \'data\'. Use a meta-batch that is a multiple of '
          f'it, or MESH_SHAPE=(d, -1) with d dividing the meta-batch (e.g. (1, -1) for one clone per step).')

  def data(self) -> DatasetConfig:
    data = self.data_cfg
    chunk = self.config.chunk_size or data.meta_batch_size
    return DatasetConfig(data.mixture_or_task_name, data.task_feature_lengths,
                         batch_size=chunk * max(data.support_batch_size, data.query_batch_size),
                         seed=data.seed, module=data.module)

  def activation_rows(self) -> int:
    """The rows of one clone chunk whose activations a meta-step holds at once (the dry run's estimate): one
    batch for the first-order algorithms; for second-order MAML with `maml_backward='hvp'` one inner step's
    Hessian-vector products of one of the `hvp_chunks` parts of the clones (their support rows twice:
    forward and tangent activations) or the query batch;
    with `'autodiff'` the support rows of the inner steps twice (forward and the backward it differentiates;
    one inner step at a time with `MetaConfig.remat`) plus the query rows."""
    data, meta = self.data_cfg, self.config
    chunk = meta.chunk_size or data.meta_batch_size
    if meta.algorithm != 'maml':
      return chunk * max(data.support_batch_size, data.query_batch_size)
    if meta.maml_backward == 'hvp':
      return max(2 * data.support_batch_size * (chunk // meta.hvp_parts(chunk)), chunk * data.query_batch_size)
    steps = 1 if meta.remat else meta.inner_steps
    return chunk * (2 * data.support_batch_size * steps + data.query_batch_size)

  def make_step(self, model, optimizer, *, trainable, dropout_seed, learning_rate_fn):
    return algorithms.make_meta_train_step(model, optimizer, self.config, trainable=trainable,
                                           dropout_seed=dropout_seed, learning_rate_fn=learning_rate_fn)

  def batches(self, start_step: int) -> Iterator[Dict[str, Any]]:
    return meta_sampler.meta_batches(self.data_cfg, start_step=start_step)

  def abstract_batch(self, model) -> Dict[str, jax.ShapeDtypeStruct]:
    """The global meta-batch (`promptjax.data.meta_sampler`'s layout): support [M, T, b, ...], query [M, bq, ...]."""
    del model
    data = self.data_cfg
    m = data.meta_batch_size
    out = {f'support/{k}': v for k, v in abstract_features(
        data.task_feature_lengths, (m, data.support_batches, data.support_batch_size)).items()}
    out.update({f'query/{k}': v for k, v in abstract_features(
        data.task_feature_lengths, (m, data.query_batch_size)).items()})
    return out

  def validation(self, model, mesh, num_batches: int, trainable: str):
    """params -> the meta-loss (`algorithms.meta_gradient`'s: the query loss after the inner loop) on the
    first `num_batches` meta-batches of the tasks' 'validation' split (support and query from it), the same
    ones at every validation; no dropout."""
    cfg = dataclasses.replace(self.data_cfg, support_split='validation', query_split=None)
    meta = self.config

    def loss(params, batch):
      support, query = algorithms.split_meta_batch(batch)
      return algorithms.meta_gradient(model, params, support, query, meta, trainable=trainable)[0]
    return meta_validation(jax.jit(loss), lambda: meta_sampler.meta_batches(cfg), num_batches, mesh)

  def signature(self) -> Dict[str, Any]:
    return {'meta': self.config.algorithm}

  def summary(self) -> str:
    meta, data = self.config, self.data_cfg
    chunk = 1 if meta.carry_inner_state else (meta.chunk_size or data.meta_batch_size)
    return '\n'.join([
        f'meta-learning: {meta.algorithm}, inner steps {meta.inner_steps}, inner lr {meta.inner_learning_rate}, '
        f'inner clip {meta.inner_global_norm_clip}',
        f'  meta-batch {data.meta_batch_size} clones x (support {data.support_batch_size} x '
        f'{data.inner_steps} steps [{data.support_mode}] + query {data.query_batch_size}), '
        f'task per {data.task_per}, sampling {data.task_sampling}',
        f'  clones per chunk {chunk} ({data.meta_batch_size // chunk} chunks); the activation estimate '
        f'above is for one chunk: {self.activation_rows()} rows held at once'])
