"""What a meta-step costs against the MTL steps it contains: time ratios, compiled memory, clone chunking.

One meta-step of M clones with T inner steps reads (T + 1)·M batches of b examples (T support batches and a
query batch per clone). The MTL baseline is the plain train step (`promptjax.training.train_step`) on one
such batch, so "(T + 1)·M MTL steps" is the multi-task training that reads the same examples. Reported:

* **time**: median meta-step time ÷ ((T + 1)·M × median MTL step time), for
  - Wu et al. 2022's FOMAML and adapted Reptile (all parameters trained, T prompt-only Adafactor inner
    steps, clipping 1.0, as `fomaml.gin` / `reptile.gin`), against MTL steps of all parameters;
  - Qin et al. 2023's prompt-only MAML (second order, SGD inner steps, `maml_prompt.gin`) at T = 1 and
    T = 4: the default backward (`MetaConfig.maml_backward='hvp'`, a Hessian-vector product per inner step,
    the clones' products in two halves), the same with all clones' products at once (`hvp_chunks=1`),
    and JAX reversing the inner loop (`'autodiff'`) with and without `remat` (and, with `--layer_remat 1`,
    on the model with `T5Config.remat`), and prompt-only FoMAML, against prompt-only MTL steps;
  - the official Wu et al. code's design (`--groups anchor`): clones one after another, each a copy of the
    whole model, rebuilt on HF PyTorch with the same shapes, against that model's PyTorch MTL step;
* **memory**: XLA's `memory_analysis()` of each compiled step (temporaries, arguments, outputs), and
  MAML's temporaries ÷ FoMAML's at the same T;
* **clone chunking**: adapted Reptile (which holds one transformer-sized update per clone of a chunk) and
  the `'mtl'` meta-algorithm at every `CLONE_CHUNK_SIZE` dividing M: time and temporaries.

Every program is compiled once (`jit(...).lower(...).compile()`); the timed steps then run in interleaved
rounds (each round times every program, the order reversed every other round) and medians are reported,
because this machine's speed drifts. The model is a T5 v1.1 of random weights (nothing downloaded); the
default (`small` with 4 + 4 layers and a 4096-piece vocabulary, 26 M parameters; prompt 20; M = 4, b = 4,
T = 7; inputs 64, targets 16 tokens) is the shape these ratios were first measured at.

Usage:
  python benchmarks/meta_step.py --rounds 2 --steps 1   # all groups, about 15 minutes on 2 CPU cores
  python benchmarks/meta_step.py --groups wu --rounds 2
  python benchmarks/meta_step.py --layers 1 --vocab_size 512 --emb_dim 64 --rounds 1 --steps 1   # smoke test
Results: benchmarks/results/meta_step.json (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO_ROOT, machine_info, write_record  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

GROUPS = ('wu', 'qin', 'chunks', 'anchor')


def _batch(rng, lead, args, vocab):
  enc = rng.randint(2, vocab, size=lead + (args.input_len,)).astype(np.int32)
  tgt = rng.randint(2, vocab, size=lead + (args.target_len,)).astype(np.int32)
  tgt[..., -1] = 1
  return {'encoder_input_tokens': enc, 'decoder_target_tokens': tgt}


def meta_batch(rng, args, inner_steps, vocab):
  m, b = args.clones, args.batch
  support = _batch(rng, (m, inner_steps, b), args, vocab)
  query = _batch(rng, (m, b), args, vocab)
  return {**{f'support/{k}': v for k, v in support.items()}, **{f'query/{k}': v for k, v in query.items()}}


class Program:
  """One jitted train step, compiled once for its state and batch."""

  def __init__(self, name, step, state, batch, mtl_steps=None, baseline=None):
    self.name, self.state, self.mtl_steps, self.baseline = name, state, mtl_steps, baseline
    self.batch = jax.tree.map(jnp.asarray, batch)
    t0 = time.perf_counter()
    self.compiled = jax.jit(step).lower(state, self.batch).compile()
    self.compile_s = time.perf_counter() - t0
    mem = self.compiled.memory_analysis()
    self.memory = {k: int(getattr(mem, f'{k}_size_in_bytes', 0) or 0) for k in ('temp', 'argument', 'output')} \
        if mem is not None else {}
    self.times = []
    jax.block_until_ready(self.compiled(self.state, self.batch))   # warm-up (not timed)

  def run(self, steps):
    for _ in range(steps):
      t0 = time.perf_counter()
      jax.block_until_ready(self.compiled(self.state, self.batch))
      self.times.append(time.perf_counter() - t0)

  @property
  def median(self):
    return statistics.median(self.times)


class TorchProgram:
  """The anchor's design in HF PyTorch (timed like `Program`; no compile, no memory analysis)."""

  def __init__(self, name, step, mtl_steps=None, baseline=None):
    self.name, self.step, self.mtl_steps, self.baseline = name, step, mtl_steps, baseline
    self.compile_s, self.memory, self.times = 0.0, {}, []
    step()   # warm-up

  def run(self, steps):
    for _ in range(steps):
      t0 = time.perf_counter()
      self.step()
      self.times.append(time.perf_counter() - t0)

  median = Program.median


def anchor_programs(args, config, n_clones, inner_steps, rng):
  """better-promptability's meta-learner (Wu et al. 2022's official code, `models/meta_learner.py`) rebuilt
  on HF PyTorch `T5ForConditionalGeneration` of the same shapes: clones one after another, each a copy of
  the whole model (learn2learn's `clone_module`), T prompt-only Adafactor steps on its support batch, then
  a forward/backward of all parameters on its query batch whose gradients are summed into the model
  (FOMAML); the outer Adafactor step after the last clone. The MTL step is the same model's plain step."""
  import copy
  import torch
  from transformers import T5Config, T5ForConditionalGeneration
  from transformers.optimization import Adafactor

  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  hf_config = T5Config(vocab_size=config.vocab_size, d_model=config.emb_dim, d_kv=config.head_dim,
                       d_ff=config.mlp_dim, num_layers=config.num_encoder_layers,
                       num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
                       relative_attention_num_buckets=config.relative_attention_num_buckets,
                       relative_attention_max_distance=config.relative_attention_max_distance,
                       dropout_rate=0.0, layer_norm_epsilon=1e-6, feed_forward_proj='gated-gelu',
                       tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)

  class Prompted(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.t5 = T5ForConditionalGeneration(hf_config).float()
      self.prompt = torch.nn.Parameter(torch.empty(args.prompt_length, config.emb_dim).uniform_(-0.5, 0.5))

    def forward(self, batch):
      ids, labels = batch
      emb = self.t5.get_input_embeddings()(ids)
      x = torch.cat([self.prompt.expand(ids.shape[0], -1, -1), emb], dim=1)
      return self.t5(inputs_embeds=x, labels=labels).loss

  def tensors(b):
    return (torch.from_numpy(b['encoder_input_tokens']).long(), torch.from_numpy(b['decoder_target_tokens']).long())

  adafactor = lambda ps: Adafactor(ps, lr=1e-3, scale_parameter=False, relative_step=False, warmup_init=False)
  model = Prompted().train()
  outer = adafactor(model.parameters())
  mtl_batch = tensors(_batch(rng, (args.batch,), args, config.vocab_size))
  support = [[tensors(_batch(rng, (args.batch,), args, config.vocab_size)) for _ in range(inner_steps)]
             for _ in range(n_clones)]
  query = [tensors(_batch(rng, (args.batch,), args, config.vocab_size)) for _ in range(n_clones)]

  def mtl_step():
    model(mtl_batch).backward()
    outer.step()
    outer.zero_grad(set_to_none=True)

  def fomaml_step():
    grads = [torch.zeros_like(p) for p in model.parameters()]
    for c in range(n_clones):
      learner = copy.deepcopy(model)
      for p in learner.t5.parameters():
        p.requires_grad_(False)
      inner = adafactor([learner.prompt])
      for sup in support[c]:
        inner.zero_grad(set_to_none=True)
        learner(sup).backward()
        torch.nn.utils.clip_grad_norm_([learner.prompt], 1.0)
        inner.step()
      for p in learner.parameters():
        p.requires_grad_(True)
      learner.zero_grad(set_to_none=True)
      learner(query[c]).backward()
      for g, p in zip(grads, learner.parameters()):
        g.add_(p.grad)
    for g, p in zip(grads, model.parameters()):
      p.grad = g / n_clones
    outer.step()
    outer.zero_grad(set_to_none=True)

  mtl = TorchProgram('anchor (PyTorch): MTL step', mtl_step)
  return [mtl, TorchProgram(f'anchor (PyTorch): FOMAML T={inner_steps}', fomaml_step,
                            mtl_steps=(inner_steps + 1) * n_clones, baseline=mtl.name)]


def clone_parts(model, params, batch, m):
  from promptjax.meta.inner import join_prompt, split_prompt
  transformer, prompt = split_prompt(params)

  def losses(p, b):
    return jax.vmap(lambda q, x: model.loss_fn(join_prompt(transformer, q), x)[0])(p, b)

  def grad(prompts, b):
    return jax.grad(lambda p: jnp.sum(losses(p, b)))(prompts)

  def hvp(prompts, b):
    v = jax.tree.map(lambda x: jnp.full_like(x, 1e-3), prompts)
    return jax.jvp(lambda p: grad(p, b), (prompts,), (v,))[1]

  prompts = jax.tree.map(lambda x: jnp.broadcast_to(x, (m,) + x.shape), prompt)
  return [Program(f'{m} clones: prompt gradient', grad, prompts, batch, mtl_steps=m, baseline='MTL step (prompt only)'),
          Program(f'{m} clones: prompt HVP (jvp of the gradient)', hvp, prompts, batch, mtl_steps=m,
                  baseline='MTL step (prompt only)')]


def build(args):
  from promptjax.meta import MetaConfig, make_meta_train_step
  from promptjax.models import PromptableT5, PromptConfig, get_config
  from promptjax.training import optimizers, train_step as ts

  overrides = {'vocab_size': args.vocab_size, 'num_encoder_layers': args.layers, 'num_decoder_layers': args.layers}
  if args.emb_dim:
    overrides.update(emb_dim=args.emb_dim, mlp_dim=2 * args.emb_dim, num_heads=4, head_dim=args.emb_dim // 4)
  model = PromptableT5(get_config(args.size, **overrides), PromptConfig(kind='shallow', length=args.prompt_length))
  params = model.init_params(jax.random.PRNGKey(0))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  vocab = model.config.vocab_size
  rng = np.random.RandomState(0)
  m = args.clones
  groups = set(args.groups.split(','))
  programs = []

  def outer(trainable, lr):
    return optimizers.masked_optimizer(optimizers.adafactor(lr), params, trainable)

  def mtl(trainable, name):
    opt = outer(trainable, 1e-3)
    step = ts.make_train_step(model, opt, trainable=trainable, dropout_seed=None)
    return Program(name, step, ts.TrainState.create(params, opt), _batch(rng, (args.batch,), args, vocab))

  def meta(name, cfg, trainable, baseline, lr=1e-3, net=model):
    opt = outer(trainable, lr)
    step = make_meta_train_step(net, opt, cfg, trainable=trainable, dropout_seed=None)
    return Program(name, step, ts.TrainState.create(params, opt), meta_batch(rng, args, cfg.inner_steps, vocab),
                   mtl_steps=(cfg.inner_steps + 1) * m, baseline=baseline)

  wu_inner = dict(inner_optimizer=optimizers.adafactor(1e-3, clipping_threshold=None), inner_learning_rate=1e-3,
                  inner_global_norm_clip=1.0)
  qin_inner = dict(inner_optimizer=optax.sgd(3e-5), inner_learning_rate=3e-5, inner_global_norm_clip=None)
  t = args.inner_steps
  if 'wu' in groups or 'chunks' in groups:
    programs.append(mtl('all', 'MTL step (all parameters)'))
  if 'wu' in groups:
    programs.append(meta(f'FOMAML T={t}', MetaConfig('fomaml', inner_steps=t, **wu_inner), 'all',
                         'MTL step (all parameters)'))
    programs.append(meta(f'adapted Reptile T={t}', MetaConfig('reptile', inner_steps=t, **wu_inner), 'all',
                         'MTL step (all parameters)'))
  if 'qin' in groups:
    programs.append(mtl('prompt', 'MTL step (prompt only)'))
    # The two parts a second-order meta-step is made of, on one batch per clone (M clones, vmapped): the
    # prompt gradient (every inner step and the query) and the Hessian-vector product (each inner step's
    # backward, `MetaConfig.maml_backward='hvp'`), so MAML's time can be accounted for.
    programs.extend(clone_parts(model, params, _batch(rng, (m, args.batch), args, vocab), m))
    for qt in args.maml_steps:
      programs.append(meta(f'prompt FoMAML T={qt}', MetaConfig('fomaml', inner_steps=qt, **qin_inner), 'prompt',
                           'MTL step (prompt only)', lr=0.5))
      # The default backward (a Hessian-vector product per inner step, the clones' HVPs in two halves), the
      # HVPs of all clones at once, then JAX reversing the inner loop.
      programs.append(meta(f'prompt MAML T={qt}', MetaConfig('maml', inner_steps=qt, **qin_inner), 'prompt',
                           'MTL step (prompt only)', lr=0.5))
      programs.append(meta(f'prompt MAML T={qt} one HVP part', MetaConfig('maml', inner_steps=qt, hvp_chunks=1,
                                                                           **qin_inner),
                           'prompt', 'MTL step (prompt only)', lr=0.5))
      for remat in (False, True):
        programs.append(meta(f'prompt MAML T={qt} autodiff' + (' remat' if remat else ''),
                             MetaConfig('maml', inner_steps=qt, remat=remat, maml_backward='autodiff',
                                        **qin_inner), 'prompt', 'MTL step (prompt only)', lr=0.5))
      if args.layer_remat:
        # The same network with every T5 layer rematerialized in the backward pass (`T5Config.remat`): the
        # same parameter tree, so the runs share `params`.
        layer_remat = PromptableT5(get_config(args.size, remat=True, **overrides), model.prompt)
        programs.append(meta(f'prompt FoMAML T={qt} layer remat', MetaConfig('fomaml', inner_steps=qt, **qin_inner),
                             'prompt', 'MTL step (prompt only)', lr=0.5, net=layer_remat))
        programs.append(meta(f'prompt MAML T={qt} layer remat', MetaConfig('maml', inner_steps=qt, **qin_inner),
                             'prompt', 'MTL step (prompt only)', lr=0.5, net=layer_remat))
  if 'chunks' in groups:
    for chunk in [c for c in range(1, m + 1) if m % c == 0]:
      if chunk < m or 'wu' not in groups:   # chunk M is the `wu` group's adapted Reptile row, not compiled twice
        programs.append(meta(f'adapted Reptile T={t} chunk {chunk}',
                             MetaConfig('reptile', inner_steps=t, chunk_size=chunk, **wu_inner), 'all',
                             'MTL step (all parameters)'))
      programs.append(meta(f"'mtl' meta-algorithm T={t} chunk {chunk}",
                           MetaConfig('mtl', inner_steps=t, chunk_size=chunk, **wu_inner), 'all',
                           'MTL step (all parameters)'))
  if 'anchor' in groups:
    programs.extend(anchor_programs(args, model.config, m, t, rng))
  return model, n_params, programs


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--groups', default=','.join(GROUPS), help=f'comma-separated subset of {GROUPS}')
  p.add_argument('--size', default='small')
  p.add_argument('--layers', type=int, default=4, help='encoder and decoder layers each')
  p.add_argument('--vocab_size', type=int, default=4096)
  p.add_argument('--emb_dim', type=int, default=None, help='shrink the model (smoke tests)')
  p.add_argument('--prompt_length', type=int, default=20)
  p.add_argument('--clones', type=int, default=4, help='M, the meta-batch size')
  p.add_argument('--batch', type=int, default=4, help='b, examples per support / query batch')
  p.add_argument('--inner_steps', type=int, default=7, help='T of FOMAML / Reptile (Wu et al.: 7)')
  p.add_argument('--maml_steps', type=lambda s: [int(x) for x in s.split(',')], default=[1, 4],
                 help='the T values of the prompt-only MAML / FoMAML rows')
  p.add_argument('--layer_remat', type=int, default=0,
                 help='1: the qin group adds FoMAML and MAML on the model with T5Config.remat')
  p.add_argument('--input_len', type=int, default=64)
  p.add_argument('--target_len', type=int, default=16)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--steps', type=int, default=2, help='timed steps per program and round')
  p.add_argument('--out', default=os.path.join(REPO_ROOT, 'benchmarks', 'results', 'meta_step.json'))
  args = p.parse_args(argv)

  model, n_params, programs = build(args)
  for r in range(args.rounds):
    for prog in (programs if r % 2 == 0 else programs[::-1]):
      prog.run(args.steps)
  by_name = {prog.name: prog for prog in programs}
  mib = lambda b: b / 2 ** 20
  print(f'T5 v1.1 {args.size}, {args.layers}+{args.layers} layers, vocab {model.config.vocab_size}, '
        f'{n_params / 1e6:.1f} M parameters, prompt {args.prompt_length}; M={args.clones}, b={args.batch}, '
        f'inputs {args.input_len}, targets {args.target_len}; {args.rounds} rounds x {args.steps} steps; '
        f'{jax.devices()[0].platform} x{jax.device_count()}')
  print(f'{"program":<40s} {"median s":>9s} {"MTL steps":>9s} {"ratio":>6s} {"temp MiB":>9s} {"args MiB":>9s} '
        f'{"compile s":>9s}')
  record = {'args': vars(args), 'machine': machine_info(), 'parameters': n_params, 'programs': {}}
  for prog in programs:
    ratio = None
    if prog.baseline:
      ratio = prog.median / (prog.mtl_steps * by_name[prog.baseline].median)
    print(f'{prog.name:<40s} {prog.median:9.3f} {prog.mtl_steps or "":>9} '
          f'{"" if ratio is None else f"{ratio:6.2f}":>6s} '
          + (f'{mib(prog.memory.get("temp", 0)):9.1f} {mib(prog.memory.get("argument", 0)):9.1f} '
             f'{prog.compile_s:9.1f}' if prog.memory else f'{"-":>9s} {"-":>9s} {"-":>9s}'))
    record['programs'][prog.name] = {'median_s': prog.median, 'times_s': prog.times, 'mtl_steps': prog.mtl_steps,
                                     'baseline': prog.baseline, 'ratio_to_mtl_steps': ratio,
                                     'memory_bytes': prog.memory, 'compile_s': prog.compile_s}
  cross = {}
  t = args.inner_steps
  for ours, theirs in ((f'FOMAML T={t}', f'anchor (PyTorch): FOMAML T={t}'),
                       ('MTL step (all parameters)', 'anchor (PyTorch): MTL step')):
    if ours in by_name and theirs in by_name:
      cross[ours] = by_name[ours].median / by_name[theirs].median
  if cross:
    print('promptjax time / the anchor design\'s (HF PyTorch, same shapes, this machine): '
          + ', '.join(f'{k}: {v:.2f}x' for k, v in cross.items()))
    record['promptjax_over_anchor'] = cross
  maml = {}
  for qt in args.maml_steps:
    fo = by_name.get(f'prompt FoMAML T={qt}')
    if fo is None:
      continue
    for suffix in ('', ' one HVP part', ' autodiff', ' autodiff remat', ' layer remat'):
      ma = by_name.get(f'prompt MAML T={qt}{suffix}')
      if ma is not None:
        base = by_name.get(f'prompt FoMAML T={qt}{suffix}') if suffix == ' layer remat' else fo
        if base is not None:
          maml[f'T={qt}{suffix}'] = ma.memory.get('temp', 0) / max(base.memory.get('temp', 1), 1)
  if maml:
    print('prompt MAML temporaries / prompt FoMAML temporaries: '
          + ', '.join(f'{k}: {v:.2f}x' for k, v in maml.items()))
    record['maml_memory_over_fomaml'] = maml
  grad, hvp = by_name.get(f'{args.clones} clones: prompt gradient'), \
      by_name.get(f'{args.clones} clones: prompt HVP (jvp of the gradient)')
  if grad and hvp:
    # A meta-step of T inner steps is T + 1 prompt gradients (T support, 1 query); MAML adds T HVPs.
    parts = {'hvp_over_gradient': hvp.median / grad.median}
    for qt in args.maml_steps:
      for name, n_hvp in ((f'prompt FoMAML T={qt}', 0), (f'prompt MAML T={qt}', qt)):
        if name in by_name:
          parts[f'{name}: measured / ((T+1) gradients + {n_hvp} HVPs)'] = by_name[name].median / (
              (qt + 1) * grad.median + n_hvp * hvp.median)
    print(f'one HVP = {parts["hvp_over_gradient"]:.2f} prompt gradients; meta-step / its parts: '
          + ', '.join(f'{k.split(":")[0]}: {v:.2f}' for k, v in parts.items() if ':' in k))
    record['parts'] = parts
  write_record(record, args.out)


if __name__ == '__main__':
  main()
