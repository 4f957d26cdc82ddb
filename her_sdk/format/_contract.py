"""The vocabulary of the HER contract: its version, channels, tags, caps and the types every part
of the format speaks (segments, deltas, turns, perceptions, chat messages, rendered prompts).

No logic lives here beyond what a type needs to build itself; parsing, rendering and the grammar
are the other modules of `her_sdk.format`.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import compress, starmap
from operator import lt
from typing import Literal

import msgspec

# Version of this contract (turn shape, tags, prompt sections). Export writes it into a model's
# metadata under FORMAT_VERSION_KEY (GGUF; `format_version` in an ONNX folder's her.json); a
# runtime refuses models of a newer version than its own, whose turns it could misread. Raise
# it only for a change that an older parser would get wrong.
HER_FORMAT_VERSION = 1
FORMAT_VERSION_KEY = "her.format_version"

Channel = Literal["plan", "thought", "action", "speech"]
# How a model's prompts are written: ChatML, the model's own Jinja chat template, a plain-text
# script for base models without one, or "her": ChatML holding HER's own training prompt, byte
# for byte, for the released HER models. A property of the model (`Backend.prompt_style`).
PromptStyle = Literal["chatml", "template", "fewshot", "her"]
PROMPT_STYLES: tuple[PromptStyle, ...] = ("chatml", "template", "fewshot", "her")

CHANNELS: tuple[Channel, ...] = ("plan", "thought", "action", "speech")
PRIVATE_CHANNELS: frozenset[Channel] = frozenset({"plan", "thought"})
# The longest plan a turn may hold: the runtime grammar's cap, and the bound that training data
# (synthesized plans) and the RL format reward hold plans to, so a model never learns plans that
# the runtime would cut. A few sentences; longer plans delay the first spoken word in a game.
MAX_PLAN_CHARS = 400
# The longest inner thought (one <role_thinking> section), likewise shared by the grammar and
# training data (enriched thoughts).
MAX_THOUGHT_CHARS = 240
PUBLIC_CHANNELS: frozenset[Channel] = frozenset({"action", "speech"})

# Canonical tag of each tagged channel.
TAG: dict[Channel, str] = {
    "plan": "system_thinking",
    "thought": "role_thinking",
    "action": "role_action",
}


class Segment(msgspec.Struct, frozen=True, array_like=True):
    """One contiguous piece of a turn on one channel. Decoding (a save file) rejects a channel
    outside `Channel` with a `msgspec.ValidationError`."""

    channel: Channel
    text: str


class Delta(msgspec.Struct, frozen=True):
    """A piece of streamed text on one channel, as the parser recognised it.

    `segment` numbers the sections of the turn: it grows whenever a new section begins, so a UI
    can tell two actions in a row apart (deltas with the same number belong together).
    """

    channel: Channel
    text: str
    segment: int = 0

    @property
    def private(self) -> bool:
        return self.channel in PRIVATE_CHANNELS


class Turn(msgspec.Struct, frozen=True, kw_only=True, tag="turn"):
    """A parsed turn. `plan` and `thoughts` are private; `actions` and `speech` are public."""

    plan: str = ""
    thoughts: list[str] = msgspec.field(default_factory=list)
    actions: list[str] = msgspec.field(default_factory=list)
    speech: str = ""
    segments: list[Segment] = msgspec.field(default_factory=list)

    @classmethod
    def from_segments(cls, segments: Iterable[Segment]) -> Turn:
        segs = [Segment(s.channel, s.text.strip()) for s in segments if s.text.strip()]
        return cls(
            plan=" ".join(s.text for s in segs if s.channel == "plan"),
            thoughts=[s.text for s in segs if s.channel == "thought"],
            actions=[s.text for s in segs if s.channel == "action"],
            speech=" ".join(s.text for s in segs if s.channel == "speech"),
            segments=segs,
        )

    def public(self) -> Turn:
        """The same turn with every private segment removed: what others may perceive."""
        return Turn.from_segments(s for s in self.segments if s.channel in PUBLIC_CHANNELS)


class Heard(msgspec.Struct, frozen=True, kw_only=True, tag="heard"):
    """Something a character perceived: another's public action/speech, or narration.

    `speaker` is "Environment" for narration. Never holds anyone's private text.
    """

    speaker: str
    speech: str = ""
    actions: list[str] = msgspec.field(default_factory=list)


ENVIRONMENT = "Environment"


class Message(msgspec.Struct, frozen=True):
    role: str  # "system" | "user" | "assistant"
    content: str


CONVERSATION_START = "===Conversation Start===\n\n"
_SILENCE = Heard(speaker=ENVIRONMENT, speech="A moment passes.")

HistoryItem = Heard | Turn


MEMORIES_HEAD = "===Your Memories==="


class Prompt(msgspec.Struct, frozen=True, kw_only=True):
    """A rendered prompt, ready for a backend.

    `text` ends with `prefill`, the start of the reply that the prompt already wrote
    (`<system_thinking>`, or `NAME:` without a plan); `start` is the channel that prefill
    leaves the reply in ("plan" or "speech"; None without a prefill), for `TurnParser`.
    """

    text: str
    stop: list[str]
    prefill: str = ""
    start: Channel | None = None
    style: PromptStyle = "chatml"


def format_version_problem(version: object, *, key: str = FORMAT_VERSION_KEY) -> str | None:
    """Why a model declaring HER format `version` (the value of its metadata `key`) cannot be
    run by this runtime, or None when it can. None as `version` (no key) is a model that is not
    a HER model, which runs with the default prompts."""
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        return f"{key} is {version!r}, not a format version (a positive integer)"
    if version > HER_FORMAT_VERSION:
        return (
            f"{key} = {version}: the model uses a newer HER format than this her_sdk "
            f"understands (version {HER_FORMAT_VERSION}); upgrade her-sdk"
        )
    return None


class PromptText(str):
    """A rendered prompt that knows which of its characters are literal text.

    Literal text is what the prompt quotes rather than writes: players' lines, character-card
    and persona fields, a character's memories and earlier turns, anything from a save file.
    `literal` holds its (start, end) character ranges, sorted and disjoint; the rest is the
    prompt's own scaffolding (chat-template markers, section heads, tags).

    The contract for engines (`render_prompt` and `render_messages` make these):
    - an engine whose tokenizer turns special-token strings into control tokens (`<|im_end|>`,
      `<end_of_turn>`, `<unused0>`) must parse special tokens in the scaffolding only, and
      tokenize literal ranges as plain text, so that no quoted text becomes a control token;
      the backends' `tokenize_prompt` does exactly that on top of an engine's own tokenizer;
    - an engine that receives text (an HTTP server) cannot; the format module's neutralisation
      of tags and section heads in literal text is then what protects the prompt's structure;
    - a plain `str` prompt is all scaffolding (callers that render their own prompts).

    It is a `str`, so backends that do not care see an ordinary string; string operations
    (concatenation, slicing) return plain `str` and drop the ranges.
    """

    literal: tuple[tuple[int, int], ...]

    def __new__(cls, text: str, literal: Iterable[tuple[int, int]] = ()) -> PromptText:
        self = super().__new__(cls, text)
        ranges: tuple[tuple[int, int], ...] = tuple(map(tuple, literal))  # type: ignore[arg-type]
        # (in C, not a loop: a long game's prompt quotes hundreds of lines)
        self.literal = tuple(compress(ranges, starmap(lt, ranges)))
        return self

    def scaffold(self) -> list[tuple[int, int]]:
        """The (start, end) ranges that are not literal text."""
        out, pos = [], 0
        for a, b in self.literal:
            if a > pos:
                out.append((pos, a))
            pos = max(pos, b)
        if pos < len(self):
            out.append((pos, len(self)))
        return out
