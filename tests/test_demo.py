"""`make demo` (the miniature Table 1) runs end to end: here with one method and a few steps."""

import json
import os

from promptjax import demo


def test_demo_writes_the_table_and_the_plots(tmp_path, capsys):
  comparison = demo.main(['--output_dir', str(tmp_path), '--lm_steps', '2', '--mtl_steps', '2',
                          '--fewshot_epochs', '2', '--max_examples', '6', '--prompt_length', '4',
                          '--methods', 'MTL-T✓P✓ shallow'])
  out = capsys.readouterr().out
  assert '[4/4]' in out and '| MTL-T✓P✓ shallow |' in out
  assert comparison['reference'] == 'No cont. pretraining'   # the first row when MTL-T✓P✗ is not run
  assert set(comparison['rows']) == {'No cont. pretraining', 'MTL-T✓P✓ shallow'}
  # Table 1's columns: shallow then deep, 0-shot then 16-shot; the shallow-only method has no deep cells.
  assert comparison['settings'] == ['0shot_shallow', '16shot_shallow', '0shot_deep', '16shot_deep']
  assert set(comparison['rows']['MTL-T✓P✓ shallow']) == {'0shot_shallow', '16shot_shallow'}
  assert 'p_value' in comparison['rows']['MTL-T✓P✓ shallow']['16shot_shallow']
  cmp_dir = tmp_path / 'comparison'
  assert open(cmp_dir / 'table.md').read() == comparison['table']
  for s in comparison['settings']:
    assert os.path.getsize(cmp_dir / f'per_dataset_{s}.png') > 1000
  sel = json.load(open(tmp_path / 'eval' / 'mtl_tv_pv_shallow' / '16shot_shallow' / 'selected_examples.json'))
  assert len(sel['examples']) == 10
  for d in ('lm_adapted', 'mtl_tv_pv_shallow'):
    assert any(n.startswith('checkpoint_') for n in os.listdir(tmp_path / 'models' / d))
