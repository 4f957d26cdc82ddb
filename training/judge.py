"""The HER reward model as a generative pairwise judge: prompt renderer, verdict parser, `Judge`.

    from her_sdk import MockBackend
    from her_sdk.training.judge import Judge
    from her_sdk.training.pairs import heuristic_judge
    judge = Judge(MockBackend(heuristic_judge))          # or any her_sdk Backend (HTTP, GGUF, HF)
    cmp = judge.compare_turns(persona, history, rollout_text, reference_turn)
    cmp.score            # 1.0 rollout wins, 0.5 tie, 0.0 loses (both orders combined), None abstain

The judge sees the character sheet, the conversation as the character perceived it, and two
candidate next turns (`cand_1`, `cand_2`) with plans stripped and inner thoughts kept. It names
the principles that apply (`principles.yaml`), compares the candidates on each, and ends with a
JSON object whose `better_response` is `cand_1`, `cand_2` or `tie`; a candidate that violates a
negative principle loses to one that violates none, and two that both violate one tie (the
parser enforces this from the JSON's `violations` too). Position bias is controlled by judging
both orders and averaging.

`prompt_format="her_rm"` asks in HER-RM's own words instead, so the released HER-RM-32B (or a
judge trained on HER's RM data) can judge: one user message, HER's `RM_PROMPT_TEMPLATE`
(training_code/step2_reward_sft/construct_rm_training_data.py lines 19-160, kept verbatim in
`her_rm_prompt.txt`) with the dialogue context as HER's `extract_context_from_raw_record` writes
it (lines 181-198: `System: ...`, `User: ...`, `Assistant: ...` of the character's HER-format
prompt, blank lines between) and the two candidates (plans stripped); it generates its own 3-5
principles and answers with a `<think>` and a fenced JSON verdict object (its training target
is the teacher's `result[0]`), whose `better_response` is the verdict, so it needs a budget of
thousands of tokens (4,096 by default), not hundreds. `prompt_format="her_teacher"` is HER's
teacher prompt (the principle set to select from and add to), for `her data rm-pairs
--protocol her`.

`parse_verdict` never raises: text it cannot read gives None (the caller retries, then
abstains). This module renders and parses; it does not train (see `rm.py`) or build data
(see `pairs.py`). All HER formatting comes from `her_sdk.format`.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from her_sdk import Backend, ConfigError, Persona, Sampling
from her_sdk.format import (
    TAG,
    Heard,
    Message,
    Rendered,
    Turn,
    build_her_messages,
    render_messages,
    render_perception,
    render_system_prompt,
    render_turn,
)

from .principles import PrincipleSet, load_principles

__all__ = [
    "OUTCOMES",
    "WINNER_PATTERNS",
    "Comparison",
    "Judge",
    "Verdict",
    "candidate_text",
    "her_result",
    "her_rm_messages",
    "her_teacher_messages",
    "judge_messages",
    "parse_verdict",
    "render_judge_prompt",
    "render_verdict",
    "winner_pattern",
]

OUTCOMES = ("cand_1", "cand_2", "tie")
SLOTS = ("cand_1", "cand_2")
PROMPT_FORMATS = ("sdk", "her_rm", "her_teacher")
# The budget each prompt format needs for its answer (Judge(max_tokens=None)).
DEFAULT_MAX_TOKENS = {"sdk": 384, "her_rm": 4096, "her_teacher": 4096}

JUDGE_SYSTEM = """\
You judge role-play. You are shown a character sheet, the conversation so far as the character \
perceived it, and two candidate next turns for the character: cand_1 and cand_2. In a turn, \
<role_thinking> holds the character's private first-person thoughts (heard by no one), \
<role_action> visible actions, and plain text is speech.

Judge with these principles ((+) a quality to reward, (-) a fault):
{principles}

Answer in this shape:
Applicable: the ids of the principles that matter for this comparison.
cand_1: the negative principles it violates (or none), then one short comparison.
cand_2: the same.
Last line: a JSON object {{"principles": [ids], \
"violations": {{"cand_1": [ids], "cand_2": [ids]}}, \
"better_response": "cand_1" | "cand_2" | "tie"}}.
A candidate that violates a negative principle loses to one that violates none; if both \
violate one, answer "tie". Judge the content, not the order or the length of the candidates."""


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

_CHAT_SPECIAL = re.compile(r"<\|[^<>]{0,40}\|>")


def candidate_text(candidate: Turn | str, name: str) -> str:
    """A candidate as the judge sees it: plan stripped, thoughts, actions and speech kept.

    A `Turn` is rendered by `her_sdk.format.render_turn`. Raw text (a rollout, a corrupted
    turn) is kept as written, broken tags included, so the judge can see format faults; only a
    leading plan section is removed.
    """
    if isinstance(candidate, Turn):
        return render_turn(candidate, name, keep_plan=False)
    text = _CHAT_SPECIAL.sub("", str(candidate)).strip()
    close = f"</{TAG['plan']}>"
    if close in text:
        text = text.split(close, 1)[1]
    elif text.startswith(f"<{TAG['plan']}>"):
        text = ""  # an unclosed plan: everything is private; nothing to judge but its absence
    text = text.strip()
    return text or "(empty turn)"


def _sheet(persona: Persona) -> str:
    return render_system_prompt(persona, plan=False).split("\n\n===Requirements===")[0]


def _transcript(persona: Persona, history: Sequence[Heard | Turn], max_items: int | None) -> str:
    items = list(history)[-max_items:] if max_items else list(history)
    lines = [
        render_turn(h, persona.name) if isinstance(h, Turn) else render_perception(h) for h in items
    ]
    return "\n".join(lines) or "(the scene has just begun)"


def _principle_lines(principles: PrincipleSet, detail: str) -> str:
    if detail == "full":
        return "\n".join(f"- {p.full()}" for p in principles)
    return "\n".join(f"- {p.brief()}" for p in principles)


def judge_messages(
    persona: Persona,
    history: Sequence[Heard | Turn],
    cand_1: Turn | str,
    cand_2: Turn | str,
    *,
    principles: PrincipleSet | None = None,
    detail: str = "brief",
    max_history: int | None = 12,
) -> list[dict]:
    """The judge's chat messages (system + user), as dicts (trl's conversational format)."""
    ps = principles if principles is not None else load_principles()
    system = JUDGE_SYSTEM.format(principles=_principle_lines(ps, detail))
    user = (
        f"=== Character sheet ===\n{_sheet(persona)}\n\n"
        f"=== Conversation so far ===\n{_transcript(persona, history, max_history)}\n\n"
        f"=== cand_1 ===\n{candidate_text(cand_1, persona.name)}\n\n"
        f"=== cand_2 ===\n{candidate_text(cand_2, persona.name)}\n\n"
        f"Which is the better next turn for {persona.name}?"
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def her_rm_prompt_template() -> str:
    """HER-RM's prompt template, verbatim (trailing spaces included), with `{context}`,
    `{cand_1}` and `{cand_2}` to fill."""
    from pathlib import Path

    return (Path(__file__).parent / "her_rm_prompt.txt").read_text(encoding="utf-8")


def her_teacher_prompt_template() -> str:
    """HER's teacher prompt (`principle_template_en`, training_code/step2_reward_sft/
    process_inference_results.py lines 13-139), verbatim: `{input}`, `{cand_1}`, `{cand_2}` and
    `{principles}` to fill."""
    from pathlib import Path

    return (Path(__file__).parent / "her_teacher_prompt.txt").read_text(encoding="utf-8")


def principles_json(principles: PrincipleSet) -> str:
    """A principle set as the JSON HER's teacher prompt lists (dimension -> principles)."""
    dims: dict[str, list[dict]] = {}
    for p in principles:
        dims.setdefault(p.dimension, []).append(
            {
                "principle_name": p.name,
                "principle_level": p.level,
                "polarity": p.polarity,
                "main_content": p.definition,
            }
        )
    return json.dumps(dims, ensure_ascii=False)


def _her_context(persona: Persona, history: Sequence[Heard | Turn]) -> str:
    msgs = build_her_messages(persona, history, plan=True)
    roles = {"system": "System", "user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"{roles[m.role]}: {m.content}" for m in msgs)


def _her_candidate(c: Turn | str, name: str) -> str:
    if isinstance(c, Turn):
        return render_turn(c, name, keep_plan=False, spaced=True)
    return candidate_text(c, name)


def her_teacher_messages(
    persona: Persona,
    history: Sequence[Heard | Turn],
    cand_1: Turn | str,
    cand_2: Turn | str,
    principles: PrincipleSet,
) -> list[dict]:
    """HER's teacher request for a comparison (process_inference_results.py lines 240-248,
    replaced in HER's order): the principle list to select from, add to, and judge by."""
    text = her_teacher_prompt_template()
    text = text.replace("{input}", _her_context(persona, history))
    text = text.replace("{cand_1}", _her_candidate(cand_1, persona.name))
    text = text.replace("{cand_2}", _her_candidate(cand_2, persona.name))
    text = text.replace("{principles}", principles_json(principles))
    return [{"role": "user", "content": text}]


def _unwrap_result(obj: dict | None) -> dict | None:
    """HER's teacher wraps its verdict object in `{"result": [...]}`; HER-RM writes it bare."""
    inner = obj.get("result") if obj is not None else None
    if isinstance(inner, list) and inner and isinstance(inner[0], dict):
        return inner[0]
    return inner if isinstance(inner, dict) else obj


def her_result(text: str) -> dict | None:
    """The verdict object of an answer in HER's JSON, or None: `result[0]` of the teacher's
    answer, or the object itself in HER-RM's (trained on `result[0]` alone)."""
    for chunk in _json_objects(str(text)[-40000:]):
        obj = _unwrap_result(_load_obj(chunk))
        if obj is not None and "better_response" in obj:
            return obj
    return None


WINNER_PATTERNS = ("both_sides", "cand_1_only", "cand_2_only", "tie_only", "no_winner")


def winner_pattern(result: dict) -> str:
    """HER's winner pattern of an answer (filter_high_quality_sft.py lines 64-77, 204-217):
    both_sides, cand_1_only, cand_2_only, tie_only or no_winner, by the principles' winners."""
    analysis = result.get("analysis") if isinstance(result.get("analysis"), dict) else {}
    comps = analysis.get("principle_comparisons") or []
    wins = [c.get("winner") for c in comps if isinstance(c, dict)]
    c1, c2, tie = wins.count("cand_1"), wins.count("cand_2"), wins.count("tie")
    if c1 and c2:
        return "both_sides"
    if c1:
        return "cand_1_only"
    if c2:
        return "cand_2_only"
    return "tie_only" if tie else "no_winner"


def her_rm_messages(
    persona: Persona,
    history: Sequence[Heard | Turn],
    cand_1: Turn | str,
    cand_2: Turn | str,
) -> list[dict]:
    """HER-RM's one user message for a comparison (`construct_rm_training_data.py`): the
    character's HER-format prompt as `Role: content` blocks, then the two candidates."""
    text = her_rm_prompt_template()
    # The order of HER's replacements: text a candidate quotes is never filled in again.
    text = text.replace("{context}", _her_context(persona, history))
    text = text.replace("{cand_1}", _her_candidate(cand_1, persona.name))
    text = text.replace("{cand_2}", _her_candidate(cand_2, persona.name))
    return [{"role": "user", "content": text}]


def render_judge_prompt(messages: list[dict], backend: Backend | None = None) -> Rendered:
    """Judge messages as `backend`'s prompt text (ChatML without one) and its stop strings."""
    msgs = [Message(m["role"], m["content"]) for m in messages]
    return render_messages(msgs, backend if backend is not None else "chatml")


def render_verdict(
    better: str,
    principles: Sequence[str],
    violations: dict[str, Sequence[str]],
    notes: dict[str, str] | None = None,
) -> str:
    """A verdict in the judge's answer shape (training target for the generative judge)."""
    if better not in OUTCOMES:
        raise ConfigError(f"better must be one of {OUTCOMES}")
    notes = notes or {}
    lines = [f"Applicable: {', '.join(principles) or 'none'}."]
    for slot in SLOTS:
        v = list(violations.get(slot, []))
        lines.append(
            f"{slot}: violates {', '.join(v) if v else 'none'}."
            + (f" {notes[slot]}" if notes.get(slot) else "")
        )
    payload = {
        "principles": list(principles),
        "violations": {s: list(violations.get(s, [])) for s in SLOTS},
        "better_response": better,
    }
    lines.append(json.dumps(payload))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    better: str  # "cand_1" | "cand_2" | "tie"
    principles: list[str] = field(default_factory=list)
    violations: dict[str, list[str]] = field(default_factory=dict)
    overridden: bool = False  # the negative-principle rule changed the stated winner
    stated: str | None = None  # what the text said before the rule was applied
    raw: str = ""


_ALIASES = {
    "cand_1": "cand_1",
    "cand1": "cand_1",
    "candidate_1": "cand_1",
    "candidate1": "cand_1",
    "1": "cand_1",
    "a": "cand_1",
    "response_1": "cand_1",
    "first": "cand_1",
    "cand_2": "cand_2",
    "cand2": "cand_2",
    "candidate_2": "cand_2",
    "candidate2": "cand_2",
    "2": "cand_2",
    "b": "cand_2",
    "response_2": "cand_2",
    "second": "cand_2",
    "tie": "tie",
    "draw": "tie",
    "equal": "tie",
    "both": "tie",
    "none": "tie",
    "neither": "tie",
}
_BETTER_RE = re.compile(r"""["']?better[_ ]response["']?\s*[:=]\s*["']?\s*([A-Za-z_ ]*\d?)""", re.I)


def _outcome(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    key = re.sub(r"[\s\-]+", "_", value.strip().lower()).strip("_\"'.")
    return _ALIASES.get(key)


def _json_objects(text: str) -> list[str]:
    """Balanced `{...}` substrings, last first (the verdict ends the answer)."""
    out, stack = [], []
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            start = stack.pop()
            if not stack:
                out.append(text[start : i + 1])
    return out[::-1]


def _load_obj(s: str) -> dict | None:
    for attempt in (s, re.sub(r",\s*([}\]])", r"\1", s)):
        try:
            obj = json.loads(attempt)
        except (json.JSONDecodeError, ValueError):
            try:  # single quotes, True/None: a Python literal
                obj = ast.literal_eval(attempt)
            except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
                continue
        if isinstance(obj, dict):
            return obj
    return None


def _ids(x: Any) -> list[str]:
    if isinstance(x, str):
        return [t for t in re.split(r"[\s,;]+", x) if t and t.lower() != "none"]
    if isinstance(x, (list, tuple)):
        return [str(t).strip() for t in x if str(t).strip()]
    return []


def parse_verdict(text: Any, principles: PrincipleSet | None = None) -> Verdict | None:
    """The verdict in a judge's answer, or None when there is none to read. Never raises.

    Reads the last JSON object that has `better_response` (tolerating code fences, single
    quotes, trailing commas and aliases such as "Candidate 2" or "B"), else a bare
    `better_response: X` line. When `violations` names negative principles for exactly one
    candidate, that candidate loses whatever the stated winner (HER's rule); when both violate
    one, the verdict is a tie (as HER's judge rules).
    """
    try:
        return _parse(text if isinstance(text, str) else str(text), principles)
    except Exception:  # a parser of model output must not take a training run down
        return None


def _parse(text: str, principles: PrincipleSet | None) -> Verdict | None:
    text = text[-20000:]  # verdicts end the answer; bound the work on runaway generations
    obj: dict | None = None
    for chunk in _json_objects(text):
        cand = _unwrap_result(_load_obj(chunk))
        if cand is not None and any(k.lower().replace(" ", "_") == "better_response" for k in cand):
            obj = {k.lower().replace(" ", "_"): v for k, v in cand.items()}
            break
    if obj is not None:
        stated = _outcome(obj.get("better_response"))
    else:
        matches = _BETTER_RE.findall(text)
        stated = _outcome(matches[-1]) if matches else None
        obj = {}
    if stated is None:
        return None
    viol_raw = obj.get("violations") if isinstance(obj.get("violations"), dict) else {}
    violations = {}
    for k, v in viol_raw.items():
        slot = _outcome(k)
        if slot in SLOTS:
            violations[slot] = _ids(v)
    negative = principles.negative_ids() if principles is not None else None

    def bad(slot: str) -> bool:
        ids = violations.get(slot, [])
        return any(i in negative for i in ids) if negative is not None else bool(ids)

    better = stated
    b1, b2 = bad("cand_1"), bad("cand_2")
    if b1 and not b2:
        better = "cand_2"
    elif b2 and not b1:
        better = "cand_1"
    elif b1 and b2:
        better = "tie"
    return Verdict(
        better=better,
        principles=_ids(obj.get("principles")),
        violations=violations,
        overridden=better != stated,
        stated=stated,
        raw=text,
    )


# ---------------------------------------------------------------------------------------------
# Judging
# ---------------------------------------------------------------------------------------------


def _score_for_first(v: Verdict, first_slot: str) -> float:
    if v.better == "tie":
        return 0.5
    return 1.0 if v.better == first_slot else 0.0


@dataclass
class Comparison:
    """Both-order judgment of candidate `a` against `b`. `score` is a's: 1 win, .5 tie, 0 loss."""

    score: float | None
    verdicts: list[Verdict | None]

    @property
    def consistent(self) -> bool:
        """Both orders gave a verdict and they agree on the winner (no position flip)."""
        vs = self.verdicts
        if len(vs) != 2 or vs[0] is None or vs[1] is None:
            return False
        return _score_for_first(vs[0], "cand_1") == _score_for_first(vs[1], "cand_2")


class Judge:
    """A generative pairwise judge running on any her_sdk Backend.

    `retries`: extra attempts when an answer has no readable verdict (then it abstains).
    `detail`: "brief" (principle ids and names; small judges) or "full" (definitions too).
    `prompt_format`: "sdk" (this module's prompt and principle set) or "her_rm" (HER-RM's own
    prompt; the principles are then the judge's own). `max_tokens`: None gives the format's
    budget (`DEFAULT_MAX_TOKENS`).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        principles: PrincipleSet | None = None,
        detail: str = "brief",
        retries: int = 1,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        max_history: int | None = 12,
        concurrency: int = 4,
        prompt_format: str = "sdk",
    ) -> None:
        if prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"prompt_format must be one of {PROMPT_FORMATS}")
        self.prompt_format = prompt_format
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS[prompt_format]
        self.backend = backend
        self.principles = principles if principles is not None else load_principles()
        self.detail = detail
        self.retries = retries
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_history = max_history
        self.concurrency = concurrency
        self.calls = 0
        self.abstained = 0
        self.errors = 0  # backend calls that raised (a subset of the failed attempts)
        self.last_error: BaseException | None = None

    def prompt(
        self,
        persona: Persona,
        history: Sequence[Heard | Turn],
        cand_1: Turn | str,
        cand_2: Turn | str,
    ) -> Rendered:
        if self.prompt_format == "her_rm":
            return render_judge_prompt(
                her_rm_messages(persona, history, cand_1, cand_2), self.backend
            )
        if self.prompt_format == "her_teacher":
            msgs = her_teacher_messages(persona, history, cand_1, cand_2, self.principles)
            return render_judge_prompt(msgs, self.backend)
        msgs = judge_messages(
            persona,
            history,
            cand_1,
            cand_2,
            principles=self.principles,
            detail=self.detail,
            max_history=self.max_history,
        )
        return render_judge_prompt(msgs, self.backend)

    def _generate(self, prompt: Rendered, attempt: int) -> str:
        # Retries sample a little so that a deterministic failure is not simply repeated.
        temp = self.temperature if attempt == 0 else max(self.temperature, 0.7)
        sampling = Sampling(max_tokens=self.max_tokens, temperature=temp)
        stream = self.backend.stream(prompt.text, stop=prompt.stop, sampling=sampling)
        try:
            return "".join(stream)
        finally:
            stream.close()

    def verdict(
        self,
        persona: Persona,
        history: Sequence[Heard | Turn],
        cand_1: Turn | str,
        cand_2: Turn | str,
    ) -> Verdict | None:
        """One order. Retries unreadable answers; returns None (abstains) after that.
        A backend error counts as an unreadable answer."""
        prompt = self.prompt(persona, history, cand_1, cand_2)
        for attempt in range(self.retries + 1):
            self.calls += 1
            try:
                text = self._generate(prompt, attempt)
            except Exception as exc:  # counted; the caller sees the rate (JudgeReward aborts)
                self.errors += 1
                self.last_error = exc
                continue
            v = parse_verdict(text, self.principles)
            if v is not None:
                return v
        self.abstained += 1
        return None

    def health_check(self, persona: Persona, history: Sequence[Heard | Turn], turn: Any) -> Verdict:
        """One judgment, with nothing swallowed: the backend's own error if it cannot answer,
        GenerationError if its answer holds no readable verdict. Run before training starts."""
        from her_sdk import GenerationError

        text = self._generate(self.prompt(persona, history, turn, turn), 0)
        v = parse_verdict(text, self.principles)
        if v is None:
            head = " ".join(text.split())[:200]
            raise GenerationError(f"the judge answered without a readable verdict: {head!r}")
        return v

    def compare_turns(
        self,
        persona: Persona,
        history: Sequence[Heard | Turn],
        a: Turn | str,
        b: Turn | str,
        *,
        both_orders: bool = True,
    ) -> Comparison:
        """Judge a against b (and b against a); a's score averaged over readable verdicts."""
        v1 = self.verdict(persona, history, a, b)
        verdicts = [v1]
        scores = [] if v1 is None else [_score_for_first(v1, "cand_1")]
        if both_orders:
            v2 = self.verdict(persona, history, b, a)
            verdicts.append(v2)
            if v2 is not None:
                scores.append(_score_for_first(v2, "cand_2"))
        return Comparison(sum(scores) / len(scores) if scores else None, verdicts)

    def compare_turns_many(
        self,
        items: Sequence[tuple[Persona, Sequence[Heard | Turn], Any, Any]],
        *,
        both_orders: bool = True,
    ) -> list[Comparison]:
        """`compare_turns` over many (persona, history, a, b), concurrently (HTTP judges
        batch)."""
        if self.concurrency <= 1 or len(items) <= 1:
            return [self.compare_turns(*it, both_orders=both_orders) for it in items]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(
                pool.map(lambda it: self.compare_turns(*it, both_orders=both_orders), items)
            )

    def compare(self, *args: Any, **kwargs: Any) -> Comparison:
        """Deprecated: `compare_turns` (`her_sdk.evaluation.compare_runs` compares runs)."""
        warnings.warn("Judge.compare is deprecated; use compare_turns", DeprecationWarning, 2)
        return self.compare_turns(*args, **kwargs)

    def compare_many(self, *args: Any, **kwargs: Any) -> list[Comparison]:
        """Deprecated: `compare_turns_many`."""
        warnings.warn(
            "Judge.compare_many is deprecated; use compare_turns_many", DeprecationWarning, 2
        )
        return self.compare_turns_many(*args, **kwargs)
