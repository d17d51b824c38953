"""The README's Python examples run (with the model size swapped for the tiny test size)."""

import os
import re

README = os.path.join(os.path.dirname(__file__), '..', 'README.md')


def _python_blocks():
  with open(README) as f:
    return re.findall(r'```python\n(.*?)```', f.read(), flags=re.S)


def test_readme_model_example_runs(tmp_path, monkeypatch):
  blocks = _python_blocks()
  assert len(blocks) >= 3
  monkeypatch.chdir(tmp_path)
  code = blocks[0].replace("'t5_1_1_lm100k_large'", "'tiny'")
  ns = {}
  exec(compile(code, 'README.md[0]', 'exec'), ns)
  assert ns['logits'].shape == (1, 2, 32128)
  assert ns['scores'].shape == (1,) and float(ns['loss']) > 0
  # The export example works on the objects the first one made.
  ns['config'] = ns['model'].config
  from promptjax.checkpoints import hf
  ns['hf'] = hf
  exec(compile(blocks[2], 'README.md[2]', 'exec'), ns)
  assert os.path.exists('prompt.npz') and os.path.exists('hf_dir/model.safetensors')


def test_readme_data_example_runs():
  block = next(b for b in _python_blocks() if 'model_batches' in b)
  ns = {}
  exec(compile(block, 'README.md[data]', 'exec'), ns)
  assert sorted(ns['batch']) == ['decoder_input_tokens', 'decoder_loss_weights', 'decoder_target_tokens',
                                 'encoder_input_tokens']
  assert ns['batch']['encoder_input_tokens'].shape == (4, 64)


def test_readme_seqio_evaluation_script_runs(tmp_path, capsys):
  """The "own seqio evaluation script" example, on a random init (no '/tmp/run') writing into tmp_path, with
  one template of the mixture (its ten take 25 s here)."""
  block = next(b for b in _python_blocks() if 'seqio_score_fn' in b)
  nli = 'mini_nli_can_we_infer_score_eval_rank_classification'
  code = (block.replace("'/tmp/run'", 'None').replace("'/tmp/my_eval'", repr(str(tmp_path)))
          .replace("'mini_heldout_rank_classification'", repr(nli)))
  exec(compile(code, 'README.md[seqio]', 'exec'), {})
  printed = capsys.readouterr().out
  assert f"{nli} {{'{nli}': {{'accuracy': " in printed and "'Classification-F1': " in printed
  assert os.path.exists(tmp_path / 'crossfit_mini_topic_13-metrics.jsonl')
  assert os.path.exists(tmp_path / 'mini_nli_can_we_infer_score_eval_rank_classification-metrics.jsonl')
