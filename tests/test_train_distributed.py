"""The distributed training path on a CPU: `accelerate launch` of 2 processes with DeepSpeed
ZeRO-3 over gloo — the launcher and sharding the 32B configs use — trains the tiny model with
LoRA through the real SFT stage; the model is partitioned as it loads; the adapter is saved
whole; the merge runs as a separate single-process step; the merged checkpoint differs from the
base and computes what base + adapter compute in one process. Plus the merge step on its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

from her_sdk.training.merge import merge_adapter  # noqa: E402

from her_sdk import ConfigError, NotFoundError  # noqa: E402

# One rank of the launch: the real SFT stage (run_stage), with a probe of what the rank holds.
RANK_SCRIPT = textwrap.dedent(
    '''
    import json, os, sys
    import her_sdk.training.sft as sft
    from her_sdk.training.launch import run_stage

    out_json, config, *overrides = sys.argv[1:]
    record = {"rank": int(os.environ["RANK"]), "world": int(os.environ["WORLD_SIZE"])}
    build = sft.build_trainer

    def held(model):
        """Parameters in all and on this rank (ZeRO-3 leaves a placeholder in p)."""
        out = {}
        for kind in ("base", "lora"):
            full = local = 0
            for n, p in model.named_parameters():
                if ("lora_" in n) != (kind == "lora"):
                    continue
                part = getattr(p, "ds_tensor", None)
                full += p.ds_numel if part is not None else p.numel()
                local += part.numel() if part is not None else p.numel()
            out[kind] = {"full": full, "local": local}
        return out

    def probed(*a, **kw):
        from transformers import TrainerCallback
        trainer, info = build(*a, **kw)
        record["at_load"] = held(trainer.model)

        class Probe(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                record["training"] = held(trainer.model)
                record["distributed_type"] = str(trainer.accelerator.distributed_type)

        trainer.add_callback(Probe())
        return trainer, info

    sft.build_trainer = probed
    record["result"] = run_stage("sft", config, overrides)
    with open(f"{out_json}.{record['rank']}", "w") as f:
        json.dump(record, f)
    '''
)

ZERO3_CPU = textwrap.dedent(
    """
    compute_environment: LOCAL_MACHINE
    distributed_type: DEEPSPEED
    deepspeed_config:
      zero_stage: 3
      zero3_init_flag: true
      zero3_save_16bit_model: true
      offload_optimizer_device: none
      offload_param_device: none
    mixed_precision: 'no'
    num_machines: 1
    num_processes: 2
    machine_rank: 0
    main_training_function: main
    rdzv_backend: static
    same_network: true
    use_cpu: false
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _assert_merge_is_base_plus_adapter(merged_dir, base_dir, adapter_dir):
    from peft import PeftModel

    ids = torch.tensor([[1, 5, 9, 42, 7, 3, 100, 11]])
    merged = _load(merged_dir)
    base = _load(base_dir)
    base_out = _logits(base, ids)
    with_adapter = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    merged_out, adapter_out = _logits(merged, ids), _logits(with_adapter, ids)
    assert not torch.allclose(merged_out, base_out, atol=1e-4), "the merge changed nothing"
    torch.testing.assert_close(merged_out, adapter_out, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None and not Path(sys.executable).with_name(
    "accelerate").exists(), reason="accelerate launcher not installed")  # fmt: skip
def test_two_process_zero3_sft_shards_saves_and_merges(tmp_path):
    pytest.importorskip("deepspeed")
    launcher = Path(sys.executable).with_name("accelerate")
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    (tmp_path / "zero3_cpu.yaml").write_text(ZERO3_CPU)
    run = tmp_path / "run"
    cmd = [
        str(launcher if launcher.exists() else shutil.which("accelerate")),
        "launch",
        "--config_file",
        str(tmp_path / "zero3_cpu.yaml"),
        "--main_process_port",
        str(_free_port()),
        str(tmp_path / "rank.py"),
        str(tmp_path / "record"),
        "sft_tiny_cpu.yaml",
        f"output_dir={run}",
        "max_steps=4",
        "ddp_backend=gloo",  # no GPU: DeepSpeed's CPU accelerator over gloo
        "save_merged=true",  # the in-run merge: from disk, on rank 0, never the shards
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "TOKENIZERS_PARALLELISM": "false",
    }
    # its own process group: a hang is killed with every rank, not only the launcher
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail("the 2-process run hung:\n" + stderr[-6000:])
    assert proc.returncode == 0, stdout[-3000:] + stderr[-6000:]
    records = [json.loads((tmp_path / f"record.{r}").read_text()) for r in (0, 1)]

    for rec in records:
        assert rec["world"] == 2 and rec["distributed_type"] == "DistributedType.DEEPSPEED"
        # partitioned as it loaded (zero.Init): each rank materialised half of the base weights
        base = rec["at_load"]["base"]
        assert base["full"] > 100_000 and base["local"] == base["full"] // 2
        # in training, the LoRA weights are partitioned too
        lora = rec["training"]["lora"]
        assert lora["local"] == lora["full"] // 2
        assert rec["result"]["steps"] == 4
        assert rec["result"]["eval_loss_before"] is not None

    # the adapter was saved whole (gathered from both shards), and it moved
    from safetensors.torch import load_file

    tensors = load_file(str(run / "adapter_model.safetensors"))
    assert sum(t.numel() for t in tensors.values()) == records[0]["at_load"]["lora"]["full"]
    assert any("lora_B" in k and t.abs().sum() > 0 for k, t in tensors.items())

    # the merge as a separate single-process step, then the merged checkpoint loads and
    # computes what base + adapter compute
    merged = tmp_path / "merged"
    res = merge_adapter(run, merged)
    assert res.lora_modules > 0 and (merged / "her_merge.json").exists()
    _assert_merge_is_base_plus_adapter(merged, run / "tiny-base", run)
    # the in-run merge (save_merged) wrote the same weights
    a, b = _load(merged), _load(run / "merged")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=n)


@pytest.fixture()
def tiny_with_adapter(tmp_path):
    """A tiny base and a LoRA adapter with random (non-zero) B matrices, saved like a run's."""
    from her_sdk.training.tiny import build_tiny_model
    from peft import LoraConfig, get_peft_model

    base_dir = build_tiny_model(tmp_path / "base")
    model = _load(base_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    return base_dir, adapter


def test_merge_step_folds_the_adapter_in(tmp_path, tiny_with_adapter):
    base_dir, adapter = tiny_with_adapter
    out = tmp_path / "merged"
    res = merge_adapter(adapter, out)  # the base comes from the adapter's own config
    assert res.lora_modules == 2 * 7 and res.save_dtype == "float32"
    assert json.loads((out / "her_merge.json").read_text())["adapter"] == str(adapter)
    assert not list(tmp_path.glob(".merged.*")), "the temporary folder was left behind"
    _assert_merge_is_base_plus_adapter(out, base_dir, adapter)


def test_merge_step_refuses_bad_input(tmp_path, tiny_with_adapter):
    base_dir, adapter = tiny_with_adapter
    with pytest.raises(NotFoundError, match=r"adapter_config\.json"):
        merge_adapter(base_dir, tmp_path / "m")  # a model, not an adapter
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        merge_adapter(adapter, out)
    assert (out / "keep.txt").exists()
    merge_adapter(adapter, out, overwrite=True, save_dtype="bfloat16")
    assert not (out / "keep.txt").exists()
    assert json.loads((out / "config.json").read_text()).get("dtype") == "bfloat16"


def test_cli_merge(tmp_path, tiny_with_adapter):
    from typer.testing import CliRunner

    from her_sdk.cli import app

    _, adapter = tiny_with_adapter
    out = tmp_path / "merged-cli"
    r = CliRunner().invoke(app, ["train", "merge", "--adapter", str(adapter), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "her_merge.json").exists() and (out / "config.json").exists()


def test_judge_rl_as_a_second_launch_from_the_merge(tmp_path):
    """rm_qwen3_32b's order at CPU scale: judge SFT, `her train merge`, then the judge's GRPO
    alone (`rl_from`), each a launch of its own."""
    from her_sdk.training.launch import run_stage

    out = tmp_path / "rm"
    first = run_stage("rm", "rm_tiny_cpu.yaml", [f"output_dir={out}", "train.max_steps=1"])
    assert first["sft"]["steps"] == 1 and not (out / "merged").exists()
    merge_adapter(out, out / "merged")
    second = run_stage(
        "rm",
        "rm_tiny_cpu.yaml",
        [f"output_dir={out}", "rl_steps=1", f"rl_from={out / 'merged'}"],
    )
    assert second["sft"] is None and second["rl"]["steps"] == 1
    assert (out / "rl" / "adapter_config.json").exists()
    assert json.loads((out / "rl" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ] == str(out / "merged")
    assert (out / "her_rm.json").exists() and (out / "her_rm_rl.json").exists()
    with pytest.raises(ConfigError, match="rl_from"):
        run_stage("rm", "rm_tiny_cpu.yaml", [f"output_dir={out}", "rl_steps=1", "rl_from=nowhere"])
