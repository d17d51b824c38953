"""Import T5X checkpoints: the transformer parameters (float32 numpy, T5X names) and the step; export is
`export_t5x_checkpoint` (promptjax.checkpoints.t5x_export), also from the shell:

  python -m promptjax.checkpoints.t5x export --checkpoint=MODEL_DIR_or_checkpoint_N --output_dir=DIR
      [--layout=classic]

Two on-disk layouts are read, both in place (nothing is copied):

* T5X's *legacy* layout (`t5x.checkpoints.Checkpointer`, and the msgpack-aggregate files of early
  orbax): a directory `checkpoint_<step>/` holding a msgpack file `checkpoint` with
  `{'version': 3, 'optimizer': {'target': params, 'state': {'step', 'param_states'}}}` (version 0:
  the `optimizer` dict itself at the top). Small arrays are inline (flax's msgpack ndarray
  extension); each large one is replaced by a TensorStore spec such as
  `{'driver': 'zarr', 'kvstore': {'driver': 'gfile', 'path': 'target.encoder.layers_0...kernel'},
  'metadata': {...}}` whose path is relative to the checkpoint directory, and stored as a zarr (v2)
  array in that directory. Early orbax wrote a string `'PLACEHOLDER://<name>'` instead of the spec.
  The zarr arrays are read with tensorstore, as T5X itself does.
* The *orbax* layout (`orbax.checkpoint` PyTree/Standard checkpointers, OCDBT or not, and the step
  directories of a `CheckpointManager`): detected by orbax's `_METADATA` file and restored with
  orbax as numpy arrays; only the parameter subtree is read, never the optimizer state.

In both, the parameters are looked up under `optimizer/target`, `target`, `params` (unwrapping a
linen `{'params': ...}` variables dict), `state/params`, `train_state/params` or `model/params`, or
the root when it already is a T5 parameter tree. Optimizer state (Adafactor `v_row`/`v_col`/`v`/`m`,
optax `opt_state`, ...) is never returned.

The path may be a `checkpoint_<step>/` (or orbax `<step>/`) directory, T5X's msgpack file inside
it, an orbax item directory, or the parent model directory, in which case the checkpoint with the
highest step is taken; a symbolic link (a promptjax MODEL_DIR's ``best``, the checkpoint of the lowest
validation loss) is read as the directory it points to. Only local file systems are supported.

Public API:
  load_t5x_checkpoint(path) -> params
  load_t5x_checkpoint_with_step(path) -> (params, step or None)
  find_t5x_checkpoint(path) -> resolved checkpoint directory
  t5x_config_from_params(params, relative_attention_max_distance=128, **overrides) -> T5Config
  export_t5x_checkpoint(params, output_dir, step, *, opt_state=None, layout='orbax') -> checkpoint dir
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from flax import traverse_util

from promptjax.checkpoints.t5x_export import (T5X_PARAMS_ONLY_RESTORE, export_t5x_checkpoint,  # noqa: F401
                                              main)
from promptjax.models.config import T5_1_0, T5_1_1, T5Config

Params = Dict[str, Any]

_MSGPACK_FILE = 'checkpoint'
_ORBAX_METADATA_FILE = '_METADATA'
_ORBAX_MARKERS = ('_METADATA', '_CHECKPOINT_METADATA', 'manifest.ocdbt', 'commit_success.txt')
_PLACEHOLDER_PREFIX = 'PLACEHOLDER://'
_STEP_DIR_RE = re.compile(r'^(?:checkpoint_)?(\d+)$')

# Where the parameters live in a checkpoint tree, in order of preference.
_PARAM_LOCATIONS: Tuple[Tuple[str, ...], ...] = (
    ('optimizer', 'target'),  # T5X checkpoint version >= 1: {'version', 'optimizer': {...}}
    ('target',),  # T5X version 0 / a bare T5X optimizer state dict {'target', 'state'}
    ('params',),  # flax/orbax `{'params': params}` (StandardCheckpointer)
    ('state', 'params'),
    ('train_state', 'params'),
    ('model', 'params'),
)
_STEP_LOCATIONS: Tuple[Tuple[str, ...], ...] = (
    ('optimizer', 'state', 'step'), ('state', 'step'), ('step',), ('train_state', 'step'))

_EXPECTED = ('a T5X checkpoint directory `checkpoint_<step>/` containing the msgpack file '
             '`checkpoint` (legacy T5X layout), an orbax checkpoint directory containing '
             '`_METADATA` (or an orbax step directory whose item subdirectory does), or a model '
             'directory containing such `checkpoint_<step>/` or `<step>/` subdirectories')


# --------------------------------------------------------------------------------------------------
# Locating the checkpoint.


def _listdir(path: str) -> List[str]:
  try:
    return sorted(os.listdir(path))
  except OSError:
    return []


def _is_legacy_dir(path: str) -> bool:
  return (os.path.isfile(os.path.join(path, _MSGPACK_FILE))
          and not os.path.isfile(os.path.join(path, _ORBAX_METADATA_FILE)))


def _is_orbax_pytree_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, _ORBAX_METADATA_FILE))


def _orbax_item_dirs(path: str) -> List[str]:
  """Item subdirectories (`default`, `state`, ...) of an orbax CheckpointManager step directory."""
  return [os.path.join(path, n) for n in _listdir(path)
          if _is_orbax_pytree_dir(os.path.join(path, n))]


def _checkpoint_kind(path: str) -> Optional[str]:
  if _is_orbax_pytree_dir(path):
    return 'orbax'
  if _is_legacy_dir(path):
    return 'legacy'
  # An orbax CheckpointManager step directory: items (`default`, `state`, ...) in subdirectories.
  is_step_dir = (_STEP_DIR_RE.match(os.path.basename(path)) is not None
                 or any(os.path.exists(os.path.join(path, m)) for m in _ORBAX_MARKERS))
  if is_step_dir and _orbax_item_dirs(path):
    return 'orbax_step'
  return None


def _describe_dir(path: str) -> str:
  names = _listdir(path)
  shown = ', '.join(names[:12]) + (f', ... ({len(names)} entries)' if len(names) > 12 else '')
  return f'it contains: {shown}' if names else 'it is empty'


def _resolve(path: Any) -> Tuple[str, str, Optional[int]]:
  """-> (checkpoint directory, kind, step from the directory name or None)."""
  p = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if os.path.islink(p):   # e.g. MODEL_DIR/best -> checkpoint_<step> (the trainer's KEEP_BEST)
    p = os.path.realpath(p)
  if not os.path.exists(p):
    raise FileNotFoundError(f'T5X checkpoint path {p} does not exist; expected {_EXPECTED}.')
  if os.path.isfile(p):
    if os.path.basename(p) != _MSGPACK_FILE:
      raise ValueError(f'{p} is a file, not a T5X checkpoint; expected {_EXPECTED}, or the '
                       f'msgpack file named `{_MSGPACK_FILE}` inside a checkpoint directory.')
    p = os.path.dirname(p)
  kind = _checkpoint_kind(p)
  if kind is not None:
    return p, kind, _step_from_dirname(p)
  # A model directory: the highest step that holds a checkpoint.
  steps = []
  for name in _listdir(p):
    m = _STEP_DIR_RE.match(name)
    if m and os.path.isdir(os.path.join(p, name)):
      steps.append((int(m.group(1)), name))
  for step, name in sorted(steps, reverse=True):
    sub = os.path.join(p, name)
    sub_kind = _checkpoint_kind(sub)
    if sub_kind is not None:
      return sub, sub_kind, step
  if steps:
    raise ValueError(
        f'{p} has step subdirectories ({", ".join(n for _, n in sorted(steps)[-5:])}) but none '
        f'holds a readable checkpoint; expected {_EXPECTED}.')
  raise ValueError(f'{p} is not a T5X checkpoint ({_describe_dir(p)}); expected {_EXPECTED}.')


def _step_from_dirname(path: str) -> Optional[int]:
  m = _STEP_DIR_RE.match(os.path.basename(path))
  if m:
    return int(m.group(1))
  parent = os.path.dirname(path)  # an item directory inside an orbax manager's step directory
  m = _STEP_DIR_RE.match(os.path.basename(parent))
  if m and _is_orbax_pytree_dir(path) and _checkpoint_kind(parent) == 'orbax_step':
    return int(m.group(1))
  return None


def t5x_checkpoint_step(path: Any) -> Optional[int]:
  """The step of the checkpoint `path` resolves to (a model dir: its newest readable ``checkpoint_<step>``),
  from the directory name; None where the name carries none. Raises like `find_t5x_checkpoint`."""
  return _resolve(path)[2]


def find_t5x_checkpoint(path: Any) -> str:
  """Resolves `path` (checkpoint dir, its msgpack file, or a model dir) to the checkpoint dir that
  `load_t5x_checkpoint` reads (for a model dir: the one with the highest step)."""
  return _resolve(path)[0]


# --------------------------------------------------------------------------------------------------
# Tree helpers.


def _get(tree: Any, keys: Sequence[str]) -> Any:
  node = tree
  for k in keys:
    if not isinstance(node, Mapping) or k not in node:
      return None
    node = node[k]
  return node


def _looks_like_t5(tree: Any) -> bool:
  return isinstance(tree, Mapping) and (
      'token_embedder' in tree or ('encoder' in tree and 'decoder' in tree))


def _find_param_tree(tree: Any, where: str) -> Tuple[Tuple[str, ...], Mapping]:
  if isinstance(tree, Mapping):
    for loc in _PARAM_LOCATIONS:
      node = _get(tree, loc)
      if isinstance(node, Mapping) and node:
        # A linen variables dict saved whole: {'params': {...}}.
        while (isinstance(node, Mapping) and set(node.keys()) == {'params'}
               and isinstance(node['params'], Mapping)):
          node, loc = node['params'], loc + ('params',)
        return loc, node
    if _looks_like_t5(tree):
      return (), tree
  top = sorted(map(str, tree.keys())) if isinstance(tree, Mapping) else type(tree).__name__
  raise ValueError(
      f'No parameter tree found in {where}: expected the parameters under one of '
      f'{", ".join("/".join(l) for l in _PARAM_LOCATIONS)}, or T5 parameters '
      f'(token_embedder, encoder, decoder) at the top; the top-level keys are {top}.')


def _is_ts_spec(x: Any) -> bool:
  return (isinstance(x, Mapping) and isinstance(x.get('driver'), str)
          and ('kvstore' in x or 'path' in x))


def _flatten(tree: Mapping) -> Dict[Tuple[str, ...], Any]:
  return traverse_util.flatten_dict(tree, is_leaf=lambda _, x: _is_ts_spec(x))


def _to_float32(name: str, x: Any) -> np.ndarray:
  arr = np.asarray(x)
  if arr.dtype == object:
    raise ValueError(f'Parameter {name!r} is not an array (got {type(x).__name__}).')
  if np.issubdtype(arr.dtype, np.floating) or arr.dtype.name == 'bfloat16':
    return np.ascontiguousarray(arr, dtype=np.float32)
  return arr


# --------------------------------------------------------------------------------------------------
# Legacy layout: msgpack + zarr/TensorStore.


def _zarr_chunk_keys(zarray: Mapping) -> List[str]:
  shape, chunks = list(zarray['shape']), list(zarray['chunks'])
  sep = zarray.get('dimension_separator') or '.'
  if not shape:
    return ['0']
  grid = [range(math.ceil(s / c)) if c > 0 else range(0) for s, c in zip(shape, chunks)]
  return [sep.join(map(str, idx)) for idx in itertools.product(*grid)]


def _check_zarr_array(name: str, array_dir: str, allow_missing_chunks: bool) -> None:
  """Raises FileNotFoundError/ValueError naming `name` if the zarr v2 array is missing or
  incomplete (tensorstore would silently read a missing chunk as the fill value)."""
  zarray_file = os.path.join(array_dir, '.zarray')
  if not os.path.isdir(array_dir) or not os.path.isfile(zarray_file):
    raise FileNotFoundError(
        f'Parameter {name!r} is stored as a zarr array in {array_dir}, which is missing '
        f'(expected a directory with a `.zarray` metadata file and its chunk files).')
  try:
    with open(zarray_file) as f:
      zarray = json.load(f)
    keys = _zarr_chunk_keys(zarray)
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f'Parameter {name!r}: the zarr metadata {zarray_file} is corrupt ({e}); '
                     f'expected zarr v2 JSON with "shape", "chunks" and "dtype".') from e
  if allow_missing_chunks:
    return
  missing = [k for k in keys if not os.path.isfile(os.path.join(array_dir, k))]
  if missing:
    raise FileNotFoundError(
        f'Parameter {name!r}: the zarr array {array_dir} is incomplete, chunk file(s) '
        f'{", ".join(missing[:5])}{" ..." if len(missing) > 5 else ""} are missing ('
        f'{len(missing)} of {len(keys)}; expected one file per chunk of shape {zarray["chunks"]} '
        f'tiling {zarray["shape"]}). Pass allow_missing_chunks=True to read missing chunks as the '
        f'zarr fill value, as tensorstore does.')


def _array_dir_from_spec(spec: Mapping, ckpt_dir: str, name: str) -> str:
  kv = spec.get('kvstore')
  rel = None
  if isinstance(kv, Mapping):
    driver = kv.get('driver')
    if driver not in ('file', 'gfile', 'gcs'):
      raise ValueError(f'Parameter {name!r}: unsupported TensorStore kvstore driver {driver!r} in '
                       f'{ckpt_dir}/{_MSGPACK_FILE}; expected file, gfile or gcs.')
    rel = kv.get('path')
  if rel is None:
    rel = spec.get('path')  # tensorstore < 0.1.14 specs keep the path at the top level.
  if not isinstance(rel, str) or not rel:
    raise ValueError(f'Parameter {name!r}: the TensorStore spec in {ckpt_dir}/{_MSGPACK_FILE} has '
                     f'no path (spec: {dict(spec)}).')
  # T5X writes paths relative to the checkpoint directory (so checkpoints can be moved).
  path = os.path.join(ckpt_dir, rel.rstrip('/'))
  if os.path.isabs(rel) and not os.path.exists(path):
    path = os.path.join(ckpt_dir, os.path.basename(rel.rstrip('/')))
  return path


def _open_spec(spec: Optional[Mapping], array_dir: str, name: str) -> Dict[str, Any]:
  """The tensorstore spec that opens `array_dir`, keeping the checkpoint's shape/dtype to check."""
  if spec is None:
    return {'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': array_dir}}
  out = {k: copy.deepcopy(v) for k, v in spec.items() if k not in ('kvstore', 'path')}
  out['kvstore'] = {'driver': 'file', 'path': array_dir}
  metadata = dict(out.get('metadata') or {})
  for k in ('chunks', 'compressor'):  # As T5X: open arrays written with other chunkings too.
    metadata.pop(k, None)
  dtype = metadata.get('dtype', out.get('dtype'))
  if dtype in ('<u2', 'uint16'):
    raise ValueError(f'Parameter {name!r} in {array_dir} is stored as uint16 (the bfloat16 encoding '
                     f'of T5X checkpoint versions < 3); re-save it with a current T5X, which '
                     f'writes native bfloat16.')
  if metadata:
    out['metadata'] = metadata
  return out


def _read_zarr_arrays(jobs: Sequence[Tuple[str, str, Optional[Mapping]]],
                      allow_missing_chunks: bool) -> Dict[str, np.ndarray]:
  """jobs: (name, zarr directory, spec from the msgpack or None) -> {name: array} (read
  concurrently with tensorstore)."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top

  for name, array_dir, _ in jobs:
    _check_zarr_array(name, array_dir, allow_missing_chunks)
  opened = []
  for name, array_dir, spec in jobs:
    try:
      opened.append((name, array_dir, ts.open(_open_spec(spec, array_dir, name), open=True,
                                              read=True)))
    except (ValueError, TypeError) as e:
      raise ValueError(f'Parameter {name!r}: invalid TensorStore spec for {array_dir}: {e}') from e
  reads = []
  for name, array_dir, future in opened:
    try:
      reads.append((name, array_dir, future.result().read()))
    except ValueError as e:
      raise ValueError(f'Could not open parameter {name!r} from the zarr array {array_dir}: '
                       f'{e}') from e
  out = {}
  for name, array_dir, future in reads:
    try:
      out[name] = future.result()
    except ValueError as e:
      raise ValueError(f'Could not read parameter {name!r} from the zarr array {array_dir} (a '
                       f'chunk file is corrupt or truncated): {e}') from e
  return out


def _load_legacy(ckpt_dir: str, allow_missing_chunks: bool) -> Tuple[Params, Optional[int]]:
  from flax import serialization  # pylint: disable=g-import-not-at-top

  file = os.path.join(ckpt_dir, _MSGPACK_FILE)
  try:
    with open(file, 'rb') as f:
      contents = serialization.msgpack_restore(f.read())
  except Exception as e:  # msgpack raises several unrelated types on bad input.
    raise ValueError(f'Could not decode the T5X msgpack checkpoint file {file} ({type(e).__name__}: '
                     f'{e}); expected flax-serialized msgpack of {{"version", "optimizer": '
                     f'{{"target", "state"}}}}.') from e
  loc, target = _find_param_tree(contents, file)
  flat = _flatten(target)
  prefix = '/'.join(loc)
  params: Dict[Tuple[str, ...], Any] = {}
  jobs = []
  for key, leaf in flat.items():
    name = '/'.join(key)
    if _is_ts_spec(leaf):
      array_dir = _array_dir_from_spec(leaf, ckpt_dir, name)
      jobs.append((name, array_dir, leaf))
    elif isinstance(leaf, str) and leaf.startswith(_PLACEHOLDER_PREFIX):
      array_dir = os.path.join(ckpt_dir, leaf[len(_PLACEHOLDER_PREFIX):])
      jobs.append((name, array_dir, None))
    elif leaf is None or isinstance(leaf, (str, bytes)):
      raise ValueError(f'Parameter {name!r} (under {prefix!r}) in {file} is {leaf!r}, not an array '
                       f'or a TensorStore spec.')
    else:
      params[key] = leaf
  read = _read_zarr_arrays(jobs, allow_missing_chunks)
  for key in flat:
    name = '/'.join(key)
    if name in read:
      params[key] = read[name]
  params = {k: _to_float32('/'.join(k), v) for k, v in params.items()}
  step = None
  for sloc in _STEP_LOCATIONS:
    s = _get(contents, sloc)
    if s is not None and np.ndim(s) == 0 and not isinstance(s, (str, bytes, Mapping)):
      step = int(np.asarray(s))
      break
  return traverse_util.unflatten_dict(params), step


# --------------------------------------------------------------------------------------------------
# Orbax layout.


def _load_orbax_dir(item_dir: str) -> Tuple[Params, Optional[int]]:
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top

  handler = ocp.PyTreeCheckpointHandler()
  try:
    tree = handler.metadata(epath.Path(item_dir)).tree
  except Exception as e:  # orbax raises assorted errors on bad metadata.
    raise ValueError(f'Could not read the orbax checkpoint metadata in {item_dir} '
                     f'({type(e).__name__}: {e}).') from e
  loc, _ = _find_param_tree(tree, f'the orbax checkpoint {item_dir}')
  item: Dict[str, Any] = {}
  # Restore only the parameter subtree (and the step), never the optimizer state.
  node = item
  src = tree
  for k in loc[:-1]:
    node = node.setdefault(k, {})
    src = src[k]
  if loc:
    node[loc[-1]] = src[loc[-1]]
  else:
    item = dict(tree)
  step_loc = None
  if loc:
    for sloc in _STEP_LOCATIONS:
      m = _get(tree, sloc)
      if m is not None and not isinstance(m, Mapping) and tuple(getattr(m, 'shape', (0,))) == ():
        step_loc = sloc
        node = item
        for k in sloc[:-1]:
          node = node.setdefault(k, {})
        node[sloc[-1]] = m
        break
  restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  try:
    with ocp.Checkpointer(handler) as checkpointer:
      restored = checkpointer.restore(
          epath.Path(item_dir),
          args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))
  except FileNotFoundError as e:
    raise FileNotFoundError(f'The orbax checkpoint {item_dir} is incomplete: {e}') from e
  except Exception as e:  # tensorstore/orbax raise ValueError and others on corrupt data.
    raise ValueError(f'Could not restore the parameters ({"/".join(loc) or "<root>"}) of the orbax '
                     f'checkpoint {item_dir} ({type(e).__name__}: {e}).') from e
  params = _get(restored, loc) if loc else restored
  flat = {k: _to_float32('/'.join(k), v) for k, v in _flatten(params).items()}
  step = None
  if step_loc is not None:
    s = _get(restored, step_loc)
    if s is not None:
      step = int(np.asarray(s))
  return traverse_util.unflatten_dict(flat), step


def _load_orbax(path: str, kind: str) -> Tuple[Params, Optional[int]]:
  if kind == 'orbax':
    return _load_orbax_dir(path)
  errors = []
  items = _orbax_item_dirs(path)
  # Prefer the conventional item names, then any other item holding a parameter tree.
  preferred = ('state', 'default', 'params', 'train_state', 'model', 'items')
  items.sort(key=lambda d: (preferred.index(os.path.basename(d))
                            if os.path.basename(d) in preferred else len(preferred), d))
  for item_dir in items:
    try:
      return _load_orbax_dir(item_dir)
    except ValueError as e:
      if 'No parameter tree found' not in str(e):
        raise
      errors.append(str(e))
  raise ValueError(f'None of the orbax items in {path} holds a parameter tree: ' + ' | '.join(errors))


# --------------------------------------------------------------------------------------------------
# Public API.


def load_t5x_checkpoint_with_step(path: Any, *, allow_missing_chunks: bool = False
                                  ) -> Tuple[Params, Optional[int]]:
  """Loads the parameters of a T5X (legacy msgpack+zarr or orbax) checkpoint and its step.

  Args:
    path: a `checkpoint_<step>/` directory (or its `checkpoint` msgpack file), an orbax checkpoint
      or step directory, or a model directory (the highest step is taken).
    allow_missing_chunks: legacy layout only: read absent zarr chunk files as the fill value
      (zeros) instead of raising. Off by default so that a truncated copy is not silently zeroed.

  Returns:
    (params, step): params is a nested dict with T5X names (`encoder/layers_0/attention/query/
    kernel`, ...) of float32 numpy arrays (bfloat16 is widened); the optimizer state is dropped.
    step is the training step recorded in the checkpoint (`state/step`), else the one in the
    directory name, else None.

  Raises:
    FileNotFoundError: the path, or a zarr array / chunk file the checkpoint refers to, is missing.
    ValueError: the directory is neither layout, or its content is corrupt.
  """
  ckpt_dir, kind, dir_step = _resolve(path)
  if kind == 'legacy':
    params, step = _load_legacy(ckpt_dir, allow_missing_chunks)
  else:
    params, step = _load_orbax(ckpt_dir, kind)
  return params, (step if step is not None else dir_step)


def load_t5x_checkpoint(path: Any, *, allow_missing_chunks: bool = False) -> Params:
  """The parameters of a T5X checkpoint; see `load_t5x_checkpoint_with_step`."""
  return load_t5x_checkpoint_with_step(path, allow_missing_chunks=allow_missing_chunks)[0]


def _shape(params: Mapping, path: str) -> Tuple[int, ...]:
  node = _get(params, path.split('/'))
  if node is None or isinstance(node, Mapping):
    raise ValueError(f'Cannot infer the T5 architecture: parameter {path!r} is missing (expected a '
                     f'T5 parameter tree with T5X names).')
  return tuple(int(d) for d in np.shape(node))


def _num_layers(params: Mapping, stack: str) -> int:
  node = params.get(stack)
  if not isinstance(node, Mapping):
    raise ValueError(f'Cannot infer the T5 architecture: {stack!r} is missing.')
  idx = sorted(int(m.group(1)) for k in node for m in [re.fullmatch(r'layers_(\d+)', str(k))] if m)
  if not idx or idx != list(range(len(idx))):
    raise ValueError(f'Cannot infer the T5 architecture: {stack} layers are {idx}; expected '
                     f'layers_0 ... layers_<n-1>.')
  return len(idx)


def t5x_config_from_params(params: Mapping, relative_attention_max_distance: int = 128,
                           **overrides) -> T5Config:
  """Infers the `T5Config` from a parameter tree with T5X names (shapes only).

  vocab/emb_dim from `token_embedder/embedding`, num_heads/buckets from `encoder/relpos_bias/
  rel_embedding` [heads, buckets], head_dim = joined_kv / num_heads from the query kernel, mlp_dim
  from `mlp/wi_0` or `mlp/wi`, the depths from the `layers_<i>` count. The architecture follows T5X's
  released checkpoints: `mlp/wi` is original T5's ReLU MLP (T5X's t5_1_0 networks; a non-gated MLP
  with another activation stores the same names, so pass ``mlp_activations`` for one), `mlp/wi_0` and
  `mlp/wi_1` T5.1.1's gated GELU, and no `decoder/logits_dense` means logits via the token embedding
  (`logits_via_embedding`). The maximum relative distance is not stored in a checkpoint: pass it (128
  in all released T5 checkpoints). `overrides` set the other fields (dropout_rate, dtype, remat, ...).
  A `prompt` subtree is ignored.
  """
  vocab, emb = _shape(params, 'token_embedder/embedding')
  heads, buckets = _shape(params, 'encoder/relpos_bias/rel_embedding')
  q_in, joined_kv = _shape(params, 'encoder/layers_0/attention/query/kernel')
  gated = _get(params, ['encoder', 'layers_0', 'mlp', 'wi']) is None
  wi = 'wi_0' if gated else 'wi'
  mlp_in, mlp = _shape(params, f'encoder/layers_0/mlp/{wi}/kernel')
  if joined_kv % heads:
    raise ValueError(f'Cannot infer head_dim: the query kernel width {joined_kv} is not a multiple '
                     f'of the {heads} heads of encoder/relpos_bias/rel_embedding.')
  if q_in != emb or mlp_in != emb:
    raise ValueError(f'Inconsistent parameter shapes: embedding width {emb}, but the query kernel '
                     f'takes {q_in} and mlp/{wi} takes {mlp_in}.')
  dec_rel = _shape(params, 'decoder/relpos_bias/rel_embedding')
  if dec_rel != (heads, buckets):
    raise ValueError(f'decoder/relpos_bias/rel_embedding has shape {dec_rel}, but the encoder\'s is '
                     f'{(heads, buckets)}.')
  fields = dict(vocab_size=vocab, emb_dim=emb, num_heads=heads,
                num_encoder_layers=_num_layers(params, 'encoder'),
                num_decoder_layers=_num_layers(params, 'decoder'), head_dim=joined_kv // heads,
                mlp_dim=mlp, relative_attention_num_buckets=buckets,
                relative_attention_max_distance=relative_attention_max_distance,
                mlp_activations=T5_1_1 if gated else T5_1_0,
                logits_via_embedding=_get(params, ['decoder', 'logits_dense', 'kernel']) is None)
  fields.update(overrides)
  return T5Config(**fields)


if __name__ == '__main__':
  sys.exit(main())
