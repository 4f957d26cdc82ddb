"""Reverse-engineered plans (HER's method): ask a teacher for the plan behind a known reply.

    her data synth-plans coser.jsonl --out coser_planned.jsonl \
        --teacher http://localhost:8000/v1#Qwen/Qwen3-32B --concurrency 16
    her data synth-plans coser.jsonl --out planned.jsonl --teacher model.gguf
    her data synth-plans coser.jsonl --out planned.jsonl --teacher mock     # tests, dry runs

For every sample (from `training.data`) whose target turn has no plan, the teacher sees the
character sheet, what the character perceived so far, and the reply the character actually
gave, and writes the third-person plan (`<system_thinking>`) that leads to that reply. Each plan
is validated (`validate_plan`): third person, never "the user", nothing from later turns of the
scene, length bounds; a rejected or failed attempt is retried, then the sample is dropped. Kept
samples are re-rendered through `her_sdk.format` with the plan on the target turn (the system
prompt then asks for a plan), so they are dual-layer SFT samples.

Runs concurrently (threads; the teacher is any her_sdk Backend) and is resumable: results are
appended to `--out` and dropped ids to `OUT.rejected.jsonl` as they finish, and a rerun skips
every id already in either file. This module writes data; it does not train.
"""

from __future__ import annotations

import json
import re
import threading
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from her_sdk import Backend, CancelToken, Persona, Sampling, parse_turn
from her_sdk.format import (
    MAX_PLAN_CHARS,
    ChatModel,
    Heard,
    Message,
    PromptStyle,
    Rendered,
    Segment,
    Turn,
    render_messages,
    render_perception,
    render_system_prompt,
    render_turn,
)

from .data import decode_her, encode_her, read_jsonl, render_sample

__all__ = [
    "JobReport",
    "Outcome",
    "SynthReport",
    "ask_teacher",
    "generate_text",
    "mock_teacher",
    "run_jobs",
    "seed_for",
    "synth_plans",
    "validate_plan",
]

TEACHER_SYSTEM = f"""\
You write the hidden acting plans of a role-play dataset. You are shown a character sheet, the \
conversation so far as the character perceived it, and the reply the character actually gave \
next. Write the plan an actor would make just before that reply: in the third person about the \
character (by name, or he/she/they), two or three sentences and at most {MAX_PLAN_CHARS // 7} \
words, covering what the character feels and wants in this moment, what they notice in the \
other characters, and how they choose to respond. Use only what is known up to this reply. \
Never mention a user, an AI, a model, or the reply itself as text; do not quote the reply. \
Answer with the plan only, inside <system_thinking></system_thinking>."""


# ---------------------------------------------------------------------------------------------
# Teachers
# ---------------------------------------------------------------------------------------------


def mock_teacher(prompt: str) -> str:
    """A deterministic stand-in teacher: a valid third-person plan built from the prompt."""
    m = re.search(r"^Character: (.+)$", prompt, re.M)
    name = m.group(1).strip() if m else "The character"
    return (
        f"<system_thinking>{name} weighs what was just said and keeps the inner doubt private. "
        f"{name} should answer in character, briefly, steering the moment toward what {name} "
        "wants now.</system_thinking>"
    )


# ---------------------------------------------------------------------------------------------
# Teacher prompt and validation
# ---------------------------------------------------------------------------------------------


def _history_text(persona: Persona, history: Iterable[Heard | Turn]) -> str:
    lines = []
    for item in history:
        if isinstance(item, Turn):
            lines.append(render_turn(item, persona.name))
        else:
            lines.append(render_perception(item))
    return "\n".join(lines) or "(the scene has just begun)"


def teacher_prompt(
    persona: Persona,
    history: list[Heard | Turn],
    reply: Turn,
    teacher: ChatModel | PromptStyle = "chatml",
) -> Rendered:
    """The request for the plan behind `reply`, rendered for `teacher` (opening the plan)."""
    sheet = render_system_prompt(persona, plan=False).split("\n\n===Requirements===")[0]
    user = (
        f"Character: {persona.name}\n\n=== Character sheet ===\n{sheet}\n\n"
        f"=== Conversation so far ===\n{_history_text(persona, history)}\n\n"
        f"=== {persona.name}'s actual reply ===\n{render_turn(reply, persona.name)}\n\n"
        f"Write {persona.name}'s plan for this reply."
    )
    messages = [Message("system", TEACHER_SYSTEM), Message("user", user)]
    return render_messages(messages, teacher, prefill="<system_thinking>")


def extract_plan(text: str) -> str:
    """The plan in a teacher's answer, which starts inside the prefilled `<system_thinking>`."""
    return " ".join(parse_turn(text, start="plan").plan.split())


_WORD = re.compile(r"[a-z0-9']+")
_FIRST_PERSON = re.compile(r"\b(I|I'm|I'll|I've|I'd)\b|\b(?i:me|my|mine|myself)\b")
_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”")
_USER = re.compile(r"\b(the user|user's|users?|as an ai|language model|the assistant)\b", re.I)
# HER's own plans speak as the actor about the character: "I need to portray Lear as ...".
_ACTOR_FRAME = re.compile(
    r"^\s*I(?: need to| should| will|'ll| want to| must| have to)\s+"
    r"(?:portray|show|play|depict|convey|have|make|present|write)\b",
    re.I,
)
_THIRD = re.compile(r"\b(he|she|they|his|her|their|him|them|hers|theirs)\b", re.I)
# Anywhere in a long plan, the actor speaking about the part (HER's phase-1 thinking: "Okay, so I
# need to portray...", "my character should...").
_ACTOR_ANYWHERE = re.compile(
    r"\b(portray(?:ing)?|play(?:ing)? (?:the role|the part)|role of|my character|the character)\b",
    re.I,
)


def _shingles(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def validate_plan(
    plan: str,
    name: str,
    *,
    known: str = "",
    future: str = "",
    min_words: int = 8,
    max_chars: int = MAX_PLAN_CHARS,
    ngram: int = 5,
    actor_voice: bool = False,
) -> str | None:
    """Why `plan` is unusable, or None when it passes.

    With `actor_voice` (HER's long plans) the actor's first person may run through the plan
    ("I need to portray...", "I should show...") when the plan names the character and says
    that it is playing a part; otherwise only an opening actor frame allows it.

    `max_chars` defaults to the runtime grammar's plan cap (`her_sdk.format.MAX_PLAN_CHARS`):
    a model trained on longer plans would be cut off mid-plan when it runs in a game.

    `known` is the text the character could know (sheet, history, its reply); `future` the text
    of the scene's later turns. A run of `ngram` words found in `future` but not in `known`
    means the plan knows what happens later.
    """
    if not plan:
        return "empty"
    if "<" in plan or ">" in plan or re.match(rf"^\s*{re.escape(name)}\s*:", plan):
        return "markup"
    words = plan.split()
    if len(words) < min_words:
        return "too short"
    if len(plan) > max_chars:
        return "too long"
    if _USER.search(plan):
        return "mentions the user"
    unquoted = _QUOTED.sub(" ", plan)
    first = name.split()[0].lower()
    names_character = first in unquoted.lower()
    # The actor's "I" ("I need to portray Lear ...") is HER's style; the character's is a leak.
    framed = _ACTOR_FRAME.match(unquoted) or (actor_voice and _ACTOR_ANYWHERE.search(unquoted))
    actor = bool(framed) and names_character
    if _FIRST_PERSON.search(unquoted) and not actor:
        return "first person"
    if not names_character and not _THIRD.search(unquoted):
        return "not third person"
    if future:
        leaked = _shingles(plan, ngram) & (_shingles(future, ngram) - _shingles(known, ngram))
        if leaked:
            return "knows later turns"
    return None


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class JobReport:
    """What a teacher run did: `kept` samples written, `dropped` by last failure reason,
    every failed attempt in `rejections`; `stats` holds a command's own figures."""

    total: int = 0
    resumed: int = 0  # already done in an earlier run
    kept: int = 0
    passthrough: int = 0  # needed no teacher (e.g. already had a plan): copied unchanged
    dropped: Counter = field(default_factory=Counter)  # last failure reason -> count
    attempts: int = 0
    rejections: Counter = field(default_factory=Counter)  # every failed attempt, by reason
    stats: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "resumed": self.resumed,
            "kept": self.kept,
            "passthrough": self.passthrough,
            "dropped": dict(self.dropped),
            "attempts": self.attempts,
            "rejections": dict(self.rejections),
            **({"stats": self.stats} if self.stats else {}),
        }


SynthReport = JobReport  # the name synth_plans' report had first


def generate_text(
    backend: Backend,
    prompt: str,
    sampling: Sampling,
    timeout: float | None,
    stop: Sequence[str] = (),
) -> str:
    """Run one generation in a daemon thread; after `timeout` s it is cancelled and abandoned
    and TimeoutError is raised."""
    cancel = CancelToken()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            stream = backend.stream(prompt, stop=list(stop), sampling=sampling, cancel=cancel)
            parts = []
            for piece in stream:
                parts.append(piece)
                if cancel.cancelled:
                    break
            box["text"] = "".join(parts)
        except Exception as exc:  # reported as this attempt's failure
            box["error"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        cancel.cancel()
        raise TimeoutError(f"no answer in {timeout} s")
    if "error" in box:
        raise box["error"]
    return box["text"]


@dataclass
class Outcome:
    """The result of one job: `records` to write (None: dropped for `reason`), the teacher
    calls it took and the reasons of its failed attempts."""

    records: list[dict] | None
    reason: str | None = None
    tries: int = 0
    rejections: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)  # summed into JobReport.stats


def seed_for(key: Any, attempt: int = 0) -> int:
    """A stable per-sample sampling seed: reruns ask the teacher the same question."""
    return (zlib.crc32(str(key).encode()) + attempt) & 0x7FFFFFFF


def ask_teacher(
    teacher: Backend,
    prompt: Rendered,
    check: Callable[[str], tuple[Any, str | None]],
    *,
    key: Any,
    retries: int = 2,
    timeout: float | None = 120.0,
    temperature: float = 0.7,
    max_tokens: int = 256,
    stop: Sequence[str] = (),
) -> Outcome:
    """Ask `teacher` (with `prompt`, rendered for it) until `check(answer)` accepts it (returns
    (value, None)) or `retries` more attempts failed; on success `records` is `[value]`. The
    answer ends at the prompt's stop strings and at `stop`. Timeouts and backend errors count
    as failed attempts, never as crashes."""
    stop = [*prompt.stop, *stop]
    out = Outcome(None, "no attempt")
    for attempt in range(retries + 1):
        out.tries += 1
        sampling = Sampling(
            max_tokens=max_tokens, temperature=temperature, seed=seed_for(key, attempt)
        )
        try:
            text = generate_text(teacher, prompt.text, sampling, timeout, stop)
        except TimeoutError:
            reason = "timeout"
        except Exception as exc:
            reason = f"error: {type(exc).__name__}"
        else:
            value, reason = check(text)
            if reason is None:
                out.records, out.reason = [value], None
                return out
        out.reason = reason
        out.rejections.append(reason)
    return out


def _prepare_out(path: Path) -> None:
    """Cut a half-written last line left by an interrupted run, so appends stay valid JSONL."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def rejected_path(out_path: str | Path) -> Path:
    out = Path(out_path)
    return out.with_name(out.name.replace(".jsonl", "") + ".rejected.jsonl")


def run_jobs(
    rows: Sequence[dict],
    out_path: str | Path,
    work: Callable[[dict], Outcome],
    *,
    key: Callable[[dict], str] = lambda r: str(r.get("id")),
    concurrency: int = 4,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> JobReport:
    """Run `work` over `rows` on a thread pool; the machinery of every teacher command.

    Resumable: the records of each finished row are appended to `out_path` (each carrying the
    row's key in `source_id` when it differs from its own `id`) and dropped keys to
    `OUT.rejected.jsonl` as they finish; a rerun skips every key found in either file. A job
    that raises drops its row ("bad sample: ...") and the run goes on.
    """
    out = Path(out_path)
    rejected = rejected_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _prepare_out(out)
    _prepare_out(rejected)
    done: set[str] = set()
    if out.exists():
        done |= {str(r.get("source_id", r.get("id"))) for r in read_jsonl(out)}
    if rejected.exists():
        done |= {str(r.get("id")) for r in read_jsonl(rejected)}
    report = JobReport(total=len(rows))
    todo = []
    for r in rows:
        if key(r) in done:
            report.resumed += 1
        else:
            todo.append(r)
    if limit is not None:
        todo = todo[:limit]
    n_done = 0
    with (
        open(out, "a", encoding="utf-8") as fout,
        open(rejected, "a", encoding="utf-8") as frej,
        ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool,
    ):
        pending = set()
        it = iter(todo)

        def submit_next() -> bool:
            row = next(it, None)
            if row is None:
                return False
            fut = pool.submit(work, row)
            fut.row = row  # type: ignore[attr-defined]
            pending.add(fut)
            return True

        for _ in range(max(1, concurrency) * 2):  # bounded queue: memory stays flat
            if not submit_next():
                break
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:  # results are written by this thread only
                pending.discard(fut)
                row = fut.row  # type: ignore[attr-defined]
                k = key(row)
                try:
                    res = fut.result()
                except Exception as exc:  # a malformed sample: drop it, never crash the run
                    res = Outcome(None, f"bad sample: {type(exc).__name__}")
                report.attempts += res.tries
                report.rejections.update(res.rejections)
                for name, n in res.stats.items():
                    report.stats[name] = report.stats.get(name, 0) + n
                if res.records:
                    for rec in res.records:
                        if str(rec.get("id")) != k:
                            rec = {**rec, "source_id": k}
                        fout.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    fout.flush()
                    if res.tries == 0:
                        report.passthrough += 1
                    else:
                        report.kept += 1
                else:
                    frej.write(json.dumps({"id": k, "reason": res.reason}) + "\n")
                    frej.flush()
                    report.dropped[res.reason or "no result"] += 1
                n_done += 1
                if progress is not None:
                    progress(n_done, len(todo))
                submit_next()
    return report


# ---------------------------------------------------------------------------------------------
# `her data synth-plans`
# ---------------------------------------------------------------------------------------------


def _future_index(rows: Sequence[dict]) -> dict[str, list[tuple[int, str]]]:
    """scene -> [(turn, text)] of every line any sample of the scene shows."""
    scenes: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for r in rows:
        scenes[r.get("scene", "")].append((int(r.get("turn", 0)), r["completion"][0]["content"]))
    return scenes


def synth_plans(
    input_path: str | Path,
    out_path: str | Path,
    teacher: Backend,
    *,
    concurrency: int = 4,
    retries: int = 2,
    timeout: float | None = 120.0,
    temperature: float = 0.7,
    max_tokens: int = 256,
    min_words: int = 8,
    max_chars: int = MAX_PLAN_CHARS,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> JobReport:
    """Add teacher plans to the samples of `input_path`; see the module docstring."""
    rows = read_jsonl(input_path)
    futures_by_scene = _future_index(rows)

    def work(row: dict) -> Outcome:
        persona, history, target = decode_her(row)
        if target.plan:
            return Outcome([row])
        reply = Turn.from_segments(s for s in target.segments if s.channel != "plan")
        known = "\n".join(
            [
                render_system_prompt(persona, plan=False),
                _history_text(persona, history),
                render_turn(reply, persona.name),
            ]
        )
        turn = int(row.get("turn", 0))
        future = "\n".join(t for k, t in futures_by_scene.get(row.get("scene", ""), []) if k > turn)

        def check(text: str) -> tuple[dict | None, str | None]:
            plan = extract_plan(text)
            bad = validate_plan(
                plan,
                persona.name,
                known=known,
                future=future,
                min_words=min_words,
                max_chars=max_chars,
            )
            if bad is not None:
                return None, bad
            planned = Turn.from_segments([Segment("plan", plan), *reply.segments])
            prompt_msgs, completion = render_sample(persona, history, planned)
            return {
                **row,
                "plan": True,
                "plan_source": getattr(teacher, "name", "teacher"),
                "prompt": prompt_msgs,
                "completion": completion,
                "her": encode_her(persona, history, planned),
            }, None

        return ask_teacher(
            teacher,
            teacher_prompt(persona, history, reply, teacher),
            check,
            key=row.get("id"),
            retries=retries,
            timeout=timeout,
            temperature=temperature,
            max_tokens=max_tokens,
            stop=("</system_thinking>",),
        )

    return run_jobs(rows, out_path, work, concurrency=concurrency, limit=limit, progress=progress)
