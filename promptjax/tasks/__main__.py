"""Inspect the task registries: ``python -m promptjax.tasks list|show|count``.

  python -m promptjax.tasks list --pattern 'mini_*'
  python -m promptjax.tasks show mini_train --split validation -n 3
  python -m promptjax.tasks count d4_train --split train --p3_dir /data/P3/data --t5_vocab /v/spiece.model

Bad input (unknown task, missing data, malformed records) prints one line naming the fix and exits 2.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys


def _lengths(text: str):
  out = {}
  for part in text.split(','):
    key, _, value = part.partition('=')
    out[key.strip()] = int(value)
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m promptjax.tasks', description=__doc__.split('\n')[0])
  parser.add_argument('command', choices=('list', 'show', 'count'))
  parser.add_argument('name', nargs='?', help='task or mixture name (show, count)')
  parser.add_argument('--pattern', default='*', help='glob over names (list)')
  parser.add_argument('--split', default='train')
  parser.add_argument('-n', type=int, default=3, help='examples to show')
  parser.add_argument('--lengths', default='inputs=512,targets=128', help='task feature lengths')
  for family in ('p3', 'crossfit', 'text', 'mini'):
    parser.add_argument(f'--{family}_dir', default=None)
  parser.add_argument('--t5_vocab', default=None)
  parser.add_argument('--module', action='append', default=[],
                      help="more modules registering tasks (repeatable), e.g. --module=promptjax.supmer")
  args = parser.parse_args(argv)

  import seqio
  import importlib
  import promptjax.tasks as T
  from promptjax.tasks import utils
  for module in args.module:
    importlib.import_module(module)

  T.configure_data(p3_dir=args.p3_dir, crossfit_dir=args.crossfit_dir, text_dir=args.text_dir,
                   mini_dir=args.mini_dir, t5_vocab=args.t5_vocab)
  try:
    if args.command == 'list':
      for kind, names in (('mixture', seqio.MixtureRegistry.names()), ('task', seqio.TaskRegistry.names())):
        for name in sorted(names):
          if fnmatch.fnmatch(name, args.pattern):
            print(f'{kind}\t{name}')
      return 0
    if not args.name:
      parser.error(f'{args.command} needs a task or mixture name')
    provider = utils.get_task_or_mixture(args.name)
    ds = provider.get_dataset(_lengths(args.lengths), split=args.split, shuffle=False)
    if args.command == 'count':
      n = sum(1 for _ in utils.iterate(ds, args.name))
      print(f'{args.name}\t{args.split}\t{n}')
      return 0
    vocab = provider.output_features['targets'].vocabulary
    for i, ex in enumerate(utils.iterate(ds.take(args.n), args.name)):
      print(f'--- {args.name} [{args.split}] #{i}')
      for key in sorted(ex):
        value = ex[key]
        if key in ('inputs', 'targets'):
          print(f'{key}: {vocab.decode(value.tolist())!r}  ({len(value)} tokens)')
        else:
          print(f'{key}: {value!r}')
    return 0
  except T.DataError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
