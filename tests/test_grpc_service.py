"""The gRPC service against a real server on a loopback port: turns, privacy, state, timing."""

from __future__ import annotations

import json
import threading
import time

import grpc
import msgspec
import pytest
from _grpc_util import PLAN, THOUGHT, TURN, connected, mock, running
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from her_sdk import Character, MockBackend, Scene
from her_sdk.client import Client, ServerError
from her_sdk.server._pb import pb


def _scene(c: Client, *names: str, player: str = "Traveler"):
    ids = [c.create_character(n, profile=f"{n} of Vell.") for n in names]
    return ids, c.create_scene(ids, players=player)


def test_turn_streams_public_deltas_then_matches_in_process_reply():
    with connected() as (_, c):
        _, scene = _scene(c, "Mara")
        scene.say("Traveler", "Let me through.", "shows papers")
        stream = scene.stream("Mara")
        deltas = list(stream)
        reply = stream.reply

    assert {d.channel for d in deltas} == {"action", "speech"}  # private hidden by default
    text = "".join(d.text for d in deltas if d.channel == "speech")
    assert text.strip() == "The gate stays shut until dawn, traveler."
    assert reply.speech == "The gate stays shut until dawn, traveler."
    assert reply.actions == ["crosses her arms"]
    assert reply.plan == "" and reply.thoughts == [] and reply.raw == ""
    assert reply.completion_tokens > 0 and reply.prompt_tokens > 0
    assert reply.finish_reason == "stop" and reply.total_s > 0
    assert reply.first_speech_s is not None and reply.first_speech_s <= reply.total_s

    # The same turn in-process gives the same public Reply fields.
    local = Scene([Character("Mara", profile="Mara of Vell.", model=mock())], player="Traveler")
    local.say("Traveler", "Let me through.", "shows papers")
    want = local.turn("Mara", private=False)
    assert (reply.speech, reply.actions) == (want.speech, want.actions)
    # Deltas carry the same section numbers over the wire as in-process.
    local.say("Traveler", "Let me through.", "shows papers")
    local_deltas = list(local.stream("Mara"))
    assert sorted({(d.channel, d.segment) for d in deltas}) == sorted(
        {(d.channel, d.segment) for d in local_deltas}
    )
    assert len({d.segment for d in deltas}) >= 2


def test_private_channels_need_request_and_server_flag():
    # Requested but the server does not expose thoughts: nothing private leaves the process.
    with connected() as (_, c):
        _, scene = _scene(c, "Mara")
        scene.say("Traveler", "Hello?")
        stream = scene.stream("Mara", private=True)
        channels = {d.channel for d in stream}
        assert channels == {"action", "speech"}
        assert stream.reply.plan == "" and stream.reply.thoughts == []
        assert all(s.channel in ("action", "speech") for s in stream.reply.segments)
        saved = scene.info(events=True)
        assert THOUGHT not in str(saved) and PLAN not in str(saved)

    # Exposed by the server but not requested: still hidden.
    with connected(expose_thoughts=True) as (_, c):
        _, scene = _scene(c, "Mara")
        scene.say("Traveler", "Hello?")
        assert {d.channel for d in scene.stream("Mara", private=False)} == {"action", "speech"}
        # Requested and exposed: all four channels, in order.
        stream = scene.stream("Mara", private=True)
        order = []
        for d in stream:
            if not order or order[-1] != d.channel:
                order.append(d.channel)
        assert order == ["plan", "thought", "action", "speech"]
        assert stream.reply.plan == PLAN and stream.reply.thoughts == [THOUGHT]
        assert "<system_thinking>" in stream.reply.raw


def test_other_characters_never_perceive_thoughts_over_grpc():
    backend = mock()
    with connected(backend, expose_thoughts=True) as (_, c):
        _, scene = _scene(c, "Mara", "Jory")
        scene.say("Traveler", "Evening.")
        scene.turn("Mara")
        scene.turn("Jory")
    jory_prompt = backend.prompts[-1]
    assert "crosses her arms" in jory_prompt  # Mara's public action reached Jory
    assert "You are Jory" in jory_prompt
    assert THOUGHT not in jory_prompt and PLAN not in jory_prompt


def test_characters_from_card_get_delete_and_scene_lifecycle():
    card = {
        "spec": "chara_card_v2",
        "data": {
            "name": "Sera",
            "description": "A healer of {{user}}'s village.",
            "personality": "gentle",
            "scenario": "A plague year.",
        },
    }
    with connected(expose_thoughts=True) as (_, c):  # saves as bytes need a trusting server
        sid = c.create_character(card=card)
        info = c.get_character(sid)
        assert info.persona.name == "Sera" and "healer" in info.persona.profile
        assert info.persona.scenario == "A plague year." and info.scene_id == ""
        scene = c.create_scene([sid], players=["Tom"], name="hut", seed=3)
        assert c.get_character(sid).scene_id == scene.id
        scene.add_player("Ann")
        got = scene.info()
        assert [p.name for p in got.characters] == ["Sera"] and list(got.players) == ["Tom", "Ann"]
        assert got.seed == 3
        scene.narrate("Rain on the roof.")
        scene.say("Tom", "Help me.", to=["Sera"])
        scene.turn("Sera")
        assert [e.kind for e in scene.events] == ["narration", "speech", "turn"]
        assert [e.kind for e in scene.transcript("Ann")] == ["narration", "turn"]  # whisper
        assert c.get_character(sid).turns_taken == 1

        # Save, load as a new scene with new ids, and continue there.
        data = scene.save()
        assert json.loads(data)["kind"] == "scene"
        copy = c.load_scene(data)
        copy_info = copy.info()
        assert copy_info.id != scene.id and copy_info.event_count == 3
        new_id = copy_info.characters[0].character_id
        assert new_id != sid and c.get_character(new_id).turns_taken == 1
        assert copy.turn("Sera").speech

        scene.delete()
        with pytest.raises(ServerError) as e:
            c.get_character(sid)  # deleted with its scene
        assert e.value.code == "NOT_FOUND"
        keep = c.create_character("Kip")
        s2 = c.create_scene([keep])
        s2.delete(keep_characters=True)
        assert c.get_character(keep).scene_id == ""
        c.delete_character(keep)
        with pytest.raises(ServerError):
            c.get_character(keep)


def test_cancel_stops_generation_promptly():
    backend = mock(chunk_delay=0.02)  # ~50 tokens/s, a full turn takes ~2 s
    with connected(backend) as (_, c):
        _, scene = _scene(c, "Mara")
        scene.say("Traveler", "Hm?")
        stream = scene.stream("Mara")
        next(iter(stream))
        stream.cancel()
        at_cancel = backend.tokens_generated
        time.sleep(0.3)
        after = backend.tokens_generated - at_cancel
        # A few in flight at most (one chunk_delay is 0.02 s); the whole turn has ~45 tokens.
        assert after <= 2, after
        with pytest.raises(ServerError) as e:
            stream.wait()
        assert e.value.code == "CANCELLED"
        # The character is free again: the next turn runs to its end.
        assert scene.turn("Mara", private=False).finish_reason == "stop"


def test_deadline_is_honoured_and_stops_generation():
    backend = mock(chunk_delay=0.02)
    with connected(backend) as (_, c):
        _, scene = _scene(c, "Mara")
        scene.say("Traveler", "Hm?")
        t0 = time.perf_counter()
        with pytest.raises(ServerError) as e:
            scene.turn("Mara", timeout=0.25)
        assert e.value.code == "DEADLINE_EXCEEDED"
        assert time.perf_counter() - t0 < 1.0
        time.sleep(0.1)
        frozen = backend.tokens_generated
        time.sleep(0.3)
        assert backend.tokens_generated - frozen <= 1


def test_many_concurrent_streams_complete_without_mixing():
    n = 24
    backend = mock(chunk_delay=0.001)
    with connected(backend) as (_, c):
        scenes = []
        for i in range(n // 2):
            _, s = _scene(c, f"Npc{i}a", f"Npc{i}b", player=f"P{i}")
            s.say(f"P{i}", "Speak.")
            scenes.append((s, f"Npc{i}a"))
            scenes.append((s, f"Npc{i}b"))
        results: dict[int, object] = {}

        def run(k: int) -> None:
            s, who = scenes[k]
            try:
                results[k] = s.turn(who)
            except Exception as exc:  # recorded and asserted below
                results[k] = exc

        threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(results) == n
    for k, r in results.items():
        assert not isinstance(r, Exception), r
        assert r.character == scenes[k][1]
        assert r.speech == "The gate stays shut until dawn, traveler."  # not interleaved
        assert r.actions == ["crosses her arms"]


def test_health_and_reflection_are_registered():
    with running() as server:
        channel = grpc.insecure_channel(server.target)
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "her.v1.HerService"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        resp = next(iter(refl.ServerReflectionInfo(iter([req]), timeout=5)))
        names = {s.name for s in resp.list_services_response.service}
        assert {"her.v1.HerService", "grpc.health.v1.Health"} <= names
        channel.close()


def test_turn_summary_is_the_last_message_and_counts_tokens():
    with running() as server:
        channel = grpc.insecure_channel(server.target)
        from her_sdk.server._pb import pb_grpc

        stub = pb_grpc.HerServiceStub(channel)
        cid = stub.CreateCharacter(pb.CreateCharacterRequest(persona=pb.Persona(name="Mara"))).id
        sid = stub.CreateScene(pb.CreateSceneRequest(character_ids=[cid], players=["T"])).id
        stub.Say(pb.SayRequest(scene_id=sid, speaker="T", text="Hi"))
        msgs = list(stub.Turn(pb.TurnRequest(scene_id=sid, character="Mara"), timeout=10))
        assert all(not m.HasField("summary") for m in msgs[:-1])
        summary = msgs[-1].summary
        assert summary.character == "Mara" and summary.total_ms > 0
        assert summary.completion_tokens == server.model.tokens_generated
        assert summary.HasField("first_token_ms") and not summary.private_included
        channel.close()


def test_allowed_actions_of_a_character_and_of_one_turn_reach_the_grammar():
    grammars: list[str | None] = []

    class Recording(MockBackend):
        supports_grammar = True  # so that characters send their grammar (the mock ignores it)

        def stream(self, prompt, *, grammar=None, **kw):
            grammars.append(grammar)
            return super().stream(prompt, grammar=grammar, **kw)

    backend = Recording(lambda prompt: TURN)
    with connected(backend) as (server, c):
        mara = c.create_character("Mara", allowed_actions=["open the gate"])
        assert server.servicer.characters[mara].allowed_actions == ["open the gate"]
        scene = c.create_scene([mara], players="Traveler")
        scene.say("Traveler", "Hm?")
        reply = scene.turn("Mara")
        assert reply.actions == ["crosses her arms"]  # performed (the scripted turn)
        assert "open the gate" in grammars[-1]
        scene.turn("Mara", allowed_actions=["bow deeply"])
        assert "bow deeply" in grammars[-1] and "open the gate" not in grammars[-1]


def test_turn_shapes_of_a_character_and_of_one_turn_cross_the_wire():
    from her_sdk import TurnShape
    from her_sdk.server._convert import shape_from_pb

    long_turn = TURN.replace("</role_thinking>", "</role_thinking><role_action>sighs</role_action>")
    with connected(MockBackend(lambda prompt: long_turn)) as (server, c):
        mara = c.create_character("Mara", shape=TurnShape.GAME)
        assert server.servicer.characters[mara].shape == TurnShape.GAME
        scene = c.create_scene([mara], players="Traveler")
        scene.say("Traveler", "Hm?")
        assert scene.turn("Mara").actions == ["sighs"]  # one action, then the turn ends
        free = scene.turn("Mara", shape=TurnShape.FREE)
        assert free.actions == ["sighs", "crosses her arms"]
        assert free.speech == "The gate stays shut until dawn, traveler."
        # A bad shape is the client's error, and no character is made.
        bad = pb.CreateCharacterRequest(
            persona=pb.Persona(name="Jory"),
            settings=pb.CharacterSettings(shape=pb.TurnShape(max_actions=0)),
        )
        with pytest.raises(grpc.RpcError) as err:
            c.stub.CreateCharacter(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_actions" in err.value.details()
        huge = pb.TurnRequest(
            scene_id=scene.id, character="Mara", shape=pb.TurnShape(max_plan_chars=10**9)
        )
        with pytest.raises(grpc.RpcError) as err:
            list(c.stub.Turn(huge))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A preset with fields of its own: the preset's values where the message sets none.
    shape = shape_from_pb(pb.TurnShape(preset=pb.TURN_SHAPE_PRESET_GAME, max_sentences=1))
    assert shape == msgspec.structs.replace(TurnShape.GAME, max_sentences=1)
