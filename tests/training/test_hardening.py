"""Mistakes a user can make, and what a run must never do (in-process, no subprocess start-up):

- the NaN guard keeps no checkpoint of diverged parameters and names the last good one;
- an unreadable newest checkpoint stops with one message naming the previous one; `restore_fallback`
  resumes from it;
- a refused resume, or any refused command, leaves the run's record (``config.gin``, ``model-info.txt``)
  untouched and creates no MODEL_DIR;
- evaluation never drops a checkpoint's trained prompt silently;
- bad command lines give one ``error:`` line (exit 2): a MODEL_DIR that is a file, gin syntax errors,
  no model file, ``--multiprocess`` off a cluster, negative TRAIN_STEPS, misspelled or unused macros,
  unquoted strings, T5X step counts;
- Ctrl-C is a preemption (save, stop); a second one aborts;
- KEEP_BEST keeps (and never prunes) the checkpoint of the lowest validation loss, recomputed from the
  validated parameters; EARLY_STOPPING_PATIENCE stops the run, and a resumed run knows it.
"""

import functools
import glob
import json
import hashlib
import os
import shutil
import signal

import gin
import jax
import numpy as np
import optax
import pytest

from promptjax import cli
from promptjax.checkpoints import restore
from promptjax.errors import TrainingError
from promptjax.models import PromptableT5, PromptConfig, get_config
from promptjax.training import optimizers, trainer
from promptjax.training.method import MultiTask
import tests.helpers as h
from tests.training.common import setup

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train(model_dir, total_steps, *, lr=1e-3, period=2, batches=None, model=None, **kw):
  base, cfg, data = setup()
  return trainer.train(model_dir=str(model_dir), model=model or base, method=MultiTask(cfg),
                       total_steps=total_steps, optimizer=optimizers.adafactor(learning_rate=lr),
                       checkpoint_period=period, batches=iter(data * 4 if batches is None else batches), progress=False,
                       log_period=1, async_checkpointing=False, **kw)


def _steps(model_dir):
  return sorted(int(n.split('_')[1]) for n in os.listdir(model_dir)
                if n.startswith('checkpoint_') and n.split('_')[1].isdigit())


def _digest(path):
  h = hashlib.sha256()
  for f in sorted(glob.glob(os.path.join(path, '**'), recursive=True)):
    if os.path.isfile(f):
      h.update(f.encode())
      h.update(open(f, 'rb').read())
  return h.hexdigest()


def _loss_at(model_dir, step):
  """The model's loss at a checkpoint's parameters, computed independently of the trainer."""
  model, _, data = setup()
  _, params = restore.load_params(model, os.path.join(str(model_dir), f'checkpoint_{step}'))
  return float(model.loss_fn(params, data[0])[0])


@pytest.fixture(scope='module')
def good_run(tmp_path_factory):
  """4 steps, checkpoints at 2 and 4, a run record."""
  model_dir = tmp_path_factory.mktemp('good') / 'run'
  _train(model_dir, 4, run_record={'config.gin': 'RECORD A\n'})
  return model_dir


# ---------------------------------------------------------------------------------------------------
# The NaN guard


def test_nan_guard_keeps_no_diverged_checkpoint_and_names_the_last_good_one(tmp_path, good_run):
  model_dir = tmp_path / 'run'
  shutil.copytree(good_run, model_dir)
  before = _digest(model_dir / 'checkpoint_4')
  # lr 1e30: the first update from checkpoint_4 overflows; checkpoint_5 would be written from it.
  with pytest.raises(TrainingError) as e:
    _train(model_dir, 10, lr=1e30, period=1)
  message = str(e.value)
  assert 'diverged' in message and 'checkpoint_4' in message and 'last good checkpoint' in message
  assert _steps(model_dir) == [2, 4], message          # checkpoint_5 (diverged) is gone
  assert _digest(model_dir / 'checkpoint_4') == before
  for step in _steps(model_dir):                        # every checkpoint left gives a finite loss
    assert np.isfinite(_loss_at(model_dir, step))
  # ... and the run resumes from it with a sane learning rate.
  result = _train(model_dir, 6, period=1)
  assert result.step == 6 and all(np.isfinite(v) for v in result.losses.values())


def test_final_checkpoint_is_probed_before_it_is_written(tmp_path, good_run):
  model_dir = tmp_path / 'run'
  shutil.copytree(good_run, model_dir)
  # The last update diverges: no next step checks it, the probe does.
  with pytest.raises(TrainingError, match='checkpoint_4 .* is the last good checkpoint') as e:
    _train(model_dir, 5, lr=1e30, period=100)
  assert 'not' in str(e.value) and 'saved' in str(e.value)
  assert _steps(model_dir) == [2, 4]


def _scalars(directory, tag):
  import tensorflow as tf
  values = {}
  for f in sorted(glob.glob(os.path.join(str(directory), 'events.out.tfevents*'))):
    for event in tf.compat.v1.train.summary_iterator(f):
      for v in event.summary.value:
        if v.tag == tag:
          values[event.step] = float(tf.make_ndarray(v.tensor)) if v.HasField('tensor') else v.simple_value
  return values


def test_learning_rate_and_the_gin_config_are_logged(good_run):
  assert _scalars(good_run / 'train', 'learning_rate') == pytest.approx({1: 1e-3, 2: 1e-3, 3: 1e-3, 4: 1e-3})
  import tensorflow as tf
  texts = [tf.make_ndarray(v.tensor).item().decode() for f in glob.glob(str(good_run / 'train' / 'events*'))
           for event in tf.compat.v1.train.summary_iterator(f) for v in event.summary.value if v.tag == 'config']
  assert texts == ['    RECORD A']


# ---------------------------------------------------------------------------------------------------
# Unreadable checkpoints


@pytest.mark.parametrize('damage', ['arrays', 'metadata'])
def test_unreadable_newest_checkpoint_names_the_previous_and_falls_back_on_request(tmp_path, good_run, damage):
  model_dir = tmp_path / 'run'
  shutil.copytree(good_run, model_dir)
  if damage == 'arrays':
    for f in glob.glob(str(model_dir / 'checkpoint_4' / 'state' / '**' / 'd' / '*'), recursive=True):  # array data
      data = open(f, 'rb').read()
      open(f, 'wb').write(data[:len(data) // 2])
  else:
    open(model_dir / 'checkpoint_4' / 'meta' / 'metadata', 'wb').write(b'\xff\xfe garbage')
  good = _digest(model_dir / 'checkpoint_2')
  with pytest.raises(TrainingError) as e:
    _train(model_dir, 6)
  message = str(e.value)
  assert 'checkpoint_4 cannot be restored' in message and 'previous checkpoint is checkpoint_2' in message
  assert '--restore_fallback' in message and '\n' not in message
  assert _digest(model_dir / 'checkpoint_2') == good and _steps(model_dir) == [2, 4]
  result = _train(model_dir, 6, restore_fallback=True)
  assert min(result.losses) == 3 and result.step == 6     # resumed after step 2
  assert os.path.isdir(model_dir / 'checkpoint_4.unreadable')
  assert _steps(model_dir) == [2, 4, 6]


# ---------------------------------------------------------------------------------------------------
# Run records and MODEL_DIR


def test_refused_resume_keeps_the_run_record(tmp_path, good_run):
  model_dir = tmp_path / 'run'
  shutil.copytree(good_run, model_dir)
  record = {n: open(model_dir / n).read() for n in ('config.gin', 'model-info.txt')}
  base, _, _ = setup()
  longer = PromptableT5(base.config, PromptConfig(kind='shallow', length=8))
  with pytest.raises(TrainingError, match='prompt.length: checkpoint 4 vs now 8'):
    _train(model_dir, 6, model=longer, run_record={'config.gin': 'RECORD B\n'})
  assert {n: open(model_dir / n).read() for n in record} == record


def test_refused_start_creates_no_model_dir(tmp_path):
  with pytest.raises(TrainingError, match='exceeds the 1100000 steps .* TRAIN_STEPS=7715'):
    _train(tmp_path / 'run', 1107715, initial_checkpoint_path='/nowhere/checkpoint_1100000')
  with pytest.raises(TrainingError, match='no data'):
    _train(tmp_path / 'run', 3, batches=[])  # an empty data stream
  assert not os.path.exists(tmp_path / 'run')


# ---------------------------------------------------------------------------------------------------
# Evaluation keeps the prompt


def test_eval_refuses_to_drop_a_trained_prompt(good_run):
  model, _, _ = setup()
  bare = PromptableT5(model.config, PromptConfig(kind='none'))
  path = str(good_run / 'checkpoint_4')
  with pytest.raises(restore.RestoreError, match='holds a trained shallow prompt of length 4.*USE_PROMPT=False'):
    restore.load_params(bare, path)
  _, params = restore.load_params(bare, path, use_prompt=False)   # said explicitly: evaluated without it
  assert 'prompt' not in params
  _, params = restore.load_params(model, path)
  assert params['prompt']['prompt'].shape == (4, model.config.emb_dim)


# ---------------------------------------------------------------------------------------------------
# The command line: one error line, exit 2, nothing written


def _cli(*args):
  out = h.run_cli(args)
  return out.returncode, out.errors


def _train_args(model_dir, *extra):
  return ['train', '--gin_file=runs/train.gin', '--gin_file=models/t5_1_1_mini.gin', '--gin_file=mtl_prompt.gin',
          "--gin.MIXTURE_OR_TASK_NAME='mini_train'", '--gin.BATCH_SIZE=8', '--gin.TRAIN_STEPS=2',
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
          '--gin.promptjax.models.PromptConfig.length=4', f"--gin.MODEL_DIR='{model_dir}'", *extra]


@pytest.mark.parametrize('extra,expected', [
    (['--gin.TRAIN_STEPS=(2'], 'bad gin binding --gin.TRAIN_STEPS=(2: the value is not complete'),
    (['--gin.TRAIN_STEPS=-5'], 'TRAIN_STEPS must be 0 or more, got -5'),
    (['--gin.BATCH_SIZ=2'], '--gin.BATCH_SIZ is not read by any configuration of this command: did you mean BATCH_SIZE?'),
    (['--gin.CHECKPOINT_PERIODD=1'], 'did you mean CHECKPOINT_PERIOD?'),
    (['--gin.USE_CACHED_TASKS=False'], 'USE_CACHED_TASKS is not read by any configuration of this command: it is a T5X macro'),
    (['--gin.EVAL_OUTPUT_DIR=None'], '--gin.EVAL_OUTPUT_DIR is not read'),
    (['--gin.INITIAL_CHECKPOINT_PATH=runs/x'], """a string value needs quotes inside the shell quotes: --gin.INITIAL_CHECKPOINT_PATH="'runs/x'\""""),
    (['--gin.MESH_SHAPE=(16, 2)'], 'MESH_SHAPE'),
    (['--multiprocess'], 'multi-host start-up failed'),
])
def test_bad_command_lines_give_one_error_line_and_write_nothing(tmp_path, extra, expected):
  model_dir = tmp_path / 'run'
  code, lines = _cli(*_train_args(model_dir, *extra))
  assert code == 2 and len(lines) == 1 and expected in lines[0], lines
  assert not os.path.exists(model_dir)


def test_model_dir_that_is_a_file_and_missing_model_file(tmp_path):
  (tmp_path / 'file').write_text('not a directory')
  code, lines = _cli(*_train_args(tmp_path / 'file'))
  assert code == 2 and len(lines) == 1 and 'is a file, not a directory' in lines[0]
  args = [a for a in _train_args(tmp_path / 'run') if 'models/' not in a]
  code, lines = _cli(*args)
  assert code == 2 and len(lines) == 1 and 'no model configuration: add a model gin file' in lines[0]
  assert not os.path.exists(tmp_path / 'run')


def test_t5x_macros_are_honoured(tmp_path):
  cli.register_gin_configurables()
  gin.clear_config()
  try:
    cli.parse_gin(['runs/train.gin', 'models/t5_1_1_mini.gin', 'mtl_prompt.gin'],
                  ['DROPOUT_RATE = 0.1', 'RANDOM_SEED = 7', 'EVAL_PERIOD = 5'], [])
    from promptjax.models import get_config
    assert gin.get_configurable(get_config)().dropout_rate == 0.1
    resolve = lambda name: gin.query_parameter(name).scoped_configurable_fn()
    assert resolve('promptjax.training.train.seed') == 7
    assert resolve('promptjax.training.train.eval_period') == 5
    assert resolve('promptjax.training.train.eval_dataset_cfg').split == 'validation'
  finally:
    gin.clear_config()


def test_per_command_help_and_absl_flags(capsys, monkeypatch):
  with pytest.raises(SystemExit) as e:
    cli.main(['eval', '--help'])
  assert e.value.code == 0
  text = capsys.readouterr().out
  assert '--gin_file' in text and 'main macros: CHECKPOINT_PATH' in text and '--alsologtostderr' in text
  monkeypatch.delenv('TFDS_DATA_DIR', raising=False)
  code, lines = _cli('compare', '--logtostderr', '--tfds_data_dir=/tmp/tfds')
  assert code == 2 and 'compare needs run directories' in lines[0]
  assert os.environ['TFDS_DATA_DIR'] == '/tmp/tfds'


def test_ctrl_c_is_a_preemption_and_a_second_one_aborts():
  with trainer._Preemption() as p:  # pylint: disable=protected-access
    os.kill(os.getpid(), signal.SIGINT)
    assert p.requested and p.signal_name == 'SIGINT'
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  with trainer._Preemption() as p:  # pylint: disable=protected-access
    os.kill(os.getpid(), signal.SIGTERM)
    assert p.signal_name == 'SIGTERM'


def test_prefix_lm_corpus_without_text_says_so(tmp_path):
  from promptjax.errors import DataError
  from promptjax.tasks import self_supervised
  (tmp_path / 'empty.txt').write_text('\n')
  task = self_supervised.register_prefix_lm_task('test_empty_prefix_lm', lambda: str(tmp_path), 'mini', family='mini')
  with pytest.raises(DataError, match='no documents found'):
    task.get_dataset(sequence_length={'inputs': 16, 'targets': 16}, split='train')


def test_short_form_includes_the_run_file():
  """`promptjax train --gin_file=mtl_prompt.gin --gin_file=models/...` needs no runs/train.gin."""
  import argparse
  args = argparse.Namespace(command='train', gin_file=['mtl_prompt.gin', 'models/t5_1_1_mini.gin'],
                            gin_bindings=[], gin_search_paths=[])
  gin.clear_config()
  try:
    cli._configure(args, ["MODEL_DIR = '/tmp/x'", 'TRAIN_STEPS = 3'])  # pylint: disable=protected-access
    assert gin.query_parameter('promptjax.training.train.model_dir') is not None
    assert gin.query_parameter('promptjax.models.PromptConfig.length') == 20   # the method file still applies
  finally:
    gin.clear_config()


class _ValidatedOn(MultiTask):
  """MultiTask validated (the `Method.validation` hook) by the mean token loss of one fixed batch; keeps a
  host copy of every validated parameter set."""

  def __init__(self, cfg, batch):
    super().__init__(cfg)
    self.val, self.seen = batch, []

  def validation(self, model, mesh, num_batches, trainable):
    from promptjax.training.method import meta_validation
    fn = meta_validation(jax.jit(lambda p, b: model.loss_fn(p, b)[0]), lambda: iter([self.val]), 1, mesh)

    def evaluate(params):
      self.seen.append(jax.device_get(params))
      return fn(params)
    return evaluate


def _token_loss(model, params, batch):
  """Mean token cross-entropy from the model's logits with a numpy log-softmax (not the trainer's loss)."""
  logits = np.asarray(_logits(model, params, batch['encoder_input_tokens'], batch['decoder_target_tokens']),
                      np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  t = batch['decoder_target_tokens']
  nll = -np.take_along_axis(logp, t[..., None], -1)[..., 0]
  return float((nll * (t > 0)).sum() / (t > 0).sum())


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, params, inputs, targets):
  return model.decode(params, *model.encode(params, inputs), targets)


def test_keep_best_keeps_the_lowest_validation_loss_and_early_stopping(tmp_path):
  """The validation loss falls while the run trains on the validation batch and rises once it trains on
  other targets. With validation every 2 steps, KEEP_BEST and KEEP_CHECKPOINTS=1 (no periodic checkpoint),
  `best` is the checkpoint of the lowest validation loss (recomputed here from the validated parameters),
  written at its step and never pruned; EARLY_STOPPING_PATIENCE=2 stops two validations later, and a rerun resumes the
  record and trains no further."""
  _, cfg, data = setup()
  model = PromptableT5(get_config('tiny', vocab_size=256, num_encoder_layers=1, num_decoder_layers=1),
                       PromptConfig(kind='shallow', length=4))
  val = data[0]
  other = {**val, 'decoder_target_tokens': data[1]['decoder_target_tokens']}
  run_dir = str(tmp_path / 'run')

  def run(method, start):
    return trainer.train(model_dir=run_dir, model=model, method=method, total_steps=12, optimizer=optax.adam(0.05),
                         checkpoint_period=100, keep_checkpoints=1, eval_period=2, keep_best=True,
                         early_stopping_patience=2, batches=iter(([val] * 2 + [other] * 10)[start:]),
                         progress=False, async_checkpointing=False, dropout_seed=None)

  method = _ValidatedOn(cfg, val)
  first = run(method, 0)
  losses = {2 * i: _token_loss(model, p, val) for i, p in enumerate(method.seen, start=1)}   # steps 2, 4, ...
  best = min(losses, key=losses.get)
  assert max(losses) == first.step == best + 4 and first.stopped_early, losses   # it went up, twice
  assert first.best_step == best
  np.testing.assert_allclose([first.validation_losses[s] for s in losses], list(losses.values()), rtol=1e-5)
  record = json.load(open(os.path.join(run_dir, 'best.json')))
  assert record['step'] == best and record['checkpoint'] == f'checkpoint_{best}'
  np.testing.assert_allclose(record['validation_loss'], losses[best], rtol=1e-5)
  # The best checkpoint holds the parameters validated at that step, and `best` is a CHECKPOINT_PATH
  # (the eval and downstream commands' loader) for it; KEEP_CHECKPOINTS=1 pruned every other but the last.
  assert _steps(run_dir) == sorted({best, first.step})
  _, got, info = restore.load_params_with_info(model, os.path.join(run_dir, 'best'))
  assert info.step == best and info.path == os.path.join(run_dir, f'checkpoint_{best}')
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(method.seen[best // 2 - 1])):
    np.testing.assert_array_equal(x, y)
  # A rerun restores the validation record from the checkpoint: no patience left, nothing is trained.
  again = run(_ValidatedOn(cfg, val), first.step)
  assert again.stopped_early and again.step == first.step and again.losses == {} and again.best_step == best
  assert again.validation_losses == first.validation_losses
  with pytest.raises(TrainingError, match='EVAL_PERIOD'):
    trainer.train(model_dir=str(tmp_path / 'none'), model=model, method=MultiTask(cfg), total_steps=1,
                  keep_best=True, batches=iter(data), progress=False)
