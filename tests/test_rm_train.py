"""`her train rm` on a tiny judge: data written, LoRA weights change, optional judge RL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[1]
RM_YAML = ROOT / "training" / "configs" / "rm_tiny_cpu.yaml"


def _lora_b(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path)).items() if "lora_B" in k}


def _run(args: list[str]):
    from typer.testing import CliRunner

    from her_sdk.cli import app

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def test_cli_train_rm_two_steps_changes_the_judge(tmp_path):
    out = tmp_path / "rm"
    _run(
        [
            "train",
            "rm",
            "--config",
            str(RM_YAML),
            "--output_dir",
            str(out),
            "train.max_steps=2",
            "samples=synthetic:24",
        ]
    )
    report = json.loads((out / "her_rm.json").read_text())["result"]
    assert report["sft"]["steps"] == 2 and report["pairs"]["pairs"] > 10
    rows = [json.loads(x) for x in (out / "judge_data.jsonl").read_text().splitlines()]
    assert {r["label"] for r in rows} == {"cand_1", "cand_2"}
    assert {r["split"] for r in rows} == {"train", "eval"}
    lora_b = _lora_b(out / "adapter_model.safetensors")
    # lora_B starts at zero: any non-zero entry means the optimiser moved the adapter
    assert lora_b and sum(bool(v.abs().sum() > 0) for v in lora_b.values()) >= len(lora_b) // 2


def test_rm_config_errors():
    from her_sdk.training.launch import parse_stage

    from her_sdk import ConfigError

    with pytest.raises(ConfigError, match="corruption"):
        parse_stage("rm", RM_YAML, ["corruptions=[typo]"])
    with pytest.raises(ConfigError, match="nope"):
        parse_stage("rm", RM_YAML, ["nope=1"])
    # the nested stage configs are checked when the file is read, and named with their prefix
    with pytest.raises(ConfigError, match=r"train\..*learning_rate"):
        parse_stage("rm", RM_YAML, ["train.learning_rate=fast"])
    with pytest.raises(ConfigError, match=r"rl\..*no_such_key"):
        parse_stage("rm", RM_YAML, ["rl_steps=2", "rl.no_such_key=1"])


@pytest.mark.slow
def test_rm_with_judge_rl_and_accuracy(tmp_path):
    from her_sdk.training.launch import parse_stage
    from her_sdk.training.rm import run_rm

    out = tmp_path / "rm"
    (args,) = parse_stage(
        "rm",
        RM_YAML,
        [
            "train.max_steps=2",
            "samples=synthetic:24",
            "rl_steps=2",
            "eval_pairs=2",
            "eval_max_tokens=8",
            "rl.max_completion_length=16",
            f"output_dir={out}",
        ],
    )
    res = run_rm(args)
    for acc in (res.accuracy_before, res.accuracy_after, res.rl["accuracy"]):
        assert acc["pairs"] == 2 and 0.0 <= acc["accuracy"] <= 1.0
    assert res.rl["steps"] == 2
    assert (out / "merged" / "config.json").exists()
    assert (out / "rl" / "adapter_model.safetensors").exists()


def test_judge_rl_trains_on_its_own_portion(tmp_path, monkeypatch):
    """With `rl_pairs_file` (or `rl_samples`: the rm_rl portion of `her data split`) the judge's
    RL gets those pairs, none of the rows its SFT was trained on, as HER splits rm_sft/rm_rl."""
    from her_sdk.training import rm
    from her_sdk.training.data import write_jsonl
    from her_sdk.training.launch import parse_stage
    from her_sdk.training.pairs import auto_pairs
    from her_sdk.training.tiny import synthetic_samples

    pairs = auto_pairs(synthetic_samples(6, seed=9), kinds=["other_voice"], per_sample=1)
    for p in pairs:
        p["id"] = f"rl-{p['id']}"
    write_jsonl(tmp_path / "rl_pairs.jsonl", pairs)
    seen: dict = {}

    def judge_rl(cfg, out, tok, rows, *rest):
        seen["rows"] = rows
        return {"steps": 0}

    monkeypatch.setattr(rm, "_judge_rl", judge_rl)
    out = tmp_path / "rm"
    (args,) = parse_stage(
        "rm",
        RM_YAML,
        [
            "train.max_steps=1",
            "samples=synthetic:12",
            "rl_steps=1",
            f"rl_pairs_file={tmp_path / 'rl_pairs.jsonl'}",
            f"output_dir={out}",
        ],
    )
    rm.run_rm(args)
    sft_ids = {json.loads(x)["id"] for x in (out / "judge_data.jsonl").read_text().splitlines()}
    rl_ids = {r["id"] for r in seen["rows"]}
    assert rl_ids and all(i.startswith("rl-") for i in rl_ids) and not rl_ids & sft_ids
    assert len(seen["rows"]) == 2 * len(pairs)  # every pair, both orders, none held out
