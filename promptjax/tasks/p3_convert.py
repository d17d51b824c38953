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

``convert`` also reads the release layout itself and writes it again with ``--num_shards`` files per split:
the release has one file per split, and a run on several hosts reads each split's files shard by shard
(at least one file per process).

Commands::

  # the download patterns of the subsets a mixture needs (d4_train, green, d4_dev), one per line
  python -m promptjax.tasks.p3_convert patterns --mixture d4_train --mixture green --prefix data/
  # Parquet (or the release, resharded) -> release layout, for those mixtures (or --subset NAME...,
  # default: every subset found), 8 files per split for 8 hosts
  python -m promptjax.tasks.p3_convert convert --input_dir /data/P3-parquet --output_dir /data/P3/data \\
    --mixture d4_train --mixture green --mixture d4_dev --num_shards 8

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


def read_release_records(input_dir: str, subset: str, split: str) -> Iterator[Dict[str, object]]:
  """P3 records (field -> Python value) of one split in the release layout, in file order."""
  def python(v):
    if isinstance(v, bytes):
      return v.decode('utf-8')
    if getattr(v, 'ndim', 0):
      return [x.decode('utf-8') if isinstance(x, bytes) else x for x in v.tolist()]
    return v.item() if hasattr(v, 'item') else v

  source = p3.P3DataSource(subset, lambda: input_dir)
  for ex in source.get_dataset(split, shuffle=False).as_numpy_iterator():
    yield {k: python(v) for k, v in sorted(ex.items())}


def _empty_release_split(subset_dir: str, split: str) -> bool:
  """The release marks an empty split with ``info.<split>.json`` = {} and ``stats.<split>.json`` examples 0."""
  info = os.path.join(subset_dir, f'info.{split}.json')
  stats = os.path.join(subset_dir, f'stats.{split}.json')
  if os.path.exists(info) and not p3._read_json(info):
    return True
  return os.path.exists(stats) and p3._read_json(stats).get('examples') == 0


def _split_records(input_dir: str, subset: str, split: str) -> Optional[Iterator[Dict[str, object]]]:
  src = os.path.join(input_dir, subset)
  if glob.glob(os.path.join(src, f'{split}.tfrecord-*')):
    if _empty_release_split(src, split):
      return None
    return read_release_records(input_dir, subset, split)
  files = parquet_files(src, split)
  return read_parquet_records(files) if files else None


def convert_subset(input_dir: str, output_dir: str, subset: str, num_shards: int = 1) -> Dict[str, int]:
  """Writes one subset's splits in the release layout -> {split: number of records} (empty splits skipped)."""
  src = os.path.join(input_dir, subset)
  if os.path.abspath(src) == os.path.abspath(os.path.join(output_dir, subset)):
    raise DataError(f'--output_dir must differ from --input_dir ({input_dir}).')
  counts = {}
  for split in p3.SPLITS:
    records = _split_records(input_dir, subset, split)
    if records is None:
      continue
    try:
      counts[split] = p3.write_p3_split(os.path.join(output_dir, subset), split, records, num_shards=num_shards)
    except ValueError as e:
      if str(e).startswith('no records'):
        continue
      raise DataError(f'P3 subset {subset!r} split {split!r}: {e}') from e
  if not counts:
    raise DataError(f'P3 subset {subset!r}: no files {src}/<split>.tfrecord-*, <split>-*.parquet or '
                    f'<split>/*.parquet for any of {", ".join(p3.SPLITS)}.')
  return counts


def convert(input_dir: str, output_dir: str, subsets: Optional[Iterable[str]] = None, num_shards: int = 1,
            log=print) -> Dict[str, Dict[str, int]]:
  """Converts `subsets` (default: every directory of `input_dir`) -> {subset: {split: records}}."""
  if not os.path.isdir(input_dir):
    raise DataError(f'--input_dir {input_dir} is not a directory.')
  if subsets is None:
    subsets = sorted(d for d in os.listdir(input_dir)
                     if os.path.isdir(os.path.join(input_dir, d)) and not d.startswith('.'))
  subsets = list(subsets)
  missing = [s for s in subsets if not os.path.isdir(os.path.join(input_dir, s))]
  if missing:
    raise DataError(f'{len(missing)} subset(s) not in {input_dir}: {", ".join(missing[:10])}'
                    f'{" ..." if len(missing) > 10 else ""}; download them first (the `patterns` command lists '
                    'the patterns to download).')
  done = {}
  for i, subset in enumerate(subsets):
    done[subset] = convert_subset(input_dir, output_dir, subset, num_shards=num_shards)
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
  conv = sub.add_parser('convert', help='Parquet P3 (or the release) -> the release layout, --num_shards files per split')
  conv.add_argument('--input_dir', required=True, help='holds <subset>/ directories (Parquet or the release)')
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
    convert(args.input_dir, args.output_dir, subsets, num_shards=args.num_shards)
    return 0
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
