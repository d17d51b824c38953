"""`load_checkpoint` format detection, and the real tiny T5X checkpoint run through HF PyTorch."""

import os

import jax
import numpy as np
import pytest
import transformers

import reference_t5 as ref
from conftest import SHARED_DATA
from promptjax.checkpoints import export_hf, load_checkpoint
from promptjax.models import PromptConfig, PromptableT5, get_config

TINY_T5X = os.path.join(SHARED_DATA, 't5x_tiny', 'checkpoint_3')
needs_shared = pytest.mark.skipif(not os.path.isdir(TINY_T5X),
                                  reason=f'shared test data not found at {SHARED_DATA}')


@needs_shared
def test_real_t5x_checkpoint_computes_what_hf_computes(tmp_path):
  """T5X checkpoint -> promptjax; the same weights exported to HF and run by transformers agree."""
  params, config = load_checkpoint(TINY_T5X, relative_attention_max_distance=8)
  assert (config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim) == (4, 2, 2, 8)
  export_hf(params, config, str(tmp_path / 'hf'))
  hf_model = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / 'hf')).eval()
  batch = ref.make_batch(config.vocab_size, n=13, t=6, seed=3)
  want, want_loss = ref.hf_forward(hf_model, batch)
  model = PromptableT5(config)
  got = np.asarray(model.logits(params, batch))
  valid = batch['decoder_target_tokens'] > 0
  assert np.max(np.abs(got[valid] - want[valid])) <= 1e-4
  np.testing.assert_allclose(float(model.loss_fn(params, batch)[0]), want_loss, rtol=1e-6)
  # HF directory detected as such, and a fresh prompt leaves the imported weights untouched.
  params2, config2 = load_checkpoint(str(tmp_path / 'hf'))
  assert config2 == config
  with_prompt = PromptableT5(config, PromptConfig(kind='shallow', length=3)).init_params(
      jax.random.PRNGKey(0), transformer_params=params2)
  np.testing.assert_array_equal(with_prompt['decoder']['logits_dense']['kernel'],
                                params['decoder']['logits_dense']['kernel'])


def test_load_checkpoint_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    load_checkpoint(str(tmp_path / 'missing'))
  (tmp_path / 'junk').mkdir()
  (tmp_path / 'junk' / 'notes.txt').write_text('hello')
  with pytest.raises((ValueError, FileNotFoundError), match='junk'):
    load_checkpoint(str(tmp_path / 'junk'))


def test_hub_ids_and_gcs_paths_say_how_to_fetch_them_first(tmp_path, monkeypatch):
  from promptjax.checkpoints import restore
  monkeypatch.chdir(tmp_path)
  model = PromptableT5(get_config('tiny'))
  with pytest.raises(restore.RestoreError, match=r"hub ids must be downloaded first, e\.g\. huggingface-cli "
                                                 r"download google/t5-large-lm-adapt --local-dir DIR"):
    restore.load_transformer(model, 'google/t5-large-lm-adapt')
  with pytest.raises(restore.RestoreError, match=r'gsutil -m cp -r gs://t5-data/x/checkpoint_1100000 DIR'):
    restore.load_params(model, 'gs://t5-data/x/checkpoint_1100000')
  with pytest.raises(restore.RestoreError, match=r"CHECKPOINT_PATH='/no/such/dir' does not exist\.$"):
    restore.load_params(model, '/no/such/dir')
  (tmp_path / 'google' / 't5-large-lm-adapt').mkdir(parents=True)   # a local directory of that name is read
  with pytest.raises(restore.RestoreError) as e:
    restore.load_transformer(model, 'google/t5-large-lm-adapt')
  assert 'hub id' not in str(e.value)
