"""promptjax.data.flat_mixture against seqio's own pipelines: the same examples, the mixture's rates, exact
resume, disjoint host shares, and the readable refusals."""

import logging
import os

import gin
import numpy as np
import pytest
import seqio
from scipy import stats

import promptjax.tasks  # noqa: F401  (registers the mini benchmark)
from promptjax import ledger
from promptjax.data import feeds
from promptjax.data import flat_mixture as F
from promptjax.errors import DataError
from promptjax.tasks import p3

L = {'inputs': 32, 'targets': 8}   # short enough that some inputs are cut (EOS after the cut, as seqio)
MIX = 'mini_train'


def rows(batch):
  return [tuple(r) for r in np.concatenate([batch[k] for k in feeds.FEATURES], axis=1).tolist()]


@pytest.fixture(scope='module')
def sharded(tmp_path_factory):
  """A P3-format subset in 3 TFRecord files (60 records, numbered by their first input token)."""
  root = str(tmp_path_factory.mktemp('p3'))
  records = [{'inputs': [100 + i, 7, 8], 'inputs_pretokenized': 'x', 'targets': [5, 1], 'targets_pretokenized': 'y'}
             for i in range(60)]
  p3.write_p3_split(os.path.join(root, 'flat_test_subset'), 'train', records, num_shards=3)
  for name in ('flat_test_subset',):
    seqio.TaskRegistry.remove(name)
  p3.register_p3_tasks(['flat_test_subset'], dir_fn=lambda: root, family='mini', vocab_name='mini')
  yield 'flat_test_subset'
  seqio.TaskRegistry.remove('flat_test_subset')


def test_each_task_gives_seqios_examples_in_file_order():
  for task in seqio.get_mixture_or_task(MIX).tasks[:6]:
    n = task.num_input_examples('train')
    ref = next(feeds.model_batches(task.name, L, n, shuffle=False))
    got = next(F.flat_batches(task.name, L, n, shuffle=False))
    for k in feeds.FEATURES:
      np.testing.assert_array_equal(got[k], ref[k], err_msg=f'{task.name} {k}')


def test_several_files_give_seqios_examples(sharded):
  ref = next(feeds.model_batches(sharded, L, 60, shuffle=False))
  got = next(F.flat_batches(sharded, L, 60, shuffle=True, seed=1, buffer_size=1))   # file order shuffled
  assert sorted(rows(got)) == sorted(rows(ref))
  assert rows(got) != rows(ref)


def test_draws_follow_the_mixture_rates():
  mix = seqio.get_mixture_or_task(MIX)
  rates = np.asarray([mix.get_rate(t) for t in mix.tasks], np.float64)
  it = F.flat_batches(MIX, L, 128, seed=0, with_task_index=True)
  counts = np.zeros(len(rates))
  for _ in range(25):
    counts += np.bincount(next(it)['task_index'], minlength=len(rates))
  assert stats.chisquare(counts, counts.sum() * rates / rates.sum()).pvalue > 1e-3


def test_seeded_deterministic_and_resumes_exactly():
  first = F.flat_batches(MIX, L, 16, seed=3)
  straight = [next(first) for _ in range(4)]
  again = F.flat_batches(MIX, L, 16, seed=3)
  resumed = F.flat_batches(MIX, L, 16, seed=3, start_batch=2)
  assert rows(next(again)) == rows(straight[0])
  assert rows(next(resumed)) == rows(straight[2])
  assert rows(next(F.flat_batches(MIX, L, 16, seed=4))) != rows(straight[0])
  # Through the training feed, as `promptjax train --gin.DATA_READER='flat'` reads it.
  cfg = feeds.DatasetConfig(MIX, L, batch_size=16, seed=3, reader='flat')
  np.testing.assert_array_equal(next(feeds.dataset_batches(cfg, start_batch=3))['encoder_input_tokens'],
                                straight[3]['encoder_input_tokens'])


@pytest.mark.parametrize('hosts', [3, 4])   # 3 files: a file per host; 4 hosts: records dealt before parsing
def test_hosts_read_disjoint_shares_of_one_pass(sharded, hosts, caplog):
  F._warned.clear()
  seen = []
  with caplog.at_level(logging.WARNING):
    for p in range(hosts):
      share = len(range(p, 60, hosts))
      batch = next(F.flat_batches(sharded, L, share, shuffle=False, process_index=p, process_count=hosts))
      seen += [r[0] for r in batch['encoder_input_tokens'].tolist()]
  assert sorted(seen) == list(range(100, 160))
  warned = [r.message for r in caplog.records if 'Reshard' in r.message]
  assert len(warned) == (1 if hosts == 4 else 0)
  if warned:
    assert 'p3_convert convert' in warned[0] and '--num_shards 4' in warned[0]


def test_refuses_what_it_cannot_read_and_names_the_fix():
  with pytest.raises(DataError, match=r"not a P3 training view.*DATA_READER='seqio'"):
    next(F.flat_batches('mini_train_rank_classification', L, 4))
  with pytest.raises(DataError, match=r"DATA_READER='nope'; use one of 'seqio', 'flat'"):
    next(feeds.dataset_batches(feeds.DatasetConfig(MIX, L, batch_size=4, reader='nope')))
  with pytest.raises(DataError, match=r"repeats 'mini_train' forever.*DATA_READER='seqio'"):
    next(feeds.dataset_batches(feeds.DatasetConfig(MIX, L, batch_size=4, reader='flat'), num_epochs=1))


def test_wu_mtl_rows_read_d4_train_flat():
  rows_ = [r for r in ledger.load()['rows'] if r['command'] == 'train' and any(
      os.path.basename(f).startswith('wu2022') and f.endswith(('_mtl_prompt.gin', '_mtl_prompt_deep.gin', '_t0.gin',
                                                                '_ppt.gin')) for f in r['files'])]
  assert len(rows_) == 8
  try:
    for row in rows_:
      ledger.parse_row(row)
      assert ledger.resolve('train/promptjax.training.DatasetConfig.reader') == 'flat', row['files']
      assert ledger.resolve('train/promptjax.training.DatasetConfig.mixture_or_task_name') == 'd4_train'
  finally:
    gin.clear_config()


def test_meta_sampler_flat_streams_read_whole_epochs_and_resume():
  from promptjax.data import meta_sampler as S
  task = seqio.get_mixture_or_task(MIX).tasks[0]
  n = task.num_input_examples('train')
  c = S.MetaDataConfig(task.name, L, meta_batch_size=4, inner_steps=2, support_batch_size=4, query_batch_size=4,
                       reader='flat')
  it = S.meta_batches(c, process_index=0, process_count=1)
  steps = [next(it) for _ in range(-(-n // 48))]   # 4 clones x (2 + 1) batches of 4 per step
  order = []
  for b in steps:   # the stream's order: clone by clone, its support batches, then its query
    for ci in range(4):
      for t in range(2):
        order += rows({k: b[f'support/{k}'][ci, t] for k in feeds.FEATURES})
      order += rows({k: b[f'query/{k}'][ci] for k in feeds.FEATURES})
  epoch = rows(next(feeds.model_batches(task.name, L, n, shuffle=False)))
  assert sorted(order[:n]) == sorted(epoch) and order[:n] != epoch   # one whole pass, shuffled
  resumed = next(S.meta_batches(c, start_step=2, process_index=0, process_count=1))
  for k in steps[2]:
    np.testing.assert_array_equal(resumed[k], steps[2][k])
  with pytest.raises(DataError, match="DATA_READER='seqio'"):
    next(S.meta_batches(S.MetaDataConfig('mini_train_rank_classification', L, reader='flat')))


def test_meta_stream_of_several_files_reads_whole_passes(sharded):
  from promptjax.data import meta_sampler as S
  c = S.MetaDataConfig(sharded, L, meta_batch_size=1, inner_steps=1, support_batch_size=4, query_batch_size=4,
                       reader='flat')
  it = S.meta_batches(c, process_index=0, process_count=1)
  order = []
  for _ in range(15):   # 8 examples a step: two passes over the 60 records of the 3 files
    b = next(it)
    order += b['support/encoder_input_tokens'][0, 0, :, 0].tolist() + b['query/encoder_input_tokens'][0, :, 0].tolist()
  assert sorted(order[:60]) == sorted(order[60:]) == list(range(100, 160))
  assert order[:60] != order[60:]   # each pass shuffled anew


def test_batched_trim_matches_seqio_on_edge_rows():
  import tensorflow as tf
  from promptjax.tasks.config import output_features
  rows = [[], [5, 1], [1], [7, 8, 9, 10, 11], [7, 8, 9, 1], [3]]
  ds = tf.data.Dataset.from_generator(lambda: ({'inputs': r, 'targets': r} for r in rows),
                                      output_signature={k: tf.TensorSpec([None], tf.int64) for k in ('inputs', 'targets')})
  ds = ds.map(lambda ex: {'inputs': ex['inputs'], 'targets': p3._strip_eos(ex['targets'])})
  ds = seqio.preprocessors.append_eos_after_trim(ds, output_features('mini'), {'inputs': 4, 'targets': 3})
  want = list(ds.as_numpy_iterator())
  ragged = tf.ragged.constant(rows, dtype=tf.int64, row_splits_dtype=tf.int64)
  for key, length, strip in (('inputs', 4, False), ('targets', 3, True)):
    got = F._trim_eos(ragged, length, strip_eos=strip).numpy()
    for g, w in zip(got, want):
      assert g[:len(w[key])].tolist() == w[key].tolist() and not g[len(w[key]):].any(), (key, g, w[key])
