"""Self-supervised sentence-pair and multiple-choice tasks built from unlabeled documents (PPT, SUPMER).

SUPMER (Pan et al. 2023, §3.2 and Appendix A.2; baselines in Appendix B / C.2) meta-trains a soft
prompt on *anchor* tasks built from unlabeled OpenWebText; two of its formats are the document-structure
formats of PPT (Gu et al., 2022, "PPT: Pre-trained Prompt Tuning": 3-class next sentence prediction and
next sentence selection; released code thu-coai/PPT ``tools/preprocess_pretrain_data_{nsp,nss}.py``),
which are also what the PPT / Unified-PPT baselines of SUPMER pre-train on. This module
builds those two formats as seqio Tasks (streamed from the corpus, for PPT-style multi-task training); SUPMER's
clustering-based formats and its meta-tasks are built offline by the Beam pipeline
`promptjax.supmer.construct` (which reuses this module's corpus, splitting, labels and samplers) and
read by `promptjax.supmer.tasks`.

Corpus (`DocumentCorpus`)
-------------------------
A directory (local or ``gs://``; every read goes through ``tf.io.gfile``), searched recursively for

* ``*.txt``: one document per file (the layout of the extracted OpenWebText release), document id = the
  path relative to the root;
* ``*.jsonl``: one document per line, a JSON object with a string ``"text"`` field (other fields are
  ignored; blank lines are skipped), document id = ``<relative path>:<line number>``.

A document is split into paragraphs on newlines (``str.splitlines``; blank lines dropped) and each
paragraph into sentences by `split_sentences`: a boundary is whitespace that follows ``.``, ``!`` or
``?`` (optionally followed by one closing quote / bracket) and precedes an uppercase letter (optionally
after an opening quote / bracket). No NLTK; abbreviations such as "Mr. Smith" are split (a known and
accepted error of the rule). Whitespace inside a sentence is collapsed to single spaces. Sentences never
span paragraphs, and the document's *segments* are its sentences in reading order, so the last sentence
of a paragraph is adjacent to the first of the next. ``segment_unit='paragraph'`` uses whole paragraphs
(non-empty lines) as segments instead, which is what PPT's released preprocessing does
(``tools/preprocess_openwebtext.py`` joins the lines of a document, and the task builders treat each
line as a "sentence"). Segments longer than ``max_segment_words`` (default 64 words, close to PPT's cap
of 86 T5 tokens per option) keep their first ``max_segment_words`` words so that a four-option prompt
fits the usual input lengths. Short segments are kept (dropping one would make its neighbours look
adjacent).

Splits. If the root has a ``train/`` sub-directory, the layout is ``train/`` + ``validation/`` (each
searched recursively). Otherwise documents are split by a stable hash of their document id:
``md5(doc_id)`` read as a fraction of 2**128 below ``validation_fraction`` (default 0.05, the 5%
validation split of SUPMER Appendix C.2) goes to ``validation``, the rest to ``train``. A document is in
exactly one split, and every example is built from documents of its own split only (positives and
negatives alike), so train and validation never share a document.

Formats and templates
---------------------
``⟨X⟩`` of the papers' templates is written as T5's first sentinel ``<extra_id_0>``, as PPT's T5 code
does (``tools/preprocess_pretrain_data_nsp.py`` puts sentinel 0 at the mask).

``nsp_yes_maybe_no`` (sentence-pair classification; SUPMER Eq. 17, after PPT's 3-class next sentence
prediction). For an anchor segment ``s1 = seg[i]`` of document d:

* ``yes``: ``s2 = seg[i+1]`` (the segment that directly follows ``s1``; PPT's code also accepts
  ``seg[i-1]``, the papers say "next", we keep the direction);
* ``maybe``: ``s2 = seg[j]`` of the same document with ``|j - i| >= 2`` (not adjacent);
* ``no``: ``s2`` is a segment of a different document (of the same split).

  inputs:  ``"{s1} <extra_id_0>. {s2}"``      targets: ``yes`` | ``no`` | ``maybe``
  answer_choices: ``["yes", "no", "maybe"]`` (SUPMER's V = {0→yes, 1→no, 2→maybe})

``mc_next_segment`` (multiple-choice classification; SUPMER Eq. 18, after PPT's next sentence
selection). The query is ``s0 = seg[i]``; of ``num_options`` (default 4, "we will set four candidates",
SUPMER App. A.2; PPT uses 6) candidates exactly one is ``seg[i+1]``. The distractors are, as in PPT's
``preprocess_pretrain_data_nss.py``, one non-adjacent segment of the same document (``|j - i| >= 2``)
and ``num_options - 2`` segments from other documents (distinct documents where the buffer allows).

  inputs:  ``"{s0 without final . ! ?}? A. {o1} B. {o2} C. {o3} D. {o4} Answer: <extra_id_0>"``
  targets: ``A`` | ``B`` | ``C`` | ``D``      answer_choices: ``["A", "B", "C", "D"]``

  (each option ends with ``.`` if it does not already end in sentence punctuation, which gives the
  paper's ``D.s4.Answer:``; the query gets the paper's ``?`` in place of its final punctuation.)

Every verbalizer word (``yes``, ``no``, ``maybe``, ``A``..``D``) is a single piece of the T5 vocabulary
(``▁yes``=4273, ``▁no``=150, ``▁maybe``=2087, ``▁A``=71, ...), so rank classification and the
``class_labels`` prompt initialization see one token per class. ``target_style='sentinel'`` writes
targets in PPT's span-corruption form ``"<extra_id_0> yes <extra_id_1>"`` (for T5 v1.1 checkpoints that
were never LM-adapted), ``'mask'`` the word at the input's sentinel, ``"<extra_id_0> yes"`` (SUPMER's
form, Pan et al. 2023 Eq. 1 and 17-19); the default ``'plain'`` writes the bare word, like P3's targets.

Sampling rules. An anchor is a segment ``i`` with a next segment (``i + 1 < n``) and at least one
non-adjacent segment (``i >= 2`` or ``i + 2 < n``), so every label is possible for every anchor; a
document contributes one example per anchor (PPT: one per sentence). Labels (and the gold option's
position) follow a balanced cycle: consecutive blocks of a random permutation of the classes, so after any
number of examples the class counts differ by at most one (PPT draws each label with probability 1/3).
A negative whose text equals the anchor or the true next segment is redrawn; an anchor for which no valid
negative exists is skipped and its label is kept for the next anchor.

Streaming. Files are read one at a time (in sorted order; in a seeded random order when ``shuffle``),
documents are grouped into chunks of ``buffer_documents`` (default 512); the negatives for a chunk's
documents come from that chunk and the previous one, so memory is bounded by two chunks, and a corpus of
any size is processed in one pass. Sharding (``seqio.ShardInfo``) is by file.

Determinism. All randomness is one ``numpy.random.Generator`` seeded from
``(seed, split, shard index, format)``, where ``seed`` is seqio's ``seed`` argument (`DEFAULT_SEED` when
it is None), so the same seed gives the same examples and different seeds give different ones; every
pass over the data (epoch) rebuilds the same examples, as PPT's one-off preprocessing would.

Errors. Raised as `DataError` when a dataset is requested (never at import): no data directory
configured, missing directory, no documents for a split, a malformed ``.jsonl`` line (file and line
number), and a corpus too small to build negatives. Each names the task, the path, and the fix
(``PROMPTJAX_TEXT_DIR=/path`` or ``promptjax.tasks.set_data_dir('text', ...)``). Before returning the
dataset, `SelfSupervisedTextSource.get_dataset` reads the split as far as it needs to establish that
examples can be built, and parses the split's ``.jsonl`` lines up to ``validate_bytes`` (default 64 MiB,
so a moderate corpus is checked completely and a 10 GB one is not read twice); a malformed line further
into a large corpus is found while iterating and surfaces as the ``tf.errors.InvalidArgumentError`` that
wraps the same message (``DataError: ...``), which `promptjax.tasks.utils.iterate` turns back into a
`DataError`.

Public API: `register_text_tasks` (also used by the bundled mini benchmark), `FORMATS` /
`register_format` (the extension point), `DocumentCorpus`, `Document`, `split_sentences`,
`segment_text`, `build_examples`, `SelfSupervisedTextSource`. Importing the module registers
``text_nsp_yes_maybe_no`` and ``text_mc_next_segment`` on vocabulary ``t5``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import zlib
from typing import (Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set,
                    Tuple)

import numpy as np
import seqio

from promptjax.tasks import config
from promptjax.tasks.config import DataError

SPLITS = ('train', 'validation')
DEFAULT_VALIDATION_FRACTION = 0.05  # SUPMER Appendix C.2: "5% data are split for validation".
DEFAULT_SEED = 0
DEFAULT_BUFFER_DOCUMENTS = 512
DEFAULT_MAX_SEGMENT_WORDS = 64
DEFAULT_VALIDATE_BYTES = 64 << 20  # .jsonl bytes checked line by line when a dataset is requested.
DOCUMENT_SUFFIXES = ('.txt', '.jsonl')
MASK = '<extra_id_0>'
END_SENTINEL = '<extra_id_1>'
TARGET_STYLES = ('plain', 'sentinel', 'mask')
SEGMENT_UNITS = ('sentence', 'paragraph')
_MAX_TRIES = 32

# ---------------------------------------------------------------------------------------------------
# Text segmentation.

_CLOSERS = '"\'\u201d\u2019)\\]'
_OPENERS = '"\'\u201c\u2018(\\['
_SENTENCE_BOUNDARY = re.compile(
    rf'(?:(?<=[.!?])|(?<=[.!?][{_CLOSERS}]))\s+(?=[{_OPENERS}]?[A-Z])')
_FINAL_PUNCT = re.compile(r'[.!?]+$')
_TERMINATED = re.compile(rf'[.!?][{_CLOSERS}]?$')


def split_paragraphs(text: str) -> List[str]:
  """Non-empty lines of ``text``, stripped (a paragraph per line, as in OpenWebText)."""
  return [line.strip() for line in text.splitlines() if line.strip()]


def split_sentences(paragraph: str) -> List[str]:
  """Sentences of one paragraph: split at whitespace after . ! ? (+ optional closing quote/bracket)
  that precedes an uppercase letter (+ optional opening quote/bracket); inner whitespace collapsed."""
  pieces = (' '.join(p.split()) for p in _SENTENCE_BOUNDARY.split(paragraph.strip()))
  return [p for p in pieces if p]


def _truncate_words(segment: str, max_words: Optional[int]) -> str:
  if not max_words:
    return segment
  words = segment.split(' ')
  return segment if len(words) <= max_words else ' '.join(words[:max_words])


def segment_text(text: str, unit: str = 'sentence',
                 max_words: Optional[int] = DEFAULT_MAX_SEGMENT_WORDS) -> Tuple[str, ...]:
  """The segments of a document in reading order: sentences (default) or paragraphs."""
  if unit not in SEGMENT_UNITS:
    raise ValueError(f'segment unit must be one of {SEGMENT_UNITS}, got {unit!r}')
  paragraphs = split_paragraphs(text)
  if unit == 'paragraph':
    segments = [' '.join(p.split()) for p in paragraphs]
  else:
    segments = [s for p in paragraphs for s in split_sentences(p)]
  return tuple(_truncate_words(s, max_words) for s in segments)


@dataclasses.dataclass(frozen=True)
class Document:
  """One document of the corpus.

  Attributes:
    doc_id: relative path (``.txt``) or ``<relative path>:<line>`` (``.jsonl``); unique in the corpus.
    segments: its sentences (or paragraphs) in reading order.
    cluster_ids: one K-means cluster id per segment, filled in by the clustering pipeline of the
      SUPMER formats (§3.2, App. A.2); None for the document-structure formats of this module.
  """
  doc_id: str
  segments: Tuple[str, ...]
  cluster_ids: Optional[Tuple[int, ...]] = None


def hash_split(doc_id: str, validation_fraction: float) -> str:
  """``'validation'`` if md5(doc_id), as a fraction of 2**128, is below the fraction, else ``'train'``."""
  h = int(hashlib.md5(doc_id.encode('utf-8')).hexdigest(), 16) / float(1 << 128)
  return 'validation' if h < validation_fraction else 'train'


# ---------------------------------------------------------------------------------------------------
# The corpus reader.


def _fix_hint(family: str) -> str:
  return (f'set {config.ENV_VARS[family]}=/path, call promptjax.tasks.set_data_dir({family!r}, "/path"), '
          f'or bind the gin parameter promptjax.tasks.configure_data.{family}_dir')


class DocumentCorpus:
  """A directory of documents (``*.txt`` one per file, ``*.jsonl`` one per line), read lazily.

  Args:
    root: the directory (local or gs://).
    task: the task name, for error messages.
    family: the data family whose setting points here (``text``, ``mini``), for error messages.
    validation_fraction: share of documents hashed into ``validation`` when there is no ``train/``.
    segment_unit / max_segment_words: see `segment_text`.
  """

  def __init__(self, root: str, *, task: str = 'text corpus', family: str = 'text',
               validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
               segment_unit: str = 'sentence',
               max_segment_words: Optional[int] = DEFAULT_MAX_SEGMENT_WORDS):
    if segment_unit not in SEGMENT_UNITS:
      raise ValueError(f'segment_unit must be one of {SEGMENT_UNITS}, got {segment_unit!r}')
    self.root = str(root).rstrip('/') or '/'
    self.task = task
    self.family = family
    self.validation_fraction = float(validation_fraction)
    self.segment_unit = segment_unit
    self.max_segment_words = max_segment_words

  @functools.cached_property
  def layout(self) -> str:
    """``'subdirs'`` (``train/`` and ``validation/``) or ``'hash'`` (document-id hash split); looked up
    once per corpus object."""
    import tensorflow as tf
    return 'subdirs' if tf.io.gfile.isdir(self._join('train')) else 'hash'

  def _join(self, *parts: str) -> str:
    return '/'.join((self.root,) + parts)

  def _relative(self, path: str) -> str:
    prefix = self.root + '/'
    return path[len(prefix):] if path.startswith(prefix) else path

  @staticmethod
  def _walk(directory: str) -> List[str]:
    import tensorflow as tf
    found = []
    for dirpath, _, filenames in tf.io.gfile.walk(directory):
      for name in filenames:
        if name.endswith(DOCUMENT_SUFFIXES):
          found.append(dirpath.rstrip('/') + '/' + name)
    return sorted(found)

  def no_documents(self, split: str, where: str) -> DataError:
    return DataError(
        f'Task {self.task!r}: no documents found for split {split!r} in {where} (looked for *.txt, one '
        f'document per file, and *.jsonl with a "text" field, recursively; layout: {self.layout}). Add '
        f'documents there, or point the {self.family} data dir at {config.WHAT[self.family]}: '
        f'{_fix_hint(self.family)}.')

  def files(self, split: str) -> List[str]:
    """The files that hold documents of ``split`` (sorted); `DataError` if there are none."""
    import tensorflow as tf
    if split not in SPLITS:
      raise DataError(f'Task {self.task!r}: unknown split {split!r}; splits are {SPLITS}.')
    config.require_dir(self.root, self.family, self.task)
    if self.layout == 'subdirs':
      where = self._join(split)
      files = self._walk(where) if tf.io.gfile.isdir(where) else []
    else:
      where = self.root
      files = [f for f in self._walk(self.root)
               if f.endswith('.jsonl')
               or hash_split(self._relative(f), self.validation_fraction) == split]
    if not files:
      raise self.no_documents(split, where)
    return files

  def _make(self, doc_id: str, text: str) -> Optional[Document]:
    segments = segment_text(text, self.segment_unit, self.max_segment_words)
    return Document(doc_id, segments) if segments else None

  def read_file(self, path: str, split: Optional[str] = None) -> Iterator[Document]:
    """The non-empty documents of one file (of ``split`` only, in the hash layout)."""
    import tensorflow as tf
    rel = self._relative(path)
    hashed = split is not None and self.layout == 'hash'
    if path.endswith('.txt'):
      if hashed and hash_split(rel, self.validation_fraction) != split:
        return
      with tf.io.gfile.GFile(path, 'rb') as f:
        doc = self._make(rel, f.read().decode('utf-8', errors='replace'))
      if doc is not None:
        yield doc
      return
    with tf.io.gfile.GFile(path, 'rb') as f:
      for lineno, raw in enumerate(f, start=1):
        line = raw.decode('utf-8', errors='replace').strip()
        if not line:
          continue
        doc_id = f'{rel}:{lineno}'
        if hashed and hash_split(doc_id, self.validation_fraction) != split:
          continue  # Checked before parsing: a line is parsed by the split that owns it.
        doc = self._make(doc_id, self._parse_line(path, lineno, line))
        if doc is not None:
          yield doc

  def _parse_line(self, path: str, lineno: int, line: str) -> str:
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise self._malformed(path, lineno, f'not valid JSON ({e.msg} at column {e.colno})') from None
    if not isinstance(record, dict) or not isinstance(record.get('text'), str):
      raise self._malformed(path, lineno, 'expected a JSON object with a string "text" field')
    return record['text']

  def validate_jsonl(self, split: str, files: Sequence[str], max_bytes: int) -> None:
    """Parses the ``split`` lines of the ``.jsonl`` files in ``files``, stopping after ``max_bytes``
    have been read; a `DataError` naming file and line for the first malformed one."""
    import tensorflow as tf
    read = 0
    hashed = self.layout == 'hash'
    for path in files:
      if not path.endswith('.jsonl'):
        continue
      rel = self._relative(path)
      with tf.io.gfile.GFile(path, 'rb') as f:
        for lineno, raw in enumerate(f, start=1):
          read += len(raw)
          if read > max_bytes:
            return
          line = raw.decode('utf-8', errors='replace').strip()
          if line and not (hashed and hash_split(f'{rel}:{lineno}', self.validation_fraction) != split):
            self._parse_line(path, lineno, line)

  def _malformed(self, path: str, lineno: int, why: str) -> DataError:
    return DataError(
        f'Task {self.task!r}: malformed line {path}:{lineno}: {why}. Each line of a .jsonl document '
        f'file must be one JSON object with a "text" field; fix or remove the file, or point the '
        f'{self.family} data dir elsewhere ({_fix_hint(self.family)}).')

  def documents(self, split: str, files: Optional[Sequence[str]] = None) -> Iterator[Document]:
    """The documents of ``split``, file by file (``files`` defaults to `files(split)`)."""
    for path in (self.files(split) if files is None else files):
      yield from self.read_file(path, split)


# ---------------------------------------------------------------------------------------------------
# Formats.


class BalancedLabels:
  """Labels in blocks of a random permutation of ``range(n)``; `peek` then `pop` on success."""

  def __init__(self, rng: np.random.Generator, n: int):
    self._rng, self._n, self._queue = rng, n, []

  def peek(self) -> int:
    if not self._queue:
      self._queue.extend(int(x) for x in self._rng.permutation(self._n))
    return self._queue[0]

  def pop(self) -> int:
    label = self.peek()
    self._queue.pop(0)
    return label


class NegativeSampler:
  """Draws distractor segments for an anchor from its own document or from the document buffer."""

  def __init__(self, rng: np.random.Generator, pool: Sequence[Document]):
    self.rng = rng
    self.pool = pool

  def same_document(self, doc: Document, i: int, avoid: Set[str]) -> Optional[str]:
    """A segment ``seg[j]`` with ``|j - i| >= 2`` whose text is not in ``avoid``."""
    candidates = [j for j in range(len(doc.segments))
                  if abs(j - i) >= 2 and doc.segments[j] not in avoid]
    if not candidates:
      return None
    return doc.segments[candidates[int(self.rng.integers(len(candidates)))]]

  def other_document(self, doc: Document, avoid: Set[str],
                     avoid_docs: Iterable[str] = ()) -> Tuple[Optional[str], Optional[str]]:
    """(segment, doc_id) from a document other than ``doc``, text not in ``avoid``; documents in
    ``avoid_docs`` are avoided while other documents can be found."""
    avoid_docs = set(avoid_docs)
    for attempt in range(2 * _MAX_TRIES):
      other = self.pool[int(self.rng.integers(len(self.pool)))]
      if other.doc_id == doc.doc_id or (attempt < _MAX_TRIES and other.doc_id in avoid_docs):
        continue
      segment = other.segments[int(self.rng.integers(len(other.segments)))]
      if segment not in avoid:
        return segment, other.doc_id
    return None, None


class TextFormat:
  """A self-supervised format: one example per anchor segment of a document.

  Subclasses set `name`, `verbalizer` (the class words, index = label) and `other_segments_needed`
  (segments from other documents one example needs), and implement `build`.
  """
  name: str = ''
  verbalizer: Tuple[str, ...] = ()
  other_segments_needed: int = 1

  def is_anchor(self, doc: Document, i: int) -> bool:
    """Every label is possible: a next segment exists and so does a non-adjacent one."""
    n = len(doc.segments)
    return i + 1 < n and (i >= 2 or i + 2 < n)

  def build(self, doc: Document, i: int, label: int, sampler: NegativeSampler) -> Optional[str]:
    """The ``inputs`` text for anchor ``i`` with gold ``label``, or None if no valid example exists."""
    raise NotImplementedError


def _terminated(segment: str) -> str:
  return segment if _TERMINATED.search(segment) else segment + '.'


def _as_question(segment: str) -> str:
  return _FINAL_PUNCT.sub('', segment) + '?'


class NextSentenceYesMaybeNo(TextFormat):
  """Sentence-pair classification, SUPMER App. A.2 Eq. 17 / PPT NSP: ``"s1 <extra_id_0>. s2"``.

  Label 0 ``yes``: s2 directly follows s1; 1 ``no``: s2 from another document; 2 ``maybe``: s2 from the
  same document, not adjacent.
  """
  name = 'nsp_yes_maybe_no'
  verbalizer = ('yes', 'no', 'maybe')
  YES, NO, MAYBE = 0, 1, 2
  other_segments_needed = 1

  def build(self, doc, i, label, sampler):
    s1, nxt = doc.segments[i], doc.segments[i + 1]
    if label == self.YES:
      s2 = nxt
    elif label == self.MAYBE:
      s2 = sampler.same_document(doc, i, avoid={s1, nxt})
    else:
      s2, _ = sampler.other_document(doc, avoid={s1, nxt})
    if s2 is None:
      return None
    return f'{s1} {MASK}. {s2}'


class MultipleChoiceNextSegment(TextFormat):
  """Multiple-choice classification, SUPMER App. A.2 Eq. 18 / PPT next sentence selection:
  ``"s0? A. o1 B. o2 C. o3 D. o4 Answer: <extra_id_0>"``; the label is the gold option's letter."""
  name = 'mc_next_segment'
  LETTERS = 'ABCDEFGHIJ'

  def __init__(self, num_options: int = 4, same_document_distractors: int = 1):
    if not 2 <= num_options <= len(self.LETTERS):
      raise ValueError(f'num_options must be in [2, {len(self.LETTERS)}], got {num_options}')
    if not 0 <= same_document_distractors <= num_options - 1:
      raise ValueError('same_document_distractors must be in [0, num_options - 1]')
    self.num_options = num_options
    self.same_document_distractors = same_document_distractors
    self.verbalizer = tuple(self.LETTERS[:num_options])
    self.other_segments_needed = num_options - 1 - same_document_distractors

  def build(self, doc, i, label, sampler):
    query, gold = doc.segments[i], doc.segments[i + 1]
    avoid = {query, gold}
    distractors, used_docs = [], []
    for _ in range(self.same_document_distractors):
      d = sampler.same_document(doc, i, avoid)
      if d is None:
        return None
      distractors.append(d)
      avoid.add(d)
    for _ in range(self.other_segments_needed):
      d, doc_id = sampler.other_document(doc, avoid, used_docs)
      if d is None:
        return None
      distractors.append(d)
      avoid.add(d)
      used_docs.append(doc_id)
    order = sampler.rng.permutation(len(distractors))
    options = [distractors[k] for k in order]
    options.insert(label, gold)
    rendered = ' '.join(f'{letter}. {_terminated(o)}' for letter, o in zip(self.verbalizer, options))
    return f'{_as_question(query)} {rendered} Answer: {MASK}'


FORMATS: Dict[str, Callable[..., TextFormat]] = {}
"""Format name → factory (keyword options → `TextFormat`); `register_text_tasks` makes one Task each.

SUPMER's clustering-based anchor formats (§3.2, App. A.2, Eqs. 16-19: same-cluster sentence pair,
multiple-choice same-cluster, cluster-centroid classification) need the K-means clusters of the whole
corpus, so they are not streamed formats here: `promptjax.supmer.construct` builds them (and the
meta-tasks grouped by the anchor's cluster) in a Beam pipeline, reusing `TextFormat`, `BalancedLabels`
and `NegativeSampler` (`PLANNED_CLUSTER_FORMATS` names them; they are not in `FORMATS`).
"""

PLANNED_CLUSTER_FORMATS = ('sp_same_cluster', 'mc_same_cluster', 'cls_cluster_centroid')
DEFAULT_FORMATS = (NextSentenceYesMaybeNo.name, MultipleChoiceNextSegment.name)


def register_format(name: str, factory: Callable[..., TextFormat], overwrite: bool = False) -> None:
  """Adds a format to `FORMATS` (the clustering formats plug in here)."""
  if name in FORMATS and not overwrite:
    raise ValueError(f'format {name!r} is already registered')
  FORMATS[name] = factory


register_format(NextSentenceYesMaybeNo.name, NextSentenceYesMaybeNo)
register_format(MultipleChoiceNextSegment.name, MultipleChoiceNextSegment)


# ---------------------------------------------------------------------------------------------------
# Example construction (pure Python; the seqio source wraps it).


def target_text(word: str, target_style: str = 'plain') -> str:
  """The target string for a verbalizer word: ``word`` ('plain'), ``<extra_id_0> word <extra_id_1>``
  ('sentinel', PPT's span-corruption form) or ``<extra_id_0> word`` ('mask': the word predicted at the
  input's ``<extra_id_0>``, the form of SUPMER's downstream targets, `promptjax.supmer.datasets`)."""
  if target_style not in TARGET_STYLES:
    raise ValueError(f'target_style must be one of {TARGET_STYLES}, got {target_style!r}')
  if target_style == 'plain':
    return word
  return f'{MASK} {word}' if target_style == 'mask' else f'{MASK} {word} {END_SENTINEL}'


def _chunks(documents: Iterable[Document], size: int) -> Iterator[List[Document]]:
  chunk = []
  for doc in documents:
    chunk.append(doc)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def build_examples(documents: Iterable[Document], fmt: TextFormat, rng: np.random.Generator,
                   buffer_documents: int = DEFAULT_BUFFER_DOCUMENTS,
                   target_style: str = 'plain') -> Iterator[Dict[str, object]]:
  """Text examples ``{'inputs', 'targets', 'answer_choices'}`` from a stream of documents.

  Documents are taken ``buffer_documents`` at a time; negatives for a chunk come from that chunk and the
  previous one (see the module docstring). Labels follow a `BalancedLabels` cycle.
  """
  if buffer_documents < 2:
    raise ValueError('buffer_documents must be at least 2')
  choices = [target_text(w, target_style) for w in fmt.verbalizer]
  labels = BalancedLabels(rng, len(fmt.verbalizer))
  previous: List[Document] = []
  for chunk in _chunks(documents, buffer_documents):
    sampler = NegativeSampler(rng, previous + chunk)
    for doc in chunk:
      for i in range(len(doc.segments)):
        if not fmt.is_anchor(doc, i):
          continue
        label = labels.peek()
        inputs = fmt.build(doc, i, label, sampler)
        if inputs is None:
          continue
        labels.pop()
        yield {'inputs': inputs, 'targets': choices[label], 'answer_choices': list(choices)}
    previous = chunk


# ---------------------------------------------------------------------------------------------------
# seqio.


class _CorpusSource(seqio.DataSource):
  """A seqio `DataSource` over a `DocumentCorpus` whose directory comes from ``data_dir_fn()`` at read
  time; subclasses set ``task_name``, ``data_dir_fn``, ``family``, ``validation_fraction``,
  ``segment_unit`` and ``max_segment_words``. Shards are the corpus files of a split."""

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def corpus(self) -> DocumentCorpus:
    try:
      root = self.data_dir_fn()
    except DataError as e:
      raise DataError(f'Task {self.task_name!r}: {e}') from None
    return DocumentCorpus(root, task=self.task_name, family=self.family,
                          validation_fraction=self.validation_fraction,
                          segment_unit=self.segment_unit, max_segment_words=self.max_segment_words)

  def list_shards(self, split: str) -> Sequence[str]:
    return self.corpus().files(split)


class SelfSupervisedTextSource(_CorpusSource):
  """A seqio `DataSource` producing one format's text examples from a `DocumentCorpus`.

  The directory comes from ``data_dir_fn()`` when a dataset (or the shard list) is requested. Shards
  are the corpus files of a split.
  """

  def __init__(self, *, task_name: str, fmt: TextFormat, data_dir_fn: Callable[[], str],
               family: str = 'text', validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
               buffer_documents: int = DEFAULT_BUFFER_DOCUMENTS, segment_unit: str = 'sentence',
               max_segment_words: Optional[int] = DEFAULT_MAX_SEGMENT_WORDS,
               target_style: str = 'plain', validate_bytes: int = DEFAULT_VALIDATE_BYTES):
    super().__init__(splits=SPLITS, num_input_examples=None, caching_permitted=True)
    if buffer_documents < 2:
      raise ValueError('buffer_documents must be at least 2')
    target_text('x', target_style)  # Validates the style.
    if segment_unit not in SEGMENT_UNITS:
      raise ValueError(f'segment_unit must be one of {SEGMENT_UNITS}, got {segment_unit!r}')
    self.task_name = task_name
    self.fmt = fmt
    self.data_dir_fn = data_dir_fn
    self.family = family
    self.validation_fraction = validation_fraction
    self.buffer_documents = buffer_documents
    self.segment_unit = segment_unit
    self.max_segment_words = max_segment_words
    self.target_style = target_style
    self.validate_bytes = validate_bytes


  def _check_buildable(self, corpus: DocumentCorpus, split: str, files: Sequence[str]) -> None:
    """Reads ``split`` until it is clear that examples can be built; a `DataError` if they cannot."""
    n_docs = total = 0
    smallest_anchored = None  # Fewest segments among documents with an anchor.
    need = self.fmt.other_segments_needed
    for doc in corpus.documents(split, files):
      n_docs += 1
      total += len(doc.segments)
      if any(self.fmt.is_anchor(doc, i) for i in range(len(doc.segments))):
        n = len(doc.segments)
        smallest_anchored = n if smallest_anchored is None else min(smallest_anchored, n)
      if n_docs >= 2 and smallest_anchored is not None and total - smallest_anchored >= need:
        return
    if n_docs == 0:
      raise corpus.no_documents(split, corpus.root)
    raise DataError(
        f'Task {self.task_name!r}: the {split!r} split of {corpus.root} is too small to build '
        f'{self.fmt.name} negatives: found {n_docs} non-empty document(s), '
        f'{"one" if smallest_anchored else "none"} with 3+ segments. It needs at least two documents, '
        f'one of them with 3 or more segments, and {need} segment(s) in the other documents. Add '
        f'documents, or point the {self.family} data dir at a larger corpus '
        f'({_fix_hint(self.family)}).')

  def get_dataset(self, split: str = 'train', shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1):
    import tensorflow as tf
    corpus = self.corpus()
    files = list(corpus.files(split))
    shard_index = 0
    if shard_info is not None and shard_info.num_shards > 1:
      shard_index = shard_info.index
      files = files[shard_info.index::shard_info.num_shards]
      if not files:
        raise DataError(f'Task {self.task_name!r}: shard {shard_info} of split {split!r} has no files.')
    self._check_buildable(corpus, split, files)
    corpus.validate_jsonl(split, files, self.validate_bytes)
    seed = DEFAULT_SEED if seed is None else int(seed)
    rng_key = [seed & 0xFFFFFFFF, zlib.crc32(split.encode()), shard_index,
               zlib.crc32(self.fmt.name.encode())]
    fmt, buffer_documents, target_style = self.fmt, self.buffer_documents, self.target_style

    def generate():
      rng = np.random.default_rng(rng_key)
      order = list(files)
      if shuffle:
        order = [order[k] for k in rng.permutation(len(order))]
      docs = corpus.documents(split, order)
      for ex in build_examples(docs, fmt, rng, buffer_documents, target_style):
        yield ex

    signature = {
        'inputs': tf.TensorSpec((), tf.string),
        'targets': tf.TensorSpec((), tf.string),
        'answer_choices': tf.TensorSpec((None,), tf.string),
    }
    return tf.data.Dataset.from_generator(generate, output_signature=signature)


def _default_data_dir() -> str:
  return config.get_data_dir('text')


def register_text_tasks(name_prefix: str = 'text',
                        data_dir_fn: Callable[[], str] = _default_data_dir,
                        vocab_name: str = 't5', *, family: str = 'text',
                        formats: Optional[Sequence[str]] = None,
                        format_kwargs: Optional[Mapping[str, Mapping[str, object]]] = None,
                        validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
                        buffer_documents: int = DEFAULT_BUFFER_DOCUMENTS,
                        segment_unit: str = 'sentence',
                        max_segment_words: Optional[int] = DEFAULT_MAX_SEGMENT_WORDS,
                        target_style: str = 'plain',
                        validate_bytes: int = DEFAULT_VALIDATE_BYTES,
                        shuffle_buffer_size: int = 10_000) -> Dict[str, seqio.Task]:
  """Registers one seqio Task ``f'{name_prefix}_{format}'`` per format; returns {format: Task}.

  Nothing is read here: ``data_dir_fn`` is called when a dataset is requested. A task of the same name
  is replaced, so re-registering (e.g. on module reload) is safe. The bundled mini benchmark uses
  ``register_text_tasks('mini_text', lambda: os.path.join(get_data_dir('mini'), 'text'), 'mini',
  family='mini')``.

  Args:
    name_prefix: task name prefix.
    data_dir_fn: returns the corpus directory (local or gs://).
    vocab_name: ``t5`` or ``mini`` (see `config.get_vocabulary`).
    family: the data family named in error messages' fix (``text`` → PROMPTJAX_TEXT_DIR).
    formats: names in `FORMATS` (default `DEFAULT_FORMATS`).
    format_kwargs: per-format factory options, e.g. ``{'mc_next_segment': {'num_options': 6}}``.
    validation_fraction, buffer_documents, segment_unit, max_segment_words, target_style,
      validate_bytes: see the module docstring.
    shuffle_buffer_size: seqio's example shuffle buffer (examples of one document arrive together).
  """
  formats = tuple(DEFAULT_FORMATS if formats is None else formats)
  format_kwargs = dict(format_kwargs or {})
  unknown = [f for f in tuple(formats) + tuple(format_kwargs) if f not in FORMATS]
  if unknown:
    raise ValueError(f'unknown format(s) {unknown}; registered: {sorted(FORMATS)}')
  tasks = {}
  for fmt_name in formats:
    fmt = FORMATS[fmt_name](**dict(format_kwargs.get(fmt_name, {})))
    name = f'{name_prefix}_{fmt_name}'
    source = SelfSupervisedTextSource(
        task_name=name, fmt=fmt, data_dir_fn=data_dir_fn, family=family,
        validation_fraction=validation_fraction, buffer_documents=buffer_documents,
        segment_unit=segment_unit, max_segment_words=max_segment_words, target_style=target_style,
        validate_bytes=validate_bytes)
    seqio.TaskRegistry.remove(name)
    tasks[fmt_name] = seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=config.output_features(vocab_name),
        metric_fns=[],
        shuffle_buffer_size=shuffle_buffer_size)
  return tasks


class PrefixLMSource(_CorpusSource):
  """LM adaptation data (Lester et al. 2021, the "LM-adapted" T5 that Wu et al. and T0 start from).

  T5's ``prefix_lm`` objective on natural text: a window of consecutive segments of a document is split
  at a uniformly random word boundary; the first part is the input and the continuation the target.
  Windows are taken greedily from each document's segments (``window_words`` words at most, one
  example per window); split points come from ``numpy.random.default_rng([seed, crc32(split)])``.
  """

  def __init__(self, *, task_name: str, data_dir_fn: Callable[[], str], family: str = 'text',
               window_words: int = 96, validation_fraction: float = DEFAULT_VALIDATION_FRACTION):
    super().__init__(splits=SPLITS, num_input_examples=None, caching_permitted=True)
    self.task_name, self.data_dir_fn, self.family = task_name, data_dir_fn, family
    self.window_words, self.validation_fraction = int(window_words), validation_fraction
    self.segment_unit, self.max_segment_words = 'sentence', None


  def get_dataset(self, split: str = 'train', shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1):
    import tensorflow as tf
    corpus = self.corpus()
    files = list(corpus.files(split))
    if shard_info is not None and shard_info.num_shards > 1:
      files = files[shard_info.index::shard_info.num_shards]
    key = [(DEFAULT_SEED if seed is None else int(seed)) & 0xFFFFFFFF, zlib.crc32(split.encode())]
    window = self.window_words
    if not any(sum(len(seg.split()) for seg in doc.segments) >= 2 for doc in corpus.documents(split, files)):
      raise corpus.no_documents(split, corpus.root)  # files, but no text in them

    def generate():
      rng = np.random.default_rng(key)
      order = [files[k] for k in rng.permutation(len(files))] if shuffle else files
      for doc in corpus.documents(split, order):
        words: List[str] = []
        for seg in list(doc.segments) + [None]:
          seg_words = [] if seg is None else seg.split()
          if words and (seg is None or len(words) + len(seg_words) > window):
            if len(words) >= 2:
              k = int(rng.integers(1, len(words)))
              yield {'inputs': ' '.join(words[:k]), 'targets': ' '.join(words[k:])}
            words = []
          words.extend(seg_words[:window])

    signature = {'inputs': tf.TensorSpec((), tf.string), 'targets': tf.TensorSpec((), tf.string)}
    return tf.data.Dataset.from_generator(generate, output_signature=signature)


def register_prefix_lm_task(name: str = 'text_prefix_lm', data_dir_fn: Callable[[], str] = None,
                            vocab_name: str = 't5', *, family: str = 'text', window_words: int = 96,
                            shuffle_buffer_size: int = 10_000) -> seqio.Task:
  """Registers the prefix-LM (LM adaptation) task over a corpus directory (see `PrefixLMSource`)."""
  source = PrefixLMSource(task_name=name, data_dir_fn=data_dir_fn or _default_data_dir, family=family,
                          window_words=window_words)
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=source,
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=config.output_features(vocab_name), metric_fns=[],
      shuffle_buffer_size=shuffle_buffer_size)


TEXT_TASKS = register_text_tasks()
"""``text_nsp_yes_maybe_no`` and ``text_mc_next_segment`` over `get_data_dir('text')`, vocabulary t5."""
PREFIX_LM_TASK = register_prefix_lm_task()
"""``text_prefix_lm`` over `get_data_dir('text')`, vocabulary t5."""
