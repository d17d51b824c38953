"""Evaluation the way the papers do it.

* `rank_classification`: zero-shot rank classification (summed or length-normalized scores), per-instance
  predictions written as JSON lines;
* `fewshot`: Wu et al.'s 16-shot prompt tuning, many templates vmapped in one program;
* `metrics`: ARG (Wu et al. over a random baseline, Qin et al. over a baseline run) and the paired bootstrap;
* `crossfit_metrics`: CrossFit's per-task metrics; `similarity`: prompt-subspace task similarity (Qin A.6–A.7);
* `report`: `promptjax compare` tables and per-dataset plots; `run`: `promptjax eval` / `fewshot`.

For one's own ``seqio.Evaluator`` script (README, "Evaluation"): `load_params` (a checkpoint → model and
parameters; `load_params_with_info` also gives the checkpoint's path and step), `seqio_predict_fn` (greedy
decoding) and `seqio_score_fn` (target log-likelihoods, for the rank-classification tasks' score metric).
"""

from promptjax.evaluation.fewshot import FewShotConfig, evaluate_few_shot, evaluate_zero_shot
from promptjax.evaluation.generation import seqio_predict_fn, seqio_score_fn
from promptjax.evaluation.rank_classification import EvaluationError
from promptjax.evaluation.run import evaluate, load_params, load_params_with_info
from promptjax.evaluation.downstream import DownstreamConfig
from promptjax.evaluation.downstream import run as downstream_run
