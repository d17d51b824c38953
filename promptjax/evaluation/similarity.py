"""Task similarity from tuned soft prompts (Qin et al. 2023, Appendix A.6–A.7).

Qin et al. 2023 (§6, A.6, A.7) "regard the soft prompt as the task embedding (Zhou et al., 2022)
and obtain its subspace by Singular Value Decomposition (SVD) following Saha et al. (2021)", then score a
target task against each source task by "the correlation between input subspaces (the norm of projected
subspace onto the other subspace)" following Lin et al. (2022); A.7 tunes MPT from "5 source tasks with the
highest correlation scores" (`rank_source_tasks`).

Subspace (Saha et al. 2021, GPM, "Gradient Projection Memory for Continual Learning"): a prompt
P ∈ R^{L×d} (L prompt tokens as rows, d the embedding size) has the SVD P = U S Vᵀ; its rows live in R^d,
so the task's subspace is spanned by the first k right singular vectors, the first k columns of V
(`prompt_subspace`, a d×k orthonormal basis). k is either fixed (``rank=k``) or GPM's energy criterion
(``threshold=ε``): the smallest k with Σ_{i<k} s_i² / Σ_i s_i² ≥ ε, default `DEFAULT_THRESHOLD` = 0.99
(GPM's experiments use values between about 0.95 and 0.99; Qin et al. do not state theirs).
Numerically zero singular values (below ``max(L, d) · eps · s_max``, NumPy's ``matrix_rank`` tolerance)
never enter the basis. A deep prompt or any array with more than two axes is reshaped to (-1, d) first:
its rows from every layer are pooled into one set of vectors in R^d; a prompt subtree (a mapping, e.g. the
per-layer key/value tables of a deep prompt read from an ``.npz``) pools the rows of all its arrays.

Correlation (Lin et al. 2022, TRGP, "Trust Region Gradient Projection for Continual Learning": the
norm of the projection onto an old task's subspace relative to the norm of what is projected), applied to
the target basis B_t (d×k_t) and the source basis B_s (d×k_s) (`subspace_correlation`):

    corr(t → s) = ‖B_sᵀ B_t‖_F / √k_t  ∈ [0, 1]

the root-mean-square length of the target's basis vectors after projection onto the source subspace:
1 when the target subspace lies inside the source subspace, 0 when the two are orthogonal. With the
principal angles θ_i between the subspaces (the singular values of B_sᵀ B_t are cos θ_i),
corr² = Σ_i cos² θ_i / k_t; for k_t = k_s it is √mean(cos² θ_i) and symmetric, otherwise it is not
(a small target subspace inside a large source subspace scores 1, the reverse at most √(k_small/k_large)).
TRGP itself projects the input representation (here P_t) rather than its basis, which weights directions
by their singular values; the basis form treats every direction of the subspace alike.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np

DEFAULT_THRESHOLD = 0.99
_ORTHONORMAL_ATOL = 1e-5


def _leaves(tree: Any) -> List[Any]:
  if isinstance(tree, Mapping):
    return [leaf for k in sorted(tree) for leaf in _leaves(tree[k])]
  return [tree]


def _as_matrix(prompt: Any) -> np.ndarray:
  if isinstance(prompt, Mapping):   # a prompt subtree (e.g. a deep prompt's per-layer key/value tables)
    rows = [_as_matrix(leaf) for leaf in _leaves(prompt)]
    if not rows or len({r.shape[1] for r in rows}) != 1:
      raise ValueError(f'a prompt tree must hold arrays with one last-axis size; got {[r.shape for r in rows]}')
    return np.concatenate(rows, axis=0)
  p = np.asarray(prompt)
  if p.ndim == 0 or p.size == 0:
    raise ValueError(f'a prompt must be a non-empty array of shape [L, d] (or [..., d]); got shape {p.shape}')
  return p.astype(np.float64).reshape(-1, p.shape[-1])


def energy_rank(singular_values: Sequence[float], threshold: float) -> int:
  """GPM's k: the smallest k whose leading squared singular values hold ≥ `threshold` of the total."""
  if not 0.0 < threshold <= 1.0:
    raise ValueError(f'threshold must lie in (0, 1], got {threshold}')
  s = np.sort(np.abs(np.asarray(singular_values, np.float64)))[::-1]
  energy = np.cumsum(s ** 2)
  if s.size == 0 or energy[-1] <= 0:
    raise ValueError('the prompt is zero: it spans no subspace')
  k = int(np.searchsorted(energy / energy[-1], threshold, side='left')) + 1
  return min(k, s.size)


def prompt_subspace(prompt: Any, threshold: Optional[float] = None, rank: Optional[int] = None
                    ) -> np.ndarray:
  """An orthonormal basis [d, k] of the span of the prompt's rows (its top-k right singular vectors).

  Args:
    prompt: [L, d] array (NumPy or JAX; any float dtype); more axes are flattened to [-1, d].
    threshold: GPM's energy threshold for k (default `DEFAULT_THRESHOLD` when `rank` is not given).
    rank: a fixed k instead; must not exceed the prompt's numerical rank.
  """
  if threshold is not None and rank is not None:
    raise ValueError('give threshold or rank, not both')
  p = _as_matrix(prompt)
  _, s, vt = np.linalg.svd(p, full_matrices=False)
  tol = s[0] * max(p.shape) * np.finfo(np.float64).eps if s.size else 0.0
  numerical_rank = int(np.sum(s > tol))
  if numerical_rank == 0:
    raise ValueError('the prompt is zero: it spans no subspace')
  if rank is not None:
    if isinstance(rank, bool) or int(rank) != rank or rank < 1:
      raise ValueError(f'rank must be a positive integer, got {rank!r}')
    if rank > numerical_rank:
      raise ValueError(f'rank={rank} exceeds the prompt\'s numerical rank {numerical_rank} '
                       f'(shape {p.shape})')
    k = int(rank)
  else:
    k = min(energy_rank(s, DEFAULT_THRESHOLD if threshold is None else threshold), numerical_rank)
  return vt[:k].T.copy()


def _check_basis(basis: Any, what: str) -> np.ndarray:
  b = np.asarray(basis, np.float64)
  if b.ndim != 2 or b.shape[1] == 0:
    raise ValueError(f'{what} must be a [d, k] basis with k >= 1, got shape {b.shape}')
  if not np.allclose(b.T @ b, np.eye(b.shape[1]), atol=_ORTHONORMAL_ATOL):
    raise ValueError(f'{what} does not have orthonormal columns (use prompt_subspace to get one)')
  return b


def subspace_correlation(basis_target: Any, basis_source: Any) -> float:
  """‖B_sᵀ B_t‖_F / √k_t: how much of the target subspace lies in the source subspace, in [0, 1].

  Asymmetric unless both bases have the same number of columns.
  """
  bt = _check_basis(basis_target, 'basis_target')
  bs = _check_basis(basis_source, 'basis_source')
  if bt.shape[0] != bs.shape[0]:
    raise ValueError(f'the bases live in different spaces: d={bt.shape[0]} vs d={bs.shape[0]}')
  corr = np.linalg.norm(bs.T @ bt) / np.sqrt(bt.shape[1])
  return float(np.clip(corr, 0.0, 1.0))


def prompt_similarity(prompt_target: Any, prompt_source: Any, threshold: Optional[float] = None,
                      rank: Optional[int] = None) -> float:
  """`subspace_correlation` of the two prompts' subspaces (the first is the target)."""
  return subspace_correlation(prompt_subspace(prompt_target, threshold, rank),
                              prompt_subspace(prompt_source, threshold, rank))


def rank_source_tasks(target_prompt: Any, source_prompts: Mapping[str, Any], top_k: Optional[int] = None,
                      threshold: Optional[float] = None, rank: Optional[int] = None
                      ) -> List[Tuple[str, float]]:
  """Source tasks by correlation with the target, best first (ties by name); the first `top_k` if given.

  Qin et al. A.7 transfer from the 5 highest (``top_k=5``); the lowest five are the last five of the
  full ranking (``top_k=None``).
  """
  if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 0):
    raise ValueError(f'top_k must be a non-negative integer or None, got {top_k!r}')
  target = prompt_subspace(target_prompt, threshold, rank)
  scores = [(name, subspace_correlation(target, prompt_subspace(p, threshold, rank)))
            for name, p in source_prompts.items()]
  scores.sort(key=lambda item: (-item[1], item[0]))
  return scores if top_k is None else scores[:int(top_k)]


def similarity_matrix(prompts: Mapping[str, Any], threshold: Optional[float] = None,
                      rank: Optional[int] = None) -> Tuple[List[str], np.ndarray]:
  """All pairwise correlations: ``matrix[i, j]`` = corr(names[i] → names[j]), names in mapping order."""
  names = list(prompts)
  bases = [prompt_subspace(prompts[n], threshold, rank) for n in names]
  matrix = np.array([[subspace_correlation(bt, bs) for bs in bases] for bt in bases], np.float64)
  return names, matrix.reshape(len(names), len(names))


# ---------------------------------------------------------------------------------------------------------
# Files and `promptjax similarity`.


def load_prompts(specs: Sequence[str]) -> dict:
  """Prompts by name from ``NAME=PATH`` or ``PATH`` specs (name = the file stem).

  A PATH is a prompt file written by `promptjax.models.export_prompt` (``.npy`` shallow, ``.npz`` deep) or a
  directory: every ``*.npy`` / ``*.npz`` in it and in its ``prompts/`` folder (what `promptjax downstream`
  writes, one tuned prompt per target task and seed).
  """
  import os
  from promptjax.evaluation.rank_classification import EvaluationError
  prompts = {}

  def add(name, path):
    if name in prompts:
      raise EvaluationError(f'Two prompts are named {name!r}; name them with NAME=PATH.')
    if path.endswith('.npz'):
      with np.load(path) as z:
        prompts[name] = {k: np.asarray(z[k], np.float32) for k in z.files}
    else:
      prompts[name] = np.asarray(np.load(path), np.float32)

  for spec in specs:
    name, path = spec.split('=', 1) if '=' in spec else (None, spec)
    if os.path.isdir(path):
      folders = [path] + [os.path.join(path, 'prompts')] * os.path.isdir(os.path.join(path, 'prompts'))
      files = sorted(os.path.join(d, f) for d in folders for f in os.listdir(d) if f.endswith(('.npy', '.npz')))
      if not files:
        raise EvaluationError(f'{path!r} holds no prompt files (*.npy / *.npz, or a prompts/ folder of them); '
                              f'export prompts with promptjax.models.export_prompt or run promptjax downstream.')
      for f in files:
        add(os.path.splitext(os.path.basename(f))[0] if name is None else
            f'{name}/{os.path.splitext(os.path.basename(f))[0]}', f)
    elif os.path.isfile(path) and path.endswith(('.npy', '.npz')):
      add(name or os.path.splitext(os.path.basename(path))[0], path)
    else:
      raise EvaluationError(f'{path!r} is neither a prompt file (.npy / .npz) nor a directory of them.')
  return prompts


def write_similarity(prompts: Mapping[str, Any], output_dir: Optional[str], target: Optional[str] = None,
                     top_k: Optional[int] = None, threshold: Optional[float] = None,
                     rank: Optional[int] = None) -> dict:
  """The similarity matrix (and, with `target`, its source ranking); with `output_dir`, writes
  ``similarity.json`` and a heat map ``similarity.png``."""
  import json
  import os
  from promptjax.evaluation.rank_classification import EvaluationError
  if len(prompts) < 2:
    raise EvaluationError(f'Task similarity needs at least two prompts, got {len(prompts)}.')
  if target is not None and target not in prompts:
    raise EvaluationError(f'--target {target!r} is not one of the prompts: {sorted(prompts)}.')
  names, matrix = similarity_matrix(prompts, threshold, rank)
  out = {'names': names, 'matrix': matrix.tolist(), 'threshold': threshold, 'rank': rank,
         'ranks': {n: int(prompt_subspace(prompts[n], threshold, rank).shape[1]) for n in names}}
  if target is not None:
    sources = {n: p for n, p in prompts.items() if n != target}
    out['target'] = target
    out['ranking'] = rank_source_tasks(prompts[target], sources, top_k, threshold, rank)
  if output_dir:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, 'similarity.json'), 'w') as f:
      json.dump(out, f, indent=1)
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap='viridis')
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel('source'), ax.set_ylabel('target')
    ax.set_title('prompt-subspace correlation (Qin et al. A.6)')
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, 'similarity.png'), dpi=120)
    plt.close(fig)
  return out
