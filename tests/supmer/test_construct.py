"""SUPMER anchor meta-task construction (Beam DirectRunner on the bundled corpus), its seqio tasks and the
meta-batch sampler.

Independent references: records are read back from the TFRecords with plain `tf.train.Example` parsing;
cluster memberships are recomputed from scratch (the encoder on hand-tokenized sentences, numpy mean
pooling, nearest centroid of centroids.npy); decoder inputs / loss weights from the targets by hand.
"""

import io
import json
import os

import numpy as np
import pytest
import seqio

from conftest import SHARED_DATA

import promptjax.tasks as T
from promptjax.tasks import config as cfg
from promptjax.tasks import self_supervised as ss
from promptjax.supmer import tasks as supmer
from promptjax.tasks.config import DataError
from tests.helpers import read_records as _records

SPIECE = os.path.join(SHARED_DATA, 't5', 'spiece.model')
S = Q = 4
_CORPUS = ss.DocumentCorpus(os.path.join(cfg.BUNDLED_DIR, 'text'))
SENTENCES = {split: {s for d in _CORPUS.documents(split) for s in d.segments} for split in ('train', 'validation')}


@pytest.fixture
def built(supmer_construction):
  return supmer_construction   # (output_dir, manifest): tests/conftest.py, S = Q = 4


@pytest.fixture
def data_dir(built):
  T.set_data_dir('supmer', built[0])
  yield built[0]
  T.set_data_dir('supmer', None)


def _by_task(recs):
  tasks = {}
  for r in recs:
    tasks.setdefault(r['meta_task'][0], []).append(r)
  return tasks


class _Embedder:
  """The mini encoder (random init, seed 0) on hand-built T5 inputs, numpy mean pooling."""

  def __init__(self):
    import jax
    from promptjax.models import PromptableT5, PromptConfig, get_config
    self.model = PromptableT5(get_config('mini'), PromptConfig(kind='none'))
    self.params = self.model.init_params(jax.random.PRNGKey(0))
    self.vocab = seqio.SentencePieceVocabulary(cfg.get_vocabulary_path('mini'), extra_ids=100)
    self.encode = jax.jit(self.model.encode)

  def __call__(self, texts, length=32, batch=64):
    out = []
    for k in range(0, len(texts), batch):
      tok = np.zeros((batch, length), np.int32)
      for r, t in enumerate(texts[k:k + batch]):
        ids = list(self.vocab.encode(t))[:length - 1] + [1]
        tok[r, :len(ids)] = ids
      enc, _ = self.encode(self.params, tok)
      enc, m = np.asarray(enc, np.float64), (tok > 0)[..., None]
      out.append(((enc * m).sum(1) / m.sum(1))[:len(texts[k:k + batch])])
    return np.concatenate(out)


def _clusters(embedder, centroids, texts):
  """(nearest cluster, margin to the second nearest) per text."""
  e = embedder(texts)
  d = ((e[:, None, :] - centroids[None].astype(np.float64)) ** 2).sum(-1)
  order = np.sort(d, axis=1)
  return d.argmin(1), order[:, 1] - order[:, 0]


@pytest.fixture(scope='module')
def embedder():
  return _Embedder()


def _centroids(out):
  with open(os.path.join(out, 'centroids.npy'), 'rb') as f:
    return np.load(io.BytesIO(f.read()))


def test_every_format_with_balanced_labels_and_full_tasks(built):
  out, manifest = built
  assert manifest['formats'] == list(supmer.FORMAT_NAMES)
  assert _centroids(out).shape == (8, manifest['embedding_dim'])
  for fmt in supmer.FORMAT_NAMES:
    recs = _records(out, fmt)
    counts = {}
    for r in recs:
      counts[r['targets_pretokenized'][0]] = counts.get(r['targets_pretokenized'][0], 0) + 1
      # The word at the sentinel (Eq. 1, 17-19): the downstream targets' form <extra_id_0> word.
      assert r['answer_choices'] == [f'<extra_id_0> {w}' for w in supmer.VERBALIZERS[fmt]]
      assert r['answer_choices'][r['label'][0]] == r['targets_pretokenized'][0]
    assert sorted(counts) == sorted(f'<extra_id_0> {w}' for w in supmer.VERBALIZERS[fmt]), fmt
    assert max(counts.values()) - min(counts.values()) <= 1, (fmt, counts)
    assert counts == manifest['splits'][fmt]['train']['labels']
    tasks = _by_task(recs)
    assert len(tasks) == manifest['splits'][fmt]['train']['tasks'] >= 20
    for members in tasks.values():
      roles = [r['role'][0] for r in members]
      assert roles.count('support') == S and roles.count('query') == Q
    # Every anchor is a sentence of a document of its split (the corpus hash split).
    for split, rs in (('train', recs), ('validation', _records(out, fmt, 'validation'))):
      assert rs and {r['anchor'][0] for r in rs} <= SENTENCES[split], (fmt, split)


def test_anchor_tasks_share_their_anchors_cluster(built, embedder):
  out, _ = built
  centroids = _centroids(out)
  for fmt in ('nsp_yes_maybe_no', 'sp_same_cluster', 'mc_next_segment', 'mc_same_cluster'):
    tasks = _by_task(_records(out, fmt))
    for members in tasks.values():
      assert len({r['anchor_cluster'][0] for r in members}) == 1
      for r in members:
        a = r['anchor'][0]
        head = a if fmt in ('nsp_yes_maybe_no', 'sp_same_cluster') else ss._as_question(a)
        assert r['inputs_pretokenized'][0].startswith(head)
    sample = [ms[0] for ms in list(tasks.values())[:24]]
    got, margin = _clusters(embedder, centroids, [r['anchor'][0] for r in sample])
    want = np.array([r['anchor_cluster'][0] for r in sample])
    clear = margin > 1e-3
    assert clear.sum() >= 20 and (got[clear] == want[clear]).all(), fmt
  # (b) yes <=> the second sentence is in the anchor's cluster.
  recs = _records(out, 'sp_same_cluster')[:48]
  second = [r['inputs_pretokenized'][0].split(f' {ss.MASK}. ', 1)[1] for r in recs]
  got, margin = _clusters(embedder, centroids, second)
  same = got == np.array([r['anchor_cluster'][0] for r in recs])
  yes = np.array([r['targets_pretokenized'][0] == '<extra_id_0> yes' for r in recs])
  clear = margin > 1e-3
  assert 0 < yes.sum() < len(yes) and (same[clear] == yes[clear]).all()


def test_centroid_format_inserts_the_centroids(built, embedder):
  out, manifest = built
  centroids = _centroids(out)
  vocab = seqio.SentencePieceVocabulary(cfg.get_vocabulary_path('mini'), extra_ids=100)
  ph = vocab.encode(supmer.VECTOR_PLACEHOLDER)
  assert len(ph) == 1
  tasks = _by_task(_records(out, 'cls_cluster_centroid'))
  for members in list(tasks.values())[:40]:
    opts = {tuple(r['option_clusters']) for r in members}
    assert len(opts) == 1 and len(set(next(iter(opts)))) == 4
    for r in members:
      vec = np.asarray(r['encoder_input_vectors'], np.float32).reshape(4, -1)
      np.testing.assert_array_equal(vec, centroids[r['option_clusters']])
      assert r['option_clusters'][r['label'][0]] == r['anchor_cluster'][0]
      ids = np.asarray(vocab.encode(r['inputs_pretokenized'][0]))
      assert list(np.flatnonzero(ids == ph[0])) == r['encoder_input_vector_positions']
      assert r['inputs_pretokenized'][0] == (f'{ss._as_question(r["anchor"][0])} A. <extra_id_99> B. <extra_id_99> '
                                             'C. <extra_id_99> D. <extra_id_99>. Answer: <extra_id_0>')
  sample = [ms[0] for ms in list(tasks.values())[:24]]
  got, margin = _clusters(embedder, centroids, [r['anchor'][0] for r in sample])
  clear = margin > 1e-3
  assert clear.sum() >= 20 and (got[clear] == np.array([r['anchor_cluster'][0] for r in sample])[clear]).all()


@pytest.mark.skipif(not os.path.exists(SPIECE), reason=f'shared T5 vocabulary not found at {SPIECE}')
def test_verbalizers_are_single_real_pieces_of_the_t5_vocabulary():
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=SPIECE)
  vocab = seqio.SentencePieceVocabulary(SPIECE, extra_ids=100)
  for fmt, words in supmer.VERBALIZERS.items():
    for w in words:
      ids = vocab.encode(w)
      assert len(ids) == 1 and ids[0] != sp.unk_id() and ids[0] >= 3, (fmt, w, ids)
      assert sp.id_to_piece(ids[0]) == '\u2581' + w
  assert vocab.encode('no') == [150] and vocab.encode('yes') == [4273] and vocab.encode('maybe') == [2087]
  assert len(vocab.encode(supmer.VECTOR_PLACEHOLDER)) == 1


def test_seqio_tasks_read_the_output(data_dir):
  vocab = cfg.get_vocabulary('mini')
  ph = supmer.placeholder_id(vocab)
  for fmt in supmer.FORMAT_NAMES:
    task = seqio.get_mixture_or_task(f'mini_supmer_{fmt}')
    ds = task.get_dataset({'inputs': 128, 'targets': 4}, split='validation', shuffle=False)
    exs = list(ds.as_numpy_iterator())
    assert exs and {e['role'].decode() for e in exs} == {'support', 'query'}
    for e in exs[:8]:
      assert e['format'].decode() == fmt and e['meta_task'].decode().startswith(fmt)
      assert vocab.decode(e['targets'][:-1].tolist()) in [f'<extra_id_0> {w}' for w in supmer.VERBALIZERS[fmt]]
      assert e['targets'][-1] == 1
      if fmt == 'cls_cluster_centroid':
        assert e['encoder_input_vectors'].shape == (4, 64)
        assert (e['inputs'][e['encoder_input_vector_positions']] == ph).all()
      else:
        assert 'encoder_input_vectors' not in e
  # The t5-vocabulary tasks refuse data built with the mini vocabulary.
  with pytest.raises(DataError, match='vocabulary'):
    seqio.get_mixture_or_task('supmer_sp_same_cluster').get_dataset({'inputs': 64, 'targets': 4})


def test_meta_batch_layout_shapes_and_determinism(data_dir):
  lengths = {'inputs': 96, 'targets': 4}
  c = supmer.SupmerDataConfig(task_feature_lengths=lengths, meta_batch_size=4, task_prefix='mini_supmer', seed=3,
                              split='validation')
  it = supmer.supmer_meta_batches(c)
  b0, b1 = next(it), next(it)
  feats = supmer.MODEL_FEATURES + supmer.VECTOR_FEATURES
  assert set(b0) == {f'{p}/{f}' for p in ('support', 'query', 'mix_query') for f in feats}
  for p, n in (('support', S), ('query', Q), ('mix_query', Q)):
    assert b0[f'{p}/encoder_input_tokens'].shape == (4, n, 96)
    for f in ('decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights'):
      assert b0[f'{p}/{f}'].shape == (4, n, 4) and b0[f'{p}/{f}'].dtype == np.int32
    assert b0[f'{p}/encoder_input_vectors'].shape == (4, n, 4, 64)
    assert b0[f'{p}/encoder_input_vectors'].dtype == np.float32
    assert b0[f'{p}/encoder_input_vector_positions'].shape == (4, n, 4)
    tgt = b0[f'{p}/decoder_target_tokens']
    np.testing.assert_array_equal(b0[f'{p}/decoder_input_tokens'][..., 1:], tgt[..., :-1])
    assert (b0[f'{p}/decoder_input_tokens'][..., 0] == 0).all()
    np.testing.assert_array_equal(b0[f'{p}/decoder_loss_weights'], (tgt > 0).astype(np.int32))
  # Unused vector slots are zeros / -1; used ones hold centroids at placeholder positions.
  centroids = _centroids(data_dir)
  ph = supmer.placeholder_id(cfg.get_vocabulary('mini'))
  seen = 0
  for b in (b0, b1):
    pos, vec, tok = b['support/encoder_input_vector_positions'], b['support/encoder_input_vectors'], \
        b['support/encoder_input_tokens']
    assert (vec[pos < 0] == 0).all()
    for m, s, v in zip(*np.nonzero(pos >= 0)):
      assert tok[m, s, pos[m, s, v]] == ph
      assert np.abs(centroids - vec[m, s, v]).sum(-1).min() == 0
      seen += 1
  # Determinism from (seed, step); resume with start_step; another seed differs.
  again = supmer.supmer_meta_batches(c)
  for k, v in next(again).items():
    np.testing.assert_array_equal(v, b0[k])
  resumed = next(supmer.supmer_meta_batches(c, start_step=1))
  for k, v in resumed.items():
    np.testing.assert_array_equal(v, b1[k])
  other = next(supmer.supmer_meta_batches(
      supmer.SupmerDataConfig(task_feature_lengths=lengths, task_prefix='mini_supmer', seed=4, split='validation')))
  assert any((other[k] != b0[k]).any() for k in b0)
  # The mixed query is another task's query set.
  for m in range(4):
    assert (b0['mix_query/encoder_input_tokens'][m] != b0['query/encoder_input_tokens'][m]).any()


@pytest.mark.parametrize('split', ['train', 'validation'])
def test_record_index_gives_the_in_memory_meta_batches(data_dir, split):
  lengths = {'inputs': 80, 'targets': 4}   # some inputs cut: the vector placeholders past the cut are dropped
  kw = dict(task_feature_lengths=lengths, meta_batch_size=4, task_prefix='mini_supmer', seed=5, split=split)
  memory = supmer.supmer_meta_batches(supmer.SupmerDataConfig(storage='memory', **kw))
  index = supmer.supmer_meta_batches(supmer.SupmerDataConfig(storage='index', **kw), start_step=0)
  resumed = supmer.supmer_meta_batches(supmer.SupmerDataConfig(storage='index', **kw), start_step=2)
  batches = [next(memory) for _ in range(3)]
  for b in batches:
    got = next(index)
    assert set(got) == set(b)
    for k in b:
      np.testing.assert_array_equal(got[k], b[k], err_msg=k)
  for k, v in next(resumed).items():
    np.testing.assert_array_equal(v, batches[2][k])
  assert any((b['support/encoder_input_vector_positions'] >= 0).any() for b in batches)
  with pytest.raises(DataError, match="storage='disk'; use one of"):
    supmer.SupmerDataConfig(storage='disk', **kw)


def test_saved_record_index_points_at_each_record_with_its_task_and_role(built):
  """The construction saves each format's record index beside its shards; every entry is checked against
  tf.data's own TFRecord reader (the record at that position, byte for byte) and the record's parsed
  tf.train.Example (its meta-task and role)."""
  import tensorflow as tf
  root, manifest = built
  for fmt in manifest['formats']:
    for split in ('train', 'validation'):
      files = sorted(tf.io.gfile.glob(f'{root}/{fmt}/{split}-*.tfrecord'))
      table = np.load(f'{root}/{fmt}/{split}.index.npy')
      names = json.load(open(f'{root}/{fmt}/{split}.index.json'))['tasks']
      records = [(i, r.numpy()) for i, path in enumerate(files) for r in tf.data.TFRecordDataset(path)]
      assert len(table) == len(records) > 0, (fmt, split)
      handles = [open(path, 'rb') for path in files]
      try:
        for (shard, offset, length, task, role), (i, record) in zip(table, records):
          handles[shard].seek(offset)
          assert shard == i and handles[shard].read(length) == record
          feature = tf.train.Example.FromString(record).features.feature
          assert names[task] == feature['meta_task'].bytes_list.value[0].decode()
          assert ('support', 'query')[role] == feature['role'].bytes_list.value[0].decode()
      finally:
        for f in handles:
          f.close()


def test_a_missing_or_stale_index_is_rebuilt_from_the_shards(built, tmp_path, caplog, monkeypatch):
  """Without a saved index, or with one of other shards, a run indexes the shards itself (the same
  meta-batches as the in-memory reader); `construct --write_index` writes the indexes of an existing
  construction again, byte for byte the construction's own."""
  import logging
  import shutil
  from promptjax.supmer import construct as sc
  root, manifest = built
  kw = dict(task_feature_lengths={'inputs': 80, 'targets': 4}, meta_batch_size=4, task_prefix='mini_supmer', seed=3)
  T.set_data_dir('supmer', root)
  try:
    want = next(supmer.supmer_meta_batches(supmer.SupmerDataConfig(storage='memory', **kw)))
  finally:
    T.set_data_dir('supmer', None)
  copy = str(tmp_path / 'copy')
  shutil.copytree(root, copy)
  index_files = sorted(os.path.relpath(os.path.join(d, f), copy) for d, _, fs in os.walk(copy) for f in fs
                       if '.index.' in f)
  assert len(index_files) == 2 * 2 * len(manifest['formats'])
  for rel in index_files:
    os.remove(os.path.join(copy, rel))
  stale = os.path.join(copy, manifest['formats'][0], 'train.index.json')

  def first_batch():
    supmer._CACHE.clear()   # the per-construction cache would keep the first run's index
    T.set_data_dir('supmer', copy)
    try:
      return next(supmer.supmer_meta_batches(supmer.SupmerDataConfig(storage='index', **kw)))
    finally:
      T.set_data_dir('supmer', None)

  got = first_batch()   # no index at all
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert sc.main(['--write_index', f'--output_dir={copy}']) == 0
  for rel in index_files:
    assert open(os.path.join(copy, rel), 'rb').read() == open(os.path.join(root, rel), 'rb').read(), rel
  with monkeypatch.context() as m:   # a saved index that matches the shards is read, not rebuilt
    m.setattr(supmer, '_scan_records', lambda files: pytest.fail(f'{files[0]} was indexed again'))
    got = first_batch()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  info = json.load(open(stale))
  info['shards'][0][1] += 1     # an index of another shard than the one there now
  json.dump(info, open(stale, 'w'))
  with caplog.at_level(logging.WARNING):
    got = first_batch()
  assert any('indexing them again' in r.getMessage() for r in caplog.records)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  supmer._CACHE.clear()
  assert sc.main(['--write_index', f'--output_dir={tmp_path / "absent"}']) == 2


def test_format_restriction_and_readable_errors(data_dir, tmp_path):
  one = supmer.SupmerDataConfig(task_feature_lengths={'inputs': 64, 'targets': 4}, task_prefix='mini_supmer',
                                formats=('sp_same_cluster',), split='validation')
  b = next(supmer.supmer_meta_batches(one))
  vocab = cfg.get_vocabulary('mini')
  # Targets [<extra_id_0>, word, EOS]: the token layout of the downstream targets (promptjax.supmer.datasets).
  tgt = b['support/decoder_target_tokens']
  assert (tgt[..., 0] == vocab.encode('<extra_id_0>')[0]).all() and (tgt[..., 2] == 1).all()
  words = {vocab.decode([int(t)]) for t in tgt[..., 1].ravel()}
  assert words == {'yes', 'no'}
  assert (b['query/encoder_input_vector_positions'] == -1).all()
  # Missing / not-constructed data dirs name the construction command.
  T.set_data_dir('supmer', str(tmp_path / 'nowhere'))
  with pytest.raises(DataError, match=r'promptjax\.supmer\.construct') as e:
    next(supmer.supmer_meta_batches(one))
  assert 'does not exist' in str(e.value)
  T.set_data_dir('supmer', str(tmp_path))
  with pytest.raises(DataError, match=r'no manifest\.json.*promptjax\.supmer\.construct'):
    next(supmer.supmer_meta_batches(one))


def test_construction_errors_name_the_fix(tmp_path, capsys):
  pytest.importorskip('apache_beam', reason='Apache Beam is not installed')
  from promptjax.supmer import construct as sc
  out = str(tmp_path / 'out')
  with pytest.raises(DataError, match=r'corpus_dir .*nope does not exist.*--corpus_dir='):
    sc.construct(sc.mini_config(out, corpus_dir=str(tmp_path / 'nope')))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DataError, match=r'no documents .*--corpus_dir='):
    sc.construct(sc.mini_config(out, corpus_dir=str(tmp_path / 'empty')))
  with pytest.raises(DataError, match='no output_dir given'):
    sc.construct(sc.mini_config(''))
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'x.txt').write_text('x')
  with pytest.raises(DataError, match='not empty.*--overwrite'):
    sc.construct(sc.mini_config(str(tmp_path / 'full')))
  # The command line prints one error line and exits 2.
  assert sc.main(['--mini', f'--output_dir={out}', f'--corpus_dir={tmp_path / "empty"}']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: SUPMER construction:')


@pytest.mark.parametrize('kind', ['kmeans', 'minibatch'])
def test_kmeans_recovers_separated_blob_centres(kind):
  pytest.importorskip('apache_beam', reason='Apache Beam is not installed')
  from promptjax.supmer import construct as sc
  rng = np.random.default_rng(0)
  centres = np.eye(6, 16, dtype=np.float32) * 10.0
  x = np.concatenate([c + 0.1 * rng.normal(size=(50, 16)) for c in centres]).astype(np.float32)
  got = sc.fit_kmeans(x, sc.ConstructConfig(num_clusters=6, kmeans=kind))
  order = [int(np.argmin(((got - c) ** 2).sum(1))) for c in centres]
  assert sorted(order) == list(range(6))
  np.testing.assert_allclose(got[order], centres, atol=0.1)
  with pytest.raises(DataError, match='fewer than num_clusters'):
    sc.fit_kmeans(x[:5], sc.ConstructConfig(num_clusters=6, corpus_dir='c'))
