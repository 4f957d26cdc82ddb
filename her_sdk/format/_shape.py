"""The shape of a turn: how many sections of each kind it may have, and how long each may be.

A game's dialogue box fits one short speech and perhaps one action; a HER-release model plans
at length and speaks in paragraphs. `TurnShape` says which, per character and per turn:

    TurnShape.GAME      one action, one thought, one speech of one to three sentences, no
                        quotation marks inside speech (a line a game can put on screen)
    TurnShape()         the caps the runtime always had: six sections, 300-character speeches
    TurnShape.FREE      long plans and paragraphs (models trained on HER's own data)

Two mechanisms read the same fields, so a turn has the same shape on every engine. Engines
with a grammar (llama.cpp) are made to write within it (`build_grammar(shape=...)`): the model
chooses how to end inside the limits. Engines without one (ONNX, a remote server) are stopped
where the text would leave the shape (`ShapeGuard`): a section too many or a sentence too many
ends the turn, a speech is cut at its limit, and quotation marks are dropped from speech.

This module holds no prompt text: a shape is what the runtime lets through, not what the model
is told.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import ClassVar

import msgspec

from .._errors import ConfigError
from ._contract import MAX_PLAN_CHARS, MAX_THOUGHT_CHARS, Channel, Delta

__all__ = ["QUOTE_MARKS", "SHAPE_METADATA", "ShapeGuard", "TurnShape"]

# Quotation marks a speech may not hold when `quotes=False`. Single quotes stay: they are
# apostrophes far more often ("don't", "the captain's").
QUOTE_MARKS = '"\u201c\u201d\u201e\u00ab\u00bb'
SENTENCE_END = ".!?"
MAX_SECTIONS = 16  # the most sections (and sentences) a shape may allow
MAX_SECTION_CHARS = 8000  # the longest section a shape may allow
_QUOTES = re.compile(f"[{QUOTE_MARKS}]")


# Where a model file declares the sections it was trained with (GGUF metadata; `her.json` of
# an ONNX folder without the "her." prefix): its shape's caps, so that a model trained with long
# plans is decoded with long plans and the project's own models with short ones.
SHAPE_METADATA = {
    "her.max_plan_chars": "max_plan_chars",
    "her.max_thought_chars": "max_thought_chars",
    "her.line_breaks": "line_breaks",
}


class TurnShape(msgspec.Struct, frozen=True, kw_only=True):
    """The most a turn may hold (see the module doc). Every count and length is >= 1.

    - `max_segments`: sections after the plan (thoughts, actions and speeches together);
    - `max_actions`, `max_thoughts`, `max_speeches`: sections of each kind;
    - `max_speech_chars`, `max_action_chars`, `max_thought_chars`, `max_plan_chars`: the
      longest section of each kind, in characters;
    - `max_sentences`: sentences in one speech (None: no limit); a sentence ends at '.', '!'
      or '?';
    - `quotes`: whether speech may hold quotation marks (a small model nests quotes when it
      narrates: "'We must go,' she said.");
    - `line_breaks`: whether sections may span lines (HER's plans are structured in
      paragraphs and lists; a dialogue box wants one line). Prompt styles that end a turn at the
      line's end (a base model's few-shot script) never allow them.
    """

    max_segments: int = 6
    max_actions: int = 6
    max_thoughts: int = 6
    max_speeches: int = 6
    max_speech_chars: int = 300
    max_action_chars: int = 120
    max_thought_chars: int = MAX_THOUGHT_CHARS
    max_plan_chars: int = MAX_PLAN_CHARS
    max_sentences: int | None = None
    quotes: bool = True
    line_breaks: bool = False

    GAME: ClassVar[TurnShape]
    FREE: ClassVar[TurnShape]

    def __post_init__(self) -> None:
        for field in self.__struct_fields__:
            value = getattr(self, field)
            if field in ("quotes", "line_breaks") or (field == "max_sentences" and value is None):
                continue
            if type(value) is not int or value < 1:
                raise ConfigError(f"TurnShape.{field} must be a positive integer, not {value!r}")
            # A grammar spells each length out as a repetition and each count as states:
            # bounded, so no shape (a server's client's included) makes one too big to build.
            most = MAX_SECTION_CHARS if field.endswith("_chars") else MAX_SECTIONS
            if value > most:
                raise ConfigError(f"TurnShape.{field} must be at most {most}, not {value}")
        if type(self.quotes) is not bool or type(self.line_breaks) is not bool:
            raise ConfigError("TurnShape.quotes and line_breaks must be True or False")
        if self.max_sentences is not None and self.max_speech_chars < 8 * self.max_sentences:
            raise ConfigError("TurnShape.max_speech_chars must allow 8 characters a sentence")

    @classmethod
    def preset(cls, name: str) -> TurnShape:
        """The preset `name` names: "game", "default" (`TurnShape()`) or "free"."""
        presets = {"game": cls.GAME, "default": cls(), "free": cls.FREE}
        try:
            return presets[name]
        except KeyError:
            raise ConfigError(
                f"unknown turn shape {name!r}: use one of {', '.join(presets)}"
            ) from None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, object], base: TurnShape) -> TurnShape | None:
        """`base` with the caps a model's metadata declares (`SHAPE_METADATA`: what export
        writes, the lengths the model was trained with), or None when it declares none. A
        value of the wrong type or out of range is ignored: it cannot make a model unloadable.
        """
        caps: dict[str, object] = {}
        for key, field in SHAPE_METADATA.items():
            value = metadata.get(key)
            kind = bool if field == "line_breaks" else int
            if type(value) is kind:
                caps[field] = value
        if not caps:
            return None
        try:
            return msgspec.structs.replace(base, **caps)
        except ConfigError:
            return None

    def limit(self, channel: Channel) -> int:
        """The longest section of `channel`, in characters."""
        return {
            "plan": self.max_plan_chars,
            "thought": self.max_thought_chars,
            "action": self.max_action_chars,
            "speech": self.max_speech_chars,
        }[channel]

    def count(self, channel: Channel) -> int:
        """The most sections of `channel` (the plan is always one)."""
        return {
            "plan": 1,
            "thought": self.max_thoughts,
            "action": self.max_actions,
            "speech": self.max_speeches,
        }[channel]


TurnShape.GAME = TurnShape(
    max_segments=3,
    max_actions=1,
    max_thoughts=1,
    max_speeches=1,
    max_speech_chars=240,
    max_action_chars=80,
    max_sentences=3,
    quotes=False,
)
TurnShape.FREE = TurnShape(
    max_segments=16,
    max_actions=16,
    max_thoughts=16,
    max_speeches=16,
    max_speech_chars=1500,
    max_action_chars=400,
    max_thought_chars=1000,
    max_plan_chars=3000,
    line_breaks=True,
)


class ShapeGuard:
    """Keeps a streamed turn inside a `TurnShape` (the engines without a grammar; a harmless
    check under one).

    `feed(delta)` returns what of the delta fits; once a delta would open a section too many,
    begin a sentence too many or run a speech past its length, `done` is True and the turn should
    end there (what came before stays). Plans, thoughts and actions past their length are cut
    and the turn goes on: they are not what the game waits for. Without `line_breaks`, a line
    break becomes a space, as the grammar would have had it.
    """

    def __init__(self, shape: TurnShape) -> None:
        self.shape = shape
        self.done = False
        self._segment: int | None = None  # the section being read
        self._sections = 0
        self._counts: dict[Channel, int] = {}
        self._length = 0  # characters of the current section let through
        self._sentences = 0  # sentences begun in the current speech
        self._ended = False  # the current speech's last character ended a sentence

    def feed(self, delta: Delta) -> Sequence[Delta]:
        if self.done:
            return ()
        if delta.segment != self._segment and not self._open(delta):
            self.done = True
            return ()
        text = delta.text if self.shape.line_breaks else delta.text.replace("\n", " ")
        if delta.channel == "speech":
            text = self._speech(text)
        else:
            room = self.shape.limit(delta.channel) - self._length
            text = text[: max(room, 0)]
            self._length += len(text)
        return (Delta(delta.channel, text, delta.segment),) if text else ()

    def _open(self, delta: Delta) -> bool:
        """Count a new section; False when the shape has no room for it."""
        channel = delta.channel
        if channel != "plan":
            self._sections += 1
            if self._sections > self.shape.max_segments:
                return False
            self._counts[channel] = self._counts.get(channel, 0) + 1
            if self._counts[channel] > self.shape.count(channel):
                return False
        self._segment = delta.segment
        self._length, self._sentences, self._ended = 0, 0, False
        return True

    def _speech(self, text: str) -> str:
        if not self.shape.quotes:
            text = _QUOTES.sub("", text)
        kept: list[str] = []
        for ch in text:
            if self._length >= self.shape.max_speech_chars:
                self.done = True
                break
            if ch in SENTENCE_END:
                self._ended = self._sentences > 0
            elif not ch.isspace() and (self._sentences == 0 or self._ended):
                limit = self.shape.max_sentences
                if limit is not None and self._sentences >= limit:
                    self.done = True
                    break
                self._sentences += 1  # this character begins a sentence
                self._ended = False
            kept.append(ch)
            self._length += 1
        out = "".join(kept)
        return out.rstrip() if self.done else out

    def filter(self, deltas: Sequence[Delta]) -> Iterator[Delta]:
        """`feed` over several deltas, stopping once done."""
        for delta in deltas:
            yield from self.feed(delta)
            if self.done:
                return
