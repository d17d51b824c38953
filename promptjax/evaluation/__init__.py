"""Evaluation the way the papers do it.

* `rank_classification`: zero-shot rank classification (summed or length-normalized scores), per-instance
  predictions written as JSON lines;
* `fewshot`: Wu et al.'s 16-shot prompt tuning, many templates vmapped in one program;
* `metrics`: ARG (Wu et al. over a random baseline, Qin et al. over a baseline run) and the paired bootstrap;
* `crossfit_metrics`: CrossFit's per-task metrics; `similarity`: prompt-subspace task similarity (Qin A.6–A.7);
* `report`: `promptjax compare` tables and per-dataset plots; `run`: `promptjax eval` / `fewshot`.
"""

from promptjax.evaluation.fewshot import FewShotConfig, evaluate_few_shot, evaluate_zero_shot
from promptjax.evaluation.rank_classification import EvaluationError
from promptjax.evaluation.run import evaluate, load_params
from promptjax.evaluation.downstream import DownstreamConfig
from promptjax.evaluation.downstream import run as downstream_run
