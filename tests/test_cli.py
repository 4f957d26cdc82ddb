"""The `her` command line, run as a user runs it (subprocess)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import her_sdk

HER = shutil.which("her", path=str(Path(sys.executable).parent)) or "her"


# A bound against a hang, not a speed claim: a demo on a busy 2-core machine takes minutes.
def run(*args: str, stdin: str | None = None, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(
        [HER, *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )


def test_version():
    res = run("--version")
    assert res.returncode == 0 and her_sdk.__version__ in res.stdout


def test_bad_model_path_is_a_clean_error(tmp_path):
    res = run("demo", "--model", str(tmp_path / "missing.gguf"))
    assert res.returncode == 1
    assert "missing.gguf" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_demo_prints_a_scene_and_hides_thoughts_by_default():
    pytest.importorskip("llama_cpp")
    res = run("demo", "--seed", "3")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "Mara" in out and "Jory" in out and "Traveler" in out
    assert "plan:" not in out and "thinks:" not in out
    shown = run("demo", "--seed", "3", "--show-thoughts")
    # The default model is plan-less (its adapter was trained without plans): thoughts only.
    assert shown.returncode == 0 and ("plan:" in shown.stdout or "thinks:" in shown.stdout)


@pytest.mark.slow
def test_demo_crowd_plays_a_side_conversation_beside_the_scene():
    pytest.importorskip("llama_cpp")
    res = run("demo", "--seed", "3", "--crowd")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    side = [line for line in out.splitlines() if "by the fire" in line]
    # The opening line and the guards' four turns, each printed whole on a line of its own.
    assert len(side) == 5, out
    assert {"Doran", "Hale"} <= {w.strip(":") for line in side for w in line.split()}
    assert "Mara" in out and "Jory" in out
    assert "thinks:" not in out and "plan:" not in out  # private text stays private


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_example_characters_are_their_own_not_the_fewshot_examples():
    import msgspec

    from her_sdk import Persona
    from her_sdk.format import FEWSHOT_PREAMBLE

    for path in sorted(EXAMPLES.glob("*.json")):
        persona = msgspec.convert(json.loads(path.read_text()), Persona)  # as `her chat` reads it
        names = [persona.name, *persona.others]
        # A base model prompted with the few-shot example would take its lines for the
        # character's own when they share a name or a place.
        for text in [*names, persona.source]:
            for word in re.findall(r"[A-Z][a-z]{2,}", text):
                assert word not in FEWSHOT_PREAMBLE, (path.name, word)


@pytest.mark.slow
def test_chat_with_the_example_persona_file(tmp_path):
    pytest.importorskip("llama_cpp")
    saved = tmp_path / "odile.json"
    res = run(
        "chat",
        "--character",
        str(EXAMPLES / "innkeeper.json"),
        "--as",
        "Traveler",
        "--save",
        str(saved),
        stdin="Good evening.\n*sits down\n/quit\n",
    )
    assert res.returncode == 0, res.stderr
    assert "Odile" in res.stdout
    data = json.loads(saved.read_text())
    assert data["kind"] == "character"
    heard = [m for m in data["character"]["memory"] if m.get("type") == "heard"]
    assert [h["speech"] for h in heard][:1] == ["Good evening."]
    assert heard[1]["actions"] == ["sits down"]


# -- her serve: flags derived from ServerSettings ------------------------------------------------


def _settings_fields() -> dict:
    pytest.importorskip("pydantic", reason="needs the grpc extra")
    from her_sdk.server._settings import ServerSettings

    return ServerSettings.model_fields


def test_serve_has_one_flag_per_setting_in_its_help():
    fields = _settings_fields()
    import typer

    from her_sdk.cli import app

    serve = typer.main.get_command(app).commands["serve"]
    options = {p.name: p for p in serve.params if p.name != "help"}
    assert list(options) == list(fields)  # every field, in the model's order, nothing else
    for name, opt in options.items():
        assert f"--{name.replace('_', '-')}" in opt.opts
        assert opt.envvar == f"HER_SERVER_{name.upper()}"
    res = run("serve", "--help")
    assert res.returncode == 0, res.stderr
    for name, field in fields.items():
        assert f"--{name.replace('_', '-')}" in res.stdout
        assert field.description.split()[0] in res.stdout
    # The names users already know keep working.
    for flag in ("--token", "--tls-cert", "--tls-key", "--expose-thoughts", "--n-threads"):
        assert flag in res.stdout


def test_serve_flags_and_environment_reach_the_settings(monkeypatch):
    _settings_fields()
    pytest.importorskip("grpc", reason="needs the grpc extra")
    from typer.testing import CliRunner

    from her_sdk.cli import app
    from her_sdk.server import _app

    seen = []
    monkeypatch.setattr(_app, "serve", lambda settings, **kw: seen.append(settings))
    res = CliRunner().invoke(
        app,
        # --max-list-items and --max-concurrent-rpcs: the two settings `her serve` lacked before
        [
            "serve",
            "--port=0",
            "--max-list-items=7",
            "--max-concurrent-rpcs=3",
            "--expose-thoughts",
            "--drain-seconds=1.5",
        ],
        env={"HER_SERVER_TOKEN": "s3cret", "HER_SERVER_MAX_SCENES": "5"},
    )
    assert res.exit_code == 0, res.output
    (s,) = seen
    assert (s.port, s.max_list_items, s.max_concurrent_rpcs) == (0, 7, 3)
    assert s.expose_thoughts and s.drain_seconds == 1.5 and s.max_scenes == 5
    assert s.token.get_secret_value() == "s3cret"
    assert s.max_text_chars == 8000 and s.host == "127.0.0.1"  # untouched: the model's defaults


def test_serve_bad_values_name_the_flag():
    _settings_fields()
    res = run("serve", "--port", "abc")
    assert res.returncode == 2 and "--port" in res.stderr and "Traceback" not in res.stderr
    res = run("serve", "--max-text-chars", "0")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "--max-text-chars" in res.stderr  # (pydantic words the bound itself)
    res = run("serve", "--tls-key", "key.pem")
    assert res.returncode == 1 and "--tls-cert and --tls-key" in res.stderr


def test_module_docstring_lists_every_command():
    import typer

    import her_sdk.cli

    commands = typer.main.get_command(her_sdk.cli.app).commands
    assert {"demo", "chat", "serve", "export"} <= set(commands)
    for name in commands:
        assert f"her {name}" in her_sdk.cli.__doc__, name


# -- the command line without its extra, and every runnable module's --help --------------------


def test_her_without_the_cli_extra_names_it_in_one_line():
    # typer missing (a wheel installed without the `cli` extra): `sys.modules[...] = None`
    # makes its import fail the way a missing package does.
    code = "import sys; sys.modules['typer'] = None; from her_sdk.__main__ import main; main()"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "her-sdk[cli]" in res.stderr


def test_the_her_script_is_the_guarded_entry_point():
    from importlib.metadata import entry_points

    (her,) = entry_points(group="console_scripts", name="her")
    assert her.value == "her_sdk.__main__:main"


ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = (
    [
        pytest.param(["-m", module], id=module)
        for module in ("her_sdk", "her_sdk.cli", "her_sdk.server._codegen", "her_sdk.training")
    ]
    + [
        pytest.param([str(ROOT / "requirements" / "lock.py")], id="lock.py"),
    ]
    + [
        pytest.param([str(p)], marks=pytest.mark.slow, id=p.name)
        for p in sorted((ROOT / "benchmarks").glob("*.py"))
        if not p.name.startswith("_")  # helpers the benchmarks import, not programs
    ]
)


@pytest.mark.parametrize("command", RUNNABLE)
def test_every_runnable_module_answers_help_and_writes_nothing(tmp_path, command):
    def state() -> str:
        res = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=all"],
            capture_output=True,
            text=True,
        )
        return res.stdout if res.returncode == 0 else ""

    before = state()
    res = subprocess.run(
        [sys.executable, *command, "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage" in res.stdout.lower(), res.stdout[:500]
    assert list(tmp_path.iterdir()) == [] and state() == before


def test_chat_runs_a_her_model_with_hers_prompt(tmp_path):
    """`her chat --prompt-style her`: a released HER model's flags reach the model."""
    from typer.testing import CliRunner

    from her_sdk.cli import app

    script = tmp_path / "her.json"
    script.write_text(
        json.dumps(
            {
                "Your output should follow this two-part structure": (
                    "<system_thinking>Odile should be warm.\nShe offers a room."
                    "</system_thinking>Odile: Welcome, traveler."
                ),
                "*": "Odile: (this is not HER's prompt)",
            }
        )
    )
    saved = tmp_path / "odile.json"
    res = CliRunner().invoke(
        app,
        [
            "chat",
            "--character",
            str(EXAMPLES / "innkeeper.json"),
            "--model",
            f"mock:{script}",
            "--prompt-style",
            "her",
            "--save",
            str(saved),
        ],
        input="Good evening.\n/quit\n",
    )
    assert res.exit_code == 0, res.output
    assert "Welcome, traveler." in res.output and "not HER" not in res.output
    turns = [m for m in json.loads(saved.read_text())["character"]["memory"] if m["type"] == "turn"]
    assert turns and turns[0]["speech"] == "Welcome, traveler."
    bad = CliRunner().invoke(
        app,
        [
            "chat",
            "--character",
            str(EXAMPLES / "innkeeper.json"),
            "--model",
            f"mock:{script}",
            "--prompt-style",
            "qwen",
        ],
        input="/quit\n",
    )
    assert bad.exit_code != 0 and "prompt style" in bad.output
