"""The reproduction ledger: every paper table row promptjax claims, its gin file, its commands, the number
the paper reports, and every setting the paper states next to what the file sets.

``promptjax/configs/paper/ledger.json`` is the machine-readable source; ``configs/paper/LEDGER.md`` is
rendered from it (``python -m promptjax.ledger`` rewrites it). Each row lists settings as gin keys (a
macro ``%NAME`` or a binding ``[scope/]module.Configurable.parameter``) with the value the paper states
(``"kind": "paper"``, with the section that states it) or the value promptjax chose where the paper is
silent (``"kind": "choice"``, with the reason: the official code, a convention). `check_row` resolves
the row file with gin exactly as the command line does and returns every setting whose resolved value
differs, so a row file that drifts from its paper fails ``tests/test_ledger.py``.
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import gin

LEDGER_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'paper', 'ledger.json')
LEDGER_MD = os.path.join(os.path.dirname(LEDGER_JSON), 'LEDGER.md')

_UNSET = object()


def load(path: str = LEDGER_JSON) -> Dict[str, Any]:
  with open(path) as f:
    return json.load(f)


def _default(key: str) -> Any:
  """The Python default of an unbound gin parameter (``scope/module.Name.param``)."""
  selector, _, param = key.rpartition('.')
  scope, _, name = selector.rpartition('/')
  target = getattr(gin.get_configurable(name), '__wrapped__', gin.get_configurable(name))
  if name.endswith('optimizers.create_optimizer') and param not in inspect.signature(target).parameters:
    # create_optimizer(name, ..., **kwargs) passes the rest to the named optimizer's factory.
    from promptjax.training import optimizers
    optimizer = resolve(f"{scope + '/' if scope else ''}{name}.name")
    if optimizer not in optimizers.OPTIMIZERS:
      return _UNSET
    target = optimizers.OPTIMIZERS[optimizer]
  candidates = target.__mro__[:2] if isinstance(target, type) else (target,)  # gin subclasses a class
  p = None
  for candidate in candidates:
    try:
      p = inspect.signature(candidate).parameters.get(param)
    except (TypeError, ValueError):
      continue
    if p is not None:
      break
  if p is None or p.default is inspect.Parameter.empty:
    return _UNSET
  return p.default


def resolve(key: str) -> Any:
  """The value gin gives `key` in the parsed configuration: macros followed, references as their text
  (``'@promptjax.data.epoch_steps()'``), an unbound parameter as its Python default."""
  try:
    value = gin.query_parameter(key)
  except ValueError:
    if key.startswith('%'):
      return _UNSET
    return _default(key)
  seen = set()
  while isinstance(value, gin.config.ConfigurableReference):
    text = repr(value)
    if not text.startswith('%') or text in seen:
      return text
    seen.add(text)
    value = gin.query_parameter(text)
  return value


def _normal(value: Any) -> Any:
  """JSON's view of a gin value: tuples as lists, dict keys as strings."""
  if isinstance(value, (list, tuple)):
    return [_normal(v) for v in value]
  if isinstance(value, Mapping):
    return {str(k): _normal(v) for k, v in value.items()}
  return value


def parse_row(row: Mapping[str, Any], extra_bindings: Sequence[str] = ()) -> None:
  """Parses the row's gin files (the command's run file first when the row file does not include it,
  as `promptjax <command>` does) into a cleared gin configuration."""
  from promptjax import cli
  cli.register_gin_configurables()
  gin.clear_config()
  cli.parse_command_gin(row['command'], row['files'], extra_bindings)


def differences(row: Mapping[str, Any], extra_bindings: Sequence[str] = ()) -> List[Tuple[Mapping[str, Any], Any]]:
  """(setting, resolved value) for every setting of `row` whose resolved gin value differs from the
  ledger's (the value `_UNSET` where the configuration does not set it)."""
  parse_row(row, extra_bindings)
  try:
    out = []
    for s in row['settings']:
      got = resolve(s['key'])
      if got is _UNSET or (_normal(got) != s['value'] and not _close(got, s['value'])):
        out.append((s, got))
    return out
  finally:
    gin.clear_config()


def check_row(row: Mapping[str, Any], extra_bindings: Sequence[str] = ()) -> List[str]:
  """Every setting of `row` whose resolved gin value differs from the ledger's, one line each."""
  return [f"{row['files'][0]}: {s['key']} is not set (the ledger says {s['value']!r})" if got is _UNSET
          else f"{row['files'][0]}: {s['key']} = {got!r}, the ledger says {s['value']!r} ({s['source']})"
          for s, got in differences(row, extra_bindings)]


def command_words(line: str) -> Optional[Tuple[Dict[str, str], List[str]]]:
  """(the variables set in front of it, the arguments after ``promptjax``) of a ledger command line, or
  None for a line that is not a ``promptjax`` command (a note in parentheses, a ``python -m`` data build)."""
  if line.startswith('('):
    return None
  words = shlex.split(line, comments=True)
  if 'promptjax' not in words:
    return None
  at = words.index('promptjax')
  return dict(w.split('=', 1) for w in words[:at]), words[at + 1:]


def _close(got: Any, want: Any) -> bool:
  if isinstance(got, (int, float)) and isinstance(want, (int, float)) and not isinstance(got, bool):
    return abs(got - want) <= 1e-12 * max(1.0, abs(want))
  return False


def _value_text(value: Any) -> str:
  return '`' + json.dumps(value, ensure_ascii=False).replace('|', '\\|') + '`'


def render_markdown(ledger: Optional[Mapping[str, Any]] = None) -> str:
  """LEDGER.md: per paper, per row: the file(s), the commands, the reported numbers, then every setting
  (paper-stated with its section, or promptjax's choice with the reason)."""
  ledger = ledger or load()
  out = ['# Reproduction ledger', '',
         '<!-- Rendered from ledger.json by `python -m promptjax.ledger`; tests/test_ledger.py checks every '
         'setting below against the gin files and this file against ledger.json. -->', '',
         ledger['intro'], '']
  for paper_id, paper in ledger['papers'].items():
    out += [f"## {paper['cite']}: {paper['title']}", '']
    out += [paper['notes'], ''] if paper.get('notes') else []
    for row in (r for r in ledger['rows'] if r['paper'] == paper_id):
      out += [f"### {row['table']}: {row['row']}", '']
      out.append('- files: ' + ', '.join(f'`{f}`' for f in row['files']))
      for cmd in row['commands']:
        out.append(f'- `{cmd}`')
      if row.get('reported'):
        out.append('- reported: ' + '; '.join(f'{k} **{v}**' for k, v in row['reported'].items()))
      if row.get('note'):
        out.append(f"- note: {row['note']}")
      out += ['', '| setting | value | stated by the paper / our choice |', '|---|---|---|']
      for s in row['settings']:
        why = s['source'] if s['kind'] == 'paper' else f"*our choice:* {s['source']}"
        out.append(f"| `{s['key']}` | {_value_text(s['value'])} | {why.replace('|', '/')} |")
      out.append('')
  return '\n'.join(out).rstrip() + '\n'


def main() -> None:
  with open(LEDGER_MD, 'w') as f:
    f.write(render_markdown())
  print(f'wrote {LEDGER_MD}')


if __name__ == '__main__':
  main()
