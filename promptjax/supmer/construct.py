"""SUPMER anchor meta-task construction as an Apache Beam pipeline (``python -m promptjax.supmer.construct``).

Implements SUPMER (Pan et al. 2023) §3.2 and Appendix A.2 ("Constructing Anchor Meta Tasks"),
with the Table 6 defaults (K = 250 clusters per format, support 32 + query 32 per task):

1. Read documents (a `promptjax.tasks.self_supervised.DocumentCorpus`: ``*.txt`` / ``*.jsonl``, local or
   gs://; its ``train/`` + ``validation/`` or hash split) and split them into sentences (or paragraphs,
   ``segment_unit``) with the same reader as the PPT formats.
2. Embed every segment with the T5 encoder, H = f_enc(x) mean-pooled over the non-pad positions (App. A.2),
   in a jitted, batched DoFn (`EmbedSegments`: the model is loaded in ``setup``; every batch is padded to
   ``embed_batch_size`` × ``embed_length`` so it compiles once). Model ``PromptableT5(get_config(
   model_size), PromptConfig('none'))`` with parameters from ``checkpoint_path`` (HF or T5X, as
   `promptjax.checkpoints.restore.load_params`), or a seeded random init when None (tests, the mini demo).
   Inputs are tokenized as T5 inputs (vocabulary ``vocab_name``, truncated, EOS appended).
3. K-means (Eq. 16) with scikit-learn on the train-split embeddings (``KMeans``, or ``MiniBatchKMeans``
   with ``kmeans='minibatch'``; optionally on a sample of ``kmeans_sample_size``), seeded; every segment
   of both splits gets its nearest centroid.
4. Build the five formats (Eq. 17–19; names and verbalizers in `promptjax.supmer.tasks`) per build
   bucket (documents hashed into ``num_build_shards`` buckets per split; each bucket is built on one
   worker with one seeded generator, negatives come from its own documents, as PPT's buffer):

   (a) ``nsp_yes_maybe_no``: PPT's next sentence prediction (`self_supervised.NextSentenceYesMaybeNo`).
   (b) ``sp_same_cluster``: ``"s1 <extra_id_0>. s2"``, yes = s2 from s1's cluster, no = another cluster.
   (c) ``mc_next_segment``: PPT's next sentence selection, 4 options (`MultipleChoiceNextSegment`).
   (d) ``mc_same_cluster``: ``"s0? A. o1 B. o2 C. o3 D. o4 Answer: <extra_id_0>"``: one option from s0's
       cluster, three from three other (distinct) clusters.
   (e) ``cls_cluster_centroid``: ``"s0? A. <µ1> B. <µ2> C. <µ3> D. <µ4>. Answer: <extra_id_0>"``: each
       ⟨µ⟩ is one input position (the placeholder token ``<extra_id_99>``) whose embedding the model
       replaces by that cluster's centroid (``encoder_input_vectors`` / ``_positions``); the answer is the
       letter of s0's cluster.

   Targets are ``<extra_id_0> <verbalizer word>`` (``target_style='mask'``): the word V(y) at the
   template's ⟨X⟩ = ``<extra_id_0>`` (Eq. 1, 17-19), exactly the form of the downstream targets, so the
   prompt is meta-trained on the output format it is tuned and scored with downstream.
   Labels (and gold positions) come from one `self_supervised.BalancedLabels` cycle per format and
   bucket; labels of a partial task that is dropped are put back, so the kept examples of a format
   have label counts that differ by at most one per bucket and split.
5. Group samples into meta-training tasks (App. A.2): for (a)–(d) the samples whose anchor sentence is in
   the same cluster, ``support_size + query_size`` at a time (a cluster's remainder is dropped); for (e)
   each task draws N = 4 random clusters as its classes (letters A–D in random order) and, per
   example, a sentence of the class drawn by the label cycle, without repeats inside the task (when
   support and query sizes are multiples of N, as in Table 6 and the mini preset, this is exactly
   N-way k-shot: k = size / N sentences per class in each set);
   ``cls_tasks`` tasks per bucket (default: one pass over the bucket's segments). The first
   ``support_size`` samples of a task are its support set, the rest its query set.
6. Write seqio-readable shards ``<output_dir>/<format>/<split>-SSSSS-of-NNNNN.tfrecord`` (tf.train.Example;
   features in `promptjax.supmer.tasks`), ``centroids.npy`` [K, d] and ``manifest.json`` (formats, counts
   per label, tasks, K, embedding dim, vocabulary, the config used), the manifest last (it depends on
   the written files), so a directory with a manifest is complete. Then each format's record index
   ``<format>/<split>.index.{npy,json}`` (`promptjax.supmer.tasks.write_index`: every record's shard, offset,
   meta-task and role), so a run with ``storage='index'`` starts without reading the shards
   (``--write_index --output_dir=DIR`` writes them for an existing construction).

Runner: DirectRunner by default; `construct` takes ``PipelineOptions`` and `main` passes unknown flags to
Beam (``--runner=DataflowRunner --project=... --temp_location=gs://...``, or Flink). Workers need the
vocabulary and checkpoint paths readable (local paths only work on the DirectRunner). `main` also takes
``--gin_file`` / ``--gin_bindings`` for `ConstructConfig` (explicit flags win) and ``--mini``.

Installing Beam: every Beam release caps protobuf < 7, pillow < 13, pyarrow < 26 and python-dateutil < 3
in its metadata, below this stack's pins (sentencepiece 0.2.3 needs the protobuf 7 runtime), while Beam
2.77 runs with them; so ``pip install -c requirements/constraints.txt -e '.[beam]'`` installs its
dependencies and ``pip install -c requirements/constraints.txt --no-deps apache-beam==2.77.0`` Beam itself
(see setup.py). The tests skip the pipeline when Beam is absent.

`mini_config` is the seconds-long variant for tests and the demo: the bundled corpus
(``promptjax/tasks/data/text``), vocabulary ``mini``, model preset ``mini`` (random init), K = 8,
support 4 + query 4, inputs embedded at 32 tokens.

Deviations from the official SUPMER code (``beepkh/SUPMER``), on purpose:

* every verbalizer is a real single vocabulary piece (``▁yes``, ``▁no``, ``▁maybe``, ``▁A``..``▁D``); the
  official code maps ``no`` to ``<unk>``;
* the centroid template uses one input position per centroid (a placeholder whose embedding is replaced)
  rather than splicing hidden states into the embedding sequence by hand; centroids live in the encoder
  output space (mean-pooled final-layer states, as the paper clusters them) and are inserted as they are;
* "next" sentence means the following one (as in `self_supervised`), and all examples of a split come
  from documents of that split (5% validation by hash, App. C.2).

Determinism: all sampling uses ``numpy.random.default_rng((seed, split, bucket, format))`` over documents
sorted by id; K-means is seeded and fits the embeddings sorted by segment key. Embeddings are computed
in batches, so results are deterministic up to float rounding of batched matmuls on another runner.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import sys
import zlib
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from promptjax.tasks import config as task_config
from promptjax.tasks import self_supervised as ss
from promptjax.tasks.config import DataError
from promptjax.supmer.tasks import (FORMAT_NAMES, LETTERS, MANIFEST, NUM_VECTORS, SPLITS, VECTOR_FORMAT,
                                    VECTOR_PLACEHOLDER, VERBALIZERS, placeholder_id)

KMEANS = ('kmeans', 'minibatch')
EOS_ID = 1
EXTRA_IDS = task_config.EXTRA_IDS


@dataclasses.dataclass
class ConstructConfig:
  """Everything the construction reads (see the module docstring); recorded in the manifest.

  Attributes:
    corpus_dir: the document corpus (DocumentCorpus layout).
    output_dir: where shards, centroids.npy and manifest.json go (must be empty unless ``overwrite``).
    vocab_name: ``t5`` or ``mini`` (`promptjax.tasks.config.get_vocabulary_path`).
    model_size: `promptjax.models.get_config` preset of the encoder.
    checkpoint_path: HF or T5X checkpoint of the encoder; None = random init from ``init_seed``.
    segment_unit / max_segment_words / validation_fraction: the corpus reader's options.
    embed_length / embed_batch_size: the fixed [batch, length] of the embedding step.
    num_clusters: K (Table 6: 250). kmeans: ``kmeans`` or ``minibatch``. kmeans_sample_size: fit on a
      sample of this many train segments (None = all).
    formats: which of `FORMAT_NAMES` to build.
    support_size / query_size: per task (Table 6: 32 / 32).
    cls_tasks: format (e) tasks per bucket and split (None: bucket segments // task size).
    num_build_shards: build buckets per split. num_output_shards: files per format and split.
    target_style: ``mask`` (default: ``<extra_id_0> word``, the verbalizer word V(y) predicted at the
      template's ⟨X⟩ as SUPMER's Eq. 1 and 17-19, the same form as the downstream targets of
      `promptjax.supmer.datasets`), ``plain`` (the bare word) or ``sentinel`` (see
      `self_supervised.target_text`).
    seed: data seed (K-means, sampling, random init unless ``init_seed`` is set).
    overwrite: delete an existing construction in output_dir first.
  """
  corpus_dir: str = ''
  output_dir: str = ''
  vocab_name: str = 't5'
  model_size: str = 'base'
  checkpoint_path: Optional[str] = None
  init_seed: int = 0
  segment_unit: str = 'sentence'
  max_segment_words: Optional[int] = ss.DEFAULT_MAX_SEGMENT_WORDS
  validation_fraction: float = ss.DEFAULT_VALIDATION_FRACTION
  embed_length: int = 64
  embed_batch_size: int = 64
  num_clusters: int = 250
  kmeans: str = 'kmeans'
  kmeans_sample_size: Optional[int] = None
  formats: Tuple[str, ...] = FORMAT_NAMES
  support_size: int = 32
  query_size: int = 32
  cls_tasks: Optional[int] = None
  num_build_shards: int = 1
  num_output_shards: int = 1
  target_style: str = 'mask'
  seed: int = 0
  overwrite: bool = False

  @property
  def task_size(self) -> int:
    return self.support_size + self.query_size

  def validate(self) -> None:
    def need(cond, msg):
      if not cond:
        raise DataError(f'SUPMER construction: {msg}')
    need(self.corpus_dir, 'no corpus_dir given; pass --corpus_dir=<a directory of *.txt / *.jsonl documents> '
                          '(e.g. promptjax/tasks/data/text).')
    need(self.output_dir, 'no output_dir given; pass --output_dir=<an empty or new directory>.')
    unknown = [f for f in self.formats if f not in FORMAT_NAMES]
    need(not unknown and self.formats, f'formats must be a non-empty subset of {FORMAT_NAMES}, got {self.formats}.')
    need(self.kmeans in KMEANS, f'kmeans must be one of {KMEANS}, got {self.kmeans!r}.')
    need(self.num_clusters >= NUM_VECTORS, f'num_clusters={self.num_clusters}: the formats need at least '
                                            f'{NUM_VECTORS} clusters.')
    for name in ('support_size', 'query_size', 'embed_length', 'embed_batch_size', 'num_build_shards',
                 'num_output_shards'):
      need(int(getattr(self, name)) >= 1, f'{name} must be >= 1, got {getattr(self, name)}.')
    need(self.embed_length >= 2, 'embed_length must be >= 2.')
    need(self.segment_unit in ss.SEGMENT_UNITS, f'segment_unit must be one of {ss.SEGMENT_UNITS}.')
    ss.target_text('x', self.target_style)


def mini_config(output_dir: str, **overrides) -> ConstructConfig:
  """The seconds-long construction on the bundled corpus (vocabulary and model ``mini``)."""
  kw = dict(corpus_dir=os.path.join(task_config.BUNDLED_DIR, 'text'), output_dir=output_dir,
            vocab_name='mini', model_size='mini', num_clusters=8, support_size=4, query_size=4,
            embed_length=32, embed_batch_size=64)
  kw.update(overrides)
  return ConstructConfig(**kw)


# ---------------------------------------------------------------------------------------------------
# Pure-Python pieces (also usable without Beam).


def load_vocabulary(path: str):
  import seqio
  return seqio.SentencePieceVocabulary(path, extra_ids=EXTRA_IDS)


def encoder_tokens(vocab, texts: Sequence[str], length: int, batch_size: int) -> np.ndarray:
  """T5 encoder inputs [batch_size, length]: ids truncated to length - 1, EOS, zero padding."""
  out = np.zeros((batch_size, length), np.int32)
  for r, text in enumerate(texts):
    ids = list(vocab.encode(text))[:length - 1] + [EOS_ID]
    out[r, :len(ids)] = ids
  return out


def mean_pool(encoded: Any, mask: Any):
  """[b, n, d], [b, n] -> [b, d]: the mean over non-pad positions (jnp or np)."""
  m = mask.astype(encoded.dtype)[..., None]
  count = m.sum(axis=1)
  return (encoded * m).sum(axis=1) / (count + (count == 0))


def t5_embedder(model_size: str, checkpoint_path: Optional[str], init_seed: int):
  """(params, jitted embed(params, tokens [b, n]) -> [b, d] float32): the mean-pooled T5-encoder states that
  the construction clusters (and MetaPT's Yelp clustering reuses); the encoder of `checkpoint_path`, or a
  seeded random one when None."""
  import jax
  from promptjax.checkpoints.restore import load_params
  from promptjax.models import PromptableT5, PromptConfig, get_config
  model = PromptableT5(get_config(model_size), PromptConfig(kind='none'))
  _, params = load_params(model, checkpoint_path, use_prompt=False, seed=init_seed)

  def embed(params, tokens):
    encoded, mask = model.encode(params, tokens)
    return mean_pool(encoded.astype('float32'), mask)

  return params, jax.jit(embed)


def nearest_centroid(embedding: np.ndarray, centroids: np.ndarray) -> int:
  d = ((centroids - embedding[None]) ** 2).sum(axis=1)
  return int(np.argmin(d))


def fit_kmeans(embeddings: np.ndarray, cfg: ConstructConfig) -> np.ndarray:
  """Centroids [K, d] (float32) of Eq. 16."""
  from sklearn.cluster import KMeans, MiniBatchKMeans
  n = len(embeddings)
  if n < cfg.num_clusters:
    raise DataError(f'SUPMER construction: the train split of {cfg.corpus_dir} has {n} segments, fewer than '
                    f'num_clusters={cfg.num_clusters}; use a larger corpus or a smaller --num_clusters.')
  if cfg.kmeans == 'minibatch':
    km = MiniBatchKMeans(n_clusters=cfg.num_clusters, random_state=cfg.seed, n_init=3,
                         batch_size=max(1024, 4 * cfg.num_clusters))
  else:
    km = KMeans(n_clusters=cfg.num_clusters, random_state=cfg.seed, n_init=1)
  km.fit(embeddings.astype(np.float64))
  return km.cluster_centers_.astype(np.float32)


class _Labels(ss.BalancedLabels):
  """`BalancedLabels` whose popped labels can be put back (a dropped partial task returns its labels)."""

  def push_back(self, labels: Sequence[int]) -> None:
    self._queue[:0] = list(labels)


class ClusterSampler(ss.NegativeSampler):
  """`NegativeSampler` over a bucket of clustered documents, plus same-/other-cluster draws."""

  def __init__(self, rng: np.random.Generator, pool: Sequence[ss.Document]):
    super().__init__(rng, pool)
    self.members: Dict[int, List[Tuple[int, int]]] = {}
    self._pos = {doc.doc_id: k for k, doc in enumerate(pool)}
    for k, doc in enumerate(pool):
      for i, c in enumerate(doc.cluster_ids):
        self.members.setdefault(int(c), []).append((k, i))
    self.clusters = sorted(self.members)

  def text(self, member: Tuple[int, int]) -> str:
    return self.pool[member[0]].segments[member[1]]

  def same_cluster(self, doc: ss.Document, i: int, avoid: set) -> Optional[str]:
    """Another segment of the cluster of ``doc.segments[i]`` whose text is not in ``avoid``."""
    own = (self._pos[doc.doc_id], i)
    members = self.members[int(doc.cluster_ids[i])]
    for _ in range(ss._MAX_TRIES):  # pylint: disable=protected-access
      m = members[int(self.rng.integers(len(members)))]
      if m != own and self.text(m) not in avoid:
        return self.text(m)
    cands = [m for m in members if m != own and self.text(m) not in avoid]
    return self.text(cands[int(self.rng.integers(len(cands)))]) if cands else None

  def other_cluster(self, cluster: int, avoid: set, avoid_clusters: Iterable[int] = ()
                    ) -> Tuple[Optional[str], Optional[int]]:
    """(segment, its cluster) from a cluster other than ``cluster`` and not in ``avoid_clusters``."""
    banned = {int(cluster)} | {int(c) for c in avoid_clusters}
    cands = [c for c in self.clusters if c not in banned]
    for _ in range(ss._MAX_TRIES):  # pylint: disable=protected-access
      if not cands:
        return None, None
      c = cands[int(self.rng.integers(len(cands)))]
      members = self.members[c]
      m = members[int(self.rng.integers(len(members)))]
      if self.text(m) not in avoid:
        return self.text(m), c
    return None, None


class SameClusterPair(ss.TextFormat):
  """(b) Sentence pair, SUPMER Eq. 17 sentence similarity: ``"s1 <extra_id_0>. s2"``, 0 yes (s2 from
  s1's cluster), 1 no (s2 from another cluster)."""
  name = 'sp_same_cluster'
  verbalizer = VERBALIZERS['sp_same_cluster']
  YES, NO = 0, 1

  def is_anchor(self, doc, i):
    return True

  def build(self, doc, i, label, sampler):
    s1 = doc.segments[i]
    if label == self.YES:
      s2 = sampler.same_cluster(doc, i, avoid={s1})
    else:
      s2, _ = sampler.other_cluster(doc.cluster_ids[i], avoid={s1})
    return None if s2 is None else f'{s1} {ss.MASK}. {s2}'


class MultipleChoiceSameCluster(ss.TextFormat):
  """(d) Multiple choice, SUPMER Eq. 18 (second task): the option from the query's cluster among
  ``num_options``; the distractors come from distinct other clusters."""
  name = 'mc_same_cluster'

  def __init__(self, num_options: int = NUM_VECTORS):
    self.num_options = num_options
    self.verbalizer = tuple(ss.MultipleChoiceNextSegment.LETTERS[:num_options])

  def is_anchor(self, doc, i):
    return True

  def build(self, doc, i, label, sampler):
    query = doc.segments[i]
    gold = sampler.same_cluster(doc, i, avoid={query})
    if gold is None:
      return None
    avoid, used, distractors = {query, gold}, [], []
    for _ in range(self.num_options - 1):
      d, c = sampler.other_cluster(doc.cluster_ids[i], avoid, used)
      if d is None:
        return None
      distractors.append(d)
      avoid.add(d)
      used.append(c)
    options = [distractors[k] for k in sampler.rng.permutation(len(distractors))]
    options.insert(label, gold)
    rendered = ' '.join(f'{letter}. {ss._terminated(o)}'  # pylint: disable=protected-access
                        for letter, o in zip(self.verbalizer, options))
    return f'{ss._as_question(query)} {rendered} Answer: {ss.MASK}'  # pylint: disable=protected-access


ANCHOR_FORMATS = {
    'nsp_yes_maybe_no': ss.NextSentenceYesMaybeNo,
    'sp_same_cluster': SameClusterPair,
    'mc_next_segment': lambda: ss.MultipleChoiceNextSegment(num_options=NUM_VECTORS),
    'mc_same_cluster': MultipleChoiceSameCluster,
}


def centroid_template(sentence: str, num_ways: int = NUM_VECTORS) -> str:
  """(e) ``"s0? A. <µ> B. <µ> C. <µ> D. <µ>. Answer: <extra_id_0>"`` with ⟨µ⟩ = `VECTOR_PLACEHOLDER`."""
  options = ' '.join(f'{letter}. {VECTOR_PLACEHOLDER}' for letter in LETTERS[:num_ways])
  return f'{ss._as_question(sentence)} {options}. Answer: {ss.MASK}'  # pylint: disable=protected-access


def _record(fmt: str, task_id: str, role: str, inputs: str, label: int, anchor: str, cluster: int,
            target_style: str) -> Dict[str, Any]:
  choices = [ss.target_text(w, target_style) for w in VERBALIZERS[fmt]]
  return {'format': fmt, 'meta_task': task_id, 'role': role, 'inputs_pretokenized': inputs,
          'targets_pretokenized': choices[label], 'answer_choices': choices, 'label': int(label),
          'anchor': anchor, 'anchor_cluster': int(cluster)}


def _emit_task(fmt, task_id, items, cfg) -> Iterator[Dict[str, Any]]:
  for n, item in enumerate(items):
    role = 'support' if n < cfg.support_size else 'query'
    rec = _record(fmt, task_id, role, item['inputs'], item['label'], item['anchor'], item['cluster'],
                  cfg.target_style)
    rec.update({k: v for k, v in item.items() if k not in ('inputs', 'label', 'anchor', 'cluster')})
    yield rec


def _anchor_tasks(fmt_name: str, docs: Sequence[ss.Document], rng, cfg, prefix: str
                  ) -> Iterator[Dict[str, Any]]:
  fmt = ANCHOR_FORMATS[fmt_name]()
  sampler = ClusterSampler(rng, docs)
  labels = _Labels(rng, len(fmt.verbalizer))
  n_tasks = 0
  for c in sampler.clusters:
    anchors = [m for m in sampler.members[c] if fmt.is_anchor(docs[m[0]], m[1])]
    current: List[Dict[str, Any]] = []
    for k in rng.permutation(len(anchors)):
      d, i = anchors[int(k)]
      label = labels.peek()
      inputs = fmt.build(docs[d], i, label, sampler)
      if inputs is None:
        continue
      labels.pop()
      current.append({'inputs': inputs, 'label': label, 'anchor': docs[d].segments[i], 'cluster': c})
      if len(current) == cfg.task_size:
        yield from _emit_task(fmt_name, f'{prefix}-{n_tasks:06d}', current, cfg)
        n_tasks += 1
        current = []
    labels.push_back([item['label'] for item in current])


def _centroid_tasks(docs: Sequence[ss.Document], centroids: np.ndarray, rng, cfg, prefix: str, vocab,
                    ph_id: int) -> Iterator[Dict[str, Any]]:
  sampler = ClusterSampler(rng, docs)
  n_segments = sum(len(d.segments) for d in docs)
  n_tasks = cfg.cls_tasks if cfg.cls_tasks is not None else n_segments // cfg.task_size
  labels = ss.BalancedLabels(rng, NUM_VECTORS)
  made = 0
  for _ in range(n_tasks):
    slots = [labels.pop() for _ in range(cfg.task_size)]
    need = np.bincount(slots, minlength=NUM_VECTORS)
    eligible = [c for c in sampler.clusters if len(sampler.members[c]) >= need.max()]
    if len(eligible) < NUM_VECTORS:
      break  # Too few large clusters in this bucket for another task.
    classes = [eligible[int(k)] for k in rng.choice(len(eligible), NUM_VECTORS, replace=False)]
    picks = {letter: list(rng.permutation(len(sampler.members[c]))) for letter, c in enumerate(classes)}
    vectors = centroids[classes].astype(np.float32)
    items = []
    for label in slots:
      member = sampler.members[classes[label]][int(picks[label].pop())]
      sentence = sampler.text(member)
      inputs = centroid_template(sentence)
      ids = np.asarray(vocab.encode(inputs))
      positions = np.flatnonzero(ids == ph_id)
      if len(positions) != NUM_VECTORS:
        raise DataError(f'SUPMER construction: {inputs!r} tokenizes to {len(positions)} placeholders, expected '
                        f'{NUM_VECTORS}; the corpus contains the placeholder text {VECTOR_PLACEHOLDER}.')
      items.append({'inputs': inputs, 'label': label, 'anchor': sentence, 'cluster': classes[label],
                    'option_clusters': [int(c) for c in classes], 'encoder_input_vectors': vectors,
                    'encoder_input_vector_positions': [int(p) for p in positions]})
    yield from _emit_task(VECTOR_FORMAT, f'{prefix}-{made:06d}', items, cfg)
    made += 1


def build_bucket(split: str, bucket: int, docs: Sequence[ss.Document], centroids: np.ndarray,
                 cfg: ConstructConfig, vocab) -> Iterator[Dict[str, Any]]:
  """All records of one build bucket (documents with `cluster_ids`), format by format."""
  docs = sorted(docs, key=lambda d: d.doc_id)
  ph_id = placeholder_id(vocab)
  for fmt in cfg.formats:
    rng = np.random.default_rng([cfg.seed, zlib.crc32(split.encode()), bucket, zlib.crc32(fmt.encode())])
    prefix = f'{fmt}-{split}-b{bucket:04d}'
    if fmt == VECTOR_FORMAT:
      yield from _centroid_tasks(docs, centroids, rng, cfg, prefix, vocab, ph_id)
    else:
      yield from _anchor_tasks(fmt, docs, rng, cfg, prefix)


def to_tf_example(rec: Dict[str, Any]) -> bytes:
  import tensorflow as tf
  def b(vals):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode('utf-8') for v in vals]))
  def i(vals):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in vals]))
  feats = {k: b([rec[k]]) for k in ('inputs_pretokenized', 'targets_pretokenized', 'meta_task', 'role',
                                    'format', 'anchor')}
  feats['answer_choices'] = b(rec['answer_choices'])
  feats['label'] = i([rec['label']])
  feats['anchor_cluster'] = i([rec['anchor_cluster']])
  if 'encoder_input_vectors' in rec:
    feats['option_clusters'] = i(rec['option_clusters'])
    feats['encoder_input_vector_positions'] = i(rec['encoder_input_vector_positions'])
    feats['encoder_input_vectors'] = tf.train.Feature(float_list=tf.train.FloatList(
        value=np.asarray(rec['encoder_input_vectors'], np.float32).reshape(-1).tolist()))
  return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString(deterministic=True)


def _bucket_of(doc_id: str, n: int) -> int:
  return int(hashlib.md5(doc_id.encode('utf-8')).hexdigest(), 16) % n


# ---------------------------------------------------------------------------------------------------
# Beam.


def _beam():
  try:
    import apache_beam as beam  # pylint: disable=import-outside-toplevel
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise DataError('SUPMER construction needs Apache Beam: pip install -c requirements/constraints.txt '
                    'apache-beam (see requirements/constraints.txt for the pinned version).') from e
  return beam


def _make_dofns():
  beam = _beam()

  class ReadDocuments(beam.DoFn):
    """file path -> ((split, doc_id), Document) for every document of the file."""

    def __init__(self, cfg: ConstructConfig):
      self.cfg = cfg

    def setup(self):
      self.corpus = _corpus(self.cfg)

    def process(self, item):
      split, path = item
      for doc in self.corpus.read_file(path, split):
        yield (split, doc.doc_id), doc

  class EmbedSegments(beam.DoFn):
    """Batches of ((split, doc_id, index), text) -> ((split, doc_id, index), embedding [d] float32)."""

    def __init__(self, cfg: ConstructConfig, vocab_path: str):
      self.cfg, self.vocab_path = cfg, vocab_path

    def setup(self):
      self.vocab = load_vocabulary(self.vocab_path)
      self.params, self.embed = t5_embedder(self.cfg.model_size, self.cfg.checkpoint_path, self.cfg.init_seed)

    def process(self, batch):
      keys = [k for k, _ in batch]
      tokens = encoder_tokens(self.vocab, [t for _, t in batch], self.cfg.embed_length,
                              self.cfg.embed_batch_size)
      emb = np.asarray(self.embed(self.params, tokens))
      for r, key in enumerate(keys):
        yield key, emb[r].astype(np.float32)

  class BuildBucket(beam.DoFn):
    """((split, bucket), [(doc_id, segments, clusters)]) -> records (dicts)."""

    def __init__(self, cfg: ConstructConfig, vocab_path: str):
      self.cfg, self.vocab_path = cfg, vocab_path

    def setup(self):
      self.vocab = load_vocabulary(self.vocab_path)

    def process(self, item, centroids):
      (split, bucket), docs = item
      docs = [ss.Document(doc_id, tuple(segs), tuple(int(c) for c in clusters))
              for doc_id, segs, clusters in docs]
      for rec in build_bucket(split, bucket, docs, centroids, self.cfg, self.vocab):
        rec['split'] = split
        yield rec

  return ReadDocuments, EmbedSegments, BuildBucket


def _corpus(cfg: ConstructConfig) -> ss.DocumentCorpus:
  return ss.DocumentCorpus(cfg.corpus_dir, task='SUPMER construction', family='text',
                           validation_fraction=cfg.validation_fraction, segment_unit=cfg.segment_unit,
                           max_segment_words=cfg.max_segment_words)


def _stats_fn():
  beam = _beam()

  class Stats(beam.CombineFn):
    def create_accumulator(self):
      return {}

    def add_input(self, acc, rec):
      s = acc.setdefault(rec['format'], {}).setdefault(rec['split'], {'examples': 0, 'labels': {}, 'tasks': set(),
                                                                        'roles': {}})
      s['examples'] += 1
      s['labels'][rec['targets_pretokenized']] = s['labels'].get(rec['targets_pretokenized'], 0) + 1
      s['roles'][rec['role']] = s['roles'].get(rec['role'], 0) + 1
      s['tasks'].add(rec['meta_task'])
      return acc

    def merge_accumulators(self, accs):
      out = {}
      for acc in accs:
        for f, splits in acc.items():
          for sp, s in splits.items():
            o = out.setdefault(f, {}).setdefault(sp, {'examples': 0, 'labels': {}, 'tasks': set(), 'roles': {}})
            o['examples'] += s['examples']
            o['tasks'] |= s['tasks']
            for key in ('labels', 'roles'):
              for k, v in s[key].items():
                o[key][k] = o[key].get(k, 0) + v
      return out

    def extract_output(self, acc):
      return {f: {sp: {'examples': s['examples'], 'labels': dict(sorted(s['labels'].items())),
                       'roles': dict(sorted(s['roles'].items())), 'tasks': len(s['tasks'])}
                  for sp, s in splits.items()} for f, splits in acc.items()}

  return Stats()


def _preflight(cfg: ConstructConfig) -> Dict[str, List[str]]:
  """Readable errors before any work; returns the corpus files of each split."""
  import tensorflow as tf
  cfg.validate()
  if not tf.io.gfile.isdir(cfg.corpus_dir):
    raise DataError(f'SUPMER construction: corpus_dir {cfg.corpus_dir} does not exist. Pass '
                    f'--corpus_dir=<a directory of *.txt (one document each) / *.jsonl ("text" field) files>, '
                    f'e.g. promptjax/tasks/data/text.')
  corpus = _corpus(cfg)
  files = {}
  for split in SPLITS:
    try:
      files[split] = list(corpus.files(split))
    except DataError:
      raise DataError(f'SUPMER construction: corpus_dir {cfg.corpus_dir} has no documents for split {split!r} '
                      f'(looked for *.txt and *.jsonl recursively; layout {corpus.layout}). Pass '
                      f'--corpus_dir=<a directory with documents>, e.g. promptjax/tasks/data/text.') from None
  if tf.io.gfile.exists(cfg.output_dir):
    if not tf.io.gfile.isdir(cfg.output_dir):
      raise DataError(f'SUPMER construction: output_dir {cfg.output_dir} is a file; pass --output_dir=<a directory>.')
    present = tf.io.gfile.listdir(cfg.output_dir)
    if present and not cfg.overwrite:
      raise DataError(f'SUPMER construction: output_dir {cfg.output_dir} is not empty ({len(present)} entries); '
                      f'pass an empty or new --output_dir, or --overwrite to replace an earlier construction.')
    if present and cfg.overwrite:
      known = set(FORMAT_NAMES) | {MANIFEST, 'centroids.npy'}
      stray = [p.rstrip('/') for p in present if p.rstrip('/') not in known]
      if stray:
        raise DataError(f'SUPMER construction: --overwrite only replaces an earlier construction, but '
                        f'{cfg.output_dir} also holds {stray[:3]}; pass another --output_dir.')
      for p in present:
        full = f'{cfg.output_dir.rstrip("/")}/{p.rstrip("/")}'
        (tf.io.gfile.rmtree if tf.io.gfile.isdir(full) else tf.io.gfile.remove)(full)
  tf.io.gfile.makedirs(cfg.output_dir)
  return files


def construct(cfg: ConstructConfig, pipeline_options=None) -> dict:
  """Runs the pipeline (DirectRunner unless `pipeline_options` says otherwise); returns the manifest."""
  beam = _beam()
  import tensorflow as tf
  files = _preflight(cfg)
  vocab_path = task_config.get_vocabulary_path(cfg.vocab_name)
  if not vocab_path.startswith('gs://') and not tf.io.gfile.exists(vocab_path):
    raise DataError(f'SUPMER construction: vocabulary {cfg.vocab_name!r} file {vocab_path} does not exist; set '
                    f'{task_config.VOCAB_ENV_VARS[cfg.vocab_name]}=/path/to/spiece.model.')
  if pipeline_options is None:
    from apache_beam.options.pipeline_options import PipelineOptions
    pipeline_options = PipelineOptions(['--runner=DirectRunner'])
  ReadDocuments, EmbedSegments, BuildBucket = _make_dofns()
  out = cfg.output_dir.rstrip('/')
  n_buckets = int(cfg.num_build_shards)

  with beam.Pipeline(options=pipeline_options) as p:
    docs = (p | 'Files' >> beam.Create([(s, f) for s in SPLITS for f in files[s]])
            | 'Reshuffle' >> beam.Reshuffle()
            | 'Read' >> beam.ParDo(ReadDocuments(cfg)))
    segments = docs | 'Segments' >> beam.FlatMap(
        lambda kv: [((kv[0][0], kv[0][1], i), s) for i, s in enumerate(kv[1].segments)])
    embeddings = (segments
                  | 'Batch' >> beam.BatchElements(min_batch_size=cfg.embed_batch_size,
                                                  max_batch_size=cfg.embed_batch_size)
                  | 'Embed' >> beam.ParDo(EmbedSegments(cfg, vocab_path)))
    train = embeddings | 'Train' >> beam.Filter(lambda kv: kv[0][0] == 'train')
    if cfg.kmeans_sample_size:
      sample = train | 'Sample' >> beam.combiners.Sample.FixedSizeGlobally(int(cfg.kmeans_sample_size))
    else:
      sample = train | 'All' >> beam.combiners.ToList()
    centroids = sample | 'KMeans' >> beam.Map(
        lambda kvs: fit_kmeans(np.stack([v for _, v in sorted(kvs, key=lambda kv: kv[0])]), cfg))
    cent = beam.pvalue.AsSingleton(centroids)
    clustered = (embeddings
                 | 'Assign' >> beam.Map(lambda kv, c: ((kv[0][0], kv[0][1]), (kv[0][2], nearest_centroid(kv[1], c))),
                                        c=cent)
                 | 'ByDoc' >> beam.GroupByKey())
    doc_records = (
        {'doc': docs, 'clusters': clustered} | 'Join' >> beam.CoGroupByKey()
        | 'Doc' >> beam.Map(lambda kv: ((kv[0][0], _bucket_of(kv[0][1], n_buckets)),
                                        (kv[0][1], list(kv[1]['doc'])[0].segments,
                                         [c for _, c in sorted(list(kv[1]['clusters'])[0])])))
        | 'ByBucket' >> beam.GroupByKey())
    records = doc_records | 'Build' >> beam.ParDo(BuildBucket(cfg, vocab_path), cent)
    written = []
    for fmt in cfg.formats:
      for split in SPLITS:
        written.append(
            records
            | f'Select_{fmt}_{split}' >> beam.Filter(lambda r, f=fmt, s=split: r['format'] == f and r['split'] == s)
            | f'Serialize_{fmt}_{split}' >> beam.Map(to_tf_example)
            | f'Write_{fmt}_{split}' >> beam.io.WriteToTFRecord(
                f'{out}/{fmt}/{split}', file_name_suffix='.tfrecord', num_shards=int(cfg.num_output_shards),
                shard_name_template='-SSSSS-of-NNNNN'))
    files_written = (written | 'AllFiles' >> beam.Flatten() | 'FileList' >> beam.combiners.ToList())
    stats = records | 'Stats' >> beam.CombineGlobally(_stats_fn())
    _ = (p | 'One' >> beam.Create([None])
         | 'Manifest' >> beam.Map(_write_manifest, cfg=cfg, centroids=cent,
                                  stats=beam.pvalue.AsSingleton(stats),
                                  written=beam.pvalue.AsSingleton(files_written)))
  from promptjax.supmer import tasks as supmer_tasks
  supmer_tasks.write_indexes(out)   # after the manifest: optional, a run without it indexes at its start
  return read_manifest(out)


def _write_manifest(_, cfg, centroids, stats, written):
  import tensorflow as tf
  out = cfg.output_dir.rstrip('/')
  buf = io.BytesIO()
  np.save(buf, np.asarray(centroids, np.float32))
  with tf.io.gfile.GFile(f'{out}/centroids.npy', 'wb') as f:
    f.write(buf.getvalue())
  manifest = {
      'formats': list(cfg.formats),
      'verbalizers': {f: list(VERBALIZERS[f]) for f in cfg.formats},
      'num_clusters': int(cfg.num_clusters),
      'embedding_dim': int(np.asarray(centroids).shape[1]),
      'vocab_name': cfg.vocab_name,
      'vector_placeholder': VECTOR_PLACEHOLDER,
      'splits': {f: {s: stats.get(f, {}).get(s, {'examples': 0, 'labels': {}, 'roles': {}, 'tasks': 0})
                     for s in SPLITS} for f in cfg.formats},
      'files': sorted(os.path.relpath(w, out) if not w.startswith('gs://') else w[len(out) + 1:]
                      for w in written),
      'config': dataclasses.asdict(cfg),
  }
  with tf.io.gfile.GFile(f'{out}/{MANIFEST}', 'w') as f:
    f.write(json.dumps(manifest, indent=1, sort_keys=True))
  return manifest


def read_manifest(output_dir: str) -> dict:
  from promptjax.supmer.tasks import load_manifest
  return load_manifest(output_dir, 'SUPMER construction')


def main(argv: Optional[Sequence[str]] = None) -> int:
  """``python -m promptjax.supmer.construct --corpus_dir=... --output_dir=... [--mini] [beam flags]``."""
  parser = argparse.ArgumentParser(prog='python -m promptjax.supmer.construct',
                                   description='Build SUPMER anchor meta-tasks (Beam); unknown flags go to Beam.')
  parser.add_argument('--mini', action='store_true', help='the bundled-corpus preset (mini vocab and model)')
  defaults = ConstructConfig()
  for field in dataclasses.fields(ConstructConfig):
    if field.name in ('formats', 'overwrite'):
      continue
    default = getattr(defaults, field.name)
    kind = int if isinstance(default, int) and not isinstance(default, bool) else (
        float if isinstance(default, float) else str)
    if field.name in ('max_segment_words', 'kmeans_sample_size', 'cls_tasks'):
      kind = int
    parser.add_argument(f'--{field.name}', type=kind, default=None)
  parser.add_argument('--formats', default=None, help=f'comma-separated subset of {",".join(FORMAT_NAMES)}')
  parser.add_argument('--overwrite', action='store_true')
  parser.add_argument('--write_index', action='store_true',
                      help="only (re)write the record indexes of the construction in --output_dir")
  parser.add_argument('--gin_file', action='append', default=[],
                      help='gin files binding ConstructConfig (flags given here take precedence)')
  parser.add_argument('--gin_bindings', action='append', default=[],
                      help='e.g. "promptjax.supmer.construct.ConstructConfig.num_clusters = 100"')
  args, beam_args = parser.parse_known_args(argv)
  if args.write_index:
    from promptjax.supmer import tasks as supmer_tasks
    try:
      written = supmer_tasks.write_indexes(args.output_dir or '')
    except DataError as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
    print(f'wrote {len(written)} record indexes in {args.output_dir}')
    return 0
  bound = {}
  if args.gin_file or args.gin_bindings:   # gin at this edge only: ConstructConfig's bindings
    import gin
    try:
      gin.external_configurable(ConstructConfig, module='promptjax.supmer.construct')
    except ValueError:
      pass   # registered by an earlier call in this process
    gin.parse_config_files_and_bindings(args.gin_file, args.gin_bindings, finalize_config=False)
    bound = dict(gin.get_bindings('promptjax.supmer.construct.ConstructConfig'))
  given = {**bound, **{k: v for k, v in vars(args).items()
                       if v is not None and k not in ('mini', 'formats', 'overwrite', 'gin_file', 'gin_bindings',
                                                      'write_index')}}
  if args.formats:
    given['formats'] = tuple(f.strip() for f in args.formats.split(',') if f.strip())
  if args.overwrite:
    given['overwrite'] = True
  try:
    if args.mini:
      cfg = mini_config(given.pop('output_dir', ''), **given)
    else:
      cfg = ConstructConfig(**given)
    from apache_beam.options.pipeline_options import PipelineOptions
    options = PipelineOptions(beam_args or ['--runner=DirectRunner'])
    manifest = construct(cfg, options)
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  counts = {f: {s: v['tasks'] for s, v in m.items()} for f, m in manifest['splits'].items()}
  print(f'wrote {cfg.output_dir}: K={manifest["num_clusters"]}, tasks {json.dumps(counts)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
