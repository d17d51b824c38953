"""`python -m promptjax.tour`: a tour of the foundation on bundled data, on one CPU in about a minute.

1. trains a tiny SentencePiece vocabulary (T5 conventions: pad 0, eos 1, unk 2, 100 extra ids) from the
   sentences below and wraps it in a seqio vocabulary;
2. builds a tiny T5 v1.1 with no prompt, a shallow prompt and a deep prompt, printing parameter counts;
3. scores the answer choices of a few yes/no questions by target log-likelihood (rank classification);
4. tunes only the prompt (optax Adafactor, transformer frozen by a mask) on those questions and shows
   the loss falling and the rank-classification accuracy rising;
5. exports the tuned prompt (.npy / .npz) and the transformer as a Hugging Face directory, re-imports
   it, and checks the logits are unchanged.

The full jobs (continued pretraining, meta-learning, zero-/few-shot evaluation) are `promptjax train`,
`promptjax eval` and `promptjax fewshot`.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

SENTENCES = """\
Question: Is the sky blue on a clear day? Answer: yes
Question: Do fish live in water? Answer: yes
Question: Can a stone fly by itself? Answer: no
Question: Is fire cold? Answer: no
Question: Is snow white? Answer: yes
Question: Do cats bark? Answer: no
Question: Is the sun a star? Answer: yes
Question: Is ice hot? Answer: no
Premise: The cat sat on the mat. Hypothesis: An animal is on the mat. Does the premise entail it?
The weather today is sunny and warm, and many people walk in the park.
A recipe needs flour, water, salt and a little patience.
The river flows past the old mill towards the sea.
"""

QUESTIONS = [('Is the sky blue on a clear day?', 'yes'), ('Can a stone fly by itself?', 'no'),
             ('Is snow white?', 'yes'), ('Is fire cold?', 'no'), ('Do fish live in water?', 'yes'),
             ('Do cats bark?', 'no')]
CHOICES = ('yes', 'no')


def train_vocabulary(out_dir: str, vocab_size: int = 160) -> str:
  import sentencepiece as spm
  text = os.path.join(out_dir, 'vocab_corpus.txt')
  with open(text, 'w') as f:
    f.write(SENTENCES * 4)
  prefix = os.path.join(out_dir, 'demo_spm')
  spm.SentencePieceTrainer.train(
      input=text, model_prefix=prefix, vocab_size=vocab_size, model_type='unigram',
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
      user_defined_symbols=['yes', 'no'], hard_vocab_limit=False, minloglevel=2)
  return prefix + '.model'


def build_batches(vocab, input_len=24, target_len=4):
  """Rank-classification batch: each question expanded into one row per answer choice."""
  enc, tgt, labels = [], [], []
  for q, a in QUESTIONS:
    ids = list(vocab.encode(f'Question: {q} Answer:'))[:input_len - 1] + [1]
    for c in CHOICES:
      t = list(vocab.encode(c))[:target_len - 1] + [1]
      enc.append(ids + [0] * (input_len - len(ids)))
      tgt.append(t + [0] * (target_len - len(t)))
    labels.append(CHOICES.index(a))
  enc, tgt = np.asarray(enc, np.int32), np.asarray(tgt, np.int32)
  choice_batch = {'encoder_input_tokens': enc, 'decoder_target_tokens': tgt}
  gold_rows = np.asarray([2 * i + l for i, l in enumerate(labels)])
  train_batch = {k: v[gold_rows] for k, v in choice_batch.items()}
  return choice_batch, train_batch, np.asarray(labels)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output_dir', default='demo_output')
  parser.add_argument('--steps', type=int, default=60)
  parser.add_argument('--prompt_length', type=int, default=8)
  args = parser.parse_args(argv)
  os.makedirs(args.output_dir, exist_ok=True)

  import jax
  import jax.numpy as jnp
  import optax
  import seqio
  from tqdm.auto import tqdm

  from promptjax.checkpoints import hf as hf_ckpt
  from promptjax.models import PromptConfig, PromptableT5, export_prompt, get_config

  t0 = time.time()
  vocab = seqio.SentencePieceVocabulary(train_vocabulary(args.output_dir), extra_ids=100)
  vocab_size = -(-vocab.vocab_size // 128) * 128
  print(f'[1] vocabulary: {vocab.vocab_size} pieces (+ padding to {vocab_size}); '
        f'"yes" -> {vocab.encode("yes")}, "no" -> {vocab.encode("no")}')
  config = get_config('tiny', vocab_size=vocab_size, emb_dim=32, num_heads=4, head_dim=8,
                      mlp_dim=64)
  choice_batch, train_batch, labels = build_batches(vocab)

  base = PromptableT5(config)
  transformer = base.init_params(jax.random.PRNGKey(0))
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))
  print(f'[2] tiny T5 v1.1: {count(transformer):,} transformer parameters '
        f'({config.num_encoder_layers}+{config.num_decoder_layers} layers, d={config.emb_dim})')

  results = {}
  for kind in ('none', 'shallow', 'deep'):
    model = PromptableT5(config, PromptConfig(kind=kind, length=args.prompt_length))
    params = model.init_params(jax.random.PRNGKey(1), transformer_params=transformer)
    n_prompt = count(params.get('prompt', {}))
    score = jax.jit(lambda p: model.score_batch(p, choice_batch, length_normalize=True))
    acc = lambda p: float(np.mean(np.argmax(np.asarray(score(p)).reshape(-1, 2), -1) == labels))
    print(f'\n[3] prompt={kind:8s} prompt parameters: {n_prompt:,}; '
          f'zero-shot rank-classification accuracy: {acc(params):.2f}')
    if kind == 'none':
      continue
    # Prompt tuning: only the `prompt` subtree is trainable (mask, not gradient surgery).
    labels_tree = {k: ('prompt' if k == 'prompt' else 'frozen') for k in params}
    tx = optax.multi_transform(
        {'prompt': optax.chain(optax.clip_by_global_norm(1.0),
                               optax.adafactor(0.3, multiply_by_parameter_scale=False,
                                               decay_rate=0.8, clipping_threshold=1.0)),
         'frozen': optax.set_to_zero()}, labels_tree)
    opt_state = tx.init(params)

    @jax.jit
    def step(p, s):
      (loss, _), g = jax.value_and_grad(model.loss_fn, has_aux=True)(p, train_batch)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s, loss

    first = None
    for _ in tqdm(range(args.steps), desc=f'    tuning {kind} prompt', leave=False):
      params, opt_state, loss = step(params, opt_state)
      first = float(loss) if first is None else first
    unchanged = all(np.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(transformer),
        jax.tree_util.tree_leaves({k: v for k, v in params.items() if k != 'prompt'})))
    results[kind] = (first, float(loss), acc(params))
    print(f'[4] prompt tuning {args.steps} steps: loss {first:.3f} -> {float(loss):.3f}; '
          f'accuracy after tuning {acc(params):.2f}; transformer unchanged: {unchanged}')
    path = export_prompt(params['prompt'], os.path.join(args.output_dir, f'{kind}_prompt'))
    print(f'    prompt exported to {path}')

  hf_dir = hf_ckpt.export_hf(transformer, config, os.path.join(args.output_dir, 'hf_model'))
  reloaded, _ = hf_ckpt.load_hf_checkpoint(hf_dir)
  diff = np.max(np.abs(np.asarray(base.logits(reloaded, choice_batch))
                       - np.asarray(base.logits(transformer, choice_batch))))
  print(f'\n[5] transformer exported to {hf_dir} (HF T5ForConditionalGeneration format) and '
        f're-imported: max |logit difference| = {diff:.2e}')
  print(f'done in {time.time() - t0:.0f} s; outputs in {args.output_dir}/')
  return results


if __name__ == '__main__':
  main()
