"""Qin et al.'s downstream protocol and greedy decoding, against plain references written here."""

import os

import jax
import jax.numpy as jnp

import numpy as np
import optax
import pytest

import promptjax.tasks  # noqa: F401
from promptjax.evaluation import downstream, generation
from promptjax.models import PromptConfig, PromptableT5, get_config

CONFIG = get_config('tiny', vocab_size=1664, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32)
TASK = 'crossfit_mini_sentiment_13'


def _model(kind='shallow'):
  model = PromptableT5(CONFIG, PromptConfig(kind=kind, length=3))
  return model, model.init_params(jax.random.PRNGKey(1))


@pytest.mark.parametrize('kind', ['none', 'deep'])
def test_greedy_decode_equals_a_brute_force_loop(kind):
  model, params = _model(kind)
  texts = generation.load_texts(TASK, 'dev')
  inputs = texts.inputs[:3]
  got = generation.greedy_decode(model, params, inputs, max_length=6, batch_size=2)
  logits_fn = jax.jit(model.logits)
  for r in range(3):
    x = np.zeros((1, 64), np.int32)
    x[0, :inputs.shape[1]] = inputs[r]
    prefix = []
    for i in range(6):
      # Teacher-forced logits of the whole (padded) prefix; causal, so position i sees tokens < i only.
      dec_in = np.asarray([[0] + prefix + [0] * (5 - len(prefix))], np.int32)
      logits = logits_fn(params, {'encoder_input_tokens': x, 'decoder_target_tokens': np.ones((1, 6), np.int32),
                                  'decoder_input_tokens': dec_in})
      nxt = int(np.argmax(logits[0, i]))
      prefix.append(nxt)
      if nxt == 1:
        break
    want = prefix + [0] * (6 - len(prefix))
    np.testing.assert_array_equal(got[r], want)


def test_texts_and_references():
  texts = generation.load_texts(TASK, 'test')
  assert texts.num_examples == len(texts.references) > 0
  assert {r[0] for r in texts.references} <= {'negative', 'positive'}
  assert texts.vocabulary.decode(generation.strip_eos(texts.targets[0])) == texts.references[0][0]


def test_batch_indices_are_seeded_epochs():
  idx = downstream._batch_indices(20, 8, 7, seed=13)
  assert idx.shape == (7, 8)
  # 2 full batches per epoch (the last 4 examples of each permutation are dropped), distinct within an epoch.
  for e in range(3):
    epoch = idx[2 * e:2 * e + 2].ravel()
    assert len(set(epoch.tolist())) == 16
    np.testing.assert_array_equal(epoch, np.random.default_rng([13, e]).permutation(20)[:16])
  with pytest.raises(ValueError, match='fewer than the batch size'):
    downstream._batch_indices(4, 8, 1, seed=0)


def test_learning_rate_grid_equals_separate_plain_optax_runs():
  model, params = _model('shallow')
  train = generation.load_texts(TASK, 'train')
  dev = generation.load_texts(TASK, 'dev')
  cfg = downstream.DownstreamConfig(learning_rates=(0.3, 0.05), batch_size=8, total_steps=4, eval_interval=2,
                                    seeds=(13,), max_decode_length=3)
  best = downstream.tune_and_select(model, params, train, dev, 'ACC', cfg, seed=13)
  idx = downstream._batch_indices(train.num_examples, 8, 4, seed=13)
  for lr in cfg.learning_rates:
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adafactor(lr, multiply_by_parameter_scale=False, decay_rate=0.8,
                                      clipping_threshold=1.0))
    p = params['prompt']
    s = opt.init(p)
    grad = jax.jit(jax.grad(lambda q, batch: model.loss_fn({**params, 'prompt': q}, batch)[0]))
    curve = []
    for t, rows in enumerate(idx):
      batch = {'encoder_input_tokens': train.inputs[rows], 'decoder_target_tokens': train.targets[rows]}
      g = grad(p, batch)
      u, s = opt.update(g, s, p)
      p = optax.apply_updates(p, u)
      if (t + 1) % 2 == 0:
        preds = generation.predict_texts(model, {**params, 'prompt': p}, dev, 3)
        acc = np.mean([pr.lower() == ref[0].lower() for pr, ref in zip(preds, dev.references)])
        curve.append((t + 1, float(acc)))
    assert best['dev_curves'][lr] == curve
    if best['learning_rate'] == lr and best['step'] == 4:
      np.testing.assert_allclose(best['prompt']['prompt'], p['prompt'], rtol=1e-5, atol=1e-6)
  flat = [(score, -step, -i) for i, lr in enumerate(cfg.learning_rates) for step, score in best['dev_curves'][lr]]
  assert best['score'] == max(flat)[0]


def test_evaluate_task_end_to_end(tmp_path):
  model, params = _model('shallow')
  cfg = downstream.DownstreamConfig(learning_rates=(0.3, 0.2), total_steps=2, eval_interval=1, seeds=(13, 42),
                                    max_decode_length=3)
  out = downstream.evaluate_task(model, params, 'mini_sentiment', cfg, prompt_dir=str(tmp_path))
  # Every seed's tuned prompt is exported (the input of `promptjax similarity`), of the prompt's shape.
  assert sorted(os.listdir(tmp_path)) == ['crossfit_mini_sentiment_13.npy', 'crossfit_mini_sentiment_42.npy']
  assert np.load(out['seeds'][13]['prompt_file']).shape == np.shape(params['prompt']['prompt'])
  assert set(out['seeds']) == {13, 42}
  for v in out['seeds'].values():
    assert v['metric'] == 'ACC' and v['step'] in (1, 2) and v['learning_rate'] in (0.3, 0.2)
    assert 0.0 <= v['test'] <= 1.0
  assert out['test_mean'] == pytest.approx(np.mean([v['test'] for v in out['seeds'].values()]))


def test_adamw_grid_with_a_gradient_transform_equals_plain_optax_runs():
  """SUPMER's protocol pieces: AdamW (PyTorch defaults, weight decay 0.01), epochs, and a transform of every
  prompt gradient (the frozen ψ* slot) — against plain optax.adamw loops fed the transformed gradient."""
  model, params = _model('shallow')
  train = generation.load_texts(TASK, 'train')
  cfg = downstream.DownstreamConfig(learning_rates=(0.1, 0.3), batch_size=16, epochs=2, eval_interval=1,
                                    seeds=(13,), optimizer='adamw', global_norm_clip=None)
  assert cfg.num_steps(train.num_examples) == 2 * (train.num_examples // 16)
  seen = []
  transform = lambda g, transformer, prompt, batch: jax.tree.map(lambda x: 0.5 * x + 0.1 * prompt['prompt'], g)
  downstream.tune_and_select(model, params, train, lambda p: seen.append(p) or 0.0, None, cfg, seed=13,
                             gradient_fn=transform)
  steps = cfg.num_steps(train.num_examples)
  assert len(seen) == steps * 2
  idx = downstream._batch_indices(train.num_examples, 16, steps, seed=13)
  grad = jax.jit(jax.grad(lambda q, batch: model.loss_fn({**params, 'prompt': q}, batch)[0]))
  for i, lr in enumerate(cfg.learning_rates):
    opt = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
    p = params['prompt']
    s = opt.init(p)
    for t, rows in enumerate(idx):
      batch = {'encoder_input_tokens': train.inputs[rows], 'decoder_target_tokens': train.targets[rows]}
      g = jax.tree.map(lambda x: 0.5 * x + 0.1 * p['prompt'], grad(p, batch))
      u, s = opt.update(g, s, p)
      p = optax.apply_updates(p, u)
      np.testing.assert_allclose(seen[2 * t + i]['prompt'], p['prompt'], rtol=1e-5, atol=1e-6)


def test_pan2023_protocol_and_bad_options():
  cfg = downstream.pan2023()
  assert (cfg.optimizer, cfg.batch_size, cfg.epochs, cfg.eval_interval, cfg.learning_rates, cfg.seeds) == \
      ('adamw', 32, 200, 10, (0.1, 0.2, 0.3), (10, 20, 30, 40, 50))
  assert cfg.seqio_name('sst2', 100) == 'supmer_sst2_100' and cfg.num_steps(32) == 200 and cfg.data_seed == 100
  assert downstream.DownstreamConfig().seqio_name('glue-rte', 13) == 'crossfit_glue_rte_13'
  with pytest.raises(downstream.generation.EvaluationError, match='optimizer'):
    downstream.DownstreamConfig(optimizer='sgd')
  with pytest.raises(downstream.generation.EvaluationError, match='scoring'):
    downstream.DownstreamConfig(scoring='bleu')


def test_full_model_fine_tuning_equals_plain_optax_runs():
  """Qin et al. 2023's fine-tuning baseline (trainable='all', no prompt): every parameter tuned per learning
  rate of the grid, against plain optax loops over the whole parameter tree (AdamW: its program compiles in a
  fraction of factored Adafactor's, and the optimizer is the prompt-tuning tests' business)."""
  model = PromptableT5(CONFIG.replace(num_encoder_layers=1, num_decoder_layers=1))   # few leaves: fast compiles
  params = model.init_params(jax.random.PRNGKey(1))
  train = generation.load_texts(TASK, 'train')
  cfg = downstream.DownstreamConfig(learning_rates=(5e-4, 1e-4), batch_size=8, total_steps=2, eval_interval=1,
                                    seeds=(13,), trainable='all', optimizer='adamw', global_norm_clip=None)
  seen = []
  downstream.tune_and_select(model, params, train, lambda p: seen.append(p) or 0.0, None, cfg, seed=13)
  idx = downstream._batch_indices(train.num_examples, 8, 2, seed=13)
  adam = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)

  @jax.jit
  def step(p, s, batch, lr):   # AdamW: p <- p - lr (adam(g) + 0.01 p), PyTorch's decoupled weight decay
    u, s = adam.update(jax.grad(lambda q: model.loss_fn(q, batch)[0])(p), s, p)
    return jax.tree.map(lambda x, d: x - lr * (d + 0.01 * x), p, u), s

  for i, lr in enumerate(cfg.learning_rates):
    p, s = params, adam.init(params)
    for t, rows in enumerate(idx):
      p, s = step(p, s, {'encoder_input_tokens': train.inputs[rows], 'decoder_target_tokens': train.targets[rows]}, lr)
      for got, want in zip(jax.tree.leaves(seen[2 * t + i]), jax.tree.leaves(p)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(seen[-1]['encoder']['layers_0']['mlp']['wo']['kernel'],
                         params['encoder']['layers_0']['mlp']['wo']['kernel'])
  with pytest.raises(generation.EvaluationError, match="trainable='nope'"):
    downstream.DownstreamConfig(trainable='nope')


def test_prefix_tuning_reparameterization_equals_a_plain_optax_run():
  """Prefix-Tuning (Li & Liang 2021, §4.3; DownstreamConfig.prefix_mlp_dim): P' and the MLP are tuned, the
  model sees the deep prompt P = tanh(P' w1 + b1) w2 + b2, and what is kept (and scored) is P alone. Against a
  plain optax AdamW loop over (P', MLP) with the reparameterization written out here."""
  from promptjax.models.prompts import prompt_shapes
  model = PromptableT5(CONFIG.replace(num_encoder_layers=1, num_decoder_layers=1),
                       PromptConfig(kind='deep', length=3))
  params = model.init_params(jax.random.PRNGKey(1))
  train = generation.load_texts(TASK, 'train')
  cfg = downstream.DownstreamConfig(learning_rates=(1e-2,), batch_size=8, total_steps=2, eval_interval=1,
                                    seeds=(13,), optimizer='adamw', global_norm_clip=None, prefix_mlp_dim=8)
  seen = []
  best = downstream.tune_and_select(model, params, train, lambda p: seen.append(p) or -len(seen), None, cfg,
                                    seed=13)
  shapes = prompt_shapes(model.prompt, model.config)
  tuned = downstream.prefix_mlp_init(shapes, model.config.emb_dim, 8, seed=13)
  assert tuned['source'].shape == (3, model.config.emb_dim) and tuned['w1'].shape == (model.config.emb_dim, 8)
  assert tuned['w2'].shape == (8, sum(s[1] for s in shapes.values()))

  def prompt_of(t):   # the reparameterization, written out: one row of every layer's keys and values
    out = np.tanh(np.asarray(t['source']) @ np.asarray(t['w1']) + np.asarray(t['b1'])) @ np.asarray(t['w2']) \
        + np.asarray(t['b2'])
    tree, at = {}, 0
    for path in sorted(shapes):
      node = tree
      for k in path[:-1]:
        node = node.setdefault(k, {})
      node[path[-1]] = out[:, at:at + shapes[path][1]]
      at += shapes[path][1]
    return tree

  transformer = {k: v for k, v in params.items() if k != 'prompt'}
  adam = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)

  @jax.jit
  def step(t, s, batch):
    def loss(q):
      out = jnp.tanh(q['source'] @ q['w1'] + q['b1']) @ q['w2'] + q['b2']
      flat, at = {}, 0
      for path in sorted(shapes):
        flat[path] = out[:, at:at + shapes[path][1]]
        at += shapes[path][1]
      from flax import traverse_util
      return model.loss_fn({**transformer, 'prompt': traverse_util.unflatten_dict(flat)}, batch)[0]
    u, s = adam.update(jax.grad(loss)(t), s, t)
    return jax.tree.map(lambda x, d: x - 1e-2 * (d + 0.01 * x), t, u), s

  s = adam.init(tuned)
  for i, rows in enumerate(downstream._batch_indices(train.num_examples, 8, 2, seed=13)):
    tuned, s = step(tuned, s, {'encoder_input_tokens': train.inputs[rows], 'decoder_target_tokens': train.targets[rows]})
    want = prompt_of(tuned)
    assert jax.tree.structure(seen[i]) == jax.tree.structure(want)
    for got, w in zip(jax.tree.leaves(seen[i]), jax.tree.leaves(want)):
      np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
  # The kept prompt is the deep prompt itself (the first evaluation scored best here): no MLP in it.
  assert set(best['prompt']) == {'encoder', 'decoder'}
  for got, w in zip(jax.tree.leaves(best['prompt']), jax.tree.leaves(seen[0])):
    np.testing.assert_array_equal(got, w)
  with pytest.raises(generation.EvaluationError, match='prefix_mlp_dim'):
    downstream.DownstreamConfig(prefix_mlp_dim=8, trainable='all')
