"""Helpers shared by the benchmark scripts: the repository on sys.path, machine facts, the JSON record."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any, Dict, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)


def machine_info(**extra: Any) -> Dict[str, Any]:
  """CPU count, processor, jax version / backend / devices and XLA_FLAGS (plus `extra`)."""
  import jax
  info = dict(cpus=os.cpu_count(), processor=platform.processor(), jax=jax.__version__,
              backend=jax.default_backend(), devices=str(jax.devices()),
              xla_flags=os.environ.get('XLA_FLAGS', ''))
  info.update(extra)
  return info


def write_record(out: Dict[str, Any], path: Optional[str]) -> Dict[str, Any]:
  """Adds the time to `out` and writes it as JSON to `path` (if given); returns `out`."""
  out.setdefault('time', time.strftime('%Y-%m-%d %H:%M:%S'))
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as fh:
      json.dump(out, fh, indent=2)
    print(f'wrote {path}')
  return out
