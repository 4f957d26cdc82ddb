"""The save file: its envelope, its version, the atomic write, and the one save/load that
`Character` and `Scene` share (`Saveable`). No domain class lives here.

A save file is JSON: `{"kind": "character"|"scene", "version": N, KIND: STATE}`, where STATE is
the msgspec Struct that the saved class defines beside itself (`CharacterState`, `SceneState`)
and fills in its own `to_state()`. This module only wraps a state in the envelope, checks the
envelope on the way back (any bad input is a `StateError`, never a bare decoding error), and
writes files so that a crash mid-save never leaves a half-written file nor loses the previous
save: the bytes go to a temporary file in the same directory, are flushed to disk, then renamed
over the target. Models are not saved (they are files of their own).
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import msgspec

from ._errors import ConfigError, StateError

__all__ = ["SAVE_VERSION", "Saveable", "atomic_write", "decode", "encode", "read"]

# A temporary file of a save that is this old was left by a writer that crashed (a write takes
# milliseconds); the next save of the same file removes it.
STALE_TMP_SECONDS = 600.0

# Version of the save-file layout; a reader refuses any other. Bump it (and read the old one)
# when a state Struct changes in a way older files cannot be decoded into.
SAVE_VERSION = 1

State = TypeVar("State", bound=msgspec.Struct)
Saved = TypeVar("Saved", bound="Saveable")


def encode(kind: str, state: msgspec.Struct) -> bytes:
    """The save-file bytes of `state`, a `kind` ("character", "scene") save."""
    return msgspec.json.encode({"kind": kind, "version": SAVE_VERSION, kind: state})


def decode(data: bytes, kind: str, state_type: type[State], *, source: str = "save data") -> State:
    """The `state_type` held by a `kind` save; `source` names the data in error messages."""
    try:
        parts = msgspec.json.decode(data, type=dict[str, msgspec.Raw])
    except Exception as exc:  # not JSON, not an object, bad UTF-8, not bytes at all
        why = f"not a JSON object: {exc}"
        raise StateError(f"{source} is not a her_sdk save file ({why})") from None
    try:
        found = msgspec.json.decode(parts["kind"]) if "kind" in parts else None
        version = msgspec.json.decode(parts["version"]) if "version" in parts else None
    except Exception as exc:
        raise StateError(f"{source} is not a her_sdk save file ({exc})") from None
    if found != kind:
        raise StateError(f"{source} holds a {found!r} save, not a {kind}")
    if version != SAVE_VERSION:
        raise StateError(
            f"{source} is save format version {version!r}; "
            f"this her_sdk reads version {SAVE_VERSION}"
        )
    if kind not in parts:
        raise StateError(f"{source} is corrupt: it has no {kind!r} section")
    try:
        return msgspec.json.decode(parts[kind], type=state_type)
    except Exception as exc:  # a type mismatch, or a persona that fails its own validation
        raise StateError(f"{source} is corrupt: {exc}") from None


def read(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the save file at `path`; a missing or unreadable file is a `StateError`."""
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise StateError(f"save file not found: {p}") from None
    except OSError as exc:
        raise StateError(f"cannot read save file {p}: {exc.strerror}") from None


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _remove_stale_temporaries(target: Path) -> None:
    """Delete `.NAME.*.tmp` files that crashed saves of `target` left behind."""
    cutoff = time.time() - STALE_TMP_SECONDS
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        try:
            if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except OSError:
            pass  # gone already, or not ours to delete


class Saveable:
    """Saving and loading for a class that has a state Struct (`Character`, `Scene`).

    The class names its `save_kind` and `state_type`, and defines `to_state()` and the
    classmethod `from_state(state, **context)`, where `context` is what a save does not hold
    (the models, an embedder). `loads` / `load` take the same keywords as `from_state`.
    """

    save_kind: ClassVar[str]
    state_type: ClassVar[type[msgspec.Struct]]
    from_state: ClassVar[Callable[..., Any]]

    def to_state(self) -> msgspec.Struct:
        raise NotImplementedError

    def dumps(self) -> bytes:
        """The save-file bytes of this object (what `save` writes)."""
        return encode(self.save_kind, self.to_state())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this object (minds included, models not) atomically to `path` (JSON)."""
        atomic_write(path, self.dumps())

    @classmethod
    def loads(cls: type[Saved], data: bytes, **context: Any) -> Saved:
        """Read save-file bytes; anything else raises `StateError`."""
        source = f"{cls.save_kind} data"
        return cls.restore(cls.decode_state(data, source=source), source=source, **context)

    @classmethod
    def load(cls: type[Saved], path: str | os.PathLike[str], **context: Any) -> Saved:
        """Read a file written by `save`; a missing or bad file raises `StateError`."""
        source = str(Path(path))
        return cls.restore(cls.decode_state(read(path), source=source), source=source, **context)

    @classmethod
    def decode_state(cls, data: bytes, *, source: str) -> Any:
        """The state a save holds, checked against its envelope (see `decode`)."""
        return decode(data, cls.save_kind, cls.state_type, source=source)

    @classmethod
    def restore(cls: type[Saved], state: msgspec.Struct, *, source: str, **context: Any) -> Saved:
        """`from_state`, where a state its class refuses is a corrupt save (`StateError`)."""
        try:
            return cls.from_state(state, **context)
        except ConfigError as exc:  # e.g. two characters of one name
            raise StateError(f"{source} is corrupt: {exc}") from None
