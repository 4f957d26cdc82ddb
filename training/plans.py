"""Reverse-engineered plans (HER's method): ask a teacher for the plan behind a known reply.

    her data synth-plans coser.jsonl --out coser_planned.jsonl \
        --teacher openai:http://localhost:8000/v1#Qwen/Qwen3-32B --concurrency 16
    her data synth-plans coser.jsonl --out planned.jsonl --teacher gguf:model.gguf
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
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from her_sdk import Backend, CancelToken, ConfigError, MockBackend, Persona, Sampling, parse_turn
from her_sdk.format import (
    CHATML_STOP,
    Heard,
    Message,
    Segment,
    Turn,
    render_chatml,
    render_perception,
    render_system_prompt,
    render_turn,
)

from .data import decode_her, encode_her, read_jsonl, render_sample

__all__ = ["SynthReport", "mock_teacher", "synth_plans", "teacher_from_spec", "validate_plan"]

TEACHER_SYSTEM = """\
You write the hidden acting plans of a role-play dataset. You are shown a character sheet, the \
conversation so far as the character perceived it, and the reply the character actually gave \
next. Write the plan an actor would make just before that reply: in the third person about the \
character (by name, or he/she/they), two to four sentences, covering what the character feels \
and wants in this moment, what they notice in the other characters, and how they choose to \
respond. Use only what is known up to this reply. Never mention a user, an AI, a model, or the \
reply itself as text; do not quote the reply. Answer with the plan only, inside \
<system_thinking></system_thinking>."""


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


def teacher_from_spec(spec: str, **kw: Any) -> Backend:
    """`mock`, `openai:URL#MODEL`, `openai-chat:URL#MODEL`, `gguf:PATH` or `gguf` (embedded)."""
    if spec == "mock":
        return MockBackend(mock_teacher)
    kind, _, rest = spec.partition(":")
    if kind in ("openai", "openai-chat"):
        from her_sdk._backends._openai import OpenAIBackend

        url, _, model = rest.partition("#")
        if not url:
            raise ConfigError("teacher spec openai:URL#MODEL needs a URL")
        mode = "chat" if kind == "openai-chat" else "completions"
        return OpenAIBackend(url, model, mode=mode, **kw)
    if kind == "gguf":
        from her_sdk import load_model

        return load_model(rest or None, **kw)
    raise ConfigError(f"unknown teacher {spec!r}: use mock, openai:URL#MODEL or gguf:PATH")


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


def teacher_prompt(persona: Persona, history: list[Heard | Turn], reply: Turn) -> str:
    sheet = render_system_prompt(persona, plan=False).split("\n\n===Requirements===")[0]
    user = (
        f"Character: {persona.name}\n\n=== Character sheet ===\n{sheet}\n\n"
        f"=== Conversation so far ===\n{_history_text(persona, history)}\n\n"
        f"=== {persona.name}'s actual reply ===\n{render_turn(reply, persona.name)}\n\n"
        f"Write {persona.name}'s plan for this reply."
    )
    return render_chatml(
        [Message("system", TEACHER_SYSTEM), Message("user", user)], "<system_thinking>"
    )


def extract_plan(text: str) -> str:
    """The plan in a teacher's answer, which starts inside the prefilled `<system_thinking>`."""
    return " ".join(parse_turn(text, start="plan").plan.split())


_WORD = re.compile(r"[a-z0-9']+")
_FIRST_PERSON = re.compile(r"\b(I|I'm|I'll|I've|I'd)\b|\b(?i:me|my|mine|myself)\b")
_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”")
_USER = re.compile(r"\b(the user|user's|users?|as an ai|language model|the assistant)\b", re.I)
_THIRD = re.compile(r"\b(he|she|they|his|her|their|him|them|hers|theirs)\b", re.I)


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
    max_words: int = 150,
    ngram: int = 5,
) -> str | None:
    """Why `plan` is unusable, or None when it passes.

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
    if len(words) > max_words:
        return "too long"
    if _USER.search(plan):
        return "mentions the user"
    unquoted = _QUOTED.sub(" ", plan)
    if _FIRST_PERSON.search(unquoted):
        return "first person"
    first = name.split()[0].lower()
    if first not in unquoted.lower() and not _THIRD.search(unquoted):
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
class SynthReport:
    total: int = 0
    resumed: int = 0  # already done in an earlier run
    kept: int = 0
    passthrough: int = 0  # already had a plan: copied unchanged
    dropped: Counter = field(default_factory=Counter)  # last failure reason -> count
    attempts: int = 0
    rejections: Counter = field(default_factory=Counter)  # every failed attempt, by reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "resumed": self.resumed,
            "kept": self.kept,
            "passthrough": self.passthrough,
            "dropped": dict(self.dropped),
            "attempts": self.attempts,
            "rejections": dict(self.rejections),
        }


class _Timeout(Exception):
    pass


def _generate(backend: Backend, prompt: str, sampling: Sampling, timeout: float | None) -> str:
    """Run one generation in a daemon thread, cancelled and abandoned after `timeout` s."""
    cancel = CancelToken()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            stream = backend.stream(
                prompt, stop=["</system_thinking>", *CHATML_STOP], sampling=sampling, cancel=cancel
            )
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
        raise _Timeout()
    if "error" in box:
        raise box["error"]
    return box["text"]


def _future_index(rows: list[dict]) -> dict[str, list[tuple[int, str]]]:
    """scene -> [(turn, text)] of every line any sample of the scene shows."""
    scenes: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for r in rows:
        scenes[r.get("scene", "")].append((int(r.get("turn", 0)), r["completion"][0]["content"]))
    return scenes


def _prepare_out(path: Path) -> None:
    """Cut a half-written last line left by an interrupted run, so appends stay valid JSONL."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


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
    max_words: int = 150,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SynthReport:
    """Add teacher plans to the samples of `input_path`; see the module docstring."""
    rows = read_jsonl(input_path)
    out = Path(out_path)
    rejected = out.with_name(out.name.replace(".jsonl", "") + ".rejected.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    _prepare_out(out)
    _prepare_out(rejected)
    done = {r.get("id") for r in read_jsonl(out)} if out.exists() else set()
    if rejected.exists():
        done |= {r.get("id") for r in read_jsonl(rejected)}
    report = SynthReport(total=len(rows))
    futures_by_scene = _future_index(rows)
    todo = []
    for r in rows:
        if r.get("id") in done:
            report.resumed += 1
        else:
            todo.append(r)
    if limit is not None:
        todo = todo[:limit]
    lock = threading.Lock()
    n_done = 0

    def work(row: dict) -> tuple[dict | None, str | None, int]:
        persona, history, target = decode_her(row)
        if target.plan:
            return row, None, 0
        reply = Turn.from_segments(s for s in target.segments if s.channel != "plan")
        prompt = teacher_prompt(persona, history, reply)
        known = "\n".join(
            [
                render_system_prompt(persona, plan=False),
                _history_text(persona, history),
                render_turn(reply, persona.name),
            ]
        )
        turn = int(row.get("turn", 0))
        future = "\n".join(t for k, t in futures_by_scene.get(row.get("scene", ""), []) if k > turn)
        reason = "no attempt"
        tries = 0
        for attempt in range(retries + 1):
            tries += 1
            sampling = Sampling(
                max_tokens=max_tokens,
                temperature=temperature,
                seed=(zlib.crc32(str(row.get("id")).encode()) + attempt) & 0x7FFFFFFF,
            )
            try:
                text = _generate(teacher, prompt, sampling, timeout)
            except _Timeout:
                reason = "timeout"
                with lock:
                    report.rejections[reason] += 1
                continue
            except Exception as exc:
                reason = f"error: {type(exc).__name__}"
                with lock:
                    report.rejections[reason] += 1
                continue
            plan = extract_plan(text)
            bad = validate_plan(
                plan,
                persona.name,
                known=known,
                future=future,
                min_words=min_words,
                max_words=max_words,
            )
            if bad is None:
                planned = Turn.from_segments([Segment("plan", plan), *reply.segments])
                prompt_msgs, completion = render_sample(persona, history, planned)
                her = encode_her(persona, history, planned)
                new = {
                    **row,
                    "plan": True,
                    "plan_source": getattr(teacher, "name", "teacher"),
                    "prompt": prompt_msgs,
                    "completion": completion,
                    "her": her,
                }
                return new, None, tries
            reason = bad
            with lock:
                report.rejections[reason] += 1
        return None, reason, tries

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
            for fut in finished:
                pending.discard(fut)
                row = fut.row  # type: ignore[attr-defined]
                try:
                    new, reason, tries = fut.result()
                except Exception as exc:  # a malformed sample: drop it, never crash the run
                    new, reason, tries = None, f"bad sample: {type(exc).__name__}", 0
                report.attempts += tries
                if new is not None:
                    fout.write(json.dumps(new, ensure_ascii=False) + "\n")
                    fout.flush()
                    if tries == 0:
                        report.passthrough += 1
                    else:
                        report.kept += 1
                else:
                    frej.write(json.dumps({"id": row.get("id"), "reason": reason}) + "\n")
                    frej.flush()
                    report.dropped[reason] += 1
                n_done += 1
                if progress is not None:
                    progress(n_done, len(todo))
                submit_next()
    return report
