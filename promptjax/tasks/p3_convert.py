"""P3 from the Hugging Face Hub into the layout the P3 tasks read: ``python -m promptjax.tasks.p3_convert``.

The dataset repository ``bigscience/P3`` has held P3 in two forms:

- **the release** (T0's seqio cache; the repository up to revision ``255b4bb51b0e...``, before its
  conversion to Parquet in March 2024): ``data/<subset>/<split>.tfrecord-NNNNN-of-NNNNN``,
  ``info.<split>.json``, ``stats.<split>.json``. This *is* the layout `promptjax.tasks.p3` reads: download
  it and point ``PROMPTJAX_P3_DIR`` at its ``data/`` folder, no conversion needed;
- **Parquet** (the repository's main branch since then): ``<subset>/<split>-NNNNN-of-NNNNN.parquet`` with
  the same fields (``inputs``, ``inputs_pretokenized``, ``targets``, ``targets_pretokenized`` and, where the
  subset has them, ``answer_choices``, ``idx``, ``is_correct``, ``weight``); the Hub's automatic
  ``refs/convert/parquet`` branch has ``<subset>/<split>/NNNN.parquet``. ``convert`` writes either into the
  release layout (records streamed, one subset at a time), so the two sources give the same tasks.

Commands::

  # the download patterns of the subsets a mixture needs (d4_train, green, d4_dev), one per line
  python -m promptjax.tasks.p3_convert patterns --mixture d4_train --mixture green --prefix data/
  # Parquet -> release layout, for those mixtures (or --subset NAME..., default: every subset found)
  python -m promptjax.tasks.p3_convert convert --parquet_dir /data/P3-parquet --output_dir /data/P3/data \\
    --mixture d4_train --mixture green --mixture d4_dev

A problem (a missing subset, an unknown mixture, a field that is not P3's) prints one ``error:`` line and
exits with status 2.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

from promptjax.errors import DataError
from promptjax.tasks import facts
from promptjax.tasks import p3

RELEASE_REVISION = '255b4bb51b0eeceec18b06cb372b73f2b5910550'   # bigscience/P3's last revision with data/*.tfrecord


def mixture_subsets(mixtures: Sequence[str]) -> List[str]:
  """The P3 subsets (directory names) of the given mixtures, in order, without repeats."""
  known = facts.p3_mixtures()
  out: Dict[str, None] = {}
  for m in mixtures:
    if m not in known:
      raise DataError(f'unknown P3 mixture {m!r}; known: {", ".join(known)}.')
    out.update(dict.fromkeys(known[m]))
  return list(out)


def parquet_files(subset_dir: str, split: str) -> List[str]:
  """A subset's Parquet files of one split, in either Hub layout (main or refs/convert/parquet)."""
  return sorted(glob.glob(os.path.join(subset_dir, f'{split}-*.parquet'))
                + glob.glob(os.path.join(subset_dir, split, '*.parquet')))


def read_parquet_records(files: Sequence[str], batch_size: int = 1024) -> Iterator[Dict[str, object]]:
  """P3 records (field -> Python value) from Parquet files, streamed in record batches."""
  import pyarrow.parquet as pq
  for path in files:
    reader = pq.ParquetFile(path)
    unknown = sorted(set(reader.schema_arrow.names) - set(p3.P3_FEATURE_SPECS))
    if unknown:
      raise DataError(f'{path}: fields {unknown} are not P3 fields ({", ".join(p3.P3_FEATURE_SPECS)}); '
                      'is this a bigscience/P3 file?')
    for batch in reader.iter_batches(batch_size=batch_size):
      for row in batch.to_pylist():
        missing = sorted(k for k, v in row.items() if v is None)
        if missing:
          raise DataError(f'{path}: a record without {missing}; P3 records have every field of their subset.')
        yield row


def convert_subset(parquet_dir: str, output_dir: str, subset: str, num_shards: int = 1) -> Dict[str, int]:
  """Writes one subset's splits in the release layout -> {split: number of records} (empty splits skipped)."""
  src = os.path.join(parquet_dir, subset)
  counts = {}
  for split in p3.SPLITS:
    files = parquet_files(src, split)
    if not files:
      continue
    try:
      counts[split] = p3.write_p3_split(os.path.join(output_dir, subset), split, read_parquet_records(files),
                                        num_shards=num_shards)
    except ValueError as e:
      if str(e).startswith('no records'):
        continue
      raise DataError(f'P3 subset {subset!r} split {split!r}: {e}') from e
  if not counts:
    raise DataError(f'P3 subset {subset!r}: no Parquet files {src}/<split>-*.parquet or {src}/<split>/*.parquet '
                    f'for any of {", ".join(p3.SPLITS)}.')
  return counts


def convert(parquet_dir: str, output_dir: str, subsets: Optional[Iterable[str]] = None, num_shards: int = 1,
            log=print) -> Dict[str, Dict[str, int]]:
  """Converts `subsets` (default: every directory of `parquet_dir`) -> {subset: {split: records}}."""
  if not os.path.isdir(parquet_dir):
    raise DataError(f'--parquet_dir {parquet_dir} is not a directory.')
  if subsets is None:
    subsets = sorted(d for d in os.listdir(parquet_dir)
                     if os.path.isdir(os.path.join(parquet_dir, d)) and not d.startswith('.'))
  subsets = list(subsets)
  missing = [s for s in subsets if not os.path.isdir(os.path.join(parquet_dir, s))]
  if missing:
    raise DataError(f'{len(missing)} subset(s) not in {parquet_dir}: {", ".join(missing[:10])}'
                    f'{" ..." if len(missing) > 10 else ""}; download them first (the `patterns` command lists '
                    'the patterns to download).')
  done = {}
  for i, subset in enumerate(subsets):
    done[subset] = convert_subset(parquet_dir, output_dir, subset, num_shards=num_shards)
    log(f'[{i + 1}/{len(subsets)}] {subset}: '
        + ', '.join(f'{split} {n}' for split, n in done[subset].items()))
  return done


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m promptjax.tasks.p3_convert',
                                   description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  pat = sub.add_parser('patterns', help='download patterns (one per line) of the subsets of P3 mixtures')
  pat.add_argument('--mixture', action='append', required=True, help='d4_train, green or d4_dev (repeatable)')
  pat.add_argument('--prefix', default='data/',
                   help="'data/' for the release layout (default), '' for the Parquet layout")
  conv = sub.add_parser('convert', help='Parquet P3 -> the release layout the P3 tasks read')
  conv.add_argument('--parquet_dir', required=True, help='holds <subset>/ directories of Parquet files')
  conv.add_argument('--output_dir', required=True, help='becomes PROMPTJAX_P3_DIR')
  conv.add_argument('--mixture', action='append', default=[], help='convert the subsets of a mixture (repeatable)')
  conv.add_argument('--subset', action='append', default=[], help='convert one subset (repeatable)')
  conv.add_argument('--num_shards', type=int, default=1, help='TFRecord shards per split (>= the hosts reading it)')
  args = parser.parse_args(argv)
  try:
    if args.command == 'patterns':
      for subset in mixture_subsets(args.mixture):
        print(f'{args.prefix}{subset}/*')
      return 0
    subsets = None
    if args.mixture or args.subset:
      subsets = list(dict.fromkeys(mixture_subsets(args.mixture) + args.subset))
    convert(args.parquet_dir, args.output_dir, subsets, num_shards=args.num_shards)
    return 0
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
