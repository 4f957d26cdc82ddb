"""Saving and loading: round trips, exact continuation, atomic writes, bad files."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from her_sdk import Character, MockBackend, Persona, Scene, StateError, _savefile


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
        allowed_actions=["open the gate"],
    )
    c.hear("P", "hi", action="waves")
    c.reply()
    c.save(str(tmp_path / "c.json"))
    d = Character.load(str(tmp_path / "c.json"), model=seeded_backend())
    assert (d.persona, d.memory, d.plan, d.allowed_actions, d.turns_taken) == (
        c.persona,
        c.memory,
        c.plan,
        c.allowed_actions,
        c.turns_taken,
    )
    assert d.dumps() == c.dumps()


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
    data = json.loads(scene.dumps())
    assert data["kind"] == "scene" and data["version"] == _savefile.SAVE_VERSION
    restored = Scene.loads(scene.dumps())
    assert restored.events == scene.events
    assert restored.dumps() == scene.dumps()
    scene.save(tmp_path / "scene.json")
    assert (tmp_path / "scene.json").read_bytes() == scene.dumps()
    with pytest.raises(StateError):
        Scene.loads(b"\x00garbage")


# Written by her_sdk before Character and Scene owned their state (and before the closed set of
# actions was called `allowed_actions`): such saves must load, and save back byte for byte.
OLD_SCENE = (
    b'{"kind":"scene","version":1,"scene":{"name":"gate","seed":42,"clock":2,"max_events":10000,'
    b'"players":["P"],"characters":[{"persona":{"name":"Mara","profile":"captain"},"memory":['
    b'{"type":"heard","speaker":"P","speech":"hi","actions":["waves"]},{"type":"turn","plan":"P",'
    b'"thoughts":["T"],"actions":["nods"],"speech":"Yes.","segments":[["plan","P"],["thought","T"]'
    b',["action","nods"],["speech","Yes."]]}],"turns_taken":1,"plan":true,"keep_plans":false,'
    b'"grammar":null,"actions":["open the gate","nod"],"sampling":{"max_tokens":64,'
    b'"temperature":0.8,"top_k":40,"top_p":0.95,"min_p":0.05,"repeat_penalty":1.1,"seed":null},'
    b'"seed":5,"max_memory":2000},{"persona":{"name":"Jory"},"memory":[{"type":"heard",'
    b'"speaker":"P","speech":"hi","actions":["waves"]},{"type":"heard","speaker":"Mara",'
    b'"speech":"Yes.","actions":["nods"]}],"turns_taken":0,"plan":true,"keep_plans":false,'
    b'"grammar":null,"actions":null,"sampling":{"max_tokens":320,"temperature":0.8,"top_k":40,'
    b'"top_p":0.95,"min_p":0.05,"repeat_penalty":1.1,"seed":null},"seed":null,"max_memory":2000}'
    b'],"events":[{"index":0,"kind":"speech","speaker":"P","speech":"hi","actions":["waves"],'
    b'"perceivers":["Mara","Jory","P"]},{"index":1,"kind":"turn","speaker":"Mara","speech":'
    b'"Yes.","actions":["nods"],"perceivers":["Mara","Jory","P"]}]}}'
)
OLD_CHARACTER = (
    b'{"kind":"character","version":1,"character":{"persona":{"name":"Mara","profile":"captain"},'
    b'"memory":[{"type":"heard","speaker":"P","speech":"hi","actions":["waves"]},{"type":"turn",'
    b'"plan":"P","thoughts":["T"],"actions":["nods"],"speech":"Yes.","segments":[["plan","P"],'
    b'["thought","T"],["action","nods"],["speech","Yes."]]}],"turns_taken":1,"plan":true,'
    b'"keep_plans":false,"grammar":null,"actions":["open the gate","nod"],"sampling":'
    b'{"max_tokens":64,"temperature":0.8,"top_k":40,"top_p":0.95,"min_p":0.05,'
    b'"repeat_penalty":1.1,"seed":null},"seed":5,"max_memory":2000}}'
)


def _without_long_term(save: bytes) -> dict:
    data = json.loads(save)
    chars = data["scene"]["characters"] if "scene" in data else [data["character"]]
    for c in chars:
        c.pop("long_term")
    return data


def test_saves_from_before_the_restructuring_load_and_save_back_the_same(tmp_path):
    # Saves written before long-term memory existed load; the character's working memory becomes
    # its long-term memory, and every field they had saves back unchanged.
    scene = Scene.loads(OLD_SCENE, model=seeded_backend())
    mara = scene.characters["Mara"]
    assert mara.allowed_actions == ["open the gate", "nod"] and mara.seed == 5
    assert scene.characters["Jory"].allowed_actions is None
    assert [e.speaker for e in scene.events] == ["P", "Mara"] and scene.clock == 2
    assert [m.text for m in mara.long_term.items] == [
        "P: (waves) hi",
        "Mara (me): [I thought: T] (nods) Yes.",
    ]
    assert [m.private for m in mara.long_term.items] == [False, True]
    assert _without_long_term(scene.dumps()) == json.loads(OLD_SCENE)
    assert Scene.loads(scene.dumps()).dumps() == scene.dumps()
    (tmp_path / "old.json").write_bytes(OLD_CHARACTER)
    c = Character.load(tmp_path / "old.json")
    assert c.allowed_actions == ["open the gate", "nod"] and c.turns_taken == 1
    assert _without_long_term(c.dumps()) == json.loads(OLD_CHARACTER)
    assert c.dumps() == mara.dumps()


def test_a_character_using_no_new_feature_saves_as_before():
    # New fields are left out of a save while unused, so such saves stay readable by older
    # her_sdk versions.
    c = Character(name="Mara", profile="captain")
    assert set(json.loads(c.dumps())["character"]) == {
        "persona", "memory", "turns_taken", "plan", "keep_plans", "grammar", "actions",
        "sampling", "seed", "max_memory",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not a her_sdk save"),
        (b"\xff\xfe\x00\x01binary", "not a her_sdk save"),
        (b'{"kind": "scene", "version": 1, "scene": {"name": "\xff\xfe"}}', "corrupt"),
        (b"[1, 2]", "not a her_sdk save"),
        (b"3", "not a her_sdk save"),
        (b'{"version": 1, "scene": {}}', "holds a None save"),
        (b'{"kind": "scene", "scene": {}}', "version None"),
        (b'{"kind": "scene", "version": "1", "scene": {}}', "version '1'"),
        (b'{"kind": "scene", "version": 1}', "no 'scene' section"),
        (b'{"kind": "scene", "version": 1, "scene": []}', "corrupt"),
        (b'{"kind": [, "version": 1}', "not a her_sdk save"),
    ],
)
def test_bad_save_data_raises_state_error(tmp_path, content, match):
    with pytest.raises(StateError, match=match):
        Scene.loads(content)
    p = tmp_path / "bad.json"
    p.write_bytes(content)
    with pytest.raises(StateError, match=match):
        Scene.load(p)


def test_a_save_of_one_kind_is_not_read_as_the_other(tmp_path):
    with pytest.raises(StateError, match="holds a 'scene' save, not a character"):
        Character.loads(OLD_SCENE)
    with pytest.raises(StateError, match="holds a 'character' save, not a scene"):
        Scene.loads(OLD_CHARACTER)
    with pytest.raises(StateError, match="not a her_sdk save"):
        Character.loads(b"\x89PNG\r\n\x1a\n\x00")


def test_states_the_classes_refuse_are_state_errors():
    two_maras = json.loads(OLD_SCENE)
    two_maras["scene"]["characters"][1]["persona"]["name"] = "Mara"
    with pytest.raises(StateError, match="corrupt"):
        Scene.loads(json.dumps(two_maras).encode())
    tiny_memory = json.loads(OLD_CHARACTER)
    tiny_memory["character"]["max_memory"] = 1
    with pytest.raises(StateError, match="corrupt"):
        Character.loads(json.dumps(tiny_memory).encode())
