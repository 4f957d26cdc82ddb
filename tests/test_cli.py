"""The `her` command line, run as a user runs it (subprocess)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import her_sdk

HER = shutil.which("her", path=str(Path(sys.executable).parent)) or "her"


def run(*args: str, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
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
    assert shown.returncode == 0 and "plan:" in shown.stdout


@pytest.mark.slow
def test_chat_with_a_persona_file(tmp_path):
    pytest.importorskip("llama_cpp")
    persona = tmp_path / "innkeeper.json"
    persona.write_text(json.dumps({"name": "Brannoc", "profile": "An innkeeper."}))
    saved = tmp_path / "brannoc.json"
    res = run(
        "chat",
        "--character",
        str(persona),
        "--as",
        "Ysolde",
        "--save",
        str(saved),
        stdin="Good evening.\n*sits down\n/quit\n",
    )
    assert res.returncode == 0, res.stderr
    assert "Brannoc" in res.stdout
    data = json.loads(saved.read_text())
    assert data["kind"] == "character"
    heard = [m for m in data["character"]["memory"] if m.get("type") == "heard"]
    assert [h["speech"] for h in heard][:1] == ["Good evening."]
    assert heard[1]["actions"] == ["sits down"]
