"""Persona: who a character is, as the fields of a HER system prompt.

This module holds the data only. How a persona becomes prompt text is the format module's job
(`her_sdk.format.render_system_prompt`), so that training and runtime render it identically.
It also reads Character Card V2/V3 files (JSON, or PNG with a `chara`/`ccv3` text chunk), so
personas written for other tools work here.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

import msgspec

from ._errors import ConfigError

__all__ = ["Persona"]


class Persona(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A character sheet. Only `name` is required; empty fields are left out of the prompt.

    - `source`: the world, book or game the character is from ("You are Mara from Vell.").
    - `profile`: who they are: role, temperament, manner of speech.
    - `background`: history that shapes them.
    - `scenario`: the current situation.
    - `goals`: motivation and what they want now (the prompt's "Inner Thoughts").
    - `secrets`: what they know and hide; only ever in their own prompt.
    - `relationships`: name -> how this character sees that person.
    - `others`: name -> public description of other characters this one knows about.
    """

    name: str
    source: str = ""
    profile: str = ""
    background: str = ""
    scenario: str = ""
    goals: str = ""
    secrets: str = ""
    relationships: dict[str, str] = msgspec.field(default_factory=dict)
    others: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError("a persona needs a non-empty name")
        if any(c in self.name for c in "<>\n:[]()"):
            raise ConfigError(
                f"character name {self.name!r} may not contain '<', '>', ':', brackets or newlines"
            )
        self.name = self.name.strip()

    # -- Character Card V2/V3 import --------------------------------------------------------

    @classmethod
    def from_card(cls, card: dict | str | bytes | Path) -> Persona:
        """A persona from a Character Card V1/V2/V3: a dict, JSON text, or a .json/.png path."""
        if isinstance(card, Path) or (isinstance(card, str) and not card.lstrip().startswith("{")):
            card = _read_card_file(Path(card))
        if isinstance(card, (str, bytes)):
            try:
                card = json.loads(card)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"character card is not valid JSON: {exc}") from None
        if not isinstance(card, dict):
            raise ConfigError("character card must be a JSON object")
        data = card.get("data") if isinstance(card.get("data"), dict) else card
        name = str(data.get("name") or "").strip()
        if not name:
            raise ConfigError("character card has no name")

        def text(key: str) -> str:
            value = data.get(key) or ""
            # Cards use {{char}}/{{user}} placeholders; the player is "the other person" here.
            return str(value).replace("{{char}}", name).replace("{{user}}", "the traveler").strip()

        profile = "\n\n".join(p for p in (text("description"), text("personality")) if p)
        return cls(
            name=name,
            profile=profile,
            scenario=text("scenario"),
        )


def _read_card_file(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read character card {path}: {exc.strerror}") from None
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        chunks = _png_text_chunks(raw)
        for key in ("ccv3", "chara"):  # V3 takes precedence when both exist
            if key in chunks:
                try:
                    return base64.b64decode(chunks[key]).decode("utf-8")
                except (ValueError, UnicodeDecodeError):
                    raise ConfigError(f"{path}: the '{key}' chunk is not base64 JSON") from None
        raise ConfigError(f"{path}: PNG has no 'chara' or 'ccv3' character card chunk")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a JSON or PNG character card") from None


def _png_text_chunks(raw: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    pos = 8
    while pos + 8 <= len(raw):
        (length,) = struct.unpack(">I", raw[pos : pos + 4])
        kind = raw[pos + 4 : pos + 8]
        body = raw[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"tEXt" and b"\0" in body:
            key, _, value = body.partition(b"\0")
            out[key.decode("latin-1")] = value
        elif kind == b"zTXt" and b"\0" in body:
            key, _, value = body.partition(b"\0")
            try:
                out[key.decode("latin-1")] = zlib.decompress(value[1:])
            except zlib.error:
                continue
        elif kind == b"IEND":
            break
    return out
