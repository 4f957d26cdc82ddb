"""Hardening of the gRPC service and the runtime (issue 15): each test is an attack that once
worked, run against a real server on 127.0.0.1 or through the public API.

The model-engine halves (special tokens at the token level, prompt cancellation between batches,
corrupt hyper-parameters) need llama.cpp and are in test_hardening_llama.py.
"""

from __future__ import annotations

import json
import os
import threading
import time

import grpc
import pytest
from _grpc_util import TURN, connected, mock, running
from grpc_health.v1 import health_pb2, health_pb2_grpc

from her_sdk import (
    CancelToken,
    Character,
    ConfigError,
    MockBackend,
    Persona,
    Scene,
    StateError,
)
from her_sdk.client import Client, ServerError
from her_sdk.server import ServerSettings
from her_sdk.server._pb import pb, pb_grpc


def _code(fn, *args, **kwargs) -> str:
    with pytest.raises(ServerError) as e:
        fn(*args, **kwargs)
    return e.value.code


def _create_from_card(c: Client, card_json: str, timeout: float = 10):
    return c._call("CreateCharacter", pb.CreateCharacterRequest(card_json=card_json), timeout)


# -- 1. card_json is data, never a path on the server -----------------------------------------


def test_card_json_never_reads_a_server_file(tmp_path):
    secret = tmp_path / "server_secret.json"
    secret.write_text(json.dumps({"name": "Leaked", "description": "server-side file"}))
    with connected() as (_, c):
        answers = {}
        for path in (str(secret), str(tmp_path / "missing.json"), "/dev/zero", "/dev/stdin"):
            t0 = time.perf_counter()
            with pytest.raises(ServerError) as e:
                _create_from_card(c, path, timeout=10)
            assert e.value.code == "INVALID_ARGUMENT", (path, e.value)
            assert time.perf_counter() - t0 < 5  # /dev/zero is not read, /dev/stdin not waited on
            answers[path] = e.value.details
        # The answer says nothing about whether a file exists there.
        assert answers[str(secret)] == answers[str(tmp_path / "missing.json")]
        assert "Leaked" not in " ".join(answers.values())
        # The server is still healthy.
        assert c.create_character("Mara")


def test_card_files_only_through_the_explicit_bounded_api(tmp_path):
    good = tmp_path / "tom.json"
    good.write_text(json.dumps({"name": "Old Tom", "description": "A ferryman."}))
    assert Persona.from_card_file(good).name == "Old Tom"
    assert Persona.from_card(good).name == "Old Tom"  # a Path is explicit, and is bounded too
    with pytest.raises(ConfigError, match="JSON"):
        Persona.from_card(str(good))  # a str is JSON text, never a file name
    with pytest.raises(ConfigError, match="larger than"):
        Persona.from_card_file(good, max_bytes=10)
    with pytest.raises(ConfigError, match="regular file"):
        Persona.from_card_file(tmp_path)
    with pytest.raises(ConfigError, match="regular file"):
        Persona.from_card_file("/dev/zero")
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "card.fifo"
        os.mkfifo(fifo)
        done = threading.Event()

        def read() -> None:
            with pytest.raises(ConfigError, match="regular file"):
                Persona.from_card_file(fifo)
            done.set()

        threading.Thread(target=read, daemon=True).start()
        assert done.wait(5), "reading a FIFO card blocked"


# -- 2 (text level; the token level is in test_hardening_llama.py) ----------------------------
# The property tests live in test_hardening_prompt.py.

# -- 4. denial of service ----------------------------------------------------------------------


def test_scene_event_and_server_text_budgets():
    with connected(max_scene_events=5, max_total_chars=3000) as (server, c):
        mara = c.create_character("Mara")
        scene = c.create_scene([mara], players=["T"])
        for _ in range(4):
            scene.say("T", "Hello.")
        scene.turn("Mara")  # the 5th event
        assert _code(scene.say, "T", "One more.") == "RESOURCE_EXHAUSTED"
        assert _code(scene.narrate, "Rain.") == "RESOURCE_EXHAUSTED"
        assert _code(scene.turn, "Mara") == "RESOURCE_EXHAUSTED"

        other = c.create_scene([], players=["T"])
        big = "x" * ((3000 - server.servicer.budget.total) // 3)  # fits three times
        for _ in range(3):
            other.say("T", big)
        assert _code(other.say, "T", big) == "RESOURCE_EXHAUSTED"  # past 3000 in all
        other.delete()  # gives its text back
        third = c.create_scene([], players=["T"])
        third.say("T", big)


def test_say_text_and_actions_share_one_text_limit():
    with connected(max_text_chars=100) as (_, c):
        scene = c.create_scene([], players=["T"])
        scene.say("T", "x" * 60, ["y" * 30])
        # Each part fits; together they are 50 + 200 * 60 characters.
        assert _code(scene.say, "T", "x" * 50, ["y" * 60] * 200) == "RESOURCE_EXHAUSTED"


def test_load_scene_is_held_to_the_servers_limits():
    backend = mock()
    mara = Character(persona=Persona(name="Mara"), model=backend)
    scene = Scene([mara], player="T")
    scene.say("T", "z" * 5000)  # fine in-process, beyond this server's text limit
    data = scene.dumps()
    with connected(max_text_chars=1000, expose_thoughts=True) as (_, c):
        assert _code(c.load_scene, data) == "RESOURCE_EXHAUSTED"
    many = Scene([Character(persona=Persona(name="Jory"), model=backend)], player="T")
    for _ in range(30):
        many.say("T", "Hi.")
    with connected(max_scene_events=20, expose_thoughts=True) as (_, c):
        assert _code(c.load_scene, many.dumps()) == "RESOURCE_EXHAUSTED"
    with connected(max_total_chars=2000, expose_thoughts=True) as (_, c):
        assert _code(c.load_scene, data) == "RESOURCE_EXHAUSTED"
        assert c.create_scene([], players=["T"])  # nothing was half-loaded


def test_concurrency_bound_is_on_by_default_and_spares_health_checks():
    assert ServerSettings().max_concurrent_rpcs < ServerSettings().max_workers
    slow = mock(chunk_delay=0.05)
    with running(slow, max_concurrent_rpcs=2, max_workers=4) as server, Client(server.target) as c:
        ids = [c.create_character(f"N{i}") for i in range(2)]
        scenes = [c.create_scene([cid], players=["T"]) for cid in ids]
        streams = [s.stream(f"N{i}") for i, s in enumerate(scenes)]
        first = [next(iter(s)) for s in streams]  # both turns are running now
        assert all(first)
        assert _code(c.create_character, "Late") == "RESOURCE_EXHAUSTED"
        channel = grpc.insecure_channel(server.target)
        health = health_pb2_grpc.HealthStub(channel)
        resp = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        channel.close()
        for s in streams:
            s.cancel()
        deadline = time.monotonic() + 5
        while server.limit.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.limit.running == 0  # cancelled streams gave their places back
        assert c.create_character("Now")


def test_turn_of_a_client_that_left_while_queued_never_runs():
    started = []

    def handler(prompt: str) -> str:
        started.append(prompt)
        return TURN

    with running(MockBackend(handler), max_workers=2, max_concurrent_rpcs=1) as server:
        servicer = server.servicer
        with Client(server.target) as c:
            mara = c.create_character("Mara")
            scene = c.create_scene([mara], players=["T"])
        # Take both generation threads, then queue a turn whose client gives up waiting.
        gate = threading.Event()
        for _ in range(2):
            servicer._pool.submit(gate.wait, 5)
        with Client(server.target) as c, pytest.raises(grpc.RpcError) as e:
            request = pb.TurnRequest(scene_id=scene.id, character="Mara")
            next(iter(c.stub.Turn(request, timeout=0.3)))
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        gate.set()
        time.sleep(0.3)
        assert started == []  # its prompt was never rendered, let alone generated
        with Client(server.target) as c:
            assert c.get_character(mara).turns_taken == 0


# -- 5. nothing private leaves without --expose-thoughts ---------------------------------------


def test_get_character_hides_secrets_unless_exposed():
    for expose in (False, True):
        with connected(expose_thoughts=expose) as (_, c):
            cid = c.create_character("Mara", secrets="She opened the gate for the smugglers.")
            got = c.get_character(cid).persona.secrets
            assert got == ("She opened the gate for the smugglers." if expose else "")


def test_saves_stay_on_the_server_and_bytes_are_for_trusted_clients(tmp_path):
    with connected(save_dir=tmp_path) as (_, c):
        mara = c.create_character("Mara", secrets="the key is under the stone")
        scene = c.create_scene([mara], players=["T"])
        scene.say("T", "Open up.")
        scene.turn("Mara")
        assert _code(scene.save) == "PERMISSION_DENIED"  # bytes would carry her thoughts
        assert scene.save("slot-1") == "slot-1"
        assert (tmp_path / "slot-1.her.json").is_file()
        copy = c.load_scene(name="slot-1")
        assert copy.info().event_count == 2 and copy.turn("Mara").speech
        # A client cannot write minds: bytes are refused, names cannot leave the directory.
        forged = Scene([Character(persona=Persona(name="Mara"), model=mock())], player="T")
        assert _code(c.load_scene, forged.dumps()) == "PERMISSION_DENIED"
        for bad in ("../slot-1", ".hidden", "a/b", "x" * 65):
            assert _code(scene.save, bad) == "INVALID_ARGUMENT"
        assert _code(c.load_scene, name="nope") == "NOT_FOUND"
    with connected() as (_, c):  # no --save-dir: named saves are refused too
        scene = c.create_scene([], players=["T"])
        assert _code(scene.save, "slot") == "INVALID_ARGUMENT"


# -- 6. the small ones ---------------------------------------------------------------------------


def test_nested_or_nul_card_json_is_invalid_argument():
    with connected() as (_, c):
        for card in (
            "[" * 100_000 + "]" * 100_000,
            '{"name": "Mara", "description": "a\\u0000b"}',
            '{"name": "Ma\\u0000ra"}',
        ):
            with pytest.raises(ServerError) as e:
                _create_from_card(c, card)
            assert e.value.code == "INVALID_ARGUMENT", card[:40]


def test_binary_junk_saves_are_state_errors(tmp_path):
    junk = bytes(range(256)) * 4
    for load in (Scene.loads, Character.loads):
        with pytest.raises(StateError):
            load(junk)
    path = tmp_path / "junk.json"
    path.write_bytes(junk)
    with pytest.raises(StateError):
        Scene.load(path)


def test_crashed_saves_leave_no_temporary_files_for_ever(tmp_path):
    target = tmp_path / "game.json"
    stale = tmp_path / ".game.json.abc123.tmp"
    fresh = tmp_path / ".game.json.def456.tmp"  # maybe another writer's, right now
    stale.write_bytes(b"half a save")
    fresh.write_bytes(b"being written")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    Scene(player="T").save(target)
    assert not stale.exists() and fresh.exists() and target.exists()


def test_nan_sampling_values_are_invalid_argument():
    nan = float("nan")
    with connected() as (_, c):
        assert _code(c.create_character, "Mara", temperature=nan) == "INVALID_ARGUMENT"
        mara = c.create_character("Mara")
        scene = c.create_scene([mara], players=["T"])
        assert _code(scene.turn, "Mara", temperature=nan) == "INVALID_ARGUMENT"
        assert _code(scene.turn, "Mara", temperature=float("inf")) == "INVALID_ARGUMENT"


def test_a_scene_bigger_than_a_message_says_how_to_save_it(tmp_path):
    with connected(max_message_bytes=64 * 1024, expose_thoughts=True, save_dir=tmp_path) as (_, c):
        mara = c.create_character("Mara")
        scene = c.create_scene([mara], players=["T"])
        for _ in range(40):
            scene.say("T", "w" * 4000)
        with pytest.raises(ServerError) as e:
            scene.save()
        assert e.value.code == "RESOURCE_EXHAUSTED" and "by name" in e.value.details
        assert scene.save("big") == "big"
        assert c.load_scene(name="big").info().event_count == 40


def test_exposed_host_without_token_refuses_to_start():
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        with pytest.raises(ValueError, match="token"):
            ServerSettings(host=host)
    ServerSettings(host="0.0.0.0", token="t0k3n")
    ServerSettings(host="0.0.0.0", allow_unauthenticated=True)
    for host in ("127.0.0.1", "localhost", "::1"):
        ServerSettings(host=host)


def test_cli_refuses_exposed_host_without_token_and_reads_the_token_from_env():
    from typer.testing import CliRunner

    from her_sdk.cli import app

    res = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert res.exit_code != 0 and "--token" in res.output
    help_text = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "HER_SERVER_TOKEN" in help_text


def test_bearer_scheme_is_case_insensitive():
    with running(token="s3cret") as server:
        channel = grpc.insecure_channel(server.target)
        stub = pb_grpc.HerServiceStub(channel)
        req = pb.CreateCharacterRequest(persona=pb.Persona(name="Mara"))
        for header in ("Bearer s3cret", "bearer s3cret", "BEARER   s3cret"):
            assert stub.CreateCharacter(req, metadata=(("authorization", header),), timeout=5).id
        for header in ("Basic s3cret", "bearer", "s3cret", "bearer s3cret2"):
            with pytest.raises(grpc.RpcError) as e:
                stub.CreateCharacter(req, metadata=(("authorization", header),), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        channel.close()


def test_turns_taken_counts_neither_cancelled_nor_empty_turns():
    outputs = ["", TURN, TURN]
    mara = Character(persona=Persona(name="Mara"), model=MockBackend(outputs))
    Scene([mara], player="T")
    mara.reply()  # the model said nothing
    assert mara.turns_taken == 0
    cancel = CancelToken()
    cancel.cancel()
    stream = mara.stream(cancel=cancel)
    list(stream)
    assert stream.reply.finish_reason == "cancelled" and mara.turns_taken == 0
    mara.reply()
    assert mara.turns_taken == 1
