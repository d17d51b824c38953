"""Meta-learning for promptability (Wu et al. 2022 FOMAML / adapted Reptile; Qin et al. 2023 prompt-only
MAML / FoMAML / Reptile / MTL) on one prompt-only inner loop. SUPMER (Pan et al. 2023) builds on it in
`promptjax.supmer`.

  inner.py        the inner loop (`lax.scan` of prompt-only optax steps), shared by every algorithm
  algorithms.py   `MetaConfig`, `meta_gradient` (vmapped clones, chunked), `make_meta_train_step`
  method.py       `MetaLearning`: the training method the generic loop runs (meta-batches from
                  `promptjax.data.meta_sampler`)
"""

from promptjax.meta.algorithms import ALGORITHMS, MetaConfig, MetaError, make_meta_train_step, meta_gradient
from promptjax.meta.inner import inner_loop, join_prompt, split_prompt
from promptjax.meta.method import MetaLearning
