"""The training loop: a method's batches → its jitted, sharded step → orbax checkpoints, with exact resume.

The loop names no algorithm: a `promptjax.training.method.Method` (multi-task learning, Wu et al. 2022
§3; meta-learning, `promptjax.meta.MetaLearning`; SUPMER, `promptjax.supmer.Supmer`) gives the checks,
extra parameters, optimizer, step and data; `setup` builds the mesh, shapes, shardings and jitted step,
and `train` owns the state, resume, preemption, logging and the NaN guard.

Layout of MODEL_DIR (T5X's): ``checkpoint_<step>/`` (orbax: ``state`` = step, params, optimizer state;
``meta`` = JSON with the data position, the model signature and the validation losses so far),
``train/`` (TensorBoard summaries), ``model-info.txt`` (parameter shapes and counts per group) and, from
the CLI, ``config.gin``. With `keep_best` also ``best`` (a link to the ``checkpoint_<step>`` of the lowest
validation loss: ``CHECKPOINT_PATH=<MODEL_DIR>/best`` for the eval and downstream commands) and
``best.json`` (its step, validation loss and every validation loss of the run).

Validation (``eval_period`` > 0): every ``eval_period`` steps the validation loss — the method's own
(`Method` may define ``validation``, e.g. a meta-learner's query loss after adaptation on validation
tasks), else the mean token loss on ``eval_dataset_cfg`` — is logged as ``eval/loss``. `keep_best` keeps
the checkpoint of the lowest one (never pruned; the checkpoint is written at that step), and
`early_stopping_patience` stops the run after that many validations without a new lowest one.

Exact resume: the data pipeline is deterministic given its seed, so a restarted run rebuilds it and skips
the batches already consumed (recorded in ``meta``); dropout keys are ``fold_in(seed, step)``. A run
killed at any point and restarted ends bit-identical to an uninterrupted one. SIGTERM (preemption) and Ctrl-C save
a checkpoint at the current step and return cleanly; no checkpoint of diverged parameters is kept
(`_CheckpointGuard`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
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
from promptjax.errors import TrainingError, first_line
from promptjax.models.config import T5Config
from promptjax.models.model import PromptableT5
from promptjax.training import optimizers as opt_lib
from promptjax.training import partitioning
from promptjax.training import train_step as ts
from promptjax.training.method import Method

log = logging.getLogger(__name__)


def model_signature(model: PromptableT5, trainable: str) -> Dict[str, Any]:
  return {'config': dataclasses.asdict(model.config), 'prompt': dataclasses.asdict(model.prompt),
          'trainable': trainable}


def _with_config_defaults(signature: Any) -> Any:
  """A saved signature whose model config has the defaults of fields added since it was written (a checkpoint
  of an earlier promptjax, before `mlp_activations` and `logits_via_embedding`, is a T5.1.1 model)."""
  if not isinstance(signature, Mapping) or not isinstance(signature.get('config'), Mapping):
    return signature
  try:
    config = T5Config(**signature['config'])
  except (TypeError, ValueError):
    return signature
  return {**signature, 'config': json.loads(json.dumps(dataclasses.asdict(config)))}


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
  """Turns SIGTERM (preemption) and Ctrl-C (SIGINT) into a flag the loop checks after each step: it saves
  a checkpoint and stops. A second Ctrl-C aborts at once without saving."""

  def __init__(self):
    self.requested = False
    self.signal_name = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handler)
      except ValueError:  # not the main thread
        pass
    return self

  def _handler(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True
    self.signal_name = signal.Signals(signum).name
    if signum == signal.SIGINT:
      log.warning('Ctrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again aborts without '
                  'saving).')

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


@dataclasses.dataclass
class TrainResult:
  state: Any
  step: int
  losses: Dict[int, float]
  preempted: bool
  model_dir: str
  validation_losses: Dict[int, float] = dataclasses.field(default_factory=dict)  # the whole run's, by step
  best_step: Optional[int] = None       # the step of the lowest validation loss
  stopped_early: bool = False           # early_stopping_patience ran out


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
        raise TrainingError(str(e) if 'INITIAL_CHECKPOINT_PATH' in str(e) else
                            f'INITIAL_CHECKPOINT_PATH={initial_checkpoint_path}: {e}') from e
    model_shardings = {k: v for k, v in self.param_shardings.items() if k not in self.extra_keys}
    params = partitioning.sharded_init(self.model, rng, self.mesh, model_shardings,
                                       transformer_params=transformer_params)
    extra = self.method.extra_params(self.model, jax.random.fold_in(rng, 1))
    params.update({k: jax.device_put(v, self.param_shardings[k]) for k, v in extra.items()})
    init = jax.jit(lambda p: ts.TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                           opt_state=self.optimizer.init(p)),
                   out_shardings=self.state_shardings)
    return init(params)

  def compiled_memory(self) -> Dict[str, float]:
    """Lowers and compiles the sharded step for the method's abstract batch (``method.abstract_batch``; no
    data read, nothing allocated) and returns XLA's per-device memory analysis in bytes: ``arguments``
    (state and batch), ``outputs``, ``aliased`` (the donated state the outputs reuse), ``temporaries`` and
    ``peak`` = arguments + outputs - aliased + temporaries, plus the compile time in seconds."""
    if self.step_fn is None:
      raise TrainingError('This setup has no step function (an abstract dry run); build it with a mesh of '
                          'real devices to compile the step.')
    if not hasattr(self.method, 'abstract_batch'):
      raise TrainingError(f'{type(self.method).__name__} has no abstract_batch(model), so its step cannot be '
                          'compiled without data; add the method hook (see promptjax.training.method.Method).')
    with_sharding = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    state = jax.tree.map(with_sharding, self.abstract_state, self.state_shardings)
    batch_sharding = partitioning.batch_sharding(self.mesh)
    batch = {k: with_sharding(v, batch_sharding) for k, v in self.method.abstract_batch(self.model).items()}
    t0 = time.time()
    stats = self.step_fn.lower(state, batch).compile().memory_analysis()
    seconds = time.time() - t0
    out = {'arguments': float(stats.argument_size_in_bytes), 'outputs': float(stats.output_size_in_bytes),
           'aliased': float(stats.alias_size_in_bytes), 'temporaries': float(stats.temp_size_in_bytes)}
    out['peak'] = out['arguments'] + out['outputs'] - out['aliased'] + out['temporaries']
    out['compile_seconds'] = seconds
    return out

  def _estimated_data(self) -> DatasetConfig:
    """The method's data, with the rows one step holds activations for (``method.activation_rows()``,
    e.g. a second-order meta-step's support rows twice) where the method says so."""
    data = self.method.data()
    rows = getattr(self.method, 'activation_rows', None)
    return dataclasses.replace(data, batch_size=int(rows())) if rows is not None else data

  def dry_run_report(self, compile_step: bool = False) -> 'DryRunReport':
    opt_shardings = self.state_shardings.opt_state
    report = DryRunReport.build(self.model, self.trainable, self.groups, self.mesh, self.abstract_params,
                                self.param_shardings, self.abstract_state.opt_state, opt_shardings,
                                self._estimated_data(), self.method.num_microbatches)
    if compile_step:
      without_remat = None
      if self.model.config.remat:   # XLA:CPU does not honour remat: compare its program with this too
        plain = dataclasses.replace(self.model, config=dataclasses.replace(self.model.config, remat=False))
        without_remat = report.per_device_bytes['total'] + (
            _activation_bytes(plain, self._estimated_data(), self.mesh, self.method.num_microbatches)
            - report.per_device_bytes['activations (estimate)'])
      report.add_compiled(self.compiled_memory(), self.mesh, without_remat)
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
  (nothing is allocated). `abstract` (a dry run that does not compile) builds no step function and allows a
  mesh larger than the devices."""
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
          keep_best: bool = False, early_stopping_patience: Optional[int] = None,
          seed: int = 0, dropout_seed: Optional[int] = 0, progress: bool = True,
          batches: Optional[Iterator[Mapping[str, np.ndarray]]] = None, dry_run: bool = False,
          compile_step: bool = False, restore_fallback: bool = False,
          run_record: Optional[Mapping[str, str]] = None):
  """Trains `model` with `method` until `total_steps`, resuming from MODEL_DIR if it holds a checkpoint.
  Returns the final state, the losses seen by this invocation, and whether it was preempted.

  `method` (a `promptjax.training.method.Method`: `MultiTask`, `promptjax.meta.MetaLearning`,
  `promptjax.supmer.Supmer`, or your own) decides the step, the data and the optimizer built from
  `optimizer` (None: the method's default); `trainable` names the model's trainable groups ('all',
  'transformer', 'prompt'). `batches` replaces the method's data (tests); with it, resume cannot skip
  consumed data. `dry_run` returns a report of shapes, shardings and per-device memory (`DryRunReport`)
  without allocating, reading data or writing files; with `compile_step` it also lowers and compiles the
  sharded step (the mesh needs that many devices: on CPU, fake ones) and adds XLA's per-device memory
  analysis next to the estimate (`Setup.compiled_memory`).

  Nothing is written before the configuration, the resume and the initial checkpoint are validated;
  then `run_record` ({file name: text}, e.g. the CLI's ``config.gin``) and ``model-info.txt`` are
  written into MODEL_DIR. `total_steps` counts from 0 (T5X counts the steps of INITIAL_CHECKPOINT_PATH
  too: T5X's 1,107,715 on top of ``checkpoint_1100000`` is 7715 here). A checkpoint that cannot be
  restored stops the run, naming the previous one; `restore_fallback` resumes from the newest readable
  one instead, moving each unreadable one aside to ``checkpoint_<step>.unreadable``. `keep_checkpoints`
  keeps that many of the newest checkpoints (None: all). The NaN guard: see `_CheckpointGuard`.

  Validation every `eval_period` steps (0: none): the method's ``validation(model, mesh, eval_batches, ...)``
  when it defines one and it returns a function, else the mean token loss of the first `eval_batches`
  batches of `eval_dataset_cfg`. `keep_best` keeps the checkpoint of the lowest validation loss as
  ``MODEL_DIR/best`` (+ ``best.json``); `early_stopping_patience` stops after that many validations
  without a new lowest loss (a resumed run that has run out of patience trains no further).
  """
  import orbax.checkpoint as ocp
  from clu import metric_writers
  from tqdm.auto import tqdm

  if total_steps < 0:
    raise TrainingError(f'TRAIN_STEPS must be 0 or more, got {total_steps}.')
  if checkpoint_period < 1:
    raise TrainingError(f'CHECKPOINT_PERIOD must be 1 or more, got {checkpoint_period}.')
  if keep_checkpoints is not None and keep_checkpoints < 1:
    raise TrainingError(f'KEEP_CHECKPOINTS must be None (keep all) or 1 or more, got {keep_checkpoints}.')
  if early_stopping_patience is not None and early_stopping_patience < 1:
    raise TrainingError(f'EARLY_STOPPING_PATIENCE must be None (no early stopping) or 1 or more, got '
                        f'{early_stopping_patience}.')
  if (keep_best or early_stopping_patience) and eval_period <= 0:
    raise TrainingError('KEEP_BEST / EARLY_STOPPING_PATIENCE select by the validation loss: set EVAL_PERIOD > 0.')
  run = setup(model, method, total_steps=total_steps, optimizer=optimizer,
              learning_rate_fn=learning_rate_fn or opt_lib.learning_rate_schedule(optimizer), trainable=trainable,
              mesh_shape=mesh_shape, logical_axis_rules=logical_axis_rules, dropout_seed=dropout_seed,
              abstract=dry_run and not compile_step)
  if dry_run:
    return run.dry_run_report(compile_step)
  if compile_step:
    raise TrainingError('compile_step only goes with dry_run (promptjax train --dry_run --compile).')
  mesh, data_cfg = run.mesh, method.data()
  model_dir = os.path.abspath(model_dir)
  if os.path.exists(model_dir) and not os.path.isdir(model_dir):
    raise TrainingError(f'MODEL_DIR={model_dir} is a file, not a directory; give a directory path.')
  signature = json.loads(json.dumps({**model_signature(model, trainable), **method.signature()}))
  validate = (_validation_fn(method, model, mesh, eval_dataset_cfg, eval_batches, trainable) if eval_period > 0
              else None)
  if (keep_best or early_stopping_patience) and validate is None:
    raise TrainingError('KEEP_BEST / EARLY_STOPPING_PATIENCE select by the validation loss, but there is no '
                        'validation set: runs/train.gin\'s validation DatasetConfig, or a method that validates '
                        'itself.')

  def make_manager(create: bool):
    # Retention is the guard's (a checkpoint is only pruned for a newer one that is known good).
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1, max_to_keep=None, step_prefix='checkpoint',
        enable_async_checkpointing=async_checkpointing, create=create)
    return ocp.CheckpointManager(model_dir, options=options)

  # Restore, or initialize: everything is validated before anything is written.
  manager = make_manager(create=False) if os.path.isdir(model_dir) else None
  restored = _restore_latest(manager, model_dir, run, signature, restore_fallback) if manager else None
  if restored is not None:
    state, start, data_position, validation_record = restored
    log.info('Resumed from step %d (%s/checkpoint_%d).', start, model_dir, start)
  else:
    _check_t5x_step_count(total_steps, initial_checkpoint_path)
    state = run.init_state(seed, initial_checkpoint_path)
    start, data_position, validation_record = 0, 0, None
  if batches is None:
    batches = method.batches(data_position)
  first = None
  if start < total_steps:  # the data must be readable before anything is written
    try:
      first = next(batches)
    except StopIteration:
      raise TrainingError(f'{data_cfg.mixture_or_task_name!r} has no data for training; check its split '
                          'and data directory.') from None
    batches = itertools.chain([first], batches)
  if jax.process_index() == 0:
    os.makedirs(model_dir, exist_ok=True)
    for name, text in (run_record or {}).items():
      with open(os.path.join(model_dir, name), 'w') as f:
        f.write(text)
    write_model_info(os.path.join(model_dir, 'model-info.txt'), run.abstract_params, run.groups)
  if manager is None:
    manager = make_manager(create=True)
  guard = _CheckpointGuard(manager, model_dir, run, signature, data_cfg, keep_checkpoints,
                           resumed=start if restored is not None else None, keep_best=keep_best,
                           validation=validation_record)
  stopped_early = guard.out_of_patience(early_stopping_patience)
  if stopped_early and start < total_steps:
    log.info('Nothing to train: the run stopped early at step %d (%d validations without a lower loss than '
             'step %d\'s).', start, early_stopping_patience, guard.best_step)
    total_steps = start
  if start >= total_steps:
    log.info('Nothing to train: MODEL_DIR is at step %d and TRAIN_STEPS is %d.', start, total_steps)

  writer = metric_writers.create_default_writer(
      os.path.join(model_dir, 'train'), just_logging=jax.process_index() > 0, asynchronous=False)
  if run_record and 'config.gin' in run_record:
    writer.write_texts(start, {'config': _markdown_code(run_record['config.gin'])})
  losses: Dict[int, float] = {}
  preempted = False
  step = start
  tokens = 0.0
  t0 = time.time()
  host_batch = None
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
        guard.observe_loss(step, loss)   # raises on a non-finite loss, dropping a checkpoint it condemns
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
        if validate is not None and step % eval_period == 0:
          eval_loss = validate(state.params)
          writer.write_scalars(step, {'eval/loss': eval_loss})
          guard.observe_validation(state, step, eval_loss)   # keep_best: a new lowest is saved now
          stopped_early = guard.out_of_patience(early_stopping_patience)
        if preemption.requested:
          guard.save_last(state, step, batches, host_batch)
          preempted = True
          log.warning('%s: saved checkpoint_%d and stopped.', preemption.signal_name, step)
          break
        if step % checkpoint_period == 0:
          guard.save(state, step)
        if stopped_early:
          log.info('Early stopping at step %d: %d validations without a lower loss than step %d\'s (%.6g).',
                   step, early_stopping_patience, guard.best_step, guard.losses[guard.best_step])
          break
    if not preempted and step > start:
      guard.save_last(state, step, batches, host_batch)
  finally:
    bar.close()
    manager.wait_until_finished()
    writer.flush()
  return TrainResult(state=state, step=step, losses=losses, preempted=preempted, model_dir=model_dir,
                     validation_losses=dict(guard.losses), best_step=guard.best_step, stopped_early=stopped_early)


def _markdown_code(text: str) -> str:
  return '\n'.join('    ' + line for line in text.splitlines())


def _check_t5x_step_count(total_steps: int, initial_checkpoint_path: Optional[str]) -> None:
  """T5X's TRAIN_STEPS includes the pretrained steps of INITIAL_CHECKPOINT_PATH; promptjax's does not.
  A T5X-style count on a T5X ``checkpoint_<N>`` (TRAIN_STEPS > N) would train N extra steps: refuse it."""
  if not initial_checkpoint_path:
    return
  name = os.path.basename(os.path.normpath(initial_checkpoint_path))
  if name.startswith('checkpoint_') and name[len('checkpoint_'):].isdigit():
    pretrained = int(name[len('checkpoint_'):])
    if pretrained and total_steps > pretrained:
      raise TrainingError(
          f'TRAIN_STEPS={total_steps} exceeds the {pretrained} steps of INITIAL_CHECKPOINT_PATH={name}: promptjax '
          f'counts TRAIN_STEPS from 0 (T5X counts the pretrained steps too), so this would train '
          f'{total_steps} more steps. For T5X\'s meaning pass TRAIN_STEPS={total_steps - pretrained}.')


def _restore_latest(manager, model_dir: str, run: Setup, signature, restore_fallback: bool):
  """(state, step, data position, validation record) of the newest checkpoint in `manager`, or None when it
  has none.
  A checkpoint of another model or method is refused; an unreadable one stops the run naming the previous
  one, or with `restore_fallback` is moved aside and the next older one is tried."""
  import orbax.checkpoint as ocp
  steps = sorted(manager.all_steps(), reverse=True)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        run.abstract_state, run.state_shardings)
  for i, latest in enumerate(steps):
    path = os.path.join(model_dir, f'checkpoint_{latest}')
    log.info('Restoring checkpoint %s', path)
    try:
      saved = manager.restore(latest, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
      saved['signature'] = _with_config_defaults(saved.get('signature'))
      if saved.get('signature') != signature:
        raise TrainingError(
            f'{model_dir}/checkpoint_{latest} was written by a different model or method '
            f'({_describe_mismatch(saved.get("signature", {}), signature)}). Use a new '
            f'MODEL_DIR, or the gin files the checkpoint was trained with.')
      state = manager.restore(latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))['state']
      return state, int(saved['step']), int(saved.get('data_batches', saved['step'])), saved.get('validation')
    except TrainingError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (orbax/TensorStore/JSON errors of a damaged file)
      previous = steps[i + 1] if i + 1 < len(steps) else None
      if not restore_fallback:
        fix = (f'The previous checkpoint is checkpoint_{previous}: resume from it with --restore_fallback '
               f'(checkpoint_{latest} is moved to checkpoint_{latest}.unreadable), or restore '
               f'checkpoint_{latest} from a backup.' if previous is not None else
               'It is the only checkpoint: restore it from a backup, or start over in a new MODEL_DIR.')
        raise TrainingError(f'{path} cannot be restored ({type(e).__name__}: {first_line(e)}). {fix}') from e
      if jax.process_index() == 0:
        os.rename(path, path + '.unreadable')
      log.warning('%s cannot be restored (%s); moved it to %s.unreadable and trying %s.', path, first_line(e),
                  path, f'checkpoint_{previous}' if previous is not None else 'nothing older')
      if previous is None:
        raise TrainingError(f'No checkpoint in {model_dir} can be restored (the unreadable ones were moved to '
                            'checkpoint_<step>.unreadable); start over in a new MODEL_DIR.') from e
      manager.reload()
  return None


@jax.jit
def _all_finite(leaves):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class _CheckpointGuard:
  """Writes checkpoints and never keeps one whose parameters diverged.

  A step's loss is computed at the parameters *before* its update, so the loss at step s + 1 is the first
  evidence about the state saved at step s. A periodic checkpoint is therefore provisional until the next
  step's loss is finite; a non-finite one deletes it, and the error names the last good checkpoint. The
  final and the preemption checkpoints have no next step: their parameters are probed with the model's
  loss on (a slice of) the last batch. Every checkpoint's state must also be finite. Old checkpoints are
  pruned to `keep` only once a newer one is known good.

  Validation losses (`observe_validation`) are recorded in every checkpoint's meta, so a resumed run knows
  the lowest one so far. With `keep_best` the state of a new lowest validation loss is saved at once (as
  provisional as any other), and once confirmed it is published as ``best`` (a relative link to its
  ``checkpoint_<step>``) + ``best.json``; the published and the candidate best are never pruned.
  """

  BEST_LINK, BEST_FILE = 'best', 'best.json'

  def __init__(self, manager, model_dir, run: Setup, signature, data_cfg, keep, resumed, keep_best=False,
               validation: Optional[Mapping[str, Any]] = None):
    self.manager, self.model_dir, self.run = manager, model_dir, run
    self.signature, self.data_cfg, self.keep = signature, data_cfg, keep
    self.pending: Optional[int] = None      # saved by this run, not yet confirmed by the next loss
    self.resumed = resumed                  # the step restored from, checked by the first loss
    self._probe = None
    self.keep_best = keep_best
    validation = validation or {}
    self.losses: Dict[int, float] = {int(k): float(v) for k, v in validation.get('losses', {}).items()}
    self.best_step: Optional[int] = validation.get('best_step')
    self.published: Optional[int] = self._read_published() if keep_best else None

  # -- validation and the best checkpoint.

  def observe_validation(self, state, step: int, loss: float) -> None:
    """Records the validation loss of the state after `step`; a new lowest one (finite) becomes the best,
    and with `keep_best` that state is saved now."""
    self.losses[step] = float(loss)
    if math.isfinite(loss) and (self.best_step is None or loss < self.losses[self.best_step]):
      self.best_step = step
      if self.keep_best:
        self.save(state, step)

  def out_of_patience(self, patience: Optional[int]) -> bool:
    """Whether `patience` validations came after the lowest one (early stopping)."""
    if not patience or self.best_step is None:
      return False
    return sum(1 for s in self.losses if s > self.best_step) >= patience

  def _validation_record(self) -> Dict[str, Any]:
    return {'losses': {str(k): v for k, v in sorted(self.losses.items())}, 'best_step': self.best_step}

  def _read_published(self) -> Optional[int]:
    try:
      with open(os.path.join(self.model_dir, self.BEST_FILE)) as f:
        return int(json.load(f)['step'])
    except (OSError, ValueError, KeyError, TypeError):
      return None

  def _publish(self) -> None:
    """Points ``best`` / ``best.json`` at the best checkpoint once it is confirmed (not pending)."""
    step = self.best_step
    if not self.keep_best or step is None or step == self.pending:
      return
    if step != self.published:
      self.manager.wait_until_finished()   # the link must name a finished checkpoint
      if step not in self.manager.all_steps():
        return
    if jax.process_index() == 0:
      name = f'checkpoint_{step}'
      record = {'step': step, 'checkpoint': name, 'validation_loss': self.losses[step],
                'validation_losses': self._validation_record()['losses']}
      path = os.path.join(self.model_dir, self.BEST_FILE)
      with open(path + '.tmp', 'w') as f:
        json.dump(record, f, indent=1)
      os.replace(path + '.tmp', path)
      link = os.path.join(self.model_dir, self.BEST_LINK)
      if not (os.path.islink(link) and os.readlink(link) == name):
        if os.path.lexists(link + '.tmp'):
          os.remove(link + '.tmp')
        os.symlink(name, link + '.tmp')   # relative: the MODEL_DIR can be moved
        os.replace(link + '.tmp', link)
    self.published = step

  def _confirmed(self) -> None:
    self._publish()
    self._prune()

  # -- checkpoints.

  def _good(self) -> Optional[int]:
    steps = [s for s in self.manager.all_steps() if s != self.pending]
    return max(steps) if steps else None

  def _where(self) -> str:
    good = self._good()
    return (f'checkpoint_{good} in {self.model_dir} is the last good checkpoint' if good is not None
            else 'no good checkpoint was written')

  def _drop_pending(self) -> str:
    if self.pending is None:
      return ''
    self.manager.wait_until_finished()
    self.manager.delete(self.pending)
    dropped, self.pending = self.pending, None
    return f' (checkpoint_{dropped}, saved from those parameters, was deleted)'

  def observe_loss(self, step: int, loss: float) -> None:
    if math.isfinite(loss):
      if self.pending is not None and step > self.pending:
        self.pending = None
        self._confirmed()
      self.resumed = None
      return
    dropped = self._drop_pending()
    note = ''
    if self.resumed is not None and step == self.resumed + 1:
      note = (f' This is the first step from checkpoint_{self.resumed}: its parameters give a non-finite loss; '
              f'move it aside to resume from an earlier one.')
    raise TrainingError(f'The loss became {loss} at step {step}: the parameters after step {step - 1} diverged'
                        f'{dropped}; {self._where()}.{note} Lower the learning rate, check the data, or '
                        f'restart from the last good checkpoint.')

  def _finite(self, state) -> bool:
    return bool(_all_finite([x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]))

  def _probe_features(self, host_batch) -> Optional[Dict[str, np.ndarray]]:
    """The model features of a batch: a plain batch as is; a meta-batch's first set (``<set>/<feature>``)
    with its clone dimensions flattened, up to 64 rows. None for a batch without model features."""
    from promptjax.data.feeds import FEATURES
    prefix = ''
    if 'encoder_input_tokens' not in host_batch:
      keys = sorted(k for k in host_batch if k.endswith('/encoder_input_tokens'))
      if not keys:
        return None
      prefix = keys[0][:-len('encoder_input_tokens')]
    feats = {f: np.asarray(host_batch[prefix + f]) for f in FEATURES if prefix + f in host_batch}
    if 'decoder_target_tokens' not in feats:
      return None
    if not prefix:
      return feats
    feats = {f: x.reshape(-1, x.shape[-1]) for f, x in feats.items()}
    unit = partitioning._local_data_shards(self.run.mesh) if jax.process_count() > 1 else self.run.mesh.shape['data']  # pylint: disable=protected-access
    rows = min(len(feats['encoder_input_tokens']), max(unit, 64 // unit * unit)) // unit * unit
    return {f: x[:rows] for f, x in feats.items()} if rows else None

  def _probe_loss(self, state, host_batch) -> float:
    """The model's loss at `state`'s parameters on `host_batch` (the batch a resumed run would start
    with), or 0.0 when it has no model features."""
    feats = self._probe_features(host_batch)
    if feats is None:
      return 0.0
    if self._probe is None:
      model, extra = self.run.model, self.run.extra_keys
      self._probe = jax.jit(lambda p, b: model.loss_fn({k: v for k, v in p.items() if k not in extra}, b)[0])
    return float(self._probe(state.params, partitioning.make_global_batch(feats, self.run.mesh)))

  def save(self, state, step: int, confirmed: bool = False) -> None:
    if step in self.manager.all_steps():
      return
    if not self._finite(state):
      dropped = self._drop_pending()
      raise TrainingError(f'The state after step {step} is not finite{dropped}; it was not saved, and '
                          f'{self._where()}. Lower the learning rate, or restart from the last good checkpoint.')
    import orbax.checkpoint as ocp
    info = {'step': step, 'data_batches': step, 'signature': self.signature,
            'dataset': self.data_cfg.mixture_or_task_name, 'batch_size': self.data_cfg.batch_size,
            'validation': self._validation_record()}
    log.info('Saving checkpoint %s/checkpoint_%d', self.model_dir, step)
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(info)), force=True)
    if confirmed:
      self._confirmed()
    else:
      self.pending = step

  def save_last(self, state, step: int, batches, host_batch) -> None:
    """The final (or preemption) checkpoint: no next step will check it, so its parameters are probed on
    the batch a resumed run would start with (the last one when the data has ended)."""
    probe = next(batches, None) if batches is not None else None
    probe = probe if probe is not None else host_batch
    loss = self._probe_loss(state, probe) if probe is not None else 0.0
    if not math.isfinite(loss):
      dropped = self._drop_pending()
      raise TrainingError(f'The parameters after step {step} give a non-finite loss ({loss}); they were not '
                          f'saved{dropped}, and {self._where()}. Lower the learning rate, or restart from the '
                          f'last good checkpoint.')
    if self.pending == step:
      self.pending = None
      self._confirmed()
    else:
      self.save(state, step, confirmed=True)

  def _prune(self) -> None:
    """Keeps the `keep` newest confirmed checkpoints (and the pending one), and the best ones."""
    if self.keep is None:
      return
    kept = {self.best_step, self.published} if self.keep_best else set()
    steps = sorted(s for s in self.manager.all_steps() if s != self.pending)
    for old in steps[:-self.keep]:
      if old not in kept:
        self.manager.delete(old)


def _unbox(tree):
  import flax.linen as nn
  return nn.meta.unbox(tree)


def _validation_fn(method: Method, model: PromptableT5, mesh, eval_dataset_cfg: Optional[DatasetConfig],
                   eval_batches: int, trainable: str) -> Optional[Callable[[Any], float]]:
  """params -> validation loss: the method's (``method.validation(model, mesh, eval_batches, trainable)``,
  optional in the `Method` protocol) when it gives one, else the mean token loss on `eval_dataset_cfg`;
  None for neither."""
  make = getattr(method, 'validation', None)
  fn = make(model, mesh, eval_batches, trainable) if make is not None else None
  if fn is None and eval_dataset_cfg is not None:
    fn = dataset_validation(model, eval_dataset_cfg, eval_batches, mesh)
  return fn


def dataset_validation(model: PromptableT5, cfg: DatasetConfig, num_batches: int, mesh) -> Callable[[Any], float]:
  """params -> the mean token loss over the first `num_batches` batches of `cfg` (unshuffled; read once,
  on the first call, and kept on the host). Parameters the model does not have (a method's extra
  subtrees) are ignored."""
  cfg = dataclasses.replace(cfg, shuffle=False)
  summed = dataclasses.replace(model, loss_normalization='none')
  keys = set(model.abstract_params())
  fn = jax.jit(lambda p, b: summed.loss_fn({k: v for k, v in p.items() if k in keys}, b))
  cache: list = []

  def evaluate(params) -> float:
    if not cache:
      cache.extend(itertools.islice(dataset_batches(cfg, num_epochs=1), num_batches))
    total = count = 0.0
    for host_batch in cache:
      loss, aux = fn(params, partitioning.make_global_batch(host_batch, mesh))
      total += float(loss)
      count += float(aux['num_tokens'])
    return total / max(count, 1.0)
  return evaluate


def evaluate_loss(model: PromptableT5, params, cfg: DatasetConfig, num_batches: int, mesh) -> float:
  """Mean token loss over the first `num_batches` batches of `cfg` (unshuffled)."""
  return dataset_validation(model, cfg, num_batches, mesh)(params)


@dataclasses.dataclass
class DryRunReport:
  """What ``--dry_run`` prints: parameter counts per group, shardings and per-device memory (bytes)."""
  text: str
  param_counts: Dict[str, int]
  per_device_bytes: Dict[str, float]
  compiled: Optional[Dict[str, float]] = None   # `Setup.compiled_memory` (``--dry_run --compile``)

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
    if num_microbatches > 1:   # the accumulated gradients next to the current micro-batch's
      grads_bytes *= 2
    per_device = {'params': params_bytes, 'optimizer_state': opt_bytes, 'gradients': grads_bytes,
                  'activations (estimate)': act_bytes}
    per_device['total'] = sum(per_device.values())
    gib = _format_bytes
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


  def add_compiled(self, compiled: Dict[str, float], mesh, total_without_remat: Optional[float] = None) -> None:
    """Adds XLA's memory analysis of the compiled step (`Setup.compiled_memory`) next to the estimate (and,
    for a remat model, next to the estimate without remat, which is what XLA:CPU compiles)."""
    self.compiled = dict(compiled)
    if total_without_remat is not None:
      self.compiled['estimate_without_remat'] = total_without_remat
    gib = _format_bytes
    platform = mesh.devices.flat[0].platform.upper()
    ratio = compiled['peak'] / self.per_device_bytes['total'] if self.per_device_bytes['total'] else float('nan')
    self.text += '\n'.join([
        '', '', f'compiled step (XLA for {platform}, {mesh.devices.size} devices, per device; compiled in '
        f'{compiled["compile_seconds"]:.0f} s):',
        f'  {"arguments":<24s} {gib(compiled["arguments"])}  (state and batch)',
        f'  {"outputs":<24s} {gib(compiled["outputs"])}',
        f'  {"aliased":<24s} {gib(compiled["aliased"])}  (donated state reused by the outputs)',
        f'  {"temporaries":<24s} {gib(compiled["temporaries"])}',
        f'  {"peak":<24s} {gib(compiled["peak"])}  (arguments + outputs - aliased + temporaries; '
        f'{ratio:.2f}x the estimate)'])
    if total_without_remat is not None:
      self.text += (f'\n  {"estimate without remat":<24s} {gib(total_without_remat)}  (peak: '
                    f'{compiled["peak"] / total_without_remat:.2f}x)')
    if platform == 'CPU':
      self.text += ('\n  XLA:CPU fuses and schedules differently from TPU/GPU and does not honour remat: this is '
                    'the CPU program\'s memory; compile on the accelerator for its own.')


def _format_bytes(b: float) -> str:
  """GiB with two decimals from 1 GiB up, MiB below (a tiny model's memory is not all 0.00 GiB)."""
  return f'{b / 2**30:,.2f} GiB' if b >= 2**30 else f'{b / 2**20:,.1f} MiB'


def _activation_bytes(model, dataset_cfg, mesh, num_microbatches) -> float:
  """Saved-activation bytes per device for one micro-batch: what autodiff keeps for the backward pass.

  Per layer, the residuals JAX's autodiff saves for one encoder and one decoder layer of this model, traced
  at the per-device shapes (rows = batch / micro-batches / data axis; dropout masks included when dropout
  is on; arrays with a heads or MLP axis divided by the 'model' axis), plus each layer's input; with
  per-layer remat only the layer inputs are kept, plus one layer's residuals while it is recomputed. Once
  per step: the attention biases, the encoder output, and the logits with their gradient in float32.
  Compiled programs keep less where XLA fuses residuals away; XLA:CPU does not honour remat
  (`benchmarks/compiled_memory.py`)."""
  if dataset_cfg is None:
    return 0.0
  c = model.config
  axes = dict(mesh.shape)
  rows = max(dataset_cfg.batch_size // max(num_microbatches, 1) // axes.get('data', 1), 1)
  lengths = dict(dataset_cfg.task_feature_lengths)
  s_enc = lengths.get('inputs', 0) + (model.prompt.length if model.prompt.kind == 'shallow' else 0)
  s_dec = lengths.get('targets', 0)
  prefix = model.prompt.length if model.prompt.kind == 'deep' else 0
  itemsize = 2 if c.dtype == 'bfloat16' else 4
  enc, dec = _layer_residual_bytes(c, rows, s_enc, s_dec, prefix, axes.get('model', 1))
  inputs = [rows * s * c.emb_dim * itemsize for s in (s_enc, s_dec)]
  layers = [(enc, inputs[0], c.num_encoder_layers), (dec, inputs[1], c.num_decoder_layers)]
  if c.remat:
    total = sum(x * n for _, x, n in layers) + max(r for r, _, _ in layers)
  else:
    total = sum((r + x) * n for r, x, n in layers)
  heads = c.num_heads / min(axes.get('model', 1), c.num_heads)
  biases = rows * heads * 4 * (s_enc * (s_enc + prefix) + s_dec * (s_dec + prefix))
  logits = rows * s_dec * c.vocab_size * 4 * 2
  return float(total + biases + inputs[0] + logits)


@functools.lru_cache(maxsize=64)
def _layer_residual_bytes(config: T5Config, rows: int, s_enc: int, s_dec: int, prefix: int, model_axis: int
                          ) -> Tuple[float, float]:
  """(encoder layer, decoder layer) residual bytes per device that are not the layer's arguments (see
  `_activation_bytes`), from `jax._src.ad_checkpoint.saved_residuals` on abstract inputs; where that
  function is missing, Korthikanti et al. 2022's 34·h + 5·a·s bytes per token in 16-bit."""
  from promptjax.models import t5
  try:
    from jax._src.ad_checkpoint import saved_residuals
  except ImportError:
    saved_residuals = None
  c = config
  itemsize = 2 if c.dtype == 'bfloat16' else 4
  if saved_residuals is None:
    full = lambda s: rows * s * (34 * c.emb_dim + 5 * c.num_heads * s) * itemsize / 2
    return full(s_enc), full(s_dec)
  dropout = c.dropout_rate > 0
  sds = lambda shape, dtype=c.jnp_dtype: jax.ShapeDtypeStruct(shape, dtype)
  joined = c.num_heads * c.head_dim
  kv = lambda: (sds((prefix, joined), jnp.float32), sds((prefix, joined), jnp.float32))
  enc_args = (sds((rows, s_enc, c.emb_dim)), sds((rows, c.num_heads, s_enc, s_enc + prefix), jnp.float32),
              {'attention': kv()} if prefix else None)
  dec_args = (sds((rows, s_dec, c.emb_dim)), sds((rows, s_enc, c.emb_dim)),
              sds((rows, c.num_heads, s_dec, s_dec + prefix), jnp.float32),
              sds((rows, 1, 1, s_enc + prefix), jnp.float32),
              {'self_attention': kv(), 'encoder_decoder_attention': kv()} if prefix else None)

  def count(layer, args):
    params = jax.eval_shape(layer.init, jax.random.PRNGKey(0), *args)
    rng = jax.random.PRNGKey(0)

    def fn(p, *a):
      return layer.apply(p, *a, rngs={'dropout': rng} if dropout else None)
    total = 0.0
    for aval, source in saved_residuals(fn, params, *args):
      if 'argument' in source:
        continue
      shape = tuple(aval.shape)
      nbytes = float(np.prod(shape)) * np.dtype(aval.dtype).itemsize
      sharded = c.mlp_dim in shape or joined in shape[-1:] or (len(shape) == 4 and shape[1] == c.num_heads)
      total += nbytes / (min(model_axis, c.num_heads) if sharded else 1)
    return total

  deterministic = not dropout
  return count(t5.EncoderLayer(c, deterministic), enc_args), count(t5.DecoderLayer(c, deterministic), dec_args)
