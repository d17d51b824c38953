"""Mesh, logical-axis rules, parameter / optimizer-state / batch shardings.

conftest.py gives 8 CPU devices; the expected specs below are written out by hand from the rules
(T5X's standard rules: vocab / mlp / heads / joined_kv -> 'model', embed -> None, or 'data' in 2-D).
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
import numpy as np
import optax
import pytest

from flax import traverse_util
from promptjax.models import PromptConfig, PromptableT5, get_config
from promptjax.training import partitioning as pt

CFG = get_config('tiny')  # emb 8, heads 2 x head_dim 4 (joined_kv 8), mlp 16, vocab 32128
SHALLOW = PromptableT5(CFG, PromptConfig(kind='shallow', length=4))
DEEP = PromptableT5(CFG, PromptConfig(kind='deep', length=3))


def _norm(spec):
  """PartitionSpec as a tuple without trailing Nones (P(None) == P())."""
  t = tuple(spec)
  while t and t[-1] is None:
    t = t[:-1]
  return t


def _flat(tree, is_leaf=None):
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return {jax.tree_util.keystr(p, simple=True, separator='/'): v for p, v in leaves}


def _specs(shardings):
  return {k: _norm(s.spec) for k, s in _flat(
      shardings, is_leaf=lambda s: isinstance(s, NamedSharding)).items()}


def _batch(seed, b=8, n=6, t=4, vocab=CFG.vocab_size):
  rs = np.random.default_rng(seed)
  enc = rs.integers(1, vocab, (b, n), dtype=np.int32)
  dec = rs.integers(1, vocab, (b, t), dtype=np.int32)
  enc[:, -2:] = 0  # padding
  dec[1::2, -1] = 0
  return {'encoder_input_tokens': enc, 'decoder_target_tokens': dec}


@pytest.fixture(scope='module', autouse=True)
def _fast_compiles():
  """XLA without its expensive backend passes: the ~10 compilations here (tiny model, 8 devices,
  2 CPU cores) take about half the time; SPMD partitioning and the compared numerics are kept."""
  before = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', before)


@pytest.fixture(scope='module')
def mesh():
  return pt.create_mesh((4, 2))


_CACHE = {}


def _init(model):
  """Parameters of `model` (shared across tests: every `init_params` from scratch recompiles).

  DEEP's come from `init_params(PRNGKey(0))`; SHALLOW gets the same transformer weights.
  """
  if model not in _CACHE:
    if model is DEEP:
      _CACHE[model] = DEEP.init_params(jax.random.PRNGKey(0))
    else:
      transformer = {k: v for k, v in _init(DEEP).items() if k != 'prompt'}
      _CACHE[model] = model.init_params(jax.random.PRNGKey(0), transformer)
  return _CACHE[model]


# --------------------------------------------------------------------------------------------------
# Mesh.


def test_create_mesh_shapes():
  m = pt.create_mesh((4, 2))
  assert m.axis_names == ('data', 'model') and dict(m.shape) == {'data': 4, 'model': 2}
  assert dict(pt.create_mesh(num_partitions=2).shape) == {'data': 4, 'model': 2}
  assert dict(pt.create_mesh((-1, 4)).shape) == {'data': 2, 'model': 4}
  assert dict(pt.create_mesh((2, -1)).shape) == {'data': 2, 'model': 4}
  small = pt.create_mesh((2, 2))  # one process: a smaller mesh uses the first devices
  assert small.devices.size == 4
  assert set(small.devices.flat) <= set(jax.devices())


def test_mesh_errors_name_the_fix():
  with pytest.raises(pt.PartitioningError) as e:
    pt.create_mesh((4, 2), devices=jax.devices()[:1])
  msg = str(e.value)
  assert 'mesh (4, 2) needs 8 devices but 1 is available' in msg
  assert 'XLA_FLAGS=--xla_force_host_platform_device_count=8' in msg
  assert 'MESH_SHAPE macro' in msg
  with pytest.raises(pt.PartitioningError, match='needs 16 devices but 8 are available'):
    pt.create_mesh((8, 2))
  with pytest.raises(pt.PartitioningError, match='num_partitions=3 does not divide the 8'):
    pt.create_mesh(num_partitions=3)
  with pytest.raises(pt.PartitioningError, match='3 does not divide the 8'):
    pt.create_mesh((3, -1))
  with pytest.raises(pt.PartitioningError, match='two integers'):
    pt.create_mesh((8,))
  assert issubclass(pt.PartitioningError, ValueError)


class _FakeDevice:
  platform = 'gpu'

  def __init__(self, i, process):
    self.id, self.process_index = i, process


def test_multi_process_mesh_checks():
  uneven = [_FakeDevice(i, 0 if i < 3 else 1) for i in range(8)]  # 3 + 5 devices
  with pytest.raises(pt.PartitioningError, match='every process must contribute the same number'):
    pt.create_mesh((4, 2), devices=uneven)
  two_hosts = [_FakeDevice(i, i // 4) for i in range(8)]  # 2 processes x 4 devices
  with pytest.raises(pt.PartitioningError, match=r'uses 4 of 8 devices.*MESH_SHAPE=\(-1, 2\)'):
    pt.create_mesh((2, 2), devices=two_hosts)
  with pytest.raises(pt.PartitioningError, match='straddle hosts'):
    pt.create_mesh(num_partitions=8, devices=[_FakeDevice(i, i // 6) for i in range(24)])
  mesh = pt.create_mesh((2, 4), devices=two_hosts)  # model groups within a process
  assert [[d.process_index for d in row] for row in mesh.devices] == [[0] * 4, [1] * 4]


# --------------------------------------------------------------------------------------------------
# Rules and parameter shardings.


def test_standard_rules():
  rules = dict(reversed(pt.standard_logical_axis_rules()))  # first rule per name wins
  assert rules['batch'] == 'data' and rules['vocab'] == 'model' and rules['mlp'] == 'model'
  assert rules['heads'] == 'model' and rules['joined_kv'] == 'model'
  for name in ('embed', 'kv', 'relpos_buckets', 'length', 'prompt'):
    assert rules[name] is None
  two_d = pt.standard_logical_axis_rules(parameter_partitioning_dims=2)
  assert dict(reversed(two_d))['embed'] == 'data'
  over = pt.standard_logical_axis_rules(overrides={'prompt': 'model'},
                                        additional_rules=[('my_axis', 'data')])
  assert over[0] == ('prompt', 'model') and ('prompt', None) not in over
  assert over[-1] == ('my_axis', 'data')
  with pytest.raises(pt.PartitioningError, match="mesh axes are"):
    pt.standard_logical_axis_rules(additional_rules=[('x', 'tensor')])
  with pytest.raises(pt.PartitioningError, match='must be 1 or 2'):
    pt.standard_logical_axis_rules(parameter_partitioning_dims=3)


EXPECTED_1D = {  # (data=4, model=2), parameter_partitioning_dims=1
    'token_embedder/embedding': ('model',),                      # (vocab, embed)
    'decoder/logits_dense/kernel': (None, 'model'),              # (embed, vocab)
    'encoder/layers_0/attention/query/kernel': (None, 'model'),  # (embed, joined_kv)
    'encoder/layers_1/attention/out/kernel': ('model',),         # (joined_kv, embed)
    'decoder/layers_1/encoder_decoder_attention/value/kernel': (None, 'model'),
    'decoder/layers_0/mlp/wi_1/kernel': (None, 'model'),         # (embed, mlp)
    'encoder/layers_0/mlp/wo/kernel': ('model',),                # (mlp, embed)
    'encoder/relpos_bias/rel_embedding': ('model',),             # (heads, relpos_buckets)
    'decoder/decoder_norm/scale': (),                            # (embed,)
}
EXPECTED_2D = {  # parameter_partitioning_dims=2: embed -> data
    'token_embedder/embedding': ('model', 'data'),
    'decoder/logits_dense/kernel': ('data', 'model'),
    'encoder/layers_1/attention/out/kernel': ('model', 'data'),
    'encoder/layers_0/mlp/wo/kernel': ('model', 'data'),
    'encoder/relpos_bias/rel_embedding': ('model',),
    'decoder/decoder_norm/scale': ('data',),
}


@pytest.mark.parametrize('model', [SHALLOW, DEEP], ids=['shallow', 'deep'])
def test_param_shardings_follow_the_rules(mesh, model):
  specs = _specs(pt.param_shardings(model, mesh))
  assert set(specs) == set(_flat(model.param_shapes(), is_leaf=lambda x: isinstance(x, tuple)))
  for key, spec in EXPECTED_1D.items():
    assert specs[key] == spec, key
  if model is SHALLOW:
    assert specs['prompt/prompt'] == ()  # (prompt, embed)
  else:
    assert specs['prompt/encoder/layers_1/attention/key'] == (None, 'model')  # (prompt, joined_kv)
    assert specs['prompt/decoder/layers_0/self_attention/value'] == (None, 'model')
  # The same from the logical-axes tree (+ shapes) and from the boxed abstract parameters.
  from_axes = pt.param_shardings(model.logical_axes(), mesh, shapes=model.param_shapes())
  assert _specs(from_axes) == specs
  assert _specs(pt.param_shardings(model.abstract_params(), mesh)) == specs
  two_d = _specs(pt.param_shardings(model, mesh, pt.standard_logical_axis_rules(1, 2)))
  for key, spec in EXPECTED_2D.items():
    assert two_d[key] == spec, key


def test_non_divisible_dims_fall_back_to_replication():
  mesh = pt.create_mesh((2, 3))  # vocab 32128, heads 2, joined_kv 8, mlp 16: none divides by 3
  specs = _specs(pt.param_shardings(SHALLOW, mesh))
  assert all(s == () for s in specs.values()), {k: s for k, s in specs.items() if s}
  # 2-D: embed 8 over data=2 still shards; the vocab dim of the same array is replicated.
  specs = _specs(pt.param_shardings(SHALLOW, mesh, pt.standard_logical_axis_rules(1, 2)))
  assert specs['token_embedder/embedding'] == (None, 'data')
  params = pt.place(_init(SHALLOW), pt.param_shardings(SHALLOW, mesh,
                                                       pt.standard_logical_axis_rules(1, 2)))
  emb = params['token_embedder']['embedding']
  assert _norm(emb.sharding.spec) == (None, 'data')
  assert emb.addressable_shards[0].data.shape == (CFG.vocab_size, CFG.emb_dim // 2)


# --------------------------------------------------------------------------------------------------
# Initialization, loss and gradients.


def test_sharded_init_equals_init_params(mesh):
  ref = _init(DEEP)  # DEEP.init_params(PRNGKey(0))
  params = pt.sharded_init(DEEP, jax.random.PRNGKey(0), mesh)
  shardings = pt.param_shardings(DEEP, mesh)
  flat_ref, flat, flat_s = _flat(ref), _flat(params), _flat(
      shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
  assert set(flat) == set(flat_ref)
  for k in flat_ref:
    assert flat[k].sharding.is_equivalent_to(flat_s[k], flat[k].ndim), k
    np.testing.assert_array_equal(np.asarray(flat[k]), np.asarray(flat_ref[k]), err_msg=k)
  emb = params['token_embedder']['embedding']
  assert emb.addressable_shards[0].data.shape == (CFG.vocab_size // 2, CFG.emb_dim)
  # The shardings themselves may be passed instead of the rules (same compiled init, cached).
  again = pt.sharded_init(DEEP, jax.random.PRNGKey(0), mesh, shardings)
  np.testing.assert_array_equal(np.asarray(again['decoder']['logits_dense']['kernel']),
                                np.asarray(ref['decoder']['logits_dense']['kernel']))
  # From existing host transformer weights (a loaded checkpoint): placed, only the prompt is new.
  host = jax.tree_util.tree_map(np.asarray, {k: v for k, v in ref.items() if k != 'prompt'})
  for model in (SHALLOW, DEEP):
    rng = jax.random.PRNGKey(7)
    placed = _flat(pt.sharded_init(model, rng, mesh, transformer_params=host))
    want = _flat(model.init_params(rng, host))
    assert set(placed) == set(want)
    for k, v in want.items():
      np.testing.assert_array_equal(np.asarray(placed[k]), np.asarray(v), err_msg=k)
    specs = _specs(pt.param_shardings(model, mesh))
    assert all(_norm(placed[k].sharding.spec) == specs[k] for k in placed)
  with pytest.raises(ValueError, match='missing'):
    pt.sharded_init(SHALLOW, rng, mesh, transformer_params={'encoder': host['encoder']})


@pytest.mark.parametrize('model', [SHALLOW, DEEP], ids=['shallow', 'deep'])
def test_sharded_loss_and_grads_equal_single_device(mesh, model):
  params = _init(model)
  batch = _batch(1)
  grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
  (loss, aux), grads = jax.jit(grad_fn)(params, batch)  # one device

  shardings = pt.param_shardings(model, mesh)
  s_params = pt.place(params, shardings)
  s_batch = pt.make_global_batch(batch, mesh)
  b_shard = pt.batch_sharding(mesh)
  assert _norm(s_batch['encoder_input_tokens'].sharding.spec) == ('data',)
  assert s_batch['encoder_input_tokens'].addressable_shards[0].data.shape == (2, 6)
  step = jax.jit(grad_fn, in_shardings=(shardings, {k: b_shard for k in batch}),
                 out_shardings=((pt.replicated_sharding(mesh), None), shardings))
  (s_loss, s_aux), s_grads = step(s_params, s_batch)

  assert abs(float(s_loss) - float(loss)) <= 1e-5
  np.testing.assert_allclose(float(s_aux['num_tokens']), float(aux['num_tokens']))
  flat_g, flat_s = _flat(grads), _flat(s_grads)
  assert max(float(jnp.max(jnp.abs(g))) for g in flat_g.values()) > 1e-3  # non-trivial grads
  for k, g in flat_g.items():
    np.testing.assert_allclose(np.asarray(flat_s[k]), np.asarray(g), rtol=0, atol=1e-5, err_msg=k)
  assert _norm(s_grads['decoder']['logits_dense']['kernel'].sharding.spec) == (None, 'model')


# --------------------------------------------------------------------------------------------------
# Optimizer state.


def _find(specs, field, param):
  hits = [s for k, s in specs.items() if f'/{field}/' in f'/{k}/' and k.endswith(param)]
  assert len(hits) == 1, (field, param, [k for k in specs if k.endswith(param)])
  return hits[0]


def _random_like(tree, seed):
  rs = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: (0.1 * rs.standard_normal(x.shape)).astype(np.float32), tree)


def _check_update_matches(opt, model, mesh, o_shard):
  params = _init(model)
  grads = _random_like(params, 1)
  state = opt.init(params)
  upd, new_state = jax.jit(opt.update)(grads, state, params)
  p_shard = pt.param_shardings(model, mesh)
  s_params, s_grads = pt.place(params, p_shard), pt.place(grads, p_shard)
  s_state = pt.sharded_optimizer_init(opt, s_params, o_shard)
  is_sharding = lambda x: isinstance(x, NamedSharding)
  for a, s in zip(jax.tree_util.tree_leaves(s_state),
                  jax.tree_util.tree_leaves(o_shard, is_leaf=is_sharding)):
    assert a.sharding.is_equivalent_to(s, a.ndim)
  s_upd, s_new = jax.jit(opt.update, in_shardings=(p_shard, o_shard, p_shard),
                         out_shardings=(p_shard, o_shard))(s_grads, s_state, s_params)
  for a, b in zip(jax.tree_util.tree_leaves((upd, new_state)),
                  jax.tree_util.tree_leaves((s_upd, s_new))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
  return upd, new_state, grads


def test_adafactor_state_shardings(mesh):
  opt = optax.adafactor(learning_rate=0.1, min_dim_size_to_factor=4)
  p_shard = pt.param_shardings(SHALLOW, mesh)
  o_shard = pt.optimizer_state_shardings(opt, SHALLOW.abstract_params(), p_shard, mesh)
  state = pt.abstract_optimizer_state(opt, SHALLOW.abstract_params())
  assert jax.tree_util.tree_structure(o_shard) == jax.tree_util.tree_structure(state)
  specs = _specs(o_shard)
  shapes = {k: v.shape for k, v in _flat(state).items()}
  # optax factors over d1, d0 = the two largest dims (argsort order); v_row drops d0, v_col d1.
  # [vocab, embed]: d0 = vocab, so v_row is [embed] and v_col is [vocab].
  emb = 'token_embedder/embedding'
  assert shapes[next(k for k in shapes if '/v_row/' in f'/{k}/' and k.endswith(emb))] == (8,)
  assert _find(specs, 'v_row', emb) == ()          # (embed,)
  assert _find(specs, 'v_col', emb) == ('model',)  # (vocab,)
  # Square [embed, joined_kv] (8, 8): v_row drops dim 1 (keeps embed), v_col drops dim 0.
  q = 'encoder/layers_0/attention/query/kernel'
  assert _find(specs, 'v_row', q) == ()
  assert _find(specs, 'v_col', q) == ('model',)
  o = 'decoder/layers_1/self_attention/out/kernel'  # (joined_kv, embed) 8x8
  assert _find(specs, 'v_row', o) == ('model',)
  assert _find(specs, 'v_col', o) == ()
  wo = 'encoder/layers_1/mlp/wo/kernel'  # (mlp 16, embed 8): d0 = mlp
  assert _find(specs, 'v_row', wo) == () and _find(specs, 'v_col', wo) == ('model',)
  # Unfactored: rel_embedding (2, 8) has a dim < 4 -> full v with the parameter's spec; 1-D scale.
  assert _find(specs, 'v', 'encoder/relpos_bias/rel_embedding') == ('model',)
  assert _find(specs, 'v', 'decoder/logits_dense/kernel') == ()  # factored: v is a (1,) placeholder
  assert shapes[next(k for k in shapes if '/v/' in f'/{k}/' and
                     k.endswith('decoder/logits_dense/kernel'))] == (1,)
  assert _find(specs, 'v', 'encoder/encoder_norm/scale') == ()  # 1-D: unfactored, (embed,)
  counts = [s for k, s in specs.items() if k.endswith('count')]
  assert counts and all(s == () for s in counts)
  _, new_state, grads = _check_update_matches(opt, SHALLOW, mesh, o_shard)
  # The square kernel's v_row really is indexed by dim 0 (embed): after the first step (decay 0) it
  # is the mean of grad^2 over dim 1.
  g = np.asarray(grads['encoder']['layers_0']['attention']['query']['kernel'])
  v_row = [v for k, v in _flat(new_state).items() if '/v_row/' in f'/{k}/' and k.endswith(q)]
  np.testing.assert_allclose(np.asarray(v_row[0]), (g * g).mean(axis=1), rtol=1e-5)


def test_multi_transform_state_shardings(mesh):
  params_shapes = DEEP.param_shapes()
  labels = {k: jax.tree_util.tree_map(lambda _: 'train' if k == 'prompt' else 'freeze', v,
                                      is_leaf=lambda x: isinstance(x, tuple))
            for k, v in params_shapes.items()}
  opt = optax.multi_transform({'train': optax.adafactor(0.1, min_dim_size_to_factor=2),
                               'freeze': optax.set_to_zero()}, labels)
  p_shard = pt.param_shardings(DEEP, mesh)
  o_shard = pt.optimizer_state_shardings(opt, DEEP.abstract_params(), p_shard, mesh)
  specs = _specs(o_shard)
  # Only prompt leaves have state; masked-out leaves are MaskedNodes (no leaves).
  per_param = [k for k in specs if '/v' in k]
  assert per_param and all('prompt/' in k for k in per_param)
  key = 'prompt/encoder/layers_0/attention/key'  # (prompt 3, joined_kv 8): d0 = joined_kv
  assert _find(specs, 'v_row', key) == ()          # (prompt,)
  assert _find(specs, 'v_col', key) == ('model',)  # (joined_kv,)
  upd, _, _ = _check_update_matches(opt, DEEP, mesh, o_shard)
  assert float(jnp.abs(upd['encoder']['layers_0']['mlp']['wo']['kernel']).max()) == 0.0


def test_adam_and_masked_state_shardings(mesh):
  mask = {k: k == 'prompt' for k in SHALLOW.param_shapes()}
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.masked(optax.adam(1e-3), mask))
  p_shard = pt.param_shardings(SHALLOW, mesh)
  o_shard = pt.optimizer_state_shardings(opt, SHALLOW.abstract_params(), p_shard, mesh)
  specs = _specs(o_shard)
  assert _find(specs, 'mu', 'prompt/prompt') == () and _find(specs, 'nu', 'prompt/prompt') == ()
  opt2 = optax.adam(1e-3)
  specs2 = _specs(pt.optimizer_state_shardings(opt2, SHALLOW.abstract_params(), p_shard, mesh))
  assert _find(specs2, 'mu', 'decoder/logits_dense/kernel') == (None, 'model')
  assert _find(specs2, 'nu', 'token_embedder/embedding') == ('model',)


# --------------------------------------------------------------------------------------------------
# Batches.


def test_batch_not_divisible_by_data_axis(mesh):
  batch = _batch(0, b=6)
  with pytest.raises(pt.PartitioningError) as e:
    pt.make_global_batch(batch, mesh)
  msg = str(e.value)
  assert ("global batch size 6 of feature 'encoder_input_tokens' is not divisible by the mesh's "
          'data axis (4)') in msg
  assert 'multiple of 4' in msg
  good = pt.make_global_batch(_batch(0, b=4), mesh)
  np.testing.assert_array_equal(np.asarray(good['decoder_target_tokens']),
                                _batch(0, b=4)['decoder_target_tokens'])
