"""T5X fine-tuning from a stock T5X checkpoint (``runs/finetune.gin``): T5X's own `TrainStateInitializer`
restores the real tiny T5X checkpoint into `promptjax.interop.t5x.T5XModel`, and the prompt, which the
checkpoint lacks, is initialized from the *loaded* embedding (Lester et al. 2021's vocab sampling), as
`promptjax train` initializes it on the same ``INITIAL_CHECKPOINT_PATH`` and ``RANDOM_SEED``."""


import jax
import numpy as np
import pytest

t5x = pytest.importorskip('t5x')

from promptjax.checkpoints import t5x as t5x_checkpoints  # noqa: E402
from promptjax.errors import TrainingError  # noqa: E402
from promptjax.models import PromptConfig, PromptableT5  # noqa: E402
from tests.helpers import TINY_T5X, tiny_t5x_checkpoint  # noqa: E402

TINY = TINY_T5X
INIT_VOCAB, SEED = 50, 3


@pytest.fixture(scope='module')
def tiny():
  return tiny_t5x_checkpoint()[0]


def _restore_with_t5x(net, restore_path):
  """T5X's restore of `restore_path` into `net`, with runs/finetune.gin's RestoreCheckpointConfig."""
  from t5x import partitioning, utils
  from promptjax.interop import t5x as pj_t5x
  # The tiny model has 2 heads: replicate every parameter, whatever the test's device count.
  axes = ['vocab', 'embed', 'mlp', 'heads', 'kv', 'joined_kv', 'relpos_buckets', 'prompt', 'layers',
          'length', 'abspos_buckets']
  partitioner = partitioning.PjitPartitioner(num_partitions=1,
                                             logical_axis_rules=[(a, None) for a in axes] + [('batch', 'data')])
  shapes = {'encoder_input_tokens': (8, 6), 'decoder_input_tokens': (8, 4), 'decoder_target_tokens': (8, 4),
            'decoder_loss_weights': (8, 4)}
  init = utils.TrainStateInitializer(net.optimizer_def, net.get_initial_variables, shapes, partitioner)
  cfg = utils.RestoreCheckpointConfig(path=restore_path, mode='specific', dtype='float32',
                                      assignment_map=((r'state/param_states.*', None),),
                                      fallback_to_scratch=True)
  assert isinstance(net.optimizer_def, pj_t5x.OptaxWrapper)
  return init.from_checkpoint_or_scratch([cfg], init_rng=jax.random.PRNGKey(0))


def test_prompt_is_sampled_from_the_restored_embedding(tiny):
  from promptjax.interop import t5x as pj_t5x
  config = t5x_checkpoints.t5x_config_from_params(tiny, relative_attention_max_distance=8)
  model = PromptableT5(config, PromptConfig(kind='shallow', length=5, init_vocab_size=INIT_VOCAB))
  net = pj_t5x.T5XModel(model, prompt_init_checkpoint=TINY, prompt_init_seed=SEED)
  state = _restore_with_t5x(net, TINY)
  params = jax.tree_util.tree_map(np.asarray, dict(state.params))
  # The transformer is the checkpoint's, as T5X restored it.
  flat = dict(jax.tree_util.tree_flatten_with_path(tiny)[0])
  got = dict(jax.tree_util.tree_flatten_with_path({k: v for k, v in params.items() if k != 'prompt'})[0])
  assert set(got) == set(flat)
  for path, want in flat.items():
    np.testing.assert_array_equal(got[path], want, err_msg=str(path))
  # The prompt: 5 distinct rows of the *loaded* embedding among its first INIT_VOCAB ids.
  emb = np.asarray(tiny['token_embedder']['embedding'])
  prompt = params['prompt']['prompt']
  assert prompt.shape == (5, emb.shape[1])
  ids = [np.flatnonzero((emb[:INIT_VOCAB] == row).all(axis=1)) for row in prompt]
  assert all(len(i) == 1 for i in ids), ids
  assert len({int(i[0]) for i in ids}) == 5
  # ... the very rows `promptjax train` starts from with this INITIAL_CHECKPOINT_PATH and RANDOM_SEED.
  want = model.init_params(jax.random.PRNGKey(SEED), transformer_params=tiny)['prompt']['prompt']
  np.testing.assert_array_equal(prompt, np.asarray(want))
  # Without the checkpoint, the prompt comes from the fresh embedding: not rows of the loaded one.
  fresh = pj_t5x.T5XModel(model).get_initial_variables(jax.random.PRNGKey(0))['params']['prompt']['prompt']
  assert not any((emb == np.asarray(row)).all(axis=1).any() for row in fresh)


def test_prompt_init_checkpoint_of_another_size_is_one_error(tiny, tmp_path):
  from promptjax.interop import t5x as pj_t5x
  from promptjax.models import get_config
  model = PromptableT5(get_config('mini'), PromptConfig(kind='shallow', length=5))
  net = pj_t5x.T5XModel(model, prompt_init_checkpoint=TINY)
  with pytest.raises(TrainingError, match='prompt_init_checkpoint=.*INITIAL_CHECKPOINT_PATH'):
    net.get_initial_variables(jax.random.PRNGKey(0))
  missing = pj_t5x.T5XModel(model, prompt_init_checkpoint=str(tmp_path / 'nowhere'))
  with pytest.raises(TrainingError, match='INITIAL_CHECKPOINT_PATH'):
    missing.get_initial_variables(jax.random.PRNGKey(0))
