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

Pan et al.'s rows run on the data their commands name, each a fixture in the real source's on-disk format:
`PROMPTJAX_SUPMER_DIR` the mini SUPMER construction (the bundled corpus, the mini vocabulary and encoder),
`PROMPTJAX_METAPT_DIR` MetaPT's mini clusters of a Yelp Review Full csv, `PROMPTJAX_SUPMER_DOWNSTREAM_DIR` tiny
copies of the downstream releases (T5-tokenized: these rows skip without the T5 SentencePiece model,
`PROMPTJAX_T5_VOCAB` or ../shared/data/t5/spiece.model). A variable a command does not set is unset, so a
command naming the wrong one fails. Their models keep T5's vocabulary size and the mini encoder's width (the
construction's centroids are inserted as input vectors); upstream data are the construction's `mini_` tasks;
downstream, one dataset, one seed, one epoch. A row whose `$MODEL_DIR` is a training run of another row
(SUPMER's Table 1 and 2 rows) runs that row first. The mini variants (pan2023_mini_*) run as the ledger gives
them; the data builds their ledger lines start with (`python -m ...`) are the fixtures' builds.

The suite runs `SUITE_ROWS`: Wu et al.'s deep MTL-T✓P✓ and Reptile rows, the two that evaluate a release (No
Cont. Pretraining, the official T0 in its HF layout), Qin et al.'s FoMAML row and its fine-tuning baseline,
Pan et al.'s SUPMER Table 1 row (meta-training, then downstream with ψ*), MetaPT then the baselines'
downstream protocol (Flan-T5), PPT pre-training (its mini variant) and few-shot inference with
demonstrations (the other rows share their programs up to the method file, the mixture or the model size).
``PROMPTJAX_ALL_ROWS=1`` runs every row with a command: 51 rows (27 of Wu et al. and Qin et al., 24 of Pan
et al.), all passing; 638 s and 441 s on 2 cores.
"""

import json
import os
import re

import gin
import jax
import pytest

import tests.helpers as h
from promptjax import cli, ledger

ALL = os.environ.get('PROMPTJAX_ALL_ROWS') == '1'
# Rows with commands of their own (Pan et al.'s shared downstream files are run by the rows that name them).
ROWS = {row['files'][0]: row for row in ledger.load()['rows']
        if row['files'][0].startswith('paper/') and any('promptjax ' in c for c in row['commands'])}
MANIFEST = json.load(open(os.path.join(os.path.dirname(cli.__file__), 'tasks', 'data', 'manifest.json')))
QIN_PARTITION = MANIFEST['crossfit']['partitions']['cls_to_cls']

# The shrunk model: the row's architecture (get_config.name) at these sizes, the mini vocabulary.
DIMS = dict(vocab_size=1664, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=2,
            num_decoder_layers=2, relative_attention_num_buckets=8, relative_attention_max_distance=16)
HELDOUT_TASK = 'mini_nli_can_we_infer_score_eval_rank_classification'
# Pan et al.'s rows read data of the T5 vocabulary (the downstream releases) and of the mini vocabulary (the mini
# SUPMER construction, MetaPT's mini clusters): their models keep T5's 32128 rows, and the width of the mini
# encoder that computed the construction's centroids (which SUPMER inserts as input vectors).
PAN_DIMS = {**DIMS, 'vocab_size': 32128, 'emb_dim': 64}
PAN_FEWSHOT_DATASET = 'sst2'   # the first of Table 1's datasets
# The data variables of Pan et al.'s commands; each points at a fixture in its source's format (`pan_data`).
PAN_DATA = ('PROMPTJAX_SUPMER_DIR', 'PROMPTJAX_METAPT_DIR', 'PROMPTJAX_SUPMER_DOWNSTREAM_DIR')


def _scale(subcommand: str, row: dict, backbone: str, row_values: dict) -> dict:
  """macro -> value of the scale, for the macros a command reads (`row_values`: what the row's gin
  configuration gives a few of them)."""
  if row['paper'] == 'pan2023':
    return _pan_scale(subcommand, backbone, row_values)
  train_data = 'mini_train' if row['paper'] == 'wu2022' else f"crossfit_cls_to_cls_source_{MANIFEST['crossfit']['seeds'][0]}"
  return {
      'MIXTURE_OR_TASK_NAME': repr(train_data if subcommand == 'train' else HELDOUT_TASK),
      'TASK_FEATURE_LENGTHS': "{'inputs': 64, 'targets': 16}",
      'TRAIN_STEPS': 1, 'CHECKPOINT_PERIOD': 1, 'BATCH_SIZE': 16,   # 16: a multiple of every row's microbatches
      'META_BATCH_SIZE': 2, 'INNER_BATCH_SIZE': 2, 'QUERY_BATCH_SIZE': 2, 'CLONE_CHUNK_SIZE': None,
      'MESH_SHAPE': (1, 1), 'INITIAL_CHECKPOINT_PATH': repr(backbone),
      'FEWSHOT_EPOCHS': 1, 'EXAMPLES_PER_BATCH': 8,
      'DOWNSTREAM_STEPS': 2, 'DOWNSTREAM_EVAL_INTERVAL': 1, 'DOWNSTREAM_SEEDS': (13,), 'BASELINE': None,
  }


def _pan_scale(subcommand: str, backbone: str, row_values: dict) -> dict:
  """Pan et al.'s scale: the mini construction's names for the row's upstream data ('mini_' + the task or
  mixture: mini_supmer_<format>, mini_ppt_pretrain, mini_unified_ppt_pretrain, mini_metapt_yelp5), one step
  validated and kept as MODEL_DIR/best; downstream, the first of the row's datasets and seeds, one epoch;
  zero- and few-shot inference on one dataset instead of the 12."""
  if subcommand == 'train':
    return {
        'MIXTURE_OR_TASK_NAME': repr('mini_' + str(row_values.get('MIXTURE_OR_TASK_NAME'))),
        'SUPMER_TASK_PREFIX': repr('mini_' + str(row_values.get('SUPMER_TASK_PREFIX'))),
        'TASK_FEATURE_LENGTHS': "{'inputs': 128, 'targets': 8}",
        'TRAIN_STEPS': 1, 'CHECKPOINT_PERIOD': 1, 'EVAL_PERIOD': 1, 'EVAL_BATCHES': 1, 'BATCH_SIZE': 8,
        'META_BATCH_SIZE': 2, 'INNER_BATCH_SIZE': 2, 'QUERY_BATCH_SIZE': 2,
        'MESH_SHAPE': (1, 1), 'INITIAL_CHECKPOINT_PATH': repr(backbone),
    }
  return {
      'MIXTURE_OR_TASK_NAME': repr(row_values.get('MIXTURE_OR_TASK_NAME', '').replace(
          '_fewshot_', f"_{PAN_FEWSHOT_DATASET}_")),   # supmer_fewshot_100_*: the 12 datasets' mixture
      'TARGET_TASKS': repr(list(row_values.get('TARGET_TASKS') or ())[:1]),
      'DOWNSTREAM_SEEDS': tuple(row_values.get('DOWNSTREAM_SEEDS') or ())[:1],
      'DOWNSTREAM_EPOCHS': 1, 'DOWNSTREAM_EVAL_INTERVAL': 1, 'MESH_SHAPE': (1, 1),
  }


def _commands(row, model_dir: str, out_dir: str):
  """The row's `promptjax` ledger commands as (environment, argument list without `promptjax`), placeholders
  filled. Lines that are not a `promptjax` command (a data build: `python -m ...`, which the fixtures do)
  are left out."""
  targets = repr(QIN_PARTITION['target'][:1])
  for line in row['commands']:
    line = re.sub(r'"\$\(python -c \'[^\']*\'\)"', '__TARGETS__', line)
    line = line.replace("'/tmp/", f"'{out_dir}/").replace('$MODEL_DIR', model_dir)
    parsed = ledger.command_words(line)
    if parsed is not None:
      env, args = parsed
      yield env, [a.replace('__TARGETS__', targets) for a in args]


ROW_VALUES = ('MIXTURE_OR_TASK_NAME', 'SUPMER_TASK_PREFIX', 'TARGET_TASKS', 'DOWNSTREAM_SEEDS', 'CHECKPOINT_PATH')


def _parsed(args):
  """(macros the command reads, get_config.name, the row's values of `ROW_VALUES` it reads) from the
  command's gin configuration, parsed as `promptjax <command>` parses it."""
  rest, bindings = cli.split_gin_args(args[1:])
  files = [a.split('=', 1)[1] for a in rest if a.startswith('--gin_file=')]
  gin.clear_config()
  cli.register_gin_configurables()
  try:
    cli.parse_command_gin(args[0], files, bindings)
    read = cli.read_macros()
    name = gin.query_parameter('promptjax.models.get_config.name')
    values = {k: ledger.resolve(f'%{k}') for k in ROW_VALUES if k in read}
  finally:
    gin.clear_config()
  return read, name, values


@pytest.fixture(scope='module')
def backbones(tmp_path_factory):
  """(get_config name, sizes) -> an HF directory of that architecture at those sizes (a seeded random init):
  what the rows load where they name a release (INITIAL_CHECKPOINT_PATH / CHECKPOINT_PATH)."""
  from promptjax.checkpoints.hf import export_hf
  from promptjax.models import PromptableT5, PromptConfig, get_config
  root, made = tmp_path_factory.mktemp('backbones'), {}

  def get(name, dims):
    key = (name, tuple(sorted(dims.items())))
    if key not in made:
      config = get_config(name, **dims)
      params = PromptableT5(config, PromptConfig(kind='none')).init_params(jax.random.PRNGKey(0))
      made[key] = export_hf({k: v for k, v in params.items() if k != 'prompt'}, config,
                            str(root / f'{name}_{len(made)}'))
    return made[key]
  return get


@pytest.fixture(scope='module')
def pan_data(request, tmp_path_factory):
  """Pan et al.'s data variables -> directories in the real sources' formats: the mini SUPMER construction
  (tests/conftest.py), MetaPT's mini clusters of a Yelp Review Full csv, tiny copies of the downstream releases
  (T5-tokenized: skips without the T5 SentencePiece model); and PROMPTJAX_T5_VOCAB -> that model."""
  from promptjax.supmer import baselines as sb
  from tests.supmer.test_baselines import _write_yelp
  from tests.supmer.test_datasets import SPIECE, _make_release
  vocab = os.environ.get('PROMPTJAX_T5_VOCAB') or SPIECE
  if not os.path.exists(vocab):
    pytest.skip(f'needs the T5 SentencePiece model (PROMPTJAX_T5_VOCAB, or {SPIECE} with ../shared/data beside '
                'the checkout): the downstream releases are T5-tokenized')
  supmer_construction = request.getfixturevalue('supmer_construction')   # after the skip: a Beam build
  root = tmp_path_factory.mktemp('pan_data')
  os.makedirs(root / 'yelp')
  _write_yelp(root / 'yelp' / 'train.csv', 10, 0)
  sb.build_metapt(sb.MetaptConfig(yelp_dir=str(root / 'yelp'), output_dir=str(root / 'metapt'), vocab_name='mini',
                                  model_size='mini', num_clusters=sb.MINI_METAPT_NUM_CLUSTERS, embed_length=32,
                                  validation_fraction=0.2))   # what `... baselines metapt --mini` builds
  _make_release(str(root / 'downstream'))
  return {'PROMPTJAX_SUPMER_DIR': supmer_construction[0], 'PROMPTJAX_METAPT_DIR': str(root / 'metapt'),
          'PROMPTJAX_SUPMER_DOWNSTREAM_DIR': str(root / 'downstream'), 'PROMPTJAX_T5_VOCAB': vocab}


def _producer(row):
  """The row whose training run a downstream row's $MODEL_DIR names (Pan et al.'s SUPMER rows: "then the
  Table 1 and Table 2 rows below with CHECKPOINT_PATH = $MODEL_DIR/best"), or None."""
  if any(a[0] == 'train' for _, a in _commands(row, '', '')) or not any('$MODEL_DIR' in c for c in row['commands']):
    return None
  size = row['files'][0].split('_')[1]
  return next(r for r in ROWS.values() if r['paper'] == row['paper'] and r['files'][0].split('_')[1] == size
              and any('rows below' in c for c in r['commands']))


def _run_row(file, backbones, tmp_path, monkeypatch, data=None):
  row = ROWS[file]
  model_dir, out_dir = str(tmp_path / 'model'), str(tmp_path / 'out')
  producer = _producer(row)
  steps = [(producer, *c) for c in _commands(producer, model_dir, out_dir)] if producer else []
  steps += [(row, *c) for c in _commands(row, model_dir, out_dir)]
  for of, env, args in steps:
    # The command's own environment: a data family it does not name is not configured.
    for var in PAN_DATA:
      monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
      assert var in PAN_DATA, (file, f'{var}={value} names no data family')
      monkeypatch.setenv(var, data[var])
    read, name, values = _parsed(args)
    if name == 'mini':   # a mini variant: runs as the ledger gives it
      dims, scale = {}, {}
    else:
      dims = PAN_DIMS if row['paper'] == 'pan2023' else DIMS
      backbone = backbones(name, dims)
      scale = {k: v for k, v in _scale(args[0], of, backbone, values).items() if k in read}
      ckpt = values.get('CHECKPOINT_PATH')
      if ckpt is not None and not os.path.exists(str(ckpt)):   # a release (gs://, /data/T0_3B): its shrunk twin
        scale['CHECKPOINT_PATH'] = repr(backbone)
    extra = [f'--gin.promptjax.models.get_config.{k}={v}' for k, v in dims.items()]
    extra += [f'--gin.{k}={v}' for k, v in scale.items()]
    out = h.run_cli(args + extra)
    assert out.returncode == 0, (file, args[0], out.stderr[-3000:])
    if args[0] == 'train':
      run_dir = _arg(args, 'MODEL_DIR')
      assert 'step 1: loss' in out.stdout and any(d.startswith('checkpoint_') for d in os.listdir(run_dir)), file
      # The configuration the run wrote differs from the ledger's row in the scale only.
      diffs = ledger.differences({**of, 'files': [os.path.join(run_dir, 'config.gin')]})
      scale_keys = {f'%{k}' for k in scale} | {f'promptjax.models.get_config.{k}' for k in dims}
      assert {s['key'] for s, _ in diffs} <= scale_keys, (file, [(s['key'], got) for s, got in diffs])
    else:
      assert os.listdir(_arg(args, 'EVAL_OUTPUT_DIR')), (file, args)


def _arg(args, macro: str) -> str:
  """The path a command's ``--gin.<macro>='...'`` binds."""
  return next(a.partition('=')[2].strip("'") for a in args if a.startswith(f'--gin.{macro}='))


# The rows the suite runs (the module docstring says why these); every row with PROMPTJAX_ALL_ROWS=1.
SUITE_ROWS = ['paper/wu2022_large_reptile.gin', 'paper/wu2022_large_mtl_prompt_deep.gin',
              'paper/wu2022_large_no_cont_pretraining.gin', 'paper/wu2022_xl_t0_official.gin',
              'paper/qin2023_large_fomaml_prompt.gin', 'paper/qin2023_large_finetune.gin',
              'paper/pan2023_base_fewshot.gin', 'paper/pan2023_xl_metapt.gin', 'paper/pan2023_mini_ppt.gin',
              'paper/pan2023_xl_fewshot_inference.gin']


@pytest.mark.parametrize('file', sorted(ROWS) if ALL else SUITE_ROWS)
def test_row_runs_end_to_end_at_mini_scale(file, backbones, tmp_path, monkeypatch, request):
  data = None
  if ROWS[file]['paper'] == 'pan2023':
    data = request.getfixturevalue('pan_data')
    monkeypatch.setenv('PROMPTJAX_T5_VOCAB', data['PROMPTJAX_T5_VOCAB'])
  _run_row(file, backbones, tmp_path, monkeypatch, data)


def test_suite_rows_are_ledger_rows():
  assert set(SUITE_ROWS) <= set(ROWS)
