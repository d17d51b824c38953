"""The T5X gin files promptjax ships (`promptjax/configs/t5x`) parse as `python -m t5x.train` / `t5x.eval`
parse them (`t5x.gin_utils.parse_gin_flags`, `from __gin__ import dynamic_registration`, unknown names
refused) and build the intended `T5XModel`: its architecture and vocabulary, its prompt, and an optimizer
that updates exactly the method's trainable group (Wu et al. 2022 §3). Nothing is trained here."""

import os

import jax
import pytest

t5x = pytest.importorskip('t5x')

import gin  # noqa: E402

from promptjax.interop import t5x as pj_t5x  # noqa: E402
from tests.interop.t5x_helpers import CONFIG_DIR, parsed as _parsed  # noqa: E402


# method file: (prompt kind, prompt length, trainable group)
METHODS = {'mtl_prompt.gin': ('shallow', 20, 'all'), 'mtl_prompt_deep.gin': ('deep', 20, 'all'),
           't0.gin': ('none', None, 'transformer'), 'ppt.gin': ('shallow', 20, 'prompt'),
           'fomaml.gin': ('shallow', 20, 'all'), 'reptile.gin': ('shallow', 20, 'all')}
# model file: (promptjax.models.get_config name, vocabulary name)
MODELS = {'models/t5_1_1_mini.gin': ('mini', 'mini'),
          'models/t5_1_1_lm100k_large.gin': ('t5_1_1_lm100k_large', 't5'),
          'models/t5_1_1_lm100k_xl.gin': ('t5_1_1_lm100k_xl', 't5'),
          'models/t5_base.gin': ('t5_base', 't5'), 'models/t5_large.gin': ('t5_large', 't5'),
          'models/flan_t5_xl.gin': ('flan_t5_xl', 't5')}
TRAIN_BINDINGS = ["MODEL_DIR = '/tmp/unused'", "MIXTURE_OR_TASK_NAME = 'mini_train'", 'TRAIN_STEPS = 2',
                  "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 16}"]
EVAL_BINDINGS = ["CHECKPOINT_PATH = '/tmp/unused'", "EVAL_OUTPUT_DIR = '/tmp/unused'",
                 "MIXTURE_OR_TASK_NAME = 'mini_heldout_rank_classification'"]


def test_shipped_files_are_tested():
  shipped = {os.path.relpath(os.path.join(d, f), CONFIG_DIR) for d, _, fs in os.walk(CONFIG_DIR) for f in fs
             if f.endswith('.gin')}
  runs = {'models/promptable_t5.gin', 'runs/pretrain.gin', 'runs/finetune.gin', 'runs/eval.gin',
          'runs/promptjax_overrides.gin', 'runs/meta_pretrain.gin', 'runs/infer.gin'}
  assert shipped == set(METHODS) | set(MODELS) | runs


def _optimized_groups(model):
  """The parameter groups ('transformer', 'prompt') the model's T5X optimizer keeps state for, i.e. updates
  (`optimizers.masked_optimizer`: frozen leaves are `MaskedNode`s inside the inner optimizer and get zero
  updates). Abstract shapes only: nothing is initialized or compiled."""
  params = jax.eval_shape(model.get_initial_variables, jax.random.PRNGKey(0))['params']
  state = jax.eval_shape(model.optimizer_def.optax_optimizer.init, params)
  groups = set()
  for path, _ in jax.tree_util.tree_flatten_with_path(state.inner_states['trainable'])[0]:
    keys = [getattr(k, 'key', None) for k in path]
    groups.update('prompt' if k == 'prompt' else 'transformer' for k in keys if k in params)
  return groups


GROUPS = {'all': {'transformer', 'prompt'}, 'transformer': {'transformer'}, 'prompt': {'prompt'}}


@pytest.mark.parametrize('method', sorted(METHODS))
def test_method_files_build_the_model(method):
  kind, length, trainable = METHODS[method]
  with _parsed(['models/t5_1_1_mini.gin', method]):
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
    bound = gin.query_parameter('pj_t5x.optimizer.trainable')
    if isinstance(bound, gin.config.ConfigurableReference):   # a macro (the meta files' %TRAINABLE)
      bound = bound.scoped_configurable_fn()
    assert bound == trainable
  assert isinstance(model, pj_t5x.T5XModel) and isinstance(model.optimizer_def, pj_t5x.OptaxWrapper)
  assert model.promptable.prompt.kind == kind
  if length is not None:
    assert model.promptable.prompt.length == length
  expected = GROUPS[trainable] - ({'prompt'} if kind == 'none' else set())
  assert _optimized_groups(model) == expected


@pytest.mark.parametrize('model_file', sorted(MODELS))
def test_model_files(model_file):
  from promptjax import tasks
  from promptjax.models import get_config
  name, vocab = MODELS[model_file]
  with _parsed([model_file, 'mtl_prompt.gin']):
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
  assert model.promptable.config == get_config(name, dropout_rate=0.0)
  # the very object promptjax's tasks use, so t5x's vocabulary check passes without reading the model file
  assert model.input_vocabulary is tasks.get_vocabulary(vocab)
  assert model.output_vocabulary is tasks.get_vocabulary(vocab)
  assert model._loss_normalizing_factor == 'NUM_REAL_TARGET_TOKENS' and model._z_loss == 0.0


@pytest.mark.parametrize('run', ['runs/pretrain.gin', 'runs/finetune.gin'])
def test_train_run_files(run):
  bindings = TRAIN_BINDINGS + (["INITIAL_CHECKPOINT_PATH = '/tmp/unused'"] if 'finetune' in run else [])
  with _parsed(['models/t5_1_1_mini.gin', 'ppt.gin', run], bindings, script='train'):
    for scope in ('train', 'train_eval'):
      assert gin.query_parameter(f'{scope}/utils.DatasetConfig.pack') is False
    assert gin.query_parameter('%MIXTURE_OR_TASK_MODULE') == 'promptjax.tasks'
    assert gin.query_parameter('%USE_CACHED_TASKS') is False
    assert gin.query_parameter('%DROPOUT_RATE') == 0.0
    lr = gin.query_parameter('trainer.Trainer.learning_rate_fn').scoped_configurable_fn()
    assert float(lr(0)) == pytest.approx(1e-3)
    if 'finetune' in run:
      assert gin.query_parameter('utils.RestoreCheckpointConfig.fallback_to_scratch') is True
      # the prompt is initialized from INITIAL_CHECKPOINT_PATH's weights (T5X's RANDOM_SEED None -> 0)
      model = gin.query_parameter('%MODEL').scoped_configurable_fn()
      assert (model.prompt_init_checkpoint, model.prompt_init_seed) == ('/tmp/unused', 0)


def test_infer_run_file():
  bindings = ["CHECKPOINT_PATH = '/tmp/unused'", "INFER_OUTPUT_DIR = '/tmp/unused'",
              "MIXTURE_OR_TASK_NAME = 'mini_train'", "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 16}"]
  with _parsed(['models/t5_1_1_mini.gin', 'mtl_prompt.gin', 'runs/infer.gin'], bindings, script='infer'):
    assert gin.query_parameter('utils.DatasetConfig.split') == 'validation'
    assert gin.query_parameter('utils.RestoreCheckpointConfig.dtype') == 'float32'
    assert gin.query_parameter('%MIXTURE_OR_TASK_NAME') == 'mini_train'
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
  from t5x import decoding
  assert model._decode_fn is decoding.temperature_sample   # greedy at its default top-k of 1


def test_eval_run_file():
  with _parsed(['models/t5_1_1_mini.gin', 'mtl_prompt.gin', 'runs/eval.gin'], EVAL_BINDINGS, script='eval'):
    assert gin.query_parameter('utils.DatasetConfig.split') == 'validation'
    assert gin.query_parameter('utils.DatasetConfig.pack') is False
    assert gin.query_parameter('%MIXTURE_OR_TASK_MODULE') == 'promptjax.tasks'


@pytest.mark.parametrize('method', ['fomaml.gin', 'reptile.gin'])
def test_meta_run_file(method):
  """runs/meta_pretrain.gin makes `t5x.train` run promptjax's meta-step (`MetaTrainer`) on promptjax's
  meta-batches (`meta_dataset`), with Wu et al. 2022's App. C settings from the method file."""
  with _parsed(['models/t5_1_1_mini.gin', method, 'runs/meta_pretrain.gin'], TRAIN_BINDINGS, script='train'):
    assert gin.query_parameter('t5x.train.train.trainer_cls').configurable.wrapped is pj_t5x.MetaTrainer
    assert gin.query_parameter('t5x.train.train.get_dataset_fn').configurable.wrapped is pj_t5x.meta_dataset
    assert gin.query_parameter('t5x.train.train.train_eval_dataset_cfg') is None
    assert gin.query_parameter('%BATCH_SIZE').scoped_configurable_fn() == gin.query_parameter('%META_BATCH_SIZE') == 128
    meta = gin.query_parameter('pj_t5x.MetaTrainer.meta_config').scoped_configurable_fn()
    data = gin.query_parameter('pj_t5x.meta_dataset.data_cfg').scoped_configurable_fn()
    lr = gin.query_parameter('pj_t5x.MetaTrainer.learning_rate_fn').scoped_configurable_fn()
  assert meta.algorithm == method[:-4] and meta.inner_steps == 7 and meta.inner_learning_rate == 1e-3
  assert meta.inner_global_norm_clip == 1.0
  assert (data.meta_batch_size, data.support_batch_size, data.query_batch_size) == (128, 16, 16)
  assert float(lr(0)) == pytest.approx(1e-3)


def test_meta_dataset_resumes_at_the_checkpoint_step(tmp_path):
  """`meta_dataset` yields promptjax's meta-batches from the step of MODEL_DIR's newest readable T5X checkpoint."""
  import numpy as np
  from promptjax.data import meta_sampler
  data = meta_sampler.MetaDataConfig('mini_train', {'inputs': 32, 'targets': 8}, meta_batch_size=4, inner_steps=1,
                                     support_batch_size=2, query_batch_size=2)
  for step in (5, 7):   # T5X's orbax layout: checkpoint_<step>/state/_METADATA
    (tmp_path / f'checkpoint_{step}' / 'state').mkdir(parents=True)
    (tmp_path / f'checkpoint_{step}' / 'state' / '_METADATA').write_text('{}')
  (tmp_path / 'checkpoint_9').mkdir()   # not (yet) a readable checkpoint: not resumed from
  ds = pj_t5x.meta_dataset(None, 0, 2, data_cfg=data, model_dir=str(tmp_path), initial_step=4)
  got = next(iter(ds.as_numpy_iterator()))
  want = next(meta_sampler.meta_batches(data, start_step=3, process_index=0, process_count=2))
  assert sorted(got) == sorted(want) and got['query/encoder_input_tokens'].shape[0] == 2
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])
