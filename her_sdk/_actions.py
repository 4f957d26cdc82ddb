"""Typed actions: what a character may *do* that the game can execute, and the calls it made.

    mara = Character(name="Mara", model=model, typed_actions=[
        Action("give", "hand something over", item=["key", "coin"], to=Target.ANYONE),
        Action("open_gate", "open the city gate"),
        Action("attack", target=Target.CHARACTER),
    ])
    reply = scene.turn("Mara")
    reply.calls  # [Call("give", {"item": "key", "to": "Traveler"})]

An action has a name and typed arguments: a list of legal values, a `Target` (names of who is in
the scene, filled in at each turn) or `Text(max_chars)` (a short free text). A character with
typed actions may write a call inside `<role_action>` in the form `her_sdk.format` defines
(`[give item=key, to=Traveler]`); with a grammar, decoding can produce only declared actions
with legal arguments. Without one (a mock, a remote server), each call the model writes is
checked and an invalid one is kept out of `Reply.calls` and reported, with the reason, in
`Reply.invalid_calls`.

`allowed_actions` (a closed list of free-text actions, "nods", "opens the gate") is the
simpler tool: it decides what the visible action text may be. Typed actions add calls the game
executes; both may be given, and then an action is either one of the allowed texts or a call.

`Action.regard()` is the one action the character itself acts on: a call of it updates how the
character regards someone (`Persona.relationships`), which is saved with its state.

This module validates and converts; the call syntax and its grammar live in `her_sdk.format`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence

import msgspec

from ._errors import ConfigError
from ._names import unnameable
from .format import CallSpec, ParamSpec, parse_call

__all__ = ["Action", "ActionState", "Call", "InvalidCall", "Target", "Text"]

_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
# Characters a value cannot hold: they delimit a call ("[give item=key, to=Mara]").
_VALUE_FORBIDDEN = set(",]=[<>\n")


class Target(str, enum.Enum):
    """An argument naming someone in the scene; legal values are filled in at each turn.

    CHARACTER: another character; PLAYER: a player; ANYONE: either (never the actor itself).
    Outside a scene the names the character knows of (its persona's `others` and
    `relationships`, and who it has heard) are legal for all three.
    """

    CHARACTER = "character"
    PLAYER = "player"
    ANYONE = "anyone"


class Text(msgspec.Struct, frozen=True):
    """A free-text argument of at most `max_chars` characters (no ',', '=', brackets)."""

    max_chars: int = 60

    def __post_init__(self) -> None:
        if not isinstance(self.max_chars, int) or not 1 <= self.max_chars <= 200:
            raise ConfigError("Text max_chars must be an integer from 1 to 200")


Param = Sequence[str] | Target | Text


class Call(msgspec.Struct, frozen=True):
    """A call of a typed action that the character made: `Call("give", {"item": "key"})`."""

    name: str
    args: dict[str, str] = msgspec.field(default_factory=dict)


class InvalidCall(msgspec.Struct, frozen=True, kw_only=True):
    """A call the model wrote that is not a legal call of a declared action, and why."""

    text: str
    error: str


class ActionState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An action as saved. `params` values: a list (legal values), a `Target` value, or an int
    (the `max_chars` of a `Text`)."""

    name: str
    description: str = ""
    params: dict[str, list[str] | str | int] = msgspec.field(default_factory=dict)
    regard: bool = False


class Action:
    """A typed action the character may take: `Action("give", "hand over", item=["key"])`.

    The name and argument names are lower-case identifiers. Every argument is required; its
    type is a list of legal values, a `Target`, or a `Text`.
    """

    def __init__(self, name: str, description: str = "", /, **params: Param) -> None:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ConfigError(
                f"action name {name!r} must be a lower-case identifier (letters, digits, '_')"
            )
        self.name = name
        self.description = " ".join(str(description).split())
        self.params: dict[str, list[str] | Target | Text] = {}
        self._regard = False
        for key, kind in params.items():
            if not _NAME_RE.fullmatch(key):
                raise ConfigError(
                    f"argument name {key!r} of {name!r} must be a lower-case identifier"
                )
            if isinstance(kind, (Target, Text)):
                self.params[key] = kind
                continue
            if isinstance(kind, str) or not isinstance(kind, Sequence) or not kind:
                raise ConfigError(
                    f"argument {key!r} of {name!r} takes a non-empty list of values, a Target "
                    f"or a Text, not {kind!r}"
                )
            values = []
            for v in kind:
                v = " ".join(str(v).split())
                if not v or set(v) & _VALUE_FORBIDDEN or unnameable(v) is not None:
                    raise ConfigError(
                        f"value {v!r} of {name}.{key} must be non-empty, without , = [ ] < >, "
                        "line breaks or control characters"
                    )
                values.append(v)
            if len(set(values)) != len(values):
                raise ConfigError(f"values of {name}.{key} repeat")
            self.params[key] = values

    @classmethod
    def regard(cls, max_chars: int = 80) -> Action:
        """The action of changing how the character regards someone:
        `[regard who=Traveler, view=owes me his life]` sets `relationships["Traveler"]`."""
        action = cls(
            "regard",
            "change how you see someone",
            who=Target.ANYONE,
            view=Text(max_chars),
        )
        action._regard = True
        return action

    @property
    def updates_relationship(self) -> bool:
        return self._regard

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"Action({self.name!r}{args})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Action):
            return NotImplemented
        return self.to_state() == other.to_state()

    __hash__ = None  # type: ignore[assignment]

    # -- what is legal now ---------------------------------------------------------------------

    def spec(self, names: Mapping[Target, Sequence[str]]) -> CallSpec | None:
        """The grammar's view of this action, with `names` for each `Target`; None when some
        argument has no legal value now (nobody to attack), so the action cannot be called."""
        params: list[tuple[str, ParamSpec]] = []
        for key, kind in self.params.items():
            if isinstance(kind, Target):
                legal = [n for n in names.get(kind, ()) if not set(n) & _VALUE_FORBIDDEN]
                if not legal:
                    return None
                params.append((key, legal))
            elif isinstance(kind, Text):
                params.append((key, kind.max_chars))
            else:
                params.append((key, list(kind)))
        return (self.name, params)

    def check(self, call: Call, names: Mapping[Target, Sequence[str]]) -> None:
        """Raise `ConfigError` unless `call` is a legal call of this action now."""
        if call.name != self.name:
            raise ConfigError(f"{call.name!r} is not the action {self.name!r}")
        missing = [k for k in self.params if k not in call.args]
        extra = [k for k in call.args if k not in self.params]
        if missing or extra:
            why = []
            if missing:
                why.append(f"missing {', '.join(missing)}")
            if extra:
                why.append(f"unknown {', '.join(extra)}")
            raise ConfigError(f"call of {self.name!r}: {'; '.join(why)}")
        for key, kind in self.params.items():
            value = call.args[key]
            if isinstance(kind, Text):
                if not value or len(value) > kind.max_chars or set(value) & _VALUE_FORBIDDEN:
                    raise ConfigError(
                        f"{self.name}.{key} must be 1-{kind.max_chars} characters without "
                        ", = [ ] < >"
                    )
                continue
            legal = names.get(kind, ()) if isinstance(kind, Target) else kind
            if value not in legal:
                shown = ", ".join(map(repr, legal)) or "nobody here"
                raise ConfigError(f"{self.name}.{key} is {value!r}; legal: {shown}")

    # -- saving ---------------------------------------------------------------------------------

    def to_state(self) -> ActionState:
        params: dict[str, list[str] | str | int] = {}
        for key, kind in self.params.items():
            if isinstance(kind, Target):
                params[key] = kind.value
            elif isinstance(kind, Text):
                params[key] = kind.max_chars
            else:
                params[key] = list(kind)
        return ActionState(
            name=self.name, description=self.description, params=params, regard=self._regard
        )

    @classmethod
    def from_state(cls, state: ActionState) -> Action:
        params: dict[str, Param] = {}
        for key, kind in state.params.items():
            if isinstance(kind, str):
                try:
                    params[key] = Target(kind)
                except ValueError:
                    raise ConfigError(f"{state.name}.{key}: unknown target {kind!r}") from None
            elif isinstance(kind, int):
                params[key] = Text(kind)
            else:
                params[key] = kind
        action = cls(state.name, state.description, **params)
        action._regard = state.regard
        return action


def check_actions(actions: Sequence[Action]) -> list[Action]:
    """The actions as a list, refusing non-Actions and repeated names."""
    out = list(actions)
    for a in out:
        if not isinstance(a, Action):
            raise ConfigError(f"actions takes Action objects, not {a!r}")
    names = [a.name for a in out]
    if len(set(names)) != len(names):
        raise ConfigError("action names must be unique")
    return out


def read_calls(
    action_texts: Sequence[str],
    actions: Sequence[Action],
    names: Mapping[Target, Sequence[str]],
) -> tuple[list[Call], list[InvalidCall]]:
    """The calls among a turn's action texts: legal ones, and invalid ones with the reason.

    An action text that is not written as a call is free text and neither.
    """
    by_name = {a.name: a for a in actions}
    calls: list[Call] = []
    invalid: list[InvalidCall] = []
    for text in action_texts:
        try:
            parsed = parse_call(text)
        except ConfigError as exc:
            invalid.append(InvalidCall(text=text, error=str(exc)))
            continue
        if parsed is None:
            continue
        name, args = parsed
        call = Call(name, args)
        action = by_name.get(name)
        try:
            if action is None:
                known = ", ".join(by_name) or "none"
                raise ConfigError(f"no action named {name!r} (declared: {known})")
            action.check(call, names)
        except ConfigError as exc:
            invalid.append(InvalidCall(text=text, error=str(exc)))
            continue
        calls.append(call)
    return calls, invalid
