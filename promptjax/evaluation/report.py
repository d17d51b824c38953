"""`promptjax compare`: a Table-1-style markdown table with bootstrap p-values, and per-dataset bar plots.

A *run* is a directory holding one evaluation result per setting — ``<run>/<setting>/metrics.json`` +
``predictions/*.jsonl`` as `promptjax eval` / `promptjax fewshot` / `make demo` write them (settings are
e.g. ``0shot`` and ``16shot``; a directory that itself holds ``metrics.json`` is a run with one setting
named after it). Runs are named by ``NAME=PATH`` or by the directory name.

For each setting the table gives every run's ARG (Wu et al. §4: relative gain over the random baseline,
averaged over templates; ``within_dataset=True`` averages within each dataset first as the official
script) and the paired-bootstrap p-value of "this run > the reference run" (the first run unless
``reference`` names another), over the templates both runs evaluated. The plots (PNG, one per setting,
like Wu et al. Figures 1–3) show each dataset's mean accuracy per run and the random baseline.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from promptjax.evaluation import metrics as metrics_lib
from promptjax.evaluation import rank_classification as rc


@dataclasses.dataclass
class Run:
  name: str
  path: str
  settings: Dict[str, Dict[str, Any]]   # setting -> read_results(...)


_KIND_ORDER = {'shallow': 0, 'deep': 1}


def _setting_order(name: str) -> Tuple[int, str, int, str]:
  """Table 1's column order: shallow before deep, then fewer shots first (``0shot_shallow``, ``16shot_shallow``...)."""
  shots, _, kind = name.partition('_')
  digits = ''.join(ch for ch in shots if ch.isdigit())
  return (_KIND_ORDER.get(kind, 2), kind, int(digits) if digits else -1, name)


def load_run(spec: str) -> Run:
  """``PATH`` or ``NAME=PATH`` -> the run's settings (subdirectories holding metrics.json)."""
  name, sep, path = spec.partition('=')
  if not sep:
    name, path = os.path.basename(os.path.normpath(spec)), spec
  if not os.path.isdir(path):
    raise rc.EvaluationError(f'run {spec!r}: {path!r} is not a directory.')
  settings = {}
  if os.path.exists(os.path.join(path, 'metrics.json')):
    settings[os.path.basename(os.path.normpath(path))] = rc.read_results(path)
  else:
    for sub in sorted(os.listdir(path)):
      if os.path.exists(os.path.join(path, sub, 'metrics.json')):
        settings[sub] = rc.read_results(os.path.join(path, sub))
  if not settings:
    raise rc.EvaluationError(f'run {spec!r}: no evaluation results under {path!r} (expected '
                             f'<setting>/metrics.json, e.g. 0shot/metrics.json).')
  return Run(name, path, settings)


def _task_values(result, key: str) -> Dict[str, float]:
  return {t: float(m[key]) for t, m in result['metrics']['tasks'].items()}


def _datasets(result) -> Dict[str, str]:
  from promptjax.evaluation.fewshot import dataset_of
  ds = result['metrics'].get('summary', {}).get('datasets', {})
  return {t: ds.get(t) or dataset_of(t) for t in result['metrics']['tasks']}


def pairwise(run_a: Run, run_b: Run, setting: str, *, within_dataset: bool = False,
             num_resamples: int = 1000, seed: int = 100) -> Optional[Dict[str, float]]:
  """Paired bootstrap of "run_a > run_b" in `setting`, over the templates both evaluated:
  `metrics.paired_bootstrap`'s dict plus 'num_templates'; None if they share none."""
  res, ref_res = run_a.settings[setting], run_b.settings[setting]
  common = sorted(set(res['correct']) & set(ref_res['correct']))
  if not common:
    return None
  base, ds = _task_values(res, 'random_baseline'), _datasets(res)
  bs = metrics_lib.paired_bootstrap(
      {t: res['correct'][t] for t in common}, {t: ref_res['correct'][t] for t in common},
      {t: base[t] for t in common}, num_resamples=num_resamples, seed=seed, datasets=ds,
      within_dataset=within_dataset)
  return dict(bs, num_templates=len(common))


def compare_runs(runs: Sequence[Run], reference: Optional[str] = None, *, within_dataset: bool = False,
                 num_resamples: int = 1000, seed: int = 100) -> Dict[str, Any]:
  """{'settings': [...], 'reference': name, 'rows': {run: {setting: {'arg', 'p_value', ...}}}}."""
  if not runs:
    raise rc.EvaluationError('compare needs at least one run.')
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    raise rc.EvaluationError(f'run names must differ: {names} (use NAME=PATH).')
  ref_name = reference or names[0]
  if ref_name not in names:
    raise rc.EvaluationError(f'reference {ref_name!r} is not one of the runs {names}.')
  ref = runs[names.index(ref_name)]
  settings = sorted({s for r in runs for s in r.settings}, key=_setting_order)
  rows: Dict[str, Dict[str, Any]] = {}
  for run in runs:
    rows[run.name] = {}
    for s in settings:
      res = run.settings.get(s)
      if res is None:
        continue
      acc, base, ds = _task_values(res, 'accuracy'), _task_values(res, 'random_baseline'), _datasets(res)
      cell = {'arg': metrics_lib.average_relative_gain(acc, base, ds, within_dataset),
              'num_templates': len(acc), 'mean_accuracy': float(np.mean(list(acc.values())))}
      if run is not ref and s in ref.settings:
        bs = pairwise(run, ref, s, within_dataset=within_dataset, num_resamples=num_resamples, seed=seed)
        if bs is not None:
          cell.update(p_value=bs['p_value'], bootstrap_templates=bs['num_templates'])
      rows[run.name][s] = cell
  return {'settings': settings, 'reference': ref_name, 'rows': rows, 'within_dataset': within_dataset,
          'num_resamples': num_resamples}


def _cell(name: str, ref: str, c: Optional[Mapping[str, Any]]) -> str:
  if not c:
    return '–'
  arg = f"{c['arg'] * 100:.1f}"
  if name == ref:
    return arg + ' (ref)'
  return arg + (f" (p={c['p_value']:.3f})" if 'p_value' in c else '')


def markdown_table(comparison: Mapping[str, Any]) -> str:
  """Runs × settings: ARG (%) and, in brackets, the p-value of "run > reference"."""
  settings, ref = comparison['settings'], comparison['reference']
  head = ['method'] + [s.replace('_', ' ') for s in settings]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for name, cells in comparison['rows'].items():
    lines.append('| ' + ' | '.join([name] + [_cell(name, ref, cells.get(s)) for s in settings]) + ' |')
  note = (f"ARG: relative gain over the random baseline, averaged over templates"
          f"{' within each dataset first' if comparison['within_dataset'] else ''} (Wu et al. 2022 §4), in %. "
          f"p: paired bootstrap ({comparison['num_resamples']} resamples within template) of "
          f"\"method > {ref}\"; small p = significantly better.")
  return '\n'.join(lines) + '\n\n' + note + '\n'


def per_dataset_accuracy(result) -> Tuple[Dict[str, float], Dict[str, float]]:
  """(dataset -> mean accuracy over its templates, dataset -> mean random baseline)."""
  acc, base, ds = _task_values(result, 'accuracy'), _task_values(result, 'random_baseline'), _datasets(result)
  by_acc, by_base = collections.defaultdict(list), collections.defaultdict(list)
  for t in acc:
    by_acc[ds[t]].append(acc[t])
    by_base[ds[t]].append(base[t])
  return ({d: float(np.mean(v)) for d, v in sorted(by_acc.items())},
          {d: float(np.mean(v)) for d, v in sorted(by_base.items())})


def plot_per_dataset(runs: Sequence[Run], setting: str, path: str) -> str:
  """Grouped bars: per-dataset accuracy of each run, and the random baseline (Wu et al. Figs. 1–3)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  present = [r for r in runs if setting in r.settings]
  per_run = {r.name: per_dataset_accuracy(r.settings[setting]) for r in present}
  datasets = sorted({d for acc, _ in per_run.values() for d in acc})
  baseline = {}
  for _, base in per_run.values():
    baseline.update(base)
  series = [(name, [per_run[name][0].get(d, np.nan) for d in datasets]) for name in per_run]
  series.append(('random', [baseline[d] for d in datasets]))
  width = 0.8 / len(series)
  x = np.arange(len(datasets))
  fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(datasets) * len(series) * 0.35 + 2), 4))
  for i, (name, vals) in enumerate(series):
    ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=name,
           color='0.75' if name == 'random' else None)
  ax.set_xticks(x)
  ax.set_xticklabels(datasets, rotation=20, ha='right')
  ax.set_ylabel('accuracy')
  ax.set_ylim(0, 1)
  ax.set_title(f'Per-dataset accuracy ({setting})')
  ax.legend(fontsize='small', ncol=2)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def write_report(runs: Sequence[Run], output_dir: str, **compare_kwargs) -> Dict[str, Any]:
  """Writes ``table.md``, ``comparison.json`` and ``per_dataset_<setting>.png``; returns the comparison."""
  import json
  comparison = compare_runs(runs, **compare_kwargs)
  os.makedirs(output_dir, exist_ok=True)
  table = markdown_table(comparison)
  with open(os.path.join(output_dir, 'table.md'), 'w') as f:
    f.write(table)
  with open(os.path.join(output_dir, 'comparison.json'), 'w') as f:
    json.dump(comparison, f, indent=1, sort_keys=True)
  plots = [plot_per_dataset(runs, s, os.path.join(output_dir, f'per_dataset_{s}.png'))
           for s in comparison['settings']]
  comparison = dict(comparison, table=table, plots=plots)
  return comparison
