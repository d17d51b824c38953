"""Prompt initializers, export/import, and prompt-only training through an optax mask."""

import jax
import numpy as np
import optax
import pytest

import reference_t5 as ref
from promptjax.models import PromptConfig, PromptableT5, export_prompt, get_config

CFG = get_config('tiny', vocab_size=6000)


def _transformer():
  return PromptableT5(CFG).init_params(jax.random.PRNGKey(0))


def test_vocab_sample_rows_come_from_the_first_5000_embeddings():
  tp = _transformer()
  emb = np.asarray(tp['token_embedder']['embedding'])
  model = PromptableT5(CFG, PromptConfig(kind='shallow', length=20))
  p = np.asarray(model.init_params(jax.random.PRNGKey(1), tp)['prompt']['prompt'])
  assert p.shape == (20, CFG.emb_dim)
  ids = [np.flatnonzero((emb == row).all(-1)) for row in p]
  assert all(len(i) == 1 and i[0] < 5000 for i in ids)
  assert len({int(i[0]) for i in ids}) == 20  # without replacement
  again = np.asarray(model.init_params(jax.random.PRNGKey(1), tp)['prompt']['prompt'])
  np.testing.assert_array_equal(p, again)


def test_uniform_and_class_label_inits():
  tp = _transformer()
  emb = np.asarray(tp['token_embedder']['embedding'])
  u = PromptableT5(CFG, PromptConfig(kind='shallow', length=7, init='uniform', init_range=0.25))
  p = np.asarray(u.init_params(jax.random.PRNGKey(0), tp)['prompt']['prompt'])
  assert p.shape == (7, CFG.emb_dim) and np.abs(p).max() <= 0.25 and p.std() > 0.05
  labels = ((4273,), (150, 2087))  # a one-piece and a two-piece label word
  c = PromptableT5(CFG, PromptConfig(kind='shallow', length=5, init='class_labels',
                                     init_labels=labels))
  p = np.asarray(c.init_params(jax.random.PRNGKey(0), tp)['prompt']['prompt'])
  np.testing.assert_allclose(p[0], emb[4273])
  np.testing.assert_allclose(p[1], (emb[150] + emb[2087]) / 2, rtol=1e-6)
  assert all((emb[:5000] == r).all(-1).any() for r in p[2:])


def test_deep_vocab_init_is_each_layers_projection_of_the_sampled_embeddings():
  tp = _transformer()
  model = PromptableT5(CFG, PromptConfig(kind='deep', length=3))
  prompt = model.init_params(jax.random.PRNGKey(4), tp)['prompt']
  rms = lambda x, s: x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * np.asarray(s)
  # Recover the sampled rows from the shallow init with the same key (same sampler).
  rows = np.asarray(PromptableT5(CFG, PromptConfig(kind='shallow', length=3)).init_params(
      jax.random.PRNGKey(4), tp)['prompt']['prompt'], np.float64)
  lp = tp['encoder']['layers_1']
  x = rms(rows, lp['pre_attention_layer_norm']['scale'])
  np.testing.assert_allclose(prompt['encoder']['layers_1']['attention']['key'],
                             x @ np.asarray(lp['attention']['key']['kernel']), rtol=1e-5, atol=1e-6)
  lp = tp['decoder']['layers_0']
  x = rms(rows, tp['encoder']['encoder_norm']['scale'])
  np.testing.assert_allclose(prompt['decoder']['layers_0']['encoder_decoder_attention']['value'],
                             x @ np.asarray(lp['encoder_decoder_attention']['value']['kernel']),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('kind,suffix', [('shallow', '.npy'), ('deep', '.npz')])
def test_export_and_file_init_round_trip(tmp_path, kind, suffix):
  model = PromptableT5(CFG, PromptConfig(kind=kind, length=4, init='uniform'))
  params = model.init_params(jax.random.PRNGKey(0))
  path = export_prompt(params['prompt'], str(tmp_path / 'p'))
  assert path.endswith(suffix)
  if kind == 'shallow':
    np.testing.assert_array_equal(np.load(path), params['prompt']['prompt'])
  loaded = PromptableT5(CFG, PromptConfig(kind=kind, length=4, init='file', init_file=path))
  p2 = loaded.init_params(jax.random.PRNGKey(9), transformer_params={
      k: v for k, v in params.items() if k != 'prompt'})
  for a, b in zip(jax.tree_util.tree_leaves(params['prompt']),
                  jax.tree_util.tree_leaves(p2['prompt'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  wrong = PromptableT5(CFG, PromptConfig(kind=kind, length=5, init='file', init_file=path))
  with pytest.raises(ValueError, match='shape'):
    wrong.init_params(jax.random.PRNGKey(0))


def test_bad_prompt_configs():
  with pytest.raises(ValueError, match='Unknown prompt kind'):
    PromptConfig(kind='medium')
  with pytest.raises(ValueError, match='Unknown prompt init'):
    PromptConfig(kind='shallow', init='zeros')
  with pytest.raises(ValueError, match='init_file'):
    PromptConfig(kind='shallow', init='file')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    PromptableT5(CFG, PromptConfig(kind='shallow', init='file', init_file='/no/such.npy')
                 ).init_params(jax.random.PRNGKey(0))


@pytest.mark.parametrize('kind', ['shallow', 'deep'])
def test_prompt_only_training_by_mask(kind):
  """With optax.multi_transform freezing the transformer, only the prompt moves and the loss falls."""
  model = PromptableT5(get_config('tiny', vocab_size=64), PromptConfig(kind=kind, length=4))
  params = model.init_params(jax.random.PRNGKey(0))
  batch = ref.make_batch(64)
  labels = {k: ('train' if k == 'prompt' else 'freeze') for k in params}
  tx = optax.multi_transform({'train': optax.adam(0.05), 'freeze': optax.set_to_zero()}, labels)
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(lambda q: model.loss_fn(q, batch)[0])(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  new, first = params, None
  for _ in range(30):
    new, state, loss = step(new, state)
    first = first if first is not None else float(loss)
  assert float(loss) < first - 0.1
  for k in params:
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(params[k]),
                                                     jax.tree_util.tree_leaves(new[k])))
    assert same == (k != 'prompt'), k
