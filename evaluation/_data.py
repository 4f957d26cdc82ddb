"""Reading a test set in the CoSER schema, and turning its records into her_sdk objects.

A record has: `book`, `plot` (`summary`, `key_characters[{name, description}]`, `i_p`),
`scenario`, `key_characters[{name, motivation}]`, `character_profiles{name: text}`,
`speaking_characters_w_env`, `major_characters`, `dialogues[{character, message}]`, `i_c`.
Messages use CoSER's convention: `[thought]`, `(action)`, the rest speech.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from her_sdk import DataError, Persona
from her_sdk.format import ENVIRONMENT, Heard, Turn, parse_turn

__all__ = ["gold_history", "involved_profiles", "load_test_set", "persona_for", "record_id"]

_REQUIRED = ("book", "plot", "scenario", "speaking_characters_w_env", "dialogues")


def load_test_set(path: str | Path, records: int | None = None) -> tuple[list[dict], str]:
    """The first `records` records of a CoSER-schema JSON file, and the file's sha256."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read test set {p}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{p} is not JSON: {exc}") from None
    if not isinstance(data, list) or not data:
        raise DataError(f"{p}: a test set is a non-empty JSON list of records")
    if records is not None:
        if records < 1:
            raise DataError("--records must be >= 1")
        data = data[:records]
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DataError(f"{p}: record {i} is not an object")
        missing = [k for k in _REQUIRED if k not in rec]
        if missing:
            raise DataError(f"{p}: record {i} lacks {', '.join(missing)}")
        if not isinstance(rec["dialogues"], list) or not all(
            isinstance(m, dict) and "character" in m and "message" in m for m in rec["dialogues"]
        ):
            raise DataError(f"{p}: record {i}: dialogues must be [{{character, message}}]")
        speakers = rec["speaking_characters_w_env"]
        if not isinstance(speakers, list) or not [s for s in speakers if s != ENVIRONMENT]:
            raise DataError(f"{p}: record {i}: speaking_characters_w_env names no character")
    return data, hashlib.sha256(raw).hexdigest()


def record_id(rec: dict, index: int) -> str:
    """CoSER's case key: `{book}-{i_p}-{i_c}` (the index when those are missing)."""
    plot = rec.get("plot") or {}
    return f"{rec.get('book', 'book')}-{plot.get('i_p', index)}-{rec.get('i_c', 0)}"


def speakers(rec: dict) -> list[str]:
    """`speaking_characters_w_env`, with Environment appended when absent (as CoSER does)."""
    names = list(rec["speaking_characters_w_env"])
    if ENVIRONMENT not in names:
        names.append(ENVIRONMENT)
    return names


def involved_profiles(rec: dict, *, strip: bool = False) -> dict[str, str]:
    """CoSER's `involved_character_profiles`: plot description + profile, per speaking
    character (gca_evaluation/main.py); with `strip`, HER's (benchmark.py lines 398-415), which
    strips all outer whitespace where CoSER strips newlines (and spaces at the ends)."""
    plot = rec.get("plot") or {}
    key_chars = {c.get("name", ""): c for c in plot.get("key_characters") or []}
    profiles = rec.get("character_profiles") or {}
    out: dict[str, str] = {}
    for name in speakers(rec):
        if name == ENVIRONMENT:
            continue
        profile = profiles.get(name, "") or ""
        info = key_chars.get(name)
        if info is not None and "description" in info:
            edge = None if strip else "\n"
            desc = (info.get("description") or "").strip(edge)
            profile = desc + "\n\n" + profile.strip(edge)
        profile = profile.strip() if strip else profile.strip(" \n")
        if profile:
            out[name] = profile
    return out


_BAD_NAME = re.compile(r"[<>\n:\[\]()]")


def safe_name(name: str) -> str:
    """A character name her_sdk accepts (no markup characters); most names are unchanged."""
    cleaned = re.sub(r"\s+", " ", _BAD_NAME.sub(" ", name)).strip()
    if not cleaned:
        raise DataError(f"character name {name!r} has no usable characters")
    return cleaned


def motivation(rec: dict, name: str) -> str:
    for c in rec.get("key_characters") or []:
        if c.get("name", "") == name:
            return c.get("motivation", "") or ""
    return ""


def persona_for(rec: dict, name: str, profiles: dict[str, str] | None = None) -> Persona:
    """The HER persona of one character: only its own profile and motivation, plus the other
    characters' profiles (CoSER's `other_character_profiles`)."""
    profiles = involved_profiles(rec) if profiles is None else profiles
    return Persona(
        name=safe_name(name),
        source=str(rec.get("book", "")),
        profile=profiles.get(name, ""),
        scenario=str(rec.get("scenario", "")),
        goals=motivation(rec, name),
        others={safe_name(o): p for o, p in profiles.items() if o != name},
    )


def gold_turn(message: str, name: str) -> Turn:
    """A CoSER message (`[thought] (action) speech`) as a her_sdk turn."""
    return parse_turn(message, name=safe_name(name))


def gold_history(dialogues: list[dict], upto: int, viewer: str) -> list[Heard | Turn]:
    """What `viewer` perceived of the gold dialogue before line `upto`: its own lines as turns
    (thoughts kept), others' as their public projection, Environment as narration."""
    history: list[Heard | Turn] = []
    for m in dialogues[:upto]:
        who = m["character"]
        if who == viewer:
            turn = gold_turn(m["message"], who)
            if turn.segments:
                history.append(turn)
            continue
        if who == ENVIRONMENT:
            text = m["message"].strip()
            if text:
                history.append(Heard(speaker=ENVIRONMENT, speech=text))
            continue
        public = gold_turn(m["message"], who).public()
        if public.segments:
            history.append(
                Heard(speaker=safe_name(who), speech=public.speech, actions=public.actions)
            )
    return history
