"""Reverse-engineered plans (training.plans) with mock teachers; the OpenAI-compatible backend."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from her_sdk.training.data import convert_file, decode_her, read_jsonl, render_sample
from her_sdk.training.plans import mock_teacher, synth_plans, validate_plan

from her_sdk import MockBackend, backend_from_spec
from her_sdk._backends._openai import OpenAIBackend
from her_sdk.format import Message, chatml_to_messages

F = Path(__file__).parent / "fixtures" / "train"


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "coser.jsonl"
    convert_file("coser", F / "coser_test.json", path)
    return path


def test_mock_teacher_writes_dual_layer_samples(data, tmp_path):
    out = tmp_path / "planned.jsonl"
    report = synth_plans(data, out, backend_from_spec("mock", mock=mock_teacher), concurrency=3)
    rows = read_jsonl(out)
    assert report.kept == 9 == len(rows) and not report.dropped
    for r in rows:
        text = r["completion"][0]["content"]
        assert text.startswith(f"<system_thinking>{r['character']} weighs")
        assert f"</system_thinking>{r['character']}: " in text
        assert "<system_thinking>" in r["prompt"][0]["content"]  # the system prompt asks for it
        assert "<system_thinking>" not in json.dumps(r["prompt"][1:])  # plans only on the target
        assert render_sample(*decode_her(r)) == (r["prompt"], r["completion"])
        assert r["plan"] is True


def test_teacher_sees_the_reply_but_no_later_turn(data, tmp_path):
    teacher = MockBackend(mock_teacher)
    synth_plans(data, tmp_path / "p.jsonl", teacher, concurrency=1)
    first = next(
        p for p in teacher.prompts if "Character: Brannoc" in p and "Evening, collector" in p
    )
    assert "Give me until the first frost" not in first  # a later line of the scene
    assert "He looks nervous" not in first  # another character's thought


GARBAGE = [
    "<role_thinking>I am so nervous</role_thinking>Brannoc: hello",  # markup
    "I should stall her and hide my strongbox from the collector now.",  # first person
    "The user wants the character to respond to the previous message nicely.",  # "the user"
    "ok",  # too short
]


def test_garbage_teacher_is_retried_then_dropped(data, tmp_path):
    calls = []

    def garbage(prompt: str) -> str:
        calls.append(prompt)
        return GARBAGE[len(calls) % len(GARBAGE)]

    out = tmp_path / "p.jsonl"
    report = synth_plans(data, out, MockBackend(garbage), retries=2, concurrency=2)
    assert report.kept == 0 and sum(report.dropped.values()) == 9
    assert len(calls) == report.attempts == 27  # 9 samples x 3 attempts
    assert set(report.rejections) <= {"markup", "first person", "mentions the user", "too short"}
    assert read_jsonl(out) == []
    assert len(read_jsonl(tmp_path / "p.rejected.jsonl")) == 9


def test_timeout_teacher_is_dropped_quickly(data, tmp_path):
    slow = MockBackend(lambda p: mock_teacher(p) * 20, chunk_delay=0.05)
    t0 = time.perf_counter()
    report = synth_plans(
        data, tmp_path / "p.jsonl", slow, retries=1, timeout=0.2, concurrency=9, limit=3
    )
    assert report.dropped == {"timeout": 3} and report.rejections == {"timeout": 6}
    assert time.perf_counter() - t0 < 5


def test_flaky_teacher_kept_after_retry(data, tmp_path):
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def flaky(prompt: str) -> str:
        with lock:
            seen[prompt] = seen.get(prompt, 0) + 1
            if seen[prompt] == 1:
                raise RuntimeError("server hiccup")
        return mock_teacher(prompt)

    report = synth_plans(data, tmp_path / "p.jsonl", MockBackend(flaky), retries=1)
    assert report.kept == 9 and report.rejections == {"error: GenerationError": 9}


def test_resume_without_duplicates(data, tmp_path):
    out = tmp_path / "p.jsonl"
    r1 = synth_plans(data, out, backend_from_spec("mock", mock=mock_teacher), limit=4)
    assert r1.kept == 4
    with open(out, "a") as f:  # an interrupted write: half a line
        f.write('{"id": "half')
    r2 = synth_plans(data, out, backend_from_spec("mock", mock=mock_teacher))
    assert r2.resumed == 4 and r2.kept == 5
    ids = [r["id"] for r in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == 9
    assert out.read_text().endswith("\n") and out.read_text().count("\n") == 9
    r3 = synth_plans(data, out, backend_from_spec("mock", mock=mock_teacher))
    assert r3.resumed == 9 and r3.kept == 0


def test_validate_plan_rules():
    ok = "Brannoc is cornered; he should stall with charm and keep the strongbox secret."
    assert validate_plan(ok, "Brannoc") is None
    assert validate_plan(ok, "Brannoc", max_chars=40) == "too long"
    assert validate_plan(" ".join([ok] * 6), "Brannoc") == "too long"  # over MAX_PLAN_CHARS
    assert validate_plan('He says "I will pay" and keeps calm and friendly now.', "Brannoc") is None
    assert validate_plan("My plan is to stall, keep calm and smile a great deal.", "Brannoc") == (
        "first person"
    )
    assert validate_plan(
        "Answer what the user asked in a friendly and warm manner.", "Brannoc"
    ) == ("mentions the user")
    assert validate_plan(
        "Answer politely, stall for time, keep calm and smile a lot.", "Brannoc"
    ) == ("not third person")
    future = "Ysolde: Then the guild takes the inn at the first frost."
    leaked = "Brannoc fears the guild takes the inn at the first frost, so he stalls."
    assert validate_plan(leaked, "Brannoc", future=future) == "knows later turns"
    assert validate_plan(leaked, "Brannoc", future=future, known=future) is None


# -- OpenAI-compatible backend against a local stub server ------------------------------------


class _Stub(BaseHTTPRequestHandler):
    bodies: ClassVar[list] = []

    def log_message(self, *a):  # keep test output quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Stub.bodies.append((self.path, body))
        if body.get("model") == "broken":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        prompt = body.get("prompt") or "\n".join(m["content"] for m in body["messages"])
        text = mock_teacher(prompt) + "\nignored after the stop"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        key = "text" if self.path.endswith("/completions") and "prompt" in body else None
        for i in range(0, len(text), 7):
            piece = text[i : i + 7]
            choice = {"text": piece} if key else {"delta": {"content": piece}}
            self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    _Stub.bodies.clear()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


@pytest.mark.parametrize("kind", ["openai", "openai-chat"])
def test_openai_teacher_end_to_end(data, tmp_path, server, kind):
    teacher = backend_from_spec(f"{'chat+' if kind == 'openai-chat' else ''}{server}#her-teacher")
    report = synth_plans(data, tmp_path / "p.jsonl", teacher, limit=3, concurrency=2)
    assert report.kept == 3
    path, body = _Stub.bodies[0]
    assert body["model"] == "her-teacher" and body["stream"] is True
    if kind == "openai":
        assert path == "/v1/completions" and body["prompt"].endswith("<system_thinking>")
    else:
        assert path == "/v1/chat/completions" and body["messages"][0]["role"] == "system"
        assert body["continue_final_message"] is True  # the prefill rides as an assistant message


def test_openai_backend_stop_and_errors(server):
    b = OpenAIBackend(server, "m")
    text = "".join(b.stream("Character: Mara\n", stop=["</system_thinking>"]))
    assert text.startswith("<system_thinking>Mara weighs") and "ignored" not in text
    from her_sdk import BackendUnavailableError, GenerationError

    with pytest.raises(GenerationError):
        OpenAIBackend(server, "broken").stream("x")
    with pytest.raises(BackendUnavailableError):
        OpenAIBackend("http://127.0.0.1:9/v1", "m", timeout=2).stream("x")
    msgs, prefill = chatml_to_messages(
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nP"
    )
    assert msgs == [Message("system", "S"), Message("user", "U")]
    assert prefill == "P"


def test_validate_plan_accepts_hers_actor_voice_but_not_the_characters():
    her_style = (
        "I need to portray Brannoc as wary but polite: he measures the stranger, hides his "
        "fear of the toll-keeper, and answers briefly."
    )
    assert validate_plan(her_style, "Brannoc") is None
    # the character's own "I" is still a first-person plan, actor frame or not
    assert validate_plan("I need to show that I am not afraid of them at all.", "Brannoc") == (
        "first person"
    )
    assert validate_plan("I am scared, so I will lie to the guard about the cart.", "Brannoc") == (
        "first person"
    )
