"""`judge_prompt: her_rm`: the released HER-RM's own prompt and answer format, in the judge and in
the RL reward.

The expected context is HER's: `extract_context_from_raw_record`
(training_code/step2_reward_sft/construct_rm_training_data.py, lines 181-198) applied to HER's
training messages for the scene of `test_her_style` (strings HER's own pipeline produced).
"""

from __future__ import annotations

import hashlib
import json

import pytest

pytest.importorskip("yaml")

from her_sdk.training.data import encode_her
from her_sdk.training.judge import Judge, her_rm_messages, her_rm_prompt_template, parse_verdict
from her_sdk.training.rewards import JudgeReward
from her_sdk.training.rl import RLArguments
from test_her_style import MARA, MARA_1, SYSTEM, TRAVELER_1, TRAVELER_2

from her_sdk import ConfigError, MockBackend
from her_sdk.format import Segment, Turn

# sha256 of RM_PROMPT_TEMPLATE (construct_rm_training_data.py lines 19-160) as released.
HER_RM_TEMPLATE_SHA256 = "5984c269a97a0c5b80122611c6119d218023e1801eb81cd1ca9ec64bd2ce63fc"


def her_context(messages: list[tuple[str, str]]) -> str:
    """HER's extract_context_from_raw_record: every message but a last non-user one, as
    `System: `/`User: `/`Assistant: ` blocks joined by blank lines."""
    parts = []
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    for i, (role, content) in enumerate(messages):
        if i == len(messages) - 1 and role != "user":
            continue
        parts.append(f"{names[role]}: {content}")
    return "\n\n".join(parts)


def answer(
    better: str, think: str = "Both stay in character; cand_2 answers him.", principles: int = 1
) -> str:
    """An answer shaped as HER-RM (and HER's teacher) writes it: a think, then its fenced JSON."""
    names = [f"Principle {i + 1}" for i in range(principles)]
    result = {
        "cand_1": "...",
        "cand_2": "...",
        "principle": {
            n: {
                "principle_name": f"{n} name",
                "dimension_name": "Negative",
                "principle_level": "sentence",
                "main_content": "Stays in character.",
                "reason_for_choosing": "Mara is guarded.",
            }
            for n in names
        },
        "analysis": {
            "principle_comparisons": [
                {
                    "principle_name": f"{n} name",
                    "principle_level": "sentence",
                    "cand_1_performance": "fine",
                    "cand_2_performance": "fine",
                    "comparison_reason": "slight",
                    "winner": "cand_1" if (better == "cand_2") == (i == 0) else "cand_2",
                }
                for i, n in enumerate(names)
            ],
            "overall_analysis": "...",
            "principle_summary": "...",
        },
        "better_response": better,
    }
    return f"<think>\n{think}\n</think>\n\n```json\n{json.dumps(result, indent=2)}\n```"


def test_the_prompt_is_her_rms_own():
    template = her_rm_prompt_template()
    assert hashlib.sha256(template.encode()).hexdigest() == HER_RM_TEMPLATE_SHA256
    reply = Turn.from_segments([Segment("speech", "Then wait for dawn.")])
    (msg,) = her_rm_messages(MARA, [TRAVELER_1, MARA_1, TRAVELER_2], reply, "Mara: Go away.")
    assert msg["role"] == "user"
    history = [
        ("system", SYSTEM),
        (
            "user",
            "===Conversation Start===\n\nTraveler: <role_action>shakes the rain from his cloak"
            "</role_action> Open up, captain. I carry the duke's papers.",
        ),
        (
            "assistant",
            "Mara: <role_thinking>Another one with a story.</role_thinking><role_action>folds "
            "her arms</role_action>Papers can be forged. <role_action>looks him over"
            "</role_action>Show me the seal.",
        ),
        ("user", "Traveler: <role_action>holds up a wax seal</role_action> Here. Now let me in."),
    ]
    expected = (
        template.replace("{context}", her_context(history))
        .replace("{cand_1}", "Mara: Then wait for dawn.")
        .replace("{cand_2}", "Mara: Go away.")
    )
    assert msg["content"] == expected


def test_her_rm_answers_are_read_from_their_json():
    for better in ("cand_1", "cand_2", "tie"):
        v = parse_verdict(answer(better))
        assert v is not None and v.better == better and not v.overridden
    # the principle comparisons' own "winner" fields are not the verdict
    assert parse_verdict(answer("cand_2")).better == "cand_2"
    # a think that drafts another verdict does not override the JSON after it
    drafted = answer("cand_1", think='Maybe "better_response": "cand_2"? No.')
    assert parse_verdict(drafted).better == "cand_1"
    assert parse_verdict('<think>\nHm.\n</think>\n\n```json\n{"result": [') is None


def test_rl_judge_reward_with_her_rm_matches_its_verdicts():
    """The RL judge reward on HER-RM's prompt and answers: a rollout it prefers gets 1, one it
    rejects 0, a tie 0.5, in both orders; the prompt the judge saw is HER-RM's."""
    ref = Turn.from_segments([Segment("speech", "Show me your papers.")])
    her = json.dumps(encode_her(MARA, [TRAVELER_1], ref))
    rollout = (
        "<system_thinking>Mara stalls.</system_thinking>Mara: <role_action>crosses her arms"
        "</role_action>Papers first, traveler."
    )
    seen: list[str] = []

    def judge_preferring(text: str):
        def handler(prompt: str) -> str:
            seen.append(prompt)
            c1 = prompt.split("**Response Candidate 1**")[1].split("**Response Candidate 2**")[0]
            c2 = prompt.split("**Response Candidate 2**")[1]
            if text in c1 and text not in c2:
                return answer("cand_1")
            if text in c2 and text not in c1:
                return answer("cand_2")
            return answer("tie")

        return handler

    args = RLArguments(judge_prompt="her_rm")
    assert args.judge_max_tokens == 4096
    for prefers, reward in (("Papers first", 1.0), ("Show me your papers", 0.0), ("-", 0.5)):
        judge = Judge(MockBackend(judge_preferring(prefers)), prompt_format=args.judge_prompt)
        got = JudgeReward(judge)(["p"], [rollout], her_json=[her], prefill=[""])
        assert got == [reward], prefers
    assert seen and all(p.startswith("<|im_start|>user\n##prompt info") for p in seen)
    assert not any("Mara stalls." in p for p in seen)  # the rollout's plan stays private
    with pytest.raises(ConfigError, match="judge_max_tokens"):
        RLArguments(judge_prompt="her_rm", judge_max_tokens=1024)
    with pytest.raises(ConfigError, match="judge_prompt"):
        RLArguments(judge_prompt="gpt")
    assert RLArguments().judge_max_tokens == 384


# sha256 of principle_template_en (process_inference_results.py lines 13-139) as released.
HER_TEACHER_TEMPLATE_SHA256 = "d906d14d04ba5a5018413a3a1f498fbe71ee7492b924e8e7c439f6167738c0b8"


def _her_teacher(principles: int):
    """A teacher in HER's protocol: prefers the longer candidate, with `principles` of them."""

    def handler(prompt: str) -> str:
        c1 = prompt.split("**Response Candidate 1**")[1].split("**Response Candidate 2**")[0]
        c2 = prompt.split("**Response Candidate 2**")[1]
        better = "cand_1" if len(c1.strip()) >= len(c2.strip()) else "cand_2"
        fenced = answer(better, principles=principles).split("```json\n", 1)[1][: -len("\n```")]
        # the teacher's answer wraps its verdict in {"result": [...]} (HER-RM's does not)
        return "```json\n" + json.dumps({"result": [json.loads(fenced)]}, indent=2) + "\n```"

    return handler


def test_rm_pairs_in_hers_protocol_and_a_judge_trained_on_her_rms_prompt(tmp_path):
    """HER's teacher protocol (principle_template_en, >= 3 principles kept, winner patterns)
    and HER-RM's training rows (construct_rm_training_data.py: the list-free prompt, the
    teacher's JSON result as the target)."""
    from her_sdk.training.data import read_jsonl, write_jsonl
    from her_sdk.training.judge import her_teacher_messages, her_teacher_prompt_template
    from her_sdk.training.pairs import judge_sft_rows, mock_policy, rm_pairs
    from her_sdk.training.principles import load_principles
    from her_sdk.training.rm import RMArguments
    from her_sdk.training.tiny import synthetic_samples

    template = her_teacher_prompt_template()
    assert hashlib.sha256(template.encode()).hexdigest() == HER_TEACHER_TEMPLATE_SHA256
    ps = load_principles()
    (msg,) = her_teacher_messages(MARA, [TRAVELER_1], "Mara: Go.", "Mara: Stay.", ps)
    assert msg["content"].startswith("##prompt info \n### Role")
    listed = msg["content"].split("<principles>")[1].split("</principles>")[0]
    assert all(p.name in listed for p in ps)
    assert "**Response Candidate 1**  \nMara: Go." in msg["content"]

    data = tmp_path / "rm.jsonl"
    write_jsonl(data, synthetic_samples(6, seed=5))
    seen: list[str] = []

    def teacher(principles: int):
        inner = _her_teacher(principles)
        return lambda p: seen.append(p) or inner(p)

    kept = tmp_path / "kept.jsonl"
    rm_pairs(
        data, kept, MockBackend(mock_policy()), MockBackend(teacher(3)), protocol="her", limit=3
    )
    recs = read_jsonl(kept)
    assert recs and all(r["protocol"] == "her" for r in recs)
    assert all(r["winner_pattern"] in ("both_sides", "cand_1_only", "cand_2_only") for r in recs)
    assert all(p.startswith("<|im_start|>user\n##prompt info") for p in seen)
    few = rm_pairs(
        data,
        tmp_path / "few.jsonl",
        MockBackend(mock_policy()),
        MockBackend(teacher(2)),
        protocol="her",
        limit=3,
        retries=0,
    )
    assert few.kept == 0 and few.rejections["fewer than 3 principles"] > 0

    rows = judge_sft_rows(recs, prompt_format="her_rm")
    assert len(rows) == len(recs)
    for row, rec in zip(rows, recs, strict=True):
        (user,) = row["prompt"]
        assert user["content"].startswith("##prompt info \n### Role")
        assert "<principles>" not in user["content"]  # HER-RM generates its own
        target = row["completion"][0]["content"]
        assert target.startswith("```json\n") and target.endswith("\n```")
        assert json.loads(target[8:-4])["better_response"] == rec["label"]
    with pytest.raises(ConfigError, match="protocol her"):
        judge_sft_rows([{**recs[0], "completion_text": "cand_1"}], prompt_format="her_rm")
    with pytest.raises(ConfigError, match="eval_max_tokens"):
        RMArguments(judge_prompt="her_rm", eval_pairs=4, eval_max_tokens=160)


def test_her_train_rl_with_her_rms_prompt_rewards_its_verdicts(tmp_path):
    """`her train rl ... judge_prompt=her_rm` against a mock judge answering in HER-RM's JSON:
    the judge reward of every rollout is what the verdicts give (here: always cand_1, the
    rollout, so 1.0), and every judgment was readable."""
    pytest.importorskip("torch")
    pytest.importorskip("trl")
    from pathlib import Path

    from typer.testing import CliRunner

    from her_sdk.cli import app

    script = tmp_path / "her_rm.json"
    # it answers HER-RM's prompt only: any other prompt is an error (the run would stop)
    script.write_text(json.dumps({"##prompt info": answer("cand_1", principles=3)}))
    out = tmp_path / "rl"
    config = Path(__file__).resolve().parents[1] / "training" / "configs" / "rl_tiny_cpu.yaml"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "rl",
            "--config",
            str(config),
            "--output_dir",
            str(out),
            "max_steps=1",
            "train_file=synthetic:8",
            f"judge_model=mock:{script}",
            "judge_prompt=her_rm",
            "judge_both_orders=false",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "her_rl.json").read_text())
    assert report["config"]["RLArguments"]["judge_prompt"] == "her_rm"
    assert report["result"]["judge_abstain_rate"] == 0.0
    means = [h["rewards/judge/mean"] for h in report["log"] if "rewards/judge/mean" in h]
    assert means and all(m == 1.0 for m in means)


def test_pattern_caps_keep_hers_quotas_of_winner_patterns():
    """filter_high_quality_sft.py caps each winner pattern of the judge's SFT data (both_sides
    20,000, one side 10,000 each): here per config, both records of a pair kept together."""
    from her_sdk.training.rm import RMArguments, cap_patterns

    pairs = []
    for i in range(10):
        pattern = "cand_1_only" if i < 7 else "both_sides"
        for order in ("ab", "ba"):
            pairs.append({"id": f"p{i}", "order": order, "winner_pattern": pattern})
    pairs.append({"id": "auto", "kind": "repetition"})  # no pattern: kept
    kept = cap_patterns(pairs, {"cand_1_only": 3})
    by_id = {p["id"] for p in kept}
    assert len([i for i in by_id if i in {f"p{k}" for k in range(7)}]) == 3
    assert {"p7", "p8", "p9", "auto"} <= by_id
    assert all(sum(p["id"] == i for p in kept) == 2 for i in by_id - {"auto"})  # pairs whole
    assert kept == cap_patterns(pairs, {"cand_1_only": 3})  # seeded
    with pytest.raises(ConfigError, match="pattern_caps"):
        RMArguments(pattern_caps={"one_side": 3})
