"""CrossFit registry: hand-written TSV fixtures in CrossFit's layout, facts checked against the shared json.

Expectations come from outside the module under test: the T5 SentencePiece model (through sentencepiece
itself), ../shared/data/crossfit_{tasks,partitions}.json, and the fixture lines written here.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import SHARED_DATA

seqio = pytest.importorskip('seqio')

from promptjax.tasks import config as cfg  # pylint: disable=g-import-not-at-top
from promptjax.tasks import crossfit as cf  # pylint: disable=g-import-not-at-top

SPIECE = os.path.join(SHARED_DATA, 't5', 'spiece.model')
TASKS_JSON = os.path.join(SHARED_DATA, 'crossfit_tasks.json')
PARTITIONS_JSON = os.path.join(SHARED_DATA, 'crossfit_partitions.json')
EOS = 1

# k of the fixture tasks, as CrossFit's builders name the files: glue-sst2 and boolq are built with
# FewshotGymClassificationDataset (16 per label; boolq although it is a QA task), kilt_nq with
# FewshotGymTextToTextDataset (32 in total).
K = {'glue-sst2': 16, 'kilt_nq': 32, 'boolq': 16}

SST2_TRAIN = [(f'sentence: movie number {i} was {"good" if i % 2 else "bad"}',
               ['positive' if i % 2 else 'negative']) for i in range(20)]
SST2_DEV = [('sentence: a delight', ['positive']), ('sentence: a bore', ['negative'])]
SST2_TEST = [('sentence: fine', ['positive']), ('sentence: dull', ['negative']),
             ('sentence: ok', ['positive'])]
NQ_TRAIN = [
    ('question: who wrote hamlet', ['William Shakespeare', 'Shakespeare']),
    ('question: what is the capital of france', ['Paris']),
    ('question: largest planet', ['Jupiter', 'jupiter', 'the planet Jupiter']),
]
BOOLQ_TRAIN = [(f'question: is {i} even? [SEP] context: numbers', ['yes' if i % 2 == 0 else 'no'])
               for i in range(6)]


def _write(root, task, seed, split, examples=None, text=None):
  d = os.path.join(root, task)
  os.makedirs(d, exist_ok=True)
  path = os.path.join(d, f'{task}_{K[task]}_{seed}_{split}.tsv')
  if text is None:  # CrossFit's write_to_tsv: '{}\t{}\n'.format(input, output), references '\t'-joined.
    text = ''.join('{}\t{}\n'.format(x, '\t'.join(refs)) for x, refs in examples)
  with open(path, 'w') as f:
    f.write(text)
  return path


@pytest.fixture
def crossfit_dir(tmp_path, monkeypatch):
  root = str(tmp_path / 'crossfit')
  _write(root, 'glue-sst2', 13, 'train', SST2_TRAIN)
  _write(root, 'glue-sst2', 13, 'dev', SST2_DEV)
  _write(root, 'glue-sst2', 13, 'test', SST2_TEST)
  _write(root, 'kilt_nq', 100, 'train', NQ_TRAIN)
  _write(root, 'boolq', 13, 'train', BOOLQ_TRAIN)
  monkeypatch.delenv('PROMPTJAX_CROSSFIT_DIR', raising=False)
  cfg.set_data_dir('crossfit', root)
  yield root
  cfg.set_data_dir('crossfit', None)


@pytest.fixture
def t5_vocab():
  if not os.path.exists(SPIECE):
    pytest.skip(f'needs the T5 SentencePiece model at {SPIECE} (../shared/data)')
  cfg.set_vocabulary_path('t5', SPIECE)
  import sentencepiece  # pylint: disable=g-import-not-at-top
  yield sentencepiece.SentencePieceProcessor(model_file=SPIECE)
  cfg.set_vocabulary_path('t5', None)


def _shared(path):
  if not os.path.exists(path):
    pytest.skip(f'needs {path} (../shared/data beside the checkout)')
  with open(path) as f:
    return json.load(f)


def _read(name, split='train', lengths=None, shuffle=False, seed=None):
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split, shuffle=shuffle, seed=seed)
  return list(ds.as_numpy_iterator())


def _texts(exs, key='inputs_pretokenized'):
  return [e[key].decode() for e in exs]


# ----------------------------------------------------------------------------------------------------------
# Facts vs the shared json.


def test_task_table_equals_shared_json():
  tasks = _shared(TASKS_JSON)['tasks']
  assert len(tasks) == 160
  assert list(cf.CROSSFIT_TASKS) == list(tasks)
  for name, t in tasks.items():
    info = cf.CROSSFIT_TASKS[name]
    assert (info.name, info.metric, info.type, info.k) == (name, t['metric'], t['type'], t['k']), name
  for task, k in K.items():
    assert tasks[task]['k'] == k


def test_every_task_and_seed_is_registered_under_a_unique_documented_name():
  tasks = _shared(TASKS_JSON)['tasks']
  expected = {f'crossfit_{name.replace("-", "_")}_{seed}': (name, seed)
              for name in tasks for seed in (100, 13, 21, 42, 87)}
  assert len(expected) == 800  # the '-' -> '_' mapping keeps the 160 names apart
  # The bundled mini benchmark registers its own CrossFit-format tasks as crossfit_mini_*.
  registered = {n for n in cf.registered_tasks('crossfit') if not n.startswith('crossfit_mini_')}
  assert registered == set(expected)
  for seqio_name, (name, seed) in expected.items():
    task = seqio.TaskRegistry.get(seqio_name)
    assert set(task.splits) == {'train', 'dev', 'test', 'train_dev'}
    assert set(task.output_features) == {'inputs', 'targets'}
    info = cf.get_task_info(seqio_name)
    [metric_fn] = task.metric_fns   # the task's CrossFit metric, under its CrossFit name
    assert metric_fn.__name__ == 'crossfit_' + ''.join(c if c.isalnum() else '_' for c in
                                                        tasks[name]['metric'].lower())
    # Targets become all references (max-over-references metrics); predictions pass through.
    assert task.postprocess_fn('x', example={'answers': [b'a', b'b c']}, is_target=True) == ['a', 'b c']
    assert task.postprocess_fn('x', example={'answers': [b'a']}, is_target=False) == 'x'
    assert (info.crossfit_name, info.seed) == (name, seed)
    assert (info.metric, info.type, info.k) == (tasks[name]['metric'], tasks[name]['type'], tasks[name]['k'])
  assert not set(seqio.MixtureRegistry.names()) & set(seqio.TaskRegistry.names())


def test_qin2023_partitions_equal_shared_json_and_are_registered_per_seed():
  qin = _shared(PARTITIONS_JSON)['qin2023']
  task_names = set(_shared(TASKS_JSON)['tasks'])
  assert {k: list(v) for k, v in cf.QIN2023_LISTS.items()} == qin['lists']
  assert [(s.name, s.source_list, s.target_list) for s in cf.QIN2023_SETTINGS.values()] == [
      (s['setting'], s['source_list'], s['target_list']) for s in qin['settings']]
  assert len(cf.QIN2023_SETTINGS) == 10
  for s in qin['settings']:
    slug = s['setting'].lower().replace('->', '_to_').replace('-', '')  # the documented rule
    source, target = qin['lists'][s['source_list']], qin['lists'][s['target_list']]
    assert (len(source), len(target)) == (s['source_count'], s['target_count'])
    assert set(source) <= task_names and set(target) <= task_names
    for seed in (100, 13, 21, 42, 87):
      for role, names in (('source', source), ('target', target)):
        mix = seqio.MixtureRegistry.get(f'crossfit_qin2023_{slug}_{role}_{seed}')
        want = {f'crossfit_{n.replace("-", "_")}_{seed}' for n in names}
        assert {t.name for t in mix.tasks} == want
        assert {cf.get_task_info(t.name).crossfit_name for t in mix.tasks} == set(names)
        assert all(mix.get_rate(t) == 1.0 for t in mix.tasks)  # one task per meta-step, uniformly
      examples = seqio.MixtureRegistry.get(f'crossfit_qin2023_{slug}_source_examples_{seed}')
      assert {cf.get_task_info(t.name).crossfit_name for t in examples.tasks} == set(source)
    for suffix in ('', '_examples'):
      every_seed = seqio.MixtureRegistry.get(f'crossfit_qin2023_{slug}_source{suffix}_all')
      assert {(cf.get_task_info(t.name).crossfit_name, cf.get_task_info(t.name).seed)
              for t in every_seed.tasks} == {(n, seed) for n in source for seed in (100, 13, 21, 42, 87)}
  assert cf.qin2023_setting('Non-Cls->Cls').slug == 'noncls_to_cls'


def test_qin2023_table4_partitions():
  """Table 4's 12 / 24 source tasks (App. A.4 Table 10): nested samples of the 45 Cls->Cls source tasks
  (the shared Table 9 list), registered like the other source mixtures."""
  cls_source = set(_shared(PARTITIONS_JSON)['qin2023']['lists']['Classification Source'])
  twelve, twenty_four = (cf.QIN2023_TABLE4_SOURCES[n] for n in (12, 24))
  assert (len(set(twelve)), len(set(twenty_four))) == (12, 24)
  assert set(twelve) <= set(twenty_four) <= cls_source
  for n, tasks in ((12, twelve), (24, twenty_four)):
    mix = seqio.MixtureRegistry.get(cf.qin2023_table4_mixture_name(n, 'all', 'examples'))
    assert {(cf.get_task_info(t.name).crossfit_name, cf.get_task_info(t.name).seed) for t in mix.tasks} == {
        (x, seed) for x in tasks for seed in cf.SEEDS}
    assert {t.name for t in seqio.MixtureRegistry.get(f'crossfit_qin2023_cls_to_cls_{n}tasks_source_13').tasks} == {
        f'crossfit_{x.replace("-", "_")}_13' for x in tasks}
  with pytest.raises(ValueError, match='Table 4'):
    cf.qin2023_table4_mixture_name(45, 'all')
  assert cf.qin2023_mixture_name('NP->P', 'target', 87) == 'crossfit_qin2023_np_to_p_target_87'


def test_crossfit_split_files_equal_shared_json_and_are_registered():
  splits = _shared(PARTITIONS_JSON)['crossfit']
  task_names = set(_shared(TASKS_JSON)['tasks'])
  assert len(splits) == 8
  for key, lists in splits.items():
    nonempty = {part: lists[part] for part in ('train', 'dev', 'test', 'all') if lists.get(part)}
    assert {p: list(v) for p, v in cf.CROSSFIT_SPLITS[key].items()} == nonempty
    for part, names in nonempty.items():
      assert set(names) <= task_names
      for seed in (100, 13, 21, 42, 87):
        mix = seqio.MixtureRegistry.get(f'crossfit_split_{key}_{part}_{seed}')
        assert {cf.get_task_info(t.name).crossfit_name for t in mix.tasks} == set(names)
        assert {cf.get_task_info(t.name).seed for t in mix.tasks} == {seed}
  assert seqio.MixtureRegistry.get('crossfit_split_random_train_examples_13')


def test_registration_reads_nothing():
  calls = []

  def data_dir():
    calls.append(1)
    return '/nonexistent'

  names = cf.register_crossfit_tasks(cf.CROSSFIT_TASKS, data_dir_fn=data_dir, name_prefix='unread_crossfit')
  try:
    assert len(names) == 800
    assert not calls  # the directory is only looked up when data is requested
  finally:
    cf.unregister_crossfit_tasks(names)
  assert not cf.registered_tasks('unread_crossfit')


def test_import_without_data_or_vocabulary():
  env = dict(os.environ, PROMPTJAX_CROSSFIT_DIR='/nonexistent/crossfit', PROMPTJAX_T5_VOCAB='/nonexistent/x')
  code = ('import promptjax.tasks.crossfit as cf, seqio\n'
          'assert len([n for n in cf.registered_tasks("crossfit") if not n.startswith("crossfit_mini_")]) == 800\n'
          'try:\n'
          '  seqio.get_mixture_or_task("crossfit_glue_sst2_13").get_dataset(None, split="train")\n'
          'except cf.DataError as e:\n'
          '  print("DataError:", e)\n')
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "DataError: Task 'crossfit_glue_sst2_13'" in out.stdout
  assert '/nonexistent/crossfit' in out.stdout


# ----------------------------------------------------------------------------------------------------------
# Reading.


def test_counts(crossfit_dir):
  task = seqio.TaskRegistry.get('crossfit_glue_sst2_13')
  for split, examples in (('train', SST2_TRAIN), ('dev', SST2_DEV), ('test', SST2_TEST)):
    assert task.num_input_examples(split) == len(examples)
    assert len(list(task.source.get_dataset(split, shuffle=False).as_numpy_iterator())) == len(examples)
  assert seqio.TaskRegistry.get('crossfit_kilt_nq_100').num_input_examples('train') == 3


def test_train_dev_split_and_epoch_steps(crossfit_dir, t5_vocab):
  """'train_dev' (Qin et al. 2023 §5.3's MTL data) is the train file, then the dev file; epoch_steps is
  ceil(epochs * those lines / batch size), the lines counted from what the fixture wrote."""
  from promptjax.data import epoch_steps
  task = seqio.TaskRegistry.get('crossfit_glue_sst2_13')
  got = _texts(task.source.get_dataset('train_dev', shuffle=False).as_numpy_iterator(), 'inputs')
  assert got == [x for x, _ in SST2_TRAIN + SST2_DEV]
  n = len(SST2_TRAIN) + len(SST2_DEV)
  assert task.num_input_examples('train_dev') == n
  assert epoch_steps('crossfit_glue_sst2_13', 20, 4, split='train_dev') == -(-20 * n // 4)
  assert epoch_steps('crossfit_glue_sst2_13', 1, 64, split='train') == 1
  with pytest.raises(cfg.DataError, match='TRAIN_EPOCHS must be positive'):
    epoch_steps('crossfit_glue_sst2_13', 0, 4)


def test_tokenization_equals_the_vocabulary_plus_eos(crossfit_dir, t5_vocab):
  exs = _read('crossfit_glue_sst2_13', split='dev')
  assert [(x, refs) for x, refs in SST2_DEV] == [
      (e['inputs_pretokenized'].decode(), [a.decode() for a in e['answers']]) for e in exs]
  for e, (x, refs) in zip(exs, SST2_DEV):
    assert e['inputs'].tolist() == t5_vocab.encode(x) + [EOS]
    assert e['targets'].tolist() == t5_vocab.encode(refs[0]) + [EOS]
    assert e['targets_pretokenized'].decode() == refs[0]
  # The T5 model's own pieces: '▁positive' and '▁negative' are single tokens.
  assert exs[0]['targets'].tolist() == [t5_vocab.piece_to_id('▁positive'), EOS]
  assert exs[1]['targets'].tolist() == [t5_vocab.piece_to_id('▁negative'), EOS]


def test_truncation_keeps_eos_last(crossfit_dir, t5_vocab):
  exs = _read('crossfit_kilt_nq_100', lengths={'inputs': 4, 'targets': 2})
  for e, (x, refs) in zip(exs, NQ_TRAIN):
    assert e['inputs'].tolist() == t5_vocab.encode(x)[:3] + [EOS]
    assert e['targets'].tolist() == t5_vocab.encode(refs[0])[:1] + [EOS]
  long = _read('crossfit_kilt_nq_100', lengths={'inputs': 512, 'targets': 64})
  assert [e['inputs'].tolist() for e in long] == [t5_vocab.encode(x) + [EOS] for x, _ in NQ_TRAIN]


def test_multi_reference_lines(crossfit_dir, t5_vocab):
  exs = _read('crossfit_kilt_nq_100')
  assert [[a.decode() for a in e['answers']] for e in exs] == [refs for _, refs in NQ_TRAIN]
  assert _texts(exs, 'targets_pretokenized') == ['William Shakespeare', 'Paris', 'Jupiter']


def test_parsing_follows_crossfit_strip_split(crossfit_dir, t5_vocab):
  # line.strip() removes surrounding whitespace (including a trailing tab); inner empty fields stay.
  _write(crossfit_dir, 'glue-sst2', 13, 'dev', text='  sentence: padded \tpositive\t\r\nsentence: x\t\tno\n')
  exs = _read('crossfit_glue_sst2_13', split='dev')
  assert _texts(exs) == ['sentence: padded ', 'sentence: x']
  assert [[a.decode() for a in e['answers']] for e in exs] == [['positive'], ['', 'no']]


def test_order_is_deterministic_and_seeded_shuffle_reproducible(crossfit_dir, t5_vocab):
  file_order = [x for x, _ in SST2_TRAIN]
  assert _texts(_read('crossfit_glue_sst2_13')) == file_order
  assert _texts(_read('crossfit_glue_sst2_13')) == file_order
  a = _texts(_read('crossfit_glue_sst2_13', shuffle=True, seed=7))
  b = _texts(_read('crossfit_glue_sst2_13', shuffle=True, seed=7))
  c = _texts(_read('crossfit_glue_sst2_13', shuffle=True, seed=8))
  assert a == b
  assert sorted(a) == sorted(file_order)
  assert a != file_order and a != c


def test_feature_converter(crossfit_dir, t5_vocab):
  ds = seqio.TaskRegistry.get('crossfit_glue_sst2_13').get_dataset(
      {'inputs': 16, 'targets': 4}, split='dev', shuffle=False)
  converter = seqio.EncDecFeatureConverter(pack=False)
  converted = list(converter(ds, {'inputs': 16, 'targets': 4}).as_numpy_iterator())
  assert set(converted[0]) == {'encoder_input_tokens', 'decoder_target_tokens', 'decoder_input_tokens',
                               'decoder_loss_weights'}
  for e, (x, refs) in zip(converted, SST2_DEV):
    enc = t5_vocab.encode(x) + [EOS]
    dec = t5_vocab.encode(refs[0]) + [EOS]
    assert e['encoder_input_tokens'].tolist() == enc + [0] * (16 - len(enc))
    assert e['decoder_target_tokens'].tolist() == dec + [0] * (4 - len(dec))
    assert e['decoder_input_tokens'].tolist() == ([0] + dec + [0] * 4)[:4]  # shifted right, BOS = 0
    assert e['decoder_loss_weights'].tolist() == [1] * len(dec) + [0] * (4 - len(dec))


def test_examples_rate_mixture_uses_train_file_sizes(crossfit_dir, t5_vocab):
  name = 'test_crossfit_examples_mixture'
  try:
    mix = cf.register_crossfit_mixture(name, ['glue-sst2', 'boolq'], 13, rate='examples')
    rates = {cf.get_task_info(t.name).crossfit_name: mix.get_rate(t) for t in mix.tasks}
    assert rates == {'glue-sst2': len(SST2_TRAIN), 'boolq': len(BOOLQ_TRAIN)}
    ds = mix.get_dataset({'inputs': 32, 'targets': 4}, split='train', shuffle=False, num_epochs=1,
                         passthrough_features=['answers'])
    first = next(ds.as_numpy_iterator())
    assert {'inputs', 'targets', 'answers'} <= set(first)
  finally:
    seqio.MixtureRegistry.remove(name)
  with pytest.raises(ValueError, match='not registered'):
    cf.register_crossfit_mixture('test_crossfit_bad_mixture', ['no-such-task'], 13)


# ----------------------------------------------------------------------------------------------------------
# Errors: raised when data is requested, naming the task, the path and the fix.


def _error(name, split='train'):
  with pytest.raises(cfg.DataError) as e:
    seqio.get_mixture_or_task(name).get_dataset(None, split=split, shuffle=False)
  return str(e.value)


def test_error_no_data_dir_configured(monkeypatch):
  monkeypatch.delenv('PROMPTJAX_CROSSFIT_DIR', raising=False)
  cfg.set_data_dir('crossfit', None)
  msg = _error('crossfit_glue_sst2_13')
  assert 'crossfit_glue_sst2_13' in msg and 'glue-sst2' in msg
  assert 'PROMPTJAX_CROSSFIT_DIR' in msg and 'set_data_dir' in msg


def test_error_data_dir_missing(tmp_path, monkeypatch):
  monkeypatch.delenv('PROMPTJAX_CROSSFIT_DIR', raising=False)
  missing = str(tmp_path / 'nowhere')
  cfg.set_data_dir('crossfit', missing)
  try:
    msg = _error('crossfit_glue_sst2_13')
  finally:
    cfg.set_data_dir('crossfit', None)
  assert 'crossfit_glue_sst2_13' in msg and missing in msg
  assert 'PROMPTJAX_CROSSFIT_DIR' in msg and 'set_data_dir' in msg


def test_error_task_dir_missing(crossfit_dir):
  msg = _error('crossfit_superglue_rte_13')
  assert 'superglue-rte' in msg and os.path.join(crossfit_dir, 'superglue-rte') in msg
  assert 'PROMPTJAX_CROSSFIT_DIR' in msg and 'glue-sst2' in msg  # lists what the directory holds


def test_error_split_file_missing(crossfit_dir):
  msg = _error('crossfit_kilt_nq_100', split='dev')
  assert 'crossfit_kilt_nq_100' in msg
  assert os.path.join(crossfit_dir, 'kilt_nq', 'kilt_nq_32_100_dev.tsv') in msg
  assert 'kilt_nq_32_100_train.tsv' in msg and 'PROMPTJAX_CROSSFIT_DIR' in msg
  msg = _error('crossfit_glue_sst2_42')  # another seed
  assert os.path.join(crossfit_dir, 'glue-sst2', 'glue-sst2_16_42_train.tsv') in msg


@pytest.mark.parametrize('bad_line, problem', [
    ('sentence: no tab here', 'no tab between input and answer'),
    ('\tpositive', 'empty input or answer'),  # strip() eats the leading tab, as in CrossFit
    ('sentence: empty answer\t', 'empty input or answer'),
    ('  \t  ', 'empty line'),
    ('', 'empty line'),
])
def test_error_malformed_line(crossfit_dir, bad_line, problem):
  lines = ['sentence: one\tpositive', 'sentence: two\tnegative', bad_line, 'sentence: four\tpositive']
  path = _write(crossfit_dir, 'glue-sst2', 13, 'test', text='\n'.join(lines) + '\n')
  msg = _error('crossfit_glue_sst2_13', split='test')
  assert 'crossfit_glue_sst2_13' in msg and path in msg and 'line 3' in msg and problem in msg


def test_error_empty_file(crossfit_dir):
  path = _write(crossfit_dir, 'glue-sst2', 13, 'test', text='')
  msg = _error('crossfit_glue_sst2_13', split='test')
  assert 'crossfit_glue_sst2_13' in msg and path in msg and 'no examples' in msg


def test_error_not_utf8(crossfit_dir):
  path = os.path.join(crossfit_dir, 'glue-sst2', 'glue-sst2_16_13_test.tsv')
  with open(path, 'wb') as f:
    f.write(b'sentence: caf\xe9\tpositive\n')
  msg = _error('crossfit_glue_sst2_13', split='test')
  assert path in msg and 'UTF-8' in msg


def test_error_unknown_split(crossfit_dir):
  msg = _error('crossfit_glue_sst2_13', split='validation')
  assert 'crossfit_glue_sst2_13' in msg and 'train, dev, test' in msg


# ----------------------------------------------------------------------------------------------------------
# Registering other CrossFit-format data (the mini benchmark's call).


def test_register_other_crossfit_format_data(tmp_path, t5_vocab):
  root = str(tmp_path / 'mini')
  os.makedirs(os.path.join(root, 'crossfit', 'mini-sentiment'))
  with open(os.path.join(root, 'crossfit', 'mini-sentiment', 'mini-sentiment_16_100_train.tsv'), 'w') as f:
    f.write('review: fine\tpositive\nreview: bad\tnegative\tawful\n')
  calls = []

  def data_dir():
    calls.append(1)
    return os.path.join(root, 'crossfit')

  spec = {'mini-sentiment': {'metric': 'ACC', 'type': 'classification', 'k': 16}}
  names = cf.register_crossfit_tasks(spec, data_dir_fn=data_dir, vocab_name='t5',
                                     name_prefix='test_mini_crossfit')
  try:
    assert names == [f'test_mini_crossfit_mini_sentiment_{s}' for s in (100, 13, 21, 42, 87)]
    assert not calls
    info = cf.get_task_info('test_mini_crossfit_mini_sentiment_100')
    assert (info.crossfit_name, info.seed, info.metric, info.type, info.k) == (
        'mini-sentiment', 100, 'ACC', 'classification', 16)
    assert set(cf.registered_tasks('test_mini_crossfit')) == set(names)
    exs = _read('test_mini_crossfit_mini_sentiment_100')
    assert [[a.decode() for a in e['answers']] for e in exs] == [['positive'], ['negative', 'awful']]
    assert exs[1]['inputs'].tolist() == t5_vocab.encode('review: bad') + [EOS]
    msg = _error('test_mini_crossfit_mini_sentiment_13')
    assert 'mini-sentiment_16_13_train.tsv' in msg and 'data_dir' in msg  # names the directory function
    with pytest.raises(ValueError, match='already registered'):
      cf.register_crossfit_tasks(spec, data_dir_fn=data_dir, name_prefix='test_mini_crossfit')
    again = cf.register_crossfit_tasks(spec, data_dir_fn=data_dir, name_prefix='test_mini_crossfit',
                                       overwrite=True, seeds=(100,))
    assert again == ['test_mini_crossfit_mini_sentiment_100']
  finally:
    cf.unregister_crossfit_tasks(names)
  assert 'test_mini_crossfit_mini_sentiment_100' not in seqio.TaskRegistry.names()


@pytest.mark.parametrize('spec, match', [
    ({'metric': 'F1', 'type': 'classification', 'k': 16}, 'metric'),
    ({'metric': 'ACC', 'type': 'cls', 'k': 16}, 'type'),
    ({'metric': 'ACC', 'type': 'classification', 'k': 0}, 'k must'),
    ({'metric': 'ACC', 'type': 'classification'}, 'missing'),
    ({'metric': 'ACC', 'type': 'classification', 'k': 16, 'seed': 1}, 'unknown'),
])
def test_register_validates_specs(spec, match):
  with pytest.raises(ValueError, match=match):
    cf.register_crossfit_tasks({'x-task': spec}, data_dir_fn=lambda: '/x', name_prefix='test_bad_crossfit')
  assert not cf.registered_tasks('test_bad_crossfit')


def test_register_rejects_names_that_collide_after_dash_mapping():
  spec = {'metric': 'ACC', 'type': 'classification', 'k': 16}
  with pytest.raises(ValueError, match='both map'):
    cf.register_crossfit_tasks({'a-b': spec, 'a_b': spec}, data_dir_fn=lambda: '/x',
                               name_prefix='test_collide_crossfit')
  assert not cf.registered_tasks('test_collide_crossfit')


def test_answers_are_a_dense_string_vector(crossfit_dir, t5_vocab):
  task = seqio.TaskRegistry.get('crossfit_kilt_nq_100')
  spec = task.get_dataset(None, split='train', shuffle=False).element_spec
  assert spec['answers'].shape.as_list() == [None] and spec['answers'].dtype.name == 'string'
  assert np.array_equal(_read('crossfit_kilt_nq_100')[2]['answers'],
                        np.array([b'Jupiter', b'jupiter', b'the planet Jupiter'], dtype=object))
