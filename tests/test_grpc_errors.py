"""Bad input -> the status code her.proto documents, for every rpc, over gRPC and over Connect
(JSON over HTTP, with the HTTP status the Connect protocol gives that code); no UNKNOWN ever."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from typing import ClassVar

import grpc
import pytest
from _connect_client import error_code, stream, unary
from _grpc_util import running
from google.protobuf import json_format

from her_sdk import MockBackend
from her_sdk import _errors as errors
from her_sdk._backends._openai import OpenAIBackend
from her_sdk.server._pb import pb, pb_grpc
from her_sdk.server._status import STATUS, connect_code, status_for

TEXT = 100  # max_text_chars of the server under test
MSG = 64 * 1024  # max_message_bytes
BIG = "x" * (TEXT + 1)
MISSING_C = "c-" + "0" * 32
MISSING_S = "s-" + "0" * 32

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def api():
    with running(
        max_text_chars=TEXT,
        max_message_bytes=MSG,
        max_characters=6,
        max_scenes=3,
        expose_thoughts=True,  # SaveScene/LoadScene as bytes are tested here
        http_port=0,
    ) as s:
        channel = grpc.insecure_channel(s.target)
        stub = pb_grpc.HerServiceStub(channel)
        cid = stub.CreateCharacter(pb.CreateCharacterRequest(persona=pb.Persona(name="Mara"))).id
        sid = stub.CreateScene(pb.CreateSceneRequest(character_ids=[cid], players=["T"])).id
        yield stub, cid, sid, s
        channel.close()


def call(stub, method: str, request) -> grpc.StatusCode:
    try:
        result = getattr(stub, method)(request, timeout=10)
        if method == "Turn":
            list(result)
        return OK
    except grpc.RpcError as exc:
        assert exc.code() != grpc.StatusCode.UNKNOWN, exc.details()
        return exc.code()


def cases(cid: str, sid: str):
    """(rpc, request, expected status) — empty, oversized and unknown-id requests of each rpc."""
    P = pb.Persona
    return [
        # CreateCharacter
        ("CreateCharacter", pb.CreateCharacterRequest(), INVALID),
        ("CreateCharacter", pb.CreateCharacterRequest(persona=P()), INVALID),
        ("CreateCharacter", pb.CreateCharacterRequest(persona=P(name="A", profile=BIG)), EXHAUSTED),
        (
            "CreateCharacter",
            pb.CreateCharacterRequest(persona=P(name="A", others={"B": BIG})),
            EXHAUSTED,
        ),
        ("CreateCharacter", pb.CreateCharacterRequest(card_json="x" * MSG), EXHAUSTED),
        ("CreateCharacter", pb.CreateCharacterRequest(card_json="{not json"), INVALID),
        ("CreateCharacter", pb.CreateCharacterRequest(card_json='{"data": {}}'), INVALID),
        ("CreateCharacter", pb.CreateCharacterRequest(persona=P(name="a:b")), INVALID),
        (
            "CreateCharacter",
            pb.CreateCharacterRequest(
                persona=P(name="A"), settings=pb.CharacterSettings(temperature=-1)
            ),
            INVALID,
        ),
        (
            "CreateCharacter",
            pb.CreateCharacterRequest(
                persona=P(name="A"), settings=pb.CharacterSettings(max_memory=1)
            ),
            INVALID,
        ),
        # GetCharacter / DeleteCharacter
        ("GetCharacter", pb.GetCharacterRequest(), INVALID),
        ("GetCharacter", pb.GetCharacterRequest(character_id=BIG), EXHAUSTED),
        ("GetCharacter", pb.GetCharacterRequest(character_id=MISSING_C), NOT_FOUND),
        ("DeleteCharacter", pb.DeleteCharacterRequest(), INVALID),
        ("DeleteCharacter", pb.DeleteCharacterRequest(character_id=BIG), EXHAUSTED),
        ("DeleteCharacter", pb.DeleteCharacterRequest(character_id=MISSING_C), NOT_FOUND),
        # CreateScene (an empty scene is valid: participants can be added later)
        ("CreateScene", pb.CreateSceneRequest(name=BIG), EXHAUSTED),
        ("CreateScene", pb.CreateSceneRequest(players=["p"] * 300), EXHAUSTED),
        ("CreateScene", pb.CreateSceneRequest(character_ids=[MISSING_C]), NOT_FOUND),
        ("CreateScene", pb.CreateSceneRequest(character_ids=[cid]), INVALID),  # in another scene
        ("CreateScene", pb.CreateSceneRequest(players=["bad:name"]), INVALID),
        ("CreateScene", pb.CreateSceneRequest(players=["Ann", "Ann"]), INVALID),
        # GetScene / DeleteScene / SaveScene
        ("GetScene", pb.GetSceneRequest(), INVALID),
        ("GetScene", pb.GetSceneRequest(scene_id=BIG), EXHAUSTED),
        ("GetScene", pb.GetSceneRequest(scene_id=MISSING_S), NOT_FOUND),
        ("DeleteScene", pb.DeleteSceneRequest(), INVALID),
        ("DeleteScene", pb.DeleteSceneRequest(scene_id=BIG), EXHAUSTED),
        ("DeleteScene", pb.DeleteSceneRequest(scene_id=MISSING_S), NOT_FOUND),
        ("SaveScene", pb.SaveSceneRequest(), INVALID),
        ("SaveScene", pb.SaveSceneRequest(scene_id=BIG), EXHAUSTED),
        ("SaveScene", pb.SaveSceneRequest(scene_id=MISSING_S), NOT_FOUND),
        # AddParticipant
        ("AddParticipant", pb.AddParticipantRequest(), INVALID),
        ("AddParticipant", pb.AddParticipantRequest(scene_id=sid), INVALID),
        ("AddParticipant", pb.AddParticipantRequest(scene_id=sid, player=BIG), EXHAUSTED),
        ("AddParticipant", pb.AddParticipantRequest(scene_id=MISSING_S, player="Ann"), NOT_FOUND),
        (
            "AddParticipant",
            pb.AddParticipantRequest(scene_id=sid, character_id=MISSING_C),
            NOT_FOUND,
        ),
        ("AddParticipant", pb.AddParticipantRequest(scene_id=sid, player="Mara"), INVALID),
        # Say / Narrate
        ("Say", pb.SayRequest(), INVALID),
        ("Say", pb.SayRequest(scene_id=sid, speaker="T"), INVALID),  # nothing said or done
        ("Say", pb.SayRequest(scene_id=sid, speaker="T", text=BIG), EXHAUSTED),
        ("Say", pb.SayRequest(scene_id=sid, speaker="T", actions=[BIG]), EXHAUSTED),
        ("Say", pb.SayRequest(scene_id=MISSING_S, speaker="T", text="hi"), NOT_FOUND),
        ("Say", pb.SayRequest(scene_id=sid, speaker="Nobody", text="hi"), INVALID),
        ("Say", pb.SayRequest(scene_id=sid, speaker="T", text="hi", to=["Nobody"]), INVALID),
        ("Narrate", pb.NarrateRequest(), INVALID),
        ("Narrate", pb.NarrateRequest(scene_id=sid), INVALID),
        ("Narrate", pb.NarrateRequest(scene_id=sid, text=BIG), EXHAUSTED),
        ("Narrate", pb.NarrateRequest(scene_id=MISSING_S, text="Rain."), NOT_FOUND),
        # Turn
        ("Turn", pb.TurnRequest(), INVALID),
        ("Turn", pb.TurnRequest(scene_id=BIG), EXHAUSTED),
        ("Turn", pb.TurnRequest(scene_id=sid, character=BIG), EXHAUSTED),
        ("Turn", pb.TurnRequest(scene_id=MISSING_S), NOT_FOUND),
        ("Turn", pb.TurnRequest(scene_id=sid, character="Nobody"), NOT_FOUND),
        ("Turn", pb.TurnRequest(scene_id=sid, character="Mara", max_tokens=0), INVALID),
        ("Turn", pb.TurnRequest(scene_id=sid, character="Mara", temperature=-2), INVALID),
        # LoadScene
        ("LoadScene", pb.LoadSceneRequest(), INVALID),
        ("LoadScene", pb.LoadSceneRequest(data=b"\x00garbage"), INVALID),
        ("LoadScene", pb.LoadSceneRequest(data=b'{"kind": "scene", "version": 99}'), INVALID),
        ("LoadScene", pb.LoadSceneRequest(data=b"x" * MSG), EXHAUSTED),
        # Remember
        ("Remember", pb.RememberRequest(), INVALID),
        ("Remember", pb.RememberRequest(character_id=cid), INVALID),  # no text
        ("Remember", pb.RememberRequest(character_id=cid, text=BIG), EXHAUSTED),
        ("Remember", pb.RememberRequest(character_id=MISSING_C, text="x"), NOT_FOUND),
        ("Remember", pb.RememberRequest(character_id=cid, text="x", importance=11), INVALID),
        ("Remember", pb.RememberRequest(character_id=cid, text="x", importance=0), INVALID),
        # SetRelationship
        ("SetRelationship", pb.SetRelationshipRequest(), INVALID),
        ("SetRelationship", pb.SetRelationshipRequest(character_id=cid), INVALID),  # no who
        ("SetRelationship", pb.SetRelationshipRequest(character_id=cid, who="a:b"), INVALID),
        (
            "SetRelationship",
            pb.SetRelationshipRequest(character_id=cid, who="T", note=BIG),
            EXHAUSTED,
        ),
        ("SetRelationship", pb.SetRelationshipRequest(character_id=MISSING_C, who="T"), NOT_FOUND),
        # AllowReveal (this server exposes thoughts, so a non-secret is an error here)
        ("AllowReveal", pb.AllowRevealRequest(), INVALID),
        ("AllowReveal", pb.AllowRevealRequest(character_id=MISSING_C), NOT_FOUND),
        ("AllowReveal", pb.AllowRevealRequest(character_id=cid, secret=BIG), EXHAUSTED),
        ("AllowReveal", pb.AllowRevealRequest(character_id=cid, secret="no secret"), INVALID),
        # UpdateCharacter
        ("UpdateCharacter", pb.UpdateCharacterRequest(), INVALID),
        ("UpdateCharacter", pb.UpdateCharacterRequest(character_id=MISSING_C), NOT_FOUND),
        ("UpdateCharacter", pb.UpdateCharacterRequest(character_id=cid, goals=BIG), EXHAUSTED),
        ("UpdateCharacter", pb.UpdateCharacterRequest(character_id=cid, goals="a\0b"), INVALID),
        # GetServerInfo (nothing a client sends can make it fail; see the auth test)
        ("GetServerInfo", pb.GetServerInfoRequest(), OK),
    ]


def test_the_table_covers_every_rpc():
    rpcs = {m.name for m in pb.DESCRIPTOR.services_by_name["HerService"].methods}
    covered = {method for method, _, _ in cases("c", "s")}
    assert covered == rpcs, f"rpcs without rows: {sorted(rpcs - covered)}"


def connect_call(url: str, method: str, request) -> str:
    """The Connect code of `request` sent over JSON/HTTP ("ok" for success)."""
    body = json_format.MessageToDict(request)
    if method == "Turn":
        status, _, _, end = stream(url, method, body)
        assert status == 200  # streams carry their error in the end-of-stream message
        return end["error"]["code"] if "error" in end else "ok"
    status, answer = unary(url, method, body)
    code = error_code(status, answer)
    assert code != "unknown", answer
    return code


def test_bad_input_table(api):
    stub, cid, sid, _ = api
    wrong = []
    for method, request, expected in cases(cid, sid):
        got = call(stub, method, request)
        if got != expected:
            wrong.append(f"{method}({request}) -> {got.name}, documented {expected.name}")
    assert not wrong, "\n".join(wrong)
    # Nothing was half-created by the failures.
    _assert_unchanged(stub, cid, sid)


def test_bad_input_table_over_connect(api):
    stub, cid, sid, server = api
    wrong = []
    for method, request, expected in cases(cid, sid):
        got = connect_call(server.http_url, method, request)
        want = "ok" if expected == OK else connect_code(expected)
        if got != want:
            wrong.append(f"{method}({request}) -> {got}, documented {want}")
    assert not wrong, "\n".join(wrong)
    _assert_unchanged(stub, cid, sid)


def _assert_unchanged(stub, cid, sid):
    info = stub.GetScene(pb.GetSceneRequest(scene_id=sid))
    assert [p.name for p in info.characters] == ["Mara"] and list(info.players) == ["T"]
    assert stub.GetCharacter(pb.GetCharacterRequest(character_id=cid)).scene_id == sid


def test_count_limits_are_resource_exhausted(api):
    stub, _, sid, _ = api
    made = []
    with pytest.raises(grpc.RpcError) as e:
        for i in range(10):
            req = pb.CreateCharacterRequest(persona=pb.Persona(name=f"N{i}"))
            made.append(stub.CreateCharacter(req).id)
    assert e.value.code() == EXHAUSTED and len(made) == 5  # 6 in all, Mara included
    for cid in made:
        stub.DeleteCharacter(pb.DeleteCharacterRequest(character_id=cid))
    with pytest.raises(grpc.RpcError) as e:
        for _ in range(5):
            stub.CreateScene(pb.CreateSceneRequest())
    assert e.value.code() == EXHAUSTED
    data = stub.SaveScene(pb.SaveSceneRequest(scene_id=sid)).data
    assert call(stub, "LoadScene", pb.LoadSceneRequest(data=data)) == EXHAUSTED  # 3 scenes


def test_engine_failure_is_internal_and_unexpected_errors_are_not_unknown(caplog):
    def broken(prompt: str) -> str:
        raise RuntimeError("engine on fire")

    with running(MockBackend(broken)) as server:
        channel = grpc.insecure_channel(server.target)
        stub = pb_grpc.HerServiceStub(channel)
        cid = stub.CreateCharacter(pb.CreateCharacterRequest(persona=pb.Persona(name="Mara"))).id
        sid = stub.CreateScene(pb.CreateSceneRequest(character_ids=[cid], players=["T"])).id
        assert call(stub, "Turn", pb.TurnRequest(scene_id=sid)) == grpc.StatusCode.INTERNAL

        # A bug in a handler (simulated) is INTERNAL with a generic message, logged in full.
        def bug(*a, **k):
            raise ZeroDivisionError("secret internals")

        server.servicer._scene_msg = bug
        with pytest.raises(grpc.RpcError) as e:
            stub.GetScene(pb.GetSceneRequest(scene_id=sid), timeout=5)
        assert e.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in e.value.details()
        assert "ZeroDivisionError" in caplog.text
        channel.close()


# -- the status table (server/_status.py) --------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.NotFoundError("x"), NOT_FOUND),
        (errors.LimitExceededError("x"), EXHAUSTED),
        (errors.AuthenticationError("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.ContextOverflowError("x"), EXHAUSTED),
        (errors.Cancelled("x"), grpc.StatusCode.CANCELLED),
        (errors.ConfigError("x"), INVALID),
        (errors.DataError("x"), INVALID),
        (errors.StateError("x"), INVALID),
        (errors.MissingDependencyError("grpcio", "grpc"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.InvalidModelError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.VerificationError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.BackendUnavailableError("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.BackendHTTPError("x", status=503), grpc.StatusCode.UNAVAILABLE),
        (errors.BackendHTTPError("x", status=408), grpc.StatusCode.UNAVAILABLE),
        (errors.BackendHTTPError("x", status=429), EXHAUSTED),
        (errors.BackendHTTPError("x", status=401), grpc.StatusCode.INTERNAL),
        (errors.BackendHTTPError("x", status=0), grpc.StatusCode.INTERNAL),
        (errors.GenerationError("x"), grpc.StatusCode.INTERNAL),
        (errors.ServerError("INTERNAL", "x"), grpc.StatusCode.INTERNAL),
        (ValueError("x"), grpc.StatusCode.INTERNAL),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.name,
)
def test_status_of_every_error_class(exc, code):
    assert status_for(exc)[0] == code


def test_every_error_class_has_its_own_row_or_a_base_row():
    rows = {kind for kind, _ in STATUS}
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert any(issubclass(cls, kind) for kind in rows), name
    # first match wins: a class never sits below one of its bases
    order = [kind for kind, _ in STATUS]
    for i, kind in enumerate(order):
        assert not any(issubclass(kind, base) for base in order[:i]), kind


class _ModelServer(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server that fails: HTTP `status`, a body quoting the prompt."""

    status = 503
    prompts: ClassVar[list[str]] = []

    def do_POST(self):
        prompt = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.prompts.append(prompt)
        body = f"error while serving: {prompt}".encode()
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("status", "code"), [(503, "UNAVAILABLE"), (400, "INTERNAL")])
def test_model_server_http_error_maps_by_status_and_never_echoes_the_prompt(status, code, caplog):
    handler = type("H", (_ModelServer,), {"status": status, "prompts": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    caplog.set_level(logging.INFO, logger="her_sdk")
    try:
        backend = OpenAIBackend(f"http://127.0.0.1:{httpd.server_address[1]}/v1", "m")
        with running(backend) as server:
            channel = grpc.insecure_channel(server.target)
            stub = pb_grpc.HerServiceStub(channel)
            req = pb.CreateCharacterRequest(
                persona=pb.Persona(name="Mara", secrets="she let her brother through")
            )
            cid = stub.CreateCharacter(req).id
            sid = stub.CreateScene(pb.CreateSceneRequest(character_ids=[cid], players=["T"])).id
            with pytest.raises(grpc.RpcError) as e:
                list(stub.Turn(pb.TurnRequest(scene_id=sid), timeout=10))
            channel.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "brother" in handler.prompts[0]  # the answer quoted the private prompt
    assert e.value.code().name == code
    assert f"HTTP {status}" in e.value.details()
    assert "brother" not in e.value.details() and "brother" not in caplog.text
    assert f"HTTP {status}" in caplog.text  # the operator still learns what happened


def test_unreachable_model_server_is_unavailable():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with running(OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", timeout=5)) as server:
        channel = grpc.insecure_channel(server.target)
        stub = pb_grpc.HerServiceStub(channel)
        cid = stub.CreateCharacter(pb.CreateCharacterRequest(persona=pb.Persona(name="Mara"))).id
        sid = stub.CreateScene(pb.CreateSceneRequest(character_ids=[cid], players=["T"])).id
        assert call(stub, "Turn", pb.TurnRequest(scene_id=sid)) == grpc.StatusCode.UNAVAILABLE
        channel.close()
