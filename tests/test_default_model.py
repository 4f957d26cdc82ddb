"""The default model: the embedded Gemma-3-270M plus HER's shipped LoRA adapter, and the recipe
that made it (training/recipes/default_model.sh)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from her_sdk import Character, ConfigError, load_model
from her_sdk._gguf import read_gguf_info
from her_sdk._model import DEFAULT_ADAPTER_NAME, default_adapter_path
from her_sdk.format import FORMAT_VERSION_KEY

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "training" / "recipes" / "default_model.sh"
CONFIG = ROOT / "training" / "configs" / "sft_gemma3_270m_default.yaml"
RL_CONFIG = ROOT / "training" / "configs" / "rl_gemma3_270m_game.yaml"
HER = shutil.which("her", path=str(Path(sys.executable).parent)) or "her"


# -- the shipped adapter (no model load) ------------------------------------------------------


def test_the_adapter_ships_inside_the_package_and_is_small():
    path = default_adapter_path()
    assert path is not None, f"her_sdk/models/{DEFAULT_ADAPTER_NAME} is missing"
    assert path.parent.name == "models" and path.parent.parent.name == "her_sdk"
    assert 500_000 < path.stat().st_size < 5_000_000  # a few MB: tracked files stay < 5 MB


def test_the_adapter_says_it_is_a_plan_less_her_adapter_for_gemma3():
    path = default_adapter_path()
    assert path is not None
    info = read_gguf_info(path, kind="adapter")
    assert info.architecture == "gemma3"
    assert info.metadata.get("adapter.type") == "lora"
    assert isinstance(info.metadata.get(FORMAT_VERSION_KEY), int)
    assert info.metadata.get("her.plan") is False  # trained without a teacher's plans


def test_the_adapter_is_given_once(tmp_path):
    with pytest.raises(ConfigError, match="once"):
        load_model(tmp_path / "m.gguf", adapter=tmp_path / "a.gguf", lora=tmp_path / "b.gguf")


# -- the recipe: every command it runs exists and takes the options it passes ------------------


def _her_calls() -> list[list[str]]:
    """Each `"$HER" ...` command of the recipe, joined across line continuations, as words."""
    text = re.sub(r"\\\n\s*", " ", RECIPE.read_text())
    calls = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith('"$HER" '):
            calls.append(shlex.split(line[len('"$HER" ') :], posix=True))
    return calls


def test_the_recipe_is_valid_bash():
    res = subprocess.run(["bash", "-n", str(RECIPE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_every_recipe_command_parses_with_its_options():
    calls = _her_calls()
    # data convert (coser, sharegpt), shape and split, train sft and rl, export gguf (the f32
    # base) and gguf-lora, eval quick and play (base, shipped, new), eval compare
    assert {tuple(c[:2]) for c in calls} == {
        ("data", "convert"),
        ("data", "shape"),
        ("data", "split"),
        ("train", "sft"),
        ("train", "rl"),
        ("export", "gguf"),
        ("export", "gguf-lora"),
        ("eval", "quick"),
        ("eval", "play"),
        ("eval", "compare"),
    }
    for call in calls:
        res = subprocess.run(  # wide: rich shortens option names to fit a narrow terminal
            [HER, *call[:2], "--help"],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "COLUMNS": "250"},
        )
        assert res.returncode == 0, (call[:2], res.stderr)
        flags = {w.split("=")[0] for w in call[2:] if w.startswith("--") and "$" not in w}
        if "--$g" in call:  # the eval loop: for g in grammar no-grammar
            flags |= {"--grammar", "--no-grammar"}
        help_text = re.sub(r"\s+", " ", res.stdout)
        for flag in flags:
            assert flag in help_text, f"`her {' '.join(call[:2])}` has no option {flag}"


def test_the_recipe_stages_run_alone_and_skip_what_is_done(tmp_path):
    """`default_model.sh STAGE` runs that stage only; a stage whose result exists is skipped
    (here: every stage, so nothing heavy runs), and FORCE=1 would redo it."""
    run = tmp_path / "run"
    for done in ("data/all.jsonl", "data/portions/rl.jsonl", "sft/her_sft.json", "rl/her_rl.json"):
        (run / done).parent.mkdir(parents=True, exist_ok=True)
        (run / done).write_text("{}")
    (run / "her-gemma3-270m-lora.gguf").write_bytes(b"")
    env = {"PATH": "/usr/bin:/bin", "RUN": str(run), "HER": "false", "PY": "false"}
    res = subprocess.run(
        ["bash", str(RECIPE), "data", "shape", "sft", "rl", "export"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    for stage in ("data", "shape", "sft", "rl", "export"):
        assert f"stage {stage}: " in res.stdout and "skipped" in res.stdout
    # An unfinished stage runs (and here fails at once: `her` is `false`), the others are not
    # touched: stages are independent.
    (run / "rl" / "her_rl.json").unlink()
    res = subprocess.run(
        ["bash", str(RECIPE), "rl"], capture_output=True, text=True, env=env, timeout=60
    )
    assert res.returncode != 0 and "stage data" not in res.stdout


def test_the_recipe_configs_parse_into_the_sft_and_rl_configs():
    pytest.importorskip("trl", reason="needs the train extra")
    from her_sdk.training.common import parse_config
    from her_sdk.training.rl import config_types as rl_types

    args, model_args, training_args = parse_config(
        rl_types(), RL_CONFIG, ["max_steps=3"], for_this_machine=False
    )
    assert args.init_adapter and args.judge_model == "none" and not args.plan
    assert model_args.model_name_or_path == "embedded:gemma-3-270m"
    assert training_args.save_steps > 0 and training_args.beta == 0.0


def test_the_recipe_config_parses_into_the_sft_configs():
    pytest.importorskip("trl", reason="needs the train extra")
    from her_sdk.training.common import parse_config
    from her_sdk.training.sft import config_types

    args, model_args, training_args = parse_config(
        config_types(), CONFIG, ["max_steps=3"], for_this_machine=False
    )
    assert model_args.model_name_or_path == "embedded:gemma-3-270m" and model_args.use_peft
    assert args.chat_template == "chatml" and args.train_split == "train"
    assert training_args.max_steps == 3 and training_args.save_steps > 0


# -- the embedded model with the shipped adapter (llama.cpp) -----------------------------------


@pytest.mark.slow
def test_the_default_model_plays_a_turn_with_the_shipped_adapter():
    pytest.importorskip("llama_cpp")
    with load_model(n_ctx=1024) as model:
        assert model.lora_path == default_adapter_path()
        # prompted as trained: ChatML, no few-shot example, no plan
        assert model.prompt_style == "chatml" and model.plans is False
        mara = Character(
            name="Mara",
            profile="Captain of the north gate. Stern, loyal to the duke, speaks briefly.",
            scenario="The duke ordered the gate shut tonight.",
            model=model,
            seed=1,
        )
        assert mara.plan is False
        prompt = mara.prompt().text
        assert prompt.startswith("<|im_start|>system\n") and "### Example" not in prompt
        mara.hear("Traveler", "Let me through, captain. I carry the duke's own seal.")
        reply = mara.reply(max_tokens=80)
        assert reply.speech or reply.actions
        assert not reply.plan
        assert "Traveler:" not in reply.speech  # speaks only as herself


@pytest.mark.slow
def test_without_the_adapter_the_base_model_is_prompted_with_the_few_shot_script():
    pytest.importorskip("llama_cpp")
    with load_model(adapter=None, n_ctx=1024) as model:
        assert model.lora_path is None
        assert model.prompt_style == "fewshot" and model.plans is True
        c = Character(name="Mara", profile="Captain of the gate.", model=model)
        assert c.plan is True and "### Example" in c.prompt().text
