"""``promptjax train --dry_run --compile``: the sharded step compiled for the method's abstract batch, XLA's
per-device memory next to the estimate. The arguments XLA reports must be the per-device shards of
the train state and the batch (summed here from their shapes and shardings), for multi-task learning and
first- and second-order meta-learning steps on an 8-device mesh, and the estimate must bound the compiled peak within 25% from
above (no remat: XLA:CPU does not honour it); a mesh larger than the devices is refused with the fix."""

import math

import jax
import optax
import pytest

from promptjax.data.meta_sampler import MetaDataConfig
from promptjax.meta import MetaConfig, MetaLearning
from promptjax.models import PromptableT5, PromptConfig, get_config
from promptjax.training import partitioning, trainer
from promptjax.training.method import MultiTask
import tests.helpers as h

MODEL = PromptableT5(get_config('tiny', vocab_size=128, num_heads=8, head_dim=2),
                     PromptConfig(kind='shallow', length=4))
LENGTHS = {'inputs': 16, 'targets': 4}


def _per_device_bytes(run, batch):
  """(bytes of one device's shard of every train-state leaf and batch feature, from shapes and shardings;
  of them, the one-element placeholders optax's factored Adafactor keeps for unfactored parameters, which
  the step never reads, so that jit drops them from the compiled program's arguments)."""
  total = placeholders = 0
  leaves = zip(jax.tree.leaves(run.abstract_state), jax.tree.leaves(run.state_shardings))
  for x, sharding in leaves:
    nbytes = math.prod(sharding.shard_shape(x.shape)) * x.dtype.itemsize
    total += nbytes
    placeholders += nbytes if x.shape == (1,) else 0
  batch_sharding = partitioning.batch_sharding(run.mesh)
  for x in batch.values():
    total += math.prod(batch_sharding.shard_shape(x.shape)) * x.dtype.itemsize
  return total, placeholders


@pytest.mark.parametrize('which', ['mtl', 'fomaml', 'maml'])
def test_compiled_arguments_are_the_state_and_batch_shards(which, tmp_path):
  if which == 'mtl':
    method, mesh = MultiTask(trainer.DatasetConfig('none', LENGTHS, batch_size=16)), (4, 2)
  else:   # second-order MAML: its estimate counts one inner step's Hessian-vector product (support rows twice)
    data = MetaDataConfig('none', LENGTHS, meta_batch_size=8, inner_steps=2, support_batch_size=2,
                          query_batch_size=2, module=None)
    method, mesh = MetaLearning(MetaConfig(which, inner_steps=2, inner_optimizer=optax.sgd(1e-2)), data), (8, 1)
  report = trainer.train(model_dir=str(tmp_path), model=MODEL, method=method, total_steps=1, mesh_shape=mesh,
                         dry_run=True, compile_step=True)
  compiled = report.compiled
  run = trainer.setup(MODEL, method, total_steps=1, mesh_shape=mesh)
  total, placeholders = _per_device_bytes(run, method.abstract_batch(MODEL))
  assert total - placeholders <= compiled['arguments'] <= total, (total, placeholders, compiled)
  assert compiled['aliased'] > 0                 # the donated state is reused by the outputs
  assert compiled['peak'] == (compiled['arguments'] + compiled['outputs'] - compiled['aliased']
                              + compiled['temporaries'])
  # The estimate counts what autodiff saves (`trainer._activation_bytes`); XLA fuses some of it away
  # (element-wise results recomputed inside fusions), so the program needs at most a little more.
  assert 0.5 < compiled['peak'] / report.per_device_bytes['total'] < 1.25, (compiled, report.per_device_bytes)
  assert 'compiled step (XLA for CPU, 8 devices' in report.text and 'the estimate)' in report.text
  assert not list(tmp_path.iterdir())            # a dry run writes nothing


def test_compile_needs_the_mesh_devices_and_the_dry_run(tmp_path):
  method = MultiTask(trainer.DatasetConfig('none', LENGTHS, batch_size=16))
  with pytest.raises(partitioning.PartitioningError, match='xla_force_host_platform_device_count=16'):
    trainer.train(model_dir=str(tmp_path), model=MODEL, method=method, total_steps=1, mesh_shape=(16, 1),
                  dry_run=True, compile_step=True)
  result = h.run_cli(['train', '--gin_file=runs/train.gin', '--gin_file=models/t5_1_1_tiny.gin',
                            '--gin_file=mtl_prompt.gin', f"--gin.MODEL_DIR='{tmp_path}'",
                            "--gin.MIXTURE_OR_TASK_NAME='mini_train'", '--gin.TRAIN_STEPS=1', '--compile'])
  assert result.returncode == 2 and '--compile goes with --dry_run' in result.stderr
