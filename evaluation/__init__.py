"""her_sdk.evaluation: measure role-play quality (`her eval`; the `eval` extra).

    from her_sdk.evaluation import CoserSettings, run_coser, QuickSettings, run_quick, compare_runs
    from her_sdk.evaluation import PlaySettings, run_play

- `run_coser`: CoSER's Given-Circumstance Acting benchmark (multi-agent simulation with
  her_sdk characters, environment model, next-speaker prediction, then one judge call per
  dimension), resumable, with results.json, report.md and plots. See `her_sdk.evaluation.coser`
  for what follows which reference file and where it differs.
- `run_quick`: CPU metrics without a judge (held-out NLL, format validity, leaks, forged
  speakers, copying, repetition, diversity, lengths, time to first speech).
- `run_play`: seeded multi-turn game scenes through the public API (turn length and shape,
  narration, copying, repetition, forged speakers, secrets, validity, time to first speech).
- `compare_runs`: two runs of one kind side by side.
- `METRICS`: every metric of every kind, one table (`_table`); `lines`: the game-line
  heuristics the metrics, the RL rewards and the SFT data filter share.

Every model role takes any her_sdk backend, or a spec string (`her_sdk.backend_from_spec`).
This package imports nothing heavy at import time.
"""

from __future__ import annotations

from ._backends import BackendPool, backend_from_spec
from ._metrics import bleu_rouge, score_from_flaws
from ._report import compare_runs, load_results
from ._table import METRICS, Metric, metrics_for
from .coser import CoserSettings, judge_record, run_coser, simulate
from .play import PlaySettings, load_scenes, run_play
from .quick import QuickSettings, run_quick

__all__ = [
    "METRICS",
    "BackendPool",
    "CoserSettings",
    "Metric",
    "PlaySettings",
    "QuickSettings",
    "backend_from_spec",
    "bleu_rouge",
    "compare_runs",
    "judge_record",
    "load_results",
    "load_scenes",
    "metrics_for",
    "run_coser",
    "run_play",
    "run_quick",
    "score_from_flaws",
    "simulate",
]


def __getattr__(name: str):
    if name == "compare":  # its first name, which the judge's comparison of turns also had
        import warnings

        warnings.warn(
            "her_sdk.evaluation.compare is deprecated; use compare_runs", DeprecationWarning, 2
        )
        return compare_runs
    raise AttributeError(f"module 'her_sdk.evaluation' has no attribute {name!r}")
