"""her_sdk values <-> her.v1 messages (server/_convert.py): every field survives a round trip,
and a summary without private channels holds no private text."""

from __future__ import annotations

import msgspec
import pytest

pytest.importorskip("grpc", reason="needs the grpc extra")

from her_sdk import Delta, Event, Persona, Reply, Segment
from her_sdk._actions import Call, InvalidCall
from her_sdk._secrets import BlockedReveal
from her_sdk.format import CHANNELS
from her_sdk.server import _convert as cv
from her_sdk.server._pb import pb

PERSONA = Persona(
    name="Mara",
    source="Vell",
    profile="Gate captain.",
    background="Raised in the barracks.",
    scenario="Night at the north gate.",
    goals="keep the gate shut",
    secrets="she let her brother through",
    relationships={"Jory": "distrusts him"},
    others={"Jory": "a smuggler", "Duke": "her lord"},
)
EVENT = Event(
    index=7,
    kind="turn",
    speaker="Mara",
    speech="Halt.",
    actions=["raises a hand", "steps forward"],
    perceivers=["Mara", "Traveler"],
)
REPLY = Reply(
    character="Mara",
    speech="The gate stays shut.",
    actions=["crosses her arms"],
    plan="She should stall him.",
    thoughts=["His papers look forged.", "Where is Jory?"],
    segments=[
        Segment("plan", "She should stall him."),
        Segment("thought", "His papers look forged."),
        Segment("action", "crosses her arms"),
        Segment("thought", "Where is Jory?"),
        Segment("speech", "The gate stays shut."),
    ],
    raw="<system_thinking>She should stall him.</system_thinking>Mara: ...",
    finish_reason="length",
    prompt_tokens=417,
    completion_tokens=33,
    first_token_s=0.125,
    first_speech_s=0.5,
    total_s=1.25,
    calls=[Call("give", {"item": "key", "to": "Traveler"}), Call("open_gate")],
    invalid_calls=[InvalidCall(text="[fly]", error="no action named 'fly'")],
    blocked_reveals=[
        BlockedReveal(character="Mara", secret="she let her brother", text="I le", channel="action")
    ],
)


def _defaults(struct: msgspec.Struct) -> list[str]:
    """Fields of `struct` left at their default: a round trip would not test them."""
    out = []
    for f in msgspec.structs.fields(struct):
        default = f.default_factory() if f.default_factory is not msgspec.NODEFAULT else f.default
        if getattr(struct, f.name) == default:
            out.append(f.name)
    return out


def _unset(msg) -> list[str]:
    set_fields = {f.name for f, _ in msg.ListFields()}
    return [f.name for f in msg.DESCRIPTOR.fields if f.name not in set_fields]


@pytest.mark.parametrize("value", [PERSONA, EVENT, REPLY], ids=["persona", "event", "reply"])
def test_samples_set_every_field(value):
    assert _defaults(value) == []  # a field added later must be added to the sample (and here)


def test_persona_round_trip():
    msg = cv.persona_to_pb(PERSONA)
    assert _unset(msg) == []
    assert cv.persona_from_pb(msg) == PERSONA


def test_persona_from_pb_validates_the_name():
    from her_sdk import ConfigError

    with pytest.raises(ConfigError):
        cv.persona_from_pb(pb.Persona(name="  "))
    with pytest.raises(ConfigError):
        cv.persona_from_pb(pb.Persona(name="Mara: x"))


@pytest.mark.parametrize("kind", ["speech", "narration", "turn"])
def test_event_round_trip(kind):
    event = msgspec.structs.replace(EVENT, kind=kind)
    msg = cv.event_to_pb(event)
    assert _unset(msg) == []
    assert msg.kind == cv.EVENT_KIND[kind] != pb.EVENT_KIND_UNSPECIFIED
    assert cv.event_from_pb(msg) == event


@pytest.mark.parametrize("channel", CHANNELS)
def test_delta_and_segment_round_trip(channel):
    delta = Delta(channel, " the gate", 3)
    msg = cv.delta_to_pb(delta)
    assert _unset(msg) == []
    assert cv.delta_from_pb(msg) == delta
    segment = Segment(channel, "the gate")
    assert cv.segment_from_pb(cv.segment_to_pb(segment)) == segment


def test_every_channel_and_kind_has_a_distinct_wire_value():
    assert set(cv.CHANNEL) == set(CHANNELS)
    assert sorted(cv.CHANNEL.values()) == sorted(
        v.number for v in pb.Channel.DESCRIPTOR.values if v.number != pb.CHANNEL_UNSPECIFIED
    )
    assert sorted(cv.EVENT_KIND.values()) == sorted(
        v.number for v in pb.EventKind.DESCRIPTOR.values if v.number != pb.EVENT_KIND_UNSPECIFIED
    )


def test_unknown_channel_is_a_clear_error():
    from her_sdk import ConfigError

    with pytest.raises(ConfigError, match="Channel"):
        cv.delta_from_pb(pb.Delta(channel=pb.CHANNEL_UNSPECIFIED, text="x"))


def test_reply_round_trip_with_private_channels():
    msg = cv.reply_to_pb(REPLY, private=True)
    assert _unset(msg) == []
    assert msg.private_included
    assert msg.total_ms == pytest.approx(1250.0)
    assert msg.first_token_ms == pytest.approx(125.0)
    back = cv.reply_from_pb(msg)
    assert back == REPLY


def test_reply_without_private_channels_holds_no_private_text():
    msg = cv.reply_to_pb(REPLY, private=False)
    assert not msg.private_included
    wire = msg.SerializeToString()
    for secret in (REPLY.plan, *REPLY.thoughts, REPLY.raw, REPLY.blocked_reveals[0].secret):
        assert secret.encode() not in wire
    back = cv.reply_from_pb(msg)
    public = [s for s in REPLY.segments if s.channel in ("action", "speech")]
    blocked = [msgspec.structs.replace(b, secret="", text="") for b in REPLY.blocked_reveals]
    assert back == msgspec.structs.replace(
        REPLY, plan="", thoughts=[], raw="", segments=public, blocked_reveals=blocked
    )


def test_reply_timings_absent_stay_absent():
    r = msgspec.structs.replace(REPLY, first_token_s=None, first_speech_s=None)
    msg = cv.reply_to_pb(r, private=True)
    assert not msg.HasField("first_token_ms") and not msg.HasField("first_speech_ms")
    back = cv.reply_from_pb(msg)
    assert back.first_token_s is None and back.first_speech_s is None
