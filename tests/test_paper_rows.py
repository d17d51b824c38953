"""Every row of the reproduction ledger (promptjax/configs/paper/ledger.json) runs end to end: its own commands,
as the ledger prints them (the row file, the evaluation and few-shot / downstream commands after it), on the
bundled mini benchmark, with only the scale shrunk.

What the scale is: the model's widths and depths (the row's architecture stays: original T5, T5.1.1 or
Flan-T5, its MLP and tying), the vocabulary (the mini benchmark's), the data (mini_train for Wu et al.'s P3
rows, the mini CrossFit partition for Qin et al.'s), sequence lengths, batch sizes, steps and epochs, the
mesh, and the checkpoints the row starts from (an HF export of the shrunk architecture where the row names a
gs:// or local release). Every other setting (method, optimizer, learning rates, inner loop, prompt kind,
data reader, remat, dropout, microbatches, prompt length, the downstream grids) is the row file's: `_scale`
binds only macros the command reads, and the configuration each training run writes (MODEL_DIR/config.gin)
must differ from the ledger's settings of its row in scale keys only. The rows' files against the papers:
tests/test_ledger.py.

The suite runs `SUITE_ROWS`: Wu et al.'s deep MTL-T✓P✓ and Reptile rows, the two that evaluate a release (No
Cont. Pretraining, the official T0 in its HF layout), Qin et al.'s FoMAML row and its fine-tuning baseline (the
other rows share their programs up to the method file, the mixture or the model size). ``PROMPTJAX_ALL_ROWS=1`` runs every
Wu et al. and Qin et al. row: 27 rows, all passing, 638 s on 2 cores. Pan et al.'s rows need the
SUPMER construction, MetaPT's clusters and the T5 vocabulary; their mini runs are in tests/supmer/.
"""

import json
import os
import re
import shlex

import gin
import jax
import pytest

import tests.helpers as h
from promptjax import cli, ledger

ALL = os.environ.get('PROMPTJAX_ALL_ROWS') == '1'
ROWS = {row['files'][0]: row for row in ledger.load()['rows'] if row['paper'] in ('wu2022', 'qin2023')
        and row['files'][0].startswith('paper/')}
MANIFEST = json.load(open(os.path.join(os.path.dirname(cli.__file__), 'tasks', 'data', 'manifest.json')))
QIN_PARTITION = MANIFEST['crossfit']['partitions']['cls_to_cls']

# The shrunk model: the row's architecture (get_config.name) at these sizes, the mini vocabulary.
DIMS = dict(vocab_size=1664, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=2,
            num_decoder_layers=2, relative_attention_num_buckets=8, relative_attention_max_distance=16)
HELDOUT_TASK = 'mini_nli_can_we_infer_score_eval_rank_classification'


def _scale(subcommand: str, paper: str, backbone: str) -> dict:
  """macro -> value of the scale, for the macros a command reads."""
  train_data = 'mini_train' if paper == 'wu2022' else f"crossfit_cls_to_cls_source_{MANIFEST['crossfit']['seeds'][0]}"
  return {
      'MIXTURE_OR_TASK_NAME': repr(train_data if subcommand == 'train' else HELDOUT_TASK),
      'TASK_FEATURE_LENGTHS': "{'inputs': 64, 'targets': 16}",
      'TRAIN_STEPS': 1, 'CHECKPOINT_PERIOD': 1, 'BATCH_SIZE': 16,   # 16: a multiple of every row's microbatches
      'META_BATCH_SIZE': 2, 'INNER_BATCH_SIZE': 2, 'QUERY_BATCH_SIZE': 2, 'CLONE_CHUNK_SIZE': None,
      'MESH_SHAPE': (1, 1), 'INITIAL_CHECKPOINT_PATH': repr(backbone),
      'FEWSHOT_EPOCHS': 1, 'EXAMPLES_PER_BATCH': 8,
      'DOWNSTREAM_STEPS': 2, 'DOWNSTREAM_EVAL_INTERVAL': 1, 'DOWNSTREAM_SEEDS': (13,), 'BASELINE': None,
  }


def _commands(row, model_dir: str, out_dir: str):
  """The row's ledger commands as argument lists (without `promptjax`), placeholders filled."""
  targets = repr(QIN_PARTITION['target'][:1])
  for line in row['commands']:
    if not line.startswith('promptjax '):
      continue
    line = re.sub(r'"\$\(python -c \'[^\']*\'\)"', '__TARGETS__', line)
    line = line.replace("'/tmp/", f"'{out_dir}/").replace('$MODEL_DIR', model_dir)
    args = shlex.split(line, comments=True)[1:]
    yield [a.replace('__TARGETS__', targets) for a in args]


def _parsed(args):
  """(macros the command reads, get_config.name, its CHECKPOINT_PATH) from the command's gin configuration,
  parsed as `promptjax <command>` parses it."""
  rest, bindings = cli.split_gin_args(args[1:])
  files = [a.split('=', 1)[1] for a in rest if a.startswith('--gin_file=')]
  gin.clear_config()
  cli.register_gin_configurables()
  try:
    cli.parse_command_gin(args[0], files, bindings)
    read = cli.read_macros()
    name = gin.query_parameter('promptjax.models.get_config.name')
    ckpt = gin.query_parameter('CHECKPOINT_PATH/gin.macro.value') if 'CHECKPOINT_PATH' in read else None
  finally:
    gin.clear_config()
  return read, name, ckpt


@pytest.fixture(scope='module')
def backbones(tmp_path_factory):
  """get_config name -> an HF directory of that architecture at the shrunk size (a seeded random init): what
  the rows load where they name a release (INITIAL_CHECKPOINT_PATH / CHECKPOINT_PATH)."""
  from promptjax.checkpoints.hf import export_hf
  from promptjax.models import PromptableT5, PromptConfig, get_config
  root, made = tmp_path_factory.mktemp('backbones'), {}

  def get(name):
    if name not in made:
      config = get_config(name, **DIMS)
      params = PromptableT5(config, PromptConfig(kind='none')).init_params(jax.random.PRNGKey(0))
      made[name] = export_hf({k: v for k, v in params.items() if k != 'prompt'}, config, str(root / name))
    return made[name]
  return get


def _run_row(file, backbones, tmp_path):
  row = ROWS[file]
  model_dir, out_dir = str(tmp_path / 'model'), str(tmp_path / 'out')
  for args in _commands(row, model_dir, out_dir):
    read, name, ckpt = _parsed(args)
    backbone = backbones(name)
    scale = {k: v for k, v in _scale(args[0], row['paper'], backbone).items() if k in read}
    if ckpt is not None and not os.path.exists(str(ckpt)):   # a release (gs://, /data/T0_3B): its shrunk twin
      scale['CHECKPOINT_PATH'] = repr(backbone)
    extra = [f'--gin.promptjax.models.get_config.{k}={v}' for k, v in DIMS.items()]
    extra += [f'--gin.{k}={v}' for k, v in scale.items()]
    out = h.run_cli(args + extra)
    assert out.returncode == 0, (file, args[0], out.stderr[-3000:])
    if args[0] == 'train':
      assert 'step 1: loss' in out.stdout and os.path.isdir(os.path.join(model_dir, 'checkpoint_1')), file
      # The configuration the run wrote differs from the ledger's row in the scale only.
      diffs = ledger.differences({**row, 'files': [os.path.join(model_dir, 'config.gin')]})
      scale_keys = {f'%{k}' for k in scale} | {f'promptjax.models.get_config.{k}' for k in DIMS}
      assert {s['key'] for s, _ in diffs} <= scale_keys, (file, [(s['key'], got) for s, got in diffs])
    else:
      dest = next(a.partition('=')[2].strip("'") for a in args if a.startswith('--gin.EVAL_OUTPUT_DIR='))
      assert os.listdir(dest), (file, args)


# The rows the suite runs (the module docstring says why these); every row with PROMPTJAX_ALL_ROWS=1.
SUITE_ROWS = ['paper/wu2022_large_reptile.gin', 'paper/wu2022_large_mtl_prompt_deep.gin',
              'paper/wu2022_large_no_cont_pretraining.gin', 'paper/wu2022_xl_t0_official.gin',
              'paper/qin2023_large_fomaml_prompt.gin', 'paper/qin2023_large_finetune.gin']


@pytest.mark.parametrize('file', sorted(ROWS) if ALL else SUITE_ROWS)
def test_row_runs_end_to_end_at_mini_scale(file, backbones, tmp_path):
  _run_row(file, backbones, tmp_path)


def test_suite_rows_are_ledger_rows():
  assert set(SUITE_ROWS) <= set(ROWS)
