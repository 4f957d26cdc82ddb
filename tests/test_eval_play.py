"""her eval play (multi-turn game scenes) and the metric table, on scripted models and the
real one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("typer")

from her_sdk.evaluation import (
    METRICS,
    PlaySettings,
    compare_runs,
    load_scenes,
    metrics_for,
    run_play,
)
from her_sdk.evaluation._backends import BackendPool
from typer.testing import CliRunner

from her_sdk import ConfigError, DataError, MockBackend
from her_sdk.cli import app

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "benchmarks" / "heldout_scenes.json"


def _pool_with(backend) -> BackendPool:
    class _Pool(BackendPool):
        def get(self, *args, **kwargs):
            return backend

    return _Pool()


def _scene(turns: int = 12) -> dict:
    script: list[dict] = [{"narrate": "Rain on the quay."}, {"say": "Open the gate, captain."}]
    for i in range(turns):
        script.append({"turn": "Mara" if i % 2 == 0 else "Jory"})
        if i % 4 == 3:
            script.append({"say": f"Question number {i} for you both, friends?"})
    return {
        "id": "quay",
        "title": "The Quay",
        "seed": 5,
        "player": "Traveler",
        "characters": [
            {"name": "Mara", "profile": "Gate captain.", "secrets": "I let my brother through"},
            {"name": "Jory", "profile": "A smuggler.", "others": {"Mara": "The captain."}},
        ],
        "script": script,
    }


def _write(tmp_path, scenes) -> Path:
    p = tmp_path / "scenes.json"
    p.write_text(json.dumps({"scenes": scenes}))
    return p


def _name(prompt: str) -> str:
    return re.findall(r"You are (.+?)[ .]", prompt)[0]


def _turn(name: str, speech: str, action: str = "nods") -> str:
    return (
        f"<system_thinking>{name} answers.</system_thinking>{name}: "
        f"<role_action>{action}</role_action>{speech}"
    )


def test_packaged_and_heldout_scenes_are_valid_and_disjoint():
    play, _, _ = load_scenes()
    held, _, _ = load_scenes(HELDOUT)
    for scenes in (play, held):
        assert len(scenes) >= 3
        for sc in scenes:
            assert sum("turn" in s for s in sc["script"]) >= 12
            assert len(sc["characters"]) >= 2 and sc["player"]
    names = lambda scs: {c["name"] for sc in scs for c in sc["characters"]}  # noqa: E731
    assert not names(play) & names(held)
    assert not {sc["id"] for sc in play} & {sc["id"] for sc in held}
    assert not names(held) & {"Mara", "Jory", "Doran", "Hale"}  # not the demo's people
    assert "never" in json.loads(HELDOUT.read_text())["about"].lower()


@pytest.mark.parametrize(
    "broken, message",
    [
        ({"scenes": []}, "non-empty `scenes`"),
        ({"scenes": [{"id": "a", "characters": [], "script": []}]}, "characters"),
        ({"scenes": [{**_scene(), "script": [{"turn": "Nobody"}]}]}, "not in the scene"),
        ({"scenes": [_scene(turns=5)]}, "at least 12"),
        ({"scenes": [{**_scene(), "player": None}]}, "player"),
        ({"scenes": [{**_scene(), "script": [{"dance": 1}]}]}, "narrate, say, turn"),
        (
            {"scenes": [{**_scene(), "characters": [{"name": "Mara", "mood": "x"}]}]},
            "unknown",
        ),
    ],
)
def test_scene_files_are_checked(tmp_path, broken, message):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(broken))
    with pytest.raises(DataError, match=message):
        load_scenes(p)


def test_play_measures_a_well_behaved_model(tmp_path):
    lines = iter(range(10_000))

    def good(prompt: str) -> str:  # short, fresh lines that answer in their own words
        n = next(lines)
        return _turn(_name(prompt), f"Not tonight, friend number {n}. Wait for dawn.")

    res = run_play(
        tmp_path / "p",
        PlaySettings(),
        scenes=_write(tmp_path, [_scene()]),
        pool=_pool_with(MockBackend(good)),
    )
    s = res["scores"]
    assert res["kind"] == "play" and res["scenes"] == 1 and res["turns_generated"] == 12
    assert s["speech_words_median"] == 8 and s["long_turn_rate"] == 0.0
    assert s["segments_per_turn"] == 2.0
    for key in (
        "narration_rate",
        "nested_quote_rate",
        "copy_others_rate",
        "own_repeat_rate",
        "forged_speaker_rate",
        "secret_reveal_rate",
        "leak_rate",
    ):
        assert s[key] == 0.0, key
    assert s["valid_turn_rate"] == 1.0
    assert s["first_speech_s"] is not None
    report = (tmp_path / "p" / "report.md").read_text()
    for m in metrics_for("play"):
        assert m.label in report and m.definition in report
    assert "✓" in report and "## Transcripts" in report and "Traveler" in report
    assert (tmp_path / "p" / "metrics.png").is_file()


def test_play_catches_a_novel_writing_model(tmp_path):
    def bad(prompt: str) -> str:
        name = _name(prompt)
        heard = re.findall(r"Traveler: ([^<\n]+)", prompt)
        echo = heard[-1] if heard else ""
        speech = (
            f"{echo} Then the rain fell harder on the quay, she said. "
            '"We must go," he whispered. ' + "and the night went on and on " * 8
        )
        speech += " Jory: fine."
        if name == "Mara":
            speech += " I let my brother through."
        return _turn(name, speech, action="smiles nervously")

    res = run_play(
        tmp_path / "b",
        PlaySettings(),
        scenes=_write(tmp_path, [_scene()]),
        pool=_pool_with(MockBackend(bad)),
    )
    s = res["scores"]
    assert s["long_turn_rate"] == 1.0 and s["speech_words_median"] > 60
    assert s["narration_rate"] == 1.0 and s["nested_quote_rate"] == 1.0
    # Every turn echoes the player's last line and carries the tail the others said before; the
    # first one has only the player's 4-word line to copy, no 8-word run: not a copy.
    assert s["copy_others_rate"] == pytest.approx(11 / 12)
    assert s["own_repeat_rate"] > 0.5  # the same tail, turn after turn
    assert s["forged_speaker_rate"] == 0.5  # Mara writes "Jory:"; Jory's own label is his
    # Mara's secret is stopped by the guard (or said): her turns, half of them
    assert s["secret_reveal_rate"] == 0.5

    good = MockBackend(lambda p: _turn(_name(p), "Not tonight."))
    run_play(
        tmp_path / "g", PlaySettings(), scenes=_write(tmp_path, [_scene()]), pool=_pool_with(good)
    )
    rows = {r["key"]: r for r in compare_runs(tmp_path / "b", tmp_path / "g")["rows"]}
    assert set(rows) == {m.key for m in metrics_for("play")}
    assert rows["narration_rate"]["mark"] == "better"
    assert rows["long_turn_rate"]["mark"] == "better"
    assert rows["distinct_2"]["mark"] in ("better", "worse", "same")


def test_a_game_shape_keeps_a_novel_writing_model_in_a_dialogue_box(tmp_path):
    # Without a grammar (the mock), the shape stops each turn at its edge: one action, one
    # speech of at most three sentences, no quotation marks.
    def bad(prompt: str) -> str:
        speech = '"We must go," he whispered. The rain fell. It fell on. ' + "And on. " * 30
        return _turn(_name(prompt), speech, action="smiles nervously")

    res = run_play(
        tmp_path / "s",
        PlaySettings(shape="game"),
        scenes=_write(tmp_path, [_scene()]),
        pool=_pool_with(MockBackend(bad)),
    )
    s = res["scores"]
    assert s["long_turn_rate"] == 0.0 and s["speech_words_median"] <= 12
    assert s["nested_quote_rate"] == 0.0 and s["segments_per_turn"] == 2.0
    with pytest.raises(ConfigError, match="unknown turn shape"):
        run_play(tmp_path / "x", PlaySettings(shape="tiny"), scenes=_write(tmp_path, [_scene()]))


def test_cli_play_and_compare(tmp_path):
    script = {"*": _turn("Mara", "Papers first.")}
    (tmp_path / "mock.json").write_text(json.dumps(script))
    scenes = _write(tmp_path, [_scene(), {**_scene(), "id": "quay2"}])
    runner = CliRunner()
    args = ["eval", "play", "--scenes", str(scenes), "--model", f"mock:{tmp_path / 'mock.json'}"]
    r = runner.invoke(app, [*args, "--limit", "1", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "median speech words" in r.output and "goal" in r.output
    assert json.loads((tmp_path / "a" / "results.json").read_text())["scenes"] == 1
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    md = runner.invoke(
        app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--markdown"]
    )
    assert md.exit_code == 0 and "third-person narration" in md.output
    bad = runner.invoke(
        app, ["eval", "play", "--scenes", str(tmp_path / "nope.json"), "--out", str(tmp_path / "c")]
    )
    assert bad.exit_code == 1 and "cannot read scenes file" in " ".join(bad.output.split())


def test_the_metric_table():
    keys = [m.key for m in METRICS]
    assert len(keys) == len(set(keys))
    for m in METRICS:
        assert m.kinds and set(m.kinds) <= {"coser", "quick", "play"}
        assert m.definition and m.label
        if m.goal is not None:
            assert m.goal[0] in ("<=", ">=") and m.better is (m.goal[0] == ">=")
    # quick's forged-speaker metric has one name, in the table and in results
    assert "forged_speaker_rate" in {m.key for m in metrics_for("quick")}
    play = {m.key for m in metrics_for("play")}
    for key in (
        "speech_words_median",
        "long_turn_rate",
        "narration_rate",
        "nested_quote_rate",
        "segments_per_turn",
        "copy_others_rate",
        "own_repeat_rate",
        "forged_speaker_rate",
        "distinct_2",
        "secret_reveal_rate",
        "valid_turn_rate",
        "first_speech_s",
    ):
        assert key in play


@pytest.mark.slow
def test_play_on_the_embedded_model(tmp_path):
    pytest.importorskip("llama_cpp")
    res = run_play(tmp_path / "e", PlaySettings(max_tokens=24), scenes=_write(tmp_path, [_scene()]))
    s = res["scores"]
    assert res["turns_generated"] == 12
    assert s["leak_rate"] == 0.0
    assert 0 <= s["valid_turn_rate"] <= 1 and s["first_speech_s"] is not None
    assert all(t["completion_tokens"] <= 24 for t in res["turns"])
