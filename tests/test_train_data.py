"""HER data conversion (training.data): golden samples on hand-written fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from her_sdk.training.data import (
    ConvertOptions,
    convert_records,
    decode_her,
    load_exclude,
    read_jsonl,
    render_sample,
)

from her_sdk.format import render_system_prompt

F = Path(__file__).parent / "fixtures" / "train"
ALL = [
    ("coser", "coser_test.json"),
    ("coser", "coser_book.json"),
    ("her", "her.jsonl"),
    ("sharegpt", "sharegpt.json"),
]


def samples(source: str, name: str, **opts):
    return convert_records(source, F / name, ConvertOptions(**opts))


def test_coser_golden_history_rules_and_merging():
    rows, report = samples("coser", "coser_test.json")
    brannoc = [r for r in rows if r["character"] == "Brannoc"]
    # Lines 3 and 4 are one speaker in a row: merged into one turn, one sample.
    assert [r["turn"] for r in brannoc] == [1, 3, 6]
    last = brannoc[-1]
    assert last["prompt"][1:] == [
        {
            "role": "user",
            "content": "===Conversation Start===\n\n"
            "Environment: Rain drums on the roof of the Salt Road Inn.",
        },
        {
            "role": "assistant",
            "content": "Brannoc: <role_thinking>She has seen the ledger.</role_thinking>"
            "<role_action>wipes the counter</role_action>Evening, collector.",
        },
        {
            "role": "user",
            "content": "Ysolde: <role_action>drops a ledger on the bar</role_action>"
            "Your name is in here three times.",
        },
        {
            "role": "assistant",
            "content": "Brannoc: <role_thinking>Three times. The spring accounts.</role_thinking>"
            "Three times?"
            "<role_action>slides a cup of cider toward her</role_action>"
            "Then you will want a drink first.",
        },
        {
            "role": "user",
            "content": "Ysolde: I do not drink on duty.\nEnvironment: The fire cracks.",
        },
    ]
    assert last["completion"] == [
        {
            "role": "assistant",
            "content": "Brannoc: <role_thinking>If she asks for the strongbox, I am finished."
            "</role_thinking>"
            "Give me until the first frost.",
        }
    ]
    system = last["prompt"][0]["content"]
    assert system.startswith("You are Brannoc from The Salt Road.")
    assert "Brannoc must stall the collector" in system  # own motivation
    assert "Ysolde wants the debt paid tonight" not in system  # another's motivation is private
    assert "<system_thinking>" not in system  # no plan asked: the source has none
    assert {k: last[k] for k in ("source", "book", "scene", "character", "split", "plan")} == {
        "source": "coser",
        "book": "The Salt Road",
        "scene": "The Salt Road#3#0",
        "character": "Brannoc",
        "split": "train",
        "plan": False,
    }
    assert report.samples == 9 and report.scenes == 2


@pytest.mark.parametrize(("source", "name"), ALL)
def test_other_characters_thoughts_never_reach_a_prompt(source, name):
    rows, _ = samples(source, name)
    assert rows
    for r in rows:
        persona, history, target = decode_her(r)
        text = json.dumps(r["prompt"])
        # Every thought of anyone else in the scene is absent; the target's own earlier ones stay.
        for other in rows:
            if other["scene"] == r["scene"] and other["character"] != r["character"]:
                for thought in decode_her(other)[2].thoughts:
                    assert thought not in text, (r["id"], thought)
        for own in (o for o in history if hasattr(o, "thoughts")):
            for thought in own.thoughts:
                assert f"<role_thinking>{thought}</role_thinking>" in text
        assert render_sample(persona, history, target) == (r["prompt"], r["completion"])
    assert "He is stalling" not in json.dumps([r["prompt"] for r in rows])


def test_her_layout_plans_only_on_the_target_turn():
    rows, report = samples("her", "her.jsonl")
    mara = [r for r in rows if r["character"] == "Mara" and r["scene"] == "her-1"]
    assert len(mara) == 2 and report.skipped == {"not role-play": 1} and report.bad_total() == 1
    second = mara[1]
    prompt = json.dumps(second["prompt"])
    assert "distrusts strangers" not in prompt  # the earlier turn's plan is dropped...
    assert "Another one without papers." in prompt  # ...its thought is kept
    assert "She will never let him in." not in prompt  # Tobin's thought removed
    assert second["completion"][0]["content"] == (
        "<system_thinking>Mara should refuse firmly but leave a way open, since the council may "
        "want him.</system_thinking>Mara: <role_thinking>The council would want to see him."
        "</role_thinking>Then he waits outside until morning."
    )
    persona = decode_her(second)[0]
    assert persona.source == "Vell" and persona.goals.startswith("Keep the gate shut")
    assert persona.others == {"Tobin": "A ferryman who talks too much."}
    assert second["prompt"][0]["content"] == render_system_prompt(persona, plan=True)
    assert "Write a plan first." not in second["prompt"][0]["content"]  # the source's own rules
    orla = next(r for r in rows if r["character"] == "Orla")
    # Two consecutive perception lines of Kestrel merge into one.
    assert orla["prompt"][1]["content"] == (
        "===Conversation Start===\n\nKestrel: Have you read the map? The one with the red ink."
    )


def test_her_dialogue_layout_with_separate_plan_field():
    rows, _ = samples("her", "her.jsonl")
    (r,) = [r for r in rows if r["scene"] == "Vell#1#0" and r["character"] == "Mara"]
    assert r["source"] == "her" and r["plan"] is True
    assert r["completion"][0]["content"] == (
        "<system_thinking>Mara relents because the council ordered it, but she stays cold toward "
        "Tobin.</system_thinking>Mara: <role_thinking>The council again.</role_thinking>"
        "<role_action>opens the gate</role_action>Go."
    )
    assert r["prompt"][1]["content"] == (
        "===Conversation Start===\n\nTobin: The council sent word, captain."
    )


def test_sharegpt_character_conversations():
    rows, report = samples("sharegpt", "sharegpt.json")
    assert [r["character"] for r in rows] == ["Tobin", "Tobin"]
    assert report.skipped == {"not role-play": 1} and report.bad_total() == 1
    assert rows[0]["prompt"][1]["content"] == (
        "===Conversation Start===\n\nEnvironment: Fog hides the far bank.\n"
        "Orla: <role_action>pulls her hood lower</role_action>How long is the crossing?"
    )
    assert rows[1]["completion"][0]["content"] == (
        "Tobin: <role_thinking>Everyone has one.</role_thinking>Then I will tell mine."
    )


def test_bad_records_are_counted_never_fatal(tmp_path):
    _, report = samples("coser", "coser_test.json")
    assert report.bad == {"no dialogues": 1, "bad dialogue line": 1, "not an object": 1}
    _, book = samples("coser", "coser_book.json")
    assert book.bad_total() == 1 and book.samples == 5
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"messages": []}\n[1, 2]\n{oops\n')
    rows, rep = convert_records("her", junk)
    assert rows == [] and rep.bad_total() == 3


def test_splits_keep_scenes_whole_and_exclude_benchmark_scenes(tmp_path):
    rows, _ = samples("coser", "coser_book.json", eval_ratio=0.4)
    by_scene: dict[str, set[str]] = {}
    for r in rows:
        by_scene.setdefault(r["scene"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_scene.values())
    assert {next(iter(s)) for s in by_scene.values()} == {"train", "eval"}
    again, _ = samples("coser", "coser_book.json", eval_ratio=0.4)
    assert [r["split"] for r in again] == [r["split"] for r in rows]  # deterministic
    # A CoSER test set excludes its scenes from a book file by (book, i_p, i_c).
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps([{"book": "coser book", "i_p": 4, "i_c": 1, "dialogues": []}]))
    kept, rep = samples("coser", "coser_book.json", exclude=load_exclude([bench]))
    assert rep.excluded_scenes == 1
    assert "coser book#4#1" not in {r["scene"] for r in kept} and len(kept) == 3


def test_cli_convert(tmp_path):
    from typer.testing import CliRunner

    from her_sdk.cli import app

    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(
        app,
        [
            "data",
            "convert",
            "coser",
            str(F / "coser_test.json"),
            "--out",
            str(out),
            "--eval-ratio",
            "0.5",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = read_jsonl(out)
    assert len(rows) == 9 and {r["split"] for r in rows} == {"train", "eval"}
    assert "3 bad records" in res.output
