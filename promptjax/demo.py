"""`make demo`: a miniature of Wu et al. 2022 Table 1 on the bundled mini benchmark, end to end on a CPU.

1. **the backbone**: the bundled LM-adapted mini T5 (`promptjax/tasks/data/mini_lm_adapted`, a
   `models/t5_1_1_mini.gin` model that `tools/make_mini_backbone.py` trains with the prefix-LM objective on
   the bundled corpus) — the stand-in for the LM-adapted T5 the paper starts from, and the "No cont.
   pretraining" row;
2. **continued pretraining** from it on the training templates (`mini_train`) with the paper's methods,
   each one gin method file run through `promptjax train`: MTL-T✗P✓ (`ppt.gin` / `ppt_deep.gin`),
   MTL-T✓P✗ (`t0.gin`), MTL-T✓P✓ (`mtl_prompt.gin` / `mtl_prompt_deep.gin`), FOMAML (`fomaml.gin`) and
   Reptile (`reptile.gin`), all for the same number of training examples (a meta-step consumes
   meta-batch × (inner steps + 1) batches), two runs at a time;
3. **evaluation** of every model on the 10 held-out templates (`mini_heldout_rank_classification`, task
   types never trained on): zero-shot rank classification, and 16-shot prompt tuning of the shallow and
   the deep prompt (Wu et al.'s protocol, all templates tuned in one vmapped program; models without a
   pretrained prompt get a fresh one);
4. **the table**: ARG per method and setting with paired-bootstrap p-values against MTL-T✓P✗
   (`promptjax compare`), per-dataset accuracy plots (PNG), and the **verdict**: each of the paper's
   qualitative claims (`CLAIMS`, `META_VS_MTL`) with the p-values of its comparisons, and whether it holds
   here — printed whatever it says, in ``<output_dir>/comparison/verdict.json`` too.

Settings that differ from the paper to fit a 0.3 M-parameter model and minutes of CPU (flags, ``--help``):
continued pretraining at Adafactor lr 2e-2 with steps relative to the parameter scale (the paper: 1e-3,
absolute), batch 32 (the paper: 4,096), for one epoch over ``mini_train`` as in the paper (468 steps);
16-shot tuning for 30 epochs (the paper: 100).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from typing import Dict, List, Optional

HELDOUT = 'mini_heldout_rank_classification'
BACKBONE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tasks', 'data', 'mini_lm_adapted')
MODEL_GIN = 'models/t5_1_1_mini.gin'
P3_LENGTHS = "{'inputs': 64, 'targets': 16}"

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


# Wu et al. 2022 Table 1's qualitative claims, each a list of "A > B" comparisons (row A, row B, setting).
# A claim holds when every comparison in it does: A's ARG above B's with a paired-bootstrap p < ALPHA.
ALPHA = 0.05
CLAIMS = [
    ('continued pretraining helps zero-shot (Wu et al. 2022 §5: "continued pretraining is crucial")', [
        ('MTL-T✓P✓ shallow', 'No cont. pretraining', '0shot_shallow'),
        ('MTL-T✓P✓ deep', 'No cont. pretraining', '0shot_deep'),
        ('MTL-T✓P✗', 'No cont. pretraining', '0shot_shallow')]),
    ('a trained prompt helps zero-shot: MTL-T✓P✓ > MTL-T✓P✗', [
        ('MTL-T✓P✓ shallow', 'MTL-T✓P✗', '0shot_shallow'),
        ('MTL-T✓P✓ deep', 'MTL-T✓P✗', '0shot_deep')]),
    ('a pretrained prompt beats a fresh one after 16-shot prompt tuning: MTL-T✓P✓ > MTL-T✓P✗', [
        ('MTL-T✓P✓ shallow', 'MTL-T✓P✗', '16shot_shallow'),
        ('MTL-T✓P✓ deep', 'MTL-T✓P✗', '16shot_deep')]),
]
# Meta-learning rows against MTL-T✓P✓ (same prompt kind): the paper finds them no better (§5).
META_VS_MTL = [('FOMAML shallow', 'MTL-T✓P✓ shallow'), ('Reptile shallow', 'MTL-T✓P✓ shallow')]


def verdict(runs) -> Dict:
  """Tests `CLAIMS` (and `META_VS_MTL`) on the loaded runs that are present; {'claims': [...], 'meta': [...],
  'text': the lines printed under the table}."""
  from promptjax.evaluation import report
  by_name = {r.name: r for r in runs}

  def compare(a, b, setting):
    if a not in by_name or b not in by_name or setting not in by_name[a].settings \
        or setting not in by_name[b].settings:
      return None
    bs = report.pairwise(by_name[a], by_name[b], setting)
    return {'a': a, 'b': b, 'setting': setting, 'arg_a': bs['arg_a'], 'arg_b': bs['arg_b'],
            'diff': bs['diff'], 'p_value': bs['p_value'], 'holds': bs['diff'] > 0 and bs['p_value'] < ALPHA}

  def line(c):
    return (f"    {'✓' if c['holds'] else '✗'} {c['a']} {c['arg_a'] * 100:.1f} vs {c['b']} {c['arg_b'] * 100:.1f} "
            f"({c['setting'].replace('_', ' ')}): {c['diff'] * 100:+.1f}, p={c['p_value']:.3f}")

  claims, text = [], [f'Verdict (claim holds: every comparison better with paired-bootstrap p < {ALPHA}):']
  for i, (title, pairs) in enumerate(CLAIMS, 1):
    comps = [c for c in (compare(*p) for p in pairs) if c is not None]
    if not comps:
      continue
    held = all(c['holds'] for c in comps)
    claims.append({'claim': title, 'holds': held, 'comparisons': comps})
    text.append(f"  {i}. {title}: {'HOLDS here' if held else 'does NOT hold here'}")
    text.extend(line(c) for c in comps)
  meta = []
  for m, mtl in META_VS_MTL:
    for setting in ('0shot_shallow', '16shot_shallow'):
      better, worse = compare(m, mtl, setting), compare(mtl, m, setting)
      if better is None:
        continue
      meta.append({'meta': m, 'mtl': mtl, 'setting': setting, 'arg_meta': better['arg_a'], 'arg_mtl': better['arg_b'],
                   'p_meta_better': better['p_value'], 'p_mtl_better': worse['p_value']})
  if meta:
    agree = all(x['p_meta_better'] >= ALPHA for x in meta)
    text.append(f"  {len(claims) + 1}. meta-learning vs MTL (the paper: FOMAML and Reptile are no better than "
                f"MTL-T✓P✓): {'agrees here' if agree else 'does NOT agree here'}")
    text.extend(f"    {x['meta']} {x['arg_meta'] * 100:.1f} vs {x['mtl']} {x['arg_mtl'] * 100:.1f} "
                f"({x['setting'].replace('_', ' ')}): p(meta better)={x['p_meta_better']:.3f}, "
                f"p(MTL better)={x['p_mtl_better']:.3f}" for x in meta)
  return {'claims': claims, 'meta': meta, 'alpha': ALPHA, 'text': '\n'.join(text)}


def _train(args: List[str]) -> int:
  """`promptjax train` with the demo's run and model files; its exit code (a worker process's job)."""
  import gin
  from promptjax import cli
  gin.clear_config()
  rc = cli.main(['train', '--gin_file=runs/train.gin', f'--gin_file={MODEL_GIN}',
                 '--gin.promptjax.training.train.progress=False'] + args)
  gin.clear_config()
  return rc


def _train_all(jobs: Dict[str, List[str]], workers: int) -> None:
  """Runs the training jobs (name -> flags), `workers` processes at a time (the mini model's steps leave
  the second core mostly idle: two at a time finish the demo's runs about a quarter sooner on 2 cores)."""
  import concurrent.futures
  import contextlib
  import multiprocessing
  with contextlib.ExitStack() as stack:
    if workers <= 1:
      results = ((name, _train(flags)) for name, flags in jobs.items())
    else:
      pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
          workers, mp_context=multiprocessing.get_context('spawn')))
      futures = {pool.submit(_train, flags): name for name, flags in jobs.items()}
      results = ((futures[f], f.result()) for f in concurrent.futures.as_completed(futures))
    for name, rc in results:
      print(f'      {name}: {f"failed (exit {rc})" if rc else "done"}', flush=True)
      if rc:
        raise SystemExit(f'demo: `promptjax train {" ".join(jobs[name])}` failed (exit {rc})')


def _model(kind: str, length: int):
  from promptjax.models import PromptConfig, PromptableT5, get_config
  return PromptableT5(get_config('mini'), PromptConfig(kind=kind, length=length))


def main(argv: Optional[List[str]] = None) -> Dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output_dir', default='demo_output')
  parser.add_argument('--backbone', default=BACKBONE, help='the LM-adapted model continued pretraining starts '
                      'from (an HF or promptjax checkpoint of models/t5_1_1_mini.gin)')
  parser.add_argument('--workers', type=int, default=min(2, os.cpu_count() or 1),
                      help='training runs at a time (processes)')
  parser.add_argument('--seed', type=int, default=0, help='initialization, data order and few-shot examples')
  parser.add_argument('--mtl_steps', type=int, default=None, help='continued-pretraining steps (batch 32); '
                      'default: one epoch over mini_train, as Wu et al. 2022 App. C (468 steps; see the learning '
                      'curves in the data README)')
  parser.add_argument('--learning_rate', type=float, default=2e-2,
                      help='continued pretraining (Adafactor, steps relative to parameter scale)')
  parser.add_argument('--meta_batch_size', type=int, default=4)
  parser.add_argument('--inner_steps', type=int, default=3)
  parser.add_argument('--meta_steps', type=int, default=None,
                      help='default: the examples of --mtl_steps MTL steps (batch 32)')
  parser.add_argument('--prompt_length', type=int, default=20)
  parser.add_argument('--fewshot_epochs', type=int, default=30, help='Wu et al. use 100; 30 keeps the demo short')
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
  # Wu et al. 2022 App. C: "one epoch over the training datasets" (mini_train's rates are its example counts).
  from promptjax.data import feeds
  mtl_steps = args.mtl_steps or feeds.epoch_steps('mini_train', 1, 32)
  meta_steps = args.meta_steps or max(1, round(mtl_steps * 32 / (args.meta_batch_size * (args.inner_steps + 1) * 16)))

  backbone = os.path.abspath(args.backbone)
  if not os.path.isfile(os.path.join(backbone, 'model.safetensors')):
    raise SystemExit(f'demo: no backbone at {backbone} (config.json + model.safetensors); '
                     f'`make backbone` writes the bundled one')
  print(f'[1/4] backbone: the LM-adapted mini T5 in {backbone} (tools/make_mini_backbone.py)', flush=True)

  # 2. Continued pretraining, one gin method file per row.
  ckpts = {'No cont. pretraining': (backbone, 'none')}
  print(f'[2/4] continued pretraining on mini_train: {mtl_steps} MTL steps (batch 32) / {meta_steps} '
        f'meta-steps (meta-batch {args.meta_batch_size}, {args.inner_steps} inner steps, batch 16)', flush=True)
  jobs = {}
  for name, gin_file, kind, is_meta in methods:
    model_dir = os.path.join(out, 'models', SLUG[name])
    steps = meta_steps if is_meta else mtl_steps
    ckpts[name] = (os.path.join(model_dir, f'checkpoint_{steps}'), kind)
    if os.path.isdir(ckpts[name][0]):
      print(f'      {name}: {gin_file} (done before: {ckpts[name][0]})', flush=True)
      continue
    flags = [f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='mini_train'",
             f'--gin.TRAIN_STEPS={steps}', '--gin.BATCH_SIZE=32', f'--gin.TASK_FEATURE_LENGTHS={P3_LENGTHS}',
             f"--gin.INITIAL_CHECKPOINT_PATH='{backbone}'", f'--gin.LEARNING_RATE={args.learning_rate}',
             f'--gin.CHECKPOINT_PERIOD={steps}', f'--gin.promptjax.models.PromptConfig.length={args.prompt_length}',
             f'--gin.RANDOM_SEED={args.seed}',
             # Adafactor's steps relative to each parameter's scale (T5X's default; the papers turn it off at
             # lr 1e-3): what lets a mini model learn the training families in a few hundred steps.
             '--gin.promptjax.training.optimizers.create_optimizer.multiply_by_parameter_scale=True']
    if is_meta:  # the inner loop's prompt tuning at the outer learning rate, as Wu et al. (both 1e-3)
      flags += [f'--gin.META_BATCH_SIZE={args.meta_batch_size}', f'--gin.INNER_STEPS={args.inner_steps}',
                f'--gin.INNER_LEARNING_RATE={args.learning_rate}', '--gin.CLONE_CHUNK_SIZE=None',
                '--gin.MESH_SHAPE=(1, 1)']
    jobs[name] = [f'--gin_file={gin_file}'] + flags
  _train_all(jobs, args.workers)

  # 3. Evaluation: 0-shot and 16-shot (shallow / deep prompt) on the held-out templates.
  from promptjax.evaluation import fewshot as fs, rank_classification as rc, report, run as run_lib
  tasks = rc.task_names(HELDOUT)
  eval_choices = {t: rc.load_choices(t, 'validation', max_examples=args.max_examples) for t in tasks}
  train_choices = {t: rc.load_choices(t, 'train') for t in tasks}
  cfg = fs.FewShotConfig(epochs=args.fewshot_epochs, learning_rate=args.fewshot_learning_rate, seed=100 + args.seed)
  print(f'[3/4] evaluation on {len(tasks)} held-out templates ({sum(c.num_examples for c in eval_choices.values())} '
        f'instances): 0-shot rank classification, 16-shot prompt tuning ({cfg.epochs} epochs, Adafactor '
        f'{cfg.learning_rate:g})', flush=True)
  runs = []
  # Rows without a prompt get a fresh prompt of each kind the rows run have (both when none has one).
  fresh_kinds = [k for k in ('shallow', 'deep') if any(m[2] == k for m in methods)] or ['shallow', 'deep']
  for name, (ckpt, kind) in ckpts.items():
    run_dir = os.path.join(out, 'eval', SLUG[name])
    kinds = fresh_kinds if kind == 'none' else [kind]
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
  comparison['verdict'] = verdict(loaded)
  print(comparison['verdict']['text'] + '\n')
  with open(os.path.join(out, 'comparison', 'verdict.json'), 'w') as f:
    json.dump({k: v for k, v in comparison['verdict'].items() if k != 'text'}, f, indent=1, ensure_ascii=False)
  print('plots: ' + ', '.join(comparison['plots']))
  print(f'done in {time.time() - t0:.0f} s; everything is under {out}/')
  return comparison


if __name__ == '__main__':
  main()
