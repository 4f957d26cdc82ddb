"""The game rewards of the RL stage (`training/rewards.py`) on hand-written turns, both ways, and
two GRPO steps with them on a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("yaml")

from her_sdk.training.data import encode_her
from her_sdk.training.rewards import REWARDS, build_rewards
from her_sdk.training.rl import RLArguments, policy_rows

from her_sdk import ConfigError, Heard, Persona, Segment, Turn

ROOT = Path(__file__).resolve().parents[1]
MARA = Persona(
    name="Mara",
    profile="Gate captain of Vell.",
    secrets="She let her own brother through the gate last week, against orders.",
    others={"Jory": "A wine merchant."},
)
HISTORY = [
    Heard(speaker="Environment", speech="Rain on the cobbles."),
    Heard(
        speaker="Jory",
        speech="Open the gate, captain, my wine spoils in this rain and the buyer will not wait.",
    ),
    Turn.from_segments([Segment("speech", "The gate stays shut until dawn, merchant.")]),
    Heard(speaker="Jory", speech="Then let me pay the toll twice. My barrels are only wine."),
]
HER = json.dumps(encode_her(MARA, HISTORY, Turn.from_segments([Segment("speech", "No.")])))


def score(name: str, speech: str, *, action: str = "", args: RLArguments | None = None) -> float:
    """The reward `name` gives Mara's turn `speech` (after an optional action), plan-less."""
    act = f"<role_action>{action}</role_action>" if action else ""
    func = REWARDS[name].build(args or RLArguments(), None)
    (value,) = func(
        ["prompt"],
        [f" {act}{speech}"],  # the completion after the prefill "Mara:"
        prefill=["Mara:"],
        character=["Mara"],
        plan=[False],
        her_json=[HER],
    )
    return value


@pytest.mark.parametrize(
    "reward, good, bad",
    [
        ("structure", "Twice the toll buys nothing tonight.", "<role_action>turns"),
        (
            "no_narration",
            "Your barrels can wait for dawn like everyone else.",
            "Your barrels can wait, she said, his voice strained.",
        ),
        (
            "no_nested_quotes",
            "Wine or not, the gate stays shut.",
            'The duke said "no one passes" and I obey him.',
        ),
        (
            "no_copy",
            "Pay what you like; dawn is dawn.",
            "Open the gate, captain, my wine spoils in this rain and the buyer waits.",
        ),
        (
            "answers",
            "Paying the toll twice changes nothing; your barrels stay outside.",
            "The mountains are lovely in spring.",
        ),
        (
            "keeps_secret",
            "Orders are orders, merchant.",
            "I let my own brother through the gate last week, so why not you?",
        ),
    ],
)
def test_each_game_reward_both_ways(reward, good, bad):
    assert score(reward, good) > score(reward, bad)
    assert score(reward, good) == 1.0


def test_no_copy_also_catches_repeating_its_own_line():
    assert score("no_copy", "The gate stays shut until dawn, merchant.") == 0.0
    assert score("no_copy", "Dawn, merchant. Not a minute before.") == 1.0


def test_shape_reward_follows_the_configured_shape():
    short = "Not tonight. Go home."
    stacked = "No. No. No. No. No. No. No. No."
    assert score("shape", short, action="crosses her arms") == 1.0
    assert score("shape", stacked) < 1.0
    loose = RLArguments(turn_shape={"max_sentences": 10})
    assert score("shape", stacked, args=loose) == 1.0
    with pytest.raises(ConfigError, match="turn_shape"):
        RLArguments(turn_shape={"max_lines": 2})


def test_rewards_without_context_are_neutral():
    func = REWARDS["answers"].build(RLArguments(), None)
    assert func(["p"], ["Mara: Hello."], character=["Mara"]) == [1.0]


def test_the_reward_table_and_its_weights():
    assert set(REWARDS) >= {
        "judge",
        "format",
        "length",
        "repetition",
        "structure",
        "shape",
        "no_narration",
        "no_nested_quotes",
        "no_copy",
        "answers",
        "keeps_secret",
    }
    for name, row in REWARDS.items():
        assert row.name == name and row.doc and row.weight >= 0
    args = RLArguments(rewards={"shape": 1.0, "no_copy": 0.5, "answers": 0.0})
    funcs, weights = build_rewards(args)
    assert [f.__name__ for f in funcs] == ["shape", "no_copy"] and weights == [1.0, 0.5]
    with pytest.raises(ConfigError, match="unknown"):
        RLArguments(rewards={"charm": 1.0})
    with pytest.raises(ConfigError, match=">= 0"):
        RLArguments(rewards={"shape": -1.0})
    # the game recipe's config uses exactly the table's weights
    import yaml

    cfg = yaml.safe_load((ROOT / "training/configs/rl_gemma3_270m_game.yaml").read_text())
    game = {n: r.weight for n, r in REWARDS.items() if r.weight}
    assert cfg["rewards"] == game


def test_grpo_two_steps_with_the_game_rewards(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    from her_sdk.training.common import parse_config, resolve_model
    from her_sdk.training.rl import build_grpo_trainer, config_types

    args, model_args, train_args = parse_config(
        config_types(),
        ROOT / "training" / "configs" / "rl_tiny_cpu.yaml",
        [
            "max_steps=2",
            "max_completion_length=16",
            f"output_dir={tmp_path / 'rl'}",
            "judge_model=none",
            "rewards={structure: 0.5, shape: 1.0, no_narration: 1.0, no_nested_quotes: 0.5, "
            "no_copy: 1.0, answers: 0.5, keeps_secret: 0.5}",
            # a tight shape, so that random rollouts of different lengths score differently
            # and GRPO has advantages to learn from
            "turn_shape={max_speech_words: 4, max_sentences: 1}",
        ],
    )
    spec = resolve_model(model_args.model_name_or_path, tiny=args.tiny, work_dir=tmp_path)
    sample = {"her": json.loads(HER)}
    rows = policy_rows([sample] * 4, plan=args.plan)
    funcs, weights = build_rewards(args)
    calls: dict[str, list[float]] = {}

    def counted(f):
        def wrapper(prompts, completions, **kw):
            out = f(prompts, completions, **kw)
            calls.setdefault(f.__name__, []).extend(out)
            return out

        wrapper.__name__ = f.__name__
        return wrapper

    trainer = build_grpo_trainer(
        args, model_args, train_args, rows, [counted(f) for f in funcs], weights, model_spec=spec
    )
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert lora
    trainer.train()
    assert trainer.state.global_step == 2
    assert set(calls) == {f.__name__ for f in funcs}
    assert all(len(v) >= 8 and all(0.0 <= x <= 1.0 for x in v) for v in calls.values())
    after = dict(trainer.model.named_parameters())
    changed = [n for n, p in lora.items() if not torch.equal(p, after[n].detach())]
    assert len(changed) >= len(lora) // 2
    logged = {k for h in trainer.state.log_history for k in h}
    assert "rewards/shape/mean" in logged and "rewards/no_copy/mean" in logged


def test_rl_trains_a_given_adapter_further_and_resumes(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("trl")
    from her_sdk.training.common import load_causal_lm, parse_config, resolve_model
    from her_sdk.training.rl import config_types, run_rl
    from peft import LoraConfig, get_peft_model

    data = tmp_path / "rl.jsonl"
    data.write_text(
        "\n".join(json.dumps({"her": json.loads(HER), "split": "train"}) for _ in range(4))
    )
    out = tmp_path / "rl"
    overrides = [
        f"output_dir={out}",
        f"train_file={data}",
        "judge_model=none",
        "rewards={shape: 1.0, no_copy: 1.0}",
        "turn_shape={max_speech_words: 4, max_sentences: 1}",
        "max_completion_length=12",
        "save_steps=1",
    ]
    args, model_args, _ = parse_config(
        config_types(), ROOT / "training/configs/rl_tiny_cpu.yaml", overrides
    )
    # an "SFT" adapter of rank 2 on the tiny base (the config would make a new one of rank 8)
    spec = resolve_model(model_args.model_name_or_path, tiny=args.tiny, work_dir=out)
    sft = tmp_path / "sft"
    peft = get_peft_model(
        load_causal_lm(spec, dtype="float32"), LoraConfig(r=2, target_modules="all-linear")
    )
    peft.save_pretrained(sft)

    first = run_rl(
        *parse_config(
            config_types(),
            ROOT / "training/configs/rl_tiny_cpu.yaml",
            [*overrides, f"init_adapter={sft}", "max_steps=1"],
        )
    )
    assert first.steps == 1 and (out / "checkpoint-1").is_dir()
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 2
    # a mark in the checkpoint's state: a resumed run carries it on, a fresh one would not
    state_file = out / "checkpoint-1" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["log_history"].append({"step": 1, "resume_mark": 1.0})
    state_file.write_text(json.dumps(state))
    again = run_rl(
        *parse_config(
            config_types(),
            ROOT / "training/configs/rl_tiny_cpu.yaml",
            [*overrides, f"init_adapter={sft}", "max_steps=2", "resume_from_checkpoint=latest"],
        )
    )
    assert again.steps == 2 and (out / "checkpoint-2").is_dir()
    history = json.loads((out / "her_rl.json").read_text())["log"]
    assert any("resume_mark" in h for h in history)
    with pytest.raises(ConfigError, match="init_adapter"):
        run_rl(
            *parse_config(
                config_types(),
                ROOT / "training/configs/rl_tiny_cpu.yaml",
                [*overrides, f"init_adapter={tmp_path}", "max_steps=1"],
            )
        )
