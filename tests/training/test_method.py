"""The `Method` protocol as an extension point: the README's example method runs through the generic loop."""

import os
import re

import jax
import numpy as np

from promptjax.models import PromptableT5, PromptConfig, get_config
from promptjax.training import trainer
from promptjax.training.method import Method, MultiTask
from tests.training.test_trainer import VOCAB, _batches

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'README.md')


def _example_class():
  blocks = re.findall(r'```python\n(.*?)```', open(README, encoding='utf-8').read(), re.S)
  block = next(b for b in blocks if 'class ClippedMultiTask' in b)
  ns = {}
  exec(compile(block.replace("module='my_methods'", "module='test_method_readme'"), 'README.md[method]',
               'exec'), ns)
  return ns['ClippedMultiTask']


def _run(tmp_path, name, method, model):
  return trainer.train(model_dir=str(tmp_path / name), model=model, method=method, total_steps=3,
                       trainable='all', batches=iter(_batches()), mesh_shape=(1, 1), progress=False,
                       async_checkpointing=False)


def test_readme_example_method_runs_through_the_loop(tmp_path):
  cls = _example_class()
  model = PromptableT5(get_config('tiny', vocab_size=VOCAB, dropout_rate=0.0), PromptConfig(kind='shallow', length=4))
  cfg = trainer.DatasetConfig('none', {'inputs': 16, 'targets': 4}, batch_size=8)
  assert isinstance(cls(cfg), Method) and isinstance(MultiTask(cfg), Method)
  plain = _run(tmp_path, 'mtl', MultiTask(cfg), model)
  # A cap above every loss changes nothing: the same losses and parameters as MultiTask (the independent
  # reference here is the MTL gradient of `train_step.loss_and_grads`, a different code path).
  loose = _run(tmp_path, 'loose', cls(cfg, max_loss=1e9), model)
  np.testing.assert_allclose([loose.losses[i] for i in (1, 2, 3)], [plain.losses[i] for i in (1, 2, 3)], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(jax.device_get(loose.state.params)), jax.tree.leaves(jax.device_get(plain.state.params))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # A cap below the loss makes it constant: zero gradient, so no parameter moves and the loss is the cap.
  tight = _run(tmp_path, 'tight', cls(cfg, max_loss=0.5), model)
  assert all(v == np.float32(0.5) for v in tight.losses.values())
  before = model.init_params(jax.random.PRNGKey(0))
  for a, b in zip(jax.tree.leaves(jax.device_get(tight.state.params)), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)
  # Its signature is recorded, so resuming that run with plain MTL is refused.
  import pytest
  with pytest.raises(trainer.TrainingError, match='different model or method'):
    trainer.train(model_dir=str(tmp_path / 'tight'), model=model, method=MultiTask(cfg), total_steps=4,
                  batches=iter(_batches()), mesh_shape=(1, 1), progress=False)


def test_a_method_that_is_no_method_and_an_unimportable_task_module_are_refused(tmp_path):
  import pytest
  from promptjax.data import feeds
  from promptjax.errors import DataError
  model = PromptableT5(get_config('tiny', vocab_size=VOCAB), PromptConfig(kind='shallow', length=4))
  with pytest.raises(trainer.TrainingError, match='must implement promptjax.training.method.Method'):
    trainer.train(model_dir=str(tmp_path / 'x'), model=model, method=object(), total_steps=1, progress=False)
  assert not (tmp_path / 'x').exists()   # refused before anything is written
  with pytest.raises(DataError, match="MIXTURE_OR_TASK_MODULE='no_such.module' cannot be imported"):
    feeds.import_task_module('no_such.module')
