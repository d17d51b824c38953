"""`make demo` (the miniature Table 1) runs end to end: here with one method and a few steps."""

import json
import os

import numpy as np
import pytest

from promptjax import demo


def test_demo_writes_the_table_and_the_plots(tmp_path, capsys):
  comparison = demo.main(['--output_dir', str(tmp_path), '--mtl_steps', '2', '--workers', '1',
                          '--fewshot_epochs', '2', '--max_examples', '6', '--prompt_length', '4',
                          '--methods', 'MTL-T✓P✓ shallow'])
  out = capsys.readouterr().out
  assert '[4/4]' in out and '| MTL-T✓P✓ shallow |' in out
  assert comparison['reference'] == 'No cont. pretraining'   # the first row when MTL-T✓P✗ is not run
  assert set(comparison['rows']) == {'No cont. pretraining', 'MTL-T✓P✓ shallow'}
  # Table 1's columns, 0-shot then 16-shot: only the shallow prompt's, as no row run has a deep prompt (the
  # row without a prompt is tuned with a fresh prompt of the kinds the other rows have).
  assert comparison['settings'] == ['0shot_shallow', '16shot_shallow']
  assert set(comparison['rows']['MTL-T✓P✓ shallow']) == {'0shot_shallow', '16shot_shallow'}
  assert sorted(os.listdir(tmp_path / 'eval' / 'no_cont_pretraining')) == ['0shot_shallow', '16shot_shallow']
  assert 'p_value' in comparison['rows']['MTL-T✓P✓ shallow']['16shot_shallow']
  cmp_dir = tmp_path / 'comparison'
  assert open(cmp_dir / 'table.md').read() == comparison['table']
  for s in comparison['settings']:
    assert os.path.getsize(cmp_dir / f'per_dataset_{s}.png') > 1000
  sel = json.load(open(tmp_path / 'eval' / 'mtl_tv_pv_shallow' / '16shot_shallow' / 'selected_examples.json'))
  assert len(sel['examples']) == 10
  assert os.listdir(tmp_path / 'models') == ['mtl_tv_pv_shallow']   # from the bundled backbone
  assert any(n.startswith('checkpoint_') for n in os.listdir(tmp_path / 'models' / 'mtl_tv_pv_shallow'))
  # The verdict under the table: the claims whose rows ran (here only "continued pretraining helps").
  verdict = json.load(open(cmp_dir / 'verdict.json'))
  assert [c['claim'] for c in verdict['claims']] == [demo.CLAIMS[0][0]]
  (comp,) = verdict['claims'][0]['comparisons']
  assert (comp['a'], comp['b'], comp['setting']) == ('MTL-T✓P✓ shallow', 'No cont. pretraining', '0shot_shallow')
  row, ref = comparison['rows']['MTL-T✓P✓ shallow']['0shot_shallow'], comparison['rows']['No cont. pretraining']
  assert np.isclose(comp['arg_a'], row['arg']) and np.isclose(comp['arg_b'], ref['0shot_shallow']['arg'])
  assert comp['p_value'] == row['p_value']   # the same paired bootstrap as the table's
  assert comp['holds'] == (comp['diff'] > 0 and comp['p_value'] < demo.ALPHA)
  assert ('HOLDS here' if comp['holds'] else 'does NOT hold here') in out


def test_default_steps_are_one_epoch_over_the_training_records(tmp_path, capsys, monkeypatch):
  """Wu et al. 2022 App. C train one epoch: the demo's default step count covers mini_train's training
  records (counted in the TFRecord files, not through seqio) with batch 32, and no more."""
  import glob
  import tensorflow as tf
  from promptjax.tasks import config, mini
  files = [f for s in mini.p3_subsets('train')
           for f in glob.glob(os.path.join(config.BUNDLED_DIR, 'p3', s, 'train.tfrecord-*'))]
  assert len(files) == len(mini.p3_subsets('train'))
  records = sum(1 for f in files for _ in tf.data.TFRecordDataset(f))
  # The demo's printed plan, stopped before any training starts.
  monkeypatch.setattr(demo, '_train_all', lambda jobs, workers: (_ for _ in ()).throw(SystemExit(0)))
  with pytest.raises(SystemExit):
    demo.main(['--output_dir', str(tmp_path), '--methods', 'MTL-T✓P✗'])
  plan = next(l for l in capsys.readouterr().out.splitlines() if l.startswith('[2/4]'))
  steps = int(plan.split(': ')[1].split(' MTL steps')[0])
  assert (steps - 1) * 32 < records <= steps * 32
