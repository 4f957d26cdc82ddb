"""OpenAIBackend against a real HTTP server on 127.0.0.1 that speaks the OpenAI streaming API
(server-sent events), scripted per request to produce each answer and each failure."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from her_sdk import (
    BackendHTTPError,
    BackendUnavailableError,
    CancelToken,
    Character,
    GenerationError,
    Sampling,
)
from her_sdk._backends._openai import OpenAIBackend
from her_sdk.format import CHATML_STOP, Message, render_chatml

TURN = ["<system_", "thinking>Mara weighs", " it.</system_thinking>", "Mara: Hi", "<|im_end|>x"]


def _event(piece: str, chat: bool, finish: str | None = None) -> bytes:
    choice: dict = {"index": 0, "finish_reason": finish}
    choice.update({"delta": {"content": piece}} if chat else {"text": piece})
    return f"data: {json.dumps({'choices': [choice]})}\n\n".encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    requests: ClassVar[list[tuple[str, dict, dict]]] = []

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        try:
            self._answer()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up first (timeout, cancellation): that is the test

    def _answer(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append((self.path, body, dict(self.headers)))
        model, chat = body["model"], self.path.endswith("/chat/completions")
        if model == "slow":
            time.sleep(1.5)
        if model == "http500":
            data = b'{"error": {"message": "model is loading"}}'
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        if model == "drop":  # one event, then the connection dies mid-stream
            chunk(_event("Hel", chat))
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if model == "stall":  # one event, then silence longer than the client's timeout
            chunk(_event("Hel", chat))
            time.sleep(1.5)
        elif model == "event-error":
            chunk(_event("Hel", chat))
            chunk(b'data: {"error": {"message": "out of memory", "code": 500}}\n\n')
        else:
            pieces = ["one ", "two ", "three"] if model == "length" else TURN
            finish = "length" if model == "length" else "stop"
            for i, piece in enumerate(pieces):
                chunk(_event(piece, chat, finish if i == len(pieces) - 1 else None))
                if model == "trickle":
                    time.sleep(0.05)
            chunk(b"data: [DONE]\n\n")
        chunk(b"")


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _clear():
    _Handler.requests.clear()


def test_completions_stream_stops_locally_and_sends_the_request(server):
    b = OpenAIBackend(server, "ok", api_key="k3y")
    stream = b.stream(
        "PROMPT", stop=CHATML_STOP, grammar="root ::= x", sampling=Sampling(seed=3, top_k=5)
    )
    assert "".join(stream) == "<system_thinking>Mara weighs it.</system_thinking>Mara: Hi"
    assert stream.finish_reason == "stop" and stream.completion_tokens == 5
    path, body, headers = _Handler.requests[0]
    assert path == "/v1/completions" and body["prompt"] == "PROMPT" and body["stream"] is True
    assert body["grammar"] == "root ::= x" and body["seed"] == 3 and body["top_k"] == 5
    assert body["stop"] == CHATML_STOP and headers["Authorization"] == "Bearer k3y"


def test_grammar_field_follows_the_server(server):
    list(OpenAIBackend(server, "ok", grammar_field="guided_grammar").stream("p", grammar="g"))
    list(OpenAIBackend(server, "ok", grammar_field=None).stream("p", grammar="g"))
    first, second = (body for _, body, _ in _Handler.requests)
    assert first["guided_grammar"] == "g" and "grammar" not in first
    assert "grammar" not in second and "guided_grammar" not in second


def test_chat_mode_sends_messages_and_the_prefill(server):
    msgs = [Message("system", "You are Mara."), Message("user", "Traveler: Hi.")]
    prompt = render_chatml(msgs, "<system_thinking>")
    b = OpenAIBackend(server, "ok", mode="chat")
    assert "".join(b.stream(prompt, stop=CHATML_STOP)).endswith("Mara: Hi")
    path, body, _ = _Handler.requests[0]
    assert path == "/v1/chat/completions" and "prompt" not in body
    assert body["messages"] == [
        {"role": "system", "content": "You are Mara."},
        {"role": "user", "content": "Traveler: Hi."},
        {"role": "assistant", "content": "<system_thinking>"},
    ]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


def test_length_finish_and_cancellation(server):
    stream = OpenAIBackend(server, "length").stream("p")
    assert "".join(stream) == "one two three" and stream.finish_reason == "length"
    cancel = CancelToken()
    stream = OpenAIBackend(server, "trickle").stream("p", cancel=cancel)
    assert next(stream)
    cancel.cancel()
    list(stream)
    assert stream.finish_reason == "cancelled"


def test_http_error_status_is_a_backend_http_error(server):
    with pytest.raises(BackendHTTPError, match="model is loading") as info:
        OpenAIBackend(server, "http500").stream("p")
    assert info.value.status == 503 and info.value.url == server + "/completions"
    assert isinstance(info.value, GenerationError)


def test_error_event_in_the_stream_is_a_backend_http_error(server):
    stream = OpenAIBackend(server, "event-error").stream("p")
    with pytest.raises(BackendHTTPError, match="out of memory") as info:
        list(stream)
    assert info.value.status == 0


def test_unreachable_server_is_backend_unavailable():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendUnavailableError, match="cannot reach") as info:
        OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", timeout=2).stream("p")
    assert info.value.url == f"http://127.0.0.1:{port}/v1"
    assert isinstance(info.value, GenerationError)


def test_timeout_is_backend_unavailable(server):
    with pytest.raises(BackendUnavailableError):
        OpenAIBackend(server, "slow", timeout=0.3).stream("p")


@pytest.mark.parametrize("model", ["drop", "stall"])
def test_connection_lost_mid_stream_is_backend_unavailable(server, model):
    stream = OpenAIBackend(server, model, timeout=0.5).stream("p")
    with pytest.raises(BackendUnavailableError, match="connection lost") as info:
        list(stream)
    assert info.value.url == server


def test_a_character_plays_its_turn_over_http(server):
    mara = Character(name="Mara", model=OpenAIBackend(server, "ok"))
    mara.hear("Traveler", "Open the gate.")
    reply = mara.reply(seed=1)
    assert (reply.plan, reply.speech) == ("Mara weighs it.", "Hi")
    _, body, _ = _Handler.requests[0]
    assert body["prompt"].endswith("<|im_start|>assistant\n<system_thinking>")
    assert "grammar" in body  # a grammar-capable server gets the turn grammar


def test_count_tokens_is_an_estimate_without_a_request(server):
    b = OpenAIBackend(server, "ok")
    assert b.count_tokens("x" * 40) == 10 and _Handler.requests == []
