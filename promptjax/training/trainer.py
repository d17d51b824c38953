"""The training loop: seqio data → one jitted, sharded train step → orbax checkpoints, with exact resume.

Implements the continued pretraining of Wu et al. 2022 (`papers/000_*` §3, Appendix C): multi-task
learning over a seqio mixture with the transformer (T) and the prompt (P) each trained or frozen
(``trainable`` = 'transformer' for MTL-T✓P✗ / T0, 'prompt' for MTL-T✗P✓ / PPT, 'all' for MTL-T✓P✓).

Layout of MODEL_DIR (T5X's): ``checkpoint_<step>/`` (orbax: ``state`` = step, params, optimizer state;
``meta`` = JSON with the data position and the model signature), ``train/`` (TensorBoard summaries),
``model-info.txt`` (parameter shapes and counts per group) and, from the CLI, ``config.gin``.

Exact resume: the data pipeline is deterministic given its seed, so a restarted run rebuilds it and skips
the batches already consumed (recorded in ``meta``); dropout keys are ``fold_in(seed, step)``. A run
killed at any point and restarted ends bit-identical to an uninterrupted one. SIGTERM (preemption) saves
a checkpoint at the current step and returns cleanly.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from promptjax.models.model import PromptableT5
from promptjax.training import train_step as ts

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
  """A run cannot go on; the message names the cause and the fix. Earlier checkpoints are intact."""


@dataclasses.dataclass
class DatasetConfig:
  """Which seqio task/mixture to read and how (T5X's ``utils.DatasetConfig``).

  Attributes:
    mixture_or_task_name: a registered seqio task or mixture (``MIXTURE_OR_TASK_NAME``).
    task_feature_lengths: e.g. ``{'inputs': 769, 'targets': 193}`` (``TASK_FEATURE_LENGTHS``).
    split: dataset split.
    batch_size: the global batch size (``BATCH_SIZE``), split evenly over processes.
    shuffle: shuffle the data (seeded, so resumable).
    seed: the data seed.
    module: a module to import to register the task (``MIXTURE_OR_TASK_MODULE``).
  """
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str = 'train'
  batch_size: int = 32
  shuffle: bool = True
  seed: Optional[int] = 0
  module: Optional[str] = 'promptjax.tasks'


def dataset_batches(cfg: DatasetConfig, *, start_batch: int = 0, num_epochs: Optional[int] = None,
                    process_index: Optional[int] = None, process_count: Optional[int] = None
                    ) -> Iterator[Dict[str, np.ndarray]]:
  """This process's share of each global batch, as numpy, starting after `start_batch` batches."""
  import seqio
  from promptjax.tasks import utils as task_utils
  if cfg.module:
    importlib.import_module(cfg.module)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if cfg.batch_size % process_count:
    raise TrainingError(f'BATCH_SIZE={cfg.batch_size} is not divisible by the {process_count} processes.')
  task_utils.get_task_or_mixture(cfg.mixture_or_task_name)
  shard_info = seqio.ShardInfo(process_index, process_count) if process_count > 1 else None
  ds = seqio.get_dataset(
      cfg.mixture_or_task_name, task_feature_lengths=dict(cfg.task_feature_lengths),
      dataset_split=cfg.split, shuffle=cfg.shuffle, num_epochs=num_epochs, seed=cfg.seed,
      shard_info=shard_info, use_cached=False, feature_converter=seqio.EncDecFeatureConverter(pack=False))
  keep = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights')
  ds = ds.map(lambda ex: {k: ex[k] for k in keep})
  ds = ds.batch(cfg.batch_size // process_count, drop_remainder=True)
  if start_batch:
    ds = ds.skip(start_batch)
  return task_utils.iterate(ds, cfg.mixture_or_task_name)


def model_signature(model: PromptableT5, trainable: str) -> Dict[str, Any]:
  return {'config': dataclasses.asdict(model.config), 'prompt': dataclasses.asdict(model.prompt),
          'trainable': trainable}


def _describe_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
  diffs = []
  for part in ('config', 'prompt'):
    for key in sorted(set(saved.get(part, {})) | set(current.get(part, {}))):
      a, b = saved.get(part, {}).get(key), current.get(part, {}).get(key)
      if a != b and not (isinstance(a, list) and tuple(a) == b):
        diffs.append(f'{part}.{key}: checkpoint {a!r} vs now {b!r}')
  return '; '.join(diffs[:4]) or 'parameter structure differs'


def write_model_info(path: str, params_shapes: Any, trainable_groups: Sequence[str]) -> Dict[str, int]:
  """``model-info.txt``: one line per parameter (shape, count, trainable) and totals per group."""
  from flax import traverse_util
  flat = traverse_util.flatten_dict(params_shapes, sep='/')
  lines, totals = [], {}
  for name in sorted(flat):
    shape = tuple(flat[name].shape)
    n = int(np.prod(shape)) if shape else 1
    group = name.split('/')[0]
    totals[group] = totals.get(group, 0) + n
    lines.append(f'{name:<70s} {str(shape):<20s} {n:>14,d}  {"trainable" if group in trainable_groups else "frozen"}')
  lines.append('')
  for group, n in sorted(totals.items()):
    lines.append(f'total {group:<20s} {n:>16,d}  {"trainable" if group in trainable_groups else "frozen"}')
  lines.append(f'total {"all":<20s} {sum(totals.values()):>16,d}')
  lines.append(f'total {"trainable":<20s} {sum(v for k, v in totals.items() if k in trainable_groups):>16,d}')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return totals


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not the main thread
      self._previous = None
    return self

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class TrainResult:
  state: Any
  step: int
  losses: Dict[int, float]
  preempted: bool
  model_dir: str


def train(*, model_dir: str, model: PromptableT5, train_dataset_cfg: Optional[DatasetConfig] = None,
          total_steps: int,
          optimizer: Optional[optax.GradientTransformation] = None,
          learning_rate_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
          trainable: str = 'all', num_microbatches: int = 1,
          initial_checkpoint_path: Optional[str] = None,
          mesh_shape: Optional[Sequence[int]] = None, logical_axis_rules: Optional[Sequence] = None,
          checkpoint_period: int = 1000, keep_checkpoints: Optional[int] = None,
          async_checkpointing: bool = True, log_period: int = 10,
          eval_dataset_cfg: Optional[DatasetConfig] = None, eval_period: int = 0, eval_batches: int = 8,
          seed: int = 0, dropout_seed: Optional[int] = 0, progress: bool = True,
          batches: Optional[Iterator[Mapping[str, np.ndarray]]] = None, dry_run: bool = False,
          meta: Optional[Any] = None, meta_data_cfg: Optional[Any] = None,
          supmer: Optional[Any] = None, supmer_data_cfg: Optional[Any] = None):
  """Trains `model` on `train_dataset_cfg` until `total_steps`, resuming from MODEL_DIR if it holds a
  checkpoint. Returns the final state, the losses seen by this invocation, and whether it was preempted.

  `optimizer` defaults to the papers' Adafactor (lr 1e-3, decay 0.8, update clipping 1.0, no parameter
  scaling, global-norm clipping 1.0); it is masked to `trainable` here. `batches` replaces the seqio
  pipeline (tests); with it, resume cannot skip consumed data. `dry_run` returns a report of shapes,
  shardings and per-device memory (`DryRunReport`) without allocating, reading data or writing files.

  Meta-learning (Wu et al. FOMAML / adapted Reptile, Qin et al. prompt-only MAML / FoMAML / Reptile /
  MTL): pass `meta` (a `promptjax.meta.MetaConfig`) and `meta_data_cfg` (a
  `promptjax.meta.sampler.MetaDataConfig`); each step is then one meta-batch (the meta-gradient fed to
  `optimizer`), with the same sharding (clones over 'data'), checkpoints and exact resume.
  `train_dataset_cfg` may be None then.

  SUPMER (Pan et al. 2023, `promptjax.meta.supmer`): pass `supmer` (a `promptjax.meta.SupmerConfig`) and
  `supmer_data_cfg` (the SUPMER data pipeline's config — `promptjax.tasks.supmer.supmer_meta_batches` — or a
  `MetaDataConfig` with inner_steps 1 for the interim sampler adapter), or `batches` of the SUPMER layout.
  Only the prompt and φ train; `optimizer` is the prompt's (None: Table 6's Adam, lr 0.1 linear to 0)
  and `SupmerConfig.phi_optimizer` φ's. φ and the curriculum state live in a top-level 'supmer' subtree
  of the state's params (checkpointed and resumed with them).
  """
  import orbax.checkpoint as ocp
  from clu import metric_writers
  from tqdm.auto import tqdm
  from promptjax.training import optimizers as opt_lib
  from promptjax.training import partitioning

  if supmer is not None:
    if meta is not None:
      raise TrainingError('Pass either meta (MetaConfig) or supmer (SupmerConfig), not both.')
    _check_supmer(supmer, model, trainable)
    num_microbatches = 1
    if train_dataset_cfg is None:
      train_dataset_cfg = _supmer_dataset_cfg(supmer_data_cfg)
  if meta is not None:
    if meta_data_cfg is None:
      raise TrainingError('A meta-learning run needs meta_data_cfg (a promptjax.meta.sampler.MetaDataConfig).')
    _check_meta(meta, meta_data_cfg, model)
    num_microbatches = 1
    if train_dataset_cfg is None:
      chunk = meta.chunk_size or meta_data_cfg.meta_batch_size
      train_dataset_cfg = DatasetConfig(meta_data_cfg.mixture_or_task_name, meta_data_cfg.task_feature_lengths,
                                        batch_size=chunk * max(meta_data_cfg.support_batch_size,
                                                               meta_data_cfg.query_batch_size),
                                        seed=meta_data_cfg.seed, module=meta_data_cfg.module)
  elif train_dataset_cfg is None:
    raise TrainingError('train_dataset_cfg is required (or meta and meta_data_cfg for meta-learning).')
  if num_microbatches < 1 or train_dataset_cfg.batch_size % num_microbatches:
    raise TrainingError(f'BATCH_SIZE={train_dataset_cfg.batch_size} is not divisible by '
                        f'num_microbatches={num_microbatches}.')

  # Model, optimizer, shardings.
  if dry_run and mesh_shape and int(np.prod(mesh_shape)) > jax.device_count():
    mesh = jax.sharding.AbstractMesh(tuple(mesh_shape), ('data', 'model'))
  else:
    mesh = partitioning.create_mesh(mesh_shape)
  rules = logical_axis_rules or partitioning.standard_logical_axis_rules()
  if meta is not None and meta_data_cfg.meta_batch_size % dict(mesh.shape)['data']:
    raise TrainingError(
        f'META_BATCH_SIZE={meta_data_cfg.meta_batch_size} clones do not divide over the mesh\'s data axis '
        f'({dict(mesh.shape)["data"]}): clones are sharded over \'data\'. Use a meta-batch that is a multiple of '
        f'it, or MESH_SHAPE=(d, -1) with d dividing the meta-batch (e.g. (1, -1) for one clone per step).')
  abstract_params = model.abstract_params()
  abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                 _unbox(abstract_params))
  groups = ts.trainable_keys(abstract_params, trainable)
  param_shardings = partitioning.param_shardings(model, mesh, rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  if supmer is not None:
    from promptjax.meta import supmer as supmer_lib
    abstract_params[supmer_lib.SUPMER_KEY] = jax.eval_shape(lambda: supmer_lib.init_supmer_params(supmer, model))
    param_shardings[supmer_lib.SUPMER_KEY] = jax.tree.map(lambda _: replicated,
                                                          abstract_params[supmer_lib.SUPMER_KEY])
    groups = groups + (supmer_lib.SUPMER_KEY,)
    if optimizer is None:
      optimizer = opt_lib.adamw(optax.linear_schedule(0.1, 0.0, total_steps))  # Table 6
    optimizer = supmer_lib.outer_optimizer(optimizer, supmer.optimizer_for_phi)
  else:
    if optimizer is None:
      optimizer = opt_lib.adafactor(learning_rate=1e-3)
    optimizer = opt_lib.masked_optimizer(optimizer, abstract_params, trainable)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  opt_shardings = partitioning.optimizer_state_shardings(optimizer, abstract_params, param_shardings, mesh)
  state_shardings = ts.TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings)
  abstract_state = ts.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                                 opt_state=abstract_opt)
  if dry_run:
    report = DryRunReport.build(model, trainable, groups, mesh, abstract_params, param_shardings, abstract_opt,
                                opt_shardings, train_dataset_cfg, num_microbatches)
    if meta is not None:
      report.text += '\n\n' + _meta_summary(meta, meta_data_cfg)
    if supmer is not None:
      report.text += '\n\n' + _supmer_summary(supmer)
    return report
  model_dir = os.path.abspath(model_dir)
  os.makedirs(model_dir, exist_ok=True)
  if jax.process_index() == 0:
    write_model_info(os.path.join(model_dir, 'model-info.txt'), abstract_params, groups)

  options = ocp.CheckpointManagerOptions(
      save_interval_steps=checkpoint_period, max_to_keep=keep_checkpoints, step_prefix='checkpoint',
      enable_async_checkpointing=async_checkpointing, create=True)
  manager = ocp.CheckpointManager(model_dir, options=options)
  signature = model_signature(model, trainable)
  if meta is not None:
    signature['meta'] = meta.algorithm
  if supmer is not None:
    signature['meta'] = 'supmer'
    signature['supmer'] = supmer.signature()

  # Restore, or initialize.
  latest = manager.latest_step()
  if latest is not None:
    saved = manager.restore(latest, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    if saved.get('signature') != json.loads(json.dumps(signature)):
      raise TrainingError(
          f'{model_dir}/checkpoint_{latest} was written by a different model or method '
          f'({_describe_mismatch(saved.get("signature", {}), json.loads(json.dumps(signature)))}). Use a new '
          f'MODEL_DIR, or the gin files the checkpoint was trained with.')
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract_state, state_shardings)
    restored = manager.restore(latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    state = restored['state']
    start = int(saved['step'])
    data_position = int(saved.get('data_batches', start))
    log.info('Resumed from %s/checkpoint_%d', model_dir, latest)
  else:
    state = _initial_state(model, optimizer, mesh, param_shardings, state_shardings, initial_checkpoint_path,
                           seed, supmer=supmer)
    start, data_position = 0, 0

  if supmer is not None:
    step_fn = supmer_lib.make_train_step(model, optimizer, supmer, learning_rate_fn=learning_rate_fn)
  elif meta is not None:
    from promptjax.meta import algorithms as meta_lib
    step_fn = meta_lib.make_meta_train_step(model, optimizer, meta, trainable=trainable, dropout_seed=dropout_seed,
                                            learning_rate_fn=learning_rate_fn)
  else:
    step_fn = ts.make_train_step(model, optimizer, trainable=trainable, num_microbatches=num_microbatches,
                                 dropout_seed=dropout_seed, learning_rate_fn=learning_rate_fn)
  batch_sharding = partitioning.batch_sharding(mesh)
  jit_step = jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding),
                     out_shardings=(state_shardings, replicated), donate_argnums=(0,))

  if batches is None and supmer is not None:
    if supmer_data_cfg is None:
      raise TrainingError('A SUPMER run needs supmer_data_cfg (or batches=...).')
    try:
      batches = supmer_lib.default_batches(supmer_data_cfg, start_step=data_position)
    except ValueError as e:
      raise TrainingError(str(e)) from e
  elif batches is None and meta is not None:
    from promptjax.meta import sampler as meta_sampler
    batches = meta_sampler.meta_batches(meta_data_cfg, start_step=data_position)
  elif batches is None:
    batches = dataset_batches(train_dataset_cfg, start_batch=data_position)

  def save(step: int) -> None:
    if manager.latest_step() == step:
      return
    info = {'step': step, 'data_batches': step, 'signature': signature,
            'dataset': train_dataset_cfg.mixture_or_task_name, 'batch_size': train_dataset_cfg.batch_size}
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(info)), force=True)

  writer = metric_writers.create_default_writer(
      os.path.join(model_dir, 'train'), just_logging=jax.process_index() > 0, asynchronous=False)
  losses: Dict[int, float] = {}
  preempted = False
  step = start
  tokens = 0.0
  t0 = time.time()
  bar = tqdm(total=total_steps, initial=start, desc='train', unit='step',
             disable=not progress or jax.process_index() > 0)
  try:
    with _Preemption() as preemption:
      while step < total_steps:
        try:
          host_batch = next(batches)
        except StopIteration:
          raise TrainingError(f'{train_dataset_cfg.mixture_or_task_name!r} ran out of data at step {step}; '
                              'train on a repeating dataset or lower TRAIN_STEPS.') from None
        batch = partitioning.make_global_batch(host_batch, mesh)
        state, metrics = jit_step(state, batch)
        step += 1
        metrics = jax.device_get(metrics)
        loss = float(metrics['loss'])
        if not math.isfinite(loss):
          last = manager.latest_step()
          where = f'checkpoint_{last} in {model_dir} is intact' if last is not None else 'no checkpoint was written'
          raise TrainingError(f'The loss became {loss} at step {step}; {where}. Lower the learning rate, '
                              f'check the data, or restart from the last checkpoint.')
        losses[step] = loss
        tokens += float(metrics['num_tokens'])
        if step % log_period == 0 or step == total_steps:
          elapsed = max(time.time() - t0, 1e-9)
          scalars = {k: float(v) for k, v in metrics.items()}
          scalars['tokens_per_sec'] = tokens / elapsed
          writer.write_scalars(step, scalars)
          tokens, t0 = 0.0, time.time()
        bar.update(1)
        bar.set_postfix(loss=f'{loss:.4f}')
        if eval_dataset_cfg is not None and eval_period and step % eval_period == 0:
          writer.write_scalars(step, {'eval/loss': evaluate_loss(model, state.params, eval_dataset_cfg,
                                                                 eval_batches, mesh)})
        if preemption.requested:
          save(step)
          preempted = True
          log.warning('SIGTERM: saved checkpoint_%d and stopped.', step)
          break
        if step % checkpoint_period == 0:
          save(step)
    if not preempted and step > start:
      save(step)
  finally:
    bar.close()
    manager.wait_until_finished()
    writer.flush()
  return TrainResult(state=state, step=step, losses=losses, preempted=preempted, model_dir=model_dir)


def _check_meta(meta, data_cfg, model) -> None:
  if model.prompt.kind == 'none':
    raise TrainingError(f'{meta.algorithm} adapts a prompt in its inner loop, but the model has none: use a '
                        'method gin file with a prompt (PromptConfig.kind = "shallow" or "deep").')
  if data_cfg.inner_steps != meta.inner_steps:
    raise TrainingError(f'The meta-batch sampler draws {data_cfg.inner_steps} support batches per clone but the '
                        f'algorithm runs inner_steps={meta.inner_steps}; bind both to the INNER_STEPS macro.')
  chunk = meta.chunk_size or data_cfg.meta_batch_size
  if data_cfg.meta_batch_size % chunk:
    raise TrainingError(f'META_BATCH_SIZE={data_cfg.meta_batch_size} is not a multiple of the clone chunk size '
                        f'{chunk} (MetaConfig.chunk_size).')


def _meta_summary(meta, data_cfg) -> str:
  chunk = 1 if meta.carry_inner_state else (meta.chunk_size or data_cfg.meta_batch_size)
  return '\n'.join([
      f'meta-learning: {meta.algorithm}, inner steps {meta.inner_steps}, inner lr {meta.inner_learning_rate}, '
      f'inner clip {meta.inner_global_norm_clip}',
      f'  meta-batch {data_cfg.meta_batch_size} clones x (support {data_cfg.support_batch_size} x '
      f'{data_cfg.inner_steps} steps [{data_cfg.support_mode}] + query {data_cfg.query_batch_size}), '
      f'task per {data_cfg.task_per}, sampling {data_cfg.task_sampling}',
      f'  clones per chunk {chunk} ({data_cfg.meta_batch_size // chunk} chunks); the activation estimate '
      f'above is for one chunk\'s {chunk} x {max(data_cfg.support_batch_size, data_cfg.query_batch_size)} rows'])


def _unbox(tree):
  import flax.linen as nn
  return nn.meta.unbox(tree)


def _check_supmer(cfg, model, trainable) -> None:
  from promptjax.meta import supmer as supmer_lib
  from promptjax.training import optimizers as opt_lib
  try:
    supmer_lib.check_model(model)
  except ValueError as e:
    raise TrainingError(str(e)) from e
  if opt_lib.canonical_group(trainable) != 'prompt':
    raise TrainingError(f'SUPMER tunes only the prompt (and φ), but TRAINABLE={trainable!r}: use '
                        "TRAINABLE = 'prompt' (supmer.gin sets it).")


def _supmer_dataset_cfg(data_cfg) -> DatasetConfig:
  """A DatasetConfig describing the SUPMER data (checkpoint info, dry-run activation estimate)."""
  m = getattr(data_cfg, 'meta_batch_size', 1)
  rows = max(getattr(data_cfg, 'support_batch_size', 1), getattr(data_cfg, 'query_batch_size', 1))
  return DatasetConfig(getattr(data_cfg, 'mixture_or_task_name', 'supmer_batches'),
                       dict(getattr(data_cfg, 'task_feature_lengths', {}) or {}), batch_size=m * rows,
                       seed=getattr(data_cfg, 'seed', 0), module=getattr(data_cfg, 'module', None))


def _supmer_summary(cfg) -> str:
  return (f'SUPMER: transform {cfg.transform}, inner lr {cfg.inner_learning_rate}, reg λ {cfg.reg_coefficient}, '
          f'mixup α {cfg.mixup_alpha}, curve m {cfg.curve}, similarity {cfg.similarity}/{cfg.similarity_query}, '
          f'{"second" if cfg.second_order else "first"} order; task augmentation {cfg.task_augmentation}, '
          f'curriculum {cfg.curriculum}, ψ {cfg.gradient_regularization}')


def _initial_state(model, optimizer, mesh, param_shardings, state_shardings, initial_checkpoint_path, seed,
                   supmer=None):
  from promptjax.training import partitioning
  rng = jax.random.PRNGKey(seed)
  transformer_params = None
  if initial_checkpoint_path:
    from promptjax.checkpoints import load_checkpoint
    try:
      transformer_params, _ = load_checkpoint(initial_checkpoint_path,
                                              relative_attention_max_distance=model.config.relative_attention_max_distance)
    except (FileNotFoundError, ValueError) as e:
      raise TrainingError(f'INITIAL_CHECKPOINT_PATH={initial_checkpoint_path}: {e}') from e
    try:
      model.check_params(transformer_params, include_prompt=False)
    except ValueError as e:
      raise TrainingError(f'INITIAL_CHECKPOINT_PATH={initial_checkpoint_path} does not fit the model: {e} '
                          f'Pick the model gin file of the checkpoint size.') from e
  if supmer is not None:
    from promptjax.meta import supmer as supmer_lib
    model_shardings = {k: v for k, v in param_shardings.items() if k != supmer_lib.SUPMER_KEY}
    params = partitioning.sharded_init(model, rng, mesh, model_shardings, transformer_params=transformer_params)
    extra = supmer_lib.init_supmer_params(supmer, model, jax.random.fold_in(rng, 1))
    params = {**params, supmer_lib.SUPMER_KEY: jax.device_put(extra, param_shardings[supmer_lib.SUPMER_KEY])}
  else:
    params = partitioning.sharded_init(model, rng, mesh, param_shardings, transformer_params=transformer_params)
  init = jax.jit(lambda p: ts.TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p)),
                 out_shardings=state_shardings)
  return init(params)


def evaluate_loss(model: PromptableT5, params, cfg: DatasetConfig, num_batches: int, mesh) -> float:
  """Mean token loss over the first `num_batches` batches of `cfg` (unshuffled)."""
  from promptjax.training import partitioning
  cfg = dataclasses.replace(cfg, shuffle=False)
  summed = dataclasses.replace(model, loss_normalization='none')
  fn = jax.jit(lambda p, b: summed.loss_fn(p, b))
  total = count = 0.0
  for i, host_batch in enumerate(dataset_batches(cfg, num_epochs=1)):
    if i >= num_batches:
      break
    loss, aux = fn(params, partitioning.make_global_batch(host_batch, mesh))
    total += float(loss)
    count += float(aux['num_tokens'])
  return total / max(count, 1.0)


@dataclasses.dataclass
class DryRunReport:
  """What ``--dry_run`` prints: parameter counts per group, shardings and per-device memory (bytes)."""
  text: str
  param_counts: Dict[str, int]
  per_device_bytes: Dict[str, float]

  def __str__(self) -> str:
    return self.text

  @classmethod
  def build(cls, model, trainable, groups, mesh, abstract_params, param_shardings, abstract_opt,
            opt_shardings, dataset_cfg, num_microbatches) -> 'DryRunReport':
    from flax import traverse_util
    flat = traverse_util.flatten_dict(abstract_params, sep='/')
    flat_sh = traverse_util.flatten_dict(param_shardings, sep='/')
    counts: Dict[str, int] = {}
    params_bytes = grads_bytes = 0.0
    for name, x in flat.items():
      group = name.split('/')[0]
      counts[group] = counts.get(group, 0) + int(np.prod(x.shape))
      shard = flat_sh[name].shard_shape(x.shape)
      nbytes = float(np.prod(shard)) * np.dtype(x.dtype).itemsize
      params_bytes += nbytes
      if group in groups:
        grads_bytes += float(np.prod(shard)) * 4
    opt_bytes = 0.0
    for x, sh in zip(jax.tree.leaves(abstract_opt), jax.tree.leaves(opt_shardings)):
      opt_bytes += float(np.prod(sh.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
    act_bytes = _activation_bytes(model, dataset_cfg, mesh, num_microbatches)
    per_device = {'params': params_bytes, 'optimizer_state': opt_bytes, 'gradients': grads_bytes,
                  'activations (estimate)': act_bytes}
    per_device['total'] = sum(per_device.values())
    gib = lambda b: f'{b / 2**30:,.2f} GiB'
    lines = [f'model: {model.config}', f'prompt: {model.prompt}', f'trainable: {trainable} -> {", ".join(groups)}',
             f'mesh: {dict(mesh.shape)}', '', 'parameters:']
    for group, n in sorted(counts.items()):
      lines.append(f'  {group:<16s} {n:>16,d}  {"trainable" if group in groups else "frozen"}')
    lines.append(f'  {"total":<16s} {sum(counts.values()):>16,d}  '
                 f'(trainable {sum(n for g, n in counts.items() if g in groups):,d})')
    lines += ['', 'shardings (largest parameters):']
    for name in sorted(flat, key=lambda k: -int(np.prod(flat[k].shape)))[:6]:
      lines.append(f'  {name:<48s} {str(tuple(flat[name].shape)):<18s} {flat_sh[name].spec}')
    lines += ['', 'per-device memory:'] + [f'  {k:<24s} {gib(v)}' for k, v in per_device.items()]
    return cls('\n'.join(lines), counts, per_device)


def _activation_bytes(model, dataset_cfg, mesh, num_microbatches) -> float:
  """Rough saved-activation bytes per device for one micro-batch (Korthikanti et al. 2022, §4.1:
  about 34·h + 5·a·s bytes per token per layer in 16-bit without recomputation; with per-layer remat,
  2·h per token per layer plus one layer's full set)."""
  if dataset_cfg is None:
    return 0.0
  c = model.config
  data = dict(mesh.shape).get('data', 1)
  rows = max(dataset_cfg.batch_size // max(num_microbatches, 1) // data, 1)
  lengths = dict(dataset_cfg.task_feature_lengths)
  s_enc = lengths.get('inputs', 0) + (model.prompt.length if model.prompt.kind != 'none' else 0)
  s_dec = lengths.get('targets', 0)
  scale = 2 if c.dtype == 'bfloat16' else 4
  h, a = c.emb_dim, c.num_heads
  full = lambda s: (34 * h + 5 * a * s) * scale / 2
  per_layer = [(s_enc, c.num_encoder_layers), (s_dec, c.num_decoder_layers)]
  if c.remat:
    total = sum(rows * s * n * h * scale for s, n in per_layer) + max(rows * s * full(s) for s, _ in per_layer)
  else:
    total = sum(rows * s * n * full(s) for s, n in per_layer)
  return float(total + rows * s_dec * c.vocab_size * 4 * 2)  # logits and their gradient in fp32
