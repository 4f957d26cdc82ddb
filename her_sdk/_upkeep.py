"""The model calls a character's memory makes between its turns: importance ratings of new
memories, and the running summary that what no longer fits is folded into.

They are not HER turns but plain requests, rendered in the model's own prompt style by
`her_sdk.format.render_messages`; their wording lives in `_memory`. The character (`_character`)
decides when to make them and keeps the results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from . import _memory
from ._backends._base import Backend, Sampling
from ._errors import GenerationError
from ._memory import MemoryItem
from ._persona import Persona
from .format import Message, render_messages, render_system_prompt

__all__ = ["Ask", "ask", "rate_importance", "summarize"]

log = logging.getLogger("her_sdk")

# (messages as (role, content) pairs, GBNF grammar, token budget) -> the model's answer
Ask = Callable[[list[tuple[str, str]], str, int], str]

SUMMARY_WORDS = 120  # the longest running summary, in words


def ask(
    model: Backend, messages: list[tuple[str, str]], sampling: Sampling, grammar: str | None
) -> str:
    """One plain request to `model`; its answer, stripped."""
    text, stop = render_messages([Message(r, c) for r, c in messages], model)
    stream = model.stream(text, stop=stop, sampling=sampling, grammar=grammar)
    try:
        return "".join(stream).strip()
    finally:
        stream.close()


def rate_importance(ask: Ask, name: str, pending: Sequence[MemoryItem]) -> None:
    """Rate `pending` memories of `name` in one call; unreadable answers keep their ratings."""
    if not pending:
        return
    answer = ask(
        _memory.rating_messages(name, [it.text for it in pending]),
        _memory.rating_grammar(len(pending)),
        4 * len(pending) + 4,
    )
    ratings = _memory.parse_ratings(answer, len(pending))
    if ratings is None:  # keep the heuristic ratings
        log.debug("importance rating of %s unreadable: %r", name, answer[:80])
        return
    for it, r in zip(pending, ratings, strict=True):
        it.importance = r


def summarize(ask: Ask, persona: Persona, summary: str, lines: Sequence[str]) -> str:
    """The running summary of `persona` with `lines` (its oldest memories) folded in: one call,
    in its own words. An empty answer raises `GenerationError`."""
    sheet = render_system_prompt(persona, plan=False).split("\n\n===Requirements===")[0]
    text = ask(
        _memory.summary_messages(persona.name, sheet, summary, lines, max_words=SUMMARY_WORDS),
        _memory.summary_grammar(SUMMARY_WORDS * 8),
        SUMMARY_WORDS * 2,
    )
    text = " ".join(text.replace("<", " ").split())
    if not text:
        raise GenerationError(f"the model wrote an empty summary for {persona.name!r}")
    return text
