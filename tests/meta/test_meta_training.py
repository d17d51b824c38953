"""Meta-learning through the trainer: trainable groups, mesh equivalence, exact resume, the CLI on the
bundled data with every method gin file, paper configs' dry runs, and bad inputs."""

import os
import tempfile

import jax
import numpy as np
import optax
import pytest

from promptjax.meta import MetaConfig, MetaLearning
from promptjax.data.meta_sampler import MetaDataConfig
from promptjax.models import PromptableT5, PromptConfig, get_config
from promptjax.training import trainer
import tests.helpers as h
from tests.training.common import dry_run_reports

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB = 128
M, T, B, N, L = 4, 2, 2, 12, 4


def small_model(kind='shallow'):
  return PromptableT5(get_config('tiny', vocab_size=VOCAB, num_encoder_layers=1, num_decoder_layers=1),
                      PromptConfig(kind=kind, length=3))


def meta_batches(n, seed=0):
  rng = np.random.RandomState(seed)
  out = []
  for _ in range(n):
    b = {}
    for part, lead in (('support', (M, T, B)), ('query', (M, B))):
      enc = rng.randint(3, VOCAB, size=lead + (N,)).astype(np.int32)
      tgt = rng.randint(3, VOCAB, size=lead + (L,)).astype(np.int32)
      tgt[..., -1] = 1
      b[f'{part}/encoder_input_tokens'] = enc
      b[f'{part}/decoder_target_tokens'] = tgt
    out.append(b)
  return out


DATA = MetaDataConfig('none', {'inputs': N, 'targets': L}, meta_batch_size=M, inner_steps=T, support_batch_size=B,
                      query_batch_size=B, module=None)  # batches are given, nothing is read


def run(model_dir, meta, steps, trainable='all', mesh=(1, 1), batches=None, kind='shallow'):
  return trainer.train(model_dir=model_dir, model=small_model(kind), total_steps=steps, trainable=trainable,
                       method=MetaLearning(meta, DATA), batches=iter(batches or meta_batches(steps)),
                       mesh_shape=mesh, progress=False, async_checkpointing=False, checkpoint_period=2)


WU_FOMAML = MetaConfig('fomaml', inner_steps=T, inner_optimizer=optax.adafactor(1e-3, multiply_by_parameter_scale=False,
                                                                                   decay_rate=0.8),
                       inner_learning_rate=1e-3)
QIN_MAML = MetaConfig('maml', inner_steps=T, inner_optimizer=optax.sgd(3e-2), inner_learning_rate=3e-2,
                      inner_global_norm_clip=None)


@pytest.mark.parametrize('meta,trainable', [(WU_FOMAML, 'all'), (QIN_MAML, 'prompt')])
def test_meta_training_changes_only_the_trainable_group(tmp_path, meta, trainable):
  model = small_model()
  before = model.init_params(jax.random.PRNGKey(0))
  result = run(str(tmp_path), meta, 2, trainable)
  after = jax.device_get(result.state.params)
  assert sorted(result.losses) == [1, 2] and all(np.isfinite(v) for v in result.losses.values())
  trained = {'all': {'token_embedder', 'encoder', 'decoder', 'prompt'}, 'prompt': {'prompt'}}[trainable]
  for group in before:
    same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after[group]), jax.tree.leaves(before[group]))]
    assert (not any(same)) if group in trained else all(same), group
  assert os.path.isdir(tmp_path / 'checkpoint_2')


def test_meta_step_on_a_4x2_mesh_matches_one_device():
  reptile = MetaConfig('reptile', inner_steps=T, inner_optimizer=optax.sgd(1e-2), inner_learning_rate=1e-2,
                       chunk_size=2)
  batches = meta_batches(3, seed=1)
  out = {}
  for name, mesh in (('one', (1, 1)), ('mesh', (4, 2))):
    with tempfile.TemporaryDirectory() as d:
      out[name] = run(d, reptile, 3, mesh=mesh, batches=batches, kind='deep')
  a, b = out['one'].losses, out['mesh'].losses
  np.testing.assert_allclose([a[i] for i in sorted(a)], [b[i] for i in sorted(a)], atol=1e-5, rtol=0)
  for x, y in zip(jax.tree.leaves(jax.device_get(out['one'].state.params)),
                  jax.tree.leaves(jax.device_get(out['mesh'].state.params))):
    np.testing.assert_allclose(x, y, atol=1e-5)


def test_meta_run_resumes_bit_identically(tmp_path):
  batches = meta_batches(4, seed=2)
  straight = run(str(tmp_path / 'straight'), WU_FOMAML, 4, batches=batches)
  run(str(tmp_path / 'resumed'), WU_FOMAML, 2, batches=batches[:2])
  resumed = run(str(tmp_path / 'resumed'), WU_FOMAML, 4, batches=batches[2:])
  assert sorted(resumed.losses) == [3, 4]
  for x, y in zip(jax.tree.leaves(jax.device_get(straight.state.params)),
                  jax.tree.leaves(jax.device_get(resumed.state.params))):
    np.testing.assert_array_equal(x, y)


def test_meta_run_refuses_a_model_without_prompt_and_mismatched_settings(tmp_path):
  model = PromptableT5(get_config('tiny', vocab_size=VOCAB), PromptConfig(kind='none'))
  with pytest.raises(trainer.TrainingError, match='adapts a prompt'):
    trainer.train(model_dir=str(tmp_path), model=model, total_steps=1, method=MetaLearning(WU_FOMAML, DATA),
                  batches=iter([]), progress=False)
  bad = MetaConfig('fomaml', inner_steps=T + 1)
  with pytest.raises(trainer.TrainingError, match='INNER_STEPS'):
    run(str(tmp_path), bad, 1)
  with pytest.raises(trainer.TrainingError, match='multiple of the clone chunk size'):
    run(str(tmp_path), MetaConfig('fomaml', inner_steps=T, chunk_size=3), 1)
  with pytest.raises(trainer.TrainingError, match="do not divide over the mesh's data axis"):
    run(str(tmp_path), WU_FOMAML, 1, mesh=(8, 1))
  assert not any(n.startswith('checkpoint_') for n in os.listdir(tmp_path))


# ------------------------------------------------------------------------------------------------
# CLI + gin on the bundled mini benchmark.

MINI_VOCAB = 1664


def cli(model_dir, method, steps, *extra):
  args = ['--gin_file=runs/train.gin', '--gin_file=models/t5_1_1_tiny.gin', f'--gin_file={method}',
          f"--gin.MODEL_DIR='{model_dir}'", f'--gin.TRAIN_STEPS={steps}',
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
          f'--gin.promptjax.models.get_config.vocab_size={MINI_VOCAB}',
          '--gin.promptjax.models.PromptConfig.length=4', '--gin.META_BATCH_SIZE=2', '--gin.INNER_STEPS=2',
          '--gin.INNER_BATCH_SIZE=2', '--gin.CLONE_CHUNK_SIZE=None', '--gin.MESH_SHAPE=(2, 1)', *extra]
  return h.run_cli(['train', *args])


def test_cli_bad_meta_setting_is_one_error_line(tmp_path):
  out = cli(tmp_path, 'fomaml.gin', 2, "--gin.MIXTURE_OR_TASK_NAME='mini_train'", '--gin.CLONE_CHUNK_SIZE=3')
  assert out.returncode == 2
  errors = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1 and 'chunk size' in errors[0], out.stderr[-2000:]


def test_cli_bad_sampler_setting_is_one_error_line(tmp_path):
  out = cli(tmp_path, 'fomaml.gin', 1, "--gin.MIXTURE_OR_TASK_NAME='mini_train'",
            "--gin.promptjax.meta.MetaDataConfig.support_mode='nope'")
  assert out.returncode == 2
  errors = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1 and "support_mode='nope'" in errors[0], out.stderr[-2000:]
  assert 'Traceback' not in out.stderr


def test_dry_run_of_every_qin_paper_config():
  # Wu et al.'s meta rows (fomaml / reptile, large / xl, shallow / deep) are dry-run with the other Wu et al.
  # rows in tests/training/test_trainer.py.
  # Table 4's rows are the MAML row with another mixture, and the fine-tuning row is a downstream run (their
  # settings: tests/test_ledger.py).
  names = sorted(f for f in os.listdir(os.path.join(REPO, 'promptjax', 'configs', 'paper'))
                 if f.startswith('qin2023') and 'tasks.gin' not in f and 'finetune' not in f)
  assert len(names) == 4
  for name, report in dry_run_reports(names):
    assert 'per-device memory' in report and 'trainable: prompt' in report, name
    if 'mtl' in name:   # Qin et al.'s MTL baseline: plain multi-task training, its steps from 20 epochs
      assert 'meta-learning: ' not in report and 'TRAIN_STEPS = @promptjax.data.epoch_steps()' in report, name
    else:
      assert 'meta-learning: ' in report and 'meta-batch 1 clones' in report, name
