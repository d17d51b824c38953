"""Facts the registries embed (names, mixtures, evaluation metadata), read from JSON files in this package.

`p3_tasks.json` was generated from the project's reference list ``shared/data/p3_mixtures.json``
(better-promptability's ``t0_task_info.jsonnet`` / ``t0_mixtures.jsonnet``, cross-checked with T0);
a test checks that it still equals that list.
"""

from __future__ import annotations

import collections
import functools
import json
import os
from typing import Dict, List, Tuple

_HERE = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=None)
def _p3() -> dict:
  with open(os.path.join(_HERE, 'p3_tasks.json')) as f:
    return json.load(f)


def p3_mixtures() -> Dict[str, List[str]]:
  """``d4_train`` (313), ``green`` (116) and ``d4_dev`` (42) task names."""
  return {k: list(v) for k, v in _p3()['mixtures'].items()}


def p3_task_info() -> Dict[str, Tuple[str, str, str]]:
  """task name -> (dataset_name, subset_name or None, template_name), as in ``t0_task_info``."""
  return {k: tuple(v) for k, v in _p3()['tasks'].items()}


def p3_templates_per_dataset(mixture: str) -> Dict[str, int]:
  """task name -> number of templates its (dataset, subset) has in `mixture` (T0's cap rule)."""
  info = p3_task_info()
  names = p3_mixtures()[mixture]
  counts = collections.Counter(info[t][:2] for t in names)
  return {t: counts[info[t][:2]] for t in names}


def green_eval_datasets() -> List[dict]:
  """The 11 held-out evaluation sets: random baseline, #choices, template count, bootstrap group."""
  return [dict(d) for d in _p3()['green_eval_datasets']]
