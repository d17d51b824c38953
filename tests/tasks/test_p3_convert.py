"""P3's Parquet form (bigscience/P3 main and refs/convert/parquet) converted into the release layout."""

import glob
import json
import os

import numpy as np
import pytest

from conftest import SHARED_DATA
from promptjax.tasks import p3, p3_convert

pa = pytest.importorskip('pyarrow')
pq = pytest.importorskip('pyarrow.parquet')
SAMPLES = os.path.join(SHARED_DATA, 'p3_samples')
pytestmark = pytest.mark.skipif(not os.path.isdir(SAMPLES), reason='needs ../shared/data (real P3 records)')

ADV = 'adversarial_qa_dbert_based_on'                # plain: inputs/targets (+ pretokenized)
HS = 'hellaswag_complete_first_then_score_eval'      # answer_choices, idx, is_correct, weight
# The Arrow types the Hub's Parquet files carry (the dataset card's features: sequence int32, string, bool, float32).
ARROW_TYPES = {'inputs': pa.list_(pa.int32()), 'targets': pa.list_(pa.int32()), 'idx': pa.list_(pa.int32()),
               'inputs_pretokenized': pa.string(), 'targets_pretokenized': pa.string(),
               'answer_choices': pa.list_(pa.string()), 'is_correct': pa.bool_(), 'weight': pa.float32()}


def _records(subset, split):
  with open(os.path.join(SAMPLES, subset, f'{split}.jsonl')) as f:
    return [json.loads(line) for line in f]


def _write_parquet(path, records, shards=1):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  names = list(records[0])
  schema = pa.schema([(k, ARROW_TYPES[k]) for k in names])
  for i in range(shards):
    part = records[i::shards]
    table = pa.table({k: [r[k] for r in part] for k in names}, schema=schema)
    pq.write_table(table, path.format(i=i, n=shards))


@pytest.fixture(scope='module')
def parquet_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('p3_parquet'))
  # main's layout: <subset>/<split>-NNNNN-of-NNNNN.parquet (two shards for one split)
  _write_parquet(os.path.join(root, HS, 'validation-{i:05d}-of-{n:05d}.parquet'), _records(HS, 'validation'), 2)
  _write_parquet(os.path.join(root, HS, 'test-{i:05d}-of-{n:05d}.parquet'), _records(HS, 'test'))
  # refs/convert/parquet's layout: <subset>/<split>/NNNN.parquet
  _write_parquet(os.path.join(root, ADV, 'train', '{i:04d}.parquet'), _records(ADV, 'train'))
  return root


def test_parquet_converts_to_the_release_layout(parquet_dir, tmp_path):
  out = str(tmp_path / 'data')
  logged = []
  done = p3_convert.convert(parquet_dir, out, num_shards=2, log=logged.append)
  assert done == {ADV: {'train': 28}, HS: {'validation': 28, 'test': 28}} and len(logged) == 2
  assert sorted(os.listdir(os.path.join(out, HS))) == [
      'info.test.json', 'info.validation.json', 'stats.test.json', 'stats.validation.json',
      'test.tfrecord-00000-of-00002', 'test.tfrecord-00001-of-00002',
      'validation.tfrecord-00000-of-00002', 'validation.tfrecord-00001-of-00002']
  # The same info/stats as the records written directly in the release layout.
  ref = str(tmp_path / 'ref')
  p3.write_p3_split(os.path.join(ref, HS), 'validation', _records(HS, 'validation'), num_shards=2)
  for name in ('info.validation.json', 'stats.validation.json'):
    with open(os.path.join(out, HS, name)) as a, open(os.path.join(ref, HS, name)) as b:
      assert json.load(a) == json.load(b)
  # The P3 reader gets every record back, field for field.
  for subset, split in ((HS, 'validation'), (ADV, 'train')):
    source = p3.P3DataSource(subset, lambda: out)
    got = sorted((ex for ex in source.get_dataset(split, shuffle=False).as_numpy_iterator()),
                 key=lambda ex: (ex['inputs_pretokenized'], tuple(ex.get('idx', ()))))
    want = sorted(_records(subset, split), key=lambda r: (r['inputs_pretokenized'].encode(), tuple(r.get('idx', ()))))
    assert len(got) == len(want) == 28
    for g, w in zip(got, want):
      assert sorted(g) == sorted(w)
      for k, v in w.items():
        if isinstance(v, str):
          assert g[k].decode() == v
        elif k == 'answer_choices':
          assert [c.decode() for c in g[k]] == v
        else:
          np.testing.assert_allclose(g[k], v, rtol=1e-6)
  # The release layout itself is read and written again with more files per split (one per host).
  resharded = str(tmp_path / 'resharded')
  assert p3_convert.main(['convert', '--input_dir', out, '--output_dir', resharded, '--subset', HS,
                          '--num_shards', '3']) == 0
  assert len(glob.glob(os.path.join(resharded, HS, 'validation.tfrecord-*-of-00003'))) == 3
  for name in ('info.validation.json', 'stats.test.json'):
    with open(os.path.join(out, HS, name)) as a, open(os.path.join(resharded, HS, name)) as b:
      assert {k: v for k, v in json.load(a).items() if k != 'num_shards'} == \
          {k: v for k, v in json.load(b).items() if k != 'num_shards'}


def test_mixture_patterns_and_errors(parquet_dir, tmp_path, capsys):
  assert p3_convert.main(['patterns', '--mixture', 'd4_dev', '--prefix', 'data/']) == 0
  lines = capsys.readouterr().out.split()
  assert len(lines) == 42 and all(line.startswith('data/') and line.endswith('/*') for line in lines)
  assert p3_convert.main(['convert', '--input_dir', parquet_dir, '--output_dir', str(tmp_path),
                          '--mixture', 'd4_dev']) == 2
  assert 'not in' in capsys.readouterr().err
  assert p3_convert.main(['patterns', '--mixture', 'nope']) == 2
  assert "unknown P3 mixture 'nope'" in capsys.readouterr().err
  assert not glob.glob(str(tmp_path / '*'))


def test_empty_release_splits_are_skipped_and_named(parquet_dir, tmp_path):
  # The release marks an empty split with info.<split>.json = {} and stats examples 0 (e.g. many test splits).
  out = str(tmp_path / 'data')
  p3_convert.convert(parquet_dir, out, subsets=[ADV], log=lambda _: None)
  sub = os.path.join(out, ADV)
  open(os.path.join(sub, 'test.tfrecord-00000-of-00001'), 'wb').close()
  with open(os.path.join(sub, 'info.test.json'), 'w') as f:
    f.write('{}')
  with open(os.path.join(sub, 'stats.test.json'), 'w') as f:
    f.write('{"examples": 0}')
  with pytest.raises(p3.cfg.DataError, match=r"split 'test' is empty in the P3 release"):
    p3.P3DataSource(ADV, lambda: out).features('test')
  assert p3_convert.convert(out, str(tmp_path / 'resharded'), subsets=[ADV], num_shards=2,
                            log=lambda _: None) == {ADV: {'train': 28}}
