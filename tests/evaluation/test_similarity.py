"""Prompt-subspace task similarity: constructed prompts with known answers, and scipy's principal angles.

Independent references: subspaces built from coordinate axes and hand-computed angles, prompts built as
U diag(s) Vᵀ with chosen singular values, and scipy.linalg.subspace_angles (corr² = mean cos² θ for equal
ranks).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy import linalg

from promptjax.evaluation import similarity as sim


def _orthonormal(rng, n, k):
  q, _ = np.linalg.qr(rng.standard_normal((n, k)))
  return q


def _low_rank_prompt(rng, length, d, r):
  return rng.standard_normal((length, r)) @ rng.standard_normal((r, d))


def _axes_prompt(axes, d, length=6, seed=0):
  """A [length, d] prompt whose rows are random combinations of the coordinate axes `axes`."""
  rng = np.random.default_rng(seed)
  p = np.zeros((length, d))
  p[:, list(axes)] = rng.standard_normal((length, len(axes)))
  return p


def test_identical_prompts_score_one():
  p = np.random.default_rng(0).standard_normal((10, 32))
  assert sim.prompt_similarity(p, p) == pytest.approx(1.0, abs=1e-12)
  assert sim.prompt_similarity(p, p.copy(), rank=3) == pytest.approx(1.0, abs=1e-12)


def test_orthogonal_row_spaces_score_zero():
  a = _axes_prompt([0, 1, 2, 3], d=16, seed=1)
  b = _axes_prompt([4, 5, 6, 7, 8], d=16, seed=2)
  assert sim.prompt_similarity(a, b) == pytest.approx(0.0, abs=1e-12)
  assert sim.prompt_similarity(b, a, rank=2) == pytest.approx(0.0, abs=1e-12)


def test_hand_computed_45_degrees():
  e1 = np.array([[1.0], [0.0], [0.0]])
  diag = np.array([[1.0], [1.0], [0.0]]) / np.sqrt(2)
  # One direction each, at 45°: corr = |cos 45°| = 1/√2.
  assert sim.subspace_correlation(e1, diag) == pytest.approx(np.sqrt(0.5), abs=1e-15)
  assert sim.subspace_correlation(diag, e1) == pytest.approx(np.sqrt(0.5), abs=1e-15)
  # The same through prompts: rows along e1 (any scale) vs rows along e1 + e2.
  assert sim.prompt_similarity([[2.0, 0, 0], [-3.0, 0, 0]], [[1.0, 1.0, 0]]) == pytest.approx(
      np.sqrt(0.5), abs=1e-12)


def test_asymmetric_for_unequal_ranks():
  e1 = np.eye(3)[:, :1]
  plane = np.eye(3)[:, :2]
  # e1 lies in the plane: 1. The plane onto e1: ‖[1, 0]‖ / √2 = 1/√2.
  assert sim.subspace_correlation(e1, plane) == pytest.approx(1.0, abs=1e-15)
  assert sim.subspace_correlation(plane, e1) == pytest.approx(np.sqrt(0.5), abs=1e-15)


def test_invariant_to_row_scaling_permutation_and_rows_in_the_span():
  rng = np.random.default_rng(3)
  p = _low_rank_prompt(rng, 8, 20, r=3)
  q = _low_rank_prompt(rng, 9, 20, r=3)
  scaled = p * np.array([2.0, -0.5, 3.0, 1.0, -7.0, 0.1, 1.5, 4.0])[:, None]
  permuted = p[rng.permutation(8)]
  extended = np.concatenate([p, rng.standard_normal((5, 8)) @ p])     # rows in the row space of p
  for kwargs in ({'rank': 3}, {'threshold': 1.0}):                      # k = 3 either way
    base = sim.prompt_similarity(p, q, **kwargs)
    assert 0.0 < base < 1.0
    for variant in (scaled, permuted, extended):
      assert sim.prompt_similarity(variant, q, **kwargs) == pytest.approx(base, abs=1e-10)
      assert sim.prompt_similarity(q, variant, **kwargs) == pytest.approx(base, abs=1e-10)
      assert sim.prompt_similarity(variant, p, **kwargs) == pytest.approx(1.0, abs=1e-10)


def test_energy_threshold_rank_with_known_singular_values():
  rng = np.random.default_rng(4)
  s = np.array([3.0, 2.0, 1.0, 0.1])
  u, v = _orthonormal(rng, 6, 4), _orthonormal(rng, 10, 4)
  p = u @ np.diag(s) @ v.T
  # Energies 9, 4, 1, 0.01 of 14.01: cumulative 0.6424, 0.92791, 0.99929, 1.
  cases = ((0.5, 1), (0.9, 2), (0.9279, 2), (0.928, 3), (0.95, 3), (0.999, 3), (0.9995, 4), (1.0, 4))
  for threshold, k in cases:
    basis = sim.prompt_subspace(p, threshold=threshold)
    assert basis.shape == (10, k), threshold
    assert sim.energy_rank(s, threshold) == k
    # The basis spans the top-k right singular vectors: equal projectors.
    np.testing.assert_allclose(basis @ basis.T, v[:, :k] @ v[:, :k].T, atol=1e-12)
    np.testing.assert_allclose(basis.T @ basis, np.eye(k), atol=1e-12)
  assert sim.prompt_subspace(p).shape == (10, 3)          # default 0.99: 0.99929 >= 0.99 at k = 3
  assert sim.prompt_subspace(p, rank=2).shape == (10, 2)


def test_default_threshold():
  assert sim.DEFAULT_THRESHOLD == 0.99
  s = np.array([3.0, 2.0, 1.0, 0.1])
  assert sim.energy_rank(s, sim.DEFAULT_THRESHOLD) == 3


def test_numerically_zero_directions_never_enter_the_basis():
  p = _low_rank_prompt(np.random.default_rng(5), 10, 12, r=2)
  assert sim.prompt_subspace(p, threshold=1.0).shape == (12, 2)
  with pytest.raises(ValueError, match='numerical rank 2'):
    sim.prompt_subspace(p, rank=3)


def test_deep_prompts_are_flattened_to_rows():
  deep = np.random.default_rng(6).standard_normal((3, 4, 16))     # [layers, L, d]
  flat = deep.reshape(12, 16)
  a, b = sim.prompt_subspace(deep, rank=5), sim.prompt_subspace(flat, rank=5)
  np.testing.assert_allclose(a @ a.T, b @ b.T, atol=1e-12)
  assert sim.prompt_subspace(np.ones(16, np.float32)).shape == (16, 1)   # one vector: one row


@pytest.mark.parametrize('k', [1, 3, 5])
def test_equals_scipy_principal_angles_for_equal_ranks(k):
  rng = np.random.default_rng(10 + k)
  p, q = rng.standard_normal((8, 12)), rng.standard_normal((7, 12))
  bp, bq = sim.prompt_subspace(p, rank=k), sim.prompt_subspace(q, rank=k)
  angles = linalg.subspace_angles(bp, bq)
  assert angles.shape == (k,)
  expected = np.sqrt(np.mean(np.cos(angles) ** 2))
  assert sim.subspace_correlation(bp, bq) == pytest.approx(expected, abs=1e-12)
  assert sim.subspace_correlation(bq, bp) == pytest.approx(expected, abs=1e-12)   # symmetric here
  assert sim.prompt_similarity(p, q, rank=k) == pytest.approx(expected, abs=1e-12)


def test_unequal_ranks_against_scipy_principal_angles():
  rng = np.random.default_rng(20)
  bt, bs = _orthonormal(rng, 12, 2), _orthonormal(rng, 12, 5)
  cos2 = np.cos(linalg.subspace_angles(bt, bs)) ** 2          # min(2, 5) = 2 angles
  assert sim.subspace_correlation(bt, bs) == pytest.approx(np.sqrt(cos2.sum() / 2), abs=1e-12)
  assert sim.subspace_correlation(bs, bt) == pytest.approx(np.sqrt(cos2.sum() / 5), abs=1e-12)


def test_rank_source_tasks_order_and_ties():
  d = 8
  target = _axes_prompt([0, 1], d, seed=0)
  c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
  tilted = np.zeros((2, d))
  tilted[0, 0], tilted[1, 1], tilted[1, 2] = 1.0, c, s          # span(e0, cos30° e1 + sin30° e2)
  copy = _axes_prompt([0, 1], d, seed=7)
  sources = {
      'far': _axes_prompt([3, 4], d, seed=1),                      # 0
      'half': _axes_prompt([0, 2], d, seed=2),                     # √(1/2) = 0.7071
      'tilted': tilted,                                            # √((1 + cos²30°) / 2) = 0.9354
      'b_copy': copy,                                              # 1, tied with a_copy: by name
      'a_copy': copy.copy(),
  }
  ranking = sim.rank_source_tasks(target, sources, rank=2)
  assert [n for n, _ in ranking] == ['a_copy', 'b_copy', 'tilted', 'half', 'far']
  expected = [1.0, 1.0, np.sqrt((1 + c ** 2) / 2), np.sqrt(0.5), 0.0]
  np.testing.assert_allclose([v for _, v in ranking], expected, atol=1e-12)
  assert ranking[0][1] == ranking[1][1]
  assert sim.rank_source_tasks(target, sources, top_k=2, rank=2) == ranking[:2]
  assert sim.rank_source_tasks(target, sources, top_k=0, rank=2) == []
  by_threshold = sim.rank_source_tasks(target, sources, threshold=1.0)       # k = 2 too
  assert [n for n, _ in by_threshold] == [n for n, _ in ranking]
  np.testing.assert_allclose([v for _, v in by_threshold], [v for _, v in ranking], atol=1e-12)
  with pytest.raises(ValueError, match='top_k'):
    sim.rank_source_tasks(target, sources, top_k=-1)


def test_similarity_matrix():
  rng = np.random.default_rng(30)
  prompts = {'t1': rng.standard_normal((5, 10)), 't0': rng.standard_normal((6, 10)),
             't2': rng.standard_normal((4, 10))}
  names, m = sim.similarity_matrix(prompts, rank=3)
  assert names == ['t1', 't0', 't2']                               # mapping order
  assert m.shape == (3, 3)
  np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-12)
  np.testing.assert_allclose(m, m.T, atol=1e-12)                   # equal ranks: symmetric
  for i, a in enumerate(names):
    for j, b in enumerate(names):
      assert m[i, j] == pytest.approx(sim.prompt_similarity(prompts[a], prompts[b], rank=3), abs=1e-12)
  names, m = sim.similarity_matrix({})
  assert names == [] and m.shape == (0, 0)


def test_errors():
  p = np.random.default_rng(40).standard_normal((4, 6))
  with pytest.raises(ValueError, match='not both'):
    sim.prompt_subspace(p, threshold=0.9, rank=2)
  with pytest.raises(ValueError, match='zero'):
    sim.prompt_subspace(np.zeros((3, 5)))
  with pytest.raises(ValueError, match='threshold'):
    sim.prompt_subspace(p, threshold=0.0)
  with pytest.raises(ValueError, match='threshold'):
    sim.prompt_subspace(p, threshold=1.5)
  with pytest.raises(ValueError, match='rank'):
    sim.prompt_subspace(p, rank=0)
  with pytest.raises(ValueError, match='orthonormal'):
    sim.subspace_correlation(p.T, sim.prompt_subspace(p))        # a prompt is not a basis
  with pytest.raises(ValueError, match='different spaces'):
    sim.subspace_correlation(np.eye(3)[:, :1], np.eye(4)[:, :1])
  with pytest.raises(ValueError, match='non-empty'):
    sim.prompt_subspace(np.zeros((0, 4)))


# ---------------------------------------------------------------------------------------------------------
# `promptjax similarity`: prompt files (and a downstream run's prompts/ folder) in, ranking and matrix out.


def test_similarity_cli_ranks_sources_from_files(tmp_path, capsys):
  import json
  from promptjax import cli
  d = 16
  run = tmp_path / 'run' / 'prompts'
  run.mkdir(parents=True)
  np.save(tmp_path / 'target.npy', _axes_prompt([0, 1], d, seed=1))
  np.save(run / 'inside.npy', _axes_prompt([0, 1, 2], d, seed=2))      # contains the target: corr 1
  np.save(run / 'half.npy', _axes_prompt([1, 5], d, seed=3))           # shares one of two axes: √(1/2)
  np.savez(tmp_path / 'deep.npz', **{'encoder/key': _axes_prompt([7, 8], d, seed=4)[None],  # orthogonal: 0
                                      'encoder/value': _axes_prompt([8, 9], d, seed=5)[None]})
  out = tmp_path / 'sim'
  assert cli.main(['similarity', str(tmp_path / 'target.npy'), str(tmp_path / 'run'),
                   f'deep={tmp_path / "deep.npz"}', '--target', 'target', '--output_dir', str(out)]) == 0
  printed = capsys.readouterr().out.splitlines()
  assert [line.split(':')[0].strip() for line in printed[1:4]] == ['inside', 'half', 'deep']
  result = json.load(open(out / 'similarity.json'))
  ranking = dict(result['ranking'])
  assert ranking['inside'] == pytest.approx(1.0, abs=1e-6)
  assert ranking['half'] == pytest.approx(np.sqrt(0.5), abs=1e-6)
  assert ranking['deep'] == pytest.approx(0.0, abs=1e-6)
  assert result['ranks'] == {'target': 2, 'inside': 3, 'half': 2, 'deep': 3}
  assert os.path.getsize(out / 'similarity.png') > 0
  # Without --target: the full matrix, row = target.
  assert cli.main(['similarity', str(tmp_path / 'target.npy'), str(tmp_path / 'run'), '--rank', '1']) == 0
  assert capsys.readouterr().out.count('\n') == 2 + 3


def test_similarity_cli_errors(tmp_path, capsys):
  from promptjax import cli
  np.save(tmp_path / 'a.npy', np.eye(3))
  for args, needle in [([], 'needs prompts'),
                       ([str(tmp_path / 'missing.npy'), str(tmp_path / 'a.npy')], 'neither a prompt file'),
                       ([str(tmp_path / 'a.npy')], 'at least two prompts'),
                       ([str(tmp_path / 'a.npy'), f'b={tmp_path / "a.npy"}', '--target', 'c'], 'not one of'),
                       ([str(tmp_path / 'a.npy'), f'b={tmp_path / "a.npy"}', '--rank', '1', '--threshold', '0.9'],
                        'not both')]:
    assert cli.main(['similarity', *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], (args, err)
