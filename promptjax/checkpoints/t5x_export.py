"""Export promptjax parameters as a T5X checkpoint that T5X's own trainer restores.

`export_t5x_checkpoint(params, output_dir, step)` writes ``output_dir/checkpoint_<step>`` in the layout T5X
(google-research/t5x) writes itself, the reverse of `promptjax.checkpoints.t5x.load_t5x_checkpoint`. The
tree is T5X's `FlaxOptimTrainState.state_dict()`: ``{'target': params, 'state': {'step', 'param_states'}}``,
the parameters under their T5X names and the prompt under ``target/prompt/...``.

* ``layout='orbax'`` (T5X's default, `t5x.checkpoints.OrbaxCheckpointManagerInterface`): an orbax
  ``CheckpointManager`` step directory ``checkpoint_<step>/state`` (a `PyTreeCheckpointHandler` item with
  OCDBT), as that class saves it.
* ``layout='classic'`` (`t5x.checkpoints.Checkpointer`, ``train.use_orbax=False``): the msgpack file
  ``checkpoint_<step>/checkpoint`` holding ``{'version': 3, 'optimizer': tree}``; arrays of two or more
  dimensions are gzip-compressed zarr arrays ``target.encoder.layers_0...kernel`` beside it, referenced by
  TensorStore specs with checkpoint-relative paths (T5X's chunking: at most 64 MiB a chunk); the rest is
  inline.

The layout is written here with orbax, tensorstore and flax's msgpack, not with T5X's writer: T5X is not a
promptjax dependency, and its `Checkpointer.save` needs a `FlaxOptimTrainState`, i.e. a T5X optimizer and
partitioner. tests/checkpoints/test_t5x_export.py restores the result through T5X's own restore code.

Optimizer state. promptjax trains with optax, whose state T5X cannot use, so by default only the parameters
and the step are written (``state`` has no ``param_states``). T5X then builds a fresh optimizer state when
the restore config lets it (`T5X_PARAMS_ONLY_RESTORE`):

  utils.RestoreCheckpointConfig(path=.../checkpoint_<step>, mode='specific', dtype='float32',
                                assignment_map=((r'state/param_states.*', None),),
                                fallback_to_scratch=True)

Without ``fallback_to_scratch`` T5X refuses a checkpoint without optimizer state; T5X accepts
``fallback_to_scratch`` only with a state transformation, which the assignment map is (``strict=False`` does
not help: T5X reads it only for TensorFlow checkpoints). `opt_state` writes T5X ``param_states`` (e.g.
`t5x.adafactor.Adafactor` states read from a T5X checkpoint) verbatim instead; then T5X's plain restore works.

From the shell, a promptjax training checkpoint (its ``meta`` records the model and prompt):

  python -m promptjax.checkpoints.t5x export --checkpoint=MODEL_DIR_or_checkpoint_N --output_dir=DIR
      [--layout=classic]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from flax import traverse_util
import numpy as np

from promptjax.errors import ExportError, PromptjaxError

LAYOUTS = ('orbax', 'classic')
T5X_CHECKPOINT_VERSION = 3          # t5x.checkpoints.VERSION
_STATE_ITEM = 'state'                # the orbax item T5X's OrbaxCheckpointManagerInterface restores
_MSGPACK_FILE = 'checkpoint'
_CHUNK_BYTES = 64 * 1024 * 1024      # t5x.checkpoints._DESIRED_CHUNK_SIZE_BYTES

T5X_PARAMS_ONLY_RESTORE = (
    "utils.RestoreCheckpointConfig(path=<checkpoint_N>, mode='specific', dtype='float32', "
    "assignment_map=((r'state/param_states.*', None),), fallback_to_scratch=True)")


def _tree(params: Mapping[str, Any], step: int, opt_state: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
  """T5X's FlaxOptimTrainState.state_dict() for `params` (numpy leaves)."""
  if not isinstance(params, Mapping) or not all(k in params for k in ('token_embedder', 'encoder', 'decoder')):
    top = sorted(map(str, params)) if isinstance(params, Mapping) else type(params).__name__
    raise ExportError(f'export_t5x_checkpoint needs T5 parameters with T5X names (token_embedder, encoder, '
                      f'decoder[, prompt]) at the top; got {top}.')
  target = _numpy_tree(params, 'params')
  state: Dict[str, Any] = {'step': np.asarray(step, np.int32)}
  if opt_state is not None:
    state['param_states'] = _numpy_tree(opt_state, 'opt_state')
  return {'target': target, 'state': state}


def _numpy_tree(tree: Mapping[str, Any], what: str) -> Dict[str, Any]:
  flat = traverse_util.flatten_dict(tree)
  out = {}
  for key, leaf in flat.items():
    arr = np.asarray(leaf)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype.name == 'bfloat16'):
      raise ExportError(f'{what}: {"/".join(map(str, key))} is {type(leaf).__name__}, not a numeric array; '
                        f'pass a nested dict of arrays.')
    out[key] = arr
  return traverse_util.unflatten_dict(out)


def export_t5x_checkpoint(params: Mapping[str, Any], output_dir: str, step: int, *,
                          opt_state: Optional[Mapping[str, Any]] = None, layout: str = 'orbax') -> str:
  """Writes `params` (T5X names; a ``prompt`` subtree becomes ``target/prompt/...``) as the T5X checkpoint
  ``output_dir/checkpoint_<step>``; returns that directory.

  Args:
    params: nested dict of arrays (numpy or jax), dtypes kept as given.
    output_dir: the T5X model directory (created).
    step: the training step (T5X's ``state/step``; a T5X run restored from it counts on from there).
    opt_state: T5X ``param_states`` to store (the structure of the T5X optimizer that will restore them), or
      None for a params-only checkpoint (see `T5X_PARAMS_ONLY_RESTORE`).
    layout: 'orbax' (T5X's default checkpointing) or 'classic' (msgpack + zarr, ``train.use_orbax=False``).

  Raises:
    ExportError: an unknown layout, a negative step, parameters that are not T5 arrays, or an existing
      ``checkpoint_<step>`` (never overwritten).
  """
  if layout not in LAYOUTS:
    raise ExportError(f'layout={layout!r} is not a T5X checkpoint layout; use one of {", ".join(LAYOUTS)}.')
  if isinstance(step, bool) or int(step) != step or step < 0:
    raise ExportError(f'step={step!r}: a T5X checkpoint step is an integer >= 0.')
  step = int(step)
  tree = _tree(params, step, opt_state)
  output_dir = os.path.abspath(os.path.expanduser(os.fspath(output_dir)))
  final = os.path.join(output_dir, f'checkpoint_{step}')
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ExportError(f'--output_dir={output_dir} is a file; give a directory (T5X\'s model directory).')
  if os.path.exists(final):
    raise ExportError(f'{final} already exists; give another --output_dir or remove it first.')
  os.makedirs(output_dir, exist_ok=True)
  if layout == 'orbax':
    _write_orbax(tree, output_dir, step)
  else:
    tmp = f'{final}.tmp-{int(time.time())}-{os.getpid()}'
    try:
      _write_classic(tree, tmp)
      os.rename(tmp, final)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return final


def _write_orbax(tree: Dict[str, Any], output_dir: str, step: int) -> None:
  """As t5x.checkpoints.OrbaxCheckpointManagerInterface.save (without a dataset item)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  options = ocp.CheckpointManagerOptions(step_prefix='checkpoint', create=True,
                                         enable_async_checkpointing=False)
  handlers = {_STATE_ITEM: ocp.PyTreeCheckpointHandler(use_ocdbt=True)}
  with ocp.CheckpointManager(output_dir, options=options, item_handlers=handlers) as manager:
    manager.save(step, args=ocp.args.Composite(**{_STATE_ITEM: ocp.args.PyTreeSave(tree)}), force=True)
    manager.wait_until_finished()


def chunk_shape(shape: Sequence[int], itemsize: int, chunk_bytes: int = _CHUNK_BYTES) -> Tuple[int, ...]:
  """T5X's zarr chunk shape: divisors of `shape`, the largest dimension split first, at most `chunk_bytes`."""
  target = max(1, chunk_bytes // itemsize)
  factors = [[i for i in range(1, n + 1) if n % i == 0] or [1] for n in shape]
  while int(np.prod([f[-1] for f in factors])) > target:
    i = max(range(len(factors)), key=lambda j: (factors[j][-1], -j))
    factors[i].pop()
  return tuple(f[-1] for f in factors)


def _write_classic(tree: Dict[str, Any], ckpt_dir: str) -> None:
  """As t5x.checkpoints.Checkpointer.save: zarr arrays + the msgpack file (written last)."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  from flax import serialization  # pylint: disable=g-import-not-at-top

  os.makedirs(ckpt_dir)
  flat = traverse_util.flatten_dict(tree)
  written, pending = {}, []
  for key, arr in flat.items():
    if arr.ndim < 2:
      written[key] = arr
      continue
    name = '.'.join(key)   # T5X: the '/'-joined name with '.' for '/', relative to the checkpoint
    spec = {'driver': 'zarr', 'dtype': arr.dtype.name, 'kvstore': {'driver': 'file', 'path': name},
            'metadata': {'compressor': {'id': 'gzip'}, 'shape': list(arr.shape),
                         'chunks': list(chunk_shape(arr.shape, arr.dtype.itemsize))}}
    written[key] = ts.Spec(spec).to_json()
    absolute = dict(spec, kvstore={'driver': 'file', 'path': os.path.join(ckpt_dir, name)})
    pending.append((ts.open(absolute, create=True, open=True), arr))
  writes = [store.result().write(arr) for store, arr in pending]
  for w in writes:
    w.result()
  contents = {'version': T5X_CHECKPOINT_VERSION, 'optimizer': traverse_util.unflatten_dict(written)}
  with open(os.path.join(ckpt_dir, _MSGPACK_FILE), 'wb') as f:
    f.write(serialization.msgpack_serialize(contents))


# --------------------------------------------------------------------------------------------------
# promptjax training checkpoints.


def export_checkpoint(checkpoint: str, output_dir: str, layout: str = 'orbax') -> str:
  """A promptjax training checkpoint (a MODEL_DIR: its latest step; or a ``checkpoint_<step>``) -> the T5X
  checkpoint ``output_dir/checkpoint_<step>`` of its parameters (prompt included) at the same step; returns
  that directory. The model and prompt come from the checkpoint's ``meta``; extra method subtrees (SUPMER's
  ``supmer``) and the optax optimizer state are not exported."""
  from promptjax.checkpoints import peft, restore  # pylint: disable=g-import-not-at-top
  from promptjax.models import PromptableT5  # pylint: disable=g-import-not-at-top
  if layout not in LAYOUTS:   # before reading any weights
    raise ExportError(f'--layout={layout} is not a T5X checkpoint layout; use one of {", ".join(LAYOUTS)}.')
  config, prompt, _ = peft.checkpoint_signature(
      checkpoint, fix='export a checkpoint written by promptjax training, or call '
                      'promptjax.checkpoints.t5x.export_t5x_checkpoint with the parameters yourself.')
  _, params, info = restore.load_params_with_info(PromptableT5(config, prompt), checkpoint)
  if info.step is None:
    raise ExportError(f'--checkpoint={checkpoint} records no training step; export it with '
                      f'promptjax.checkpoints.t5x.export_t5x_checkpoint(params, output_dir, step).')
  return export_t5x_checkpoint(params, output_dir, info.step, layout=layout)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m promptjax.checkpoints.t5x',
                                   description='Export a promptjax training checkpoint as a T5X checkpoint.')
  parser.add_argument('command', choices=('export',))
  parser.add_argument('--checkpoint', required=True,
                      help='a promptjax MODEL_DIR (its latest step) or MODEL_DIR/checkpoint_<step>')
  parser.add_argument('--output_dir', required=True, help='the T5X model directory; writes checkpoint_<step> there')
  parser.add_argument('--layout', choices=LAYOUTS, default='orbax',
                      help="orbax: T5X's default checkpointing; classic: msgpack + zarr (train.use_orbax=False)")
  args = parser.parse_args(argv)
  try:
    path = export_checkpoint(args.checkpoint, args.output_dir, args.layout)
  except PromptjaxError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {path} (T5X, {args.layout} layout, parameters only)')
  print(f'T5X restores it with {T5X_PARAMS_ONLY_RESTORE.replace("<checkpoint_N>", repr(path))}')
  return 0
