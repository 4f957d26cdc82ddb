"""The C# client core of the Unity example (examples/unity/Her/HerHttpClient.cs), compiled by
Mono's mcs and run under mono against a live `her serve` on the embedded model."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_godot import _serve, _words

ROOT = Path(__file__).resolve().parents[1]
MCS, MONO = shutil.which("mcs"), shutil.which("mono")


@pytest.mark.slow
@pytest.mark.skipif(
    MCS is None or MONO is None,
    reason="needs Debian's mono-mcs, mono-runtime and libmono-system-net-http4.0-cil "
    "(apt-get install ...; `make test-engines`)",
)
def test_csharp_client_core_under_mono_against_a_live_server(tmp_path):
    exe = tmp_path / "check.exe"
    build = subprocess.run(
        [
            MCS,
            "-warnaserror",
            f"-out:{exe}",
            "-r:System.Net.Http.dll",
            str(ROOT / "examples" / "unity" / "Her" / "HerHttpClient.cs"),
            str(ROOT / "tests" / "csharp" / "ClientCheck.cs"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    proc, ports = _serve(tmp_path)
    try:
        run = subprocess.run(
            [MONO, str(exe), ports["http"]], capture_output=True, text=True, timeout=300
        )
    finally:
        proc.terminate()
        proc.wait(30)
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("HER_RESULT ")), None)
    assert line, f"no result (rc {run.returncode}): {run.stdout}\n{run.stderr}"
    out = json.loads(line[len("HER_RESULT ") :])
    assert out["ready"] is True
    summary = out["summary"]
    assert summary["character"] == "Mara" and summary["completionTokens"] > 0
    assert out["deltas"] > 1 and _words(out["streamed_speech"]) == _words(summary["speech"])
    assert set(out["channels"]) <= {"CHANNEL_SPEECH", "CHANNEL_ACTION"}
    assert out["error"] == "not_found" and out["turn_error"] == "not_found"
