"""One turn of a character: where it sits (its `Seat` in a scene: the turn's seed, where the
finished turn goes), how its text is read as it streams, and what it gives back.

`TurnReader` reads the model's text as it arrives: the HER parser turns it into deltas, the
secrets guard holds back and stops public text that would reveal a secret, and what was let
through is kept as the turn that was said. `TurnStream` hands those deltas to the caller and
ends with the `Reply`. Nothing here chooses a prompt, calls a model or remembers a turn: that
is the character's (`_character`).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import Protocol

import msgspec

from ._actions import Call, InvalidCall
from ._backends._base import CancelToken, TextStream
from ._errors import Cancelled
from ._secrets import BlockedReveal, SecretsGuard
from .format import (
    PRIVATE_CHANNELS,
    Channel,
    Delta,
    Prompt,
    Segment,
    ShapeGuard,
    Turn,
    TurnParser,
)

__all__ = ["Reply", "Seat", "Speaker", "TurnReader", "TurnStream", "mix_seed"]


def mix_seed(seed: int, n: int) -> int:
    """The seed of turn `n` of something seeded with `seed` (a character, a scene)."""
    # SplitMix64 step: per-turn seeds that differ widely for consecutive turns.
    z = (seed + 0x9E3779B97F4A7C15 * (n + 1)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFF


class Seat(Protocol):
    """What a character in a scene uses of it. `Scene.add` hands one to the character."""

    def turn_seed(self) -> int | None:
        """The seed of the character's next turn, or None when the scene sets no seed."""
        ...

    def publish(self, turn: Turn) -> None:
        """Let everyone present perceive the public part of the character's finished turn."""
        ...

    def others(self) -> tuple[list[str], list[str]]:
        """(characters, players) present now, the character itself left out."""
        ...

    def report(self, blocked: BlockedReveal) -> None:
        """Tell the game that the secrets guard stopped a reveal."""
        ...


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """One finished turn of a character.

    Public: `speech`, `actions` (as written, calls in their bracket form). Private: `plan`,
    `thoughts` (yours to show in a debug view or a "read mind" mechanic; other characters never
    see them). `raw` is the model's text.

    For the game: `calls`, the legal calls of typed actions the character made, in order;
    `invalid_calls`, calls it wrote that were not legal (only possible without a grammar);
    `blocked_reveals`, secrets the guard stopped it from saying (`finish_reason` is then
    "blocked": the turn ends where the reveal began).

    `finish_reason`: "stop" (the turn ended), "length" (its token budget ended it),
    "plan_length" (the budget ended it inside its plan: nothing was said; raise
    `max_tokens` or lower the shape's `max_plan_chars`), "cancelled" or "blocked".
    """

    character: str
    speech: str = ""
    actions: list[str] = msgspec.field(default_factory=list)
    plan: str = ""
    thoughts: list[str] = msgspec.field(default_factory=list)
    segments: list[Segment] = msgspec.field(default_factory=list)
    raw: str = ""
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_s: float | None = None
    first_speech_s: float | None = None
    total_s: float = 0.0
    calls: list[Call] = msgspec.field(default_factory=list)
    invalid_calls: list[InvalidCall] = msgspec.field(default_factory=list)
    blocked_reveals: list[BlockedReveal] = msgspec.field(default_factory=list)

    @property
    def turn(self) -> Turn:
        return Turn.from_segments(self.segments)

    @property
    def public_text(self) -> str:
        """What onlookers perceive: actions in parentheses, then speech."""
        parts = [f"({a})" for a in self.actions]
        if self.speech:
            parts.append(self.speech)
        return " ".join(parts)


class Speaker(Protocol):
    """Whose turn a `TurnStream` is (a `Character`)."""

    @property
    def name(self) -> str: ...


class TurnStream:
    """Deltas of one turn as they arrive; `reply` is set once iteration has finished.

    `cancel()` (from any thread) stops generation before the next token; what was produced up to
    then is kept as the turn (it was already said) and `reply.finish_reason` is "cancelled".
    Iterating a cancelled stream simply ends; `wait()` raises `Cancelled`.
    """

    def __init__(
        self, character: Speaker, gen: Generator[Delta, None, None], cancel: CancelToken
    ) -> None:
        self.character = character
        self._gen = gen
        self._cancel = cancel
        self.reply: Reply | None = None

    def __iter__(self) -> Iterator[Delta]:
        return self._gen

    def __next__(self) -> Delta:
        return next(self._gen)

    def cancel(self) -> None:
        self._cancel.cancel()

    def close(self) -> None:
        """Stop early and release the model; safe to call at any time."""
        if self.reply is None:
            self._cancel.cancel()
        self._gen.close()

    def wait(self) -> Reply:
        """Consume the rest of the stream and return the reply.

        Raises `Cancelled` if the turn was cancelled or closed; what it said up to then is on
        `reply` and in the character's memory.
        """
        for _ in self._gen:
            pass
        name = self.character.name
        if self.reply is None:  # closed before generation started: nothing was said
            raise Cancelled(f"the turn of {name!r} was closed before it started")
        if self.reply.finish_reason == "cancelled":
            raise Cancelled(f"the turn of {name!r} was cancelled")
        return self.reply


def iter_nothing() -> Generator[Delta, None, None]:
    yield from ()


class TurnReader:
    """Reads one turn's text as it streams (see the module doc).

    `read(pieces)` yields the deltas to stream: public ones only unless `private`. Under a
    grammar (`tagged`) the text is tagged HER text, so brackets in speech are literal, not
    CoSER's "(action)". The turn ends early where the guard stopped a reveal (`blocked`), and
    where it would leave its shape (`shape`, a `ShapeGuard`: checked before the secrets guard,
    so what the shape cuts is never held back or reported).
    """

    def __init__(
        self,
        name: str,
        prompt: Prompt,
        *,
        tagged: bool,
        guard: SecretsGuard | None,
        private: bool,
        shape: ShapeGuard | None = None,
    ) -> None:
        self.name = name
        self.prompt = prompt
        self.shape = shape
        self.parser = TurnParser(name, start=prompt.start, coser=False if tagged else None)
        self.parser_tagged = tagged
        self.guard = guard
        self.private = private
        self.raw: list[str] = []
        self.ended_in: Channel | None = None  # the parser's channel when the text ran out
        self.started = time.perf_counter()
        self.first_speech_s: float | None = None
        self._said: dict[int, tuple[Channel, str]] = {}  # segment -> text, as let through

    @property
    def blocked(self) -> list[BlockedReveal]:
        """The reveal the guard stopped (at most one: the turn ends there)."""
        return [self.guard.blocked] if self.guard is not None and self.guard.blocked else []

    def read(self, pieces: Iterable[str]) -> Iterator[Delta]:
        for piece in pieces:
            self.raw.append(piece)
            yield from self._passed(self.parser.feed(piece))
            if self.blocked:
                return  # the turn ends where the reveal began
            if self.shape is not None and self.shape.done:
                break  # the turn ends at the edge of its shape
        self.ended_in = self.parser.channel
        yield from self._passed(self.parser.close())
        if self.guard is not None:
            yield from self._shown(self.guard.close())

    def _passed(self, deltas: Sequence[Delta]) -> Iterator[Delta]:
        if self.shape is not None:
            deltas = list(self.shape.filter(deltas))
        for delta in deltas:
            yield from self._shown(self.guard.feed(delta) if self.guard is not None else (delta,))

    def _shown(self, deltas: Sequence[Delta]) -> Iterator[Delta]:
        # Deltas the guard let through: they are what was said, and what is streamed.
        for d in deltas:
            channel, text = self._said.get(d.segment, (d.channel, ""))
            self._said[d.segment] = (channel, text + d.text)
            if self.first_speech_s is None and d.channel == "speech" and d.text.strip():
                self.first_speech_s = time.perf_counter() - self.started
            if self.private or d.channel not in PRIVATE_CHANNELS:
                yield d

    def tagged(self, actions: list[str]) -> list[str]:
        """Those of `actions` the model wrote in action tags: the only ones that may hold a
        call (a CoSER-style "(...)" inside speech is an action to show, never one to run)."""
        if self.parser_tagged:  # read without CoSER brackets: every action was a tag
            return actions
        parser = TurnParser(self.name, start=self.prompt.start, coser=False)
        parser.feed("".join(self.raw))
        parser.close()
        written = set(parser.turn().actions)
        return [a for a in actions if a in written]

    def turn(self) -> Turn:
        """What was said, once reading has ended (however it ended)."""
        self.parser.close()
        return Turn.from_segments(Segment(c, t) for _, (c, t) in sorted(self._said.items()))

    def reply(
        self,
        character: str,
        turn: Turn,
        stream: TextStream,
        *,
        finish: str,
        calls: list[Call],
        invalid: list[InvalidCall],
    ) -> Reply:
        return Reply(
            character=character,
            speech=turn.speech,
            actions=turn.actions,
            plan=turn.plan,
            thoughts=turn.thoughts,
            segments=turn.segments,
            raw=self.prompt.prefill + "".join(self.raw),
            finish_reason=finish,
            prompt_tokens=stream.prompt_tokens,
            completion_tokens=stream.completion_tokens,
            first_token_s=stream.first_token_s,
            first_speech_s=self.first_speech_s,
            total_s=time.perf_counter() - self.started,
            calls=calls,
            invalid_calls=invalid,
            blocked_reveals=self.blocked,
        )
