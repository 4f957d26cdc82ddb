"""Saving and loading Characters and Scenes: versioned msgspec schemas, atomic writes.

A save file is JSON: `{"kind": "character"|"scene", "version": N, ...}`. Writes go to a
temporary file in the same directory, are flushed to disk, then renamed over the target, so a
crash mid-save never leaves a half-written file and never loses the previous save. Models are
not saved (they are files of their own); `load` takes the backend to attach.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import msgspec

from ._backends._base import Backend, Sampling
from ._character import Character
from ._errors import StateError
from ._persona import Persona
from ._scene import Event, Scene
from .format import Heard, Turn

__all__ = ["load_character", "load_scene", "save_character", "save_scene"]

SCHEMA_VERSION = 1


class CharacterState(msgspec.Struct, kw_only=True):
    persona: Persona
    memory: list[Heard | Turn] = msgspec.field(default_factory=list)
    turns_taken: int = 0
    plan: bool = True
    keep_plans: bool = False
    grammar: bool | None = None
    actions: list[str] | None = None
    sampling: Sampling = msgspec.field(default_factory=Sampling)
    seed: int | None = None
    max_memory: int = 2000


class CharacterFile(msgspec.Struct, kw_only=True, tag="character", tag_field="kind"):
    version: int
    character: CharacterState


class SceneState(msgspec.Struct, kw_only=True):
    name: str = ""
    seed: int | None = None
    clock: int = 0
    max_events: int = 10_000
    players: list[str] = msgspec.field(default_factory=list)
    characters: list[CharacterState] = msgspec.field(default_factory=list)
    events: list[Event] = msgspec.field(default_factory=list)


class SceneFile(msgspec.Struct, kw_only=True, tag="scene", tag_field="kind"):
    version: int
    scene: SceneState


def _character_state(c: Character) -> CharacterState:
    return CharacterState(
        persona=c.persona,
        memory=list(c.memory),
        turns_taken=c.turns_taken,
        plan=c.plan,
        keep_plans=c.keep_plans,
        grammar=c.grammar,
        actions=c.actions,
        sampling=c.sampling,
        seed=c.seed,
        max_memory=c.max_memory,
    )


def _character_from_state(s: CharacterState, model: Backend | None) -> Character:
    c = Character(
        persona=s.persona,
        model=model,
        plan=s.plan,
        keep_plans=s.keep_plans,
        grammar=s.grammar,
        actions=s.actions,
        sampling=s.sampling,
        seed=s.seed,
        max_memory=s.max_memory,
    )
    c.memory = list(s.memory)
    c.turns_taken = s.turns_taken
    return c


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
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


def _read(path: str | os.PathLike[str], kind: type) -> object:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise StateError(f"save file not found: {p}") from None
    except OSError as exc:
        raise StateError(f"cannot read save file {p}: {exc.strerror}") from None
    try:
        head = msgspec.json.decode(raw, type=dict)
    except msgspec.DecodeError as exc:
        raise StateError(f"{p} is not a her_sdk save file (not JSON: {exc})") from None
    expected = "character" if kind is CharacterFile else "scene"
    if head.get("kind") != expected:
        raise StateError(f"{p} holds a {head.get('kind')!r} save, not a {expected}")
    if head.get("version") != SCHEMA_VERSION:
        raise StateError(
            f"{p} is save format version {head.get('version')!r}; "
            f"this her_sdk reads version {SCHEMA_VERSION}"
        )
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise StateError(f"{p} is corrupt: {exc}") from None
    except Exception as exc:  # e.g. a persona that fails its own validation
        raise StateError(f"{p} is corrupt: {exc}") from None


def dump_character(c: Character) -> bytes:
    return msgspec.json.encode(CharacterFile(version=SCHEMA_VERSION, character=_character_state(c)))


def save_character(c: Character, path: str | os.PathLike[str]) -> None:
    atomic_write(path, dump_character(c))


def load_character(path: str | os.PathLike[str], *, model: Backend | None = None) -> Character:
    f = _read(path, CharacterFile)
    assert isinstance(f, CharacterFile)
    return _character_from_state(f.character, model)


def dump_scene(scene: Scene) -> bytes:
    with scene._lock:
        state = SceneState(
            name=scene.name,
            seed=scene.seed,
            clock=scene.clock,
            max_events=scene.max_events,
            players=list(scene.players),
            characters=[_character_state(c) for c in scene.characters.values()],
            events=list(scene.events),
        )
    return msgspec.json.encode(SceneFile(version=SCHEMA_VERSION, scene=state))


def save_scene(scene: Scene, path: str | os.PathLike[str]) -> None:
    atomic_write(path, dump_scene(scene))


def scene_from_bytes(
    raw: bytes, *, model: Backend | None = None, models: dict[str, Backend] | None = None
) -> Scene:
    try:
        f = msgspec.json.decode(raw, type=SceneFile)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise StateError(f"not a valid scene save: {exc}") from None
    except Exception as exc:
        raise StateError(f"not a valid scene save: {exc}") from None
    if f.version != SCHEMA_VERSION:
        raise StateError(f"scene save format version {f.version} is not supported")
    return _scene_from_state(f.scene, model, models)


def _scene_from_state(
    s: SceneState, model: Backend | None, models: dict[str, Backend] | None
) -> Scene:
    scene = Scene(name=s.name, seed=s.seed, max_events=s.max_events)
    for p in s.players:
        scene.add_player(p)
    for cs in s.characters:
        m = (models or {}).get(cs.persona.name, model)
        scene.add(_character_from_state(cs, m))
    scene.events = list(s.events)
    scene.clock = s.clock
    return scene


def load_scene(
    path: str | os.PathLike[str],
    *,
    model: Backend | None = None,
    models: dict[str, Backend] | None = None,
) -> Scene:
    f = _read(path, SceneFile)
    assert isinstance(f, SceneFile)
    return _scene_from_state(f.scene, model, models)
