"""Reading a HER turn: the incremental `TurnParser` and `parse_turn`.

Tolerant of what real models emit (missing or unclosed tags, legacy tags, a reasoning model's
leading `<think>` block, the CoSER `[thought]`/`(action)` style). The safety rule is absolute:
text inside a private section never comes out on a public channel, and an unclosed private
section stays private to the end of the turn.
"""

from __future__ import annotations

import re
from typing import Literal

from ._contract import PRIVATE_CHANNELS, PUBLIC_CHANNELS, Channel, Delta, Segment, Turn

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
