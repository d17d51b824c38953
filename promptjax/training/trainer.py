"""The training loop: a method's batches → its jitted, sharded step → orbax checkpoints, with exact resume.

The loop names no algorithm: a `promptjax.training.method.Method` (multi-task learning, Wu et al. 2022
§3; meta-learning, `promptjax.meta.MetaLearning`; SUPMER, `promptjax.supmer.Supmer`) gives the checks,
extra parameters, optimizer, step and data; `setup` builds the mesh, shapes, shardings and jitted step,
and `train` owns the state, resume, preemption, logging and the NaN guard.

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

from promptjax.data.feeds import DatasetConfig, dataset_batches
from promptjax.errors import TrainingError
from promptjax.models.model import PromptableT5
from promptjax.training import partitioning
from promptjax.training import train_step as ts
from promptjax.training.method import Method

log = logging.getLogger(__name__)


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


@dataclasses.dataclass
class Setup:
  """Everything a run needs before it touches data or files: the mesh, the abstract state and its
  shardings, the method's optimizer and its jitted step. `train` builds one; benchmarks use it directly.

  ``groups`` are the trainable top-level parameter groups (the model's under ``trainable`` plus the
  method's extra subtrees, ``extra_keys``); ``step_fn`` is ``jit(method.make_step(...))`` with the state's in/out
  shardings and the state donated (None for a dry run).
  """
  model: PromptableT5
  method: Method
  trainable: str
  mesh: Any
  groups: Tuple[str, ...]
  extra_keys: Tuple[str, ...]
  abstract_params: Any
  param_shardings: Any
  optimizer: optax.GradientTransformation
  abstract_state: ts.TrainState
  state_shardings: ts.TrainState
  step_fn: Optional[Callable]

  def init_state(self, seed: int = 0, initial_checkpoint_path: Optional[str] = None) -> ts.TrainState:
    """A fresh state: the model's parameters created in their shardings (the transformer from
    `initial_checkpoint_path` when given, a new prompt on it), the method's extra parameters from
    ``fold_in(PRNGKey(seed), 1)``, and the optimizer state."""
    from promptjax.checkpoints import restore
    rng = jax.random.PRNGKey(seed)
    transformer_params = None
    if initial_checkpoint_path:
      try:
        transformer_params = restore.load_transformer(self.model, initial_checkpoint_path)
      except restore.RestoreError as e:
        if e.mismatch:
          raise TrainingError(f'INITIAL_CHECKPOINT_PATH={initial_checkpoint_path} {e} Pick the model gin file '
                              'of the checkpoint size.') from e
        raise TrainingError(f'INITIAL_CHECKPOINT_PATH={initial_checkpoint_path}: {e}') from e
    model_shardings = {k: v for k, v in self.param_shardings.items() if k not in self.extra_keys}
    params = partitioning.sharded_init(self.model, rng, self.mesh, model_shardings,
                                       transformer_params=transformer_params)
    extra = self.method.extra_params(self.model, jax.random.fold_in(rng, 1))
    params.update({k: jax.device_put(v, self.param_shardings[k]) for k, v in extra.items()})
    init = jax.jit(lambda p: ts.TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                           opt_state=self.optimizer.init(p)),
                   out_shardings=self.state_shardings)
    return init(params)

  def dry_run_report(self) -> 'DryRunReport':
    opt_shardings = self.state_shardings.opt_state
    report = DryRunReport.build(self.model, self.trainable, self.groups, self.mesh, self.abstract_params,
                                self.param_shardings, self.abstract_state.opt_state, opt_shardings,
                                self.method.data(), self.method.num_microbatches)
    summary = self.method.summary()
    if summary:
      report.text += '\n\n' + summary
    return report


def setup(model: PromptableT5, method: Method, *, total_steps: int,
          optimizer: Optional[optax.GradientTransformation] = None,
          learning_rate_fn: Optional[Callable[[jax.Array], jax.Array]] = None, trainable: str = 'all',
          mesh_shape: Optional[Sequence[int]] = None, logical_axis_rules: Optional[Sequence] = None,
          dropout_seed: Optional[int] = 0, abstract: bool = False) -> Setup:
  """Checks `method` against the model and mesh and builds the shapes, shardings, optimizer and jitted step
  (nothing is allocated). `abstract` (a dry run) builds no step function and allows a mesh larger than
  the devices."""
  if not isinstance(method, Method):
    raise TrainingError(f'train.method must implement promptjax.training.method.Method, got '
                        f'{type(method).__name__}.')
  if abstract and mesh_shape and int(np.prod(mesh_shape)) > jax.device_count():
    mesh = jax.sharding.AbstractMesh(tuple(mesh_shape), ('data', 'model'))
  else:
    mesh = partitioning.create_mesh(mesh_shape)
  method.check(model, trainable, mesh)
  rules = logical_axis_rules or partitioning.standard_logical_axis_rules()
  abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                 _unbox(model.abstract_params()))
  groups = ts.trainable_keys(abstract_params, trainable)
  param_shardings = partitioning.param_shardings(model, mesh, rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  extra = jax.eval_shape(lambda r: method.extra_params(model, r), jax.random.PRNGKey(0))
  for key, tree in extra.items():
    abstract_params[key] = tree
    param_shardings[key] = jax.tree.map(lambda _: replicated, tree)
    groups = groups + (key,)
  optimizer = method.optimizer(optimizer, abstract_params, trainable, total_steps)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  opt_shardings = partitioning.optimizer_state_shardings(optimizer, abstract_params, param_shardings, mesh)
  state_shardings = ts.TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings)
  abstract_state = ts.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                                 opt_state=abstract_opt)
  step_fn = None
  if not abstract:
    raw = method.make_step(model, optimizer, trainable=trainable, dropout_seed=dropout_seed,
                           learning_rate_fn=learning_rate_fn)
    step_fn = jax.jit(raw, in_shardings=(state_shardings, partitioning.batch_sharding(mesh)),
                      out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  return Setup(model, method, trainable, mesh, groups, tuple(extra), abstract_params, param_shardings, optimizer,
               abstract_state, state_shardings, step_fn)


def train(*, model_dir: str, model: PromptableT5, method: Method, total_steps: int,
          optimizer: Optional[optax.GradientTransformation] = None,
          learning_rate_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
          trainable: str = 'all', initial_checkpoint_path: Optional[str] = None,
          mesh_shape: Optional[Sequence[int]] = None, logical_axis_rules: Optional[Sequence] = None,
          checkpoint_period: int = 1000, keep_checkpoints: Optional[int] = None,
          async_checkpointing: bool = True, log_period: int = 10,
          eval_dataset_cfg: Optional[DatasetConfig] = None, eval_period: int = 0, eval_batches: int = 8,
          seed: int = 0, dropout_seed: Optional[int] = 0, progress: bool = True,
          batches: Optional[Iterator[Mapping[str, np.ndarray]]] = None, dry_run: bool = False):
  """Trains `model` with `method` until `total_steps`, resuming from MODEL_DIR if it holds a checkpoint.
  Returns the final state, the losses seen by this invocation, and whether it was preempted.

  `method` (a `promptjax.training.method.Method`: `MultiTask`, `promptjax.meta.MetaLearning`,
  `promptjax.supmer.Supmer`, or your own) decides the step, the data and the optimizer built from
  `optimizer` (None: the method's default); `trainable` names the model's trainable groups ('all',
  'transformer', 'prompt'). `batches` replaces the method's data (tests); with it, resume cannot skip
  consumed data. `dry_run` returns a report of shapes, shardings and per-device memory (`DryRunReport`)
  without allocating, reading data or writing files.
  """
  import orbax.checkpoint as ocp
  from clu import metric_writers
  from tqdm.auto import tqdm

  run = setup(model, method, total_steps=total_steps, optimizer=optimizer, learning_rate_fn=learning_rate_fn,
              trainable=trainable, mesh_shape=mesh_shape, logical_axis_rules=logical_axis_rules,
              dropout_seed=dropout_seed, abstract=dry_run)
  if dry_run:
    return run.dry_run_report()
  mesh, data_cfg = run.mesh, method.data()
  model_dir = os.path.abspath(model_dir)
  os.makedirs(model_dir, exist_ok=True)
  if jax.process_index() == 0:
    write_model_info(os.path.join(model_dir, 'model-info.txt'), run.abstract_params, run.groups)

  options = ocp.CheckpointManagerOptions(
      save_interval_steps=checkpoint_period, max_to_keep=keep_checkpoints, step_prefix='checkpoint',
      enable_async_checkpointing=async_checkpointing, create=True)
  manager = ocp.CheckpointManager(model_dir, options=options)
  signature = {**model_signature(model, trainable), **method.signature()}

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
                          run.abstract_state, run.state_shardings)
    restored = manager.restore(latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    state = restored['state']
    start = int(saved['step'])
    data_position = int(saved.get('data_batches', start))
    log.info('Resumed from %s/checkpoint_%d', model_dir, latest)
  else:
    state = run.init_state(seed, initial_checkpoint_path)
    start, data_position = 0, 0

  if batches is None:
    batches = method.batches(data_position)

  def save(step: int) -> None:
    if manager.latest_step() == step:
      return
    info = {'step': step, 'data_batches': step, 'signature': signature,
            'dataset': data_cfg.mixture_or_task_name, 'batch_size': data_cfg.batch_size}
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
          raise TrainingError(f'{data_cfg.mixture_or_task_name!r} ran out of data at step {step}; '
                              'train on a repeating dataset or lower TRAIN_STEPS.') from None
        batch = partitioning.make_global_batch(host_batch, mesh)
        state, metrics = run.step_fn(state, batch)
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


def _unbox(tree):
  import flax.linen as nn
  return nn.meta.unbox(tree)


def evaluate_loss(model: PromptableT5, params, cfg: DatasetConfig, num_batches: int, mesh) -> float:
  """Mean token loss over the first `num_batches` batches of `cfg` (unshuffled)."""
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
