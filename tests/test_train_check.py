"""`her train check`: contradictions between a run's configs and its per-GPU memory plan, found
on a CPU before any GPU is rented."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

pytest.importorskip("trl")

from her_sdk.training.check import (
    KNOWN_MODELS,
    Hardware,
    check_config,
    header_hardware,
    model_dims,
)
from her_sdk.training.common import read_config_file
from her_sdk.training.stages import STAGES

from her_sdk import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
STAGE_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if "stage" in read_config_file(p))
WITH_HARDWARE = [p for p in STAGE_CONFIGS if header_hardware(p) is not None]
RL_32B = CONFIGS / "rl_qwen3_32b.yaml"
SFT_32B = CONFIGS / "sft_qwen3_32b.yaml"

# The accelerate file as it shipped before the fix: it fixed DeepSpeed's gradient accumulation.
OLD_ZERO3 = textwrap.dedent(
    """
    compute_environment: LOCAL_MACHINE
    distributed_type: DEEPSPEED
    deepspeed_config:
      zero_stage: 3
      zero3_init_flag: true
      gradient_accumulation_steps: 8
      gradient_clipping: 1.0
    mixed_precision: bf16
    num_machines: 1
    num_processes: 8
    """
)


def test_the_shipped_configs_name_their_hardware():
    names = {p.name for p in WITH_HARDWARE}
    for stage in STAGES:
        for model in ("tiny_cpu", "gemma3_270m", "qwen3_32b"):
            assert f"{stage}_{model}.yaml" in names
    hw = header_hardware(RL_32B)
    assert (hw.nodes, hw.gpus, hw.gpu_memory) == (2, 8, 80)  # the judge has node 1
    assert header_hardware(SFT_32B).nodes == 1


@pytest.mark.parametrize("path", WITH_HARDWARE, ids=lambda p: p.name)
def test_every_shipped_config_passes_on_the_hardware_its_header_names(path):
    report = check_config(path)  # the header's hardware
    assert report.ok, report.text()
    assert report.verdict == "PASS", report.text()
    assert report.phases and all(p.total < report.hardware.gpu_memory for p in report.phases)


@pytest.mark.parametrize(
    "overrides", [[], ["rl_steps=200", "rl_from=runs/her-rm-qwen3-32b/merged"]]
)
def test_the_32b_judge_launches_pass(overrides):
    report = check_config(CONFIGS / "rm_qwen3_32b.yaml", overrides=overrides)
    assert report.verdict == "PASS", report.text()
    names = [p.name for p in report.phases]
    assert names == (["judge RL"] if overrides else ["judge SFT"])


def test_the_old_rl_recipe_fails_naming_each_cause(tmp_path):
    acc = tmp_path / "old_zero3.yaml"
    acc.write_text(OLD_ZERO3)
    old = [
        "gradient_accumulation_steps=4",
        "per_device_train_batch_size=8",
        "vllm_tensor_parallel_size=1",
        "vllm_gpu_memory_utilization=0.3",
        "judge_model=openai:http://localhost:8001/v1#her-rm",
    ]
    report = check_config(RL_32B, Hardware(8, 80, 1), overrides=old, launcher=str(acc))
    text = report.text()
    assert report.verdict == "FAIL" and not report.ok
    errors = "\n".join(report.errors)
    assert "gradient_accumulation_steps is 8" in errors and "stage's is 4" in errors
    assert "cannot hold the bf16 weights" in errors and "61.0 GiB" in errors
    assert "judge server at openai:http://localhost:8001" in errors
    assert "GPUs the 8 training processes per node already take" in errors
    assert "needs" in errors and "more than the 80 GiB" in errors
    assert "verdict: FAIL" in text


def test_32b_weights_on_one_24gb_gpu_fail_naming_the_weights():
    report = check_config(SFT_32B, Hardware(1, 24), launcher="none")
    assert report.verdict == "FAIL"
    assert any("weights alone take 61.0 GiB" in e for e in report.errors), report.text()
    # with the header's launcher, the 8 processes do not fit one GPU either
    report = check_config(SFT_32B, Hardware(1, 24))
    assert any("world size 8" in e for e in report.errors), report.text()


def test_the_memory_plan_shows_its_arithmetic():
    report = check_config(SFT_32B)
    lines = {ln.what: ln for ln in report.phases[0].lines}
    weights = lines["weights (bfloat16, sharded)"]
    assert weights.how == "32.76e9 params × 2 B / 8 ranks"
    assert weights.gib == pytest.approx(32.76e9 * 2 / 8 / 2**30, rel=1e-3)
    assert "checkpointed" in " ".join(lines)
    text = report.text()
    assert "built-in table, matched 'qwen3-32b' in 'Qwen/Qwen3-32B'" in text
    assert "accelerate_zero3.yaml (named in the config's header)" in text
    # no checkpointing: the activations of every layer are kept
    off = check_config(SFT_32B, overrides=["activation_checkpointing=false"])
    assert off.verdict == "FAIL" and any("activations (no checkpointing)" in e for e in off.errors)


def test_vllm_kv_cache_and_tensor_parallel_checks():
    short = check_config(RL_32B, overrides=["vllm_gpu_memory_utilization=0.21"])
    assert any("KV cache holds" in e for e in short.errors), short.text()
    odd = check_config(RL_32B, overrides=["vllm_tensor_parallel_size=3"])
    assert any("does not divide the world size 8" in e for e in odd.errors), odd.text()


def test_batch_and_hardware_contradictions():
    r = check_config(RL_32B, overrides=["num_generations=24"])  # trl's own check, at world 8
    assert any("(128) must be divisible by num_generations (24)" in e for e in r.errors), r.text()
    # 128 completions over 8 processes divide into groups of 32, though one process's 16 would not
    r = check_config(RL_32B, overrides=["num_generations=32"])
    assert r.verdict == "PASS", r.text()
    r = check_config(RL_32B, Hardware(8, 80, 1))
    assert any("need 2 nodes; 1 given" in e for e in r.errors), r.text()
    r = check_config(RL_32B, Hardware(8, 80, 2, bf16=False))
    assert any("lack bf16" in e for e in r.errors)
    zero3 = str(CONFIGS / "accelerate_zero3.yaml")
    r = check_config(CONFIGS / "sft_tiny_cpu.yaml", Hardware(8, 8), launcher=zero3)
    assert any("asks for bf16 mixed precision" in e for e in r.errors), r.text()


def test_model_dims_from_local_config_json_match_the_real_model(tmp_path):
    torch = pytest.importorskip("torch")
    from her_sdk.training.tiny import build_tiny_model
    from transformers import AutoModelForCausalLM

    path = build_tiny_model(tmp_path / "m", hidden_size=64, num_layers=3, intermediate_size=96)
    dims = model_dims(str(path))
    assert dims.source == f"from {path / 'config.json'}"
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    assert dims.params() == sum(p.numel() for p in model.parameters())
    # the tiny config settings give the same shape without building anything
    same = model_dims("tiny", tiny={"hidden_size": 64, "num_layers": 3, "intermediate_size": 96})
    assert same.params() == dims.params()


def test_model_dims_table():
    assert KNOWN_MODELS["qwen3-32b"].params() == pytest.approx(32.8e9, rel=0.01)
    assert KNOWN_MODELS["qwen3-8b"].params() == pytest.approx(8.2e9, rel=0.01)
    assert KNOWN_MODELS["qwen3-0.6b"].params() == pytest.approx(0.596e9, rel=0.01)
    assert KNOWN_MODELS["gemma-3-270m"].params() == pytest.approx(268e6, rel=0.01)
    assert model_dims("embedded:gemma-3-270m").name == "Gemma-3-270M"
    assert model_dims("runs/her-sft-qwen3-32b/merged").name == "Qwen3-32B"
    assert model_dims("/models/Qwen3-0.6B").name == "Qwen3-0.6B"
    assert model_dims("anything", arch="qwen3-8b").name == "Qwen3-8B"
    with pytest.raises(ConfigError, match="pass arch="):
        model_dims("runs/some-model/merged")
    with pytest.raises(ConfigError, match="unknown arch"):
        model_dims("x", arch="llama-9000")


def test_a_config_without_hardware_needs_it(tmp_path):
    cfg = tmp_path / "sft_x.yaml"
    cfg.write_text("stage: sft\nmodel_name_or_path: tiny\n")
    with pytest.raises(ConfigError, match="hardware"):
        check_config(cfg)
    assert check_config(cfg, Hardware(1, 8)).verdict == "PASS"


def test_the_stage_is_what_the_config_says_never_its_file_name(tmp_path):
    cfg = tmp_path / "rl_looks_like_rl.yaml"
    cfg.write_text("model_name_or_path: tiny\n")
    with pytest.raises(ConfigError, match="names no stage"):
        check_config(cfg, Hardware(1, 8))
    assert check_config(cfg, Hardware(1, 8), stage="sft").stage == "sft"
    cfg.write_text("stage: sft\nmodel_name_or_path: tiny\n")
    report = check_config(cfg, Hardware(1, 8), stage="rl")  # the file is for another stage
    assert not report.ok and "is a 'sft' config, not 'rl'" in report.text()


def test_cli_check_exit_codes():
    from typer.testing import CliRunner

    from her_sdk.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["train", "check", "--config", str(RL_32B)])
    assert ok.exit_code == 0, ok.output
    assert "verdict: PASS" in ok.output and "KV cache" in ok.output
    bad = runner.invoke(
        app, ["train", "check", "--config", str(SFT_32B), "--gpus", "1", "--gpu-memory", "24",
              "--launcher", "none"],
    )  # fmt: skip
    assert bad.exit_code == 1
    assert "verdict: FAIL" in bad.output and "weights alone" in bad.output
    j = runner.invoke(app, ["train", "check", "--config", str(SFT_32B), "--json"])
    assert j.exit_code == 0 and '"verdict": "PASS"' in j.output
