"""`her train rl` (trl GRPO) on a tiny policy: two steps change the LoRA weights."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[1]
RL_YAML = ROOT / "training" / "configs" / "rl_tiny_cpu.yaml"


def test_grpo_two_steps_with_judge_reward_change_only_the_adapter(tmp_path):
    from her_sdk.training.common import load_rows, load_tokenizer, parse_config, resolve_model
    from her_sdk.training.judge import Judge, render_verdict
    from her_sdk.training.rewards import JudgeReward
    from her_sdk.training.rl import build_grpo_trainer, config_types, policy_rows

    from her_sdk import MockBackend

    args, model_args, train_args = parse_config(
        config_types(),
        RL_YAML,
        ["max_steps=2", "max_completion_length=16", f"output_dir={tmp_path / 'rl'}"],
    )
    spec = resolve_model(model_args.model_name_or_path, tiny=args.tiny, work_dir=tmp_path)
    tok = load_tokenizer(spec)
    rows = policy_rows(load_rows("synthetic:8", "train"), plan=args.plan)

    def judge(prompt: str) -> str:  # a judge with an opinion on every rollout (varied rewards)
        c1 = prompt.split("=== cand_1 ===")[1].split("=== cand_2 ===")[0]
        return render_verdict("cand_1" if zlib.crc32(c1.encode()) % 2 else "cand_2", [], {})

    reward = JudgeReward(Judge(MockBackend(judge)), both_orders=False)
    trainer = build_grpo_trainer(
        args, model_args, train_args, rows, [reward], [1.0], model_spec=spec, tokenizer=tok
    )
    model = trainer.model
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    assert lora
    trainer.train()
    assert trainer.state.global_step == 2
    assert reward.judge.calls > 0
    after = dict(model.named_parameters())
    changed = [n for n, p in lora.items() if not torch.equal(p, after[n].detach())]
    assert len(changed) >= len(lora) // 2
    assert all(torch.equal(p, after[n].detach()) for n, p in base.items())


def test_cli_train_rl_tiny_config_trains_and_saves(tmp_path):
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from her_sdk.cli import app

    out = tmp_path / "rl"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "rl",
            "--config",
            str(RL_YAML),
            "--output_dir",
            str(out),
            "max_steps=2",
            "train_file=synthetic:8",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "her_rl.json").read_text())["result"]
    assert report["steps"] == 2 and report["rewards"] == [
        "judge",
        "format",
        "length",
        "repetition",
    ]
    lora_b = {
        k: v for k, v in load_file(str(out / "adapter_model.safetensors")).items() if "lora_B" in k
    }
    assert lora_b and any(bool(v.abs().sum() > 0) for v in lora_b.values())


def test_rl_config_errors():
    from her_sdk.training.common import parse_config
    from her_sdk.training.rl import config_types

    from her_sdk import ConfigError

    with pytest.raises(ConfigError, match="rewards"):
        parse_config(config_types(), RL_YAML, ["rewards={style: 1}"])
    with pytest.raises(ConfigError, match="GRPOConfig"):  # trl's own check, its words
        parse_config(config_types(), RL_YAML, ["num_generations=1"])
    with pytest.raises(ConfigError, match="judge_model"):
        parse_config(config_types(), RL_YAML, ["judge_model=[a]"])
