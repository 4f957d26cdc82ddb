"""Saving and loading: round trips, exact continuation, atomic writes, bad files."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from her_sdk import Character, MockBackend, Persona, Scene, StateError, _state


def seeded_backend() -> MockBackend:
    """Output depends on the whole prompt, like a real model with a fixed seed would."""

    def handler(prompt: str) -> str:
        h = hashlib.sha256(prompt.encode()).hexdigest()[:8]
        return (
            f"<system_thinking>plan {h}</system_thinking>X: "
            f"<role_thinking>t {h}</role_thinking>say {h}"
        )

    return MockBackend(handler)


def build(backend):
    a = Character(name="Mara", profile="captain", goals="gate", model=backend, seed=5)
    b = Character(name="Jory", profile="smuggler", model=backend, relationships={"Mara": "wary"})
    return Scene([a, b], player="P", name="gate", seed=42)


def play(scene: Scene, n: int) -> list[str]:
    out = []
    for i in range(n):
        scene.say("P", f"line {i}")
        out.append(scene.turn().raw)
    return out


def test_scene_round_trip_continues_exactly(tmp_path):
    original = build(seeded_backend())
    play(original, 3)
    path = tmp_path / "scene.json"
    original.save(str(path))
    loaded = Scene.load(str(path), model=seeded_backend())
    assert loaded.events == original.events
    assert loaded.clock == original.clock
    for name in original.characters:
        assert loaded.characters[name].memory == original.characters[name].memory
        assert loaded.characters[name].persona == original.characters[name].persona
    assert play(loaded, 3) == play(original, 3)


def test_character_round_trip(tmp_path):
    c = Character(
        persona=Persona(name="Mara", secrets="s", others={"J": "x"}),
        model=seeded_backend(),
        plan=False,
        actions=["open the gate"],
    )
    c.hear("P", "hi", action="waves")
    c.reply()
    c.save(str(tmp_path / "c.json"))
    d = Character.load(str(tmp_path / "c.json"), model=seeded_backend())
    assert (d.persona, d.memory, d.plan, d.actions, d.turns_taken) == (
        c.persona,
        c.memory,
        c.plan,
        c.actions,
        c.turns_taken,
    )


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    scene = build(seeded_backend())
    path = tmp_path / "scene.json"
    scene.save(str(path))
    before = path.read_bytes()
    play(scene, 1)

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        scene.save(str(path))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["scene.json"]  # no temp file left


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not json at all", "not a her_sdk save"),
        (b'{"kind": "scene", "version": 999, "scene": {}}', "version"),
        (b'{"kind": "character", "version": 1, "character": {}}', "holds a 'character'"),
        (b'{"kind": "scene", "version": 1, "scene": {"characters": [{"persona": {}}]}}', "corrupt"),
        (b'{"kind": "scene", "version": 1, "scene": {"players": [3]}}', "corrupt"),
    ],
)
def test_bad_save_files_raise_state_error(tmp_path, content, match):
    p = tmp_path / "bad.json"
    p.write_bytes(content)
    with pytest.raises(StateError, match=match):
        Scene.load(str(p))


def test_missing_save_file(tmp_path):
    with pytest.raises(StateError, match="not found"):
        Scene.load(str(tmp_path / "nope.json"))
    with pytest.raises(StateError):
        Character.load(str(tmp_path / "nope.json"))


def test_save_format_is_versioned_json(tmp_path):
    scene = build(seeded_backend())
    play(scene, 1)
    data = json.loads(_state.dump_scene(scene))
    assert data["kind"] == "scene" and data["version"] == _state.SCHEMA_VERSION
    restored = _state.scene_from_bytes(_state.dump_scene(scene))
    assert restored.events == scene.events
    with pytest.raises(StateError):
        _state.scene_from_bytes(b"\x00garbage")
