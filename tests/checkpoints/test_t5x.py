"""T5X checkpoint import: the real tiny legacy checkpoint against an independent msgpack/zarr reader,
the model running on it, the orbax layout, and the error paths."""

import gzip
import itertools
import json
import os
import shutil

import msgpack
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from promptjax.checkpoints import t5x
from promptjax.models import PromptConfig, PromptableT5, get_config
from tests.helpers import tiny_t5x_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED_DATA = os.path.normpath(os.path.join(REPO, '..', 'shared', 'data'))
TINY_MODEL_DIR = os.path.join(SHARED_DATA, 't5x_tiny')
TINY = os.path.join(TINY_MODEL_DIR, 'checkpoint_3')

needs_tiny = pytest.mark.skipif(
    not os.path.isfile(os.path.join(TINY, 'checkpoint')),
    reason=f'the real T5X tiny checkpoint {TINY} is absent: the shared reference data '
           f'(<repo>/../shared/data) only exists beside the checkout in the project setup')

# Sizes of the tiny checkpoint (shared/data/README.md).
TINY_CONFIG = dict(vocab_size=32128, emb_dim=4, num_heads=2, head_dim=2, mlp_dim=8,
                   num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=4,
                   relative_attention_max_distance=8)


# --------------------------------------------------------------------------------------------------
# Independent reference readers (plain json/gzip/msgpack/numpy; no flax, no tensorstore).


def _read_zarr_reference(array_dir):
  with open(os.path.join(array_dir, '.zarray')) as f:
    meta = json.load(f)
  assert meta['zarr_format'] == 2 and meta['compressor']['id'] == 'gzip'
  assert meta['filters'] is None and meta['order'] == 'C'
  dtype, shape, chunks = np.dtype(meta['dtype']), meta['shape'], meta['chunks']
  sep = meta.get('dimension_separator', '.')
  out = np.empty(shape, dtype)
  for idx in itertools.product(*[range(-(-s // c)) for s, c in zip(shape, chunks)]):
    with open(os.path.join(array_dir, sep.join(map(str, idx))), 'rb') as f:
      raw = gzip.decompress(f.read())
    chunk = np.frombuffer(raw, dtype).reshape(chunks)  # edge chunks are stored full-size
    region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape))
    out[region] = chunk[tuple(slice(0, r.stop - r.start) for r in region)]
  return out


def _msgpack_ext(code, data):
  # flax.serialization: ext type 1 = ndarray, packed as [shape, dtype name, raw bytes].
  assert code == 1, code
  shape, dtype, buf = msgpack.unpackb(data)
  return np.frombuffer(buf, np.dtype(dtype)).reshape(shape)


def _raw_msgpack(path):
  with open(os.path.join(path, 'checkpoint'), 'rb') as f:
    return msgpack.unpackb(f.read(), ext_hook=_msgpack_ext, strict_map_key=False)


def _flat_leaves(tree, prefix=()):
  """{path tuple: leaf}; a TensorStore spec dict (has 'driver') counts as a leaf."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) and 'driver' not in v:
      out.update(_flat_leaves(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _paths(tree):
  # Shape tuples (from `param_shapes`) are leaves.
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, tuple))[0]
  return {'/'.join(str(getattr(k, 'key', k)) for k in p) for p, _ in leaves}


def _leaf(tree, path):
  for k in path.split('/'):
    tree = tree[k]
  return tree


@pytest.fixture(scope='module')
def tiny():
  return tiny_t5x_checkpoint()


def _copy_tiny(tmp_path):
  dst = tmp_path / 'checkpoint_3'
  shutil.copytree(TINY, dst)
  # The shared data is read-only and copytree keeps the modes.
  for root, dirs, files in os.walk(dst):
    os.chmod(root, 0o755)
    for f in files:
      os.chmod(os.path.join(root, f), 0o644)
  return dst


# --------------------------------------------------------------------------------------------------
# The real tiny legacy checkpoint.


@needs_tiny
@pytest.mark.parametrize('name', [
    'token_embedder.embedding',  # 8 row chunks of 4096, the last one cropped to 3456 rows
    'decoder.logits_dense.kernel',  # chunked along the vocab (second) axis
    'encoder.layers_0.attention.query.kernel',
    'encoder.layers_1.mlp.wo.kernel',
    'decoder.layers_1.encoder_decoder_attention.out.kernel',
])
def test_zarr_arrays_match_independent_reader(tiny, name):
  params, _ = tiny
  want = _read_zarr_reference(os.path.join(TINY, 'target.' + name))
  got = _leaf(params, name.replace('.', '/'))
  assert isinstance(got, np.ndarray) and got.dtype == np.float32
  assert got.shape == want.shape
  np.testing.assert_array_equal(got, want)


@needs_tiny
def test_inline_arrays_and_step_match_raw_msgpack(tiny):
  params, step = tiny
  raw = _raw_msgpack(TINY)
  assert raw['version'] == 3
  leaves = _flat_leaves(raw['optimizer']['target'])
  inline = {'/'.join(k): v for k, v in leaves.items() if isinstance(v, np.ndarray)}
  stored = {'/'.join(k): v for k, v in leaves.items() if isinstance(v, dict)}
  # Layer norms and relative position tables are inline; kernels/embeddings are zarr arrays.
  assert 'encoder/relpos_bias/rel_embedding' in inline
  assert 'decoder/layers_1/pre_cross_attention_layer_norm/scale' in inline
  assert 'token_embedder/embedding' in stored
  assert inline['encoder/relpos_bias/rel_embedding'].shape == (2, 4)  # [heads, buckets]
  for name, want in inline.items():
    got = _leaf(params, name)
    assert got.dtype == np.float32 and got.shape == want.shape, name
    np.testing.assert_array_equal(got, want, err_msg=name)
  for name, spec in stored.items():
    assert spec['kvstore']['path'] == 'target.' + name.replace('/', '.')
    assert _leaf(params, name).shape == tuple(spec['metadata']['shape']), name
  assert step == int(raw['optimizer']['state']['step']) == 3


@needs_tiny
def test_param_paths_are_t5x_names_and_pass_check_params(tiny):
  params, _ = tiny
  raw = _raw_msgpack(TINY)
  t5x_names = {'/'.join(k) for k in _flat_leaves(raw['optimizer']['target'])}
  assert _paths(params) == t5x_names
  # No optimizer state (Adafactor v_row/v_col/v/m, step) leaks into the parameters.
  assert not any(part in ('v_row', 'v_col', 'v', 'm', 'step', 'param_states', 'state')
                 for name in _paths(params) for part in name.split('/'))

  config = t5x.t5x_config_from_params(params, relative_attention_max_distance=8)
  for field, value in TINY_CONFIG.items():
    assert getattr(config, field) == value, field
  model = PromptableT5(config)
  model.check_params(params, include_prompt=False)
  assert _paths(params) == _paths(model.param_shapes())


@needs_tiny
def test_model_dir_and_msgpack_file_resolve_to_the_checkpoint(tiny):
  params, _ = tiny
  assert t5x.find_t5x_checkpoint(TINY_MODEL_DIR) == TINY
  for path in (TINY_MODEL_DIR, os.path.join(TINY, 'checkpoint')):
    got, step = t5x.load_t5x_checkpoint_with_step(path)
    assert step == 3
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, params)
  plain = t5x.load_t5x_checkpoint(TINY)
  jax.tree_util.tree_map(np.testing.assert_array_equal, plain, params)


@needs_tiny
def test_forward_pass_on_imported_weights(tiny):
  params, _ = tiny
  model = PromptableT5(t5x.t5x_config_from_params(params, relative_attention_max_distance=8))
  batch = {
      'encoder_input_tokens': jnp.array([[37, 423, 9, 1, 0, 0], [8, 32127, 5, 6, 7, 1]], jnp.int32),
      'decoder_target_tokens': jnp.array([[4273, 1, 0], [150, 2087, 1]], jnp.int32),
  }
  logits = np.asarray(jax.jit(model.logits)(params, batch))
  assert logits.shape == (2, 3, 32128)
  assert np.all(np.isfinite(logits))
  loss, _ = jax.jit(model.loss_fn)(params, batch)
  assert np.isfinite(float(loss))


@needs_tiny
@pytest.mark.parametrize('kind', ['shallow', 'deep'])
def test_init_params_keeps_imported_weights(tiny, kind):
  params, _ = tiny
  config = t5x.t5x_config_from_params(params, relative_attention_max_distance=8)
  model = PromptableT5(config, PromptConfig(kind=kind, length=3, init_vocab_size=100))
  full = model.init_params(jax.random.PRNGKey(0), transformer_params=params)
  model.check_params(full)
  assert set(full) == set(params) | {'prompt'}
  for (path, want), (_, got) in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                    jax.tree_util.tree_flatten_with_path(
                                        {k: v for k, v in full.items() if k != 'prompt'})[0]):
    got = np.asarray(got)
    assert got.dtype == want.dtype and got.shape == want.shape, path
    assert got.tobytes() == want.tobytes(), path  # bit-identical
  logits = model.logits(full, {'encoder_input_tokens': jnp.array([[5, 6, 1]], jnp.int32),
                               'decoder_target_tokens': jnp.array([[7, 1]], jnp.int32)})
  assert np.all(np.isfinite(np.asarray(logits)))


@needs_tiny
def test_config_inference_options(tiny):
  params, _ = tiny
  assert t5x.t5x_config_from_params(params).relative_attention_max_distance == 128
  config = t5x.t5x_config_from_params(params, 8, dropout_rate=0.1, dtype='bfloat16')
  assert (config.dropout_rate, config.dtype) == (0.1, 'bfloat16')
  # A prompt subtree next to the transformer does not disturb the inference.
  with_prompt = dict(params, prompt={'prompt': np.zeros((3, 4), np.float32)})
  assert t5x.t5x_config_from_params(with_prompt, 8) == t5x.t5x_config_from_params(params, 8)


@needs_tiny
def test_bfloat16_zarr_array_comes_back_as_float32(tmp_path):
  import tensorstore as ts
  from flax import serialization

  ckpt = _copy_tiny(tmp_path)
  name = 'encoder.layers_0.attention.query.kernel'
  original = _read_zarr_reference(str(ckpt / ('target.' + name)))
  shutil.rmtree(ckpt / ('target.' + name))
  bf16 = jnp.asarray(original * 1.001, jnp.bfloat16)
  spec = {'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': str(ckpt / ('target.' + name))},
          'metadata': {'shape': list(original.shape), 'chunks': list(original.shape),
                       'dtype': 'bfloat16', 'compressor': {'id': 'gzip', 'level': 1}}}
  store = ts.open(spec, create=True, open=True).result()
  store.write(np.asarray(bf16)).result()
  with open(ckpt / 'checkpoint', 'rb') as f:
    contents = serialization.msgpack_restore(f.read())
  leaf = _leaf(contents['optimizer']['target'], name.replace('.', '/'))
  leaf['metadata']['dtype'] = 'bfloat16'
  with open(ckpt / 'checkpoint', 'wb') as f:
    f.write(serialization.msgpack_serialize(contents))

  got = _leaf(t5x.load_t5x_checkpoint(str(ckpt)), name.replace('.', '/'))
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, np.asarray(bf16, np.float32))
  assert not np.array_equal(got, original)


@needs_tiny
def test_placeholder_and_old_tensorstore_specs(tmp_path, tiny):
  """Early orbax aggregate files mark arrays as 'PLACEHOLDER://<dir>'; specs from tensorstore <
  0.1.14 keep the relative path at the top level instead of in `kvstore`."""
  from flax import serialization

  params, _ = tiny
  ckpt = _copy_tiny(tmp_path)
  with open(ckpt / 'checkpoint', 'rb') as f:
    contents = serialization.msgpack_restore(f.read())
  target = contents['optimizer']['target']
  target['encoder']['layers_0']['mlp']['wo']['kernel'] = (
      'PLACEHOLDER://target.encoder.layers_0.mlp.wo.kernel')
  old = target['decoder']['logits_dense']['kernel']
  old['path'] = old['kvstore'].pop('path')
  with open(ckpt / 'checkpoint', 'wb') as f:
    f.write(serialization.msgpack_serialize(contents))
  got = t5x.load_t5x_checkpoint(str(ckpt))
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, params)


# --------------------------------------------------------------------------------------------------
# Orbax layout.


@pytest.fixture(scope='module')
def tiny_preset_params():
  model = PromptableT5(get_config('tiny'))
  params = model.init_params(jax.random.PRNGKey(1))
  return jax.tree_util.tree_map(np.asarray, params)


def _assert_same(got, want):
  assert _paths(got) == _paths(want)
  for (path, w), (_, g) in zip(jax.tree_util.tree_flatten_with_path(want)[0],
                               jax.tree_util.tree_flatten_with_path(got)[0]):
    assert isinstance(g, np.ndarray) and g.dtype == np.float32, path
    np.testing.assert_array_equal(g, w, err_msg=str(path))


def test_orbax_standard_checkpointer_round_trip(tmp_path, tiny_preset_params):
  import orbax.checkpoint as ocp

  path = str(tmp_path / 'ckpt')
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, {'params': tiny_preset_params})
  params, step = t5x.load_t5x_checkpoint_with_step(path)
  _assert_same(params, tiny_preset_params)
  assert step is None
  config = t5x.t5x_config_from_params(params, relative_attention_max_distance=16)
  assert config == get_config('tiny')
  PromptableT5(config).check_params(params, include_prompt=False)


def test_orbax_t5x_train_state_tree_drops_optimizer_state(tmp_path, tiny_preset_params):
  import orbax.checkpoint as ocp

  param_states = jax.tree_util.tree_map(
      lambda x: {'v': np.full(x.shape, 7.0, np.float32), 'm': np.zeros((1,), np.float32)},
      tiny_preset_params)
  tree = {'optimizer': {'target': tiny_preset_params,
                        'state': {'step': np.int32(42), 'param_states': param_states}}}
  model_dir = tmp_path / 'model'
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(str(model_dir / 'checkpoint_42'), tree)
  params, step = t5x.load_t5x_checkpoint_with_step(str(model_dir))
  assert step == 42
  _assert_same(params, tiny_preset_params)


def test_orbax_checkpoint_manager_picks_highest_step(tmp_path, tiny_preset_params):
  import orbax.checkpoint as ocp

  later = jax.tree_util.tree_map(lambda x: (x * 2).astype(jnp.bfloat16), tiny_preset_params)
  root = str(tmp_path / 'run')
  with ocp.CheckpointManager(root) as mgr:
    mgr.save(5, args=ocp.args.StandardSave({'params': tiny_preset_params}))
    mgr.save(12, args=ocp.args.StandardSave({'params': later}))
    mgr.wait_until_finished()
  params, step = t5x.load_t5x_checkpoint_with_step(root)
  assert step == 12
  assert t5x.find_t5x_checkpoint(root) == os.path.join(root, '12')
  _assert_same(params, jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), later))
  params5, step5 = t5x.load_t5x_checkpoint_with_step(os.path.join(root, '5'))
  assert step5 == 5
  _assert_same(params5, tiny_preset_params)


def test_orbax_without_parameters_is_rejected(tmp_path):
  import orbax.checkpoint as ocp

  path = str(tmp_path / 'other')
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, {'weights': {'w': np.ones((3,), np.float32)}})
  with pytest.raises(ValueError, match='No parameter tree found.*weights'):
    t5x.load_t5x_checkpoint(path)


# --------------------------------------------------------------------------------------------------
# Errors.


def test_missing_path(tmp_path):
  missing = tmp_path / 'no_such_checkpoint'
  with pytest.raises(FileNotFoundError, match='no_such_checkpoint.*does not exist.*expected'):
    t5x.load_t5x_checkpoint(str(missing))


def test_directory_of_neither_layout(tmp_path):
  (tmp_path / 'notes.txt').write_text('not a checkpoint')
  (tmp_path / 'weights.npz').write_bytes(b'')
  with pytest.raises(ValueError, match=r'is not a T5X checkpoint \(it contains: notes.txt'):
    t5x.load_t5x_checkpoint(str(tmp_path))
  with pytest.raises(ValueError, match='is a file, not a T5X checkpoint'):
    t5x.load_t5x_checkpoint(str(tmp_path / 'notes.txt'))
  empty_step = tmp_path / 'run' / 'checkpoint_7'
  empty_step.mkdir(parents=True)
  with pytest.raises(ValueError, match='checkpoint_7.*none holds a readable checkpoint'):
    t5x.load_t5x_checkpoint(str(tmp_path / 'run'))


@needs_tiny
def test_deleted_zarr_chunk(tmp_path):
  ckpt = _copy_tiny(tmp_path)
  os.remove(ckpt / 'target.token_embedder.embedding' / '3.0')
  with pytest.raises(FileNotFoundError,
                     match=r"'token_embedder/embedding'.*target\.token_embedder\.embedding.*3\.0"):
    t5x.load_t5x_checkpoint(str(ckpt))
  # Opting in reads the missing chunk as the zarr fill value, as tensorstore does.
  params = t5x.load_t5x_checkpoint(str(ckpt), allow_missing_chunks=True)
  emb = params['token_embedder']['embedding']
  want = _read_zarr_reference(os.path.join(TINY, 'target.token_embedder.embedding'))
  assert np.all(emb[3 * 4096:4 * 4096] == 0)
  np.testing.assert_array_equal(emb[:3 * 4096], want[:3 * 4096])


@needs_tiny
def test_corrupt_or_missing_zarr_array(tmp_path):
  ckpt = _copy_tiny(tmp_path)
  with open(ckpt / 'target.decoder.logits_dense.kernel' / '0.1', 'wb') as f:
    f.write(b'definitely not gzip')
  with pytest.raises(ValueError, match=r"'decoder/logits_dense/kernel'.*corrupt"):
    t5x.load_t5x_checkpoint(str(ckpt))
  shutil.rmtree(ckpt / 'target.decoder.logits_dense.kernel')
  with pytest.raises(FileNotFoundError,
                     match=r"'decoder/logits_dense/kernel'.*is missing.*\.zarray"):
    t5x.load_t5x_checkpoint(str(ckpt))


@needs_tiny
def test_corrupt_msgpack(tmp_path):
  ckpt = _copy_tiny(tmp_path)
  data = (ckpt / 'checkpoint').read_bytes()
  (ckpt / 'checkpoint').write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match='Could not decode the T5X msgpack checkpoint file'):
    t5x.load_t5x_checkpoint(str(ckpt))


@needs_tiny
def test_shape_mismatch_surfaces_through_check_params(tiny):
  params, _ = tiny
  config = t5x.t5x_config_from_params(params, relative_attention_max_distance=8)
  wrong = PromptableT5(config.replace(mlp_dim=16))
  with pytest.raises(ValueError, match=r"'decoder/layers_0/mlp/wi_0/kernel' has shape \(4, 8\)"):
    wrong.check_params(params, include_prompt=False)
  with pytest.raises(ValueError, match='mlp/wi_0/kernel'):
    wrong.init_params(jax.random.PRNGKey(0), transformer_params=params)
  with pytest.raises(ValueError, match="'encoder/layers_2/.*missing"):
    PromptableT5(config.replace(num_encoder_layers=3)).check_params(params, include_prompt=False)


def test_original_t5_tree_round_trips_and_is_inferred(tmp_path):
  """An original-T5 tree under T5X's names (`mlp/wi`, no `decoder/logits_dense`, as T5X's t5_1_0 checkpoints)
  survives export -> import (T5X's classic layout) bit for bit, and its architecture is inferred."""
  from flax import traverse_util
  config = get_config('tiny', vocab_size=64, num_decoder_layers=1, mlp_activations=('relu',),
                      logits_via_embedding=True)
  rng = np.random.RandomState(0)
  shapes = traverse_util.flatten_dict(PromptableT5(config).param_shapes(),
                                      is_leaf=lambda _, x: isinstance(x, tuple))
  params = traverse_util.unflatten_dict({k: rng.standard_normal(s).astype(np.float32)
                                         for k, s in shapes.items()})
  assert 'wi' in params['encoder']['layers_0']['mlp'] and 'logits_dense' not in params['decoder']
  got = t5x.load_t5x_checkpoint(t5x.export_t5x_checkpoint(params, str(tmp_path), 1, layout='classic'))
  flat = traverse_util.flatten_dict(got)
  assert sorted(flat) == sorted(traverse_util.flatten_dict(params))
  for k, v in traverse_util.flatten_dict(params).items():
    assert flat[k].tobytes() == v.tobytes(), k
  assert t5x.t5x_config_from_params(got, 16) == config
  # T5.1.1's names give T5.1.1.
  v11 = get_config('tiny', vocab_size=64, num_decoder_layers=1)
  zeros = jax.tree_util.tree_map(np.zeros, PromptableT5(v11).param_shapes(),
                                 is_leaf=lambda x: isinstance(x, tuple))
  assert t5x.t5x_config_from_params(zeros, 16) == v11


def test_config_inference_errors():
  with pytest.raises(ValueError, match="'token_embedder/embedding' is missing"):
    t5x.t5x_config_from_params({'encoder': {}, 'decoder': {}})
  params = {
      'token_embedder': {'embedding': np.zeros((10, 6))},
      'encoder': {'relpos_bias': {'rel_embedding': np.zeros((4, 8))},
                  'layers_0': {'attention': {'query': {'kernel': np.zeros((6, 6))}},
                               'mlp': {'wi_0': {'kernel': np.zeros((6, 12))}}}},
      'decoder': {'relpos_bias': {'rel_embedding': np.zeros((4, 8))},
                  'logits_dense': {'kernel': np.zeros((6, 10))}, 'layers_0': {}},
  }
  with pytest.raises(ValueError, match='not a multiple of the 4 heads'):
    t5x.t5x_config_from_params(params)
