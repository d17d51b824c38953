"""Average Relative Gain (ARG) and paired-bootstrap significance, as the papers define them.

ARG, Wu et al. 2022 (§4): "averaging across all templates the relative accuracy
improvement over a random baseline":

    RG_t = (acc_t − random_t) / random_t,        ARG = mean_t RG_t          (`average_relative_gain`)

The official script (better-promptability ``scripts/bootstrap.py``, ``macro_avg``) averages the RGs
within each dataset first and then over datasets: ``within_dataset=True`` with a template → dataset map.

ARG, Qin et al. 2023 (§4.2): the relative gain of each target task over a *baseline run*
(prompt tuning from a random prompt), averaged over target tasks:

    RG_k = (score_k − baseline_k) / baseline_k,  ARG = mean_k RG_k          (`arg_vs_baseline`)

Significance, Wu et al. §4: "bootstrap with 1,000 iterations, in each iteration randomly sampling
evaluation examples and comparing the two models in question". `paired_bootstrap` resamples the
instances of every template with replacement (independently per template, the same draw for both
models — a paired test over the saved per-instance predictions), recomputes both ARGs, and reports
p = fraction of resamples with ARG_A − ARG_B ≤ 0, the p-value of "A > B". The official script's "arg p"
counts only ARG_A − ARG_B < 0 (``count_ties=False``), which gives p = 0 to two identical runs; counting
ties is the conservative default. The official script does not have per-instance predictions: it rebuilds each model's
correctness vector from its accuracy as [1]*n_correct + [0]*rest and zips the two sorted vectors;
``pairing='sorted'`` reproduces that (it overstates the pairing), the default ``'instances'`` pairs the
real predictions.

Values are fractions (0.25 = 25 %); reports print percentages.
"""

from __future__ import annotations

import collections
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np


def relative_gain(score: float, baseline: float) -> float:
  if baseline <= 0:
    raise ValueError(f'relative gain needs a positive baseline, got {baseline}')
  return (score - baseline) / baseline


def _mean_over(values: Mapping[str, float], groups: Optional[Mapping[str, str]], within_dataset: bool
               ) -> float:
  if not values:
    raise ValueError('ARG of no templates')
  if not within_dataset:
    return float(np.mean([values[t] for t in sorted(values)]))
  if groups is None:
    raise ValueError('within_dataset=True needs the dataset of each template (datasets=...)')
  by = collections.defaultdict(list)
  for t in sorted(values):
    if t not in groups:
      raise ValueError(f'no dataset given for template {t!r}')
    by[groups[t]].append(values[t])
  return float(np.mean([np.mean(v) for _, v in sorted(by.items())]))


def average_relative_gain(accuracies: Mapping[str, float], random_baselines: Mapping[str, float],
                          datasets: Optional[Mapping[str, str]] = None, within_dataset: bool = False
                          ) -> float:
  """Wu et al.'s ARG over templates (or the official script's within-dataset macro average)."""
  missing = set(accuracies) - set(random_baselines)
  if missing:
    raise ValueError(f'no random baseline for {sorted(missing)}')
  rgs = {t: relative_gain(a, random_baselines[t]) for t, a in accuracies.items()}
  return _mean_over(rgs, datasets, within_dataset)


def arg_vs_baseline(scores: Mapping[str, float], baseline_scores: Mapping[str, float]) -> float:
  """Qin et al.'s ARG: mean over target tasks of (score − baseline) / baseline (e.g. vs prompt tuning)."""
  missing = set(scores) ^ set(baseline_scores)
  if missing:
    raise ValueError(f'the run and its baseline cover different tasks: {sorted(missing)}')
  return float(np.mean([relative_gain(scores[k], baseline_scores[k]) for k in sorted(scores)]))


def arg_vs_baseline_over_seeds(details: Mapping[str, Mapping], baseline_details: Mapping[str, Mapping]
                               ) -> Optional[Dict[str, Any]]:
  """Qin et al. 2023 Table 2's "mean ± std": the ARG of each seed (data sampling) over the baseline's score
  on the same seed, then their mean and standard deviation (numpy's, ddof 0; the paper does not define its
  ±). `details` / `baseline_details`: task -> {'seeds': {seed: {'test': score}}} (``downstream.json``'s
  ``details``); seeds are matched by name. None when the two runs share no seed on every task."""
  common = None
  for task, d in details.items():
    seeds = {str(s) for s in d['seeds']} & {str(s) for s in baseline_details.get(task, {}).get('seeds', {})}
    common = seeds if common is None else common & seeds
  if not common:
    return None
  def test(d, seed):
    return float({str(k): v for k, v in d['seeds'].items()}[seed]['test'])
  per_seed = {seed: arg_vs_baseline({t: test(d, seed) for t, d in details.items()},
                                    {t: test(baseline_details[t], seed) for t in details})
              for seed in sorted(common, key=lambda s: (len(s), s))}
  values = np.asarray(list(per_seed.values()))
  return {'per_seed': per_seed, 'mean': float(values.mean()), 'std': float(values.std())}


def per_task_mean(values_by_seed: Sequence[Mapping[str, float]]) -> Dict[str, float]:
  """Averages per-task scores over seeds (Qin et al. report the mean of 5 seeds per task)."""
  tasks = set(values_by_seed[0])
  for v in values_by_seed[1:]:
    if set(v) != tasks:
      raise ValueError('seeds cover different tasks')
  return {t: float(np.mean([v[t] for v in values_by_seed])) for t in sorted(tasks)}


def paired_bootstrap(correct_a: Mapping[str, np.ndarray], correct_b: Mapping[str, np.ndarray],
                     random_baselines: Mapping[str, float], *, num_resamples: int = 1000, seed: int = 100,
                     datasets: Optional[Mapping[str, str]] = None, within_dataset: bool = False,
                     pairing: str = 'instances', count_ties: bool = True) -> Dict[str, float]:
  """Paired bootstrap of ARG_A − ARG_B over per-instance correctness, resampled within each template.

  Args:
    correct_a, correct_b: template -> bool/0-1 array [instances] (the same instances in the same order).
    random_baselines: template -> random accuracy.
    num_resamples: bootstrap iterations (1000 in the paper); seed: numpy seed of the draws.
    datasets, within_dataset: ARG averaging (see `average_relative_gain`).
    pairing: 'instances' (pair the real predictions) or 'sorted' (the official script: each model's
      correct instances first, rebuilt from its accuracy).
    count_ties: resamples with equal ARGs count against "A > B" (False: the official script).

  Returns:
    {'arg_a', 'arg_b', 'diff' (on the full data), 'p_value' (fraction of resamples with diff < 0:
    the p-value of "A > B"), 'num_resamples'}.
  """
  if set(correct_a) != set(correct_b):
    raise ValueError(f'the two runs cover different templates: {sorted(set(correct_a) ^ set(correct_b))}')
  if pairing not in ('instances', 'sorted'):
    raise ValueError(f"pairing must be 'instances' or 'sorted', got {pairing!r}")
  templates = sorted(correct_a)
  a = {t: np.asarray(correct_a[t], np.float64) for t in templates}
  b = {t: np.asarray(correct_b[t], np.float64) for t in templates}
  for t in templates:
    if a[t].shape != b[t].shape or a[t].ndim != 1 or not a[t].size:
      raise ValueError(f'template {t!r}: the runs have {a[t].shape} vs {b[t].shape} instances')
    if pairing == 'sorted':
      a[t], b[t] = np.sort(a[t])[::-1], np.sort(b[t])[::-1]

  def args(acc_a, acc_b):
    return (average_relative_gain(acc_a, random_baselines, datasets, within_dataset),
            average_relative_gain(acc_b, random_baselines, datasets, within_dataset))

  arg_a, arg_b = args({t: a[t].mean() for t in templates}, {t: b[t].mean() for t in templates})
  rng = np.random.default_rng(seed)
  # Per template, all resamples at once: indices [num_resamples, n_t].
  acc_a = {t: np.empty(num_resamples) for t in templates}
  acc_b = {t: np.empty(num_resamples) for t in templates}
  for t in templates:
    idx = rng.integers(0, a[t].size, size=(num_resamples, a[t].size))
    acc_a[t], acc_b[t] = a[t][idx].mean(-1), b[t][idx].mean(-1)
  diffs = np.empty(num_resamples)
  for r in range(num_resamples):
    ra, rb = args({t: acc_a[t][r] for t in templates}, {t: acc_b[t][r] for t in templates})
    diffs[r] = ra - rb
  return {'arg_a': arg_a, 'arg_b': arg_b, 'diff': arg_a - arg_b, 'p_value': float(np.mean(diffs <= 0 if count_ties else diffs < 0)),
          'num_resamples': int(num_resamples)}
