"""Helpers shared by the test modules: the in-process CLI runner, small models and padded batches, the
float64 reference shim, and a plain reader of TFRecord shards (`import tests.helpers as h`)."""

import contextlib
import os
from typing import NamedTuple

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def cli(args):
  """`promptjax <args>` in this process (gin cleared before and after); returns the exit status."""
  from promptjax import cli as cli_lib
  gin.clear_config()
  try:
    return cli_lib.main(args)
  finally:
    gin.clear_config()


class CliResult(NamedTuple):
  returncode: int
  stdout: str
  stderr: str

  @property
  def errors(self):
    """The ``error:`` lines of stderr."""
    return [l for l in self.stderr.splitlines() if l.startswith('error: ')]


def run_cli(args) -> CliResult:
  """`promptjax <args>` in this process, from the repository root, with stdout and stderr captured (no
  subprocess start-up: a failure before compiling costs well under a second)."""
  import io
  import os
  out, err, cwd = io.StringIO(), io.StringIO(), os.getcwd()
  os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      code = cli(list(args))
  finally:
    os.chdir(cwd)
  return CliResult(code, out.getvalue(), err.getvalue())


# ---------------------------------------------------------------------------------------------------
# Small models and batches.


TINY_T5X = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'data',
                                         't5x_tiny', 'checkpoint_3'))


def tiny_t5x_checkpoint():
  """(params, step) of the real tiny T5X checkpoint (`TINY_T5X`, promptjax's reader); skips the test, with
  the reason, where the shared reference data is absent."""
  if not os.path.isfile(os.path.join(TINY_T5X, 'checkpoint')):
    pytest.skip(f'the real T5X tiny checkpoint {TINY_T5X} is absent: the shared reference data '
                f'(<repo>/../shared/data) only exists beside the checkout in the project setup')
  from promptjax.checkpoints import t5x
  return t5x.load_t5x_checkpoint_with_step(TINY_T5X)


def tiny_prompt_model(vocab=64, length=3, **prompt):
  """One encoder and one decoder layer of the `tiny` preset with a shallow soft prompt (uniform init in
  [-1, 1] unless `prompt` says otherwise): the model of the finite-difference and reference tests."""
  from promptjax.models import PromptableT5, PromptConfig, get_config
  prompt = {'kind': 'shallow', 'init': 'uniform', 'init_range': 1.0, **prompt}
  config = get_config('tiny', vocab_size=vocab, num_encoder_layers=1, num_decoder_layers=1)
  return PromptableT5(config, PromptConfig(length=length, **prompt))


def write_training_checkpoint(model_dir, model, params, trainable='all', step=4):
  """A checkpoint as `promptjax.training.trainer.train` saves it (orbax items `state` and `meta`, an optax
  SGD state) in `model_dir`, without training."""
  import optax
  import orbax.checkpoint as ocp
  from promptjax.training.train_step import TrainState
  from promptjax.training.trainer import model_signature
  state = TrainState.create(params, optax.sgd(0.1), step=step)
  info = {'step': step, 'data_batches': step, 'signature': model_signature(model, trainable)}
  options = ocp.CheckpointManagerOptions(step_prefix='checkpoint', create=True)
  with ocp.CheckpointManager(str(model_dir), options=options) as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(info)))
    manager.wait_until_finished()


def padded_batch(rng, lead, enc_len, tgt_len, vocab, min_enc_len=2):
  """Right-padded encoder inputs and targets ending in EOS=1 with random lengths (row 0 has a full input,
  row 1 a full target), tokens in [2, vocab); shapes lead + (enc_len,) and lead + (tgt_len,)."""
  lead = tuple(lead)
  n = int(np.prod(lead))
  enc = np.zeros((n, enc_len), np.int32)
  tgt = np.zeros((n, tgt_len), np.int32)
  for i in range(n):
    ln = enc_len if i == 0 else rng.randint(min_enc_len, enc_len + 1)
    enc[i, :ln - 1] = rng.randint(2, vocab, ln - 1)
    enc[i, ln - 1] = 1
    lt = tgt_len if i == 1 else rng.randint(2, tgt_len + 1)
    tgt[i, :lt - 1] = rng.randint(2, vocab, lt - 1)
    tgt[i, lt - 1] = 1
  return {'encoder_input_tokens': enc.reshape(lead + (enc_len,)),
          'decoder_target_tokens': tgt.reshape(lead + (tgt_len,))}


# ---------------------------------------------------------------------------------------------------
# Float64 references.


class Jnp64:
  """`jax.numpy` with `float32` meaning `float64` (the model's pinned float32 casts become float64)."""

  def __getattr__(self, name):
    return jnp.float64 if name == 'float32' else getattr(jnp, name)


@contextlib.contextmanager
def float64_model(model, params):
  """x64 on and `jnp` of the model modules swapped for `Jnp64` (both undone on exit); yields the float64
  copies (model, params). promptjax's model pins float32 in its norms, attention and loss, so this
  test-local shim is what makes a float64 finite-difference reference possible."""
  from promptjax.models import PromptableT5
  from promptjax.models import layers as layers_mod
  from promptjax.models import losses as losses_mod
  from promptjax.models import t5 as t5_mod
  with jax.enable_x64(True), pytest.MonkeyPatch.context() as mp:
    for mod in (layers_mod, t5_mod, losses_mod):
      mp.setattr(mod, 'jnp', Jnp64())
    model64 = PromptableT5(model.config.replace(dtype='float64'), model.prompt)
    yield model64, jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.float64), params)


# ---------------------------------------------------------------------------------------------------
# Records.


def read_records(out, fmt, split='train'):
  """The `tf.train.Example` records of `{out}/{fmt}/{split}-*.tfrecord` as dicts of lists (bytes decoded),
  parsed with plain protobuf access (independent of the seqio tasks that read them)."""
  import tensorflow as tf
  recs = []
  for path in sorted(tf.io.gfile.glob(f'{out}/{fmt}/{split}-*.tfrecord')):
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
      ex = tf.train.Example.FromString(raw).features.feature
      r = {k: (list(v.bytes_list.value) or list(v.int64_list.value) or list(v.float_list.value))
           for k, v in ex.items()}
      recs.append({k: ([x.decode() for x in v] if v and isinstance(v[0], bytes) else v) for k, v in r.items()})
  return recs
