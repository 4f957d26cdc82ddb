"""The rewards of HER's RL stage, as one table: a name, how to build the function, its weight.

    rewards: {judge: 1.0, format: 0.5}                    # an RL config names terms by weight
    rewards: {structure: 0.5, shape: 1.0, no_narration: 1.0, no_copy: 1.0, answers: 0.5}

Every reward function has trl's signature, `(prompts, completions, **dataset columns) ->
list[float]`, and the `__name__` of its row (trl logs `rewards/<name>/mean`). They read the
columns `policy_rows` writes: `prefill`, `character`, `plan`, `her_json` (the sample's persona
and history). `build_rewards` returns the functions and weights of a config's `rewards` for
trl's `reward_funcs` / `reward_weights`; a zero weight leaves a term out.

Two kinds of term:
- **judged** — `judge`: a generative judge's verdict against the sample's reference turn (needs
  a judge model; `judge.Judge`);
- **computed on the CPU** — the format of the turn (`format`, `structure`), its size (`length`,
  `shape`), looping (`repetition`), and what makes a line a game can use, with the same
  heuristics `her eval play` measures (`her_sdk.evaluation.lines`): no narration, no quotations
  inside speech, no copying of earlier lines, answering the last one, keeping the secret.

Adding a reward is one row in `REWARDS` and its function here. This module computes rewards; it
does not train (`rl.py`).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from her_sdk.evaluation.lines import (
    LineLimits,
    answer_overlap,
    narrates,
    nested_quotes,
    ngram_overlap,
    reveals_secret,
    shape_score,
    strict_valid,
)

from her_sdk import (
    Backend,
    ConfigError,
    GenerationError,
    Heard,
    Persona,
    Turn,
    backend_from_spec,
    cut_at_stop,
    parse_turn,
)
from her_sdk.format import CHATML_STOP, ENVIRONMENT, MAX_PLAN_CHARS, PRIVATE_CHANNELS

from .data import decode_her
from .judge import Judge
from .pairs import repetition_ratio, tag_errors
from .principles import load_principles

# The builders read an `rl.RLArguments` (weights, judge settings, length bounds, `shape`); it is
# typed `Any` here because rl.py imports this module.
RLArguments = Any

__all__ = [
    "REWARDS",
    "JudgeReward",
    "Reward",
    "build_rewards",
    "completion_text",
    "format_score",
    "load_judge_backend",
]

log = logging.getLogger("her_sdk.training.rewards")

RewardFunc = Callable[..., list[float]]


# ---------------------------------------------------------------------------------------------
# What every reward reads
# ---------------------------------------------------------------------------------------------


def completion_text(completion: Any, prefill: str = "") -> str:
    """The turn text of a trl completion (string or chat messages), cut at the first stop
    marker, with the prompt's prefill (e.g. `<system_thinking>`) put back in front."""
    if isinstance(completion, list):
        completion = "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    text, _ = cut_at_stop(str(completion), CHATML_STOP)
    return prefill + text


def _column(kw: dict, key: str, n: int, default: Any) -> list:
    value = kw.get(key)
    return list(value) if value is not None else [default] * n


@dataclass(frozen=True)
class _Scene:
    """What the game rewards need of a sample: who else is there, the lines the character
    perceived or said before (public text), the last line it answers, its secret."""

    others: tuple[str, ...]
    earlier: tuple[str, ...]
    last_line: str
    secret: str


@functools.lru_cache(maxsize=4096)
def _scene(her_json: str) -> _Scene:
    persona, history, _ = decode_her({"her": json.loads(her_json)})
    return _scene_of(persona, history)


def _scene_of(persona: Persona, history: Sequence[Heard | Turn]) -> _Scene:
    earlier, last = [], ""
    for item in history:
        if isinstance(item, Heard):
            if item.speaker == ENVIRONMENT:
                continue
            text = " ".join([*item.actions, item.speech]).strip()
            if item.speech.strip():
                last = item.speech
        else:
            text = " ".join([*item.actions, item.speech]).strip()
        if text:
            earlier.append(text)
    others = {h.speaker for h in history if isinstance(h, Heard)} | set(persona.others)
    others.discard(persona.name)
    return _Scene(tuple(sorted(others | {ENVIRONMENT})), tuple(earlier), last, persona.secrets)


@dataclass(frozen=True)
class _Rollout:
    text: str  # the whole turn, prefill included
    name: str
    plan: bool
    turn: Turn
    scene: _Scene | None  # None when the row has no `her_json`

    @property
    def public(self) -> str:
        return " ".join([*self.turn.actions, self.turn.speech]).strip()


def _rollouts(completions: Sequence[Any], kw: dict) -> list[_Rollout]:
    n = len(completions)
    prefills = _column(kw, "prefill", n, "")
    names = [str(x) for x in _column(kw, "character", n, "")]
    plans = _column(kw, "plan", n, True)
    hers = _column(kw, "her_json", n, None)
    out = []
    for c, pre, name, plan, her in zip(completions, prefills, names, plans, hers, strict=True):
        text = completion_text(c, pre)
        scene = _scene(her) if her else None
        out.append(_Rollout(text, name, bool(plan), parse_turn(text, name or None), scene))
    return out


def _per_rollout(name: str, score: Callable[[_Rollout], float]) -> RewardFunc:
    """A trl reward function scoring each rollout on its own with `score`."""

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **kw: Any) -> list[float]:
        return [float(score(r)) for r in _rollouts(completions, kw)]

    reward.__name__ = name
    return reward


# ---------------------------------------------------------------------------------------------
# Format, length, repetition
# ---------------------------------------------------------------------------------------------


def format_score(
    text: str, name: str, *, plan: bool = True, max_plan_chars: int = MAX_PLAN_CHARS
) -> float:
    """0..1: how well `text` (a full turn, plan included) follows the dual-layer format.

    0 when anything private reaches a public channel (tag text in speech/actions, an inner
    thought or the plan spoken aloud) or nothing visible is left; otherwise the share of
    checks passed: a plan when asked, within the plan cap the model is trained for
    (`max_plan_chars`: the runtime's short cap by default; HER's models plan at length, see
    `TurnShape.FREE`), well-formed tags, no second speaker's line. Line breaks are free (HER's
    turns run in paragraphs); a line that opens with another speaker's `Name:` is not. Which
    segments a turn has is free: HER mixes speech only, action then speech,
    thought-action-speech, ... so no segment is required beyond something visible.
    """
    turn = parse_turn(text, name)
    public = " ".join([turn.speech, *turn.actions])
    low = public.lower()
    if not public.strip():
        return 0.0
    if any(t in low for t in ("system_thinking", "role_thinking", "role_action", "<", ">")):
        return 0.0  # markup on a public channel: something private may be leaking
    privates = [s.text for s in turn.segments if s.channel in PRIVATE_CHANNELS]
    if any(len(p) >= 12 and p.lower() in low for p in privates):
        return 0.0
    checks = [
        bool(turn.plan) if plan else True,
        len(turn.plan.strip()) <= max_plan_chars,
        tag_errors(text) == 0,
        f"{name}:" not in turn.speech and not _SPEAKER_LINE.search(public),
    ]
    return sum(checks) / len(checks)


# A line of a turn's public text that opens like a transcript line of someone: "Brannoc: Fine."
_SPEAKER_LINE = re.compile(r"\n\s*[A-Z][\w'.-]*(?: [A-Z][\w'.-]*){0,3}:(?:\s|$)")


def _turn_chars(turn: Turn) -> int:
    return len(" ".join([*turn.thoughts, *turn.actions, turn.speech]).strip())


def _length(min_chars: int, max_chars: int) -> Callable[[_Rollout], float]:
    """0 for turns of min..max characters (thoughts, actions, speech), down to -1 outside."""

    def score(r: _Rollout) -> float:
        n = _turn_chars(r.turn)
        if n < min_chars:
            return -min(1.0, (min_chars - n) / max(1, min_chars))
        if n > max_chars:
            return -min(1.0, (n - max_chars) / max_chars)
        return 0.0

    return score


# ---------------------------------------------------------------------------------------------
# The judge
# ---------------------------------------------------------------------------------------------


class JudgeReward:
    """The judge's verdict of each rollout against the sample's reference turn (both orders).

    Needs dataset columns `her_json` (the sample's structured inputs) and `prefill`.
    `abstain`: the reward when the judge gives no readable verdict in either order (a backend
    error or an unreadable answer, after retries). Such rewards are constant, so a dead judge
    would leave RL optimising the other terms only: the share of abstentions among the last
    `window` comparisons is logged (`judge/abstain_rate`) and above `max_abstain_rate` the run
    stops with GenerationError.
    """

    __name__ = "judge"

    def __init__(
        self,
        judge: Judge,
        *,
        both_orders: bool = True,
        abstain: float = 0.5,
        max_abstain_rate: float = 0.2,
        window: int = 64,
    ) -> None:
        self.judge = judge
        self.both_orders = both_orders
        self.abstain = abstain
        self.max_abstain_rate = max_abstain_rate
        self.recent: deque[bool] = deque(maxlen=window)  # True: abstained
        self.abstain_rate = 0.0

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kw: Any
    ) -> list[float]:
        prefills = kw.get("prefill") or [""] * len(completions)
        items = []
        for c, p, her in zip(completions, prefills, kw["her_json"], strict=True):
            persona, history, reference = decode_her({"her": json.loads(her)})
            items.append((persona, history, completion_text(c, p), reference))
        comps = self.judge.compare_turns_many(items, both_orders=self.both_orders)
        self._watch([c.score is None for c in comps], kw.get("log_metric"))
        return [self.abstain if c.score is None else c.score for c in comps]

    def _watch(self, abstained: list[bool], log_metric: Callable | None) -> None:
        self.recent.extend(abstained)
        self.abstain_rate = sum(self.recent) / len(self.recent)
        if log_metric is not None:  # trl averages it per logging step
            log_metric("judge/abstain_rate", sum(abstained) / max(1, len(abstained)))
        if any(abstained):
            log.warning(
                "judge abstained on %d of %d rollouts (recent rate %.0f%%)",
                sum(abstained),
                len(abstained),
                100 * self.abstain_rate,
            )
        if len(self.recent) >= min(8, self.recent.maxlen or 8) and (
            self.abstain_rate > self.max_abstain_rate
        ):
            err = self.judge.last_error
            raise GenerationError(
                f"the judge abstained on {self.abstain_rate:.0%} of the last {len(self.recent)} "
                f"comparisons (judge_max_abstain_rate {self.max_abstain_rate:.0%}); "
                f"{self.judge.errors} backend errors"
                + (f", last: {type(err).__name__}: {err}" if err else ", answers unreadable")
            )


def load_judge_backend(spec: str | None) -> Backend | None:
    """The judge `judge_model` names: `none` (no judge), `heuristic` (the rule-based judge,
    in-process) or any backend spec (`her_sdk.backend_from_spec`)."""
    if spec in ("none", "", None):
        return None
    from .pairs import heuristic_judge

    return backend_from_spec("mock" if spec == "heuristic" else spec, mock=heuristic_judge)


def _judge(args: RLArguments, judge_backend: Backend | None) -> RewardFunc | None:
    backend = judge_backend if judge_backend is not None else load_judge_backend(args.judge_model)
    if backend is None:
        log.warning("rewards.judge is set but judge_model is none; no judge reward")
        return None
    ps = load_principles(args.judge_principles).subset(args.judge_principle_ids)
    judge = Judge(
        backend,
        principles=ps,
        detail=args.judge_detail,
        retries=args.judge_retries,
        max_tokens=args.judge_max_tokens,
        concurrency=args.judge_concurrency,
        prompt_format=args.judge_prompt,
    )
    return JudgeReward(
        judge,
        both_orders=args.judge_both_orders,
        abstain=args.judge_abstain,
        max_abstain_rate=args.judge_max_abstain_rate,
    )


# ---------------------------------------------------------------------------------------------
# Game lines (the heuristics of `her eval play`)
# ---------------------------------------------------------------------------------------------

COPY_NGRAM = 5  # word n-grams compared with the earlier lines by `no_copy`


def _no_copy(r: _Rollout) -> float:
    """1 minus the share of the turn's public word 5-grams found in earlier lines of the
    prompt (others' and its own)."""
    if r.scene is None:
        return 1.0
    return 1.0 - ngram_overlap(r.public, r.scene.earlier, COPY_NGRAM)


def _answers(r: _Rollout) -> float:
    """Content words shared with the last line another character said (2 of them for 1)."""
    if r.scene is None or not r.scene.last_line:
        return 1.0
    return answer_overlap(r.public, r.scene.last_line)


def _keeps_secret(r: _Rollout) -> float:
    if r.scene is None or not r.scene.secret:
        return 1.0
    return 0.0 if reveals_secret(r.public, r.scene.secret) else 1.0


def _no_narration(r: _Rollout) -> float:
    others = r.scene.others if r.scene is not None else ()
    return 0.0 if narrates(r.turn.speech, r.name, others) else 1.0


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reward:
    """One reward term: `build(args, judge_backend)` makes its trl function (None: not
    available, e.g. no judge model); `weight` is its weight in the game recipe's config
    (`training/configs/rl_gemma3_270m_game.yaml`), 0 where that recipe leaves it out."""

    name: str
    build: Callable[[RLArguments, Backend | None], RewardFunc | None]
    weight: float
    doc: str


def _simple(name: str, score: Callable[[_Rollout], float]) -> Callable[..., RewardFunc]:
    return lambda args, judge_backend: _per_rollout(name, score)


REWARDS: dict[str, Reward] = {
    r.name: r
    for r in [
        Reward(
            "judge",
            _judge,
            0.0,
            "the judge's verdict against the reference turn: win 1, tie 0.5, loss 0",
        ),
        Reward(
            "format",
            lambda args, _: _per_rollout(
                "format",
                lambda ro: format_score(
                    ro.text, ro.name, plan=ro.plan, max_plan_chars=args.max_plan_chars
                ),
            ),
            0.0,
            "0..1 dual-layer format (plan within `max_plan_chars`), 0 when private text "
            "reaches a public channel",
        ),
        Reward(
            "length",
            lambda args, _: _per_rollout(
                "length", _length(args.length_min_chars, args.length_max_chars)
            ),
            0.0,
            "0 inside [length_min_chars, length_max_chars] of turn text, down to -1 outside",
        ),
        Reward(
            "repetition",
            _simple("repetition", lambda r: -repetition_ratio(r.text)),
            0.0,
            "minus the share of repeated word trigrams in the turn",
        ),
        Reward(
            "structure",
            _simple("structure", lambda r: float(strict_valid(r.text, r.name, plan=r.plan))),
            0.5,
            "1 for a turn in the strict HER shape (what `her eval` counts as valid), else 0",
        ),
        Reward(
            "shape",
            lambda args, _: _per_rollout("shape", lambda ro: shape_score(ro.turn, args.shape)),
            1.0,
            "0..1 fit to the turn shape (segments, actions, speech words, sentences)",
        ),
        Reward(
            "no_narration",
            _simple("no_narration", _no_narration),
            1.0,
            "1 unless the speech narrates in the third person ('…, she said.', 'He nodded.')",
        ),
        Reward(
            "no_nested_quotes",
            _simple("no_nested_quotes", lambda r: 0.0 if nested_quotes(r.turn) else 1.0),
            0.5,
            "1 unless the speech holds quotation marks inside it",
        ),
        Reward(
            "no_copy",
            _simple("no_copy", _no_copy),
            1.0,
            "1 minus the share of the turn's word 5-grams found in the prompt's earlier lines",
        ),
        Reward(
            "answers",
            _simple("answers", _answers),
            0.5,
            "content words shared with the last line heard (2 of them for 1; 0 off topic)",
        ),
        Reward(
            "keeps_secret",
            _simple("keeps_secret", _keeps_secret),
            0.5,
            "0 when the public text shares a 4-word run with the character's secret, else 1",
        ),
    ]
}


def check_weights(weights: dict[str, float]) -> None:
    unknown = set(weights) - set(REWARDS)
    if unknown:
        raise ConfigError(
            f"rewards: unknown term(s) {', '.join(sorted(unknown))}; use {', '.join(REWARDS)}"
        )
    bad = [k for k, v in weights.items() if not isinstance(v, (int, float)) or v < 0]
    if bad:
        raise ConfigError(f"rewards: weights must be numbers >= 0 ({', '.join(sorted(bad))})")


def build_rewards(
    args: RLArguments, judge_backend: Backend | None = None
) -> tuple[list[RewardFunc], list[float]]:
    """The functions and weights of `args.rewards`, in table order (zero weights left out)."""
    check_weights(args.rewards)
    funcs: list[RewardFunc] = []
    weights: list[float] = []
    for name, row in REWARDS.items():
        w = float(args.rewards.get(name, 0) or 0)
        if not w:
            continue
        func = row.build(args, judge_backend)
        if func is not None:
            funcs.append(func)
            weights.append(w)
    if not funcs:
        raise ConfigError("no reward: set a positive weight in `rewards`")
    return funcs, weights


def shape_from(config: dict[str, Any]) -> LineLimits:
    """The `LineLimits` of a config's `turn_shape` mapping (missing keys: the game default)."""
    fields = set(LineLimits.__dataclass_fields__)
    unknown = set(config) - fields
    if unknown:
        raise ConfigError(
            f"turn_shape: unknown key(s) {', '.join(sorted(unknown))}; "
            f"use {', '.join(sorted(fields))}"
        )
    return LineLimits(**config)
