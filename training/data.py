"""HER training data: convert CoSER, HER and ShareGPT role-play records into SFT samples.

    her data convert coser  example_test_set.json --out coser.jsonl
    her data convert coser  King_Lear.json --out lear.jsonl --exclude example_test_set.json
    her data convert her    her_dataset.jsonl --out her.jsonl --eval-ratio 0.05
    her data convert sharegpt sft_sharegpt.json --out sharegpt.jsonl

Each output line is one sample in trl's conversational prompt/completion format:

    {"prompt": [system, user, assistant, ..., user], "completion": [{"role": "assistant", ...}],
     "id", "source", "book", "scene", "character", "turn", "split", "plan",
     "her": {"persona": {...}, "history": [...], "target": {...}}}

`prompt` and `completion` are rendered by `her_sdk.format` (the one HER contract): the target's
own earlier turns keep their thoughts and lose their plans, other characters' turns are reduced
to what could be perceived (`Heard`: actions and speech, never thoughts), `Environment` lines are
narration, consecutive lines of one speaker are merged, and a plan appears only on the target
turn. `her` keeps the structured inputs so that later stages (plan synthesis, RL) can re-render
a sample without parsing text back. Splits are assigned per scene (or per book), so no scene is
in two splits.

This module reads and writes data; it does not train and never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from her_sdk import ConfigError, DataError, Persona
from her_sdk.format import (
    ENVIRONMENT,
    Heard,
    Segment,
    Turn,
    build_messages,
    parse_turn,
    render_turn,
)

__all__ = [
    "HER_PROFILE_FIELDS",
    "PORTIONS",
    "SOURCES",
    "TEST_SAMPLES",
    "ConvertOptions",
    "ConvertReport",
    "Entry",
    "convert_file",
    "convert_records",
    "decode_her",
    "her_profile",
    "load_records",
    "persona_from_system_prompt",
    "read_jsonl",
    "render_sample",
    "scene_samples",
    "split_file",
    "split_her_profile",
    "split_portions",
    "trl_columns",
    "write_jsonl",
]

SOURCES = ("coser", "her", "sharegpt")


@dataclass
class Entry:
    """One line of a scene: who spoke/acted and the parsed turn (narration for Environment)."""

    speaker: str
    turn: Turn
    target: bool = True  # may a sample be made for this line (chat layouts: assistant lines only)


@dataclass
class ConvertReport:
    records: int = 0
    scenes: int = 0
    samples: int = 0
    excluded_scenes: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count (not errors)
    bad: Counter = field(default_factory=Counter)  # reason -> count
    examples: list[str] = field(default_factory=list)  # first few bad-record messages
    splits: Counter = field(default_factory=Counter)

    def bad_total(self) -> int:
        return sum(self.bad.values())

    def note_bad(self, where: str, exc: BaseException) -> None:
        reason = type(exc).__name__ if not isinstance(exc, DataError) else str(exc).split(":")[0]
        self.bad[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {exc}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "scenes": self.scenes,
            "samples": self.samples,
            "splits": dict(self.splits),
            "excluded_scenes": self.excluded_scenes,
            "skipped": dict(self.skipped),
            "bad": dict(self.bad),
            "bad_examples": self.examples,
        }


# ---------------------------------------------------------------------------------------------
# Reading and writing
# ---------------------------------------------------------------------------------------------


def load_records(path: str | Path) -> list[Any]:
    """A JSON file (a list, or one object) or a JSONL file; broken JSONL lines become None."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if p.suffix == ".jsonl" or (stripped and stripped[0] == "{" and "\n{" in stripped):
        out: list[Any] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append(None)  # counted as bad by the converter
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{p} is not JSON: {exc}") from None
    return data if isinstance(data, list) else [data]


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file, skipping blank or broken lines (e.g. a half-written last line)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(p)
    return n


# ---------------------------------------------------------------------------------------------
# Rendering one sample (all HER rules come from her_sdk.format)
# ---------------------------------------------------------------------------------------------


def render_sample(
    persona: Persona, history: Sequence[Heard | Turn], target: Turn
) -> tuple[list[dict], list[dict]]:
    """(prompt messages, completion messages) for `persona`'s `target` turn after `history`.

    The system prompt asks for a plan exactly when the target turn has one, so a sample never
    asks for something its completion does not do.
    """
    plan = bool(target.plan)
    messages = build_messages(persona, history, plan=plan, keep_plans=False)
    prompt = [{"role": m.role, "content": m.content} for m in messages]
    completion = [
        {"role": "assistant", "content": render_turn(target, persona.name, keep_plan=True)}
    ]
    return prompt, completion


_HISTORY = msgspec.json.Decoder(list[Heard | Turn])


def encode_her(persona: Persona, history: Sequence[Heard | Turn], target: Turn) -> dict:
    return {
        "persona": msgspec.to_builtins(persona),
        "history": msgspec.to_builtins(list(history)),
        "target": msgspec.to_builtins(target),
    }


def decode_her(sample: dict) -> tuple[Persona, list[Heard | Turn], Turn]:
    """The structured inputs of a sample written by this module."""
    her = sample["her"]
    persona = msgspec.convert(her["persona"], Persona)
    history = _HISTORY.decode(msgspec.json.encode(her["history"]))
    target = msgspec.convert(her["target"], Turn)
    return persona, history, target


def _merge(a: Turn, b: Turn) -> Turn:
    # Plans come first in a turn; a merged turn keeps both plans, joined, at the front.
    plans = [s for s in (*a.segments, *b.segments) if s.channel == "plan"]
    rest = [s for s in (*a.segments, *b.segments) if s.channel != "plan"]
    return Turn.from_segments([*plans, *rest])


def merge_consecutive(entries: Sequence[Entry]) -> list[Entry]:
    """Consecutive lines of one speaker become one line (one turn, one sample)."""
    out: list[Entry] = []
    for e in entries:
        if out and out[-1].speaker == e.speaker:
            prev = out[-1]
            out[-1] = Entry(e.speaker, _merge(prev.turn, e.turn), prev.target or e.target)
        else:
            out.append(e)
    return out


def perceived(entry: Entry) -> Heard | None:
    """What another character perceives of a line: public parts only (None if nothing)."""
    if entry.speaker == ENVIRONMENT:
        text = entry.turn.speech.strip()
        return Heard(speaker=ENVIRONMENT, speech=text) if text else None
    pub = entry.turn.public()
    if not pub.speech and not pub.actions:
        return None
    return Heard(speaker=entry.speaker, speech=pub.speech, actions=list(pub.actions))


def scene_samples(
    entries: Sequence[Entry],
    personas: dict[str, Persona],
    *,
    meta: dict[str, Any],
    report: ConvertReport,
) -> Iterator[dict]:
    """One sample per target line of a character that has a persona. A character's own
    `meta["character_fields"]` (CoSER's description and experience) go on its samples."""
    meta = dict(meta)
    fields = meta.pop("character_fields", {})
    lines = merge_consecutive(entries)
    for i, entry in enumerate(lines):
        if not entry.target or entry.speaker == ENVIRONMENT or entry.speaker not in personas:
            continue
        target = entry.turn
        if not any(s.channel in ("thought", "action", "speech") for s in target.segments):
            report.skipped["empty turn"] += 1
            continue
        history: list[Heard | Turn] = []
        for prev in lines[:i]:
            if prev.speaker == entry.speaker:
                history.append(prev.turn)  # own turn: thoughts kept; plans dropped at render
            else:
                heard = perceived(prev)
                if heard is not None:
                    history.append(heard)
        persona = personas[entry.speaker]
        prompt, completion = render_sample(persona, history, target)
        key = f"{meta['scene']}|{entry.speaker}|{i}"
        yield {
            "id": hashlib.sha1(key.encode()).hexdigest()[:16],
            **meta,
            "character": entry.speaker,
            **fields.get(entry.speaker, {}),
            "turn": i,
            "plan": bool(target.plan),
            "prompt": prompt,
            "completion": completion,
            "her": encode_her(persona, history, target),
        }


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _text(x: Any) -> str:
    return x.strip() if isinstance(x, str) else ""


def _line_entry(speaker: str, message: str, *, target: bool = True) -> Entry:
    speaker = speaker.strip()
    if not speaker:
        raise DataError("no speaker: a line without a speaker")
    if speaker == ENVIRONMENT:
        return Entry(ENVIRONMENT, Turn.from_segments([Segment("speech", message)]), False)
    return Entry(speaker, parse_turn(message, name=speaker), target)


def _persona(name: str, **fields: Any) -> Persona:
    clean = {k: v for k, v in fields.items() if v}
    return Persona(name=name, **clean)


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if limit <= 0 or len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + " …"


# HER's profile section (data_process_code/step4_setting_completion/
# step4_3_rebuild_system_prompt.py, `build_system_prompt`): the one-line description first, the
# profile, then what the character is about to do, one a line.
HER_PROFILE_FIELDS = ("description", "experience")


def her_profile(profile: str, description: str = "", experience: str = "") -> str:
    """A profile as HER's system prompt writes it: `description: …`, the profile (one line),
    `experience: …`; empty parts left out."""
    parts = [f"description: {description}" if description else "", profile]
    parts.append(f"experience: {experience}" if experience else "")
    return "\n".join(" ".join(p.split()) for p in parts if p.strip())


def split_her_profile(text: str) -> tuple[str, str, str]:
    """The inverse of `her_profile`: (profile, description, experience); a profile without
    HER's lines comes back whole, with empty description and experience."""
    lines = text.split("\n")
    description = experience = ""
    if lines and lines[0].startswith("description: "):
        description = lines.pop(0)[len("description: ") :]
    if lines and lines[-1].startswith("experience: "):
        experience = lines.pop()[len("experience: ") :]
    return "\n".join(lines), description, experience


def _character_fields(plot: dict) -> dict[str, dict[str, str]]:
    """CoSER's per-plot description and experience of each key character (those it has)."""
    out: dict[str, dict[str, str]] = {}
    for k in plot.get("key_characters") or []:
        if isinstance(k, dict) and isinstance(k.get("name"), str):
            got = {f: " ".join(_text(k.get(f)).split()) for f in HER_PROFILE_FIELDS}
            if any(got.values()):
                out[k["name"]] = {f: v for f, v in got.items() if v}
    return out


def _profile(profile: str, fields: dict[str, str], opts: ConvertOptions) -> str:
    profile = _short(profile, opts.max_profile_chars)
    return her_profile(profile, **fields) if opts.her_profile else profile


# ---------------------------------------------------------------------------------------------
# CoSER: test-set records and per-book "final" files
# ---------------------------------------------------------------------------------------------


def coser_scene_key(book: str, i_p: Any, i_c: Any) -> str:
    return f"{book}#{i_p}#{i_c}"


@dataclass
class ConvertOptions:
    eval_ratio: float = 0.0
    test_ratio: float = 0.0
    split_by: str = "scene"  # "scene" | "book"
    exclude: frozenset[str] = frozenset()
    max_profile_chars: int = 0  # 0: keep whole profiles
    max_other_chars: int = 300
    max_background_chars: int = 0  # 0: keep the whole plot summary
    max_scenario_chars: int = 0  # 0: keep the whole scenario
    # CoSER book files: keep each plot's book text (`plot.text`) on its samples as
    # `source_text`, what `her data complete-settings` grounds its additions in (HER step 4)
    source_text: bool = True
    # CoSER: a character's one-line description and its "experience" in the plot (what it is
    # about to do) go into its profile as HER's system prompt has them (`her_profile`); they
    # are kept on the samples either way, for `her data complete-settings`.
    her_profile: bool = False
    seed: int = 0


def _coser_dialogue(dialogues: Any) -> list[Entry]:
    if not isinstance(dialogues, list) or not dialogues:
        raise DataError("no dialogues: the record has no dialogue lines")
    out = []
    for d in dialogues:
        if not isinstance(d, dict) or not isinstance(d.get("character"), str):
            raise DataError("bad dialogue line: expected {character, message}")
        # HER's dialogue layout keeps the tagged turn and its plan in their own fields.
        msg = d.get("enhanced_standard_format") or d.get("standard_format") or d.get("message")
        if not isinstance(msg, str):
            raise DataError("bad dialogue line: message is not text")
        plan = d.get("sys_thinking") or d.get("system_thinking")
        if isinstance(plan, str) and plan.strip() and "<system_think" not in msg:
            msg = f"<system_thinking>{plan.strip()}</system_thinking>{msg}"
        out.append(_line_entry(d["character"], msg))
    return out


def _coser_test_record(
    rec: dict, opts: ConvertOptions, source: str = "coser"
) -> tuple[dict, list[Entry], dict]:
    book = _text(rec.get("book")) or "unknown"
    key = coser_scene_key(book, rec.get("i_p", "?"), rec.get("i_c", "?"))
    entries = _coser_dialogue(rec.get("dialogues"))
    profiles = rec.get("character_profiles") or {}
    motivations = {
        k["name"]: _text(k.get("motivation"))
        for k in rec.get("key_characters") or []
        if isinstance(k, dict) and isinstance(k.get("name"), str)
    }
    plot = rec.get("plot") if isinstance(rec.get("plot"), dict) else {}
    plot_desc = {
        k["name"]: _text(k.get("description"))
        for k in (plot.get("key_characters") or [])
        if isinstance(k, dict) and isinstance(k.get("name"), str)
    }
    fields = _character_fields(plot)
    personas = {}
    for name in {e.speaker for e in entries if e.speaker != ENVIRONMENT}:
        others = {}
        for o in sorted({e.speaker for e in entries} - {name, ENVIRONMENT}):
            desc = plot_desc.get(o) or _text(profiles.get(o))
            others[o] = _short(desc, opts.max_other_chars)
        personas[name] = _persona(
            name,
            source=book,
            profile=_profile(_text(profiles.get(name)), fields.get(name, {}), opts),
            background=_short(_text(plot.get("summary")), opts.max_background_chars),
            scenario=_short(_text(rec.get("scenario")), opts.max_scenario_chars),
            goals=motivations.get(name, ""),
            others={k: v for k, v in others.items() if v},
        )
    meta = {"source": source, "book": book, "scene": key}
    if fields:
        meta["character_fields"] = fields
    return meta, entries, personas


def _coser_book(data: dict, opts: ConvertOptions, report: ConvertReport) -> Iterator[tuple]:
    datasets = data.get("character_datasets") or {}
    plots = data.get("plots")
    if not isinstance(plots, list):
        raise DataError("bad book file: no plots list")
    book = _text(data.get("book")) or _text(data.get("title"))
    for pi, plot in enumerate(plots):
        if not isinstance(plot, dict):
            report.note_bad(f"plot {pi}", DataError("bad plot: not an object"))
            continue
        i_p = plot.get("i_p", pi)
        desc = {
            k["name"]: _text(k.get("description"))
            for k in plot.get("key_characters") or []
            if isinstance(k, dict) and isinstance(k.get("name"), str)
        }
        fields = _character_fields(plot)
        for ci, conv in enumerate(plot.get("conversation") or []):
            report.records += 1
            try:
                if not isinstance(conv, dict):
                    raise DataError("bad conversation: not an object")
                key = coser_scene_key(book or "unknown", i_p, ci)
                entries = _coser_dialogue(conv.get("dialogues"))
                motivations = {
                    k["name"]: _text(k.get("motivation"))
                    for k in conv.get("key_characters") or []
                    if isinstance(k, dict) and isinstance(k.get("name"), str)
                }
                personas = {}
                names = {e.speaker for e in entries} - {ENVIRONMENT}
                for name in names:
                    prof = datasets.get(name, {}) if isinstance(datasets.get(name), dict) else {}
                    personas[name] = _persona(
                        name,
                        source=book,
                        profile=_profile(_text(prof.get("profile")), fields.get(name, {}), opts),
                        background=_short(_text(plot.get("summary")), opts.max_background_chars),
                        scenario=_short(_text(conv.get("scenario")), opts.max_scenario_chars),
                        goals=motivations.get(name, ""),
                        others={
                            o: _short(desc[o], opts.max_other_chars)
                            for o in sorted(names - {name})
                            if desc.get(o)
                        },
                    )
                meta = {"source": "coser", "book": book or "unknown", "scene": key}
                if fields:
                    meta["character_fields"] = {n: f for n, f in fields.items() if n in names}
                if opts.source_text and _text(plot.get("text")):
                    meta["source_text"] = _text(plot.get("text"))
                yield meta, entries, personas
            except Exception as exc:  # one bad conversation never stops the file
                report.note_bad(f"plot {pi} conversation {ci}", exc)


def _book_name_from_path(path: Path) -> str:
    return path.stem.replace("_", " ")


# ---------------------------------------------------------------------------------------------
# Chat layouts: HER dataset and ShareGPT
# ---------------------------------------------------------------------------------------------

_HEADER = re.compile(r"^===\s*(.+?)\s*===\s*$", re.M)
_PLAN_BLOCK = re.compile(
    r"^\s*<\s*system_think(?:ing)?\s*>.*?<\s*/\s*system_think(?:ing)?\s*>", re.S
)
_LABEL = re.compile(r"^\s*([^\s<>\[\]():\n][^<>\[\]():\n]{0,47}):")
_ROLE = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
}


def persona_from_system_prompt(text: str, name: str) -> Persona:
    """Best-effort Persona from a role-play system prompt with `===Section===` headers.

    HER/CoSER section names map onto Persona fields; `===Requirements===`-like sections are
    dropped (the format module writes its own); unknown sections stay in the profile.
    """
    intro_end = _HEADER.search(text)
    intro = text[: intro_end.start()] if intro_end else text
    source = ""
    m = re.search(r"\bfrom\s+(.+?)[.\n]", intro)
    if m and len(m.group(1)) < 80:
        source = m.group(1).strip()
    fields: dict[str, list[str]] = {"profile": [], "background": [], "scenario": [], "goals": []}
    others: dict[str, str] = {}
    if not intro_end:
        body = intro.strip()
        # No sections: the whole prompt describes the character, minus a bare "You are X." line.
        body = re.sub(r"^(You are|Roleplay as|Play)[^\n]*\n?", "", body).strip()
        if body:
            fields["profile"].append(body)
    heads = list(_HEADER.finditer(text))
    for k, h in enumerate(heads):
        title = h.group(1).lower()
        end = heads[k + 1].start() if k + 1 < len(heads) else len(text)
        body = text[h.end() : end].strip()
        if not body:
            continue
        if "requirement" in title or "instruction" in title or "conversation start" in title:
            continue
        if "other character" in title:
            for line in body.splitlines():
                lm = re.match(r"^\s*[-*]?\s*\**([^:*\n]{1,48})\**\s*:\s*(.+)$", line)
                if lm and lm.group(1).strip() != name:
                    others[lm.group(1).strip()] = lm.group(2).strip()
                elif line.strip():
                    fields["background"].append(line.strip())
        elif "scenario" in title or "situation" in title:
            fields["scenario"].append(body)
        elif "thought" in title or "motivation" in title or "monologue" in title:
            fields["goals"].append(body)
        elif "plot" in title or "background" in title or "story" in title:
            fields["background"].append(body)
        elif "profile" in title and (
            name.lower() in title or "character" in title or "'s" not in title
        ):
            fields["profile"].append(body)
        else:
            fields["profile"].append(f"{h.group(1)}:\n{body}")
    others = {k: v for k, v in others.items() if not any(c in k for c in "<>\n:[]()")}
    return _persona(
        name, source=source, others=others, **{k: "\n\n".join(v) for k, v in fields.items()}
    )


def _messages_of(rec: dict) -> list[tuple[str, str]]:
    msgs = rec.get("messages") or rec.get("conversations") or rec.get("conversation")
    if not isinstance(msgs, list) or not msgs:
        raise DataError("no messages: expected messages/conversations list")
    out = []
    for m in msgs:
        if not isinstance(m, dict):
            raise DataError("bad message: not an object")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if not isinstance(role, str) or role.lower() not in _ROLE or not isinstance(content, str):
            raise DataError("bad message: unknown role or non-text content")
        out.append((_ROLE[role.lower()], content))
    return out


def _assistant_name(content: str) -> str | None:
    m = _LABEL.match(_PLAN_BLOCK.sub("", content, count=1))
    return m.group(1).strip() if m else None


def _perception_entries(content: str) -> list[Entry]:
    """A user message of perceptions (`Name: …` lines) as entries (never samples)."""
    content = re.sub(r"^\s*===\s*Conversation Start\s*===\s*", "", content)
    entries: list[Entry] = []
    for raw in content.splitlines():
        line = raw.strip()
        if not line:
            continue
        m = _LABEL.match(line)
        if m:
            speaker = m.group(1).strip()
            entries.append(_line_entry(speaker, line[m.end() :].strip(), target=False))
        elif entries:  # a continuation of the previous line
            prev = entries[-1]
            cont = _line_entry(prev.speaker, line, target=False)
            entries[-1] = Entry(prev.speaker, _merge(prev.turn, cont.turn), False)
        else:  # unlabelled perception: narration
            entries.append(_line_entry(ENVIRONMENT, line, target=False))
    return entries


def _chat_record(rec: dict, source: str, index: int) -> tuple[dict, list[Entry], dict]:
    msgs = _messages_of(rec)
    system = "\n\n".join(c for r, c in msgs if r == "system")
    assistants = [c for r, c in msgs if r == "assistant"]
    if not assistants:
        raise DataError("no assistant turn: nothing to learn from")
    name = _text(rec.get("character")) or _text(rec.get("role")) or _text(rec.get("name"))
    if not name:
        name = _assistant_name(assistants[0]) or ""
    if not name:
        raise DataError("no character: cannot tell who the assistant plays")
    if name == ENVIRONMENT:
        raise DataError("not role-play: the assistant plays the environment")
    entries: list[Entry] = []
    for role, content in msgs:
        if role == "user":
            entries.extend(_perception_entries(content))
        elif role == "assistant":
            label = _assistant_name(content)
            if label is not None and label != name:
                raise DataError(f"mixed speakers: assistant speaks as {label!r} and {name!r}")
            entries.append(Entry(name, parse_turn(content, name=name), True))
    persona = persona_from_system_prompt(system, name)
    book = (
        _text(rec.get("book"))
        or _text(rec.get("source"))
        or _text(rec.get("world"))
        or persona.source
    )
    scene = _text(rec.get("id")) or _text(rec.get("scene")) or ""
    if not scene:
        digest = hashlib.sha1(json.dumps(msgs, ensure_ascii=False).encode()).hexdigest()[:12]
        scene = f"{source}:{index}:{digest}"
    return {"source": source, "book": book or "unknown", "scene": scene}, entries, {name: persona}


_NOT_ROLEPLAY = re.compile(r"not role-play|no assistant turn|no character", re.I)


# ---------------------------------------------------------------------------------------------
# Splits and the driver
# ---------------------------------------------------------------------------------------------


def _rank(key: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()


def assign_splits(keys: Iterable[str], opts: ConvertOptions) -> dict[str, str]:
    """Split keys (scenes or books) by a seeded hash order: the first `test_ratio` of them go to
    test, the next `eval_ratio` to eval (at least one each when the ratio is > 0 and there are
    enough keys), the rest to train. Deterministic for a given set of keys and seed."""
    order = sorted(set(keys), key=lambda k: _rank(k, opts.seed))
    n = len(order)

    def count(ratio: float) -> int:
        return 0 if ratio <= 0 or n < 2 else max(1, round(ratio * n))

    n_test = count(opts.test_ratio)
    n_eval = min(count(opts.eval_ratio), max(0, n - n_test - 1))
    out = {}
    for i, k in enumerate(order):
        out[k] = "test" if i < n_test else "eval" if i < n_test + n_eval else "train"
    return out


def load_exclude(paths: Sequence[str | Path]) -> frozenset[str]:
    """Scene keys to keep out of the output: text files (one key a line) or CoSER test sets."""
    keys: set[str] = set()
    for p in paths:
        path = Path(p)
        if path.suffix in (".json", ".jsonl"):
            for rec in load_records(path):
                if isinstance(rec, dict) and "book" in rec:
                    keys.add(coser_scene_key(rec["book"], rec.get("i_p", "?"), rec.get("i_c", "?")))
                elif isinstance(rec, dict) and "scene" in rec:
                    keys.add(str(rec["scene"]))
                elif isinstance(rec, str):
                    keys.add(rec)
        else:
            keys.update(x.strip() for x in path.read_text().splitlines() if x.strip())
    return frozenset(keys)


def iter_scenes(
    source: str, path: str | Path, opts: ConvertOptions, report: ConvertReport
) -> Iterator[tuple[dict, list[Entry], dict]]:
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}; expected one of {SOURCES}")
    records = load_records(path)
    if (
        source == "coser"
        and len(records) == 1
        and isinstance(records[0], dict)
        and "plots" in records[0]
    ):
        book = dict(records[0])
        book.setdefault("book", _book_name_from_path(Path(path)))
        try:
            yield from _coser_book(book, opts, report)
        except DataError as exc:
            report.note_bad(str(path), exc)
        return
    for i, rec in enumerate(records):
        report.records += 1
        try:
            if not isinstance(rec, dict):
                raise DataError("not an object: the record is not a JSON object")
            if source == "coser" or "dialogues" in rec:  # CoSER, or HER's dialogue layout
                yield _coser_test_record(rec, opts, source)
            else:
                yield _chat_record(rec, source, i)
        except Exception as exc:
            if _NOT_ROLEPLAY.search(str(exc)):
                report.skipped[str(exc).split(":")[0]] += 1
            else:
                report.note_bad(f"record {i}", exc)


def convert_records(
    source: str, path: str | Path, opts: ConvertOptions | None = None
) -> tuple[list[dict], ConvertReport]:
    """Convert one input file. Never raises on bad records: they are counted in the report."""
    opts = opts or ConvertOptions()
    report = ConvertReport()
    samples: list[dict] = []
    scenes = []
    for meta, entries, personas in iter_scenes(source, path, opts, report):
        if meta["scene"] in opts.exclude:
            report.excluded_scenes += 1
            continue
        scenes.append((meta, entries, personas))
    group = "book" if opts.split_by == "book" else "scene"
    splits = assign_splits((m[group] for m, _, _ in scenes), opts)
    for meta, entries, personas in scenes:
        meta = {**meta, "split": splits[meta[group]]}
        report.scenes += 1
        try:
            scene = list(scene_samples(entries, personas, meta=meta, report=report))
        except Exception as exc:
            report.note_bad(meta["scene"], exc)
            continue
        for s in scene:
            report.splits[s["split"]] += 1
        samples.extend(scene)
    report.samples = len(samples)
    return samples, report


def convert_file(
    source: str, path: str | Path, out: str | Path, opts: ConvertOptions | None = None
) -> ConvertReport:
    samples, report = convert_records(source, path, opts)
    write_jsonl(out, samples)
    return report


def trl_columns(rows: Iterable[dict]) -> list[dict]:
    """Only the columns trl reads (prompt, completion), as a trainer expects them."""
    return [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]


# ---------------------------------------------------------------------------------------------
# Portions for the stages (`her data split`)
# ---------------------------------------------------------------------------------------------

# HER's proportions (training_code/step1_roleplay_sft/split_by_purpose.py, lines 152-161:
# 107,800 / 26,800 / 108,800 / 80,000 samples): 33% role-play SFT, 8% role-play RL, 34% the
# reward model's SFT, 25% its RL; and 200 samples held out for testing (`rl_test`).
PORTIONS: dict[str, float] = {"sft": 0.33, "rl": 0.08, "rm_sft": 0.34, "rm_rl": 0.25}
TEST_SAMPLES = 200


def split_portions(
    rows: Sequence[dict],
    ratios: dict[str, float] | None = None,
    *,
    seed: int = 0,
    test: int = 0,
) -> dict[str, list[dict]]:
    """Rows grouped by scene into disjoint portions (`PORTIONS` by default), and with `test`
    a `test` portion of about that many samples (at most a tenth of them).

    Scenes are taken in a seeded hash order. The test portion takes whole scenes first until it
    holds `test` samples; then each scene goes whole to the portion furthest below its share of
    the samples so far, so the sample counts follow `ratios` while no scene is in two portions
    (the RL reference turn is never a turn the policy was trained to copy, the judge's RL never
    sees its SFT scenes, and the test scenes none of them). HER splits by sample; splitting by
    scene is stricter. A row without a `scene` is a scene of its own (by `id`). Row order
    within a scene is kept.
    """
    ratios = dict(PORTIONS if ratios is None else ratios)
    if not ratios or any(v < 0 for v in ratios.values()) or sum(ratios.values()) <= 0:
        raise ConfigError(f"portion ratios must be >= 0 with a positive sum, not {ratios}")
    if test < 0 or "test" in ratios:
        raise ConfigError("test is a number of samples (>= 0), not a ratio")
    total = sum(ratios.values())
    share = {k: v / total for k, v in ratios.items()}
    scenes: dict[str, list[dict]] = {}
    for i, r in enumerate(rows):
        scenes.setdefault(str(r.get("scene") or r.get("id") or f"#{i}"), []).append(r)
    out: dict[str, list[dict]] = {k: [] for k in ratios}
    held: list[dict] = []
    test = min(test, len(rows) // 10)
    placed = 0
    for key in sorted(scenes, key=lambda k: _rank(k, seed)):
        group = scenes[key]
        if len(held) < test:
            held.extend(group)
            continue
        target = placed + len(group)
        name = max(share, key=lambda k: (share[k] * target - len(out[k]), share[k]))
        out[name].extend(group)
        placed = target
    if test:
        out["test"] = held
    return out


def split_file(
    input_path: str | Path,
    out_dir: str | Path,
    ratios: dict[str, float] | None = None,
    *,
    seed: int = 0,
    test: int = 0,
) -> dict[str, dict[str, int]]:
    """`her data split`: write `OUT/<portion>.jsonl` for each portion; returns per-portion
    sample and scene counts."""
    rows = read_jsonl(input_path)
    if not rows:
        raise DataError(f"{input_path}: no samples")
    parts = split_portions(rows, ratios, seed=seed, test=test)
    report = {}
    for name, part in parts.items():
        write_jsonl(Path(out_dir) / f"{name}.jsonl", part)
        report[name] = {"samples": len(part), "scenes": len({r.get("scene") for r in part})}
    return report
