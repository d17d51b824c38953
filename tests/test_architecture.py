"""The import graph of promptjax runs one way (the README's architecture paragraph): a module imports only
from its own package or from packages below it in LAYERS, at module level or inside a function."""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'promptjax')

# Lowest first. The entry points (cli, demo, tour, train, the package's __init__) sit above everything.
LAYERS = ('errors', 'models', 'checkpoints', 'tasks', 'data', 'training', 'meta', 'supmer', 'evaluation',
          'interop')
ENTRY_POINTS = ('cli', 'demo', 'tour', 'train', 'ledger', '__init__', '__main__')


def _package(module: str) -> str:
  """'promptjax.training.trainer' -> 'training'; 'promptjax.errors' -> 'errors'."""
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else '__init__'


def _imports(path: str):
  tree = ast.parse(open(path, encoding='utf-8').read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == 'promptjax':
        yield from (f'promptjax.{a.name}' for a in node.names)
      elif node.module.startswith('promptjax.'):
        yield node.module
    elif isinstance(node, ast.Import):
      yield from (a.name for a in node.names if a.name.startswith('promptjax.'))


def _modules():
  for dirpath, _, files in os.walk(ROOT):
    for f in sorted(files):
      if f.endswith('.py'):
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, '.')
        yield rel, path


def test_every_package_is_placed_in_the_layering():
  packages = {_package(m) for m, _ in _modules()}
  assert packages <= set(LAYERS) | set(ENTRY_POINTS), packages - set(LAYERS) - set(ENTRY_POINTS)


def test_no_import_points_upward():
  upward = []
  for module, path in _modules():
    source = _package(module)
    if source in ENTRY_POINTS:
      continue
    for target_module in _imports(path):
      target = _package(target_module)
      assert target in LAYERS, f'{module} imports the entry point {target_module}'
      if LAYERS.index(target) > LAYERS.index(source):
        upward.append(f'{module} -> {target_module}')
  assert not upward, 'imports against the layering:\n' + '\n'.join(upward)


def test_the_checker_sees_an_upward_import(tmp_path):
  # The check itself: a synthetic module in `models` importing `training` is reported.
  bad = tmp_path / 'bad.py'
  bad.write_text('def f():\n  from promptjax.training import trainer\n  return trainer\n')
  targets = list(_imports(str(bad)))
  assert targets == ['promptjax.training']
  assert LAYERS.index(_package(targets[0])) > LAYERS.index('models')


@pytest.mark.parametrize('word', ['(issue ', 'this issue', 'papers/00'])
def test_the_package_speaks_of_papers_not_of_our_planning(word):
  hits = [f'{m}' for m, path in _modules() if word in open(path, encoding='utf-8').read()]
  for dirpath, _, files in os.walk(os.path.join(ROOT, 'configs')):
    hits += [os.path.join(dirpath, f) for f in files if word in open(os.path.join(dirpath, f), encoding='utf-8').read()]
  assert not hits, f'{word!r} in {hits}'


def test_gin_files_ship_inside_the_package():
  # An installed wheel finds runs/train.gin: the CLI searches the package's configs/, and setup.py's
  # package_data patterns cover every gin file there.
  import fnmatch
  import re
  from promptjax import cli
  assert os.path.commonpath([cli.GIN_DIR, ROOT]) == ROOT
  assert os.path.isfile(os.path.join(cli.GIN_DIR, 'runs', 'train.gin'))
  setup_py = open(os.path.join(os.path.dirname(ROOT), 'setup.py'), encoding='utf-8').read()
  patterns = re.search(r"'promptjax': \[([^\]]*)\]", setup_py).group(1)
  patterns = [p.strip().strip("'") for p in patterns.split(',') if p.strip()]
  for dirpath, _, files in os.walk(cli.GIN_DIR):
    for f in files:
      rel = os.path.relpath(os.path.join(dirpath, f), ROOT).replace(os.sep, '/')
      assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel
