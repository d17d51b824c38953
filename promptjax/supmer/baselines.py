"""The prompt-initialization baselines SUPMER compares with (Pan et al. 2023, §4.2, App. B,
C.2): PPT, Unified-PPT and MetaPT as seqio tasks / mixtures for ``promptjax train`` (vanilla PT needs no
data: ``promptjax/configs/paper/pan2023_base_pt.gin`` prompt-tunes a fresh prompt with the downstream protocol).

PPT (Gu et al. 2022) -- mixture ``ppt_pretrain`` (vocabulary t5) / ``mini_ppt_pretrain`` (mini)
------------------------------------------------------------------------------------------------
Prompt-only multi-task pre-training on the three PPT formats, read from the SUPMER construction output
(data family ``supmer``, `promptjax.supmer.tasks`), equal rates:

* sentence pair: ``supmer_nsp_yes_maybe_no`` (PPT's 3-class next sentence prediction, as it is);
* multiple choice: ``supmer_mc_next_segment`` (PPT's next sentence selection, 4 options, as it is);
* single sentence: ``ppt_cls_cluster_exemplar`` (`EXEMPLAR_FORMAT`), the stand-in for PPT's single-text
  classification. DEVIATION: PPT labels single sentences with a sentiment model trained on Yelp-5
  (pseudo labels, 5 classes), which we cannot ship; we use SUPMER's single-sentence cluster format (e)
  instead (which centroid is the sentence's cluster). Its construction records carry the four centroids as
  input *vectors*, which ``promptjax train``'s seqio path drops (it keeps the four token features), so
  this task renders each option as TEXT: the cluster's *exemplar*, a sentence of that cluster from the
  same split (`exemplar_table`: per cluster, the distinct anchors of the split's format-(e) records
  ordered by md5 of their text, the first one that is not the example's own sentence). Template as
  format (d)::

      "{s0 as a question} A. {e1} B. {e2} C. {e3} D. {e4} Answer: <extra_id_0>"   -> A | B | C | D

  The exemplar is a deterministic pseudo-random member, not the medoid (the construction stores no
  sentence embeddings).

PPT trains one prompt per format and picks it by the downstream task's format; SUPMER's description
("pre-trains soft prompts ... with 3 formats") and this mixture train one prompt on all three. Train a
per-format prompt with MIXTURE_OR_TASK_NAME = one of the three tasks.

Unified-PPT -- mixture ``unified_ppt_pretrain`` / ``mini_unified_ppt_pretrain``
------------------------------------------------------------------------------
Every format rewritten into PPT's unified multiple-choice form. The template follows the released PPT
code (thu-coai/PPT ``tools/preprocess_pretrain_data_nss_uni.py`` and the ``*DatasetUni`` downstream
readers: ``context ? A . option . B . option . ? The correct one is <X>``, target the letter), written as
text (`unified_inputs`)::

    "{context} A. {o1} B. {o2} ... ? The correct one is <extra_id_0>"      -> the gold option's letter

each option terminated by ``.`` unless it ends in sentence punctuation. Per format (`UNIFIED_FORMATS`):

* ``nsp_yes_maybe_no``: context ``"{s1 as a question} {s2}"`` (PPT's ``hypothesis ? premise .``),
  options ``yes / no / maybe`` (A / B / C, SUPMER's label order);
* ``sp_same_cluster``: the same with ``yes / no``;
* ``mc_next_segment``, ``mc_same_cluster``: the record's own question and lettered options;
* ``cls_cluster_centroid``: the question and the four cluster exemplars (see PPT above).

Tasks ``unified_ppt_<format>`` / ``mini_unified_ppt_<format>`` for all five formats; the mixture covers
the three PPT formats (nsp_yes_maybe_no, mc_next_segment, cls_cluster_centroid). Targets follow the
construction's ``target_style`` (`self_supervised.target_text`). Letters are single T5 pieces; PPT's
pre-training varies the number of options (2-16) per document, ours is fixed per format.

MetaPT (Huang et al. 2022) -- mixture ``metapt_yelp5`` / ``mini_metapt_yelp5``
------------------------------------------------------------------------------
Prompt-only MAML on labelled data clustered into tasks. `build_metapt` (``python -m
promptjax.supmer.baselines metapt --yelp_dir=... --output_dir=...``, plain Python) reads the Yelp
Review Full release (Zhang et al. 2015: ``train.csv`` / ``test.csv``, headerless, two quoted columns
``"label","text"``, labels 1-5, newlines inside a review written as the two characters ``\\n``), embeds
every review with the T5 encoder exactly as the SUPMER construction does (`supmer_construct.encoder_tokens`
+ `supmer_construct.mean_pool` over the encoder of `promptjax.checkpoints.restore.load_params`), clusters the
train reviews with `supmer_construct.fit_kmeans` (seeded) and assigns every review (test too) to its
`supmer_construct.nearest_centroid`. Each cluster is one task of the 5-class sentiment format::

    "{review} It was <extra_id_0>."   ->  <extra_id_0> terrible | bad | okay | good | great   (labels 1..5)

(PPT's single-sentence template; the verbalizers are single T5 pieces; the target is the word at the
sentinel, ``<extra_id_0> word``, the form of the downstream targets it is compared on). Splits: ``train`` and
``validation`` from train.csv by md5 of (line number, text) (``validation_fraction``, default 5%, as
SUPMER App. C.2), ``test`` from test.csv when present. Within a cluster and split the labels are balanced
by downsampling every label to the cluster's rarest one (``balance=True``; seeded), so a task's label prior
carries no information. Output (data family ``metapt``: ``PROMPTJAX_METAPT_DIR`` /
``set_data_dir('metapt', ...)`` / ``configure_data.metapt_dir``)::

    manifest.json, centroids.npy, <split>/cluster-KKKKK.tfrecord (tf.train.Example)

Tasks ``metapt_yelp5_cKKK`` (vocabulary t5, K = `METAPT_NUM_CLUSTERS`) and ``mini_metapt_yelp5_cKKK``
(mini, `MINI_METAPT_NUM_CLUSTERS`); the mixture over them is what `promptjax.data.meta_sampler` draws one task
per clone from (``task_per='clone'``, uniform). A build with another K needs
``register_metapt_tasks(num_clusters=K)``; a task refuses a directory built with another K or vocabulary.
Pan et al. 2023 (App. C.2), following Huang et al. 2022, "group all labeled data into 10 clusters through
K-means": `METAPT_NUM_CLUSTERS` = 10.

Public API: `PPT_FORMATS`, `EXEMPLAR_FORMAT`, `UNIFIED_FORMATS`, `unified_inputs`, `unified_record`,
`exemplar_table`, `exemplar_record`, `register_ppt_tasks`, `MetaptConfig`, `read_yelp_csv`, `embed_texts`,
`build_metapt`, `register_metapt_tasks`, `METAPT_VERBALIZER`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import sys
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import seqio

from promptjax.tasks import config
from promptjax.tasks import self_supervised as ss
from promptjax.supmer import tasks as supmer
from promptjax.tasks.config import DataError

MASK = ss.MASK
LETTERS = supmer.LETTERS
EXEMPLAR_FORMAT = 'cls_cluster_exemplar'
PPT_FORMATS = ('nsp_yes_maybe_no', 'mc_next_segment', EXEMPLAR_FORMAT)
UNIFIED_FORMATS = supmer.FORMAT_NAMES
UNIFIED_MIXTURE_FORMATS = ('nsp_yes_maybe_no', 'mc_next_segment', 'cls_cluster_centroid')
UNIFIED_TAIL = f'? The correct one is {MASK}'
_MC_TAIL = f' Answer: {MASK}'
_KEEP = ('inputs_pretokenized', 'targets_pretokenized', 'answer_choices', 'meta_task', 'role', 'format',
         'label', 'anchor', 'anchor_cluster')


# ---------------------------------------------------------------------------------------------------
# Templates (pure Python).


def unified_inputs(context: str, options: Sequence[str]) -> str:
  """PPT's unified multiple-choice form: ``"{context} A. {o1} B. {o2} ... ? The correct one is <extra_id_0>"``."""
  rendered = ' '.join(f'{letter}. {ss._terminated(o)}'  # pylint: disable=protected-access
                      for letter, o in zip(LETTERS + tuple('EFGHIJ'), options))
  return f'{context} {rendered} {UNIFIED_TAIL}'


def _pair_second(inputs: str, anchor: str) -> str:
  head = f'{anchor} {MASK}. '
  if not inputs.startswith(head):
    raise DataError(f'sentence-pair record {inputs!r} does not start with its anchor and {MASK}; '
                    f'the SUPMER construction output is not of this version.')
  return inputs[len(head):]


def exemplar_options(option_clusters: Sequence[int], anchor: str, table: Mapping[int, Sequence[str]]
                     ) -> List[str]:
  """The exemplar sentence of each option cluster: the first of the cluster's exemplars that is not the
  example's own sentence (the table holds two per cluster, so one always differs when the cluster has two
  distinct sentences)."""
  out = []
  for c in option_clusters:
    cands = [t for t in table.get(int(c), ()) if t != anchor]
    if not cands:
      raise DataError(f'cluster {int(c)} has no exemplar sentence other than {anchor!r}; the construction '
                      f'is too small for the exemplar rendering of {supmer.VECTOR_FORMAT}.')
    out.append(cands[0])
  return out


def exemplar_record(anchor: str, option_clusters: Sequence[int], label: int,
                    table: Mapping[int, Sequence[str]]) -> Tuple[str, int]:
  """(inputs, label) of the PPT single-sentence stand-in ``cls_cluster_exemplar``."""
  ex = exemplar_options(option_clusters, anchor, table)
  rendered = ' '.join(f'{letter}. {ss._terminated(o)}'  # pylint: disable=protected-access
                      for letter, o in zip(LETTERS, ex))
  return f'{ss._as_question(anchor)} {rendered} Answer: {MASK}', int(label)  # pylint: disable=protected-access


def unified_record(fmt: str, inputs: str, anchor: str, label: int,
                   option_clusters: Optional[Sequence[int]] = None,
                   table: Optional[Mapping[int, Sequence[str]]] = None) -> Tuple[str, str, Tuple[str, ...]]:
  """(inputs, gold letter, letters) of a SUPMER record of format `fmt` in the unified form."""
  if fmt in ('nsp_yes_maybe_no', 'sp_same_cluster'):
    s2 = _pair_second(inputs, anchor)
    context = f'{ss._as_question(anchor)} {s2}'  # pylint: disable=protected-access
    words = supmer.VERBALIZERS[fmt]
    return unified_inputs(context, words), LETTERS[label], LETTERS[:len(words)]
  if fmt in ('mc_next_segment', 'mc_same_cluster'):
    if not inputs.endswith(_MC_TAIL):
      raise DataError(f'multiple-choice record {inputs!r} does not end in {_MC_TAIL!r}.')
    return f'{inputs[:-len(_MC_TAIL)]} {UNIFIED_TAIL}', LETTERS[label], LETTERS
  if fmt == supmer.VECTOR_FORMAT:
    ex = exemplar_options(option_clusters, anchor, table or {})
    return (unified_inputs(ss._as_question(anchor), ex),  # pylint: disable=protected-access
            LETTERS[label], LETTERS)
  raise ValueError(f'unknown SUPMER format {fmt!r}; formats: {supmer.FORMAT_NAMES}')


# ---------------------------------------------------------------------------------------------------
# Exemplars and the seqio plumbing.

_TABLES: Dict[tuple, Dict[int, List[str]]] = {}


def _md5(text: str) -> str:
  return hashlib.md5(text.encode('utf-8')).hexdigest()


def exemplar_table(root: str, split: str, per_cluster: int = 2) -> Dict[int, List[str]]:
  """cluster -> its exemplars: the distinct anchors of ``<root>/cls_cluster_centroid/<split>-*`` in md5
  order, the first `per_cluster` (cached per construction and split)."""
  import tensorflow as tf
  manifest = supmer.load_manifest(root)
  key = (root, split, per_cluster, json.dumps(manifest, sort_keys=True))
  if key in _TABLES:
    return _TABLES[key]
  files = sorted(tf.io.gfile.glob(f'{root.rstrip("/")}/{supmer.VECTOR_FORMAT}/{split}-*.tfrecord'))
  if not files:
    raise DataError(f'{root} has no {supmer.VECTOR_FORMAT}/{split}-*.tfrecord; the exemplar rendering needs '
                    f'that format. Build it with {supmer.CONSTRUCT_HINT}.')
  desc = {'anchor': tf.io.FixedLenFeature([], tf.string), 'anchor_cluster': tf.io.FixedLenFeature([], tf.int64)}
  best: Dict[int, Dict[str, str]] = {}
  ds = tf.data.TFRecordDataset(files).map(lambda r: tf.io.parse_single_example(r, desc)).batch(4096)
  for b in ds.as_numpy_iterator():
    for text, c in zip(b['anchor'], b['anchor_cluster']):
      t = text.decode('utf-8')
      best.setdefault(int(c), {})[_md5(t)] = t
  table = {c: [d[h] for h in sorted(d)[:per_cluster]] for c, d in best.items()}
  _TABLES.clear()
  _TABLES[key] = table
  return table


class _SplitTaggedSource(supmer.SupmerSource):
  """`SupmerSource` whose records also carry their ``split`` (the exemplars come from the same split)."""

  def get_dataset(self, split: str = 'train', *args, **kwargs):
    import tensorflow as tf
    ds = super().get_dataset(split, *args, **kwargs)
    return ds.map(lambda ex: {**ex, 'split': tf.constant(split)})


def _style(root: str) -> str:
  return supmer.load_manifest(root).get('config', {}).get('target_style', 'plain')


def _render_preprocessor(kind: str, fmt: str, data_dir_fn: Callable[[], str]):
  """A seqio preprocessor: rewrites inputs/targets/answer_choices of `fmt` records (``kind`` 'unified' or
  'exemplar') and drops the vector features."""
  import tensorflow as tf
  n = len(supmer.VERBALIZERS[fmt]) if fmt in ('nsp_yes_maybe_no', 'sp_same_cluster') else len(LETTERS)

  def py(inputs, anchor, label, split, option_clusters):
    root = data_dir_fn()
    inputs, anchor, split = (x.numpy().decode('utf-8') for x in (inputs, anchor, split))
    label, oc = int(label.numpy()), [int(c) for c in option_clusters.numpy()]
    table = exemplar_table(root, split) if fmt == supmer.VECTOR_FORMAT else None
    if kind == 'unified':
      new, letter, _ = unified_record(fmt, inputs, anchor, label, oc, table)
    else:
      new, _ = exemplar_record(anchor, oc, label, table)
      letter = LETTERS[label]
    return new, ss.target_text(letter, _style(root))

  def preprocess(dataset):
    choices = [ss.target_text(letter, _style(data_dir_fn())) for letter in LETTERS[:n]]

    def f(ex):
      oc = ex['option_clusters'] if 'option_clusters' in ex else tf.zeros([supmer.NUM_VECTORS], tf.int32)
      new, target = tf.py_function(py, [ex['inputs_pretokenized'], ex['anchor'], ex['label'], ex['split'], oc],
                                   [tf.string, tf.string])
      new.set_shape([])
      target.set_shape([])
      out = {k: ex[k] for k in _KEEP}
      out['inputs_pretokenized'], out['targets_pretokenized'] = new, target
      out['answer_choices'] = tf.constant(choices)   # the targets' form
      out['format'] = tf.constant(EXEMPLAR_FORMAT if kind == 'exemplar' else f'unified_{fmt}')
      return out
    return dataset.map(f, num_parallel_calls=1, deterministic=True)
  return preprocess


def _default_supmer_dir() -> str:
  return config.get_data_dir('supmer')


def register_ppt_tasks(prefix: str = '', data_dir_fn: Callable[[], str] = _default_supmer_dir,
                       vocab_name: str = 't5') -> Dict[str, seqio.Task]:
  """Registers ``{prefix}ppt_cls_cluster_exemplar``, ``{prefix}unified_ppt_<format>`` and the mixtures
  ``{prefix}ppt_pretrain`` (over ``{prefix}supmer_nsp_yes_maybe_no``, ``..._mc_next_segment`` and the
  exemplar task) and ``{prefix}unified_ppt_pretrain`` (the unified form of the three PPT formats)."""
  tasks = {}
  post = [supmer._rekey, seqio.preprocessors.tokenize,  # pylint: disable=protected-access
          seqio.preprocessors.append_eos_after_trim]
  specs = [(f'{prefix}ppt_{EXEMPLAR_FORMAT}', 'exemplar', supmer.VECTOR_FORMAT)]
  specs += [(f'{prefix}unified_ppt_{fmt}', 'unified', fmt) for fmt in UNIFIED_FORMATS]
  for name, kind, fmt in specs:
    seqio.TaskRegistry.remove(name)
    tasks[name] = seqio.TaskRegistry.add(
        name, source=_SplitTaggedSource(fmt, data_dir_fn, name, vocab_name),
        preprocessors=[_render_preprocessor(kind, fmt, data_dir_fn), *post],
        output_features=config.output_features(vocab_name), metric_fns=[], shuffle_buffer_size=10_000)
  mixtures = {
      f'{prefix}ppt_pretrain': [f'{prefix}supmer_nsp_yes_maybe_no', f'{prefix}supmer_mc_next_segment',
                                f'{prefix}ppt_{EXEMPLAR_FORMAT}'],
      f'{prefix}unified_ppt_pretrain': [f'{prefix}unified_ppt_{f}' for f in UNIFIED_MIXTURE_FORMATS],
  }
  for name, members in mixtures.items():
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, [(m, 1.0) for m in members])
  return tasks


# ---------------------------------------------------------------------------------------------------
# MetaPT: Yelp-5 clustered into tasks.

METAPT_VERBALIZER = ('terrible', 'bad', 'okay', 'good', 'great')
METAPT_NUM_CLUSTERS = 10
MINI_METAPT_NUM_CLUSTERS = 4
METAPT_SPLITS = ('train', 'validation', 'test')
METAPT_HINT = ('python -m promptjax.supmer.baselines metapt --yelp_dir=<yelp_review_full_csv> '
               '--output_dir=DIR, then PROMPTJAX_METAPT_DIR=DIR (or promptjax.tasks.set_data_dir("metapt", DIR))')


@dataclasses.dataclass
class MetaptConfig:
  """What `build_metapt` reads (recorded in the manifest).

  Attributes:
    yelp_dir: the Yelp Review Full directory (train.csv, optionally test.csv).
    output_dir: where manifest.json, centroids.npy and <split>/cluster-*.tfrecord go (empty or new).
    vocab_name / model_size / checkpoint_path / init_seed: the encoder, as `supmer_construct.ConstructConfig`.
    embed_length / embed_batch_size: the fixed [batch, length] of the embedding step.
    num_clusters: K (one task per cluster). kmeans: 'kmeans' or 'minibatch'.
    max_train_examples: use the first this many train.csv rows (None: all 650k).
    max_review_words: reviews keep their first this many words (so the template survives truncation).
    validation_fraction: share of train.csv rows (by md5) in 'validation'.
    balance: downsample every label of a cluster and split to the rarest one.
    seed: K-means and downsampling seed.
  """
  yelp_dir: str = ''
  output_dir: str = ''
  vocab_name: str = 't5'
  model_size: str = 'base'
  checkpoint_path: Optional[str] = None
  init_seed: int = 0
  embed_length: int = 128
  embed_batch_size: int = 64
  num_clusters: int = METAPT_NUM_CLUSTERS
  kmeans: str = 'kmeans'
  max_train_examples: Optional[int] = None
  max_review_words: int = 200
  validation_fraction: float = ss.DEFAULT_VALIDATION_FRACTION
  balance: bool = True
  seed: int = 0


def read_yelp_csv(path: str, limit: Optional[int] = None) -> List[Tuple[int, str]]:
  """(label 1..5, text) rows of a Yelp Review Full csv (headerless ``"label","text"``; ``\\n`` -> space)."""
  import csv
  import tensorflow as tf
  rows = []
  with tf.io.gfile.GFile(path) as f:
    for n, row in enumerate(csv.reader(f), start=1):
      if limit is not None and len(rows) >= limit:
        break
      if not row:
        continue
      if len(row) != 2 or row[0].strip() not in {'1', '2', '3', '4', '5'}:
        raise DataError(f'{path}:{n}: expected two columns "label","text" with label 1-5 (the Yelp Review Full '
                        f'csv layout), got {row[:2]!r}.')
      text = ' '.join(row[1].replace('\\n', ' ').replace('\\"', '"').split())
      rows.append((int(row[0]), text))
  if not rows:
    raise DataError(f'{path} has no reviews.')
  return rows


_EMBEDDERS: Dict[tuple, tuple] = {}


def _embedder(cfg: MetaptConfig):
  """(vocab, params, jitted embed) for the encoder of `cfg`, built once per encoder setting."""
  key = (cfg.vocab_name, config.get_vocabulary_path(cfg.vocab_name), cfg.model_size, cfg.checkpoint_path,
         cfg.init_seed)
  if key not in _EMBEDDERS:
    from promptjax.supmer import construct as sc
    vocab = sc.load_vocabulary(key[1])
    params, embed = sc.t5_embedder(cfg.model_size, cfg.checkpoint_path, cfg.init_seed)
    _EMBEDDERS.clear()
    _EMBEDDERS[key] = (vocab, params, embed)
  return _EMBEDDERS[key]


def embed_texts(texts: Sequence[str], cfg: MetaptConfig) -> np.ndarray:
  """[n, d] float32 mean-pooled T5-encoder states, as the SUPMER construction's embedding step (same
  tokenization `supmer_construct.encoder_tokens`, pooling `supmer_construct.mean_pool`, fixed batch)."""
  from promptjax.supmer import construct as sc
  vocab, params, embed = _embedder(cfg)
  out = []
  b = int(cfg.embed_batch_size)
  for k in range(0, len(texts), b):
    chunk = list(texts[k:k + b])
    tokens = sc.encoder_tokens(vocab, chunk, cfg.embed_length, b)
    out.append(np.asarray(embed(params, tokens), np.float32)[:len(chunk)])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def metapt_inputs(text: str, max_words: Optional[int] = None) -> str:
  words = text.split()
  if max_words is not None:
    words = words[:max_words]
  return f'{" ".join(words)} It was {MASK}.'


def metapt_answer_choices() -> List[str]:
  """The targets of the five labels: ``<extra_id_0> terrible`` .. ``<extra_id_0> great``."""
  return [ss.target_text(w, 'mask') for w in METAPT_VERBALIZER]


def _example(text: str, label: int, cluster: int, max_words: int) -> bytes:
  import tensorflow as tf
  def b(vals):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode('utf-8') for v in vals]))
  def i(vals):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in vals]))
  choices = metapt_answer_choices()
  feats = {'inputs_pretokenized': b([metapt_inputs(text, max_words)]),
           'targets_pretokenized': b([choices[label - 1]]),
           'answer_choices': b(choices), 'label': i([label - 1]), 'stars': i([label]),
           'cluster': i([cluster]), 'review': b([text])}
  return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString(deterministic=True)


def build_metapt(cfg: MetaptConfig) -> dict:
  """Embeds, clusters and writes the MetaPT tasks (see the module docstring); returns the manifest."""
  import tensorflow as tf
  from promptjax.supmer import construct as sc
  if not cfg.yelp_dir or not cfg.output_dir:
    raise DataError(f'MetaPT build: pass --yelp_dir and --output_dir ({METAPT_HINT}).')
  train_csv = f'{cfg.yelp_dir.rstrip("/")}/train.csv'
  if not tf.io.gfile.exists(train_csv):
    raise DataError(f'MetaPT build: {train_csv} does not exist; --yelp_dir must hold the Yelp Review Full csv '
                    f'files (train.csv, test.csv).')
  if tf.io.gfile.exists(cfg.output_dir) and tf.io.gfile.listdir(cfg.output_dir):
    raise DataError(f'MetaPT build: output_dir {cfg.output_dir} is not empty; pass an empty or new directory.')
  rows = {'train': [], 'validation': []}
  for n, (label, text) in enumerate(read_yelp_csv(train_csv, cfg.max_train_examples)):
    frac = int(_md5(f'{n}\t{text}'), 16) / float(1 << 128)
    rows['validation' if frac < cfg.validation_fraction else 'train'].append((label, text))
  test_csv = f'{cfg.yelp_dir.rstrip("/")}/test.csv'
  rows['test'] = read_yelp_csv(test_csv) if tf.io.gfile.exists(test_csv) else []
  emb = {s: embed_texts([t for _, t in r], cfg) for s, r in rows.items() if r}
  kcfg = sc.ConstructConfig(corpus_dir=train_csv, num_clusters=cfg.num_clusters, kmeans=cfg.kmeans,
                            seed=cfg.seed)
  centroids = sc.fit_kmeans(emb['train'], kcfg)
  out = cfg.output_dir.rstrip('/')
  stats: Dict[str, Dict[str, Dict[str, int]]] = {}
  for split, r in rows.items():
    if not r:
      continue
    clusters = np.asarray([sc.nearest_centroid(e, centroids) for e in emb[split]])
    tf.io.gfile.makedirs(f'{out}/{split}')
    for k in range(cfg.num_clusters):
      members = np.flatnonzero(clusters == k)
      by_label = {lab: [int(i) for i in members if r[i][0] == lab] for lab in range(1, 6)}
      rng = np.random.default_rng([cfg.seed, sum(map(ord, split)), k])
      if cfg.balance:
        m = min(len(v) for v in by_label.values())
        by_label = {lab: sorted(rng.choice(v, m, replace=False).tolist()) if m else [] for lab, v in by_label.items()}
      keep = sorted(i for v in by_label.values() for i in v)
      keep = [keep[int(j)] for j in rng.permutation(len(keep))]
      with tf.io.TFRecordWriter(f'{out}/{split}/cluster-{k:05d}.tfrecord') as w:
        for i in keep:
          w.write(_example(r[i][1], r[i][0], k, cfg.max_review_words))
      stats.setdefault(split, {})[f'{k:05d}'] = {
          METAPT_VERBALIZER[lab - 1]: len(by_label[lab]) for lab in range(1, 6)}
  buf = io.BytesIO()
  np.save(buf, centroids)
  with tf.io.gfile.GFile(f'{out}/centroids.npy', 'wb') as f:
    f.write(buf.getvalue())
  manifest = {'num_clusters': int(cfg.num_clusters), 'vocab_name': cfg.vocab_name,
              'embedding_dim': int(centroids.shape[1]), 'verbalizer': list(METAPT_VERBALIZER),
              'splits': stats, 'config': dataclasses.asdict(cfg)}
  with tf.io.gfile.GFile(f'{out}/manifest.json', 'w') as f:
    f.write(json.dumps(manifest, indent=1, sort_keys=True))
  return manifest


def _default_metapt_dir() -> str:
  return config.get_data_dir('metapt')


class MetaptSource(seqio.DataSource):
  """Cluster `cluster`'s records ``<data_dir_fn()>/<split>/cluster-KKKKK.tfrecord`` (resolved when read)."""

  def __init__(self, cluster: int, num_clusters: int, data_dir_fn: Callable[[], str], task_name: str,
               vocab_name: str):
    self.cluster, self.num_clusters, self.data_dir_fn = cluster, num_clusters, data_dir_fn
    self.task_name, self.vocab_name = task_name, vocab_name
    super().__init__(splits=METAPT_SPLITS, num_input_examples=None, caching_permitted=True)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    import tensorflow as tf
    try:
      root = self.data_dir_fn().rstrip('/')
    except DataError as e:
      raise DataError(f'Task {self.task_name!r}: {e} Build the data with {METAPT_HINT}.') from None
    path = f'{root}/manifest.json'
    if not tf.io.gfile.exists(path):
      raise DataError(f'Task {self.task_name!r}: {root} has no manifest.json; build it with {METAPT_HINT}.')
    with tf.io.gfile.GFile(path) as f:
      m = json.load(f)
    if m['num_clusters'] != self.num_clusters or m['vocab_name'] != self.vocab_name:
      raise DataError(f'Task {self.task_name!r} expects {self.num_clusters} clusters on vocabulary '
                      f'{self.vocab_name!r}, but {root} holds {m["num_clusters"]} on {m["vocab_name"]!r}; call '
                      f'promptjax.supmer.baselines.register_metapt_tasks(num_clusters='
                      f'{m["num_clusters"]}, ...) or rebuild.')
    f = f'{root}/{split}/cluster-{self.cluster:05d}.tfrecord'
    if split not in METAPT_SPLITS or not tf.io.gfile.exists(f):
      raise DataError(f'Task {self.task_name!r}: no {f} (splits {METAPT_SPLITS}; test only with a test.csv).')
    return [f]

  def get_dataset(self, split: str = 'train', shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1):
    import tensorflow as tf
    desc = {'inputs_pretokenized': tf.io.FixedLenFeature([], tf.string),
            'targets_pretokenized': tf.io.FixedLenFeature([], tf.string),
            'answer_choices': tf.io.FixedLenFeature([len(METAPT_VERBALIZER)], tf.string),
            'label': tf.io.FixedLenFeature([], tf.int64), 'cluster': tf.io.FixedLenFeature([], tf.int64),
            'review': tf.io.FixedLenFeature([], tf.string)}
    ds = tf.data.TFRecordDataset(list(self.list_shards(split)))
    return ds.map(lambda r: tf.io.parse_single_example(r, desc), deterministic=True)


def register_metapt_tasks(name_prefix: str = 'metapt', num_clusters: int = METAPT_NUM_CLUSTERS,
                          vocab_name: str = 't5', data_dir_fn: Callable[[], str] = _default_metapt_dir
                          ) -> Dict[int, seqio.Task]:
  """Registers ``{name_prefix}_yelp5_cKKK`` for K < num_clusters and the mixture ``{name_prefix}_yelp5``."""
  tasks = {}
  for k in range(num_clusters):
    name = f'{name_prefix}_yelp5_c{k:03d}'
    seqio.TaskRegistry.remove(name)
    tasks[k] = seqio.TaskRegistry.add(
        name, source=MetaptSource(k, num_clusters, data_dir_fn, name, vocab_name),
        preprocessors=[supmer._rekey, seqio.preprocessors.tokenize,  # pylint: disable=protected-access
                       seqio.preprocessors.append_eos_after_trim],
        output_features=config.output_features(vocab_name), metric_fns=[], shuffle_buffer_size=10_000)
  mixture = f'{name_prefix}_yelp5'
  seqio.MixtureRegistry.remove(mixture)
  seqio.MixtureRegistry.add(mixture, [(t.name, 1.0) for t in tasks.values()])
  return tasks


def main(argv: Optional[Sequence[str]] = None) -> int:
  """``python -m promptjax.supmer.baselines metapt --yelp_dir=... --output_dir=... [--mini]``."""
  parser = argparse.ArgumentParser(prog='python -m promptjax.supmer.baselines')
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('metapt', help='cluster Yelp-5 into MetaPT tasks')
  p.add_argument('--mini', action='store_true', help='vocabulary and model mini, K=4 (tests, demo)')
  defaults = MetaptConfig()
  for field in dataclasses.fields(MetaptConfig):
    default = getattr(defaults, field.name)
    kind = {bool: lambda s: s.lower() in ('1', 'true', 'yes'), int: int, float: float}.get(type(default), str)
    if field.name in ('max_train_examples',):
      kind = int
    p.add_argument(f'--{field.name}', type=kind, default=None)
  args = parser.parse_args(argv)
  given = {k: v for k, v in vars(args).items() if v is not None and k not in ('command', 'mini')}
  if args.mini:
    given = {**dict(vocab_name='mini', model_size='mini', num_clusters=MINI_METAPT_NUM_CLUSTERS,
                    embed_length=32), **given}
  try:
    manifest = build_metapt(MetaptConfig(**given))
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {given["output_dir"]}: K={manifest["num_clusters"]}, '
        f'{ {s: sum(sum(c.values()) for c in v.values()) for s, v in manifest["splits"].items()} }')
  return 0


PPT_TASKS = register_ppt_tasks()
"""``ppt_cls_cluster_exemplar``, ``unified_ppt_<format>``; mixtures ``ppt_pretrain``, ``unified_ppt_pretrain``."""
MINI_PPT_TASKS = register_ppt_tasks('mini_', vocab_name='mini')
"""The same over the mini construction (``mini_supmer_*``), vocabulary mini."""
METAPT_TASKS = register_metapt_tasks()
MINI_METAPT_TASKS = register_metapt_tasks('mini_metapt', MINI_METAPT_NUM_CLUSTERS, 'mini')

if __name__ == '__main__':
  sys.exit(main())
