"""The bundled mini benchmark (``promptjax/tasks/data``, see its README) as seqio Tasks and Mixtures.

The same readers as the real sources, over the bundled files and vocabulary (``mini``):

- P3 format: every subset as a task of the same name (``mini_sentiment_good_or_bad``, …; held-out ones end
  in ``_score_eval``), ``<subset>_rank_classification`` views for every subset with answer choices, and
  mixtures ``mini_train`` (training families, rate = min(#examples, 500k) as ``d4_train``),
  ``mini_heldout`` (held-out templates' training views, for few-shot tuning),
  ``mini_heldout_rank_classification`` (their evaluation view, like ``green``) and
  ``mini_train_rank_classification``.
- CrossFit format: ``crossfit_<task>_<seed>`` (e.g. ``crossfit_mini_sentiment_13``) and, per partition of
  the manifest, ``crossfit_<partition>_{source,target}_<seed>`` mixtures.
- Text: ``mini_text_nsp_yes_maybe_no`` and ``mini_text_mc_next_segment`` over the bundled corpus.

The names come from the bundled ``manifest.json``; the files are read from ``get_data_dir('mini')``
(``PROMPTJAX_MINI_DIR`` overrides it, e.g. with a regenerated copy).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Dict, List

import seqio

from promptjax.tasks import config as cfg
from promptjax.tasks import crossfit, p3, self_supervised

MANIFEST = os.path.join(cfg.BUNDLED_DIR, 'manifest.json')


@functools.lru_cache(maxsize=None)
def manifest() -> dict:
  with open(MANIFEST) as f:
    return json.load(f)


def _subdir(name: str):
  return lambda: os.path.join(cfg.get_data_dir('mini'), name)


def p3_subsets(role: str) -> List[str]:
  """'train' or 'heldout' subset names."""
  return list(manifest()['p3'][f'{role}_subsets'])


def _register() -> Dict[str, List[str]]:
  m = manifest()
  subsets = m['p3']['subsets']
  train, heldout = p3_subsets('train'), p3_subsets('heldout')
  with_choices = [s for s in train + heldout if not subsets[s].get('generative')]
  p3.register_p3_tasks(train + heldout, dir_fn=_subdir(m['p3']['dir']), family='mini', vocab_name='mini',
                       rank_classification=with_choices)
  seqio.MixtureRegistry.add('mini_train', [(t, p3.capped_rate) for t in train])
  seqio.MixtureRegistry.add('mini_heldout', [(t, 1.0) for t in heldout])
  seqio.MixtureRegistry.add('mini_heldout' + p3.RANK_SUFFIX, [(t + p3.RANK_SUFFIX, 1.0) for t in heldout])
  seqio.MixtureRegistry.add('mini_train' + p3.RANK_SUFFIX,
                            [(t + p3.RANK_SUFFIX, 1.0) for t in train if t in with_choices])

  tasks = {name: {k: info[k] for k in ('metric', 'type', 'k')} for name, info in m['crossfit']['tasks'].items()}
  crossfit.register_crossfit_tasks(tasks, data_dir_fn=_subdir(m['crossfit']['dir']), vocab_name='mini',
                                   family='mini', seeds=tuple(m['crossfit']['seeds']))
  for part, spec in m['crossfit']['partitions'].items():
    for role in ('source', 'target'):
      for seed in m['crossfit']['seeds']:
        crossfit.register_crossfit_mixture(f'crossfit_{part}_{role}_{seed}', spec[role], seed)

  self_supervised.register_text_tasks('mini_text', _subdir(m['text']['dir']), 'mini', family='mini')
  self_supervised.register_prefix_lm_task('mini_text_prefix_lm', _subdir(m['text']['dir']), 'mini', family='mini')
  return {'p3_train': train, 'p3_heldout': heldout}


_register()
