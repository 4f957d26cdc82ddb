"""The HER dual-layer format: the one contract that runtime, training, export and evaluation share.

A HER turn has four channels:

    plan     <system_thinking>…</system_thinking>  third person: how to play the character  PRIVATE
    thought  <role_thinking>…</role_thinking>      first person: the inner voice            PRIVATE
    action   <role_action>…</role_action>          visible behaviour                        public
    speech   untagged text                         spoken words                             public

Shape of one turn: `<system_thinking>PLAN</system_thinking>NAME: ` then any interleaving of
thought, action and speech segments. An action segment may hold a *call* of a typed action the
game declared, written `[NAME]` or `[NAME KEY=VALUE, KEY=VALUE]` and nothing else
(`<role_action>[give item=key, to=Traveler]</role_action>`; values hold no `, = [ ] < >` or
newline): `render_call` / `parse_call` write and read it, and the grammar admits only declared
calls with legal values. Any other action text is free text.

This module owns, and is the only place that knows:

- parsing: `parse_turn(text)` and the incremental `TurnParser`, tolerant of what real models emit
  (missing/unclosed tags, legacy tags, a reasoning model's leading `<think>` block, the CoSER
  `[thought]`/`(action)` style). The safety rule is absolute: text inside a private section never
  comes out on a public channel, and an unclosed private section stays private to the end of the
  turn;
- prompt rendering: the system prompt from a `Persona`, perceptions as user messages, a
  character's own earlier turns (thoughts kept, plans dropped unless asked), and the three prompt
  styles (ChatML, the model's own chat template, few-shot for base models), with the rule that
  picks one for a model (`detect_prompt_style`);
- ChatML itself: the renderer, its inverse for chat-only servers (`chatml_to_messages`), its
  stop strings and the Jinja template (`CHATML_TEMPLATE`) that training gives a tokenizer;
- the GBNF grammar of a turn for constrained decoding, typed-action calls included;
- the prompt sections of a character's long-term memory (the running summary `===What Happened
  Before===` in the system prompt; the memories recalled for this turn, `===Your Memories===`,
  at the end of the prompt so that an engine's prompt cache stays valid before them) and of its
  typed actions (`===Actions You Can Take===`);
- the version of this contract (`HER_FORMAT_VERSION`), which export writes into a model's
  metadata (`her.format_version`) and the runtime checks when it loads one.

It does not generate, hold state, or know about scenes; see `her_sdk.Character` for that.
Bad arguments raise `her_sdk.ConfigError`.
"""

from __future__ import annotations

import functools
import re
import typing
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Literal

import msgspec

from ._backends._base import PromptText
from ._errors import ConfigError, MissingDependencyError
from ._persona import Persona

__all__ = [
    "CHANNELS",
    "CHATML_STOP",
    "CHATML_TEMPLATE",
    "CONVERSATION_START",
    "ENVIRONMENT",
    "FEWSHOT_PREAMBLE",
    "FORMAT_VERSION_KEY",
    "HER_FORMAT_VERSION",
    "MAX_PLAN_CHARS",
    "MAX_THOUGHT_CHARS",
    "MEMORIES_HEAD",
    "PRIVATE_CHANNELS",
    "PUBLIC_CHANNELS",
    "TAG",
    "CallSpec",
    "Channel",
    "Delta",
    "Heard",
    "HistoryItem",
    "Message",
    "ParamSpec",
    "Prompt",
    "PromptStyle",
    "Segment",
    "Turn",
    "TurnParser",
    "build_grammar",
    "build_messages",
    "chatml_to_messages",
    "detect_prompt_style",
    "format_version_problem",
    "parse_call",
    "parse_turn",
    "render_actions",
    "render_call",
    "render_chatml",
    "render_fewshot",
    "render_memories",
    "render_perception",
    "render_prompt",
    "render_system_prompt",
    "render_template",
    "render_turn",
    "requirements",
]

# Version of this contract (turn shape, tags, prompt sections). Export writes it into a model's
# metadata under FORMAT_VERSION_KEY (GGUF; `format_version` in an ONNX folder's her.json); a
# runtime refuses models of a newer version than its own, whose turns it could misread. Raise
# it only for a change that an older parser would get wrong.
HER_FORMAT_VERSION = 1
FORMAT_VERSION_KEY = "her.format_version"
_P = typing.ParamSpec("_P")  # (format.ParamSpec is a typed-action argument)

Channel = Literal["plan", "thought", "action", "speech"]
PromptStyle = Literal["chatml", "template", "fewshot"]

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

# Every tag name a parser accepts, canonical and legacy, and the channel it opens.
_TAG_CHANNEL: dict[str, Channel] = {
    "system_thinking": "plan",
    "system_think": "plan",
    "role_thinking": "thought",
    "role_think": "thought",
    "long_role_thinking": "thought",
    "think": "thought",
    "thought": "thought",
    "thinking": "thought",
    "role_action": "action",
    "role_speech": "speech",
}
_MAX_TAG_LEN = max(len(t) for t in _TAG_CHANNEL) + 8  # room for '<', '/', '>' and spaces
_TAG_RE = re.compile(r"<\s*(/?)\s*([A-Za-z_]+)\s*>")
_BRACKETS: dict[str, tuple[str, Channel]] = {"[": ("]", "thought"), "(": (")", "action")}
_MAX_LABEL = 48  # longest "Speaker:" label recognised when the name is unknown
_LABEL_PREFIX_RE = re.compile(rf"[^\s<>\[\]():\n][^<>\[\]():\n]{{0,{_MAX_LABEL - 1}}}")
_LABEL_RE = re.compile(_LABEL_PREFIX_RE.pattern + ":")


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


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def _classify_tag(s: str) -> tuple[str, bool, int] | Literal["partial"] | None:
    """Look at text starting with '<'.

    Returns (tag name, closing, length) for a complete known tag, "partial" when more input
    could still make it one, and None when it is plain text.
    """
    m = _TAG_RE.match(s)
    if m:
        name = m.group(2).lower()
        if name in _TAG_CHANNEL:
            return (name, m.group(1) == "/", m.end())
        return None
    if len(s) >= _MAX_TAG_LEN:
        return None
    m = re.fullmatch(r"<\s*/?\s*([A-Za-z_]*)\s*", s)
    if m is None:
        return None
    word = m.group(1).lower()
    if s.rstrip() != s and word:  # "<role_action " may still close with '>'
        return "partial" if word in _TAG_CHANNEL else None
    return "partial" if any(t.startswith(word) for t in _TAG_CHANNEL) else None


class TurnParser:
    """Incremental parser of one turn: feed text as it streams, get typed deltas.

    `feed(chunk)` returns the deltas that are certain so far; text that could still turn out to
    be a tag or a speaker label is held back until the next chunk or `close()`. Whatever the
    chunking, the concatenated deltas are the same. The parser never raises on any input.

    - `name`: the speaking character; a leading `NAME:` is removed from speech. Without a name,
      a short `Speaker:` label is removed only where one is expected: right after a plan or
      after the private sections a turn opens with (`<system_thinking>p</system_thinking>Mara:
      Hello` gives the speech "Hello"), never from a turn that starts with speech.
    - `start`: the channel the text starts in, when the prompt already began the reply: "plan"
      when it ended with `<system_thinking>`, "speech" when it ended with `NAME:`.
    - `coser`: treat `[...]` as thought and `(...)` as action. `None` (default) means: only until
      the first HER tag appears, since HER-tagged text uses brackets literally.

    A `<think>…</think>` block at the very start of a reply is the model's own reasoning
    (Qwen3 and other reasoning models write one before anything else): it is read as the
    *plan*, and only `</think>` ends it. Anywhere else `<think>` is the legacy tag of the
    character's inner thought.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        start: Channel | None = None,
        coser: bool | None = None,
    ) -> None:
        self._name = name.strip() if name else None
        self._buf = ""
        self._segments: list[tuple[Channel, str]] = []
        self._coser = coser
        self._seen_tag = start is not None and start != "speech"
        self._closed = False
        # Current section: None (untagged speech) or (channel, closer), closer being the
        # bracket that ends it or "" for a tagged section.
        self._section: tuple[Channel, str] | None = None
        self._depth = 0
        self._expect_label = True
        self._leading = start is None  # nothing but whitespace has come yet
        self._public_seen = False  # some action or speech text has come
        self._after_private = False  # a plan or a leading private section has ended
        self._think_plan = False  # the current section is a leading <think> block
        if start in PRIVATE_CHANNELS or start == "action":
            self._section = (start, "")
            self._expect_label = False

    # -- public API ---------------------------------------------------------------------------

    def feed(self, chunk: str) -> list[Delta]:
        if self._closed or not chunk:
            return []
        self._buf += chunk
        return self._drain(final=False)

    def close(self) -> list[Delta]:
        if self._closed:
            return []
        out = self._drain(final=True)
        self._closed = True
        return out

    @property
    def channel(self) -> Channel:
        """The channel the parser is in now ("speech" outside any section)."""
        return self._section[0] if self._section else "speech"

    def turn(self) -> Turn:
        """The turn parsed so far (complete after `close()`)."""
        return Turn.from_segments(Segment(c, t) for c, t in self._segments)

    # -- machinery ------------------------------------------------------------------------------

    def _emit(self, out: list[Delta], channel: Channel, text: str) -> None:
        if not self._segments:
            # The turn starts at its first visible character: the space after a prefilled
            # "NAME:" opens no empty speech segment. (Later segments keep their whitespace:
            # clients that join speech deltas rely on it between segments.)
            text = text.lstrip()
        if not text:
            return
        if text.strip():
            self._leading = False
            if channel in PUBLIC_CHANNELS:
                self._public_seen = True
                self._expect_label = False
        if self._segments and self._segments[-1][0] == channel and not self._new_segment:
            self._segments[-1] = (channel, self._segments[-1][1] + text)
        else:
            self._segments.append((channel, text))
            self._new_segment = False
        index = len(self._segments) - 1
        if out and out[-1].channel == channel and out[-1].segment == index:
            out[-1] = Delta(channel, out[-1].text + text, index)
        else:
            out.append(Delta(channel, text, index))

    _new_segment = True

    def _open(self, channel: Channel, closer: str) -> None:
        self._section = (channel, closer)
        self._depth = 1
        self._new_segment = True
        self._leading = False

    def _end_section(self, channel: Channel) -> None:
        self._section = None
        self._new_segment = True
        self._think_plan = False
        if channel == "plan" or (channel in PRIVATE_CHANNELS and not self._public_seen):
            # The turn's public part, and with it the "NAME:" label, starts after a plan or
            # after the private sections the turn opens with.
            self._expect_label = True
            self._after_private = True
        elif self._name:
            # Models sometimes repeat their own "NAME:" after an action or thought.
            self._expect_label = True

    def _use_brackets(self) -> bool:
        return self._coser if self._coser is not None else not self._seen_tag

    def _drain(self, final: bool) -> list[Delta]:
        out: list[Delta] = []
        buf = self._buf
        i = 0
        n = len(buf)
        while i < n:
            if self._section is None and self._expect_label:
                # A label can follow leading private sections, so markup does not end the wait.
                first = len(buf[i:]) - len(buf[i:].lstrip())
                if i + first >= n or buf[i + first] not in "<[(":
                    consumed = self._strip_label(buf, i, final)
                    if consumed is None:  # need more text to decide
                        break
                    if consumed != i or not self._expect_label:
                        if buf[i:consumed].strip():
                            self._leading = False  # a label was removed
                        i = consumed
                        continue
            channel = self.channel
            closer = self._section[1] if self._section else ""
            private = channel in PRIVATE_CHANNELS
            # Find the next character that may change state.
            specials = "<"
            if closer:
                specials += closer + ("[" if closer == "]" else "(")
            elif self._section is None and self._use_brackets():
                specials += "[("
            j = i
            while j < n and buf[j] not in specials:
                j += 1
            self._emit(out, channel, buf[i:j])
            i = j
            if i >= n:
                break
            c = buf[i]
            if c == "<":
                kind = _classify_tag(buf[i:])
                if kind == "partial":
                    if not final:
                        break
                    kind = None
                if kind is None:
                    self._emit(out, channel, "<")
                    i += 1
                    continue
                tag, closing, length = kind
                i += length
                self._seen_tag = True
                self._on_tag(tag, closing, private, closer)
            elif closer and c == closer:
                i += 1
                self._depth -= 1
                if self._depth == 0:
                    self._end_section(channel)
                else:
                    self._emit(out, channel, c)
            elif closer and c in "[(":
                self._depth += 1
                i += 1
                self._emit(out, channel, c)
            else:  # an opening CoSER bracket in speech
                self._open(_BRACKETS[c][1], _BRACKETS[c][0])
                i += 1
        self._buf = buf[i:]
        if final and self._buf:  # unfinished label or tag: it is text of the current channel
            self._emit(out, self.channel, self._buf)
            self._buf = ""
        return out

    def _on_tag(self, tag: str, closing: bool, private: bool, closer: str) -> None:
        current = self.channel
        tag_channel = _TAG_CHANNEL[tag]
        leading, self._leading = self._leading, False
        if private:
            # Inside a private section only its own closing tag ends it; anything else, even
            # another opening tag, is private text. A tag cannot close a bracket section, and
            # only </think> closes a leading <think> block (reasoning may mention other tags).
            # When in doubt, stay private.
            own = tag == "think" if self._think_plan else tag_channel == current
            if closing and own and not closer:
                self._end_section(current)
            return
        if tag == "think" and not closing and leading:
            self._open("plan", "")  # a reasoning model's own reasoning block
            self._think_plan = True
            return
        if closing:
            if self._section is not None and tag_channel == current and not closer:
                self._end_section(current)
            return  # stray closing tag in public text: dropped
        if tag_channel == "speech":  # <role_speech> merely marks speech
            if self._section is not None:
                self._end_section(current)
            return
        if self._section is not None:
            self._end_section(current)
        self._open(tag_channel, "")

    def _strip_label(self, buf: str, i: int, final: bool) -> int | None:
        """Skip a leading `NAME:` at the start of the public part. Returns the new index, or
        None when the buffer is too short to decide."""
        j = i
        while j < len(buf) and buf[j] in " \t\r\n":
            j += 1
        rest = buf[j:]
        if not rest:
            if final:
                self._expect_label = False
            return None if not final else len(buf)
        if self._name:
            label = self._name + ":"
            if rest[: len(label)].lower() == label.lower():
                k = j + len(label)
                while k < len(buf) and buf[k] in " \t":
                    k += 1
                if k == len(buf) and not final:
                    return None  # spaces after the label may continue in the next chunk
                self._expect_label = False
                return k
            if label.lower().startswith(rest.lower()) and not final:
                return None
            self._expect_label = False
            return i
        # Unknown name: a short label without markup, recognised only where the public part
        # starts after a plan or leading private sections.
        if not self._after_private:
            self._expect_label = False
            return i
        m = _LABEL_RE.match(rest)
        if m:
            k = j + m.end()
            while k < len(buf) and buf[k] in " \t":
                k += 1
            if k == len(buf) and not final:
                return None
            self._expect_label = False
            return k
        if not final and _LABEL_PREFIX_RE.fullmatch(rest):
            return None
        self._expect_label = False
        return i


def parse_turn(text: str, name: str | None = None, *, start: Channel | None = None) -> Turn:
    """Parse one complete turn. Equivalent to feeding `text` to a `TurnParser` and closing it."""
    parser = TurnParser(name, start=start)
    parser.feed(text if isinstance(text, str) else str(text))
    parser.close()
    return parser.turn()


# ---------------------------------------------------------------------------------------------
# Calls of typed actions
# ---------------------------------------------------------------------------------------------

# One argument of a typed action as the grammar and the prompt see it: its legal values, or the
# longest free text (in characters) it takes.
ParamSpec = list[str] | int
# A typed action: (name, [(argument, ParamSpec), ...]); arguments in the order they are written.
CallSpec = tuple[str, list[tuple[str, ParamSpec]]]

_CALL_RE = re.compile(r"\[\s*([^\s\[\]]*)\s*(.*?)\s*\]", re.S)
_IDENT_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
_CALL_FORBIDDEN = frozenset(",=[]<>\n")


def render_call(name: str, args: dict[str, str] | None = None) -> str:
    """A call as written in a turn: `[open_gate]`, `[give item=key, to=Mara]`."""
    if not _IDENT_RE.fullmatch(name):
        raise ConfigError(f"call name {name!r} is not a lower-case identifier")
    parts = []
    for key, value in (args or {}).items():
        value = " ".join(str(value).split())
        if not _IDENT_RE.fullmatch(key) or not value or set(value) & _CALL_FORBIDDEN:
            raise ConfigError(f"cannot write argument {key}={value!r} of {name!r} in a call")
        parts.append(f"{key}={value}")
    return f"[{name} {', '.join(parts)}]" if parts else f"[{name}]"


def parse_call(text: str) -> tuple[str, dict[str, str]] | None:
    """(name, arguments) of an action text written as a call; None for free text.

    Text in square brackets that is not a well-formed call raises `ConfigError` saying why.
    """
    m = _CALL_RE.fullmatch(text.strip())
    if m is None:
        return None
    name, body = m.group(1), m.group(2)
    if not _IDENT_RE.fullmatch(name):
        raise ConfigError(f"{text.strip()!r}: {name!r} is not an action name")
    args: dict[str, str] = {}
    for part in body.split(",") if body else []:
        key, eq, value = part.partition("=")
        key, value = key.strip(), " ".join(value.split())
        if not eq or not _IDENT_RE.fullmatch(key) or not value:
            raise ConfigError(f"{text.strip()!r}: write arguments as key=value, key=value")
        if key in args:
            raise ConfigError(f"{text.strip()!r}: argument {key!r} given twice")
        args[key] = value
    return name, args


def render_actions(calls: Sequence[CallSpec]) -> str:
    """The `===Actions You Can Take===` section: each call's form and legal values."""
    lines = []
    for name, params in calls:
        args = []
        for key, spec in params:
            shown = "|".join(spec) if isinstance(spec, list) else "TEXT"
            args.append(f"{key}={shown}")
        lines.append("- " + (f"[{name} {', '.join(args)}]" if args else f"[{name}]"))
    example = calls[0][0] + (" ..." if calls[0][1] else "") if calls else "name"
    lines.append(
        "To take one, write it alone inside <role_action></role_action>, exactly in this form "
        f"with one of the values, e.g. <role_action>[{example}]</role_action>. Other actions "
        "are plain text."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Rendering turns and perceptions
# ---------------------------------------------------------------------------------------------


# Quoted text (players' lines, persona and card fields, memories, a character's earlier turns,
# anything from a save) may never carry structure of its own: a HER tag would let one channel
# forge another, a chat marker (<|im_start|>, <start_of_turn>, <unused0>) or a `===` head would
# let a player forge the prompt's sections. So markup is removed until none is left (nested
# forms like `<sys<x>tem_thinking>` re-form after one pass), then any `<` that could still open
# a tag is dropped, and `=` runs shrink to one, so that no two quoted texts side by side make
# markup either. At the token level, engines also tokenize quoted text without special-token
# parsing: `render_prompt` returns a `PromptText` whose `literal` ranges say where it is.
_MARKUP_RE = re.compile(r"<\|[^<>]{0,40}\|>|<\s*/?\s*[A-Za-z_][A-Za-z0-9_]*\s*>")
_OPENER_RE = re.compile(r"<+(?=\s*(?:[/|A-Za-z_]|$))")
_EQUALS_RE = re.compile(r"={2,}")
# While `render_prompt` renders, quoted text is wrapped in these (private-use) marks, which
# survive a chat template; they become `PromptText.literal` ranges and never reach an engine.
_OPEN, _CLOSE = "\ue000", "\ue001"
_MARKING: ContextVar[bool] = ContextVar("her_format_marking", default=False)


def _neutralise(text: str) -> str:
    """`text` without markup, keeping its line breaks."""
    text = text.replace(_OPEN, "").replace(_CLOSE, "")
    for _ in range(8):
        cleaned = _MARKUP_RE.sub("", text)
        if cleaned == text:
            break
        text = cleaned
    return _EQUALS_RE.sub("=", _OPENER_RE.sub("", text))


def _quote(text: str) -> str:
    """Quoted text as it goes into a prompt: marked as literal while `render_prompt` runs."""
    return f"{_OPEN}{text}{_CLOSE}" if text and _MARKING.get() else text


def _clean(text: str) -> str:
    """One line of quoted text (a perception, a turn's segment, a memory)."""
    return _quote(_neutralise(text).replace("\n", " ").strip())


def _block(text: str) -> str:
    """Quoted text that may span lines (persona fields)."""
    return _quote(_neutralise(text).strip())


def _name(name: str) -> str:
    # Names are validated where they are made (no '<', '>', ':', newlines; a persona's no '='
    # either, so this leaves it as it is): only a player's '==' could still build a `===` head.
    return _quote(_EQUALS_RE.sub("=", name))


def _unmark(text: str) -> PromptText:
    """A marked rendering as the text engines see, with its literal ranges."""
    out: list[str] = []
    ranges: list[tuple[int, int]] = []
    pos = depth = start = 0
    for part in re.split(f"([{_OPEN}{_CLOSE}])", text):
        if part == _OPEN:
            depth += 1
            if depth == 1:
                start = pos
        elif part == _CLOSE:
            depth = max(0, depth - 1)
            if depth == 0:
                ranges.append((start, pos))
        else:
            out.append(part)
            pos += len(part)
    return PromptText("".join(out), ranges)


def render_turn(turn: Turn, name: str, *, keep_plan: bool = False, label: bool = True) -> str:
    """A turn as HER text: `<system_thinking>…</system_thinking>NAME: ` then its segments.

    The plan is left out unless `keep_plan`; thoughts are kept (the character remembers them).
    """
    parts: list[str] = []
    if keep_plan and turn.plan:
        parts.append(f"<system_thinking>{_clean(turn.plan)}</system_thinking>")
    if label:
        parts.append(f"{_name(name)}: ")
    for seg in turn.segments:
        if seg.channel == "plan":
            continue
        if seg.channel == "speech":
            parts.append(_clean(seg.text))
        else:
            tag = TAG[seg.channel]
            parts.append(f"<{tag}>{_clean(seg.text)}</{tag}>")
    return "".join(parts)


class Heard(msgspec.Struct, frozen=True, kw_only=True, tag="heard"):
    """Something a character perceived: another's public action/speech, or narration.

    `speaker` is "Environment" for narration. Never holds anyone's private text.
    """

    speaker: str
    speech: str = ""
    actions: list[str] = msgspec.field(default_factory=list)


ENVIRONMENT = "Environment"


def render_perception(heard: Heard) -> str:
    """One perception line: `Name: <role_action>…</role_action>speech` or `Environment: …`."""
    if heard.speaker == ENVIRONMENT:
        return f"{ENVIRONMENT}: {_clean(heard.speech)}"
    acts = "".join(f"<role_action>{_clean(a)}</role_action>" for a in heard.actions if _clean(a))
    return f"{_name(heard.speaker)}: {acts}{_clean(heard.speech)}"


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def requirements(name: str, *, plan: bool = True) -> str:
    """The `===Requirements===` section: the output format in words."""
    lines = []
    if plan:
        lines.append(
            "Begin your reply with a short plan inside <system_thinking></system_thinking>, "
            f"written in the third person about how to portray {name} in this moment. "
            "Nobody in the story sees the plan."
        )
    lines.append(
        f"Then write '{name}: ' followed by your turn, mixing inner thoughts in "
        "<role_thinking></role_thinking> (first person, heard by no one), visible actions in "
        "<role_action></role_action> (no pronoun for yourself), and spoken words as plain text."
    )
    lines.append(
        f"Speak and act only as {name}; never for other characters. Keep it to one short turn."
    )
    return "\n".join(lines)


def render_system_prompt(
    persona: Persona,
    *,
    plan: bool = True,
    summary: str = "",
    calls: Sequence[CallSpec] = (),
) -> str:
    """The HER system prompt; each section is omitted when empty.

    `summary` (of what the character no longer holds verbatim, in its own words) and `calls`
    (its typed actions) change rarely, so they belong here; recalled memories change every turn
    and go at the end of the prompt instead (`render_memories`), which keeps an engine's prompt
    cache valid up to there.
    """
    p = persona
    name = _name(p.name)
    source = _clean(p.source)
    intro = f"You are {name} from {source}." if source else f"You are {name}."
    others = []
    for who in dict.fromkeys([*p.others, *p.relationships]):
        known = _clean(p.others.get(who, ""))
        line = f"{_clean(who)}: {known}" if known else _clean(who)
        if who in p.relationships:
            line += f" ({name}'s view: {_clean(p.relationships[who])})"
        others.append(line)
    goals, secrets = _block(p.goals), _block(p.secrets)
    inner = "\n".join(x for x in (goals, f"Secrets you keep: {secrets}" if secrets else "") if x)
    sections = [
        (f"==={name}'s Profile===", _block(p.profile)),
        ("===Background===", _block(p.background)),
        ("===Current Scenario===", _block(p.scenario)),
        ("===Information about other Characters===", "\n".join(others)),
        ("===Your Inner Thoughts===", inner),
        ("===What Happened Before===", _clean(summary)),
        ("===Actions You Can Take===", render_actions(calls) if calls else ""),
        ("===Requirements===", requirements(name, plan=plan)),
    ]
    body = "\n\n".join(f"{head}\n{text.strip()}" for head, text in sections if text.strip())
    return f"{intro}\n\n{body}"


class Message(msgspec.Struct, frozen=True):
    role: str  # "system" | "user" | "assistant"
    content: str


CONVERSATION_START = "===Conversation Start===\n\n"
_SILENCE = Heard(speaker=ENVIRONMENT, speech="A moment passes.")

HistoryItem = Heard | Turn


def build_messages(
    persona: Persona,
    history: Sequence[HistoryItem],
    *,
    plan: bool = True,
    keep_plans: bool = False,
    memories: Sequence[str] = (),
    summary: str = "",
    calls: Sequence[CallSpec] = (),
) -> list[Message]:
    """Chat messages for a character's next turn.

    `history` is what the character perceived (`Heard`) and its own earlier turns (`Turn`), in
    order. Consecutive perceptions become one user message; own turns become assistant messages
    with thoughts kept and plans dropped (unless `keep_plans`). The result always ends with a
    user message, ready for the assistant's reply. `summary` and `calls` go into the system
    prompt (see `render_system_prompt`); `memories` close the last user message.
    """
    system = render_system_prompt(persona, plan=plan, summary=summary, calls=calls)
    messages = [Message("system", system)]
    pending: list[str] = []

    def flush() -> None:
        if not pending:
            return
        first = not any(m.role == "user" for m in messages)
        body = "\n".join(pending)
        messages.append(Message("user", (CONVERSATION_START if first else "") + body))
        pending.clear()

    for item in history:
        if isinstance(item, Turn):
            if not any(m.role == "user" for m in messages) and not pending:
                pending.append(render_perception(_SILENCE))
            flush()
            if messages[-1].role == "assistant":
                messages.append(Message("user", render_perception(_SILENCE)))
            text = render_turn(item, persona.name, keep_plan=keep_plans)
            messages.append(Message("assistant", text))
        else:
            pending.append(render_perception(item))
    if not pending and messages[-1].role != "user":
        pending.append(render_perception(_SILENCE))
    if memories:
        pending.append(render_memories(memories))
    flush()
    return messages


MEMORIES_HEAD = "===Your Memories==="


def render_memories(memories: Sequence[str]) -> str:
    """The memories recalled for this turn, as a block closing the last user message."""
    lines = "\n".join(f"- {_clean(m)}" for m in memories if _clean(m))
    return f"\n{MEMORIES_HEAD}\n{lines}" if lines else ""


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


# ChatML, the chat format of the released HER (Qwen3-based) models.
_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"
CHATML_STOP = [_IM_END, _IM_START, "<|endoftext|>"]
# The same format as a Jinja chat template, for tokenizers (training, export). Rendering a
# prompt with a generation prompt gives exactly `render_chatml(messages)`, and is a prefix of
# the prompt plus its completion, which completion-only loss needs.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_CHATML_MESSAGE = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>\n?|\Z)", re.S)


def _prefill(name: str, plan: bool, prefill: bool = True) -> tuple[str, Channel | None]:
    if not prefill:
        return "", None
    # "NAME:" without the space: tokenizers attach a space to the word after it (" Shut",
    # " <role_action>"), so a prompt ending in a bare space token is one no model saw in
    # training (a tuned 270M model answered it with stray numbers).
    return ("<system_thinking>", "plan") if plan else (f"{name}:", "speech")


def render_chatml(messages: Sequence[Message], prefill: str = "") -> str:
    """Messages in ChatML, ending with an open assistant turn that begins with `prefill`."""
    body = "".join(f"{_IM_START}{m.role}\n{m.content}{_IM_END}\n" for m in messages)
    return f"{body}{_IM_START}assistant\n{prefill}"


def chatml_to_messages(prompt: str) -> tuple[list[Message], str]:
    """The inverse of `render_chatml`: (messages, prefill of the open assistant turn).

    For servers that only take chat messages. A prompt whose last assistant turn is closed
    has no prefill; a prompt that is not ChatML at all (few-shot) becomes one user message.
    """
    if _IM_START not in prompt:
        return [Message("user", prompt)], ""
    messages = [Message(r, c) for r, c in _CHATML_MESSAGE.findall(prompt)]
    prefill = ""
    if messages and messages[-1].role == "assistant" and not prompt.rstrip("\n").endswith(_IM_END):
        prefill = messages.pop().content
    return messages, prefill


def detect_prompt_style(chat_template: str | None, *, her_model: bool = False) -> PromptStyle:
    """How to render prompts for a model, from its metadata.

    A HER model (one whose metadata carries a HER format version) and any model whose template
    is ChatML get "chatml"; another chat template is used as it is ("template"); a model without
    one is a base model, prompted with a few-shot script ("fewshot").
    """
    if her_model:
        return "chatml"
    if not chat_template or not chat_template.strip():
        return "fewshot"
    if _IM_START in chat_template:
        return "chatml"
    return "template"


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


def render_template(
    messages: Sequence[Message],
    template: str,
    prefill: str = "",
    *,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """Render with the model's own Jinja chat template (jinja2 comes with the llama extra)."""
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # pragma: no cover - jinja2 ships with the llama extra
        raise MissingDependencyError("jinja2", "llama") from None

    def raise_exception(msg: str) -> None:
        raise jinja2.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        text = env.from_string(template).render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except jinja2.TemplateError as exc:
        raise ConfigError(f"the chat template cannot render this prompt: {exc}") from None
    if bos_token and text.startswith(bos_token):
        text = text[len(bos_token) :]  # the engine adds BOS itself
    return text + prefill


# A short scene in another setting, teaching a base model the shape of a HER turn by example.
FEWSHOT_PREAMBLE = """\
A role-play script. Before each of a character's lines comes the actor's private plan inside \
<system_thinking></system_thinking>, in the third person. Then the character's name and line: \
inner thoughts inside <role_thinking></role_thinking> (heard by no one), visible actions inside \
<role_action></role_action>, spoken words as plain text. One line per turn.

### Example
Ysolde: <role_action>drops a ledger on the bar</role_action>You owe the guild forty crowns.
<system_thinking>Brannoc is afraid but hides it; he stalls and tries to learn what she \
knows.</system_thinking>Brannoc: <role_thinking>She has seen the spring accounts.\
</role_thinking><role_action>pours her a cup of cider</role_action>Forty? Sit, have a drink first.
Environment: The fire cracks.
Ysolde: I do not drink on duty.

### Scene
"""


def render_fewshot(
    persona: Persona,
    history: Sequence[HistoryItem],
    *,
    plan: bool = True,
    keep_plans: bool = False,
    memories: Sequence[str] = (),
    summary: str = "",
    calls: Sequence[CallSpec] = (),
) -> str:
    """A plain-text script prompt for base models without a chat template (no prefill).

    Every turn is one line, so "\n" ends the reply. Recalled `memories` come as a stage
    direction right before the reply: `(Mara remembers: ...; ...)`.
    """
    sheet = render_system_prompt(persona, plan=plan, summary=summary, calls=calls)
    # The script is told in the third person; drop the chat-style requirements section.
    sheet = sheet.split("\n\n===Requirements===")[0]
    lines = []
    for item in history:
        if isinstance(item, Turn):
            lines.append(render_turn(item, persona.name, keep_plan=keep_plans))
        else:
            lines.append(render_perception(item))
    recalled = [_clean(m) for m in memories if _clean(m)]
    if recalled:
        lines.append(f"({_name(persona.name)} remembers: {'; '.join(recalled)})")
    transcript = "\n".join(lines)
    text = f"{FEWSHOT_PREAMBLE}{sheet}\n\n{CONVERSATION_START}{transcript}"
    if transcript:
        text += "\n"
    return text


def _literal_ranges(render: Callable[_P, Prompt]) -> Callable[_P, Prompt]:
    """Make `render` return its text as a `PromptText` that knows where quoted text is."""

    @functools.wraps(render)
    def marked(*args: _P.args, **kwargs: _P.kwargs) -> Prompt:
        token = _MARKING.set(True)
        try:
            prompt = render(*args, **kwargs)
        finally:
            _MARKING.reset(token)
        return msgspec.structs.replace(prompt, text=_unmark(prompt.text))

    return marked


@_literal_ranges
def render_prompt(
    persona: Persona,
    history: Sequence[HistoryItem],
    *,
    style: PromptStyle = "chatml",
    plan: bool = True,
    keep_plans: bool = False,
    chat_template: str | None = None,
    bos_token: str = "",
    eos_token: str = "",
    prefill: bool = True,
    memories: Sequence[str] = (),
    summary: str = "",
    calls: Sequence[CallSpec] = (),
) -> Prompt:
    """Render a character's next-turn prompt in one of the three styles.

    With `prefill` (the default) the prompt already begins the reply (`<system_thinking>`, or
    `NAME:` without a plan) so that even a base model starts in the right place. `memories`,
    `summary` and `calls` are rendered into the system prompt (see `render_system_prompt`).
    The text is a `PromptText`: its `literal` ranges are the quoted text (persona, perceptions,
    memories, earlier turns), which engines tokenize without special tokens.
    """
    prefill_text, start = _prefill(persona.name, plan, prefill)
    if style == "fewshot":
        text = render_fewshot(
            persona,
            history,
            plan=plan,
            keep_plans=keep_plans,
            memories=memories,
            summary=summary,
            calls=calls,
        )
        return Prompt(
            text=text + prefill_text, stop=["\n"], prefill=prefill_text, start=start, style=style
        )
    messages = build_messages(
        persona,
        history,
        plan=plan,
        keep_plans=keep_plans,
        memories=memories,
        summary=summary,
        calls=calls,
    )
    if style == "template":
        if not chat_template:
            raise ConfigError("style='template' needs the model's chat_template")
        text = render_template(
            messages, chat_template, prefill_text, bos_token=bos_token, eos_token=eos_token
        )
        stop = [eos_token] if eos_token else []
        return Prompt(text=text, stop=stop, prefill=prefill_text, start=start, style=style)
    if style != "chatml":
        raise ConfigError(f"unknown prompt style {style!r}")
    return Prompt(
        text=render_chatml(messages, prefill_text),
        stop=list(CHATML_STOP),
        prefill=prefill_text,
        start=start,
        style=style,
    )


# ---------------------------------------------------------------------------------------------
# Grammar
# ---------------------------------------------------------------------------------------------


def _gbnf_literal(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def build_grammar(
    name: str,
    *,
    plan: bool = True,
    prefilled: bool = True,
    max_plan_chars: int = MAX_PLAN_CHARS,
    max_thought_chars: int = MAX_THOUGHT_CHARS,
    max_action_chars: int = 120,
    max_speech_chars: int = 300,
    max_segments: int = 6,
    actions: Sequence[str] | None = None,
    calls: Sequence[CallSpec] | None = None,
    end: str = "\n",
) -> str:
    """GBNF for one HER turn, with a length cap on every section.

    The grammar covers what follows the prompt: when `prefilled`, the prompt already ends with
    `<system_thinking>` (plan) or `NAME:` (no plan; the turn then begins with a space).
    `actions`, when given, is the closed set of actions legal right now. `calls`, when given,
    are the typed actions that may be called in an action segment, each only with legal values
    (see `render_call`); free action text then may not begin with '[', so it can never be taken
    for a call. Text never contains '<' or a newline, so a section can only end by its closing
    tag. Decoding cost stays small because the backend samples freely and consults the grammar
    only to verify the token it picked (see `LlamaBackend`).
    """
    for label, n in (
        ("max_plan_chars", max_plan_chars),
        ("max_thought_chars", max_thought_chars),
        ("max_action_chars", max_action_chars),
        ("max_speech_chars", max_speech_chars),
        ("max_segments", max_segments),
    ):
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"{label} must be a positive integer")
    label_lit = _gbnf_literal(f"{name}: ")
    rules = []
    if plan:
        head = "" if prefilled else '"<system_thinking>" '
        rules.append(f"root ::= {head}plan {label_lit} body end")
        rules.append('plan ::= ptext "</system_thinking>"')
    else:
        head = '" "? ' if prefilled else f"{label_lit} "  # prefilled: the prompt ends "NAME:"
        rules.append(f"root ::= {head}body end")
    rules.append(f"end ::= {_gbnf_literal(end)}" if end else 'end ::= ""')
    rest = max_segments - 1
    rules.append(
        f"body ::= speech (tagged speech?){{0,{rest}}} | (tagged speech?){{1,{max_segments}}}"
    )
    rules.append("tagged ::= thought | action")
    rules.append('thought ::= "<role_thinking>" ttext "</role_thinking>"')
    forms = []
    if actions:
        forms += [_gbnf_literal(_clean(a)) for a in actions if _clean(a)]
    elif not calls:
        forms.append("atext")
    else:
        forms.append("ftext")
        rules.append(f'ftext ::= " "? [^<\\n\\[ ] [^<\\n]{{0,{max_action_chars - 2}}}')
    for k, (call_name, params) in enumerate(calls or []):
        parts = []
        for j, (key, spec) in enumerate(params):
            sep = " " if j == 0 else ", "
            parts.append(_gbnf_literal(f"{sep}{key}="))
            if isinstance(spec, list):
                values = [v for v in spec if v and not set(v) & _CALL_FORBIDDEN]
                if not values:
                    raise ConfigError(f"argument {key!r} of call {call_name!r} has no legal value")
                parts.append("(" + " | ".join(_gbnf_literal(v) for v in values) + ")")
            else:
                if not isinstance(spec, int) or spec < 1:
                    raise ConfigError(f"argument {key!r} of call {call_name!r}: bad text length")
                parts.append(f"[^,=<>\\[\\]\\n ] [^,=<>\\[\\]\\n]{{0,{spec - 1}}}")
        body = " ".join([_gbnf_literal(f"[{call_name}"), *parts, '"]"'])
        rules.append(f"call{k} ::= {body}")
        forms.append(f"call{k}")
    rules.append(f'action ::= "<role_action>" ({" | ".join(forms)}) "</role_action>"')
    # Sections hold at least one character; leading spaces are allowed because most tokens of
    # SentencePiece vocabularies begin with one, and refusing them would force slow resampling.
    rules.append(f"ptext ::= [^<\\n] [^<\\n]{{0,{max_plan_chars - 1}}}")
    rules.append(f"ttext ::= [^<\\n] [^<\\n]{{0,{max_thought_chars - 1}}}")
    rules.append(f"atext ::= [^<\\n] [^<\\n]{{0,{max_action_chars - 1}}}")
    # Speech opens with a word, not stray punctuation (small models like to emit a lone ".").
    rules.append(f'speech ::= " "? [^<\\n .,;:!?] [^<\\n]{{0,{max(max_speech_chars - 2, 0)}}}')
    return "\n".join(rules) + "\n"
