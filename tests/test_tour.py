"""The foundation tour (`python -m promptjax.tour`) keeps working (a short run)."""

import os

from promptjax import tour as demo


def test_demo_runs_and_prompt_tuning_lowers_the_loss(tmp_path):
  results = demo.main(['--output_dir', str(tmp_path), '--steps', '15'])
  assert set(results) == {'shallow', 'deep'}
  for kind, (first, last, _) in results.items():
    assert last < first, kind
  assert os.path.exists(tmp_path / 'shallow_prompt.npy')
  assert os.path.exists(tmp_path / 'deep_prompt.npz')
  assert os.path.exists(tmp_path / 'hf_model' / 'model.safetensors')
