"""Shared helpers of the tests/test_grpc_*.py files: a real server on an ephemeral port."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import pytest

pytest.importorskip("grpc", reason="needs the grpc extra")

from her_sdk import MockBackend
from her_sdk.client import Client
from her_sdk.server import HerServer, ServerSettings

TURN = (
    "<system_thinking>She should stall him; the duke's order stands.</system_thinking>Mara: "
    "<role_thinking>His papers look forged.</role_thinking>"
    "<role_action>crosses her arms</role_action>The gate stays shut until dawn, traveler."
)
PLAN = "She should stall him; the duke's order stands."
THOUGHT = "His papers look forged."


def turn_for(name: str) -> str:
    return TURN.replace("Mara:", f"{name}:")


def mock(chunk_delay: float = 0.0) -> MockBackend:
    # The handler answers as whoever the prompt is for ("You are NAME" opens the system prompt).
    def handler(prompt: str) -> str:
        m = re.search(r"You are ([^\s.,]+)", prompt)
        return turn_for(m.group(1) if m else "Mara")

    return MockBackend(handler, chunk_delay=chunk_delay)


@contextlib.contextmanager
def running(model=None, **settings) -> Iterator[HerServer]:
    server = HerServer(ServerSettings(port=0, **settings), model=model or mock())
    server.start()
    try:
        yield server
    finally:
        server.close(0)


@contextlib.contextmanager
def connected(model=None, client_kw: dict | None = None, **settings):
    with running(model, **settings) as server, Client(server.target, **(client_kw or {})) as c:
        yield server, c
