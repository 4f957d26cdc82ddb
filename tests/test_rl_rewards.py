"""RL reward functions on hand-made turns, the judge reward, and GRPO prompt rows."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("yaml")

from her_sdk.training.data import encode_her
from her_sdk.training.judge import Judge, render_verdict
from her_sdk.training.pairs import heuristic_backend
from her_sdk.training.rl import (
    JudgeReward,
    completion_text,
    format_reward,
    format_score,
    judge_backend_from_spec,
    length_penalty,
    policy_rows,
    repetition_penalty,
)

from her_sdk import ConfigError, MockBackend, Persona
from her_sdk.format import Heard, Segment, Turn

GOOD = (
    "<system_thinking>Mara distrusts him and stalls.</system_thinking>Mara: "
    "<role_thinking>He is lying.</role_thinking><role_action>crosses her arms</role_action>"
    "Papers first, traveler."
)
MARA = Persona(name="Mara", profile="Mara keeps the gate.")
HIST = [Heard(speaker="Brannoc", speech="Let me through.")]
REF = Turn.from_segments(
    [Segment("thought", "Careful."), Segment("speech", "Show me your papers.")]
)
HER = json.dumps(encode_her(MARA, HIST, REF))


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD, 1.0),
        # private text on a public channel -> 0
        (
            "<system_thinking>plan</system_thinking>Mara: <role_thinking>He is lying to me now."
            "</role_thinking>He is lying to me now. Go.",
            0.0,
        ),
        ("<system_thinking>plan</system_thinking>Mara: role_thinking: I hate him. Go.", 0.0),
        ("<system_thinking>plan</system_thinking>Mara: Go <role_thinking away.", 0.0),
        ("<system_thinking>only a plan that never closes", 0.0),  # nothing visible
        # valid but incomplete -> partial credit
        ("Mara: <role_thinking>Hm.</role_thinking>Go.", 0.75),  # no plan although asked
        ("<system_thinking>p</system_thinking>Mara: Go.", 0.75),  # no inner thought
        (
            "<system_thinking>p</system_thinking>Mara: <role_thinking>Hm.</role_thinking>Go.\n"
            "Brannoc: Fine.",
            0.75,
        ),  # a second speaker's line
    ],
)
def test_format_score(text, expected):
    assert format_score(text, "Mara", plan=True) == pytest.approx(expected)


def test_format_score_without_plan_requirement():
    assert format_score("Mara: <role_thinking>Hm.</role_thinking>Go.", "Mara", plan=False) == 1.0


def test_completion_text_restores_prefill_and_cuts_at_stop():
    comp = [{"role": "assistant", "content": "p</system_thinking>Mara: Go.<|im_end|>junk"}]
    assert (
        completion_text(comp, "<system_thinking>")
        == "<system_thinking>p</system_thinking>Mara: Go."
    )
    scores = format_reward(
        ["x"],
        [GOOD[len("<system_thinking>") :]],
        prefill=["<system_thinking>"],
        character=["Mara"],
        plan=[True],
    )
    assert scores == [1.0]


def test_length_and_repetition_penalties():
    length = length_penalty(20, 60)
    short = "<system_thinking>p</system_thinking>Mara: No."
    long = "<system_thinking>p</system_thinking>Mara: " + "word " * 40
    got = length(["x"] * 3, [short, GOOD, long], character=["Mara"] * 3)
    assert got[1] == 0.0 and -1.0 <= got[0] < 0 and -1.0 <= got[2] < 0
    rep = repetition_penalty(["x"] * 2, [GOOD, "Mara: " + "keep it down " * 8])
    assert rep[0] == 0.0 and rep[1] < -0.6


def test_judge_reward_win_tie_loss_and_abstain():
    def judge_for(text_winning: str):
        def handler(prompt: str) -> str:
            c1 = prompt.split("=== cand_1 ===")[1].split("=== cand_2 ===")[0]
            c2 = prompt.split("=== cand_2 ===")[1]
            if text_winning in c1 and text_winning not in c2:
                return render_verdict("cand_1", [], {})
            if text_winning in c2 and text_winning not in c1:
                return render_verdict("cand_2", [], {})
            return render_verdict("tie", [], {})

        return handler

    rollout = GOOD
    r = JudgeReward(Judge(MockBackend(judge_for("Papers first"))))
    assert r(["p"], [rollout], her_json=[HER], prefill=[""]) == [1.0]
    r = JudgeReward(Judge(MockBackend(judge_for("Show me your papers"))))
    assert r(["p"], [rollout], her_json=[HER], prefill=[""]) == [0.0]
    r = JudgeReward(Judge(MockBackend(judge_for("nowhere"))))
    assert r(["p"], [rollout], her_json=[HER], prefill=[""]) == [0.5]
    r = JudgeReward(Judge(MockBackend(lambda p: "?"), retries=0), abstain=0.25)
    assert r(["p"], [rollout], her_json=[HER], prefill=[""]) == [0.25]
    # the rule-based judge: a rollout that speaks for the other character loses
    r = JudgeReward(Judge(heuristic_backend()))
    bad = GOOD + "\nBrannoc: I agree."
    assert r(["p"] * 2, [GOOD, bad], her_json=[HER] * 2, prefill=["", ""]) == [0.5, 0.0]


def test_policy_rows_use_the_runtime_prompt():
    from her_sdk.format import render_prompt

    sample = {"her": json.loads(HER)}
    (row,) = policy_rows([sample], plan=True)
    p = render_prompt(MARA, HIST, style="chatml", plan=True)
    assert row["prompt"] == p.text and row["prefill"] == "<system_thinking>"
    assert row["character"] == "Mara" and "Careful." not in row["prompt"]


def test_judge_spec():
    assert judge_backend_from_spec("none") is None
    assert isinstance(judge_backend_from_spec("heuristic"), MockBackend)
    assert judge_backend_from_spec("openai:http://localhost:1/v1#m").model == "m"
    with pytest.raises(ConfigError):
        judge_backend_from_spec("mock")
    with pytest.raises(ConfigError):
        judge_backend_from_spec("carrier-pigeon:x")
