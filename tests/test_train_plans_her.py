"""`her data synth-plans --mode her`: HER's two phases (a reasoning teacher's draft without the
reply, then a rewrite per scene and character) with scripted teachers, checked against the
shapes of HER's own scripts (data_process_code/step3_gen_systhinking/ in cydu24/HER)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from her_sdk.training.data import convert_file, decode_her, read_jsonl
from her_sdk.training.plans_her import (
    EMPTY_DRAFT,
    PHASE1_REQUIREMENTS,
    extract_thinking,
    mock_reasoning_teacher,
    mock_rewriter,
    phase1_messages,
    synth_plans_her,
)

from her_sdk import MockBackend

F = Path(__file__).parent / "fixtures" / "train"
# sha256 of CONSISTENCY_REWRITE_PROMPT_TEMPLATE (step3_7_construct_rewrite_data.py lines
# 28-165) as released.
REWRITE_TEMPLATE_SHA256 = "2653dd14a009fa6e92ec2afe0813289d96904a21efb9f568b824dc7d4962310c"


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "coser.jsonl"
    convert_file("coser", F / "coser_test.json", path)
    return path


def test_thinking_is_split_off_as_hers_step_3_3_does():
    # step3_3_extract_model_think.py lines 32-73: a closing think tag, else a "Name: " line,
    # else the first <role_thinking>.
    assert extract_thinking("<think>\nShe stalls.\n</think>\n\nMara: Go.") == "She stalls."
    assert extract_thinking("<thinker>A plan</thinker>Mara: Go.") == "A plan"
    assert extract_thinking("A plan first.\nMara Vell: <role_action>waits</role_action>") == (
        "A plan first."
    )
    assert extract_thinking("A plan.<role_thinking>Hm.</role_thinking>Go.") == "A plan."
    assert extract_thinking("Mara: Go.") == ""


def test_phase_one_never_shows_the_reply_and_asks_as_hers_does(data):
    rows = read_jsonl(data)
    for row in rows:
        persona, history, target = decode_her(row)
        msgs = phase1_messages(persona, history)
        system = str(msgs[0].content)
        assert system.endswith(PHASE1_REQUIREMENTS.replace("{ai_name}", persona.name))
        assert system.count("===Requirements===") == 1  # HER's training Requirements removed
        shown = "\n".join(str(m.content) for m in msgs)
        if target.speech:
            assert target.speech not in shown  # the reply is what the teacher must not see


def test_two_phases_give_long_plans_that_lead_to_the_reply(data, tmp_path):
    teacher, rewriter = MockBackend(mock_reasoning_teacher), MockBackend(mock_rewriter)
    out = tmp_path / "planned.jsonl"
    rep = synth_plans_her(data, out, teacher, rewriter)
    rows = read_jsonl(out)
    assert len(rows) == len(read_jsonl(data)) == 9 and rep.kept == 4  # 4 scene-characters
    assert rep.stats["phase1"]["kept"] == 9
    for r in rows:
        persona, _, target = decode_her(r)
        assert r["plan_mode"] == "her" and 400 <= len(target.plan) <= 4000
        assert target.plan.startswith(f"Okay, I need to portray {persona.name}")
        assert "Drafting toward" in target.plan  # phase 2 ran on it
        assert r["completion"][0]["content"].startswith("<system_thinking>")
    # HER's rewrite prompt, verbatim, with its JSON of the scene
    template = (Path(__file__).parents[1] / "training" / "her_plan_rewrite_prompt.txt").read_text()
    assert hashlib.sha256(template.encode()).hexdigest() == REWRITE_TEMPLATE_SHA256
    prompt = rewriter.prompts[0]
    assert "You are a professional role-playing dialogue consistency editor." in prompt
    entries = json.loads(re.search(r"```json\n(.*?)\n```", prompt, re.S).group(1))
    assert entries[0]["role"] == "system_info"
    assert all("need_revise" in e for e in entries[1:])
    assert not any("[" in e["enhanced_speech"] for e in entries[1:] if not e["need_revise"])
    # no phase-1 prompt holds a scene's last line: nobody's reply was shown before it was made
    last = {}
    for r in read_jsonl(data):
        last[r["scene"]] = decode_her(r)[2].speech
    assert not any(s in p for p in teacher.prompts for s in last.values())
    # resumable: both phases skip what is done
    again = synth_plans_her(data, out, teacher, rewriter)
    assert again.resumed == 4 and again.kept == 0 and again.stats["phase1"]["resumed"] == 9


def test_rewrites_that_drift_or_break_hers_rules_are_rejected(data, tmp_path):
    def doubling(prompt: str) -> str:  # HER asks for the draft's length, within 10 %
        answer = json.loads(mock_rewriter(prompt))
        for e in answer:
            e["revised_sys_thinking"] = e["revised_sys_thinking"] * 2
        return json.dumps(answer)

    def users(prompt: str) -> str:
        answer = json.loads(mock_rewriter(prompt))
        for e in answer:
            e["revised_sys_thinking"] += " The user wants an answer."
        return json.dumps(answer)

    for rewriter, reason in ((doubling, "drifted"), (users, "mentions the user")):
        rep = synth_plans_her(
            data,
            tmp_path / f"{rewriter.__name__}.jsonl",
            MockBackend(mock_reasoning_teacher),
            MockBackend(rewriter),
            retries=0,
        )
        assert rep.kept == 0 and all(reason in k for k in rep.dropped), rep.dropped


def test_an_empty_draft_is_generated_in_phase_two(data, tmp_path):
    rep = synth_plans_her(
        data,
        tmp_path / "p.jsonl",
        MockBackend(lambda p: "Mara: no thinking at all"),
        MockBackend(mock_rewriter),
        retries=0,
    )
    assert rep.stats["phase1"]["kept"] == 0 and rep.kept == 4
    assert all(r["plan_draft_chars"] == 0 for r in read_jsonl(tmp_path / "p.jsonl"))
    assert EMPTY_DRAFT == "[EMPTY - needs generation]"  # step3_7 line 413


def test_cli_mode_her(data, tmp_path):
    from typer.testing import CliRunner

    from her_sdk.cli import app

    out = tmp_path / "cli.jsonl"
    res = CliRunner().invoke(
        app,
        ["data", "synth-plans", str(data), "--out", str(out), "--teacher", "mock", "--mode", "her"],
    )
    assert res.exit_code == 0, res.output
    assert len(read_jsonl(out)) == 9 and "phase 1" in res.output
