"""What gRPC and Connect (JSON over HTTP) add to an NPC turn, in one run: latency,
concurrency, memory.

    .venv/bin/python benchmarks/grpc_overhead.py             # mock + real embedded model
    .venv/bin/python benchmarks/grpc_overhead.py --no-real   # mock only (~1 minute)

1. Mock backend, one turn at a time, in-process `Scene.stream` vs the same turn through a local
   `her serve` over gRPC and over Connect (`--http-port`: JSON, the Turn stream as enveloped
   frames, one kept-alive HTTP/1.1 connection, as an engine's client keeps it), interleaved so
   machine noise hits all three: p50/p99 and the milliseconds added (target: <= 2 ms at p50).
2. 64 concurrent turn streams on one server (target: all complete, no error).
3. Server memory over 10,000 gRPC turns (scenes of 100 turns, deleted after; target: no growth
   beyond allocator noise).
4. Real embedded model (Gemma-3-270M): gRPC / in-process time per turn (target: ~1.0).

Server and client share this process (and its GIL): a conservative setup for the latency figure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from her_sdk import Character, MockBackend, Scene
from her_sdk.client import Client
from her_sdk.server import HerServer, ServerSettings

TURN = (
    "<system_thinking>She should stall him.</system_thinking>Mara: "
    "<role_thinking>His papers look forged.</role_thinking>"
    "<role_action>crosses her arms</role_action>The gate stays shut until dawn, traveler."
)


def answer(prompt: str) -> str:
    """The mock's turn, spoken by whoever the prompt is for ("You are NAME...")."""
    m = re.search(r"You are ([^\s.,]+)", prompt)
    return TURN.replace("Mara:", f"{m.group(1) if m else 'Mara'}:")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: peak RSS is the best we have
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ConnectTurns:
    """Turns over the Connect protocol on one kept-alive HTTP/1.1 connection."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def turn(self, scene_id: str, who: str) -> dict:
        payload = json.dumps({"sceneId": scene_id, "character": who}).encode()
        body = struct.pack(">BI", 0, len(payload)) + payload
        headers = {"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"}
        self.conn.request("POST", "/her.v1.HerService/Turn", body=body, headers=headers)
        data = self.conn.getresponse().read()
        i, summary = 0, None
        while i < len(data):
            flags, n = struct.unpack(">BI", data[i : i + 5])
            message = json.loads(data[i + 5 : i + 5 + n])
            if flags & 2:
                assert message == {}, message
            else:
                summary = message.get("summary", summary)
            i += 5 + n
        assert summary is not None
        return summary


def latency(c: Client, backend: MockBackend, n: int, http_url: str) -> None:
    local = Scene([Character("Mara", model=backend, max_memory=40)], player="Traveler")
    remote = c.create_scene([c.create_character("Mara", max_memory=40)], players="Traveler")
    web = c.create_scene([c.create_character("Mara", max_memory=40)], players="Traveler")
    for s in (local, remote, web):
        s.say("Traveler", "Let me through.")
    connect = ConnectTurns(http_url)
    inproc, grpc_, json_ = [], [], []
    for i in range(n + 50):
        t = time.perf_counter()
        local.stream("Mara").wait()
        a = time.perf_counter() - t
        t = time.perf_counter()
        remote.stream("Mara").wait()
        b = time.perf_counter() - t
        t = time.perf_counter()
        connect.turn(web.id, "Mara")
        j = time.perf_counter() - t
        if i >= 50:  # warm-up
            inproc.append(a)
            grpc_.append(b)
            json_.append(j)
        backend.prompts.clear()
    print(f"[mock] turns: {n} each, interleaved")
    print(f"  in-process  p50 {pct(inproc, 0.5):6.2f} ms   p99 {pct(inproc, 0.99):6.2f} ms")
    for name, xs in (("gRPC", grpc_), ("Connect", json_)):
        added50 = pct(xs, 0.5) - pct(inproc, 0.5)
        added99 = pct(xs, 0.99) - pct(inproc, 0.99)
        print(f"  {name:<10}  p50 {pct(xs, 0.5):6.2f} ms   p99 {pct(xs, 0.99):6.2f} ms", end="")
        verdict = "OK" if added50 <= 2.0 else "OVER TARGET"
        print(
            f"   added p50 {added50:5.2f} ms, p99 {added99:5.2f} ms (target p50 <= 2 ms: {verdict})"
        )
    remote.delete()
    web.delete()
    connect.conn.close()


def concurrency(c: Client, n: int) -> None:
    scenes = []
    for i in range(n):
        s = c.create_scene([c.create_character(f"Npc{i}", max_memory=40)], players=f"P{i}")
        s.say(f"P{i}", "Speak.")
        scenes.append((s, f"Npc{i}"))
    errors: list[BaseException] = []
    ok = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def run(k: int) -> None:
        s, who = scenes[k]
        barrier.wait()
        try:
            r = s.turn(who)
            assert r.speech == "The gate stays shut until dawn, traveler.", r.speech
            with lock:
                ok[0] += 1
        except BaseException as exc:
            with lock:
                errors.append(exc)

    t = time.perf_counter()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    dt = time.perf_counter() - t
    verdict = "OK" if not errors and ok[0] == n else "FAILED"
    print(
        f"[mock] {n} concurrent turn streams: {ok[0]} completed, {len(errors)} errors "
        f"in {dt:.2f} s ({verdict})"
    )
    for e in errors[:3]:
        print("   ", repr(e))
    for s, _ in scenes:
        s.delete()


def memory(c: Client, backend: MockBackend, turns: int) -> None:
    def block(n: int) -> None:
        done = 0
        while done < n:
            s = c.create_scene([c.create_character("Mara", max_memory=40)], players="Traveler")
            s.say("Traveler", "Let me through.")
            for _ in range(min(100, n - done)):
                s.stream("Mara").wait()
                done += 1
            s.delete()
            backend.prompts.clear()  # the mock's own record of prompts, not server state

    block(1000)  # warm-up: allocator pools, caches
    before = rss_mb()
    t = time.perf_counter()
    block(turns)
    dt = time.perf_counter() - t
    after = rss_mb()
    growth = after - before
    verdict = "OK" if growth < 5 else "GROWING"
    print(
        f"[mock] memory over {turns} gRPC turns: RSS {before:.1f} -> {after:.1f} MB "
        f"({growth:+.1f} MB, {growth * 2**20 / turns:+.0f} B/turn; {verdict}); "
        f"{turns / dt:.0f} turns/s"
    )


def real(turns: int) -> None:
    try:
        from her_sdk import load_model

        model = load_model(  # as in the README: the engine alone, no DRY, no turn shape
            adapter=None, n_threads=os.cpu_count() or 2, dry_multiplier=0.0, turn_shape=None
        )
    except Exception as exc:  # no llama extra / no default model: say so, don't fail
        print(f"[real] skipped: {exc}")
        return
    with (
        HerServer(ServerSettings(port=0), model=model) as server,
        Client(server.target, timeout=600) as c,
    ):
        local = Scene([Character("Mara", model=model, max_memory=40)], player="Traveler")
        remote = c.create_scene([c.create_character("Mara", max_memory=40)], players="Traveler")
        inproc, grpc_, toks = [], [], []
        for i in range(turns):
            for s in (local, remote):
                s.say("Traveler", f"Let me through, captain ({i}).")
            pair = [(local, inproc), (remote, grpc_)]
            got = []
            for s, times in pair if i % 2 == 0 else pair[::-1]:  # alternate who goes first
                t = time.perf_counter()
                got.append(s.turn("Mara", seed=i, max_tokens=48).completion_tokens)
                times.append(time.perf_counter() - t)
            toks.append(tuple(got))
        a, b = statistics.median(inproc), statistics.median(grpc_)
        print(f"[real] {model.name}: {turns} turns each (max 48 tokens), tokens {toks}")
        print(
            f"  in-process median {a * 1000:.0f} ms, gRPC median {b * 1000:.0f} ms, "
            f"ratio gRPC/in-process {b / a:.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--turns", type=int, default=500, help="latency samples per side")
    ap.add_argument("--concurrent", type=int, default=64)
    ap.add_argument("--memory-turns", type=int, default=10_000)
    ap.add_argument("--real-turns", type=int, default=4)
    ap.add_argument("--no-real", action="store_true", help="skip the real model")
    args = ap.parse_args()

    backend = MockBackend(answer)
    settings = ServerSettings(
        port=0,
        http_port=0,
        max_scenes=args.concurrent + 4,
        max_workers=max(128, 2 * args.concurrent + 8),
    )
    with HerServer(settings, model=backend) as server, Client(server.target) as c:
        assert server.http_url is not None
        latency(c, backend, args.turns, server.http_url)
        memory(c, backend, args.memory_turns)
    # Streams that really overlap: every token takes 5 ms, so all of them are open at once.
    slow = MockBackend(answer, chunk_delay=0.005)
    with HerServer(settings, model=slow) as server, Client(server.target) as c:
        concurrency(c, args.concurrent)
    if not args.no_real:
        real(args.real_turns)


if __name__ == "__main__":
    main()
