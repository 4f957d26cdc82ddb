"""her_sdk values <-> her.v1 protobuf messages: the one translation, used by server and client.

    Persona  <-> pb.Persona
    Event    <-> pb.Event         (event kind "speech" | "narration" | "turn" <-> pb.EventKind)
    Delta    <-> pb.Delta         (channel "plan" | "thought" | "action" | "speech" <-> pb.Channel)
    Segment  <-> pb.Segment
    Reply    <-> pb.TurnSummary   (`private=False` leaves plan, thoughts, raw, private
                                   segments and the text of blocked reveals out: the message
                                   then holds only public text)
    Action   <-> pb.ActionSpec    (a typed action; Target <-> pb.Target)
    Call     <-> pb.Call
    Character keyword arguments <-> pb.CharacterSettings  (settings_from_pb / settings_to_pb)
    persona changes              <-  pb.UpdateCharacterRequest (persona_update_from_pb)
    model description            ->  pb.ServerInfo           (server_info_to_pb)

Durations are seconds in her_sdk and milliseconds on the wire. This module only converts: ids,
limits and the registry of live objects are the service's (`_service.py`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from .._actions import Action, Call, InvalidCall, Target, Text
from .._errors import ConfigError
from .._persona import Persona
from .._scene import Event
from .._secrets import BlockedReveal
from .._turn import Reply
from ..format import PUBLIC_CHANNELS, Channel, Delta, Segment, TurnShape
from ._pb import pb

__all__ = [
    "CHANNEL",
    "EVENT_KIND",
    "TARGET",
    "action_from_pb",
    "action_to_pb",
    "call_from_pb",
    "call_to_pb",
    "channel_from_pb",
    "delta_from_pb",
    "delta_to_pb",
    "event_from_pb",
    "event_to_pb",
    "persona_from_pb",
    "persona_to_pb",
    "persona_update_from_pb",
    "priority_from_pb",
    "priority_to_pb",
    "reply_from_pb",
    "reply_to_pb",
    "segment_from_pb",
    "segment_to_pb",
    "server_info_to_pb",
    "settings_from_pb",
    "settings_to_pb",
]

CHANNEL: dict[Channel, pb.Channel] = {
    "plan": pb.CHANNEL_PLAN,
    "thought": pb.CHANNEL_THOUGHT,
    "action": pb.CHANNEL_ACTION,
    "speech": pb.CHANNEL_SPEECH,
}
EVENT_KIND: dict[str, pb.EventKind] = {
    "speech": pb.EVENT_KIND_SPEECH,
    "narration": pb.EVENT_KIND_NARRATION,
    "turn": pb.EVENT_KIND_TURN,
}
TARGET: dict[Target, pb.Target] = {
    Target.CHARACTER: pb.TARGET_CHARACTER,
    Target.PLAYER: pb.TARGET_PLAYER,
    Target.ANYONE: pb.TARGET_ANYONE,
}
_TARGET_NAME: dict[int, Target] = {v: k for k, v in TARGET.items()}
_CHANNEL_NAME: dict[int, Channel] = {v: k for k, v in CHANNEL.items()}
_EVENT_KIND_NAME: dict[int, str] = {v: k for k, v in EVENT_KIND.items()}


def channel_from_pb(value: int) -> Channel:
    try:
        return _CHANNEL_NAME[value]
    except KeyError:
        raise ConfigError(f"unknown her.v1.Channel value {value}") from None


PRIORITY: dict[str, pb.TurnPriority] = {
    "background": pb.TURN_PRIORITY_BACKGROUND,
    "normal": pb.TURN_PRIORITY_NORMAL,
    "player": pb.TURN_PRIORITY_PLAYER,
}
_PRIORITY_NAME: dict[int, str] = {v: k for k, v in PRIORITY.items()}


def priority_to_pb(priority: str) -> pb.TurnPriority:
    try:
        return PRIORITY[priority]
    except KeyError:
        names = ", ".join(PRIORITY)
        raise ConfigError(f"priority must be one of {names}, not {priority!r}") from None


def priority_from_pb(value: int) -> str:
    """A TurnPriority as her_sdk's priority name; unset is "normal"."""
    if value == pb.TURN_PRIORITY_UNSPECIFIED:
        return "normal"
    try:
        return _PRIORITY_NAME[value]
    except KeyError:
        raise ConfigError(f"unknown her.v1.TurnPriority value {value}") from None


# -- Persona ---------------------------------------------------------------------------------


def persona_to_pb(p: Persona) -> pb.Persona:
    return pb.Persona(
        name=p.name,
        source=p.source,
        profile=p.profile,
        background=p.background,
        scenario=p.scenario,
        goals=p.goals,
        secrets=p.secrets,
        relationships=p.relationships,
        others=p.others,
    )


def persona_from_pb(m: pb.Persona) -> Persona:
    """A validated Persona (ConfigError for an empty or malformed name)."""
    return Persona(
        name=m.name,
        source=m.source,
        profile=m.profile,
        background=m.background,
        scenario=m.scenario,
        goals=m.goals,
        secrets=m.secrets,
        relationships=dict(m.relationships),
        others=dict(m.others),
    )


# -- Event -----------------------------------------------------------------------------------


def event_to_pb(e: Event) -> pb.Event:
    return pb.Event(
        index=e.index,
        kind=EVENT_KIND.get(e.kind, pb.EVENT_KIND_UNSPECIFIED),
        speaker=e.speaker,
        speech=e.speech,
        actions=e.actions,
        perceivers=e.perceivers,
    )


def event_from_pb(m: pb.Event) -> Event:
    return Event(
        index=m.index,
        kind=_EVENT_KIND_NAME.get(m.kind, "speech"),
        speaker=m.speaker,
        speech=m.speech,
        actions=list(m.actions),
        perceivers=list(m.perceivers),
    )


# -- Delta, Segment --------------------------------------------------------------------------


def delta_to_pb(d: Delta) -> pb.Delta:
    return pb.Delta(channel=CHANNEL[d.channel], text=d.text, segment=d.segment)


def delta_from_pb(m: pb.Delta) -> Delta:
    return Delta(channel_from_pb(m.channel), m.text, m.segment)


def segment_to_pb(s: Segment) -> pb.Segment:
    return pb.Segment(channel=CHANNEL[s.channel], text=s.text)


def segment_from_pb(m: pb.Segment) -> Segment:
    return Segment(channel_from_pb(m.channel), m.text)


# -- typed actions and calls -----------------------------------------------------------------


def action_to_pb(a: Action) -> pb.ActionSpec:
    params = []
    for key, kind in a.params.items():
        if isinstance(kind, Target):
            params.append(pb.ActionParam(name=key, target=TARGET[kind]))
        elif isinstance(kind, Text):
            params.append(pb.ActionParam(name=key, text_max_chars=kind.max_chars))
        else:
            params.append(pb.ActionParam(name=key, values=pb.Values(values=list(kind))))
    return pb.ActionSpec(
        name=a.name, description=a.description, params=params, regard=a.updates_relationship
    )


def action_from_pb(m: pb.ActionSpec) -> Action:
    """The action `m` declares; a malformed one raises `ConfigError`."""
    if m.regard:
        kinds = {p.name: p.WhichOneof("kind") for p in m.params}
        if kinds != {"who": "target", "view": "text_max_chars"}:
            raise ConfigError("a regard action takes who (a target) and view (a text)")
        return Action.regard(next(p.text_max_chars for p in m.params if p.name == "view"))
    params: dict[str, list[str] | Target | Text] = {}
    for p in m.params:
        which = p.WhichOneof("kind")
        if which == "values":
            params[p.name] = list(p.values.values)
        elif which == "target":
            if p.target not in _TARGET_NAME:
                raise ConfigError(f"argument {p.name!r} of {m.name!r} has no target")
            params[p.name] = _TARGET_NAME[p.target]
        elif which == "text_max_chars":
            params[p.name] = Text(p.text_max_chars)
        else:
            raise ConfigError(f"argument {p.name!r} of {m.name!r} sets no kind")
    if len(params) != len(m.params):
        raise ConfigError(f"an argument of {m.name!r} is given twice")
    return Action(m.name, m.description, **params)


def call_to_pb(c: Call) -> pb.Call:
    return pb.Call(name=c.name, args=[pb.CallArg(name=k, value=v) for k, v in c.args.items()])


def call_from_pb(m: pb.Call) -> Call:
    return Call(m.name, {a.name: a.value for a in m.args})


# -- Reply -----------------------------------------------------------------------------------


def reply_to_pb(r: Reply, *, private: bool) -> pb.TurnSummary:
    """The turn's summary; without `private` no plan, thought or raw text is in it."""
    segments = [s for s in r.segments if private or s.channel in PUBLIC_CHANNELS]
    msg = pb.TurnSummary(
        character=r.character,
        speech=r.speech,
        actions=r.actions,
        plan=r.plan if private else "",
        thoughts=r.thoughts if private else [],
        segments=[segment_to_pb(s) for s in segments],
        finish_reason=r.finish_reason,
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        total_ms=r.total_s * 1000.0,
        private_included=private,
        raw=r.raw if private else "",
        calls=[call_to_pb(c) for c in r.calls],
        invalid_calls=[pb.InvalidCall(text=c.text, error=c.error) for c in r.invalid_calls],
        blocked_reveals=[
            pb.BlockedReveal(
                secret=b.secret if private else "",
                text=b.text if private else "",
                channel=CHANNEL[b.channel],
            )
            for b in r.blocked_reveals
        ],
    )
    if r.first_token_s is not None:
        msg.first_token_ms = r.first_token_s * 1000.0
    if r.first_speech_s is not None:
        msg.first_speech_ms = r.first_speech_s * 1000.0
    return msg


def reply_from_pb(m: pb.TurnSummary) -> Reply:
    return Reply(
        character=m.character,
        speech=m.speech,
        actions=list(m.actions),
        plan=m.plan,
        thoughts=list(m.thoughts),
        segments=[segment_from_pb(s) for s in m.segments],
        raw=m.raw,
        finish_reason=m.finish_reason,
        prompt_tokens=m.prompt_tokens,
        completion_tokens=m.completion_tokens,
        first_token_s=m.first_token_ms / 1000.0 if m.HasField("first_token_ms") else None,
        first_speech_s=m.first_speech_ms / 1000.0 if m.HasField("first_speech_ms") else None,
        total_s=m.total_ms / 1000.0,
        calls=[call_from_pb(c) for c in m.calls],
        invalid_calls=[InvalidCall(text=c.text, error=c.error) for c in m.invalid_calls],
        blocked_reveals=[
            BlockedReveal(
                character=m.character,
                secret=b.secret,
                text=b.text,
                channel=channel_from_pb(b.channel),
            )
            for b in m.blocked_reveals
        ],
    )


# -- CharacterSettings -----------------------------------------------------------------------

IMPORTANCE_RATING: dict[str, pb.ImportanceRating] = {
    "heuristic": pb.IMPORTANCE_RATING_HEURISTIC,
    "model": pb.IMPORTANCE_RATING_MODEL,
}
_IMPORTANCE_NAME: dict[int, str] = {v: k for k, v in IMPORTANCE_RATING.items()}
_SAMPLING_FIELDS = ("max_tokens", "temperature")
_OPTIONAL_SETTINGS = ("plan", "seed", "max_memory", "recall", "summarize", "max_long_term")


_SHAPE_PRESETS: dict[int, TurnShape] = {
    pb.TURN_SHAPE_PRESET_UNSPECIFIED: TurnShape(),
    pb.TURN_SHAPE_PRESET_GAME: TurnShape.GAME,
    pb.TURN_SHAPE_PRESET_FREE: TurnShape.FREE,
}
_SHAPE_FIELDS = TurnShape.__struct_fields__


def shape_from_pb(m: pb.TurnShape) -> TurnShape:
    """The preset `m` names with the fields it sets; a bad value is a ConfigError."""
    try:
        base = _SHAPE_PRESETS[m.preset]
    except KeyError:
        raise ConfigError(f"unknown her.v1.TurnShapePreset {m.preset}") from None
    fields = {f: getattr(base, f) for f in _SHAPE_FIELDS}
    fields.update({f: getattr(m, f) for f in _SHAPE_FIELDS if m.HasField(f)})
    return TurnShape(**fields)


def shape_to_pb(shape: TurnShape) -> pb.TurnShape:
    """Every field spelled out, so the server needs no preset to read it."""
    return pb.TurnShape(**{f: getattr(shape, f) for f in _SHAPE_FIELDS})


def settings_from_pb(m: pb.CharacterSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Character keyword arguments, Sampling overrides) for the fields `m` sets."""
    kwargs: dict[str, Any] = {f: getattr(m, f) for f in _OPTIONAL_SETTINGS if m.HasField(f)}
    if m.allowed_actions:
        kwargs["allowed_actions"] = list(m.allowed_actions)
    if m.actions:
        kwargs["typed_actions"] = [action_from_pb(a) for a in m.actions]
    if m.rate_importance != pb.IMPORTANCE_RATING_UNSPECIFIED:
        try:
            kwargs["rate_importance"] = _IMPORTANCE_NAME[m.rate_importance]
        except KeyError:
            raise ConfigError(f"unknown her.v1.ImportanceRating {m.rate_importance}") from None
    if m.HasField("shape"):
        kwargs["shape"] = shape_from_pb(m.shape)
    sampling = {f: getattr(m, f) for f in _SAMPLING_FIELDS if m.HasField(f)}
    return kwargs, sampling


def settings_to_pb(
    *,
    plan: bool | None = None,
    allowed_actions: list[str] | None = None,
    typed_actions: list[Action] | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    max_memory: int | None = None,
    recall: int | None = None,
    summarize: bool | None = None,
    rate_importance: str | None = None,
    max_long_term: int | None = None,
    shape: TurnShape | None = None,
) -> pb.CharacterSettings:
    """The message for Character-style settings; None leaves a field unset (the default)."""
    if rate_importance is not None and rate_importance not in IMPORTANCE_RATING:
        raise ConfigError("rate_importance must be 'heuristic' or 'model'")
    return pb.CharacterSettings(
        plan=plan,
        allowed_actions=list(allowed_actions or []),
        actions=[action_to_pb(a) for a in typed_actions or []],
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        max_memory=max_memory,
        recall=recall,
        summarize=summarize,
        rate_importance=IMPORTANCE_RATING[rate_importance] if rate_importance else None,
        max_long_term=max_long_term,
        shape=shape_to_pb(shape) if shape is not None else None,
    )


# -- persona updates -------------------------------------------------------------------------

_UPDATABLE = ("source", "profile", "background", "scenario", "goals", "secrets")


def persona_update_from_pb(p: Persona, m: pb.UpdateCharacterRequest) -> Persona:
    """`p` with the fields `m` sets, validated as a new persona (its name never changes)."""
    fields = msgspec.structs.asdict(p)
    fields.update({f: getattr(m, f) for f in _UPDATABLE if m.HasField(f)})
    return Persona(**fields)


# -- ServerInfo ------------------------------------------------------------------------------


def server_info_to_pb(
    version: str,
    model: dict[str, Any] | None,
    *,
    expose_thoughts: bool,
    named_saves: bool,
) -> pb.ServerInfo:
    """The server's description; `model` is `_backend.describe()` of the loaded model, or None
    while it loads (then `ready` is false)."""
    return pb.ServerInfo(
        version=version,
        ready=model is not None,
        expose_thoughts=expose_thoughts,
        named_saves=named_saves,
        **(model or {}),
    )
