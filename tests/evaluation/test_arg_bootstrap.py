"""ARG and the paired bootstrap against values worked out by hand (written out below)."""

import numpy as np
import pytest

from promptjax.evaluation import metrics

ACC = {'a': 0.5, 'b': 0.6, 'c': 0.4}
BASE = {'a': 1 / 3, 'b': 0.5, 'c': 0.5}
DATASETS = {'a': 'D1', 'b': 'D2', 'c': 'D2'}


def test_arg_over_templates_and_within_datasets():
  # RG_a = (0.5 - 1/3) / (1/3) = 0.5;  RG_b = (0.6 - 0.5) / 0.5 = 0.2;  RG_c = (0.4 - 0.5) / 0.5 = -0.2
  # Wu et al.: mean over templates = (0.5 + 0.2 - 0.2) / 3 = 1/6
  assert metrics.average_relative_gain(ACC, BASE) == pytest.approx(1 / 6)
  # Official script: D1 = 0.5, D2 = (0.2 - 0.2) / 2 = 0  ->  (0.5 + 0) / 2 = 0.25
  assert metrics.average_relative_gain(ACC, BASE, DATASETS, within_dataset=True) == pytest.approx(0.25)
  # Random performance is 0 ARG.
  assert metrics.average_relative_gain(BASE, BASE) == 0.0
  with pytest.raises(ValueError, match='dataset'):
    metrics.average_relative_gain(ACC, BASE, within_dataset=True)
  with pytest.raises(ValueError, match='random baseline'):
    metrics.average_relative_gain({'z': 0.5}, BASE)


def test_arg_against_a_baseline_run():
  # Qin et al.: x: (0.6 - 0.5) / 0.5 = 0.2;  y: (0.3 - 0.4) / 0.4 = -0.25  ->  (0.2 - 0.25) / 2 = -0.025
  assert metrics.arg_vs_baseline({'x': 0.6, 'y': 0.3}, {'x': 0.5, 'y': 0.4}) == pytest.approx(-0.025)
  # Per-task means over seeds first: x = (0.5 + 0.7) / 2 = 0.6.
  assert metrics.per_task_mean([{'x': 0.5}, {'x': 0.7}]) == {'x': pytest.approx(0.6)}
  with pytest.raises(ValueError, match='different tasks'):
    metrics.arg_vs_baseline({'x': 0.6}, {'y': 0.5})


def test_arg_mean_and_std_over_seeds():
  # Qin et al. Table 2's mean ± std. Seed 13: x (0.6-0.5)/0.5 = 0.2, y (0.3-0.4)/0.4 = -0.25 -> -0.025;
  # seed 42: x (0.5-0.5)/0.5 = 0, y (0.5-0.4)/0.4 = 0.25 -> 0.125; mean 0.05, std (ddof 0) 0.075.
  run = {'x': {'seeds': {13: {'test': 0.6}, 42: {'test': 0.5}}}, 'y': {'seeds': {13: {'test': 0.3}, 42: {'test': 0.5}}}}
  base = {'x': {'seeds': {'13': {'test': 0.5}, '42': {'test': 0.5}, '87': {'test': 0.1}}},
          'y': {'seeds': {'13': {'test': 0.4}, '42': {'test': 0.4}}}}
  got = metrics.arg_vs_baseline_over_seeds(run, base)
  assert got['per_seed'] == {'13': pytest.approx(-0.025), '42': pytest.approx(0.125)}
  assert (got['mean'], got['std']) == (pytest.approx(0.05), pytest.approx(0.075))
  assert metrics.arg_vs_baseline_over_seeds(run, {'x': {'seeds': {'100': {'test': 0.5}}}, 'y': {'seeds': {}}}) is None


def _se(p, n=1000):
  return 4 * np.sqrt(p * (1 - p) / n) + 1e-9


def test_bootstrap_two_instance_closed_form():
  # One template, two instances: A gets instance 0 right, B instance 1. A resample of 2 draws gives
  # A > B only when both draws are instance 0 (prob 1/4); ties (one of each, prob 1/2) count against
  # "A > B"; so p = 3/4. Without ties (the official script), p = P(both draws instance 1) = 1/4.
  a, b, base = {'t': [1, 0]}, {'t': [0, 1]}, {'t': 0.5}
  p = metrics.paired_bootstrap(a, b, base)['p_value']
  assert abs(p - 0.75) < _se(0.75)
  p_official = metrics.paired_bootstrap(a, b, base, count_ties=False)['p_value']
  assert abs(p_official - 0.25) < _se(0.25)


def test_bootstrap_resamples_within_each_template():
  # t1: one instance, A right, B wrong: RG_A1 = (1 - .5)/.5 = 1, RG_B1 = -1 in every resample.
  # t2: two instances, A = [1, 0], B = [0, 1]; k = draws of instance 0 among 2: RG_A2 = k - 1, RG_B2 = 1 - k.
  # ARG_A - ARG_B = (2 + 2(k - 1)) / 2 = k  ->  diff <= 0 iff k = 0: p = 1/4.
  a = {'t1': [1], 't2': [1, 0]}
  b = {'t1': [0], 't2': [0, 1]}
  base = {'t1': 0.5, 't2': 0.5}
  out = metrics.paired_bootstrap(a, b, base, num_resamples=1000, seed=7)
  assert out['arg_a'] == pytest.approx((1 + 0) / 2) and out['arg_b'] == pytest.approx((-1 + 0) / 2)
  assert abs(out['p_value'] - 0.25) < _se(0.25)
  # The official script's sorted pairing makes t2 identical for both models: diff = 1 always, p = 0.
  assert metrics.paired_bootstrap(a, b, base, pairing='sorted')['p_value'] == 0.0
  # Seeded: the same seed gives the same p-value.
  assert metrics.paired_bootstrap(a, b, base, seed=7)['p_value'] == out['p_value']


def test_bootstrap_degenerate_cases():
  base = {'t': 0.5}
  better = metrics.paired_bootstrap({'t': [1, 1, 1]}, {'t': [0, 0, 0]}, base)
  assert better['p_value'] == 0.0 and better['diff'] == pytest.approx(2.0)
  same = metrics.paired_bootstrap({'t': [1, 0, 1]}, {'t': [1, 0, 1]}, base)
  assert same['p_value'] == 1.0
  assert metrics.paired_bootstrap({'t': [1, 0, 1]}, {'t': [1, 0, 1]}, base, count_ties=False)['p_value'] == 0.0
  with pytest.raises(ValueError, match='different templates'):
    metrics.paired_bootstrap({'t': [1]}, {'u': [1]}, base)
  with pytest.raises(ValueError, match='instances'):
    metrics.paired_bootstrap({'t': [1, 0]}, {'t': [1]}, base)


def test_bootstrap_within_dataset_option():
  # Datasets D1 = {t1}, D2 = {t2, t3}; t3 is tied for both models (RG 0 each).
  # RG diffs: t1 = 2, t2 = 2(k - 1), t3 = 0. Within datasets: D1 = 2, D2 = (2(k - 1) + 0) / 2 = k - 1,
  # ARG_A - ARG_B = (2 + k - 1) / 2 = (k + 1) / 2 > 0 for k in {0, 1, 2}  ->  p = 0.
  # Over templates it is (2 + 2(k - 1) + 0) / 3 = 2k/3  ->  p = P(k = 0) = 1/4.
  a = {'t1': [1], 't2': [1, 0], 't3': [1, 0]}
  b = {'t1': [0], 't2': [0, 1], 't3': [1, 0]}
  base = {t: 0.5 for t in a}
  ds = {'t1': 'D1', 't2': 'D2', 't3': 'D2'}
  assert metrics.paired_bootstrap(a, b, base, datasets=ds, within_dataset=True)['p_value'] == 0.0
  assert abs(metrics.paired_bootstrap(a, b, base)['p_value'] - 0.25) < _se(0.25)
