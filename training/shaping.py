"""`her data shape`: SFT samples shaped like game turns, from any `her data convert` output.

    her data shape data/all.jsonl --out data/shaped.jsonl [--max-actions 1] [--max-sentences 3]

CoSER's turns come from novels: several actions, several speech runs, paragraphs of speech that
narrate ("he said") or quote others. A model trained on them writes the same. A game shows one
or two sentences and perhaps one action, so each target turn is kept, trimmed or dropped:

- **trimmed** to the game's shape (`evaluation.lines.LineLimits`): the plan stays; the first
  thought, the first `max_actions` actions and the first speech run are kept, in their order,
  the rest of the turn is cut; the speech keeps its first sentences, as many as fit
  `max_sentences` and `max_speech_words`; a pair of quotation marks around the whole speech
  goes. The words themselves are never changed: the speaker's voice stays its own.
- **dropped** when what is left would still read as prose, not a line: speech that narrates in
  the third person or holds quotations (`evaluation.lines.narrates`, `nested_quotes`), a first
  sentence longer than `max_speech_words`, or nothing public left (a thought alone).

The character's own earlier turns in the sample's history are trimmed the same way (never
dropped), so a model reads its past turns in the shape it is trained to write, as it will in
play. Other characters' lines stay as they were: players and other models write what they write.
Each kept sample is rendered again by `her_sdk.format` (`data.render_sample`).

This module reads and writes data; it never imports torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from her_sdk.evaluation.lines import (
    GAME_LINE,
    LineLimits,
    narrates,
    nested_quotes,
    sentences,
    words,
)

from her_sdk import DataError, Heard, Persona, Segment, Turn

from .data import decode_her, encode_her, read_jsonl, render_sample, write_jsonl

__all__ = ["ShapeReport", "shape_file", "shape_samples", "shape_turn", "trim_turn"]

_QUOTE_PAIRS = [("“", "”"), ('"', '"'), ("«", "»"), ("„", "“")]


def _unquote(text: str) -> str:
    t = text.strip()
    for a, b in _QUOTE_PAIRS:
        if len(t) > 2 and t.startswith(a) and t.endswith(b) and a not in t[1:-1] + b:
            return t[1:-1].strip()
    return t


def _fit_speech(text: str, shape: LineLimits) -> str:
    """The first sentences of `text` that fit both caps ("" when the first one alone does not)."""
    kept: list[str] = []
    for s in sentences(_unquote(text))[: max(1, shape.max_sentences)]:
        if len(words(" ".join([*kept, s]))) > shape.max_speech_words:
            break
        kept.append(s)
    return " ".join(kept)


def trim_turn(turn: Turn, shape: LineLimits = GAME_LINE) -> Turn:
    """The turn cut to `shape`: its plan, first thought, first actions and first speech run (in
    their order), the speech cut to whole sentences within the caps."""
    out: list[Segment] = []
    seen: Counter[str] = Counter()
    limits = {"thought": 1, "action": shape.max_actions, "speech": 1}
    for seg in turn.segments:
        if seg.channel == "plan":
            out.append(seg)
            continue
        if seen[seg.channel] >= limits.get(seg.channel, 0):
            continue
        seen[seg.channel] += 1
        if seg.channel == "speech":
            text = _fit_speech(seg.text, shape)
            if text:
                out.append(Segment("speech", text))
        else:
            out.append(seg)
    return Turn.from_segments(out)


def shape_turn(
    turn: Turn, name: str, others: Iterable[str] = (), shape: LineLimits = GAME_LINE
) -> tuple[Turn | None, str]:
    """(the shaped turn, "kept" | "trimmed") or (None, why it was dropped)."""
    first_speech = next((s.text for s in turn.segments if s.channel == "speech"), "")
    shaped = trim_turn(turn, shape)
    if first_speech.strip() and not shaped.speech:
        return None, "first sentence too long"
    if not shaped.speech and not shaped.actions:
        return None, "nothing public"
    if narrates(shaped.speech, name, others):
        return None, "narration"
    if nested_quotes(shaped):
        return None, "nested quotes"
    return shaped, "kept" if shaped == turn else "trimmed"


@dataclass
class ShapeReport:
    samples: int = 0
    kept: int = 0
    trimmed: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> samples
    skipped: int = 0  # rows without the structured `her` field (nothing to shape)

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "kept": self.kept,
            "trimmed": self.trimmed,
            "dropped": dict(self.dropped),
            "skipped": self.skipped,
            "written": self.kept + self.trimmed,
        }


def _history(history: Sequence[Heard | Turn], shape: LineLimits) -> list[Heard | Turn]:
    out: list[Heard | Turn] = []
    for item in history:
        if isinstance(item, Turn):
            t = trim_turn(item, shape)
            if t.speech or t.actions or t.thoughts:
                out.append(t)
        else:
            out.append(item)
    return out


def shape_samples(
    rows: Iterable[dict], shape: LineLimits = GAME_LINE
) -> tuple[list[dict], ShapeReport]:
    """Shaped samples (see the module doc) and what happened to each input row."""
    report = ShapeReport()
    out: list[dict] = []
    for row in rows:
        report.samples += 1
        if "her" not in row:
            report.skipped += 1
            continue
        try:
            persona, history, target = decode_her(row)
        except Exception as exc:  # a malformed row never stops the file
            raise DataError(f"sample {row.get('id', '?')}: unreadable `her` field: {exc}") from None
        others = _names(persona, history)
        shaped, why = shape_turn(target, persona.name, others, shape)
        if shaped is None:
            report.dropped[why] += 1
            continue
        if why == "kept":
            report.kept += 1
        else:
            report.trimmed += 1
        hist = _history(history, shape)
        prompt, completion = render_sample(persona, hist, shaped)
        out.append(
            {
                **row,
                "prompt": prompt,
                "completion": completion,
                "her": encode_her(persona, hist, shaped),
                "shaped": why,
            }
        )
    return out, report


def _names(persona: Persona, history: Sequence[Heard | Turn]) -> list[str]:
    names = set(persona.others) | set(persona.relationships)
    names.update(h.speaker for h in history if isinstance(h, Heard))
    names.discard(persona.name)
    return sorted(n for n in names if n)


def shape_file(
    input_path: str | Path, out: str | Path, shape: LineLimits = GAME_LINE
) -> ShapeReport:
    rows = read_jsonl(input_path)
    if not rows:
        raise DataError(f"{input_path}: no samples")
    shaped, report = shape_samples(rows, shape)
    write_jsonl(out, shaped)
    return report
