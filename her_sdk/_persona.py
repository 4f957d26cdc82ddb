"""Persona: who a character is, as the fields of a HER system prompt.

This module holds the data only. How a persona becomes prompt text is the format module's job
(`her_sdk.format.render_system_prompt`), so that training and runtime render it identically.
It also reads Character Card V2/V3 files (JSON, or PNG with a `chara`/`ccv3` text chunk), so
personas written for other tools work here.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import struct
import zlib
from pathlib import Path

import msgspec

from ._errors import ConfigError
from ._names import unnameable

__all__ = ["Persona"]

MAX_CARD_FILE_BYTES = 32 * 1024 * 1024  # cards are small JSON, or a PNG portrait carrying one


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
        if any(c in self.name for c in "<>\n\r:[]()=") or "\0" in self.name:
            raise ConfigError(
                f"character name {self.name!r} may not contain '<', '>', ':', '=', brackets or "
                "line breaks"
            )
        if (bad := unnameable(self.name)) is not None:
            raise ConfigError(f"character name {self.name!r} contains the character {bad!r}")
        self.name = self.name.strip()
        texts = [v for f in self.__struct_fields__ if isinstance(v := getattr(self, f), str)]
        for mapping in (self.relationships, self.others):
            texts.extend(k + v for k, v in mapping.items())
        if any("\0" in t for t in texts):
            raise ConfigError(f"the persona of {self.name!r} contains a NUL character")

    # -- Character Card V2/V3 import --------------------------------------------------------

    @classmethod
    def from_card(cls, card: dict | str | bytes | Path) -> Persona:
        """A persona from a Character Card V1/V2/V3: a dict, JSON text (str or bytes), or a Path.

        A str is always JSON text, never a file name: a card that arrives over the network can
        never make the process read one of its files. Read a card file with `from_card_file`
        (a `Path` here does the same).
        """
        if isinstance(card, Path):
            return cls.from_card_file(card)
        if isinstance(card, (str, bytes)):
            if (b"\0" in card) if isinstance(card, bytes) else ("\0" in card):
                raise ConfigError("character card JSON may not contain NUL characters")
            try:
                card = json.loads(card)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"character card is not valid JSON: {exc}") from None
            except UnicodeDecodeError:
                raise ConfigError("character card is not UTF-8 JSON text") from None
            except RecursionError:
                raise ConfigError("character card JSON is nested too deeply") from None
        if not isinstance(card, dict):
            raise ConfigError("character card must be a JSON object")
        inner = card.get("data")
        data: dict = inner if isinstance(inner, dict) else card

        def text(key: str) -> str:
            value = data.get(key) or ""
            if not isinstance(value, str):
                raise ConfigError(f"character card field {key!r} must be a string")
            if "\0" in value:
                raise ConfigError(f"character card field {key!r} contains a NUL character")
            return value

        name = text("name").strip()
        if not name:
            raise ConfigError("character card has no name")

        def field(key: str) -> str:
            # Cards use {{char}}/{{user}} placeholders; the player is "the other person" here.
            return text(key).replace("{{char}}", name).replace("{{user}}", "the traveler").strip()

        profile = "\n\n".join(p for p in (field("description"), field("personality")) if p)
        return cls(name=name, profile=profile, scenario=field("scenario"))

    @classmethod
    def from_card_file(
        cls, path: str | os.PathLike[str], *, max_bytes: int = MAX_CARD_FILE_BYTES
    ) -> Persona:
        """A persona from a Character Card file: JSON, or PNG with a `chara`/`ccv3` text chunk.

        Only a regular file of at most `max_bytes` is read (not a device, pipe or directory).
        """
        return cls.from_card(_read_card_file(Path(path), max_bytes))


def _read_card_file(path: Path, max_bytes: int) -> str:
    try:
        # Open without blocking (a FIFO would wait for a writer), then check what it is.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ConfigError(f"cannot read character card {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ConfigError(f"character card {path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if info.st_size > max_bytes:
            raise ConfigError(f"character card {path} is larger than {max_bytes} bytes")
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:  # it grew while we read it
        raise ConfigError(f"character card {path} is larger than {max_bytes} bytes")
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
