"""`her data shape`: CoSER turns kept, trimmed or dropped to read as game lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from her_sdk.evaluation.lines import LineLimits, narrates, nested_quotes
from her_sdk.training.data import decode_her, encode_her, read_jsonl, render_sample, write_jsonl
from her_sdk.training.shaping import shape_samples, shape_turn, trim_turn

from her_sdk import Heard, Persona, parse_turn

F = Path(__file__).parent / "fixtures" / "train"
MARA = Persona(name="Mara", profile="Gate captain.", others={"Jory": "A merchant."})


def coser(text: str):
    return parse_turn(text, "Mara")


def test_a_game_sized_turn_is_kept_as_it_was():
    t = coser("[He lies.] (crosses her arms) Papers first. Then we talk.")
    shaped, why = shape_turn(t, "Mara", ["Jory"])
    assert why == "kept" and shaped == t


def test_stacked_actions_and_speech_runs_are_trimmed_in_order():
    t = coser("[Careful.] (smiles nervously) Come in. (looks confused) (cries) And sit down. Eat.")
    shaped, why = shape_turn(t, "Mara", ["Jory"])
    assert why == "trimmed"
    assert [s.channel for s in shaped.segments] == ["thought", "action", "speech"]
    assert shaped.actions == ["smiles nervously"] and shaped.speech == "Come in."


def test_long_speech_keeps_its_first_whole_sentences():
    t = coser("(nods) One. Two words. Three small words. Four words here now.")
    shaped, why = shape_turn(t, "Mara", shape=LineLimits(max_sentences=2))
    assert why == "trimmed" and shaped.speech == "One. Two words."
    # Words are never changed, only cut at a sentence end; a word cap cuts earlier.
    shaped, _ = shape_turn(t, "Mara", shape=LineLimits(max_speech_words=4))
    assert shaped.speech == "One. Two words."


def test_a_wrapping_pair_of_quotes_goes():
    shaped, why = shape_turn(coser("“Please let me in.”"), "Mara")
    assert why == "trimmed" and shaped.speech == "Please let me in."


@pytest.mark.parametrize(
    "text, reason",
    [
        ("Go home, she said. The gate is shut.", "narration"),
        ("(turns) Mara turned away from the gate.", "narration"),
        ('He told me, "wait here." So I waited.', "nested quotes"),
        ("[I must not tell him.]", "nothing public"),
        ("(sighs) " + "word " * 60 + ".", "first sentence too long"),
    ],
)
def test_prose_is_dropped(text, reason):
    shaped, why = shape_turn(coser(text), "Mara", ["Jory"])
    assert shaped is None and why == reason


def test_narration_after_the_kept_sentences_does_not_drop_the_turn():
    t = coser("Go. Now. Leave. He said so, his voice strained.")
    shaped, why = shape_turn(t, "Mara", shape=LineLimits(max_sentences=3))
    assert why == "trimmed" and shaped.speech == "Go. Now. Leave."
    assert not narrates(shaped.speech, "Mara") and not nested_quotes(shaped)


def test_action_only_turns_stay():
    shaped, why = shape_turn(coser("(bars the gate)"), "Mara")
    assert why == "kept" and shaped.actions == ["bars the gate"]


def test_trim_never_adds_segments():
    t = coser("Hello.")
    assert trim_turn(t) == t


def _sample(history, target):
    prompt, completion = render_sample(MARA, history, target)
    return {
        "id": "x",
        "scene": "s",
        "character": "Mara",
        "prompt": prompt,
        "completion": completion,
        "her": encode_her(MARA, history, target),
    }


def test_samples_are_rerendered_with_own_history_trimmed():
    own = coser("(smiles) (waves) Evening. Rain again. It never stops. Not once. Never.")
    history = [Heard(speaker="Jory", speech="Open up, captain. My wine spoils."), own]
    rows = [
        _sample(history, coser("(frowns) (points) Not tonight. Go home.")),
        _sample(history, coser("Go home, she said.")),
        {"id": "no-her", "prompt": [], "completion": []},
    ]
    out, report = shape_samples(rows, LineLimits(max_sentences=2))
    assert report.as_dict() == {
        "samples": 3,
        "kept": 0,
        "trimmed": 1,
        "dropped": {"narration": 1},
        "skipped": 1,
        "written": 1,
    }
    [row] = out
    persona, hist, target = decode_her(row)
    assert target.actions == ["frowns"] and target.speech == "Not tonight. Go home."
    assert hist[0] == history[0]  # another's line stays as it was
    assert hist[1].actions == ["smiles"] and hist[1].speech == "Evening. Rain again."
    assert row["completion"][0]["content"] == (
        "Mara: <role_action>frowns</role_action>Not tonight. Go home."
    )
    assert "(waves)" not in json.dumps(row["prompt"]) and "waves" not in json.dumps(row["prompt"])
    assert row["shaped"] == "trimmed" and row["id"] == "x"


def test_cli_shape_on_converted_fixtures(tmp_path):
    from typer.testing import CliRunner

    from her_sdk.cli import app

    conv = tmp_path / "c.jsonl"
    r = CliRunner().invoke(
        app, ["data", "convert", "coser", str(F / "coser_test.json"), "--out", str(conv)]
    )
    assert r.exit_code == 0, r.output
    n_in = len(read_jsonl(conv))
    out = tmp_path / "s.jsonl"
    r = CliRunner().invoke(app, ["data", "shape", str(conv), "--out", str(out)])
    assert r.exit_code == 0, r.output
    shaped = read_jsonl(out)
    assert 0 < len(shaped) <= n_in
    for row in shaped:
        _, _, target = decode_her(row)
        assert len(target.actions) <= 1 and not nested_quotes(target)
    bad = tmp_path / "empty.jsonl"
    write_jsonl(bad, [])
    r = CliRunner().invoke(app, ["data", "shape", str(bad), "--out", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 1 and "no samples" in " ".join(r.output.split())
