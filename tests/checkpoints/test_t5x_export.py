"""T5X checkpoint export: promptjax -> T5X -> promptjax round trips (orbax and classic layouts, shallow and
deep prompts), T5X's own trainer restore code on the export, T5X's own writer read back by promptjax, and the
export command on a promptjax training checkpoint. Reading T5X's real checkpoints is tests/checkpoints/
test_t5x.py."""

import os

import jax
import numpy as np
import pytest
from flax import serialization, traverse_util

from promptjax.checkpoints import t5x
from promptjax.errors import ExportError
from promptjax.models import PromptConfig, PromptableT5, get_config
from promptjax.models.prompts import prompt_shapes
from tests.helpers import write_training_checkpoint

CONFIG = get_config('tiny', vocab_size=64, num_encoder_layers=2, num_decoder_layers=1)
STEP = 7


def _model_and_params(kind, seed=0):
  """(model, random float32 numpy params) without tracing the model's init."""
  model = PromptableT5(CONFIG, PromptConfig(kind=kind, length=3))
  rng = np.random.RandomState(seed)
  shapes = traverse_util.flatten_dict(model.param_shapes(), is_leaf=lambda _, x: isinstance(x, tuple))
  return model, traverse_util.unflatten_dict(
      {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()})


def _assert_bit_identical(got, want):
  got, want = traverse_util.flatten_dict(got), traverse_util.flatten_dict(want)
  assert sorted(got) == sorted(want)
  for k, w in want.items():
    g = np.asarray(got[k])
    assert g.dtype == w.dtype and g.shape == w.shape and g.tobytes() == w.tobytes(), k


@pytest.mark.parametrize('layout', ['orbax', 'classic'])
@pytest.mark.parametrize('kind', ['shallow', 'deep'])
def test_round_trip_is_bit_identical(tmp_path, layout, kind):
  _, params = _model_and_params(kind)
  path = t5x.export_t5x_checkpoint(params, str(tmp_path / 'model'), STEP, layout=layout)
  assert path == str(tmp_path / 'model' / f'checkpoint_{STEP}')
  got, step = t5x.load_t5x_checkpoint_with_step(path)
  assert step == STEP
  _assert_bit_identical(got, params)
  if layout == 'orbax':   # T5X's OrbaxCheckpointManagerInterface: item `state` of a manager step directory
    assert os.path.isfile(os.path.join(path, 'state', '_METADATA'))
  else:                   # T5X's Checkpointer: msgpack {'version': 3, 'optimizer': {...}} + zarr arrays
    with open(os.path.join(path, 'checkpoint'), 'rb') as f:
      contents = serialization.msgpack_restore(f.read())
    assert contents['version'] == 3 and int(contents['optimizer']['state']['step']) == STEP
    assert 'param_states' not in contents['optimizer']['state']
    spec = contents['optimizer']['target']['prompt']
    spec = spec['prompt'] if kind == 'shallow' else spec['encoder']['layers_1']['attention']['key']
    assert spec['kvstore']['path'].rstrip('/') == 'target.prompt.' + (
        'prompt' if kind == 'shallow' else 'encoder.layers_1.attention.key')
  with pytest.raises(ExportError, match='already exists'):
    t5x.export_t5x_checkpoint(params, str(tmp_path / 'model'), STEP, layout=layout)


def test_export_errors(tmp_path):
  _, params = _model_and_params('none')
  with pytest.raises(ExportError, match="layout='msgpack'.*orbax, classic"):
    t5x.export_t5x_checkpoint(params, str(tmp_path), 1, layout='msgpack')
  with pytest.raises(ExportError, match='integer >= 0'):
    t5x.export_t5x_checkpoint(params, str(tmp_path), -1)
  with pytest.raises(ExportError, match=r'token_embedder, encoder, decoder.*\[.params.\]'):
    t5x.export_t5x_checkpoint({'params': params}, str(tmp_path), 1)
  with pytest.raises(ExportError, match='encoder/note is str'):
    t5x.export_t5x_checkpoint({**params, 'encoder': {'note': 'x'}}, str(tmp_path), 1)
  assert os.listdir(tmp_path) == []
  (tmp_path / 'file').write_text('')
  with pytest.raises(ExportError, match='is a file; give a directory'):
    t5x.export_t5x_checkpoint(params, str(tmp_path / 'file'), 1)


def test_chunk_shape_is_t5x():
  from promptjax.checkpoints.t5x_export import chunk_shape
  assert chunk_shape((32128, 4096), 4) == (4016, 4096)   # 64 MiB of float32, the vocab axis split first
  assert chunk_shape((8, 8), 4) == (8, 8)
  assert chunk_shape((12, 10), 4, chunk_bytes=4 * 30) == (6, 5)     # 12 -> 6, then 10 -> 5


# --------------------------------------------------------------------------------------------------
# T5X's own code: the trainer's restore path, and its writers.


@pytest.fixture(scope='module')
def t5x_trainer():
  """(initializer, partitioner, model, params, variables): T5X's TrainStateInitializer (Adafactor, as T5X's
  gin files) for a deep-prompt promptjax model whose init gives zeros, so restored values can only come from
  a checkpoint; `variables` are `params` with their T5X `params_axes`."""
  pytest.importorskip('t5x', reason='T5X is not installed (see the README: T5X differences)')
  import flax.linen.partitioning as flax_partitioning
  from t5x import adafactor, partitioning, utils
  model, params = _model_and_params('deep', seed=1)
  axes = traverse_util.unflatten_dict({
      k[:-1] + (k[-1] + '_axes',): flax_partitioning.AxisMetadata(names=tuple(v))
      for k, v in traverse_util.flatten_dict(model.logical_axes()).items()})

  class Model:   # T5X's TrainStateInitializer takes a bound init method of a model object
    def get_initial_variables(self, rng, input_shapes, input_types=None):
      return {'params': jax.tree.map(np.zeros_like, params), 'params_axes': axes}

  factor_rules = dict(adafactor.standard_logical_factor_rules(), prompt=adafactor.FactorDim.NONE)
  # Replicated parameters: the tiny model's 2 heads do not split over the 8 test devices.
  partitioner = partitioning.PjitPartitioner(num_partitions=1, logical_axis_rules=(('batch', 'data'),))
  optimizer = adafactor.Adafactor(logical_factor_rules=factor_rules)
  initializer = utils.TrainStateInitializer(optimizer, Model().get_initial_variables, {'x': (1,)}, partitioner)
  return initializer, partitioner, model, params, (optimizer, {'params': params, 'params_axes': axes})


def _t5x_restore(t5x_trainer, path, layout, params_only):
  """T5X's `train` restore of INITIAL_CHECKPOINT_PATH=path (RestoreCheckpointConfig mode='specific')."""
  import jax.numpy as jnp
  from t5x import utils
  initializer, partitioner = t5x_trainer[:2]
  extra = dict(assignment_map=((r'state/param_states.*', None),), fallback_to_scratch=True) if params_only else {}
  cfg = utils.RestoreCheckpointConfig(path=path, mode='specific', dtype='float32', **extra)
  state, _ = utils.create_checkpoint_manager_and_restore(
      initializer, partitioner, cfg, path, jax.random.PRNGKey(0), use_orbax=(layout == 'orbax'))
  return jax.tree.map(lambda x: np.asarray(x) if isinstance(x, (jnp.ndarray, np.ndarray)) else x,
                      state.state_dict())


@pytest.mark.parametrize('layout', ['orbax', 'classic'])
def test_t5x_trainer_restores_the_export(tmp_path, t5x_trainer, layout):
  params = t5x_trainer[3]
  path = t5x.export_t5x_checkpoint(params, str(tmp_path / 'params_only'), STEP, layout=layout)
  # T5X's documented restore config for a checkpoint without optimizer state.
  assert "assignment_map=((r'state/param_states.*', None),), fallback_to_scratch=True" in (
      t5x.T5X_PARAMS_ONLY_RESTORE)
  state = _t5x_restore(t5x_trainer, path, layout, params_only=True)
  _assert_bit_identical(state['target'], params)
  assert int(state['state']['step']) == STEP
  fresh = state['state']['param_states']   # Adafactor's initial state, built by T5X
  assert all(not np.any(x) for x in jax.tree.leaves(fresh))
  # Without fallback_to_scratch T5X refuses a checkpoint without optimizer state.
  with pytest.raises(ValueError, match='param_states|children'):
    _t5x_restore(t5x_trainer, path, layout, params_only=False)

  # With T5X optimizer state (here Adafactor's, shifted), T5X's plain restore takes all of it.
  opt_state = jax.tree.map(lambda x: x + 0.5, fresh)
  path = t5x.export_t5x_checkpoint(params, str(tmp_path / 'full'), STEP + 1, layout=layout, opt_state=opt_state)
  state = _t5x_restore(t5x_trainer, path, layout, params_only=False)
  _assert_bit_identical(state['target'], params)
  _assert_bit_identical(state['state']['param_states'], opt_state)
  assert int(state['state']['step']) == STEP + 1


@pytest.mark.parametrize('layout', ['orbax', 'classic'])
def test_t5x_written_checkpoint_loads_bit_identically(tmp_path, t5x_trainer, layout):
  """T5X's own writers (OrbaxCheckpointManagerInterface, Checkpointer) on a T5X train state holding
  promptjax's deep-prompt parameters -> load_t5x_checkpoint."""
  import flax
  from t5x import checkpoints, train_state
  initializer, partitioner, model, params, (optimizer, variables) = t5x_trainer
  shape = initializer.global_train_state_shape
  state = train_state.FlaxOptimTrainState.create(optimizer, flax.core.freeze(variables))
  state = state.replace_step(np.int32(STEP + 2))
  out = str(tmp_path / 'written')
  os.makedirs(out)
  if layout == 'orbax':
    manager = checkpoints.OrbaxCheckpointManagerInterface(out, shape, partitioner)
    manager.save(state)
    manager.wait_until_finished()
    manager.close()
  else:
    checkpoints.Checkpointer(shape, partitioner, out).save(state)
  got, step = t5x.load_t5x_checkpoint_with_step(out)
  assert step == STEP + 2
  _assert_bit_identical(got, params)
  model.check_params(got)


# --------------------------------------------------------------------------------------------------
# The export command.


def test_export_command_on_a_training_checkpoint(tmp_path, capsys):
  from promptjax.checkpoints import t5x_export
  model, params = _model_and_params('shallow', seed=2)
  run = tmp_path / 'run'
  write_training_checkpoint(run, model, params, step=5)
  out = tmp_path / 't5x'
  assert t5x_export.main(['export', f'--checkpoint={run}', f'--output_dir={out}', '--layout=classic']) == 0
  printed = capsys.readouterr().out
  assert f'wrote {out / "checkpoint_5"}' in printed and 'fallback_to_scratch=True' in printed
  assert os.path.isfile(out / 'checkpoint_5' / 'checkpoint')
  got, step = t5x.load_t5x_checkpoint_with_step(str(out))
  assert step == 5
  _assert_bit_identical(got, params)

  # Again into the same directory: refused, one error line naming the fix; the export is kept.
  assert t5x_export.main(['export', f'--checkpoint={run / "checkpoint_5"}', f'--output_dir={out}']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and 'already exists; give another --output_dir' in err[0]
  # A checkpoint without promptjax's meta (here: T5X's own) is refused with the API to use instead.
  assert t5x_export.main(['export', f'--checkpoint={out}', f'--output_dir={tmp_path / "again"}']) == 2
  assert 'no meta/metadata' in capsys.readouterr().err and not (tmp_path / 'again').exists()
