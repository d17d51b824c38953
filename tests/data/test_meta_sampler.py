"""promptjax.data.meta_sampler on the bundled mini benchmark: shapes, task assignment, splits, resume, rates."""

import numpy as np
import pytest
import seqio
import tensorflow as tf
from scipy import stats

import promptjax.tasks  # noqa: F401  (registers the mini benchmark)
from promptjax.data import feeds
from promptjax.data import meta_sampler as S
from promptjax.tasks import utils as task_utils
from promptjax.tasks.config import DataError, output_features

L = {'inputs': 64, 'targets': 8}
CF = 'crossfit_cls_to_cls_source_13'  # 4 CrossFit-format source tasks, train (support) / dev (query)
CF_TASKS = [t.name for t in seqio.get_mixture_or_task(CF).tasks]
RATES = {'crossfit_mini_sentiment_13': 1.0, 'crossfit_mini_topic_13': 3.0, 'crossfit_mini_fact_check_13': 6.0}


def _register():
  for name in ('test_sampler_rates', 'test_sampler_empty'):
    seqio.MixtureRegistry.remove(name)
    seqio.TaskRegistry.remove(name)
  seqio.MixtureRegistry.add('test_sampler_rates', list(RATES.items()))

  def empty(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({'inputs': tf.constant([], tf.string),
                                               'targets': tf.constant([], tf.string)})

  seqio.TaskRegistry.add(
      'test_sampler_empty', source=seqio.FunctionDataSource(empty, splits=('train',)),
      output_features=output_features('mini'),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim], metric_fns=[])


_register()


def cfg(name=CF, **kw):
  base = dict(meta_batch_size=4, inner_steps=2, support_batch_size=4, query_batch_size=4)
  base.update(kw)
  return S.MetaDataConfig(name, L, **base)


def take(c, n, **kw):
  it = S.meta_batches(c, process_index=kw.pop('process_index', 0), process_count=kw.pop('process_count', 1),
                      **kw)
  return [next(it) for _ in range(n)]


def rows(batch, prefix):
  """Examples of a [..., length] batch as hashable (inputs, targets) byte pairs, in order."""
  enc = batch[f'{prefix}/encoder_input_tokens']
  tgt = batch[f'{prefix}/decoder_target_tokens']
  enc, tgt = enc.reshape(-1, enc.shape[-1]), tgt.reshape(-1, tgt.shape[-1])
  return [(a.tobytes(), b.tobytes()) for a, b in zip(enc, tgt)]


def sub(batch, prefix, *index):
  return {f'{prefix}/{k}': batch[f'{prefix}/{k}'][index] for k in ('encoder_input_tokens', 'decoder_target_tokens')}


@pytest.fixture(scope='module')
def reference():
  """{(task, split): set of examples} read directly (no shuffle, one epoch) for the CrossFit tasks."""
  out = {}
  for name in CF_TASKS:
    for split in ('train', 'dev'):
      ex = set()
      for b in feeds.model_batches(name, L, batch_size=64, split=split):
        ex.update(rows({f'x/{k}': v for k, v in b.items()}, 'x'))
      out[(name, split)] = ex
  return out


@pytest.fixture(scope='module')
def clone_run():
  c = cfg(task_per='clone', query_split='dev')
  return c, take(c, 2)


@pytest.mark.parametrize('mode', S.SUPPORT_MODES)
def test_shapes_dtypes_and_disjoint_support_query(mode):
  """mini_train (P3-format training templates); one task per clone so few streams are opened."""
  c = S.MetaDataConfig('mini_train', L, meta_batch_size=2, inner_steps=3, support_batch_size=2,
                       query_batch_size=3, support_mode=mode, task_per='clone')
  batches = take(c, 2)
  t = 1 if mode == 'same' else 3
  for batch in batches:
    assert sorted(batch) == sorted([f'{p}/{k}' for p in ('support', 'query') for k in S.FEATURES])
    for k in S.FEATURES:
      n = L['inputs'] if k == 'encoder_input_tokens' else L['targets']
      assert batch[f'support/{k}'].shape == (2, t, 2, n) and batch[f'support/{k}'].dtype == np.int32
      assert batch[f'query/{k}'].shape == (2, 3, n) and batch[f'query/{k}'].dtype == np.int32
    for p in ('support', 'query'):
      tgt = batch[f'{p}/decoder_target_tokens']
      np.testing.assert_array_equal(batch[f'{p}/decoder_loss_weights'], (tgt != 0).astype(np.int32))
      np.testing.assert_array_equal(batch[f'{p}/decoder_input_tokens'][..., 1:], tgt[..., :-1])
      assert (batch[f'{p}/decoder_input_tokens'][..., 0] == 0).all() and (tgt[..., 0] != 0).all()
    for ci in range(2):  # consecutive draws of one 300-example stream: all distinct examples
      ex = rows(sub(batch, 'support', ci), 'support') + rows(sub(batch, 'query', ci), 'query')
      assert len(ex) == t * 2 + 3 and len(set(ex)) == len(ex)
  assert not np.array_equal(batches[0]['query/encoder_input_tokens'], batches[1]['query/encoder_input_tokens'])


def test_clone_mode_one_task_per_clone_and_dev_queries(clone_run, reference):
  c, batches = clone_run
  for name in CF_TASKS:
    assert not reference[(name, 'train')] & reference[(name, 'dev')]
  for step, batch in enumerate(batches):
    choice = S.task_choices(c, step)
    assert choice.shape == (4, 3)
    for ci in range(4):
      assert len(set(choice[ci])) == 1
      task = choice[ci, 0]
      assert set(rows(sub(batch, 'support', ci), 'support')) <= reference[(task, 'train')]
      assert set(rows(sub(batch, 'query', ci), 'query')) <= reference[(task, 'dev')]
  assert len({S.task_choices(c, s)[ci, 0] for s in range(2) for ci in range(4)}) > 1


def test_batch_mode_homogeneous_batches_and_exact_resume(reference):
  c = cfg(task_per='batch', seed=3)  # query_split None: queries from the train streams too
  full = take(c, 5)
  consumed = S.examples_consumed(c, 3)
  assert max(consumed.values()) > 32  # the resume skips across an epoch of a 32-example train file
  resumed = take(c, 2, start_step=3)
  for a, b in zip(full[3:], resumed):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  mixed = False
  for step, batch in enumerate(full):
    choice = S.task_choices(c, step)
    mixed |= any(len(set(r)) > 1 for r in choice)
    for ci in range(4):
      for t in range(2):
        assert set(rows(sub(batch, 'support', ci, t), 'support')) <= reference[(choice[ci, t], 'train')]
      assert set(rows(sub(batch, 'query', ci), 'query')) <= reference[(choice[ci, -1], 'train')]
  assert mixed
  # Task choices are a pure function of (cfg, step); another seed gives others.
  np.testing.assert_array_equal(S.task_choices(c, 4), S.task_choices(cfg(task_per='batch', seed=3), 4))
  assert any((S.task_choices(c, s) != S.task_choices(cfg(task_per='batch', seed=4), s)).any() for s in range(5))


def test_multi_process(clone_run):
  c, single = clone_run
  for step in range(3):
    whole = S.task_choices(c, step, 0, 1)
    np.testing.assert_array_equal(S.task_choices(c, step, 0, 2), whole[:2])
    np.testing.assert_array_equal(S.task_choices(c, step, 1, 2), whole[2:])
  p0 = take(c, 1, process_index=0, process_count=2)[0]
  for k in S.FEATURES:
    assert p0[f'support/{k}'].shape[:3] == (2, 2, 4) and p0[f'query/{k}'].shape[:2] == (2, 4)
    # Process 0's streams are seeded as the single process's; its first clone reads the same examples.
    np.testing.assert_array_equal(p0[f'support/{k}'][0], single[0][f'support/{k}'][0])
    np.testing.assert_array_equal(p0[f'query/{k}'][0], single[0][f'query/{k}'][0])
  with pytest.raises(S.SamplerError, match='divisible'):
    S.meta_batches(cfg(meta_batch_size=6), process_index=0, process_count=4)


def test_small_task_repeats(reference):
  """One Task (a mixture of one) with fewer examples (32) than one 'split' draw (3 x 16)."""
  name = 'crossfit_mini_sentiment_13'
  c = S.MetaDataConfig(name, L, meta_batch_size=1, inner_steps=3, support_batch_size=16, query_batch_size=8,
                       support_mode='split', query_split='dev')
  batch = take(c, 1)[0]
  assert batch['support/encoder_input_tokens'].shape == (1, 3, 16, L['inputs'])
  ex = rows(batch, 'support')
  assert set(ex) == reference[(name, 'train')]  # a full epoch (a permutation), then the repeat
  assert len(ex[:32]) == len(set(ex[:32])) == 32
  assert set(rows(batch, 'query')) <= reference[(name, 'dev')]
  assert (S.task_choices(c, 0) == name).all()


@pytest.mark.parametrize('per', S.TASK_PER)
def test_rate_and_uniform_frequencies(per):
  steps, m, t = 150, 16, 3
  names = sorted(RATES)
  for sampling, expect in (('rate', np.asarray([RATES[n] for n in names])), ('uniform', np.ones(3))):
    c = S.MetaDataConfig('test_sampler_rates', L, meta_batch_size=m, inner_steps=t, task_per=per,
                         task_sampling=sampling, seed=7)
    drawn = []
    for s in range(steps):
      choice = S.task_choices(c, s)
      drawn.extend(choice[:, 0] if per == 'clone' else choice.ravel())
      if per == 'clone':
        assert (choice == choice[:, :1]).all()
    counts = np.asarray([drawn.count(n) for n in names])
    p = stats.chisquare(counts, expect / expect.sum() * counts.sum()).pvalue
    assert p > 1e-3, (sampling, counts)
    assert np.allclose(counts / counts.sum(), expect / expect.sum(), atol=0.03)
  # mini_train's capped seqio rates are what 'rate' samples by.
  mix = seqio.get_mixture_or_task('mini_train')
  plan = S.task_plan(S.MetaDataConfig('mini_train', L))
  rates = np.asarray([mix.get_rate(seqio.get_mixture_or_task(n)) for n in plan.names])
  np.testing.assert_allclose(plan.probs, rates / rates.sum())
  assert plan.names == [tk.name for tk in mix.tasks]


def test_errors():
  with pytest.raises(DataError, match='Did you mean'):
    S.task_choices(cfg(name='crossfit_cls_to_cls_sourc_13'), 0)
  with pytest.raises(DataError, match="has no split 'validation'"):
    S.meta_batches(cfg(query_split='validation'), process_index=0, process_count=1)
  with pytest.raises(DataError, match=r"mini_sentiment_good_or_bad.*split 'test'"):
    take(cfg(name='mini_sentiment_good_or_bad', support_split='test'), 1)
  with pytest.raises(DataError, match=r"test_sampler_empty.*split 'train'.*no examples"):
    take(cfg(name='test_sampler_empty'), 1)
  with pytest.raises(S.SamplerError, match='support_mode'):
    cfg(support_mode='reuse')
  with pytest.raises(S.SamplerError, match='targets'):
    S.MetaDataConfig(CF, {'inputs': 8})


def test_stream_features_are_seqio_encdec_features():
  """A stream's examples are exactly what `seqio.EncDecFeatureConverter(pack=False)` makes of the task's
  examples (the stream builds them in numpy from padded inputs / targets)."""
  task = seqio.get_mixture_or_task('mini_sentiment_good_or_bad')
  lengths = {'inputs': 32, 'targets': 4}   # short enough that some inputs are trimmed
  got = S._Stream(task, 'train', seed=3, lengths=lengths, chunk=4, skip=0).take(12)
  ds = task.get_dataset(sequence_length=lengths, split='train', shuffle=True, seed=3, num_epochs=1,
                        use_cached=False)
  ds = seqio.EncDecFeatureConverter(pack=False)(ds.repeat(), lengths).batch(12)
  want = next(iter(ds.as_numpy_iterator()))
  assert sorted(got) == sorted(S.FEATURES)
  for k in S.FEATURES:
    np.testing.assert_array_equal(got[k], want[k].astype(np.int32), err_msg=k)
  assert (got['encoder_input_tokens'][:, -1] != 0).any()   # some rows fill (or were trimmed to) the length
