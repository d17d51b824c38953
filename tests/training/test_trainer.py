"""The trainer end to end: CLI + gin on the bundled data, methods' trainable groups, mesh equivalence,
exact resume after SIGKILL, SIGTERM checkpoints, and bad inputs (one message, exit 2, checkpoints intact)."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from promptjax.models import PromptableT5, PromptConfig, get_config
from promptjax.training import optimizers, trainer
from promptjax.training.method import MultiTask
import tests.helpers as h
from tests.training.common import dry_run_reports

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB = 1664  # the mini vocabulary (1500 pieces + 100 extra ids), padded to a multiple of 128
LENGTHS = {'inputs': 64, 'targets': 8}


def cli_args(model_dir, steps, *extra, method='mtl_prompt.gin'):
  return ['--gin_file=runs/train.gin', '--gin_file=models/t5_1_1_tiny.gin', f'--gin_file={method}',
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='mini_train'",
          f'--gin.TRAIN_STEPS={steps}', '--gin.BATCH_SIZE=8',
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
          f'--gin.promptjax.models.get_config.vocab_size={VOCAB}',
          '--gin.promptjax.models.PromptConfig.length=4', '--gin.CHECKPOINT_PERIOD=3', *extra]


def run_cli(args):
  """`promptjax train <args>` in this process (the interrupted runs below are subprocesses)."""
  return h.run_cli(['train', *args])


def popen_cli(args):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.Popen([sys.executable, '-m', 'promptjax.train', *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)


def restore_params(model_dir, step):
  import orbax.checkpoint as ocp
  with ocp.CheckpointManager(model_dir, options=ocp.CheckpointManagerOptions(step_prefix='checkpoint')) as m:
    return m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']


def _wait_for(path, proc, timeout=300):
  t0 = time.time()
  while not os.path.exists(path):
    if proc.poll() is not None or time.time() - t0 > timeout:
      return False
    time.sleep(0.2)
  return True


def _error_line(stderr):
  lines = [l for l in stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1, stderr[-2000:]
  return lines[0]


# ---------------------------------------------------------------------------------------------------


STEPS = 15


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  """One uninterrupted CLI run of the MTL-T✓P✓ method on the bundled data (shared by several tests)."""
  model_dir = tmp_path_factory.mktemp('straight')
  out = run_cli(cli_args(model_dir, STEPS))
  assert out.returncode == 0, out.stderr[-3000:]
  return model_dir, out


def test_cli_run_on_bundled_data_loss_falls_and_writes_t5x_layout(straight_run):
  model_dir, out = straight_run
  first, last = out.stdout.strip().splitlines()[-1].split(' ... ')
  assert float(last.split('loss ')[1]) < float(first.split('loss ')[1]) - 0.5
  names = set(os.listdir(model_dir))
  assert {f'checkpoint_{STEPS - 3}', f'checkpoint_{STEPS}', 'config.gin', 'model-info.txt', 'train'} <= names
  assert 'MIXTURE_OR_TASK_NAME' in open(model_dir / 'config.gin').read()
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(model_dir / 'train'))


def _batches(n=3, batch=8, seed=0):
  rng = np.random.RandomState(seed)
  out = []
  for _ in range(n):
    enc = rng.randint(3, VOCAB - 100, size=(batch, 16)).astype(np.int32)
    tgt = rng.randint(3, VOCAB - 100, size=(batch, 4)).astype(np.int32)
    tgt[:, -1] = 1
    out.append({'encoder_input_tokens': enc, 'decoder_target_tokens': tgt})
  return out


@pytest.mark.parametrize('trainable,kind', [('transformer', 'none'), ('prompt', 'shallow'), ('all', 'deep')])
def test_each_method_changes_only_its_trainable_group(tmp_path, trainable, kind):
  model = PromptableT5(get_config('tiny', vocab_size=VOCAB), PromptConfig(kind=kind, length=4))
  cfg = trainer.DatasetConfig('none', {'inputs': 16, 'targets': 4}, batch_size=8)
  before = model.init_params(jax.random.PRNGKey(0))
  result = trainer.train(model_dir=str(tmp_path), model=model, method=MultiTask(cfg), total_steps=3,
                         trainable=trainable, batches=iter(_batches()), progress=False, async_checkpointing=False)
  after = jax.device_get(result.state.params)
  trained = {'transformer': {'token_embedder', 'encoder', 'decoder'}, 'prompt': {'prompt'},
             'all': {'token_embedder', 'encoder', 'decoder', 'prompt'}}[trainable]
  assert set(after) == set(before)
  for group in before:
    leaves_b, leaves_a = jax.tree.leaves(before[group]), jax.tree.leaves(after[group])
    if group in trained:
      assert all(not np.array_equal(a, b) for a, b in zip(leaves_a, leaves_b)), group
    else:
      assert all(np.array_equal(a, b) for a, b in zip(leaves_a, leaves_b)), group


def test_mesh_4x2_matches_one_device():
  model = PromptableT5(get_config('tiny', vocab_size=VOCAB), PromptConfig(kind='deep', length=4))
  cfg = trainer.DatasetConfig('none', {'inputs': 16, 'targets': 4}, batch_size=8)
  runs = {}
  for name, mesh in (('one', (1, 1)), ('mesh', (4, 2))):
    import tempfile
    with tempfile.TemporaryDirectory() as d:
      runs[name] = trainer.train(model_dir=d, model=model, method=MultiTask(cfg, 2 if name == "mesh" else 1),
                                 total_steps=5,
                                 mesh_shape=mesh, batches=iter(_batches(5)), progress=False, async_checkpointing=False)
  a, b = runs['one'].losses, runs['mesh'].losses
  assert sorted(a) == list(range(1, 6))
  np.testing.assert_allclose([a[i] for i in a], [b[i] for i in a], atol=1e-5, rtol=0)
  for x, y in zip(jax.tree.leaves(jax.device_get(runs['one'].state.params)),
                  jax.tree.leaves(jax.device_get(runs['mesh'].state.params))):
    np.testing.assert_allclose(x, y, atol=1e-5)


def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, straight_run):
  straight, _ = straight_run
  killed = tmp_path / 'killed'
  proc = popen_cli(cli_args(killed, STEPS))
  reached = _wait_for(killed / 'checkpoint_3' / 'commit_success.txt', proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert reached, 'the run never wrote checkpoint_3'
  out = run_cli(cli_args(killed, STEPS))
  assert out.returncode == 0, out.stderr[-3000:]
  a, b = restore_params(straight, STEPS), restore_params(killed, STEPS)
  assert int(a['step']) == int(b['step']) == STEPS
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sigterm_saves_a_complete_checkpoint_and_exits_cleanly(tmp_path):
  proc = popen_cli(cli_args(tmp_path, 100000))
  assert _wait_for(tmp_path / 'checkpoint_3' / 'commit_success.txt', proc)
  proc.send_signal(signal.SIGTERM)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  assert 'preempted: checkpoint saved' in stdout
  steps = sorted(int(n.split('_')[1]) for n in os.listdir(tmp_path) if n.startswith('checkpoint_'))
  last = steps[-1]
  assert last < 100000 and os.path.exists(tmp_path / f'checkpoint_{last}' / 'commit_success.txt')
  assert int(restore_params(tmp_path, last)['step']) == last


# ---------------------------------------------------------------------------------------------------
# bad inputs


def cli_inprocess(args):
  out = h.run_cli(['train', *args])
  return out.returncode, out.stderr


@pytest.mark.parametrize('extra,expected', [
    (['--gin_file=runs/nope.gin'], "gin file 'runs/nope.gin' not found"),
    (['--gin.promptjax.training.train.learning_rat=0.1'], "bad gin binding --gin.promptjax.training.train.learning_rat=0.1: Configurable 'promptjax.training.train' doesn't have a parameter named 'learning_rat'"),
    (["--gin.MIXTURE_OR_TASK_NAME='mini_trian'"], 'Did you mean: mini_train'),
    (['--gin.MESH_SHAPE=(16, 2)'], 'needs 32 devices'),
])
def test_bad_inputs(tmp_path, extra, expected):
  code, stderr = cli_inprocess(cli_args(tmp_path / 'run', 3) + extra)
  assert code == 2 and expected in _error_line(stderr)
  assert not os.path.exists(tmp_path / 'run')


def test_required_macros_are_named(tmp_path):
  code, stderr = cli_inprocess(['--gin_file=runs/finetune.gin', '--gin_file=models/t5_1_1_tiny.gin',
                                "--gin.MIXTURE_OR_TASK_NAME='mini_train'", '--gin.TRAIN_STEPS=2'])
  assert code == 2 and 'required gin macro(s) not set: MODEL_DIR' in _error_line(stderr)


def test_checkpoint_of_another_model_size_is_refused_and_left_intact(tmp_path, straight_run):
  """(The NaN guard's checkpoints: tests/training/test_hardening.py.)"""
  import shutil
  model_dir = tmp_path / 'run'
  shutil.copytree(straight_run[0], model_dir)
  before = {n: open(model_dir / n).read() for n in ('config.gin', 'model-info.txt')}
  good = restore_params(model_dir, STEPS)
  code, stderr = cli_inprocess(cli_args(model_dir, STEPS + 6) + ['--gin.promptjax.models.get_config.emb_dim=16'])
  assert code == 2
  line = _error_line(stderr)
  assert f'checkpoint_{STEPS} was written by a different model' in line
  assert 'emb_dim: checkpoint 8 vs now 16' in line
  assert {n: open(model_dir / n).read() for n in before} == before
  for x, y in zip(jax.tree.leaves(good), jax.tree.leaves(restore_params(model_dir, STEPS))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_dry_run_of_every_paper_config_prints_memory():
  # {large, xl} x {t0, ppt, mtl_prompt, mtl_prompt_deep, fomaml(_deep), reptile(_deep)}, and §5's small meta-batch
  # Reptile; the evaluation-only rows (no continued pretraining, the official T0) are checked by tests/test_ledger.py.
  papers = sorted(f for f in os.listdir(os.path.join(REPO, 'promptjax', 'configs', 'paper'))
                  if f.startswith('wu2022') and not f.endswith(('_no_cont_pretraining.gin', '_t0_official.gin')))
  assert len(papers) == 17
  for name, report in dry_run_reports(papers):
    assert 'per-device memory' in report and "mesh: {'data'" in report, name
    size = 'xl' if '_xl_' in name else 'large'
    # T5.1.1 parameter counts (Raffel et al.): ~783M (Large), ~2.85B (XL) for the transformer.
    total = int(next(l for l in report.splitlines() if l.strip().startswith('total')).split()[1].replace(',', ''))
    assert (7.5e8 < total < 8.0e8) if size == 'large' else (2.8e9 < total < 2.9e9), (name, total)
    if 'fomaml' in name or 'reptile' in name:   # App. C: meta-batch 128, T = 7, batch 16, all parameters
      clones = 16 if 'small_meta_batch' in name else 128    # §5: a (T + 1)x smaller meta-batch
      assert 'meta-learning: ' in report and f'meta-batch {clones} clones x (support 16 x 7 steps' in report, name
      assert 'trainable: all' in report, name


def test_initial_checkpoint_loads_the_transformer_and_initializes_a_fresh_prompt(tmp_path):
  from promptjax.checkpoints import hf
  config = get_config('tiny', vocab_size=VOCAB)
  source = PromptableT5(config).init_params(jax.random.PRNGKey(7))
  hf.export_hf(source, config, str(tmp_path / 'hf'))
  model = PromptableT5(config, PromptConfig(kind='shallow', length=4))
  cfg = trainer.DatasetConfig('none', {'inputs': 16, 'targets': 4}, batch_size=8)
  result = trainer.train(model_dir=str(tmp_path / 'run'), model=model, method=MultiTask(cfg), total_steps=0,
                         trainable='prompt', initial_checkpoint_path=str(tmp_path / 'hf'),
                         batches=iter(_batches()), progress=False)
  params = jax.device_get(result.state.params)
  for group in ('token_embedder', 'encoder', 'decoder'):
    for a, b in zip(jax.tree.leaves(params[group]), jax.tree.leaves(source[group])):
      np.testing.assert_array_equal(a, b)
  # vocab_sample: each prompt row is a row of the *loaded* embedding.
  emb = np.asarray(source['token_embedder']['embedding'])
  for row in np.asarray(params['prompt']['prompt']):
    assert np.any(np.all(emb == row, axis=1))
  # A checkpoint of another size is refused with the fix named.
  other = PromptableT5(get_config('tiny', vocab_size=VOCAB, emb_dim=16, head_dim=8))
  with pytest.raises(trainer.TrainingError, match='does not fit the model.*model gin file'):
    trainer.train(model_dir=str(tmp_path / 'run2'), model=other, method=MultiTask(cfg), total_steps=0,
                  initial_checkpoint_path=str(tmp_path / 'hf'), batches=iter(_batches()), progress=False)


def test_multiprocess_flag_auto_initializes(monkeypatch):
  from promptjax import cli
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *a, **k: calls.append((a, k)))
  args = type('Args', (), {'multiprocess': True, 'process_count': None})()
  cli._init_distributed(args)
  assert calls == [((), {})]


def test_checkpoint_signature_of_an_earlier_promptjax_is_t5_1_1():
  """A checkpoint written before T5Config.mlp_activations / logits_via_embedding records neither: resuming it
  with the same (T5.1.1) model is accepted, with an original-T5 model refused."""
  import json
  model = PromptableT5(get_config('tiny'))
  now = json.loads(json.dumps(trainer.model_signature(model, 'all')))
  old = {**now, 'config': {k: v for k, v in now['config'].items()
                           if k not in ('mlp_activations', 'logits_via_embedding')}}
  assert trainer._with_config_defaults(old) == now
  v10 = PromptableT5(get_config('tiny', mlp_activations=('relu',), logits_via_embedding=True))
  assert trainer._with_config_defaults(old) != json.loads(json.dumps(trainer.model_signature(v10, 'all')))
