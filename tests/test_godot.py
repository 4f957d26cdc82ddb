"""The Godot 3 client (examples/godot/godot3/her_client.gd) run for real in headless Godot 3
against a live `her serve` on the embedded model; the Godot 4 add-on parsed and linted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("connectrpc", reason="needs the http extra")

ROOT = Path(__file__).resolve().parents[1]
GODOT3 = shutil.which("godot3-server") or shutil.which("godot3")
ADDON = ROOT / "examples" / "godot" / "addons" / "her"


def _serve(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, dict]:
    port_file = tmp_path / "ports.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "her_sdk.cli",
            "serve",
            "--port",
            "0",
            "--http-port",
            "0",
            "--port-file",
            str(port_file),
            "--n-threads",
            "2",
            *extra,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    end = time.monotonic() + 120
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"her serve did not start: {proc.stderr.read()}")
        time.sleep(0.1)
    return proc, json.loads(port_file.read_text())


@pytest.mark.slow
@pytest.mark.skipif(
    GODOT3 is None,
    reason="needs Debian's godot3-server (apt-get install godot3-server; `make test-engines`)",
)
def test_gdscript_client_in_headless_godot3_against_a_live_server(tmp_path):
    proc, ports = _serve(tmp_path)
    try:
        env = dict(
            os.environ,
            HER_URL=ports["http"],
            HER_CLIENT=str(ROOT / "examples" / "godot" / "godot3" / "her_client.gd"),
            HER_TOKEN="",
            HOME=str(tmp_path),  # Godot writes its user data under $HOME
        )
        run = subprocess.run(
            [GODOT3, "--no-window", "-s", str(ROOT / "tests" / "godot" / "her_client_check.gd")],
            env=env,
            cwd=tmp_path,  # without a project, Godot writes logs/ into its working directory
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        proc.terminate()
        proc.wait(30)
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("HER_RESULT ")), None)
    assert line, f"Godot printed no result (rc {run.returncode}): {run.stdout}\n{run.stderr}"
    out = json.loads(line[len("HER_RESULT ") :])
    assert out["ready"]["ok"] and out["ready"]["result"]["ready"] is True
    assert out["created"]["ok"] and out["created"]["result"]["id"].startswith("c-")
    assert out["said"]["ok"] and out["said"]["result"]["speaker"] == "Traveler"
    turn = out["turn"]
    assert turn["ok"], turn
    summary = turn["result"]
    assert summary["character"] == "Mara" and summary["completionTokens"] > 0
    # What streamed is what the summary says (speech deltas concatenate to the speech).
    assert out["deltas"] > 1
    assert _words(out["streamed_speech"]) == _words(summary["speech"])
    assert set(out["channels"]) <= {"CHANNEL_SPEECH", "CHANNEL_ACTION"}  # nothing private
    assert summary["plan"] == "" and summary["thoughts"] == []
    assert out["not_found"] == {
        "ok": False,
        "code": "not_found",
        "message": out["not_found"]["message"],
    }
    assert out["bad_turn"]["ok"] is False and out["bad_turn"]["code"] == "not_found"
    assert out["remember"]["ok"]


def test_godot4_addon_parses_and_lints():
    gdtoolkit = pytest.importorskip("gdtoolkit", reason="needs gdtoolkit (the test extra)")
    assert gdtoolkit
    scripts = sorted(ADDON.rglob("*.gd")) + sorted(
        (ROOT / "examples" / "godot" / "demo").rglob("*.gd")
    )
    assert len(scripts) >= 3
    bindir = Path(sys.executable).parent
    for tool in ("gdparse", "gdlint"):
        run = subprocess.run(
            [str(bindir / tool), *map(str, scripts)], capture_output=True, text=True
        )
        assert run.returncode == 0, f"{tool}: {run.stdout}{run.stderr}"


def _words(text: str) -> str:
    """Text without its whitespace: the summary joins speech segments with a space."""
    return "".join(text.split())
