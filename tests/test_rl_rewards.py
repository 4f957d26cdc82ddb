"""RL reward functions on hand-made turns, the judge reward, and GRPO prompt rows."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("yaml")

from her_sdk.training.data import encode_her
from her_sdk.training.judge import Judge, render_verdict
from her_sdk.training.pairs import heuristic_backend
from her_sdk.training.rewards import (
    REWARDS,
    JudgeReward,
    completion_text,
    format_score,
    load_judge_backend,
)
from her_sdk.training.rl import RLArguments, policy_rows

from her_sdk import ConfigError, MockBackend, ModelNotFoundError, Persona
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
        (
            "<system_thinking>p</system_thinking>Mara: <role_thinking>Hm.</role_thinking>Go.\n"
            "Brannoc: Fine.",
            0.75,
        ),  # a second speaker's line
        (f"<system_thinking>{'Mara stalls him. ' * 30}</system_thinking>Mara: Go.", 0.75),
        # line breaks are free (HER's turns run in paragraphs); a forged speaker line is not
        ("<system_thinking>p\n\n1. stall</system_thinking>Mara: Go.\n\nNow.", 1.0),
        ("<system_thinking>p</system_thinking>Mara: Go.\n\nOfficer Hale: Stop.", 0.75),
        # HER mixes turn patterns: no thought, no action, speech only are all full marks
        ("<system_thinking>p</system_thinking>Mara: Go.", 1.0),
        ("<system_thinking>p</system_thinking>Mara: <role_action>points</role_action>Go.", 1.0),
        ("<system_thinking>p</system_thinking>Mara: Go.<role_action>turns away</role_action>", 1.0),
        ("<system_thinking>p</system_thinking>Mara: <role_action>waits</role_action>", 1.0),
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
    format_reward = REWARDS["format"].build(RLArguments(), None)
    scores = format_reward(
        ["x"],
        [GOOD[len("<system_thinking>") :]],
        prefill=["<system_thinking>"],
        character=["Mara"],
        plan=[True],
    )
    assert scores == [1.0]


def test_length_and_repetition_penalties():
    args = RLArguments(length_min_chars=20, length_max_chars=60)
    length = REWARDS["length"].build(args, None)
    repetition_penalty = REWARDS["repetition"].build(args, None)
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
    assert load_judge_backend("none") is None
    assert isinstance(load_judge_backend("heuristic"), MockBackend)
    assert load_judge_backend("http://localhost:1/v1#m").model == "m"
    with pytest.warns(DeprecationWarning, match="openai:"):
        assert load_judge_backend("openai:http://localhost:1/v1#m").model == "m"
    with pytest.raises(ConfigError):
        load_judge_backend("chat+ftp://x")
    with pytest.raises(ConfigError, match="unknown backend spec"):
        load_judge_backend("carrier-pigeon:x")
    with pytest.raises(ModelNotFoundError):
        load_judge_backend("runs/no-such-judge.gguf")


def _gemma_like_tokenizer(path):
    """A tiny tokenizer with Gemma's turn tokens and no ChatML ones, saved to `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<eos>", "<start_of_turn>", "<end_of_turn>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["Mara: Papers, now. <|im_end|> hello"] * 8, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = (
        "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
        "<end_of_turn>\n{% endfor %}"
    )
    fast.save_pretrained(path)
    return fast


def test_turn_end_ids_come_from_the_tokenizer_and_its_template(tmp_path):
    pytest.importorskip("transformers")
    from her_sdk.training.common import ModelSpec, load_tokenizer
    from her_sdk.training.rl import turn_end_ids
    from her_sdk.training.tiny import build_tokenizer

    from her_sdk.format import Message, render_chatml

    build_tokenizer().save_pretrained(tmp_path / "qwen")
    qwen = load_tokenizer(ModelSpec(str(tmp_path / "qwen")), "chatml")
    assert turn_end_ids(qwen) == [qwen.convert_tokens_to_ids("<|im_end|>")]

    _gemma_like_tokenizer(tmp_path / "gemma")
    own = load_tokenizer(ModelSpec(str(tmp_path / "gemma")), "model")
    ids = own.convert_tokens_to_ids(["<end_of_turn>", "<eos>"])
    assert turn_end_ids(own) == ids  # Gemma's own template: <end_of_turn>, then eos

    # ChatML on Gemma: <|im_end|> is several tokens, so a reply also ends with eos, and
    # rollouts stop there; prompts still render exactly as the runtime's ChatML.
    gemma = load_tokenizer(ModelSpec(str(tmp_path / "gemma")), "chatml")
    assert len(gemma("<|im_end|>", add_special_tokens=False)["input_ids"]) > 1
    assert turn_end_ids(gemma) == [gemma.eos_token_id]
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    prompt = gemma.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert prompt == render_chatml([Message(m["role"], m["content"]) for m in msgs])
    full = gemma.apply_chat_template([*msgs, {"role": "assistant", "content": "A"}], tokenize=False)
    assert full == prompt + "A<|im_end|>\n<eos>"

    gemma.chat_template = "{% for m in messages %}{{ m['content'] }} [END]\n{% endfor %}"
    with pytest.raises(ConfigError, match="end of a turn"):
        turn_end_ids(gemma)


def test_plan_cap_is_one_constant():
    """Training (plan validation, format reward) and the runtime grammar share the plan cap."""
    import inspect

    from her_sdk.training.plans import validate_plan

    from her_sdk.format import MAX_PLAN_CHARS, build_grammar

    assert inspect.signature(validate_plan).parameters["max_chars"].default == MAX_PLAN_CHARS
    assert inspect.signature(build_grammar).parameters["max_plan_chars"].default == MAX_PLAN_CHARS
    assert f"{{0,{MAX_PLAN_CHARS - 1}}}" in build_grammar("Mara")
    plan = ("Mara stalls him because she distrusts strangers at night. " * 20)[:MAX_PLAN_CHARS]
    assert validate_plan(plan, "Mara") is None
    assert validate_plan(plan + " More.", "Mara") == "too long"
    fits = f"<system_thinking>{plan}</system_thinking>Mara: Go."
    over = f"<system_thinking>{plan} More.</system_thinking>Mara: Go."
    assert format_score(fits, "Mara") == 1.0 and format_score(over, "Mara") == 0.75
