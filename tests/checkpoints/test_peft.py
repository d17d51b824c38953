"""promptjax prompts as Hugging Face PEFT adapters, run by the real `peft` on HF PyTorch T5.

A shallow prompt exported with `export_peft` beside the model `export_hf` writes gives promptjax's logits in
`peft.PeftModel`; a deep prompt is refused, and the PEFT PrefixTuning behaviour that makes it inexact on T5
is checked here, so that a PEFT release that changes it shows up."""

import json

from flax import traverse_util
import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
peft = pytest.importorskip('peft', reason='peft is not installed (setup.py: the test extra)')

import reference_t5 as ref  # noqa: E402 (needs torch)
from promptjax.checkpoints import hf as hf_ckpt
from promptjax.checkpoints import peft as peft_ckpt
from promptjax.errors import ExportError
from promptjax.models import PromptConfig, PromptableT5
from tests.helpers import write_training_checkpoint

TOL = 1e-4
L = 5


def _random_model(kind='shallow', seed=0, **config):
  """(model, random params) on the parity tests' odd-heads T5 (heads * head_dim != emb_dim, 2 encoder and
  3 decoder layers): the transformer of a random HF model scaled by 1.1 (so the exported weights are not
  those HF started from), the prompt uniform in [-1, 1]. Built without tracing the model (fast)."""
  from promptjax.models.prompts import prompt_shapes
  hf_model = ref.make_hf_model('odd_heads', seed=seed)
  config = hf_ckpt.config_from_hf(hf_model.config.to_dict()).replace(**config)
  params = jax.tree.map(lambda x: 1.1 * x, hf_ckpt.from_hf_state_dict(hf_model.state_dict(), config))
  prompt = PromptConfig(kind=kind, length=L)
  rng = np.random.RandomState(seed)
  shapes = prompt_shapes(prompt, config)
  params['prompt'] = traverse_util.unflatten_dict(
      {path: rng.uniform(-1, 1, shape).astype(np.float32) for path, shape in shapes.items()})
  return PromptableT5(config, prompt), params


def _transformer(params):
  return {k: v for k, v in params.items() if k != 'prompt'}


def _peft_logits(model, batch):
  """Logits of a PEFT model on a right-padded batch, fed as a PyTorch user would: the attention mask of the
  text only (PEFT extends it by the virtual tokens) and labels with -100 at padding."""
  enc = torch.tensor(batch['encoder_input_tokens'], dtype=torch.long)
  labels = torch.tensor(batch['decoder_target_tokens'], dtype=torch.long)
  with torch.no_grad():
    out = model(input_ids=enc, attention_mask=(enc > 0).long(),
                decoder_input_ids=torch.tensor(batch['decoder_input_tokens'], dtype=torch.long),
                labels=torch.where(labels > 0, labels, -100))
  return out.logits.numpy()


def _max_diff(got, want, batch):
  valid = batch['decoder_target_tokens'] > 0
  return float(np.max(np.abs(np.asarray(got)[valid] - want[valid])))


def test_shallow_prompt_is_exact_in_peft_and_round_trips(tmp_path):
  model, params = _random_model()
  config = model.config
  hf_dir, adapter_dir = str(tmp_path / 'hf'), str(tmp_path / 'adapter')
  hf_ckpt.export_hf(_transformer(params), config, hf_dir)
  peft_ckpt.export_peft(params['prompt'], config, model.prompt, adapter_dir, base_model_name_or_path=hf_dir)
  with open(tmp_path / 'adapter' / 'adapter_config.json') as f:
    assert json.load(f)['peft_type'] == 'PROMPT_TUNING'

  base = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir)
  peft_model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
  assert isinstance(peft_model, peft.PeftModelForSeq2SeqLM)
  np.testing.assert_array_equal(peft_model.prompt_encoder['default'].embedding.weight.detach().numpy(),
                                params['prompt']['prompt'])
  batch = ref.make_batch(config.vocab_size, batch=3, n=11, t=7, seed=1)   # rows of different lengths
  logits = jax.jit(model.logits)
  got = logits(params, batch)
  assert _max_diff(got, _peft_logits(peft_model, batch), batch) <= TOL
  with peft_model.disable_adapter():   # and the prompt matters
    assert _max_diff(got, _peft_logits(peft_model, batch), batch) > 1e-2

  # Round trip: the adapter reads back as the same prompt.
  imported, prompt = peft_ckpt.import_peft(adapter_dir, config)
  assert prompt == PromptConfig(kind='shallow', length=L)
  np.testing.assert_array_equal(imported['prompt'], params['prompt']['prompt'])

  # An adapter PEFT itself saved (seq2seq default: a [2L, d] table of which PEFT uses the first L rows)
  # imports as the prompt PEFT computes with.
  native = peft.get_peft_model(transformers.T5ForConditionalGeneration.from_pretrained(hf_dir),
                               peft.PromptTuningConfig(task_type='SEQ_2_SEQ_LM', num_virtual_tokens=L))
  assert tuple(native.prompt_encoder['default'].embedding.weight.shape) == (2 * L, config.emb_dim)
  with torch.no_grad():
    native.prompt_encoder['default'].embedding.weight.normal_()
  native.eval().save_pretrained(str(tmp_path / 'native'))
  imported, prompt = peft_ckpt.import_peft(str(tmp_path / 'native'))
  assert prompt == model.prompt and imported['prompt'].shape == (L, config.emb_dim)
  got = logits({**_transformer(params), 'prompt': imported}, batch)
  assert _max_diff(got, _peft_logits(native, batch), batch) <= TOL


def test_export_command_on_a_training_checkpoint(tmp_path, capsys):
  model, params = _random_model(seed=2, relative_attention_max_distance=9)   # only the meta knows the 9
  config = model.config
  model = PromptableT5(config, PromptConfig(kind='shallow', length=L, init='class_labels',
                                            init_labels=((3, 4),)))   # tuples that JSON makes lists
  write_training_checkpoint(tmp_path / 'run', model, params, trainable='all')
  out = tmp_path / 'out'
  assert peft_ckpt.main(['export', f'--checkpoint={tmp_path / "run"}', f'--output_dir={out}']) == 0
  assert 'wrote' in capsys.readouterr().out
  # The adapter names the HF model written beside it, so AutoPeftModel needs nothing else.
  peft_model = peft.AutoPeftModelForSeq2SeqLM.from_pretrained(str(out / 'adapter')).eval()
  batch = ref.make_batch(config.vocab_size, batch=2, n=9, t=5, seed=3)
  assert _max_diff(jax.jit(model.logits)(params, batch), _peft_logits(peft_model, batch), batch) <= TOL

  assert peft_ckpt.main(['import', f'--adapter_dir={out / "adapter"}', f'--output={tmp_path / "p.npy"}']) == 0
  np.testing.assert_array_equal(np.load(tmp_path / 'p.npy'), params['prompt']['prompt'])
  # The run trained the transformer: recording another base model would be wrong.
  assert peft_ckpt.main(['export', f'--checkpoint={tmp_path / "run" / "checkpoint_4"}', f'--output_dir={out}',
                         '--base_model_name_or_path=google/t5-base-lm-adapt']) == 2
  assert "trainable='all'" in capsys.readouterr().err


def test_deep_prompt_and_no_prompt_are_refused(tmp_path):
  deep, params = _random_model('deep')
  config = deep.config
  with pytest.raises(ExportError, match='encoder.*no prefix.*cross-attention prefix is dropped.*position'):
    peft_ckpt.export_peft(params['prompt'], config, deep.prompt, str(tmp_path / 'deep'))
  with pytest.raises(ExportError, match='no prompt'):
    peft_ckpt.export_peft({}, config, PromptConfig(kind='none'), str(tmp_path / 'none'))
  with pytest.raises(ExportError, match=r'shape \(4, 16\), expected \(5, 16\)'):
    peft_ckpt.export_peft({'prompt': np.zeros((4, 16))}, config, PromptConfig(kind='shallow', length=L),
                          str(tmp_path / 'bad'))
  assert not (tmp_path / 'deep').exists() and not (tmp_path / 'bad').exists()
  # A deep-prompt training checkpoint fails before any weight is read.
  write_training_checkpoint(tmp_path / 'run', deep, params, trainable='prompt')
  with pytest.raises(ExportError, match='deep prompt'):
    peft_ckpt.export_checkpoint(str(tmp_path / 'run'), str(tmp_path / 'out'))
  with pytest.raises(ExportError, match='no adapter_config.json'):
    peft_ckpt.import_peft(str(tmp_path))


def test_peft_prefix_tuning_on_t5_is_not_a_deep_prompt(tmp_path, monkeypatch):
  """What makes the deep export inexact, seen in PEFT itself: its PrefixTuning leaves T5's encoder alone,
  keeps no cross-attention prefix, and gives the decoder's prefix positions relative position bias."""
  from transformers.models.t5 import modeling_t5
  base = ref.make_hf_model('regular', seed=3)
  model = peft.get_peft_model(base, peft.PrefixTuningConfig(task_type='SEQ_2_SEQ_LM', num_virtual_tokens=L))
  with torch.no_grad():
    model.prompt_encoder['default'].embedding.weight.normal_()
  model.eval()
  cache = model.get_prompt(batch_size=2)
  assert cache.self_attention_cache.get_seq_length() == L      # the decoder self-attention prefix
  assert cache.cross_attention_cache.get_seq_length() == 0     # no cross-attention prefix

  biases = []
  compute_bias = modeling_t5.T5Attention.compute_bias

  def recording(self, *args, **kwargs):
    out = compute_bias(self, *args, **kwargs)
    if self.is_decoder:
      biases.append(out)
    return out

  monkeypatch.setattr(modeling_t5.T5Attention, 'compute_bias', recording)
  enc = torch.tensor([[5, 6, 7, 1], [8, 1, 0, 0]])
  kwargs = dict(input_ids=enc, attention_mask=(enc > 0).long(),
                decoder_input_ids=torch.tensor([[0, 4, 5]] * 2))
  with torch.no_grad():
    out = model(**kwargs)
    with model.disable_adapter():
      plain = model(**kwargs)
  torch.testing.assert_close(out.encoder_last_hidden_state, plain.encoder_last_hidden_state, rtol=0, atol=0)
  assert float((out.logits - plain.logits).abs().max()) > 1e-2   # the prefix acts, in the decoder only
  bias = biases[0]                                                  # [1, heads, t, L + t]
  assert bias.shape[-1] == L + 3 and float(bias[..., :L].abs().max()) > 0

  model.save_pretrained(str(tmp_path / 'prefix'), save_embedding_layers=False)
  with pytest.raises(ExportError, match='PrefixTuning'):
    peft_ckpt.import_peft(str(tmp_path / 'prefix'))
