"""`make demo`: a miniature of Wu et al. 2022 Table 1 on the bundled mini benchmark, end to end on a CPU.

1. **LM adaptation** of a small T5 v1.1 (`models/t5_1_1_mini.gin`) from scratch on the bundled corpus
   (prefix LM, `mini_text_prefix_lm`) — the stand-in for the LM-adapted T5 the paper starts from;
2. **continued pretraining** from it on the training templates (`mini_train`) with the paper's methods,
   each one gin method file run through `promptjax train`: MTL-T✗P✓ (`ppt.gin` / `ppt_deep.gin`),
   MTL-T✓P✗ (`t0.gin`), MTL-T✓P✓ (`mtl_prompt.gin` / `mtl_prompt_deep.gin`), FOMAML (`fomaml.gin`) and
   Reptile (`reptile.gin`), all for about the same number of training examples (one pass over
   `mini_train`; a meta-step consumes meta-batch × (inner steps + 1) batches);
3. **evaluation** of every model on the 10 held-out templates (`mini_heldout_rank_classification`, task
   types never trained on): zero-shot rank classification, and 16-shot prompt tuning of the shallow and
   the deep prompt (Wu et al.'s protocol, all templates tuned in one vmapped program; models without a
   pretrained prompt get a fresh one);
4. **the table**: ARG per method and setting with paired-bootstrap p-values against MTL-T✓P✗
   (`promptjax compare`), and per-dataset accuracy plots (PNG), in ``<output_dir>/comparison/``.

Whatever the numbers say is printed as it is: with a 0.3 M-parameter model and minutes of CPU training,
they say how the methods compare *here*, not in the paper. Steps and sizes are flags (``--help``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from typing import Dict, List, Optional

HELDOUT = 'mini_heldout_rank_classification'
MODEL_GIN = 'models/t5_1_1_mini.gin'
P3_LENGTHS = "{'inputs': 64, 'targets': 16}"
LM_LENGTHS = "{'inputs': 64, 'targets': 64}"

# (row name in the table, gin method file, prompt kind, is meta-learning)
METHODS = [
    ('MTL-T✗P✓ shallow', 'ppt.gin', 'shallow', False),
    ('MTL-T✗P✓ deep', 'ppt_deep.gin', 'deep', False),
    ('MTL-T✓P✗', 't0.gin', 'none', False),
    ('MTL-T✓P✓ shallow', 'mtl_prompt.gin', 'shallow', False),
    ('MTL-T✓P✓ deep', 'mtl_prompt_deep.gin', 'deep', False),
    ('FOMAML shallow', 'fomaml.gin', 'shallow', True),
    ('Reptile shallow', 'reptile.gin', 'shallow', True),
]
SLUG = {'No cont. pretraining': 'no_cont_pretraining', 'MTL-T✗P✓ shallow': 'mtl_tx_pv_shallow',
        'MTL-T✗P✓ deep': 'mtl_tx_pv_deep', 'MTL-T✓P✗': 'mtl_tv_px', 'MTL-T✓P✓ shallow': 'mtl_tv_pv_shallow',
        'MTL-T✓P✓ deep': 'mtl_tv_pv_deep', 'FOMAML shallow': 'fomaml_shallow', 'Reptile shallow': 'reptile_shallow'}


def _train(args: List[str]) -> None:
  import gin
  from promptjax import cli
  gin.clear_config()
  rc = cli.main(['train', '--gin_file=runs/train.gin', f'--gin_file={MODEL_GIN}'] + args)
  gin.clear_config()
  if rc:
    raise SystemExit(f'demo: `promptjax train {" ".join(args)}` failed (exit {rc})')


def _model(kind: str, length: int):
  from promptjax.models import PromptConfig, PromptableT5, get_config
  return PromptableT5(get_config('mini'), PromptConfig(kind=kind, length=length))


def main(argv: Optional[List[str]] = None) -> Dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output_dir', default='demo_output')
  parser.add_argument('--lm_steps', type=int, default=250, help='LM-adaptation steps (batch 32)')
  parser.add_argument('--lm_learning_rate', type=float, default=1e-2,
                      help='LM adaptation trains from scratch, so faster than the papers\' 1e-3')
  parser.add_argument('--mtl_steps', type=int, default=180, help='continued-pretraining steps (batch 32; '
                      '180 is one pass over mini_train)')
  parser.add_argument('--learning_rate', type=float, default=3e-3, help='continued pretraining (Adafactor)')
  parser.add_argument('--meta_batch_size', type=int, default=4)
  parser.add_argument('--inner_steps', type=int, default=3)
  parser.add_argument('--meta_steps', type=int, default=None,
                      help='default: the examples of --mtl_steps MTL steps (batch 32)')
  parser.add_argument('--prompt_length', type=int, default=20)
  parser.add_argument('--fewshot_epochs', type=int, default=100)
  parser.add_argument('--fewshot_learning_rate', type=float, default=1e-3)
  parser.add_argument('--max_examples', type=int, default=None, help='evaluate on the first N instances')
  parser.add_argument('--methods', default=None,
                      help='comma-separated subset of the table rows to run (default: all)')
  parser.add_argument('--fresh', action='store_true', help='delete output_dir first (otherwise runs resume)')
  args = parser.parse_args(argv)
  t0 = time.time()
  out = os.path.abspath(args.output_dir)
  if args.fresh and os.path.isdir(out):
    shutil.rmtree(out)
  os.makedirs(out, exist_ok=True)
  methods = METHODS
  if args.methods:
    wanted = [m.strip() for m in args.methods.split(',')]
    unknown = set(wanted) - {m[0] for m in METHODS}
    if unknown:
      raise SystemExit(f'demo: unknown method(s) {sorted(unknown)}; rows are {[m[0] for m in METHODS]}')
    methods = [m for m in METHODS if m[0] in wanted]
  meta_steps = args.meta_steps or max(1, round(args.mtl_steps * 32 / (args.meta_batch_size * (args.inner_steps + 1) * 16)))

  # 1. LM adaptation.
  lm_dir = os.path.join(out, 'models', 'lm_adapted')
  print(f'[1/4] LM adaptation: {args.lm_steps} steps of prefix LM on the bundled corpus -> {lm_dir}', flush=True)
  _train(['--gin_file=t0.gin', f"--gin.MODEL_DIR='{lm_dir}'", "--gin.MIXTURE_OR_TASK_NAME='mini_text_prefix_lm'",
          f'--gin.TRAIN_STEPS={args.lm_steps}', '--gin.BATCH_SIZE=32', f'--gin.TASK_FEATURE_LENGTHS={LM_LENGTHS}',
          f'--gin.LEARNING_RATE={args.lm_learning_rate}', f'--gin.CHECKPOINT_PERIOD={args.lm_steps}',
          '--gin.TRAINABLE="all"'])
  lm_ckpt = os.path.join(lm_dir, f'checkpoint_{args.lm_steps}')

  # 2. Continued pretraining, one gin method file per row.
  ckpts = {'No cont. pretraining': (lm_ckpt, 'none')}
  print(f'[2/4] continued pretraining on mini_train: {args.mtl_steps} MTL steps (batch 32) / {meta_steps} '
        f'meta-steps (meta-batch {args.meta_batch_size}, {args.inner_steps} inner steps, batch 16)', flush=True)
  for name, gin_file, kind, is_meta in methods:
    model_dir = os.path.join(out, 'models', SLUG[name])
    steps = meta_steps if is_meta else args.mtl_steps
    print(f'      {name}: {gin_file}', flush=True)
    flags = [f'--gin_file={gin_file}', f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='mini_train'",
             f'--gin.TRAIN_STEPS={steps}', '--gin.BATCH_SIZE=32', f'--gin.TASK_FEATURE_LENGTHS={P3_LENGTHS}',
             f"--gin.INITIAL_CHECKPOINT_PATH='{lm_ckpt}'", f'--gin.LEARNING_RATE={args.learning_rate}',
             f'--gin.CHECKPOINT_PERIOD={steps}', f'--gin.promptjax.models.PromptConfig.length={args.prompt_length}']
    if is_meta:
      flags += [f'--gin.META_BATCH_SIZE={args.meta_batch_size}', f'--gin.INNER_STEPS={args.inner_steps}',
                '--gin.CLONE_CHUNK_SIZE=None', '--gin.MESH_SHAPE=(1, 1)']
    _train(flags)
    ckpts[name] = (os.path.join(model_dir, f'checkpoint_{steps}'), kind)

  # 3. Evaluation: 0-shot and 16-shot (shallow / deep prompt) on the held-out templates.
  from promptjax.evaluation import fewshot as fs, rank_classification as rc, report, run as run_lib
  tasks = rc.task_names(HELDOUT)
  eval_choices = {t: rc.load_choices(t, 'validation', max_examples=args.max_examples) for t in tasks}
  train_choices = {t: rc.load_choices(t, 'train') for t in tasks}
  cfg = fs.FewShotConfig(epochs=args.fewshot_epochs, learning_rate=args.fewshot_learning_rate)
  print(f'[3/4] evaluation on {len(tasks)} held-out templates ({sum(c.num_examples for c in eval_choices.values())} '
        f'instances): 0-shot rank classification, 16-shot prompt tuning ({cfg.epochs} epochs, Adafactor '
        f'{cfg.learning_rate:g})', flush=True)
  runs = []
  for name, (ckpt, kind) in ckpts.items():
    run_dir = os.path.join(out, 'eval', SLUG[name])
    kinds = ['shallow', 'deep'] if kind == 'none' else [kind]
    zero = None
    for k in kinds:
      setting = f'0shot_{k}'
      if zero is None:
        model, params = run_lib.load_params(_model(kind, args.prompt_length), ckpt)
        fs.evaluate_zero_shot(model, params, tasks, eval_choices=eval_choices, output_dir=os.path.join(run_dir, setting),
                              progress=False)
        zero = os.path.join(run_dir, setting)
      elif not os.path.exists(os.path.join(run_dir, setting)):
        shutil.copytree(zero, os.path.join(run_dir, setting))   # no prompt: one 0-shot result for both columns
      model, params = run_lib.load_params(_model(k, args.prompt_length), ckpt)
      res = fs.evaluate_few_shot(model, params, tasks, cfg, eval_choices=eval_choices, train_choices=train_choices,
                                 output_dir=os.path.join(run_dir, f'16shot_{k}'), progress=False)
      zs = rc.read_results(os.path.join(run_dir, f'0shot_{k}'))['metrics']['summary']['arg']
      print(f'      {name:22s} {k:7s} 0-shot ARG {zs * 100:6.1f}   16-shot ARG {fs.summary(res)["arg"] * 100:6.1f}'
            f'   ({time.time() - t0:.0f} s)', flush=True)
    runs.append(f'{name}={run_dir}')

  # 4. The table.
  loaded = [report.load_run(r) for r in runs]
  reference = 'MTL-T✓P✗' if 'MTL-T✓P✗' in ckpts else None
  comparison = report.write_report(loaded, os.path.join(out, 'comparison'), reference=reference)
  print('\n[4/4] Average Relative Gain (%) on the held-out templates, p-values vs '
        f'{comparison["reference"]}:\n')
  print(comparison['table'])
  print('plots: ' + ', '.join(comparison['plots']))
  print(f'done in {time.time() - t0:.0f} s; everything is under {out}/')
  return comparison


if __name__ == '__main__':
  main()
