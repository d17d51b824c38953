"""Few-shot prompt tuning: the vmapped multi-template program equals tuning each template alone with a
plain optax loop written here; the 16 chosen instances are recorded and reproducible from the seed."""

import json

import jax
import numpy as np
import optax
import pytest

import promptjax.tasks  # noqa: F401
from promptjax.evaluation import fewshot as fs
from promptjax.evaluation import rank_classification as rc
from promptjax.models import PromptConfig, PromptableT5, get_config

CONFIG = get_config('tiny', vocab_size=1664, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32)
TASKS = rc.task_names('mini_heldout_rank_classification')[3:6]   # coref ×2, NLI: different lengths


def _batches(seed=100):
  out = []
  for t in TASKS:
    train = rc.load_choices(t, 'train')
    out.append(fs.training_batch(train, fs.select_examples(t, train.num_examples, 16, seed)))
  return out


def _alone(model, params, batch, cfg):
  """One template, an explicit Python loop: grad of the loss w.r.t. the prompt, clip, Adafactor, apply."""
  opt = optax.chain(optax.clip_by_global_norm(cfg.global_norm_clip),
                    optax.adafactor(cfg.learning_rate, multiply_by_parameter_scale=False, decay_rate=0.8,
                                    clipping_threshold=1.0, min_dim_size_to_factor=128))
  prompt = params['prompt']
  state = opt.init(prompt)
  grad_fn = jax.jit(jax.value_and_grad(lambda p: model.loss_fn({**params, 'prompt': p}, batch)[0]))
  losses = []
  for _ in range(cfg.epochs):
    loss, g = grad_fn(prompt)
    updates, state = opt.update(g, state, prompt)
    prompt = optax.apply_updates(prompt, updates)
    losses.append(float(loss))
  return prompt, np.asarray(losses)


@pytest.mark.parametrize('kind', ['shallow', 'deep'])
def test_vmapped_templates_equal_each_template_alone(kind):
  model = PromptableT5(CONFIG, PromptConfig(kind=kind, length=4))
  params = model.init_params(jax.random.PRNGKey(0))
  cfg = fs.FewShotConfig(epochs=8, learning_rate=1e-3, templates_per_program=2)  # 3 templates: groups 2 + (1 + pad)
  batches = _batches()
  prompts, losses = fs.PromptTuner(model, cfg).tune(params, batches)
  assert len(prompts) == 3 and losses.shape == (3, 8)
  for i, batch in enumerate(batches):
    ref_prompt, ref_losses = _alone(model, params, batch, cfg)
    np.testing.assert_allclose(losses[i], ref_losses, rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(prompts[i]), jax.tree.leaves(ref_prompt)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(ref_prompt),
                                                           jax.tree.leaves(params['prompt'])))
    assert moved > 1e-3   # the prompt did change (8 steps of lr 1e-3)
  # Only prompts come back (the transformer is shared, not copied per template).
  assert jax.tree.structure(prompts[0]) == jax.tree.structure(params['prompt'])


def test_example_selection_is_recorded_and_reproducible(tmp_path):
  a = fs.select_examples(TASKS[0], 64, 16, seed=100)
  assert len(set(a.tolist())) == 16 and a.min() >= 0 and a.max() < 64
  np.testing.assert_array_equal(a, fs.select_examples(TASKS[0], 64, 16, seed=100))
  assert not np.array_equal(a, fs.select_examples(TASKS[0], 64, 16, seed=101))
  assert not np.array_equal(a, fs.select_examples(TASKS[1], 64, 16, seed=100))   # per-template draws
  with pytest.raises(rc.EvaluationError, match='fewer than'):
    fs.select_examples(TASKS[0], 8, 16, seed=100)

  model = PromptableT5(CONFIG, PromptConfig(kind='shallow', length=4))
  params = model.init_params(jax.random.PRNGKey(0))
  cfg = fs.FewShotConfig(epochs=3, learning_rate=0.3)
  results = fs.evaluate_few_shot(model, params, TASKS[:2], cfg, max_examples=6, output_dir=str(tmp_path),
                                 progress=False)
  record = json.load(open(tmp_path / 'selected_examples.json'))
  assert record['seed'] == 100 and record['num_shots'] == 16
  for t in TASKS[:2]:
    train = rc.load_choices(t, 'train')
    rows = fs.select_examples(t, train.num_examples, 16, 100)
    assert record['examples'][t] == train.example_ids[rows].tolist()
  metrics = json.load(open(tmp_path / 'metrics.json'))
  assert metrics['setting'] == '16-shot' and metrics['fewshot']['epochs'] == 3
  assert set(metrics['tasks']) == set(TASKS[:2])
  for t, (first, last) in metrics['train_loss'].items():
    assert last < first, t    # lr 0.3: the training loss falls within 3 steps
  assert metrics['summary']['arg'] == pytest.approx(
      np.mean([(r.accuracy - r.random_baseline) / r.random_baseline for r in results.values()]))


def test_training_targets_are_the_gold_choices():
  train = rc.load_choices(TASKS[2], 'train')
  rows = fs.select_examples(TASKS[2], train.num_examples, 16, 100)
  batch = fs.training_batch(train, rows)
  for r, tgt in zip(rows, batch['decoder_target_tokens']):
    gold = int(np.flatnonzero(train.correct[r])[0])
    np.testing.assert_array_equal(tgt, train.targets[r, gold])
