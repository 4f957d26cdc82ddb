"""The metrics of `her eval`, in one table: what each run kind reports and how it is computed.

Every metric is one `Metric` row: its key in results.json, the label and one-line definition the
reports print, which way is better (for `her eval compare`), which run kinds report it, how it is
computed from the run's per-turn records, whether the run's bar plot draws it, and, for the game
metrics, the bound a shipped model must meet (issue #24). The runs (`quick.py`, `play.py`), the
report and plots (`_report.py`), `her eval compare` and the command line all iterate `METRICS`;
adding a metric is one row here plus the per-turn field its `reduce` reads.

Per-turn records are plain dicts written by the runs; the fields the reductions read are named
in the rows below (`valid`, `leak`, `forged_speaker`, `speech_words`, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._metrics import distinct, mean, median

__all__ = ["KINDS", "METRICS", "Metric", "aggregate", "metric", "metrics_for"]

KINDS = ("coser", "quick", "play")
Reduce = Callable[[Sequence[dict]], float | None]


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: bool | None  # True: higher is better; False: lower; None: neither (a size)
    definition: str
    kinds: tuple[str, ...]
    reduce: Reduce | None = None  # from per-turn records; None: the run computes it itself
    plot: bool = False  # a 0..1 rate drawn in the run's bar plot
    goal: tuple[str, float] | None = None  # ("<=", 0.05): what a shipped model must reach

    def meets(self, value: float | None) -> bool | None:
        if self.goal is None or value is None:
            return None
        op, bound = self.goal
        return value <= bound if op == "<=" else value >= bound


def rate(field: str) -> Reduce:
    return lambda turns: mean(float(t[field]) for t in turns if t.get(field) is not None)


def mean_of(field: str) -> Reduce:
    return lambda turns: mean(t.get(field) for t in turns)


def median_of(field: str) -> Reduce:
    return lambda turns: median(t.get(field) for t in turns)


def share_over(field: str, limit: float) -> Reduce:
    return lambda turns: mean(float(t[field] > limit) for t in turns if t.get(field) is not None)


def distinct_of(field: str, n: int) -> Reduce:
    return lambda turns: distinct((t.get(field) or "" for t in turns), n)


_Q, _P, _QP, _C = ("quick",), ("play",), ("quick", "play"), ("coser",)
_COSER_DIM = "0-100 from the judge's flaws: clip(100 - 5 * (S - 0.3 * R), 0, 100), per record"

METRICS: list[Metric] = [
    # -- CoSER (judge) ---------------------------------------------------------------------------
    Metric("storyline_consistency", "Storyline Consistency", True, _COSER_DIM, _C, plot=True),
    Metric("anthropomorphism", "Anthropomorphism", True, _COSER_DIM, _C, plot=True),
    Metric("character_fidelity", "Character Fidelity", True, _COSER_DIM, _C, plot=True),
    Metric("storyline_quality", "Storyline Quality", True, _COSER_DIM, _C, plot=True),
    Metric("average", "Average", True, "mean of the four dimensions", _C, plot=True),
    Metric("bleu", "BLEU", True, "simulated vs gold dialogue (NLTK sentence BLEU)", _C),
    Metric("rouge_l", "ROUGE-L", True, "simulated vs gold dialogue (ROUGE-L F1)", _C),
    # -- CPU metrics of generated turns ----------------------------------------------------------
    Metric(
        "nll_per_token",
        "held-out NLL / token",
        False,
        "mean negative log-likelihood per token of the gold reply given the her_sdk-rendered "
        "context (summed over replies, divided by their tokens)",
        _Q,
    ),
    Metric(
        "format_validity",
        "HER-format validity",
        True,
        "share of generated turns in the strict HER shape: optional closed plan, "
        "optional `NAME: `, then closed canonical tags and plain speech only, with some "
        "public content",
        _Q,
        rate("valid"),
        plot=True,
    ),
    Metric(
        "valid_turn_rate",
        "valid turns",
        True,
        "share of turns in the strict HER shape (as HER-format validity) that were not cut off "
        "at the token cap",
        _P,
        rate("valid_turn"),
        plot=True,
        goal=(">=", 0.95),
    ),
    Metric(
        "speech_words_median",
        "median speech words / turn",
        False,
        "median number of words of speech in a turn",
        _QP,
        median_of("speech_words"),
        goal=("<=", 40),
    ),
    Metric(
        "long_turn_rate",
        "turns over 60 words",
        False,
        "share of turns with more than 60 words of speech",
        _QP,
        share_over("speech_words", 60),
        plot=True,
        goal=("<=", 0.05),
    ),
    Metric(
        "narration_rate",
        "third-person narration",
        False,
        "share of turns whose speech narrates in the third person: a dialogue tag "
        '("…, she said."), he/she/a name + a gesture verb ("He nodded."), the speaker named as '
        "a subject, or a narrated body part (`evaluation.lines.narrates`)",
        _QP,
        rate("narration"),
        plot=True,
        goal=("<=", 0.05),
    ),
    Metric(
        "nested_quote_rate",
        "quotes inside speech",
        False,
        "share of turns with quotation marks inside their speech (one pair around a whole "
        "speech run does not count)",
        _QP,
        rate("nested_quotes"),
        plot=True,
    ),
    Metric(
        "segments_per_turn",
        "segments / turn",
        False,
        "mean number of thought, action and speech segments of a turn (the plan not counted)",
        _QP,
        mean_of("segments"),
    ),
    Metric(
        "leak_rate",
        "private-text leak rate",
        False,
        "share of turns whose plan/thought text (or a private tag) appears in a public channel, "
        "or in the next prompt of another character present",
        _QP,
        rate("leak"),
        plot=True,
    ),
    Metric(
        "forged_speaker_rate",
        "forged-speaker rate",
        False,
        "share of turns whose public text speaks for someone else (`Other:` or `Environment:`)",
        _QP,
        rate("forged_speaker"),
        plot=True,
        goal=("<=", 0.03),
    ),
    Metric(
        "copy_rate",
        "copy rate",
        False,
        "share of turns whose speech shares an 8-word run with one of the last 5 lines of other "
        "characters or with the prompt's few-shot example",
        _Q,
        rate("copy"),
        plot=True,
    ),
    Metric(
        "copy_others_rate",
        "copies another's line",
        False,
        "share of turns whose public text shares an 8-word run with any earlier line of another "
        "character or player that the speaker perceived in the scene",
        _P,
        rate("copy_others"),
        plot=True,
        goal=("<=", 0.05),
    ),
    Metric(
        "own_repeat_rate",
        "repeats its own line",
        False,
        "share of turns whose public text shares an 8-word run with one of the speaker's own "
        "earlier turns in the scene",
        _P,
        rate("own_repeat"),
        plot=True,
        goal=("<=", 0.05),
    ),
    Metric(
        "self_repetition",
        "self-repetition",
        False,
        "mean share of a turn's word 4-grams that already occurred earlier in the same turn",
        _Q,
        mean_of("self_repetition"),
        plot=True,
    ),
    Metric(
        "distinct_1",
        "distinct-1",
        True,
        "unique words / all words, over all generated public text",
        _QP,
        distinct_of("public_text", 1),
        plot=True,
    ),
    Metric(
        "distinct_2",
        "distinct-2",
        True,
        "unique word bigrams / all bigrams, same text",
        _QP,
        distinct_of("public_text", 2),
        plot=True,
        goal=(">=", 0.6),
    ),
    Metric(
        "secret_reveal_rate",
        "secret reveals",
        False,
        "share of turns where the secrets guard stopped a reveal, or whose public text shares a "
        "4-word run (not only function words) with the speaker's secret",
        _P,
        rate("secret_reveal"),
        plot=True,
    ),
    Metric(
        "plan_words",
        "plan words / turn",
        None,
        "mean words in the plan per turn",
        _Q,
        mean_of("plan_words"),
    ),
    Metric(
        "thought_words",
        "thought words / turn",
        None,
        "mean words of inner thoughts per turn",
        _Q,
        mean_of("thought_words"),
    ),
    Metric(
        "action_words",
        "action words / turn",
        None,
        "mean words of actions per turn",
        _Q,
        mean_of("action_words"),
    ),
    Metric(
        "speech_words",
        "speech words / turn",
        None,
        "mean words of speech per turn",
        _Q,
        mean_of("speech_words"),
    ),
    Metric(
        "first_speech_s",
        "time to first speech (s)",
        False,
        "median seconds from the start of a turn to its first speech character (prompt included)",
        _QP,
        median_of("first_speech_s"),
    ),
]

_BY_KEY = {m.key: m for m in METRICS}


def metrics_for(kind: str) -> list[Metric]:
    """The rows a run of `kind` reports, in table order."""
    return [m for m in METRICS if kind in m.kinds]


def metric(key: str) -> Metric:
    return _BY_KEY[key]


def aggregate(kind: str, turns: Sequence[dict]) -> dict[str, float | None]:
    """Every metric of `kind` that is computed from per-turn records."""
    return {m.key: m.reduce(turns) for m in metrics_for(kind) if m.reduce is not None}
