"""`her serve` process behaviour: SIGTERM drains in-flight turn streams, then the process exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _grpc_util import PLAN

from her_sdk.client import Client, ServerError

TESTS = Path(__file__).parent

SERVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from _grpc_util import mock
    from her_sdk.server import ServerSettings, serve

    serve(ServerSettings(port=0, drain_seconds=20), model=mock(chunk_delay=0.02),
          ready=lambda s: print(s.port, flush=True))
    print("drained", flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_drains_in_flight_streams_then_exits():
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER.format(tests=str(TESTS))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(proc.stdout.readline())
        with Client(f"127.0.0.1:{port}") as c:
            scene = c.create_scene([c.create_character("Mara")], players="T")
            scene.say("T", "Open up.")
            stream = scene.stream("Mara")  # ~1 s of generation at 0.02 s a token
            first = next(iter(stream))
            os.kill(proc.pid, signal.SIGTERM)
            time.sleep(0.2)
            # New calls are refused while draining...
            with pytest.raises(ServerError) as e:
                c.create_character("Late")
            assert e.value.code == "UNAVAILABLE"
            # ...but the turn in flight runs to its end.
            rest = list(stream)
            reply = stream.reply
        assert reply is not None and reply.finish_reason == "stop"
        assert first.text + "".join(d.text for d in rest if d.channel == first.channel)
        assert reply.speech == "The gate stays shut until dawn, traveler."
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "drained" in out
        assert PLAN not in err  # private text never reaches the default-level log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_her_serve_rejects_bad_settings_fast():
    her = Path(sys.executable).with_name("her")
    r = subprocess.run(
        [str(her), "serve", "--tls-cert", "cert.pem", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "--tls-cert and --tls-key must be given together" in r.stderr
