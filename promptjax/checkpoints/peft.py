"""Trained prompts as Hugging Face PEFT adapters, for running them in PyTorch.

A shallow prompt (Lester et al. 2021; ``prompt/prompt`` [L, d]) is exactly PEFT's ``PromptTuning`` for a
seq2seq model: PEFT prepends its L virtual-token embeddings to the embedded encoder input and extends the
attention mask by L ones, which is what `promptjax.models.t5.Transformer.encode` does. `export_peft` writes
it as an adapter directory (``adapter_config.json`` + ``adapter_model.safetensors`` holding
``prompt_embeddings`` [L, d]) that sits on the HF model `promptjax.checkpoints.hf.export_hf` writes:

  model = peft.PeftModel.from_pretrained(
      transformers.T5ForConditionalGeneration.from_pretrained(HF_DIR), ADAPTER_DIR)

A deep prompt (Li & Liang 2021: prefix keys/values in encoder self-, decoder self- and cross-attention, zero
position bias, always visible) has no exact PEFT form, so it is refused (`ExportError`,
`DEEP_PROMPT_REASON`): PEFT's ``PrefixTuning`` hands T5 its prefix as the decoder's ``past_key_values``, so
the encoder gets none, the cross-attention part is dropped, and the decoder's self-attention prefix is
treated as L earlier target positions with T5's relative position bias (peft 0.18.1, transformers
4.57.6; tests/checkpoints/test_peft.py checks each of the three).

From the shell, a promptjax training checkpoint (its ``meta`` records the model and prompt configuration):

  python -m promptjax.checkpoints.peft export --checkpoint=MODEL_DIR_or_checkpoint_N --output_dir=OUT
      # OUT/base_model (HF T5) + OUT/adapter (PEFT PromptTuning, base_model_name_or_path = OUT/base_model)
  python -m promptjax.checkpoints.peft import --adapter_dir=OUT/adapter --output=prompt.npy
      # a prompt file for PromptConfig(init='file', init_file='prompt.npy')

torch and peft are not needed to export or import (numpy and safetensors only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from flax import traverse_util
import numpy as np

from promptjax.errors import ExportError, PromptjaxError
from promptjax.models.config import T5Config
from promptjax.models.prompts import PromptConfig, _check_prompt_tree

ADAPTER_CONFIG = 'adapter_config.json'
ADAPTER_WEIGHTS = 'adapter_model.safetensors'
ADAPTER_WEIGHTS_BIN = 'adapter_model.bin'   # older PEFT versions' torch pickle (read only)
PROMPT_EMBEDDINGS = 'prompt_embeddings'     # PEFT's state-dict key for prompt-learning tables
BASE_MODEL_DIR = 'base_model'
ADAPTER_DIR = 'adapter'

DEEP_PROMPT_REASON = (
    "PEFT's PrefixTuning does not compute what a promptjax deep prompt computes on T5: PEFT hands T5 the "
    "prefix as the decoder's past_key_values, so (1) the encoder's self-attention gets no prefix (T5 never "
    "gives its encoder a cache), (2) the cross-attention prefix is dropped (PEFT empties the cross-attention "
    "cache; T5 refills it from the encoder output), and (3) the decoder self-attention prefix counts as L "
    "earlier target positions and gets T5's relative position bias, where promptjax's prefix positions have "
    "zero bias. Such an adapter would give different logits. Export the deep prompt with "
    "promptjax.models.export_prompt (.npz) instead.")


def export_peft(prompt_params: Mapping[str, Any], model_config: T5Config, prompt_config: PromptConfig,
                output_dir: str, base_model_name_or_path: Optional[str] = None) -> str:
  """Writes a shallow prompt as a PEFT ``PromptTuning`` adapter (task SEQ_2_SEQ_LM); returns `output_dir`.

  Args:
    prompt_params: the ``prompt`` subtree of the model's parameters (``{'prompt': [L, d]}``).
    model_config: the model the prompt was trained with (its ``emb_dim`` is PEFT's ``token_dim``).
    prompt_config: the prompt's configuration; only ``kind='shallow'`` has an exact PEFT form.
    output_dir: the adapter directory (created; existing adapter files are overwritten).
    base_model_name_or_path: recorded in ``adapter_config.json`` (the HF model directory written by
      `promptjax.checkpoints.hf.export_hf`, or a hub name) for ``AutoPeftModel``; optional for
      ``PeftModel.from_pretrained(model, output_dir)``.

  Raises:
    ExportError: a deep prompt (see `DEEP_PROMPT_REASON`), no prompt, or parameters that do not fit.
  """
  check_exportable(prompt_config)
  flat = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(prompt_params).items()}
  try:
    _check_prompt_tree(flat, prompt_config, model_config, 'the given prompt parameters')
  except ValueError as e:
    raise ExportError(str(e)) from e
  table = np.ascontiguousarray(flat[('prompt',)])
  from safetensors.numpy import save_file
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, ADAPTER_CONFIG), 'w') as f:
    json.dump(_adapter_config(model_config, prompt_config.length, base_model_name_or_path), f, indent=2)
  save_file({PROMPT_EMBEDDINGS: table}, os.path.join(output_dir, ADAPTER_WEIGHTS), metadata={'format': 'pt'})
  return output_dir


def check_exportable(prompt_config: PromptConfig) -> None:
  """Raises ExportError unless the prompt has an exact PEFT form (a shallow prompt)."""
  if prompt_config.kind == 'deep':
    raise ExportError(f'Cannot export a deep prompt as a PEFT adapter. {DEEP_PROMPT_REASON}')
  if prompt_config.kind != 'shallow':
    raise ExportError(f'There is no prompt to export (prompt kind {prompt_config.kind!r}); PEFT adapters '
                      'hold shallow prompts (PromptConfig.kind="shallow").')


def _adapter_config(config: T5Config, length: int, base_model_name_or_path: Optional[str]) -> Dict[str, Any]:
  """The fields of PEFT's PromptTuningConfig. One submodule: the table is the encoder's [L, d] only (PEFT's
  seq2seq default of 2 would store [2L, d] and use its first L rows)."""
  return {
      'peft_type': 'PROMPT_TUNING', 'task_type': 'SEQ_2_SEQ_LM',
      'base_model_name_or_path': base_model_name_or_path, 'revision': None, 'inference_mode': True,
      'num_virtual_tokens': length, 'token_dim': config.emb_dim, 'num_transformer_submodules': 1,
      'num_attention_heads': config.num_heads, 'num_layers': config.num_encoder_layers,
      'prompt_tuning_init': 'RANDOM', 'prompt_tuning_init_text': None, 'tokenizer_name_or_path': None,
  }


def import_peft(adapter_dir: str, model_config: Optional[T5Config] = None
                ) -> Tuple[Dict[str, np.ndarray], PromptConfig]:
  """Reads a PEFT ``PromptTuning`` adapter of a seq2seq model -> (prompt params, PromptConfig).

  The params are the ``prompt`` subtree promptjax uses (``{'prompt': [L, d]}`` float32). PEFT uses only the
  first ``num_virtual_tokens`` rows of a seq2seq table (it stores 2L rows by default), so those are taken.
  With `model_config`, the width is checked against ``emb_dim``.

  Raises:
    ExportError: a missing or malformed adapter, another PEFT method (PrefixTuning has no exact promptjax
      form, see `DEEP_PROMPT_REASON`), or a prompt that does not fit `model_config`.
  """
  cfg_path = os.path.join(adapter_dir, ADAPTER_CONFIG)
  if not os.path.isfile(cfg_path):
    raise ExportError(f'{adapter_dir!r} is not a PEFT adapter directory: it has no {ADAPTER_CONFIG}.')
  with open(cfg_path) as f:
    cfg = json.load(f)
  peft_type, task_type = cfg.get('peft_type'), cfg.get('task_type')
  if peft_type == 'PREFIX_TUNING':
    raise ExportError(f'{adapter_dir} is a PEFT PrefixTuning adapter, which is not a promptjax deep prompt. '
                      f'{DEEP_PROMPT_REASON}')
  if peft_type != 'PROMPT_TUNING' or task_type != 'SEQ_2_SEQ_LM':
    raise ExportError(f'{adapter_dir} is a PEFT {peft_type} adapter for {task_type}; promptjax reads '
                      'PROMPT_TUNING adapters for SEQ_2_SEQ_LM (T5) models.')
  table = _read_adapter_weights(adapter_dir)
  length = int(cfg['num_virtual_tokens'])
  if table.ndim != 2 or table.shape[0] < length or table.shape[1] != cfg.get('token_dim', table.shape[1]):
    raise ExportError(f'{adapter_dir}: {PROMPT_EMBEDDINGS} has shape {table.shape}, which does not hold '
                      f'num_virtual_tokens={length} rows of token_dim={cfg.get("token_dim")}.')
  if model_config is not None and table.shape[1] != model_config.emb_dim:
    raise ExportError(f'{adapter_dir}: the prompt is {table.shape[1]} wide, but the model has '
                      f'emb_dim={model_config.emb_dim}.')
  prompt = PromptConfig(kind='shallow', length=length)
  return {'prompt': np.ascontiguousarray(table[:length], np.float32)}, prompt


def _read_adapter_weights(adapter_dir: str) -> np.ndarray:
  path = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
  if os.path.isfile(path):
    from safetensors.numpy import load_file
    weights = load_file(path)
  elif os.path.isfile(os.path.join(adapter_dir, ADAPTER_WEIGHTS_BIN)):
    from promptjax.checkpoints.hf import read_hf_state_dict
    weights = read_hf_state_dict(os.path.join(adapter_dir, ADAPTER_WEIGHTS_BIN))
  else:
    raise ExportError(f'{adapter_dir} has no adapter weights ({ADAPTER_WEIGHTS} or {ADAPTER_WEIGHTS_BIN}).')
  if PROMPT_EMBEDDINGS not in weights:
    raise ExportError(f'{adapter_dir}: the adapter weights have no {PROMPT_EMBEDDINGS!r} '
                      f'(keys: {sorted(weights)[:5]}).')
  return np.asarray(weights[PROMPT_EMBEDDINGS], np.float32)


# --------------------------------------------------------------------------------------------------
# promptjax training checkpoints.


_NO_META_FIX = ('export a checkpoint written by promptjax training, or call export_peft and export_hf with the '
                'configuration yourself.')


def checkpoint_signature(checkpoint: str, fix: str = _NO_META_FIX) -> Tuple[T5Config, PromptConfig, str]:
  """(model config, prompt config, trainable group) recorded in a training checkpoint's ``meta`` (the
  trainer's `model_signature`). `checkpoint`: a MODEL_DIR (its latest step) or a ``checkpoint_<step>``;
  `fix`: what the error for a checkpoint without ``meta`` suggests."""
  from promptjax.checkpoints import t5x
  try:
    ckpt_dir = t5x.find_t5x_checkpoint(checkpoint)
  except (FileNotFoundError, ValueError) as e:
    raise ExportError(f'--checkpoint={checkpoint}: {e}') from e
  # The orbax manager's JSON item: checkpoint_<step>/meta/metadata (beside the `state` item).
  candidates = [os.path.join(d, 'meta', 'metadata') for d in (ckpt_dir, os.path.dirname(ckpt_dir))]
  meta_path = next((p for p in candidates if os.path.isfile(p)), None)
  if meta_path is None:
    raise ExportError(f'{ckpt_dir} has no meta/metadata, so its model and prompt configuration are unknown; '
                      f'{fix}')
  with open(meta_path) as f:
    signature = json.load(f).get('signature') or {}
  try:
    config = T5Config(**signature['config'])
    prompt = dict(signature['prompt'])
    prompt['init_labels'] = tuple(tuple(ids) for ids in prompt.get('init_labels') or ())
    prompt = PromptConfig(**prompt)
  except (KeyError, TypeError, ValueError) as e:
    raise ExportError(f'{meta_path} does not record a model signature promptjax can read ({e!r}).') from e
  return config, prompt, signature.get('trainable', 'all')


def export_checkpoint(checkpoint: str, output_dir: str, base_model_name_or_path: Optional[str] = None
                      ) -> Tuple[Optional[str], str]:
  """A training checkpoint's shallow prompt -> ``output_dir/adapter`` (PEFT) and its transformer ->
  ``output_dir/base_model`` (HF); returns (base model dir or None, adapter dir).

  With `base_model_name_or_path` (e.g. the hub name of the model a prompt-only run started from) the adapter
  records that instead and no HF model is written; refused when the run also trained the transformer.
  """
  from promptjax.checkpoints import hf, restore
  from promptjax.models import PromptableT5
  from promptjax.models import groups
  config, prompt, trainable = checkpoint_signature(checkpoint)
  check_exportable(prompt)  # before reading any weights
  if base_model_name_or_path and groups.canonical_group(trainable) != 'prompt':
    raise ExportError(f'{checkpoint} was trained with trainable={trainable!r}, so its transformer differs '
                      f'from {base_model_name_or_path!r}; drop --base_model_name_or_path to export the '
                      'checkpoint\'s own transformer beside the adapter.')
  _, params = restore.load_params(PromptableT5(config, prompt), checkpoint)
  base_dir = None
  if not base_model_name_or_path:
    base_dir = os.path.abspath(os.path.join(output_dir, BASE_MODEL_DIR))
    hf.export_hf({k: v for k, v in params.items() if k not in restore.NON_MODEL_KEYS}, config, base_dir)
  adapter_dir = export_peft(params['prompt'], config, prompt, os.path.join(output_dir, ADAPTER_DIR),
                            base_model_name_or_path or base_dir)
  return base_dir, adapter_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m promptjax.checkpoints.peft',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('command', choices=('export', 'import'))
  parser.add_argument('--checkpoint', help='export: a promptjax MODEL_DIR (latest step) or checkpoint_<step>')
  parser.add_argument('--output_dir',
                      help=f'export: writes {BASE_MODEL_DIR}/ (HF T5) and {ADAPTER_DIR}/ (PEFT) there')
  parser.add_argument('--base_model_name_or_path', default=None,
                      help='export: record this base model in the adapter and write no HF model '
                           '(prompt-only runs)')
  parser.add_argument('--adapter_dir', help='import: a PEFT PromptTuning adapter directory')
  parser.add_argument('--output', help='import: the prompt file to write (.npy, for PromptConfig.init_file)')
  args = parser.parse_args(argv)
  try:
    if args.command == 'export':
      if not (args.checkpoint and args.output_dir):
        parser.error('export needs --checkpoint and --output_dir')
      base_dir, adapter_dir = export_checkpoint(args.checkpoint, args.output_dir,
                                                args.base_model_name_or_path)
      if base_dir:
        print(f'wrote {base_dir} (HF T5)')
      print(f'wrote {adapter_dir} (PEFT PromptTuning)')
    else:
      if not (args.adapter_dir and args.output):
        parser.error('import needs --adapter_dir and --output')
      from promptjax.models.prompts import export_prompt
      params, prompt = import_peft(args.adapter_dir)
      path = export_prompt(params, args.output)
      print(f'wrote {path} (PromptConfig(kind={prompt.kind!r}, length={prompt.length}, init="file"))')
  except PromptjaxError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
