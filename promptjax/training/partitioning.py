"""Device mesh, logical-axis rules and shardings for data- and model-parallel training (T5X style).

Every parameter of `promptjax.models.PromptableT5` carries logical axis names (`vocab`, `embed`,
`joined_kv`, `mlp`, `heads`, `relpos_buckets`, `prompt`); a list of *logical axis rules* maps those
names onto the two axes of a device mesh:

  'data'   batch (data parallelism); with ``parameter_partitioning_dims=2`` also `embed`
           (2-D, FSDP-style parameter sharding)
  'model'  vocab / mlp / heads / joined_kv (Megatron-style model parallelism, T5X's "partitions")

Typical use by a trainer (one jitted step over the mesh):

  mesh = create_mesh(num_partitions=2)                      # (data, model) = (#devices // 2, 2)
  rules = standard_logical_axis_rules()
  p_shard = param_shardings(model, mesh, rules)             # pytree of NamedSharding
  params = sharded_init(model, rng, mesh, rules)            # initialized straight into p_shard
  o_shard = optimizer_state_shardings(opt, model.abstract_params(), p_shard, mesh)
  opt_state = sharded_optimizer_init(opt, params, o_shard)
  batch = make_global_batch(host_batch, mesh)               # per-process numpy -> global jax.Array
  step = jax.jit(train_step, in_shardings=(p_shard, o_shard, batch_sharding(mesh)),
                 out_shardings=(p_shard, o_shard, ...))

A dimension whose size is not divisible by the size of the mesh axis (or axes) its rule assigns
(e.g. vocab 32128 over model=3) is replicated instead of sharded along that dimension: the rest of
the array keeps its sharding, and the fallback is logged once per logical axis.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
from flax.core import meta
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from promptjax.models.prompts import init_prompt_params
from promptjax.errors import PartitioningError

logger = logging.getLogger(__name__)

MESH_AXES = ('data', 'model')
LogicalRules = Tuple[Tuple[str, Optional[Union[str, Tuple[str, ...]]]], ...]
PyTree = Any

_MESH_FIX = 'the MESH_SHAPE macro, or promptjax.training.train.mesh_shape'


# --------------------------------------------------------------------------------------------------
# Mesh.


def _too_few_devices(what: str, need: int, n: int, source: str, platform: Optional[str]):
  hint = ''
  if platform == 'cpu':
    hint = (f'on CPU set XLA_FLAGS=--xla_force_host_platform_device_count={need} '
            '(before jax is imported), or ')
  return PartitioningError(
      f'{what} needs {need} devices but {n} {"is" if n == 1 else "are"} available ({source}); '
      f'{hint}choose a smaller mesh ({_MESH_FIX}).')


def _resolve_mesh_shape(mesh_shape, num_partitions, num_devices, source='jax.devices()',
                        platform=None) -> Tuple[int, int]:
  if mesh_shape is None:
    if not isinstance(num_partitions, (int, np.integer)) or num_partitions < 1:
      raise PartitioningError(f'num_partitions must be a positive integer, got {num_partitions!r} '
                              f'({_MESH_FIX}).')
    if num_partitions > num_devices:
      raise _too_few_devices(f'num_partitions={num_partitions}', int(num_partitions), num_devices,
                             source, platform)
    if num_devices % num_partitions:
      raise PartitioningError(
          f'num_partitions={num_partitions} does not divide the {num_devices} available devices; '
          f'choose a divisor of {num_devices} or give MESH_SHAPE=(data, model) ({_MESH_FIX}).')
    return num_devices // num_partitions, int(num_partitions)
  shape = tuple(mesh_shape)
  if len(shape) != 2 or not all(isinstance(s, (int, np.integer)) for s in shape):
    raise PartitioningError(f'MESH_SHAPE must be two integers (data, model), got {mesh_shape!r} '
                            f'({_MESH_FIX}).')
  if any(s == 0 or s < -1 for s in shape) or shape == (-1, -1):
    raise PartitioningError(f'MESH_SHAPE={shape} must hold positive sizes, with at most one -1 '
                            f'meaning "the remaining devices" ({_MESH_FIX}).')
  if num_partitions not in (1, shape[1], None) and shape[1] != -1:
    raise PartitioningError(f'MESH_SHAPE={shape} and num_partitions={num_partitions} disagree on '
                            f'the model axis; give only one of them ({_MESH_FIX}).')
  if -1 in shape:
    known = shape[1] if shape[0] == -1 else shape[0]
    if known > num_devices:
      raise _too_few_devices(f'MESH_SHAPE={shape}', known, num_devices, source, platform)
    if num_devices % known:
      raise PartitioningError(
          f'MESH_SHAPE={shape}: {known} does not divide the {num_devices} available devices; '
          f'choose a divisor of {num_devices} ({_MESH_FIX}).')
    rest = num_devices // known
    shape = (rest, known) if shape[0] == -1 else (known, rest)
  return int(shape[0]), int(shape[1])


def create_mesh(mesh_shape: Optional[Sequence[int]] = None, *, num_partitions: int = 1,
                devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A 2-D device mesh with axes ('data', 'model').

  Args:
    mesh_shape: (data, model) sizes; one of them may be -1 for "the remaining devices". When None,
      model = `num_partitions` and data = #devices // model (T5X's `num_partitions`).
    num_partitions: size of the model axis when `mesh_shape` is not given.
    devices: devices to use (default `jax.devices()`, all processes).

  On one process a mesh smaller than the device count uses the first data * model devices. With
  several processes the mesh must use every device, each process must own the same number of them,
  and a model-parallel group must stay within a process (or span whole processes); the data axis is
  laid out process-major, so each process feeds the rows of its own devices (`make_global_batch`).

  Raises:
    PartitioningError: with a message naming the fix (e.g. XLA_FLAGS on CPU, a smaller mesh).
  """
  source = 'jax.devices()' if devices is None else 'the given devices'
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  platform = devices[0].platform if devices else None
  data, model = _resolve_mesh_shape(mesh_shape, num_partitions, n, source, platform)
  need = data * model
  if need > n:
    raise _too_few_devices(f'mesh ({data}, {model})', need, n, source, platform)

  per_process = collections.Counter(d.process_index for d in devices)
  num_processes = len(per_process)
  if num_processes > 1:
    counts = sorted(set(per_process.values()))
    if len(counts) > 1:
      raise PartitioningError(
          f'the {n} devices belong to {num_processes} processes owning unequal numbers of them '
          f'({dict(sorted(per_process.items()))}); every process must contribute the same number '
          'of devices (start one process per host with all its local devices).')
    if need != n:
      raise PartitioningError(
          f'mesh ({data}, {model}) uses {need} of {n} devices, but with {num_processes} processes '
          f'the mesh must use all of them; use MESH_SHAPE=(-1, {model}) ({_MESH_FIX}).')
    local = counts[0]
    if (model <= local and local % model) or (model > local and model % local):
      raise PartitioningError(
          f'model axis {model} neither divides nor is a multiple of the {local} devices of each '
          f'process, so model-parallel groups would straddle hosts unevenly; choose a model axis '
          f'that divides {local} or is a multiple of it ({_MESH_FIX}).')
  elif need < n:
    logger.info('Mesh (%d, %d) uses %d of the %d available devices.', data, model, need, n)

  axis_types = (AxisType.Auto,) * 2
  if num_processes > 1 and devices[0].platform != 'tpu':
    # Process-major layout: consecutive devices (one process) form the model groups and data rows.
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(ordered, dtype=object).reshape(data, model), MESH_AXES, axis_types)
  return jax.make_mesh((data, model), MESH_AXES, axis_types, devices=devices[:need])


# --------------------------------------------------------------------------------------------------
# Logical axis rules.


def standard_logical_axis_rules(
    activation_partitioning_dims: int = 1, parameter_partitioning_dims: int = 1,
    additional_rules: Sequence[Tuple[str, Any]] = (),
    overrides: Optional[Mapping[str, Any]] = None) -> LogicalRules:
  """T5X's standard rules mapping logical axis names onto the ('data', 'model') mesh.

  Rules are (logical name, mesh axis | tuple of mesh axes | None) pairs in order of precedence; for
  each array the first rule of a name whose mesh axis is still unused by that array wins (flax's
  `nn.logical_to_mesh_axes`). Names without a rule are replicated.

  Args:
    activation_partitioning_dims: 1 — activations sharded over 'data' (batch) only; 2 — also `embed`
      over 'model'.
    parameter_partitioning_dims: 1 — parameters sharded over 'model' only; 2 — `embed` also over
      'data' (2-D / FSDP-style parameter and optimizer-state sharding).
    additional_rules: appended after the standard rules (T5X's `additional_rules`): they apply to
      names the standard rules do not cover, or as fallbacks.
    overrides: {logical name: mesh axis or None}; replaces every standard rule for that name and
      takes precedence over all others (e.g. {'prompt': 'model'}).
  """
  a, p = activation_partitioning_dims, parameter_partitioning_dims
  if a not in (1, 2) or p not in (1, 2):
    raise PartitioningError(
        f'activation_partitioning_dims and parameter_partitioning_dims must be 1 or 2, got {a} and '
        f'{p}.')
  rules = [('batch', 'data'), ('vocab', 'model')]
  if p == 2 and a == 1:
    rules.append(('embed', 'data'))
  rules += [('mlp', 'model'), ('heads', 'model'), ('kv', None), ('joined_kv', 'model')]
  if a == 2:
    rules.append(('embed', 'model'))
  if p == 2 and a == 2:
    rules.append(('embed', 'data'))
  if a == 1 and p == 1:
    rules.append(('embed', None))
  rules += [('relpos_buckets', None), ('abspos_buckets', None), ('length', None), ('layers', None),
            ('stack', None), ('mlp_activations', None), ('prompt', None)]
  rules += [_check_rule(r) for r in additional_rules]
  if overrides:
    overrides = dict(overrides)
    rules = ([_check_rule(r) for r in overrides.items()]
             + [r for r in rules if r[0] not in overrides])
  return tuple(rules)


def _check_rule(rule) -> Tuple[str, Any]:
  try:
    name, axes = rule
  except (TypeError, ValueError):
    raise PartitioningError(f'A logical axis rule is a (logical name, mesh axis or None) pair, '
                            f'got {rule!r}.') from None
  for ax in (axes if isinstance(axes, (tuple, list)) else (axes,)):
    if ax is not None and ax not in MESH_AXES:
      raise PartitioningError(f'Rule {rule!r} names mesh axis {ax!r}; the mesh axes are '
                              f'{MESH_AXES} (or None for replicated).')
  return str(name), tuple(axes) if isinstance(axes, list) else axes


# --------------------------------------------------------------------------------------------------
# Parameter shardings.


def _is_spec(x) -> bool:
  return isinstance(x, P)


def _unbox(tree: PyTree) -> PyTree:
  return meta.unbox(tree)


def _is_boxed(tree: PyTree) -> bool:
  leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))
  return any(isinstance(x, meta.AxisMetadata) for x in leaves)


def _axis_size(mesh: Mesh, axes) -> int:
  if axes is None:
    return 1
  axes = axes if isinstance(axes, tuple) else (axes,)
  return math.prod(mesh.shape[a] for a in axes)


_FALLBACKS_LOGGED = set()


def _divisible_spec(spec: P, shape: Sequence[int], mesh: Mesh, logical: Optional[P] = None) -> P:
  """`spec` with every mesh-axis assignment that does not divide its dimension set to None."""
  out = []
  for i, axes in enumerate(tuple(spec)):
    if axes is not None and i < len(shape) and shape[i] % _axis_size(mesh, axes):
      name = tuple(logical)[i] if logical is not None and i < len(tuple(logical)) else f'dim {i}'
      key = (name, shape[i], axes, _axis_size(mesh, axes))
      if key not in _FALLBACKS_LOGGED:
        _FALLBACKS_LOGGED.add(key)
        logger.info('Logical axis %r (size %d) is not divisible by mesh axis %r (size %d); '
                    'replicating that dimension.', name, shape[i], axes, _axis_size(mesh, axes))
      axes = None
    out.append(axes)
  return P(*out)


def logical_to_mesh_spec(logical: P, shape: Optional[Sequence[int]], mesh: Mesh,
                         rules: Optional[LogicalRules] = None) -> P:
  """Mesh PartitionSpec of one array from its logical names (replicating non-divisible dims)."""
  rules = standard_logical_axis_rules() if rules is None else rules
  spec = nn.logical_to_mesh_axes(tuple(logical), rules)
  return spec if shape is None else _divisible_spec(spec, shape, mesh, logical)


def param_shardings(model_or_logical_axes: Any, mesh: Mesh, rules: Optional[LogicalRules] = None,
                    *, shapes: Optional[PyTree] = None) -> PyTree:
  """NamedShardings of every parameter.

  Args:
    model_or_logical_axes: a `PromptableT5` (anything with `abstract_params()`), a boxed abstract
      parameter tree (`model.abstract_params()`: logical names and shapes), or a pytree of
      PartitionSpecs of logical names (`model.logical_axes()`).
    mesh: the ('data', 'model') mesh.
    rules: logical axis rules (default `standard_logical_axis_rules()`).
    shapes: for a PartitionSpec tree only: a matching tree of shapes / arrays / ShapeDtypeStructs,
      needed for the divisibility fallback (without it no dimension falls back to replication).

  Returns:
    A pytree of `NamedSharding` with the structure of the parameters. A dimension whose size is not
    divisible by its mesh axis size (e.g. vocab 32128 over model=3) is replicated.
  """
  rules = standard_logical_axis_rules() if rules is None else rules
  x = model_or_logical_axes
  if hasattr(x, 'abstract_params'):
    x = x.abstract_params()
  if _is_boxed(x):
    logical = nn.get_partition_spec(x)
    shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), _unbox(x))
  else:
    logical = x
    if shapes is not None:
      shapes = jax.tree_util.tree_map(
          lambda s: tuple(s) if isinstance(s, (tuple, list)) else tuple(np.shape(s)), shapes,
          is_leaf=lambda s: isinstance(s, (tuple, list)) and all(isinstance(i, int) for i in s))
  if shapes is None:
    return jax.tree_util.tree_map(
        lambda s: NamedSharding(mesh, logical_to_mesh_spec(s, None, mesh, rules)), logical,
        is_leaf=_is_spec)
  return jax.tree_util.tree_map(
      lambda s, shape: NamedSharding(mesh, logical_to_mesh_spec(s, shape, mesh, rules)),
      logical, shapes, is_leaf=_is_spec)


def param_specs(shardings: PyTree) -> PyTree:
  """The mesh PartitionSpecs of a sharding pytree (for logging / checkpoint metadata)."""
  return jax.tree_util.tree_map(lambda s: s.spec, shardings,
                                is_leaf=lambda s: isinstance(s, NamedSharding))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# --------------------------------------------------------------------------------------------------
# Placing and initializing parameters.


def _canonical(x) -> np.ndarray:
  x = np.asarray(x)
  return x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)


def place(tree: PyTree, shardings: PyTree) -> PyTree:
  """Puts a pytree of host (numpy) or device arrays onto `shardings` (same structure).

  numpy leaves become global arrays with `jax.make_array_from_callback` — each device receives
  only its shard, and with several processes every process must hold the same full value (e.g. each
  loaded the same checkpoint). jax.Array leaves are resharded with `jax.device_put`.
  """
  def one(x, sharding):
    if isinstance(x, jax.Array):
      return jax.device_put(x, sharding)
    x = _canonical(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree_util.tree_map(one, tree, shardings)


class _HostView:
  """Lazily fetches a (possibly multi-process) jax.Array to the host when numpy reads it."""

  def __init__(self, x):
    self._x = x

  def __array__(self, dtype=None, copy=None):
    x = self._x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      x = multihost_utils.process_allgather(x, tiled=True)
    x = np.asarray(x)
    return x if dtype is None else x.astype(dtype)


@functools.lru_cache(maxsize=8)
def _jitted_init(model, treedef, shardings: Tuple[NamedSharding, ...]) -> Callable:
  """jit(rng -> transformer params) with out_shardings, cached per (model, shardings)."""
  return jax.jit(model.init_transformer, out_shardings=jax.tree_util.tree_unflatten(treedef, shardings))


def sharded_init(model, rng: jax.Array, mesh: Mesh,
                 rules: Optional[Union[LogicalRules, Mapping[str, Any]]] = None,
                 transformer_params: Optional[PyTree] = None) -> PyTree:
  """`model.init_params(rng, transformer_params)` with every parameter created in its sharding.

  The transformer is initialized by one jit with `out_shardings` (no full host copy). The prompt
  is then initialized exactly as `init_prompt_params` does, which reads the pieces of the
  transformer it needs on the host (the token embedding; for deep prompts with embedding-based
  inits also each layer's norm scales and key/value kernels, one at a time) and is placed onto its
  sharding.
  With `transformer_params` (a host or device pytree, e.g. a loaded checkpoint) those weights are
  placed onto their shardings instead of initialized.

  Args:
    model: a `PromptableT5`.
    rng: PRNG key (the same key gives the same values as `model.init_params`).
    mesh: the mesh.
    rules: logical axis rules (default `standard_logical_axis_rules()`), or directly the parameter
      shardings (the dict returned by `param_shardings`).
    transformer_params: optional transformer weights (T5X names, without `prompt`).

  Returns:
    The parameter pytree of jax.Arrays sharded as `param_shardings(model, mesh, rules)`, equal to
    `model.init_params(rng, transformer_params)`.
  """
  if isinstance(rules, Mapping):
    shardings = dict(rules)
  else:
    shardings = param_shardings(model, mesh, rules)
  init_rng, prompt_rng = jax.random.split(rng)
  t_shardings = {k: v for k, v in shardings.items() if k != 'prompt'}
  if transformer_params is None:
    leaves, treedef = jax.tree_util.tree_flatten(
        t_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    try:
      init_fn = _jitted_init(model, treedef, tuple(leaves))
    except TypeError:  # an unhashable model: no compilation cache
      init_fn = _jitted_init.__wrapped__(model, treedef, tuple(leaves))
    params = init_fn(init_rng)
  else:
    params = dict(transformer_params)
    params.pop('prompt', None)
    model.check_params(params, include_prompt=False)
    params = place(params, t_shardings)
  host_view = jax.tree_util.tree_map(_HostView, params)
  prompt = init_prompt_params(prompt_rng, model.prompt, model.config, host_view)
  if prompt is not None:
    params['prompt'] = place(prompt, shardings['prompt'])
  return params


# --------------------------------------------------------------------------------------------------
# Optimizer state.


def _key_name(k) -> Any:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return getattr(k, attr)
  return str(k)


def _path_names(path) -> Tuple[Any, ...]:
  return tuple(_key_name(k) for k in path)


def _flatten_by_path(tree: PyTree, is_leaf=None) -> Dict[Tuple[Any, ...], Any]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return {_path_names(p): v for p, v in leaves}


def _match_param(names: Tuple[Any, ...], param_paths: Mapping[Tuple[Any, ...], Any]):
  """The longest parameter path that is a suffix of a state leaf's path, or None."""
  for k in range(len(names), 0, -1):
    if names[-k:] in param_paths:
      return names[-k:]
  return None


def _state_leaf_spec(state_shape, state_names, param_shape, param_spec: P) -> P:
  """Spec of an optimizer-state leaf tied to a parameter (see `optimizer_state_shardings`)."""
  state_shape, param_shape = tuple(state_shape), tuple(param_shape)
  spec = tuple(param_spec) + (None,) * (len(param_shape) - len(tuple(param_spec)))
  if state_shape == param_shape:
    return P(*spec)
  if len(state_shape) != len(param_shape) - 1 or len(param_shape) < 2:
    return P()
  candidates = [d for d in range(len(param_shape))
                if param_shape[:d] + param_shape[d + 1:] == state_shape]
  # optax's factored second moments (`_factored_dims`): d1, d0 = the two largest dims (argsort);
  # v_row averages over d0, v_col over d1 — this disambiguates equal dims (e.g. [embed, joined_kv]).
  order = np.argsort(param_shape)
  d1, d0 = int(order[-2]), int(order[-1])
  if 'v_row' in state_names and d0 in candidates:
    candidates = [d0]
  elif 'v_col' in state_names and d1 in candidates:
    candidates = [d1]
  specs = {spec[:d] + spec[d + 1:] for d in candidates}
  return P(*specs.pop()) if len(specs) == 1 else P()


def abstract_optimizer_state(optimizer: Any, abstract_params: PyTree) -> PyTree:
  """ShapeDtypeStructs of `optimizer.init(params)` (no allocation); boxed params are unboxed."""
  init = optimizer.init if hasattr(optimizer, 'init') else optimizer
  return jax.eval_shape(init, _unbox(abstract_params))


def optimizer_state_shardings(optimizer: Any, abstract_params: PyTree, param_shardings: PyTree,
                              mesh: Mesh) -> PyTree:
  """NamedShardings for the state of an optax optimizer, derived from the parameters' shardings.

  The state comes from `jax.eval_shape(optimizer.init, abstract_params)`. A state leaf belongs to a
  parameter when its path ends with that parameter's path (how optax lays out per-parameter state,
  also inside `multi_transform` / `masked` / `chain` wrappers; masked-out leaves are `MaskedNode`s
  without leaves). Then:
    * same shape as the parameter (Adam's mu/nu, unfactored Adafactor v, momentum): the parameter's
      sharding;
    * the parameter's shape minus one dimension (Adafactor's factored v_row / v_col): the
      parameter's spec with that dimension removed (optax's choice of dimension when sizes tie);
    * anything else (step counts, (1,) placeholders, hyperparameters): replicated.

  Args:
    optimizer: an `optax.GradientTransformation` (or an init function).
    abstract_params: parameter tree of arrays / ShapeDtypeStructs (boxed is fine).
    param_shardings: NamedShardings (or mesh PartitionSpecs) with the parameters' structure.
    mesh: the mesh.

  Returns:
    A pytree of NamedSharding with the structure of the optimizer state.
  """
  abstract_params = _unbox(abstract_params)
  state = abstract_optimizer_state(optimizer, abstract_params)
  specs = optimizer_state_specs(state, abstract_params, param_shardings)
  return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs,
                                is_leaf=lambda s: isinstance(s, P))


def optimizer_state_specs(state: PyTree, params: PyTree, param_specs: PyTree) -> PyTree:
  """PartitionSpecs for an optax state (arrays or ShapeDtypeStructs) from its parameters' specs, by the
  rules of `optimizer_state_shardings`. `param_specs` holds PartitionSpecs (of mesh axes or of logical
  axis names, e.g. for T5X's `derive_logical_axes`) or NamedShardings, with the structure of `params`."""
  is_sharding = lambda s: isinstance(s, (NamedSharding, P))
  shapes = _flatten_by_path(_unbox(params))
  specs = {k: (s.spec if isinstance(s, NamedSharding) else s)
           for k, s in _flatten_by_path(param_specs, is_leaf=is_sharding).items()}
  if set(shapes) != set(specs):
    raise PartitioningError('param_shardings does not have the structure of abstract_params '
                            f'(e.g. {sorted(set(shapes) ^ set(specs))[:1]}).')

  def one(path, leaf):
    names = _path_names(path)
    match = _match_param(names, shapes)
    if match is None or not hasattr(leaf, 'shape'):
      return P()
    return _state_leaf_spec(leaf.shape, names[:-len(match)], np.shape(shapes[match]), specs[match])
  return jax.tree_util.tree_map_with_path(one, state)


def sharded_optimizer_init(optimizer: Any, params: PyTree, opt_shardings: PyTree) -> PyTree:
  """`optimizer.init(params)` created directly in `opt_shardings` (one jit, no host copy)."""
  return jax.jit(optimizer.init, out_shardings=opt_shardings)(params)


# --------------------------------------------------------------------------------------------------
# Batches and activations.


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch array [batch, ...]: batch over 'data', replicated over 'model'."""
  return NamedSharding(mesh, P('data'))


def _local_data_shards(mesh: Mesh) -> int:
  """How many distinct positions of the data axis this process's devices cover."""
  pid = jax.process_index()
  data_axis = mesh.axis_names.index('data')
  rows = {idx[data_axis] for idx, d in np.ndenumerate(mesh.devices) if d.process_index == pid}
  return len(rows)


def make_global_batch(host_batch: Mapping[str, Any], mesh: Mesh) -> Dict[str, jax.Array]:
  """Turns this process's batch (numpy [local_batch, ...] per feature) into global jax.Arrays.

  With one process the local batch is the global batch and this is `jax.device_put` onto
  `batch_sharding(mesh)`. With several, each process passes the rows of the data-axis positions its
  devices hold (processes sharing the same positions pass identical rows), and the global batch is
  assembled with `jax.make_array_from_process_local_data`: global_batch = local_batch *
  data / (data positions per process).

  Raises:
    PartitioningError: if the batch size does not divide over the data axis.
  """
  data = mesh.shape['data']
  sharding = batch_sharding(mesh)
  multi = jax.process_count() > 1
  local_shards = _local_data_shards(mesh) if multi else data
  out = {}
  for name, x in host_batch.items():
    if np.ndim(x) == 0:
      raise PartitioningError(f'Batch feature {name!r} is a scalar; batch features are arrays '
                              '[batch, ...].')
    b = np.shape(x)[0]
    if b % local_shards:
      if multi:
        msg = (f'per-process batch size {b} of feature {name!r} is not divisible by the '
               f'{local_shards} data-axis positions of this process (global batch '
               f'{b * data // local_shards} over data axis {data})')
      else:
        msg = (f'global batch size {b} of feature {name!r} is not divisible by the mesh\'s data '
               f'axis ({data})')
      raise PartitioningError(
          f'{msg}; choose a batch size that is a multiple of {local_shards} per process, or a mesh '
          f'whose data axis divides it ({_MESH_FIX}).')
    if not multi:
      out[name] = jax.device_put(x, sharding)
    else:
      global_shape = (b // local_shards * data,) + tuple(np.shape(x)[1:])
      out[name] = jax.make_array_from_process_local_data(sharding, np.asarray(x), global_shape)
  return out
