"""Training configs in trl's shape: typed YAML + command-line parsing; shipped configs load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

pytest.importorskip("trl")

from her_sdk.training.common import parse_config, read_config_file
from her_sdk.training.launch import STAGES, main, parse_stage

from her_sdk import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
STAGE_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if "stage" in read_config_file(p))
TINY = {"sft": "sft_tiny_cpu.yaml", "rm": "rm_tiny_cpu.yaml", "rl": "rl_tiny_cpu.yaml"}


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    stage = read_config_file(path)["stage"]  # every stage config names its stage
    configs = parse_stage(stage, path, for_this_machine=False)  # GPU configs on this CPU too
    assert configs and all(dataclasses.is_dataclass(c) for c in configs)


def test_all_stages_have_a_shipped_config_and_a_command():
    assert {read_config_file(p)["stage"] for p in STAGE_CONFIGS} == set(STAGES)
    from her_sdk.training.cli import train_app

    commands = {c.name for c in train_app.registered_commands}
    assert set(STAGES) <= commands  # `her train NAME` for every row of the table


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize(
    "override, key",
    [
        ("learning_rate=fast", "learning_rate"),
        ("no_such_key=1", "no_such_key"),
    ],
)
def test_bad_override_names_the_key(stage, override, key):
    if stage == "rm":  # the RM's learning rate is its SFT stage's: train.learning_rate
        override, key = f"train.{override}", f"train.*{key}"
    with pytest.raises(ConfigError, match=key):
        parse_stage(stage, TINY[stage], [override])


@pytest.mark.parametrize(
    "line, message",
    [
        ("no_such_key: 1", "unknown option.*no_such_key"),
        # (the type errors' wording is the decoder's; the key and the file are ours)
        ("learning_rate: fast", "learning_rate"),
        ("max_steps: [1, 2]", "max_steps"),
        ("use_peft: maybe", "use_peft"),
        ("lr_scheduler_type: wavy", "lr_scheduler_type"),
        ("learnin_rate: 0.1", "did you mean 'learning_rate'"),
    ],
)
def test_bad_yaml_file_names_the_key_and_the_file(tmp_path, line, message):
    path = tmp_path / "bad.yaml"
    path.write_text((CONFIGS / "sft_tiny_cpu.yaml").read_text() + f"\n{line}\n")
    with pytest.raises(ConfigError, match=message) as info:
        parse_stage("sft", path)
    assert str(path) in str(info.value)


def test_override_forms_and_precedence():
    args, model, train = parse_stage(
        "sft",
        TINY["sft"],
        ["max_steps=3", "--learning_rate", "1e-3", "--bf16=false", "--use_peft"]
        + ["tiny.vocab_size=3"],
    )
    assert (train.max_steps, train.learning_rate, train.bf16) == (3, 1e-3, False)
    assert model.use_peft is True
    assert args.tiny["vocab_size"] == 3 and args.tiny["hidden_size"] == 64  # nested merge
    assert model.lora_target_modules == "all-linear"  # one value for a list field, as in trl


def test_her_arguments_never_shadow_trl_fields():
    from her_sdk.training import rl, sft

    for types in (sft.config_types(), rl.config_types()):
        names = [{f.name for f in dataclasses.fields(t)} for t in types]
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                assert not a & b, a & b


def test_parse_config_without_file_and_unknown_stage():
    from trl import ModelConfig

    (model,) = parse_config((ModelConfig,), None, {"model_name_or_path": "tiny", "lora_r": "4"})
    assert model.lora_r == 4  # strings from the command line become the field's type
    with pytest.raises(ConfigError, match="stage"):
        parse_stage("dpo", None)


def test_module_entry_point_reports_a_bad_key(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sft", "--config", TINY["sft"], "learning_rate=fast"])
    assert info.value.code == 2
    assert "learning_rate" in capsys.readouterr().err


def test_yaml_no_and_yes_reach_string_options_as_words():
    # YAML 1.1 reads `no` as false; a choice field still gets the word the user typed
    _, _, train = parse_stage("sft", TINY["sft"], ["eval_strategy=no", "save_strategy=no"])
    assert str(train.eval_strategy.value) == "no" and str(train.save_strategy.value) == "no"
    with pytest.raises(ConfigError, match="use_peft"):
        parse_stage("sft", TINY["sft"], ["use_peft=[1]"])
