"""SFT (training.sft) on a tiny random model: label mask, LoRA steps, CLI run, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from her_sdk.training.common import parse_config, parse_overrides  # noqa: E402
from her_sdk.training.data import convert_file  # noqa: E402
from her_sdk.training.sft import build_trainer, config_types  # noqa: E402
from her_sdk.training.tiny import build_tiny_model  # noqa: E402

from her_sdk import ConfigError  # noqa: E402
from her_sdk.format import Message, render_chatml  # noqa: E402

F = Path(__file__).parent / "fixtures" / "train"
TINY_YAML = Path(__file__).parents[1] / "training" / "configs" / "sft_tiny_cpu.yaml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "coser.jsonl"
    convert_file("coser", F / "coser_test.json", path)
    return str(path)


def cfg(tmp_path, tiny, data, **kw) -> tuple:
    base = dict(
        model_name_or_path=tiny,
        dtype="float32",
        use_peft=True,
        lora_target_modules="all-linear",
        bf16=False,
        activation_checkpointing=False,
        train_file=data,
        train_split=None,
        eval_file=data,
        max_length=1024,
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        logging_steps=1,
        save_steps=100,
        eval_before=False,
        seed=0,
    )
    base.update(kw)
    return parse_config(config_types(), None, base)


def test_label_mask_covers_exactly_the_completion(tmp_path, tiny, data):
    trainer, info = build_trainer(*cfg(tmp_path, tiny, data))
    assert info["train_samples"] == 9
    tok = trainer.processing_class
    from her_sdk.training.data import read_jsonl

    rows = read_jsonl(data)
    for k in range(3):
        ex = trainer.train_dataset[k]
        row = rows[k]
        ids = torch.tensor(ex["input_ids"])
        labels = torch.tensor(ex["labels"])
        learned = labels != -100
        # The masked part is the whole prompt up to the assistant header; the learned part is
        # the target turn and its end-of-turn marker, nothing else.
        first = int(learned.nonzero()[0])
        assert learned[first:].all() and not learned[:first].any()
        prompt = [Message(m["role"], m["content"]) for m in row["prompt"]]
        assert tok.decode(ids[:first]) == render_chatml(prompt)
        assert tok.decode(ids[first:]) == row["completion"][0]["content"] + "<|im_end|>\n"
        assert torch.equal(labels[learned], ids[learned])


def test_three_lora_steps_change_the_adapter_only(tmp_path, tiny, data):
    trainer, _ = build_trainer(*cfg(tmp_path, tiny, data))
    model = trainer.model
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    assert lora and all(
        not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n
    )
    trainer.train()
    assert trainer.state.global_step == 3
    after = dict(model.named_parameters())
    changed = [n for n, p in lora.items() if not torch.equal(p, after[n].detach())]
    assert len(changed) >= len(lora) // 2  # lora_B starts at zero; both A and B move
    assert all(torch.equal(p, after[n].detach()) for n, p in base.items())


def test_config_overrides_and_errors():
    assert parse_overrides(
        ["max_steps=5", "tiny.hidden_size=32", "lora_target_modules=[q_proj]", "--seed", "3"]
    ) == {"max_steps": 5, "tiny": {"hidden_size": 32}, "lora_target_modules": ["q_proj"], "seed": 3}
    args, model, train = parse_config(
        config_types(), TINY_YAML, ["max_steps=2", "use_peft=false", "--output_dir", "x"]
    )
    assert (train.max_steps, model.use_peft, train.output_dir) == (2, False, "x")
    assert model.model_name_or_path == "tiny" and args.train_file == "synthetic:48"
    with pytest.raises(ConfigError, match="no_such_option"):
        parse_config(config_types(), TINY_YAML, ["no_such_option=1"])
    with pytest.raises(ConfigError, match="lr_scheduler_type"):
        parse_config(config_types(), TINY_YAML, ["lr_scheduler_type=magic"])
    packaged = parse_config(config_types(), "sft_tiny_cpu.yaml")  # a bare packaged name
    assert packaged[1].model_name_or_path == "tiny"


@pytest.mark.slow
def test_cli_tiny_config_trains_saves_and_resumes(tmp_path):
    from typer.testing import CliRunner

    from her_sdk.cli import app

    out = tmp_path / "run"
    args = [
        "train",
        "sft",
        "--config",
        str(TINY_YAML),
        "--output_dir",
        str(out),
        "max_steps=4",
        "save_steps=2",
        "eval_steps=2",
        "train_file=synthetic:24",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "her_sft.json").read_text())["result"]
    assert report["steps"] == 4 and report["eval_samples"] > 0
    assert report["eval_loss_after"] < report["eval_loss_before"]
    assert (out / "adapter_model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert (out / "checkpoint-4").is_dir()
    res = CliRunner().invoke(
        app, [*args[:-3], "max_steps=6", "train_file=synthetic:24", "resume_from_checkpoint=latest"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "her_sft.json").read_text())["result"]
    assert report["steps"] == 6 and (out / "checkpoint-6").is_dir()
