"""`her serve` as a game's sidecar, as real processes: ports first, the port file, readiness
while the model loads, a clear failure when it cannot load, and --exit-with-parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from _connect_client import unary
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytest.importorskip("connectrpc", reason="needs the http extra")

HER = [sys.executable, "-m", "her_sdk.cli", "serve"]
# An OpenAI-compatible model "loads" at once (nothing is contacted before a turn), so these
# tests need no model file; the slow tests run the embedded model.
REMOTE = "http://127.0.0.1:9/v1"


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return json.loads(path.read_text())
        if proc.poll() is not None:
            raise AssertionError(f"her serve exited with {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no port file")


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _healthz(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_port_file_lists_both_listeners_and_sigterm_removes_it(tmp_path):
    port_file = tmp_path / "run" / "ports.json"
    proc = subprocess.Popen(
        [*HER, "--port", "0", "--http-port", "0", "--port-file", str(port_file), "--model", REMOTE],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ports = _wait_file(port_file, proc)
        assert set(ports) == {"grpc", "http"}
        assert ports["grpc"].startswith("127.0.0.1:") and ports["http"].startswith(
            "http://127.0.0.1:"
        )
        end = time.monotonic() + 30
        while _health(ports["grpc"]) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < end
            time.sleep(0.1)
        assert _healthz(ports["http"]) == 200
        status, info = unary(ports["http"], "GetServerInfo", {})
        assert status == 200 and info["ready"] and info["backend"] == "openai"
        assert [p.name for p in port_file.parent.iterdir()] == ["ports.json"]  # no temporaries
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not port_file.exists()  # it named a live server only
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ports_open_before_the_model_loads_and_a_bad_model_is_one_clear_error(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)  # the "model" is read only when the test writes it: a load that waits
    port_file = tmp_path / "ports.json"
    proc = subprocess.Popen(
        [
            *HER,
            "--port",
            "0",
            "--http-port",
            "0",
            "--port-file",
            str(port_file),
            "--model",
            str(fifo),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ports = _wait_file(port_file, proc)
        assert _health(ports["grpc"]) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _healthz(ports["http"]) == 503
        status, body = unary(ports["http"], "CreateCharacter", {"persona": {"name": "M"}})
        assert (status, body["code"]) == (503, "unavailable")
        status, info = unary(ports["http"], "GetServerInfo", {})
        assert status == 200 and info["ready"] is False
        try:  # the load goes on, and fails (it may stop reading before the write ends)
            fifo.write_bytes(b"not a model")
        except BrokenPipeError:
            pass
        assert proc.wait(30) == 3  # the model cannot be loaded
        err = proc.stderr.read()
        assert "error:" in err and "model.gguf" in err and "Traceback" not in err
        assert not port_file.exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_exit_with_parent(tmp_path):
    port_file = tmp_path / "ports.json"
    # A "game" that starts the sidecar and then dies without stopping it.
    cmd = [*HER, "--port", "0", "--port-file", str(port_file), "--model", REMOTE]
    cmd.append("--exit-with-parent")
    game = textwrap.dedent(
        f"""
        import subprocess, sys, time
        p = subprocess.Popen({cmd!r})
        print(p.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", game], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        ports = _wait_file(port_file, parent)
        assert _health(ports["grpc"]) in (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        parent.kill()
        parent.wait(10)
        end = time.monotonic() + 15
        while time.monotonic() < end:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            if (
                Path(f"/proc/{child}/stat").exists()
                and " Z " in Path(f"/proc/{child}/stat").read_text()
            ):
                break  # exited; only its zombie waits for a reaper
            time.sleep(0.1)
        else:
            os.kill(child, signal.SIGKILL)
            raise AssertionError("the sidecar outlived its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
