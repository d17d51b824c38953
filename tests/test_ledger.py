"""The reproduction ledger (promptjax/configs/paper/ledger.json, rendered as LEDGER.md) against the row files:
every setting a paper states (and every choice we made where it is silent) is what the row file resolves to
through gin, exactly as the command line parses it; a changed setting fails; every row file is in the ledger."""

import os

import pytest

from promptjax import ledger

PAPER_DIR = os.path.dirname(ledger.LEDGER_JSON)
LEDGER = ledger.load()


def test_every_row_file_is_in_the_ledger():
  files = {f for row in LEDGER['rows'] for f in row['files'] if f.startswith('paper/')}
  on_disk = {f'paper/{f}' for f in os.listdir(PAPER_DIR) if f.endswith('.gin')}
  assert on_disk <= files, sorted(on_disk - files)
  assert files <= on_disk, sorted(files - on_disk)
  for row in LEDGER['rows']:
    assert row['settings'] and all(s['kind'] in ('paper', 'choice') and s['source'] for s in row['settings']), row['row']


def test_every_row_resolves_to_the_ledger_values():
  problems = [p for row in LEDGER['rows'] for p in ledger.check_row(row)]
  assert not problems, '\n'.join(problems)


def test_changing_any_setting_of_any_row_fails():
  """Each setting of every row, bound to another value after the row file (as an edit of the file would),
  is reported."""
  for row, s in ((row, s) for row in LEDGER['rows'] for s in row['settings']):
    value = s['value']
    other = ({'inputs': 1, 'targets': 1} if isinstance(value, dict) else (not value) if isinstance(value, bool)
             else value * 2 + 1 if isinstance(value, (int, float)) else [] if isinstance(value, list)
             else 'changed')
    key = s['key'][1:] if s['key'].startswith('%') else s['key']
    rhs = repr(other) if not isinstance(other, str) or not other.startswith('@') else other
    problems = ledger.check_row(row, [f'{key} = {rhs}'])
    assert any(s['key'] in p for p in problems), (row['files'], s['key'], problems)


def test_command_variables_are_ones_promptjax_reads():
  """A variable set in front of a ledger command is a data family's directory or a vocabulary's path (the
  configuration names them; whether it is the family the command reads is checked by running the commands:
  tests/test_paper_rows.py)."""
  from promptjax.tasks import config
  known = set(config.ENV_VARS.values()) | set(config.VOCAB_ENV_VARS.values())
  seen = 0
  for row in LEDGER['rows']:
    for env, _ in filter(None, map(ledger.command_words, row['commands'])):
      for var, value in env.items():
        seen += 1
        assert var in known, (row['files'][0], f'{var}={value}', sorted(known))
  assert seen   # Pan et al.'s commands set their data directories


def test_markdown_is_rendered_from_the_json():
  with open(ledger.LEDGER_MD) as f:
    assert f.read() == ledger.render_markdown(), 'LEDGER.md is stale: run python -m promptjax.ledger'
