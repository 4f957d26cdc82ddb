"""Quoted text in a prompt: how text the prompt quotes (rather than writes) is neutralised and
marked, so that it can never carry structure of its own and engines know where it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from itertools import accumulate

from ._contract import PromptText

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
# Every way text can break a line (CR, vertical tab, form feed, the Unicode line and paragraph
# separators, NEL, ...) becomes a newline before anything else, so quoted text that holds one
# cannot start a transcript line of its own.
_LINE_BREAK_RE = re.compile(r"\r\n?|[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# While `render_prompt` renders, quoted text is wrapped in these (private-use) marks, which
# survive a chat template; they become `PromptText.literal` ranges and never reach an engine.
_OPEN, _CLOSE = "\ue000", "\ue001"
_MARKS_RE = re.compile(f"([{_OPEN}{_CLOSE}])")
_PAIR = _OPEN + _CLOSE
_MARKING: ContextVar[bool] = ContextVar("her_format_marking", default=False)


def _neutralise(text: str) -> str:
    """`text` without markup, keeping its line breaks.

    Lines of up to 2,048 characters are cleaned once and remembered (the last 4,096 of them, 8
    million characters at worst): a prompt quotes the same history lines turn after turn, and a
    long game would otherwise clean all of them again on every render."""
    return _neutralise_line(text) if len(text) <= 2048 else _strip_markup(text)


def _strip_markup(text: str) -> str:
    text = text.replace(_OPEN, "").replace(_CLOSE, "")
    text = _LINE_BREAK_RE.sub("\n", text)
    for _ in range(8):
        cleaned = _MARKUP_RE.sub("", text)
        if cleaned == text:
            break
        text = cleaned
    return _EQUALS_RE.sub("=", _OPENER_RE.sub("", text))


_neutralise_line = lru_cache(maxsize=4096)(_strip_markup)


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
    pieces = _MARKS_RE.split(text)
    marks = pieces[1::2]
    if not marks:
        return PromptText(text)
    if "".join(marks) == _PAIR * (len(marks) // 2):
        # Marks that open and close in turn, never nested (every prompt `render_prompt`
        # makes): the ranges are where the pieces between them end, summed in C. A long
        # game's prompt quotes hundreds of lines, and a loop over them costs a turn dearly.
        ends = list(accumulate(map(len, pieces[::2])))
        return PromptText("".join(pieces[::2]), zip(ends[:-1:2], ends[1::2], strict=True))
    out: list[str] = []
    ranges: list[tuple[int, int]] = []
    pos = depth = start = 0
    for i, part in enumerate(pieces):
        if i % 2 == 0:
            out.append(part)
            pos += len(part)
        elif part == _OPEN:
            depth += 1
            if depth == 1:
                start = pos
        else:
            depth = max(0, depth - 1)
            if depth == 0:
                ranges.append((start, pos))
    return PromptText("".join(out), ranges)


@contextmanager
def _marking() -> Iterator[None]:
    """While it is open, quoted text is rendered with its marks (see `_unmark`)."""
    token = _MARKING.set(True)
    try:
        yield
    finally:
        _MARKING.reset(token)


def _remark(text: str) -> str:
    """A `PromptText`'s literal ranges as marks again (plain text is returned as it is), so
    that it can be rendered into a larger prompt and keep them."""
    literal = getattr(text, "literal", ())
    if not literal:
        return str(text)
    out, pos = [], 0
    for a, b in literal:
        out += [text[pos:a], _OPEN, text[a:b], _CLOSE]
        pos = b
    out.append(text[pos:])
    return "".join(out)
