"""Many turns at once over gRPC: a load test, priorities in the proto, a full queue's status.

The model is the mock backend (deterministic, with a per-token delay like a real engine's); the
real model under the same load is measured by benchmarks/many_npcs.py.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator

import pytest
from _grpc_util import connected, mock, turn_for

from her_sdk import LimitExceededError, MockBackend
from her_sdk._backends._base import TextStream
from her_sdk.client import ServerError
from her_sdk.server._convert import priority_from_pb, priority_to_pb
from her_sdk.server._pb import pb


def test_64_concurrent_turn_streams_complete_without_errors(record_property):
    n = 64
    with connected(mock(chunk_delay=0.002)) as (server, c):
        scenes = []
        for s in range(8):
            names = [f"Npc{s}x{i}" for i in range(n // 8)]
            ids = [c.create_character(name, profile="A townsperson.") for name in names]
            scene = c.create_scene(ids, players="Player")
            scene.say("Player", "Good morning, everyone.")
            scenes.append((scene, names))
        jobs = [(scene, name) for scene, names in scenes for name in names]
        latencies: list[float] = []
        errors: list[BaseException] = []
        replies = {}
        barrier = threading.Barrier(n)
        lock = threading.Lock()

        def turn(scene, name: str) -> None:
            barrier.wait()
            t0 = time.perf_counter()
            try:
                stream = scene.stream(name, priority="player" if name.endswith("x0") else "normal")
                text = "".join(d.text for d in stream if d.channel == "speech")
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    replies[name] = (stream.reply, text)
            except BaseException as exc:  # counted, not raised in the thread
                with lock:
                    errors.append(exc)

        threads = [threading.Thread(target=turn, args=job) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)

    assert errors == []
    assert len(replies) == n
    for name, (reply, text) in replies.items():
        expected = turn_for(name)
        assert reply.character == name and text.strip() == expected.rsplit(">", 1)[1]
    p50 = statistics.median(latencies)
    p99 = statistics.quantiles(latencies, n=100)[98]
    record_property("turn_latency_p50_ms", round(p50 * 1000, 1))
    record_property("turn_latency_p99_ms", round(p99 * 1000, 1))
    print(f"\n64 concurrent gRPC turn streams: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    assert p99 < 60  # generous: a shared 2-core machine


class SchedulingMock(MockBackend):
    """A mock engine that schedules: records priorities; refuses when 'its queue is full'."""

    schedules = True

    def __init__(self, full: bool = False) -> None:
        super().__init__(lambda prompt: turn_for(prompt.split("You are ")[1].split()[0]))
        self.full = full
        self.priorities: list[str] = []

    def stream(self, prompt, *, priority="normal", **kw):
        self.priorities.append(priority)
        if not self.full:
            return super().stream(prompt, **kw)

        def refuse(_stream: TextStream) -> Iterator[str]:  # like LlamaBackend: when iterated
            raise LimitExceededError("256 turns are already waiting for the model")
            yield ""

        return TextStream(refuse)


def test_priority_travels_through_the_proto():
    for name in ("player", "normal", "background"):
        assert priority_from_pb(priority_to_pb(name)) == name
    assert priority_from_pb(pb.TURN_PRIORITY_UNSPECIFIED) == "normal"
    model = SchedulingMock()
    with connected(model) as (_, c):
        ids = [c.create_character(n, profile="Guard.") for n in ("Mara", "Jory")]
        scene = c.create_scene(ids, players="Player")
        scene.say("Player", "Hello.")
        scene.turn("Mara", priority="player")
        scene.turn("Jory", priority="background")
        scene.turn("Mara")
    assert model.priorities == ["player", "background", "normal"]


def test_a_full_engine_queue_is_resource_exhausted():
    with connected(SchedulingMock(full=True)) as (_, c):
        ids = [c.create_character("Mara", profile="Guard.")]
        scene = c.create_scene(ids, players="Player")
        scene.say("Player", "Hello.")
        with pytest.raises(ServerError) as info:
            scene.turn("Mara")
    assert info.value.code == "RESOURCE_EXHAUSTED"
    assert "waiting" in info.value.details
