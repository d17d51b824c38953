"""Zero-shot rank-classification throughput (instances/s): promptjax's `ChoiceScorer` vs an HF PyTorch scorer.

Both score every answer choice of every instance by the summed log-likelihood of its target tokens (EOS
included; divided by the number of target tokens with `--length_normalize`) and predict the argmax per
instance. They run side by side in the same process, on the same model and the same data:

  model      the mini model of `make demo` (`models/t5_1_1_mini.gin`: T5 v1.1, 2 + 2 layers, d 64,
             4 heads x 16, MLP 128, vocab 1664), no prompt, random weights from
             `PromptableT5.init_params(PRNGKey(0))`; exported with `promptjax.checkpoints.hf.export_hf` and
             loaded by `transformers.T5ForConditionalGeneration.from_pretrained` (fp32, eval mode).
  data       the 10 bundled held-out templates (`mini_heldout_rank_classification`), split `validation`
             (100 instances each, 2-3 choices), read once with `rank_classification.load_choices` (whole
             sequences); reading is not timed.
  promptjax  `ChoiceScorer(model, length_normalize, examples_per_batch).scores(params, choices)` per template:
             `examples_per_batch` instances per jitted call, the encoder runs once per instance and its
             output is repeated over the choices; shapes padded as `ChoiceScorer.scores` pads them (a
             fixed number of instances per call, inputs to a multiple of 16).
  pytorch    the usual HF way (as in the official PyTorch code of these papers): per batch of
             `examples_per_batch` instances, every (instance, choice) pair becomes a row (the input is
             repeated per choice), rows are padded to the batch's longest input / target (labels with
             -100), one `model(input_ids, attention_mask, labels)` call, the per-token log-probabilities
             of the labels summed per row, argmax per instance. `torch.inference_mode()`; one HF scorer
             per `--torch_threads` entry (`torch.set_num_threads`; default: #cores, and 1, since 2-thread
             OpenMP stalls on the 2-core VM: see the README).

A pass scores all templates once, from `ChoiceSet` to the [E, C] scores (host-side padding included). Each
scorer first runs one untimed warm-up pass (promptjax compiles there: its compile time is reported as the
warm-up pass minus the median timed pass, next to the number of compiled programs). Then the scorers take
turns over `--repeats` timed passes, the order reversed every other pass; the median pass gives
instances/s. The predictions of the two scorers are compared (agreement fraction, max |score difference|,
which should be ~1e-4 or less in fp32), as are their accuracies. The work each side does (encoder and
decoder token positions including padding, against the real tokens) is reported too.

Usage:
  python benchmarks/rank_classification.py                          # all 10 templates, batch 32, 3 passes
  python benchmarks/rank_classification.py --examples_per_batch 64 --repeats 5 --length_normalize
  python benchmarks/rank_classification.py --max_examples 16 --repeats 1   # smoke test
Results are also written to benchmarks/results/rank_classification.json (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np

import common  # noqa: E402  (benchmarks/common.py: the repository on sys.path, machine facts)

REPO_ROOT = common.REPO_ROOT

HELDOUT = 'mini_heldout_rank_classification'
PRESET = 'mini'   # the model of `make demo` (`get_config('mini')`)


def mini_model(kind: str = 'none', length: int = 20):
  from promptjax.models import PromptConfig, PromptableT5, get_config
  return PromptableT5(get_config(PRESET), PromptConfig(kind=kind, length=length))


def _lengths(a: np.ndarray) -> np.ndarray:
  """Real lengths of right-padded (pad id 0) token rows along the last axis."""
  nz = a != 0
  return np.where(nz.any(-1), a.shape[-1] - np.argmax(nz[..., ::-1], axis=-1), 0)


# ------------------------------------------------------------------------------------------------
# Scorers. Each returns {task: scores [E, C]} (-inf on padded choices) for one pass over all tasks.

def promptjax_pass(scorer, params, choicesets) -> Dict[str, np.ndarray]:
  return {task: scorer.scores(params, cs) for task, cs in choicesets.items()}


class HFScorer:
  """The usual HF PyTorch rank-classification scorer: one row per (instance, choice), one forward."""

  def __init__(self, model, length_normalize: bool, examples_per_batch: int):
    self.model = model
    self.length_normalize = length_normalize
    self.examples_per_batch = int(examples_per_batch)

  def scores(self, cs) -> np.ndarray:
    import torch
    E, C = cs.valid.shape
    in_len = _lengths(cs.inputs)
    tgt_len = _lengths(cs.targets)
    out = np.full((E, C), -np.inf, np.float32)
    n = self.examples_per_batch
    for s in range(0, E, n):
      rows = [(e, c) for e in range(s, min(s + n, E)) for c in range(C) if cs.valid[e, c]]
      L = max(int(in_len[e]) for e, _ in rows)
      T = max(int(tgt_len[e, c]) for e, c in rows)
      ids = np.zeros((len(rows), L), np.int64)
      labels = np.full((len(rows), T), -100, np.int64)
      for r, (e, c) in enumerate(rows):
        ids[r, :in_len[e]] = cs.inputs[e, :in_len[e]]
        labels[r, :tgt_len[e, c]] = cs.targets[e, c, :tgt_len[e, c]]
      input_ids = torch.from_numpy(ids)
      label_t = torch.from_numpy(labels)
      with torch.inference_mode():
        logits = self.model(input_ids=input_ids, attention_mask=(input_ids != 0).long(),
                            labels=label_t).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        mask = label_t != -100
        tok = logp.gather(-1, label_t.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        ll = tok.sum(-1)
        if self.length_normalize:
          ll = ll / mask.sum(-1).clamp(min=1)
      ll = ll.numpy()
      for r, (e, c) in enumerate(rows):
        out[e, c] = ll[r]
    return out


def hf_pass(scorer: HFScorer, choicesets) -> Dict[str, np.ndarray]:
  return {task: scorer.scores(cs) for task, cs in choicesets.items()}


# ------------------------------------------------------------------------------------------------
# Work accounting: token positions each scorer computes (padding included) against the real tokens.

def work(choicesets, examples_per_batch: int, pj_calls) -> Dict[str, Dict[str, int]]:
  """Token positions each scorer computes, padding included, and the real ones.

  `pj_calls` are the (inputs, targets) shapes of promptjax's jitted calls in one pass (recorded, so the
  count follows whatever bucketing `ChoiceScorer` does). `cross_kv_positions` are the encoder positions the
  decoder's cross-attention projects to keys / values: promptjax repeats the encoder output over the
  choices before the decoder, so it projects E * C * L of them, like the HF rows.
  """
  n = examples_per_batch
  real = dict(instances=0, rows=0, encoder_tokens_once=0, encoder_tokens_per_choice=0, decoder_tokens=0)
  pj = dict(calls=len(pj_calls), encoder_tokens=0, decoder_tokens=0, cross_kv_positions=0)
  hf = dict(calls=0, encoder_tokens=0, decoder_tokens=0, cross_kv_positions=0)
  for (e, l), (_, c, t) in pj_calls:
    pj['encoder_tokens'] += e * l
    pj['decoder_tokens'] += e * c * t
    pj['cross_kv_positions'] += e * c * l
  for cs in choicesets.values():
    E = cs.valid.shape[0]
    in_len, tgt_len = _lengths(cs.inputs), _lengths(cs.targets)
    real['instances'] += E
    real['rows'] += int(cs.valid.sum())
    real['encoder_tokens_once'] += int(in_len.sum())
    real['encoder_tokens_per_choice'] += int((in_len[:, None] * cs.valid).sum())
    real['decoder_tokens'] += int((tgt_len * cs.valid).sum())
    for s in range(0, E, n):
      sl = slice(s, min(s + n, E))
      v = cs.valid[sl]
      rows = int(v.sum())
      hf['calls'] += 1
      hf['encoder_tokens'] += rows * int(in_len[sl].max())
      hf['decoder_tokens'] += rows * int(tgt_len[sl][v].max())
  hf['cross_kv_positions'] = hf['encoder_tokens']
  return dict(real=real, promptjax=pj, pytorch=hf)


def _cache_size(jitted) -> Optional[int]:
  """Number of programs a `jax.jit` function has compiled (None if this jax does not say)."""
  try:
    return int(jitted._cache_size())
  except Exception:  # pylint: disable=broad-except
    return None


# ------------------------------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> Dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--examples_per_batch', type=int, default=32,
                 help='instances per scorer call (both scorers)')
  p.add_argument('--repeats', type=int, default=3, help='timed passes per scorer (median reported)')
  p.add_argument('--max_examples', type=int, default=None, help='instances per template (default: all)')
  p.add_argument('--length_normalize', action='store_true',
                 help='divide each score by its number of target tokens (official Wu et al. code)')
  p.add_argument('--mixture', default=HELDOUT, help='rank-classification mixture or task')
  p.add_argument('--split', default='validation')
  ncpu = os.cpu_count() or 1
  p.add_argument('--torch_threads', default=f'{ncpu},1' if ncpu > 1 else '1',
                 help='comma-separated torch thread counts, one HF scorer each (default: #cores and 1); '
                      'the first one is also the reference of the agreement check')
  p.add_argument('--omp_wait_policy', default=None, choices=('PASSIVE', 'ACTIVE'),
                 help="set OMP_WAIT_POLICY for torch's OpenMP threads (default: libgomp's, busy-waiting)")
  p.add_argument('--output', default=os.path.join(REPO_ROOT, 'benchmarks', 'results',
                                                  'rank_classification.json'))
  args = p.parse_args(argv)
  threads = [int(t) for t in args.torch_threads.split(',') if t.strip()]
  if args.omp_wait_policy:  # must be set before libgomp starts (i.e. before torch is imported)
    os.environ['OMP_WAIT_POLICY'] = args.omp_wait_policy

  import jax
  import torch
  import transformers
  import promptjax.tasks  # noqa: F401  (registers the bundled tasks)
  from promptjax.checkpoints.hf import export_hf
  from promptjax.evaluation import rank_classification as rc

  print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, '
        f'jax {jax.__version__} {jax.devices()}, torch {torch.__version__} (threads {threads}, '
        f'OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY", "unset")}), transformers '
        f'{transformers.__version__}', flush=True)

  t0 = time.perf_counter()
  tasks = rc.task_names(args.mixture)
  choicesets = {t: rc.load_choices(t, args.split, max_examples=args.max_examples) for t in tasks}
  load_s = time.perf_counter() - t0
  num_instances = sum(cs.num_examples for cs in choicesets.values())
  num_rows = sum(int(cs.valid.sum()) for cs in choicesets.values())
  print(f'data: {len(tasks)} templates of {args.mixture} ({args.split}), {num_instances} instances, '
        f'{num_rows} (instance, choice) pairs, read in {load_s:.1f}s', flush=True)
  for t, cs in choicesets.items():
    print(f'  {t}: E={cs.num_examples} C<={cs.valid.shape[1]} input len {cs.inputs.shape[1]} '
          f'target len {cs.targets.shape[2]}')

  model = mini_model('none')
  params = model.init_params(jax.random.PRNGKey(0))
  with tempfile.TemporaryDirectory() as d:
    export_hf(jax.device_get(params), model.config, d)
    hf_model = transformers.T5ForConditionalGeneration.from_pretrained(d).float().eval()

  pj_scorer = rc.ChoiceScorer(model, args.length_normalize, args.examples_per_batch)
  hf_scorer = HFScorer(hf_model, args.length_normalize, args.examples_per_batch)
  runners: Dict[str, Callable[[], Dict[str, np.ndarray]]] = {
      'promptjax': lambda: promptjax_pass(pj_scorer, params, choicesets)}

  def hf_runner(n_threads):
    def run():
      torch.set_num_threads(n_threads)
      return hf_pass(hf_scorer, choicesets)
    return run

  hf_names = []
  for k, n_threads in enumerate(threads):
    name = 'pytorch' if len(threads) == 1 else f'pytorch@{n_threads}'
    hf_names.append(name)
    runners[name] = hf_runner(n_threads)

  # Record the shapes of promptjax's calls during its (untimed) warm-up pass, for the work accounting.
  pj_calls, jitted = [], pj_scorer._fn

  def recording(params_, inputs, targets):
    pj_calls.append((tuple(inputs.shape), tuple(targets.shape)))
    return jitted(params_, inputs, targets)

  pj_scorer._fn = recording
  results, scores = {}, {}
  for name, run in runners.items():
    t0 = time.perf_counter()
    scores[name] = run()
    first = time.perf_counter() - t0
    results[name] = dict(warmup_pass_s=first, times=[])
    print(f'{name}: warm-up pass {first:.2f}s', flush=True)
    pj_scorer._fn = jitted

  order = list(runners)
  for rep in range(args.repeats):
    for name in (order if rep % 2 == 0 else order[::-1]):
      t0 = time.perf_counter()
      runners[name]()
      dt = time.perf_counter() - t0
      results[name]['times'].append(dt)
      print(f'  pass {rep}: {name:10s} {dt:7.3f}s  {num_instances / dt:8.1f} instances/s', flush=True)

  for name, res in results.items():
    med = statistics.median(res['times'])
    res.update(median_pass_s=med, min_pass_s=min(res['times']), instances_per_s=num_instances / med,
               pairs_per_s=num_rows / med)
  for k, name in enumerate(hf_names):
    results[name]['torch_threads'] = threads[k]
  pj = results['promptjax']
  pj['compile_s_estimate'] = pj['warmup_pass_s'] - pj['median_pass_s']
  pj['compiled_programs'] = _cache_size(pj_scorer._fn)

  # Agreement of the two scorers (against the first HF scorer; the others run the same model).
  ref = hf_names[0]
  agree, n_inst, max_diff, acc = 0, 0, 0.0, {'promptjax': [], 'pytorch': []}
  per_task = {}
  for t, cs in choicesets.items():
    a, b = scores['promptjax'][t], scores[ref][t]
    ra, rb = rc.classify(a, cs), rc.classify(b, cs)
    same = int((ra.predictions == rb.predictions).sum())
    diff = float(np.max(np.abs(a[cs.valid] - b[cs.valid])))
    agree += same
    n_inst += cs.num_examples
    max_diff = max(max_diff, diff)
    acc['promptjax'].append(ra.accuracy)
    acc['pytorch'].append(rb.accuracy)
    per_task[t] = dict(agreement=same / cs.num_examples, max_abs_score_diff=diff,
                       accuracy_promptjax=ra.accuracy, accuracy_pytorch=rb.accuracy)
  # The closest pair of choices says how much score noise it would take to flip a prediction.
  margins = []
  for t, cs in choicesets.items():
    s = np.sort(np.where(cs.valid, scores[ref][t], -np.inf), axis=-1)
    margins.append(s[:, -1] - s[:, -2])
  hf_spread = max((float(np.max(np.abs(scores[n][t][cs.valid] - scores[ref][t][cs.valid])))
                   for n in hf_names[1:] for t, cs in choicesets.items()), default=0.0)
  agreement = dict(agreement=agree / n_inst, max_abs_score_diff=max_diff, reference=ref,
                   mean_accuracy_promptjax=float(np.mean(acc['promptjax'])),
                   mean_accuracy_pytorch=float(np.mean(acc['pytorch'])),
                   min_top2_margin=float(np.min(np.concatenate(margins))),
                   max_abs_score_diff_between_torch_thread_counts=hf_spread, per_task=per_task)

  w = work(choicesets, args.examples_per_batch, pj_calls)
  ratios = {}
  for name in hf_names:
    ratios[f'promptjax/{name}'] = pj['instances_per_s'] / results[name]['instances_per_s']
    ratios[f'promptjax/{name} (min passes)'] = results[name]['min_pass_s'] / pj['min_pass_s']

  print()
  hdr = f'{"scorer":11s} {"warm-up s":>9s} {"median s":>9s} {"min s":>8s} {"inst/s":>9s} {"pairs/s":>9s}'
  print(hdr)
  print('-' * len(hdr))
  for name, res in results.items():
    print(f'{name:11s} {res["warmup_pass_s"]:9.2f} {res["median_pass_s"]:9.3f} {res["min_pass_s"]:8.3f} '
          f'{res["instances_per_s"]:9.1f} {res["pairs_per_s"]:9.1f}')
  print(f'promptjax compile (warm-up - median pass): {pj["compile_s_estimate"]:.2f}s, '
        f'{pj["compiled_programs"]} compiled programs')
  for name in hf_names:
    print(f'promptjax / {name}: {ratios[f"promptjax/{name}"]:.2f}x instances/s (median passes), '
          f'{ratios[f"promptjax/{name} (min passes)"]:.2f}x (min passes)')
  print(f'agreement with {ref}: {agreement["agreement"] * 100:.2f}% of {n_inst} predictions, max |score diff| '
        f'{max_diff:.2e} (smallest top-2 margin {agreement["min_top2_margin"]:.2e}); mean accuracy '
        f'promptjax {agreement["mean_accuracy_promptjax"]:.4f}, pytorch {agreement["mean_accuracy_pytorch"]:.4f}')
  r = w['real']
  print(f'work: real encoder tokens {r["encoder_tokens_once"]} once per instance / '
        f'{r["encoder_tokens_per_choice"]} once per choice, real decoder tokens {r["decoder_tokens"]}')
  for name in ('promptjax', 'pytorch'):
    x = w[name]
    enc_real = r['encoder_tokens_once'] if name == 'promptjax' else r['encoder_tokens_per_choice']
    print(f'  {name:9s} {x["calls"]} calls, encoder positions {x["encoder_tokens"]} '
          f'({enc_real / x["encoder_tokens"] * 100:.0f}% real), decoder positions {x["decoder_tokens"]} '
          f'({r["decoder_tokens"] / x["decoder_tokens"] * 100:.0f}% real), cross-attention K/V positions '
          f'{x["cross_kv_positions"]}')

  out = dict(mixture=args.mixture, split=args.split, tasks=tasks, num_instances=num_instances,
             num_pairs=num_rows, examples_per_batch=args.examples_per_batch, repeats=args.repeats,
             max_examples=args.max_examples, length_normalize=args.length_normalize,
             model=dict(preset=PRESET, prompt='none'), data_load_s=load_s,
             results=results, ratios=ratios, agreement=agreement, work=w,
             machine=common.machine_info(torch=torch.__version__, torch_threads=threads,
                                         omp_wait_policy=os.environ.get('OMP_WAIT_POLICY'),
                                         transformers=transformers.__version__))
  return common.write_record(out, args.output)


if __name__ == '__main__':
  main()
