"""T5X's own trainer as an independent check of promptjax's: `promptjax.interop.t5x.T5XModel` trained by
`t5x.trainer.Trainer` (T5X's loss, partitioner and optimizer wrapper) and promptjax's trainer, from the same
parameters on the same batches with the same optax Adafactor, give the same per-step losses for MTL-T✓P✓
(shallow prompt), MTL-T✗P✓ (deep prompt) and MTL-T✓P✗ (no prompt) (Wu et al. 2022 §3)."""

import jax
import numpy as np
import pytest

t5x = pytest.importorskip('t5x')

from promptjax.models import PromptableT5, PromptConfig, get_config  # noqa: E402
from promptjax.models.model import shift_right  # noqa: E402
from promptjax.training import optimizers, trainer  # noqa: E402
from promptjax.training.method import MultiTask  # noqa: E402

VOCAB, BATCH, LENGTHS, STEPS = 128, 8, {'inputs': 12, 'targets': 6}, 10
LEARNING_RATE = 1e-2  # large enough that 10 Adafactor steps move the loss well beyond the tolerance
# Same math, different float summation order (T5X divides each token's loss by the token count before
# summing; promptjax sums, then divides) and different fusions: the losses agree to float32 rounding.
TOLERANCE = 1e-5
CASES = {'shallow-T✓P✓': ('shallow', 'all'), 'deep-T✗P✓': ('deep', 'prompt'), 'none-T✓P✗': ('none', 'transformer')}


def _batches():
  """STEPS batches cycling through two (so step 9 sees step 1's batch again: the loss must have dropped)."""
  rng = np.random.RandomState(0)
  out = []
  for _ in range(2):
    enc = rng.randint(2, VOCAB, size=(BATCH, LENGTHS['inputs'])).astype(np.int32)
    enc[:, -3:] *= rng.randint(0, 2, size=(BATCH, 1))       # some padded inputs
    tgt = rng.randint(2, VOCAB, size=(BATCH, LENGTHS['targets'])).astype(np.int32)
    lengths = rng.randint(2, LENGTHS['targets'] + 1, size=BATCH)
    for row, n in zip(tgt, lengths):                        # EOS, then padding: ragged targets
      row[n - 1], row[n:] = 1, 0
    out.append({'encoder_input_tokens': enc, 'decoder_target_tokens': tgt,
                'decoder_input_tokens': np.asarray(shift_right(tgt)),
                'decoder_loss_weights': (tgt > 0).astype(np.float32)})
  return [out[i % 2] for i in range(STEPS)]


def _model(kind):
  # 8 heads: T5X's CPU mesh puts all 8 test devices on its 'model' axis, and every sharded dimension
  # (vocab, heads, heads x head_dim, mlp) must divide by 8 there; promptjax runs data-parallel on 8.
  config = get_config('tiny', vocab_size=VOCAB, num_heads=8, head_dim=2, num_encoder_layers=1,
                      num_decoder_layers=1)
  return PromptableT5(config, PromptConfig(kind=kind, length=3))


def _adafactor():
  # Factor every matrix with both dimensions >= 8, so T5X partitions factored second moments too.
  return optimizers.adafactor(LEARNING_RATE, min_dim_size_to_factor=8)


def _promptjax_losses(model, trainable, batches, model_dir):
  cfg = trainer.DatasetConfig('none', LENGTHS, batch_size=BATCH)
  result = trainer.train(model_dir=model_dir, model=model, method=MultiTask(cfg), total_steps=STEPS,
                         optimizer=_adafactor(), trainable=trainable,
                         batches=iter(batches), progress=False, async_checkpointing=False)
  return [result.losses[s] for s in range(1, STEPS + 1)]


def _t5x_losses(model, group, batches, trainer_cls=None, **trainer_kwargs):
  """Per-step losses of T5X's `trainer_cls` (default `t5x.trainer.Trainer`) training `T5XModel(model)`."""
  from t5x import partitioning, trainer as t5x_trainer, utils
  from promptjax.interop import t5x as t5x_model
  opt_def = t5x_model.optimizer(_adafactor(), group)
  net = t5x_model.T5XModel(model, optimizer_def=opt_def)
  partitioner = partitioning.PjitPartitioner(num_partitions=1)
  shapes = {k: v.shape for k, v in batches[0].items()}
  types = {k: v.dtype for k, v in batches[0].items()}
  init = utils.TrainStateInitializer(opt_def, net.get_initial_variables, shapes, partitioner, types)
  # T5X's own initialization: `get_initial_variables` gives `PromptableT5.init_params(PRNGKey(0))`, the
  # parameters promptjax's trainer starts from with seed 0 (a deep prompt's projections up to float rounding).
  state = init.from_scratch(jax.random.PRNGKey(0))
  t = (trainer_cls or t5x_trainer.Trainer)(
      net, state, partitioner, eval_names=[], summary_dir=None, train_state_axes=init.train_state_axes,
      rng=jax.random.PRNGKey(0), learning_rate_fn=t5x_model.learning_rate_fn(opt_def), num_microbatches=None,
      **trainer_kwargs)
  with t:
    return [float(t.train(iter([b]), num_steps=1).result()['loss'].value) for b in batches]


@pytest.mark.parametrize('case', list(CASES))
def test_t5x_trainer_gives_promptjax_losses(case, tmp_path):
  kind, trainable = CASES[case]
  model, batches = _model(kind), _batches()
  ours = _promptjax_losses(model, trainable, batches, str(tmp_path))
  theirs = _t5x_losses(model, trainable, batches)
  diff = np.max(np.abs(np.subtract(ours, theirs)))
  print(f'{case}: max |promptjax - T5X| per-step loss = {diff:.2e}; batch-0 loss {ours[0]:.4f} -> {ours[8]:.4f}')
  assert ours[0] - ours[8] > 100 * TOLERANCE, ours   # training lowered the loss of the first batch
  np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)


def _uncached_decode(net, params, batch, **kwargs):
  """T5X's `decode_fn` with a `tokens_to_logits` that re-runs promptjax's teacher-forced decoder on the
  whole sequence so far (no cache): the reference for `T5XModel.predict_batch_with_aux`'s cached decoding."""
  model = net.promptable
  encoded, mask = model.encode(params, batch['encoder_input_tokens'])
  length = batch['decoder_input_tokens'].shape[1]

  def tokens_to_logits(state):
    sequences = state.sequences[:, :length]
    reps = sequences.shape[0] // encoded.shape[0]
    logits = model.decode(params, jax.numpy.repeat(encoded, reps, 0), jax.numpy.repeat(mask, reps, 0),
                          jax.numpy.ones_like(sequences), sequences)
    index = jax.numpy.broadcast_to(state.cur_index, (sequences.shape[0],))
    return jax.numpy.take_along_axis(logits, index[:, None, None], axis=1)[:, 0], state.cache

  decodes, scores = net._decode_fn(inputs=jax.numpy.zeros_like(batch['decoder_input_tokens']),
                                   cache={'unused': jax.numpy.zeros((BATCH,))},
                                   tokens_to_logits=tokens_to_logits, eos_id=1, **kwargs)
  return decodes, scores


def test_t5x_decoding_over_the_cache():
  """`predict_batch_with_aux` runs T5X's beam search and temperature sampling over promptjax's key/value cache
  and decodes exactly what they decode without a cache (a deep prompt: its decoder prefixes sit in the
  cache); the default (T5X's temperature_sample at top-k 1) is promptjax's greedy decoding."""
  from t5x import decoding
  from promptjax.evaluation import generation
  from promptjax.interop import t5x as t5x_model
  model, batch = _model('deep'), _batches()[0]
  params = model.init_params(jax.random.PRNGKey(1))
  greedy = t5x_model.T5XModel(model).predict_batch(params, batch)
  np.testing.assert_array_equal(greedy, generation.greedy_tokens(model, params, batch['encoder_input_tokens'],
                                                                 LENGTHS['targets']))
  beams = t5x_model.T5XModel(model, decode_fn=decoding.beam_search)
  got, aux = beams.predict_batch_with_aux(params, batch, num_decodes=3, return_all_decodes=True)
  want, scores = _uncached_decode(beams, params, batch, num_decodes=3)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(aux['scores'], scores, atol=1e-4)
  assert got.shape == (BATCH, 3, LENGTHS['targets'])
  sampler = t5x_model.T5XModel(model)
  rng = jax.random.PRNGKey(5)
  got, aux = sampler.predict_batch_with_aux(params, batch, rng=rng, num_decodes=2, return_all_decodes=True,
                                            decoder_params={'temperature': 1.0, 'topk': 0})
  want, scores = _uncached_decode(sampler, params, batch, num_decodes=2, decode_rng=rng, temperature=1.0, topk=0)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(aux['scores'], scores, atol=1e-4)
  assert not np.array_equal(got[:, 0], got[:, 1])   # two different samples


def test_scoring_decoding_and_refusals():
  """`score_batch` (T5X's) is promptjax's summed target log-likelihood, `predict_batch` decodes greedily; packed
  batches and a loss normalization T5X lacks are refused with the fix named."""
  import dataclasses
  from promptjax.errors import DataError, TrainingError
  from promptjax.interop import t5x as t5x_model
  model, batch = _model('shallow'), _batches()[0]
  net = t5x_model.T5XModel(model)
  params = model.init_params(jax.random.PRNGKey(1))
  np.testing.assert_allclose(jax.jit(net.score_batch)(params, batch), model.score_batch(params, batch),
                             atol=1e-5)
  predicted = np.asarray(jax.jit(net.predict_batch)(params, batch))   # `greedy_tokens`, as promptjax eval
  assert predicted.shape == (BATCH, LENGTHS['targets']) and predicted.min() >= 0 and predicted.max() < VOCAB
  # T5X's flax-cache decoding call (decode=True) is not how this model decodes: refused, the way named.
  with pytest.raises(NotImplementedError, match='decode through T5XModel.predict_batch'):
    net.module.apply({'params': params}, batch['encoder_input_tokens'], batch['decoder_input_tokens'], decode=True)
  with pytest.raises(DataError, match='pack = False'):
    net.loss_fn(params, {**batch, 'encoder_segment_ids': batch['encoder_input_tokens'] > 0}, None)
  with pytest.raises(TrainingError, match='no T5X equivalent'):
    t5x_model.T5XModel(dataclasses.replace(model, loss_normalization='num_examples'))


META_STEPS, CLONES, INNER = 3, 8, 2


def _meta_batches():
  """META_STEPS meta-batches cycling through two: support [M, T, b, ...], query [M, b, ...] (ragged targets)."""
  rng = np.random.RandomState(1)
  out = []
  for _ in range(2):
    b = {}
    for role, lead in (('support', (CLONES, INNER, 2)), ('query', (CLONES, 2))):
      enc = rng.randint(2, VOCAB, size=lead + (LENGTHS['inputs'],)).astype(np.int32)
      tgt = rng.randint(2, VOCAB, size=lead + (LENGTHS['targets'],)).astype(np.int32)
      tgt[..., -1] = 1
      tgt[..., 0, -2:] = [1, 0]
      b[f'{role}/encoder_input_tokens'] = enc
      b[f'{role}/decoder_target_tokens'] = tgt
      b[f'{role}/decoder_input_tokens'] = np.asarray(shift_right(tgt.reshape(-1, tgt.shape[-1]))).reshape(tgt.shape)
      b[f'{role}/decoder_loss_weights'] = (tgt > 0).astype(np.int32)
    out.append(b)
  return [out[i % 2] for i in range(META_STEPS)]


def test_t5x_meta_trainer_gives_promptjax_losses(tmp_path):
  """`promptjax.interop.t5x.MetaTrainer` (T5X's trainer, partitioner and optimizer wrapper around promptjax's
  meta-gradient) and promptjax's trainer with `MetaLearning` give the same per-step meta-losses: FOMAML with
  every parameter trained (Wu et al. 2022). The wrapper is the same for every algorithm and trainable group
  (`meta_gradient` itself is checked against references in tests/meta); second-order prompt-only MAML (Qin
  et al. 2023) was checked the same way by hand (equal losses)."""
  case, (algorithm, kind, trainable) = 'fomaml-T✓P✓ shallow (Wu)', ('fomaml', 'shallow', 'all')
  import optax
  from promptjax.data.meta_sampler import MetaDataConfig
  from promptjax.interop import t5x as t5x_model
  from promptjax.meta import MetaConfig, MetaLearning
  model, batches = _model(kind), _meta_batches()
  meta = MetaConfig(algorithm, inner_steps=INNER, inner_optimizer=optax.sgd(0.5), inner_learning_rate=0.5)
  data = MetaDataConfig('none', LENGTHS, meta_batch_size=CLONES, inner_steps=INNER, support_batch_size=2,
                        query_batch_size=2, module=None)
  result = trainer.train(model_dir=str(tmp_path), model=model, method=MetaLearning(meta, data),
                         total_steps=META_STEPS, optimizer=_adafactor(), trainable=trainable,
                         batches=iter(batches), progress=False, async_checkpointing=False)
  ours = [result.losses[s] for s in range(1, META_STEPS + 1)]

  theirs = _t5x_losses(model, trainable, batches, t5x_model.MetaTrainer, meta_config=meta, trainable=trainable)
  print(f'{case}: promptjax {np.round(ours, 5)}, T5X {np.round(theirs, 5)}')
  assert ours[0] - ours[2] > 100 * TOLERANCE, ours   # the meta-steps lowered the first batch's meta-loss
  np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)
