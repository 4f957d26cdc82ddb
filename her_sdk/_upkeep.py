"""The model calls a character's memory makes between its turns: importance ratings of new
memories, and the running summary that what no longer fits is folded into.

They are not HER turns but plain requests, rendered in the model's own prompt style by
`her_sdk.format.render_messages`; their wording is here too. The character (`_character`)
decides when to make them and keeps the results.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

from ._backends._base import Backend, Sampling
from ._errors import GenerationError
from ._memory import MemoryItem
from ._persona import Persona
from .format import Message, render_messages, render_system_prompt
from .format._quote import _clean, _marking, _name, _unmark

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
        rating_messages(name, [it.text for it in pending]),
        rating_grammar(len(pending)),
        4 * len(pending) + 4,
    )
    ratings = parse_ratings(answer, len(pending))
    if ratings is None:  # keep the heuristic ratings
        log.debug("importance rating of %s unreadable: %r", name, answer[:80])
        return
    for it, r in zip(pending, ratings, strict=True):
        it.importance = r


def summarize(ask: Ask, persona: Persona, summary: str, lines: Sequence[str]) -> str:
    """The running summary of `persona` with `lines` (its oldest memories) folded in: one call,
    in its own words. An empty answer raises `GenerationError`."""
    with _marking():  # the persona's fields are quoted text: literal ranges, as in a turn
        sheet = _unmark(
            render_system_prompt(persona, plan=False).split("\n\n===Requirements===")[0]
        )
    text = ask(
        summary_messages(persona.name, sheet, summary, lines, max_words=SUMMARY_WORDS),
        summary_grammar(SUMMARY_WORDS * 8),
        SUMMARY_WORDS * 2,
    )
    text = " ".join(text.replace("<", " ").split())
    if not text:
        raise GenerationError(f"the model wrote an empty summary for {persona.name!r}")
    return text


# -- the wording of these calls ---------------------------------------------------------------


# Memories, the summary and names are quoted text (a player's words, a model's turns): each is
# neutralised and marked literal, exactly as in a turn's prompt, so a line like
# "<|im_end|><|im_start|>system ..." can forge neither the text nor a control token.


def _transcript(lines: Sequence[str]) -> str:
    return "\n".join(f"- {_clean(line)}" for line in lines)


def summary_messages(
    name: str,
    sheet: str,
    summary: str,
    events: Sequence[str],
    *,
    max_words: int,
) -> list[tuple[str, str]]:
    """(role, content) messages asking the model for `name`'s running summary.

    `sheet` is the character's system prompt (who it is); `summary` what it remembered so far;
    `events` the lines to fold in, oldest first. The summary is the character's own, in the first
    person: it may hold its thoughts, as they stay in its own prompt.
    """
    with _marking():
        who = _name(name)
        ask = [
            f"You are {who}. Below is what you remember of the story so far, and what happened "
            "after it.",
        ]
        if summary:
            ask.append(f"What you remember so far:\n{_clean(summary)}")
        ask.append(f"What happened after that:\n{_transcript(events)}")
        ask.append(
            f"Write, as {who} in the first person, one paragraph of at most {max_words} words "
            "that keeps everything worth remembering from both: who is who, what happened, what "
            "was promised or revealed, how you feel about the others. Plain text only."
        )
        return [("system", sheet), ("user", _unmark("\n\n".join(ask)))]


def summary_grammar(max_chars: int) -> str:
    """GBNF of a plain paragraph (no markup, no line breaks) of at most `max_chars`."""
    return f"root ::= [^<\\n \\t] [^<\\n]{{0,{max_chars - 1}}}\n"


def rating_messages(name: str, texts: Sequence[str]) -> list[tuple[str, str]]:
    """(role, content) messages asking the model to rate each memory's importance 1-10."""
    with _marking():
        lines = _unmark("\n".join(f"{i + 1}. {_clean(t)}" for i, t in enumerate(texts)))
        system = _unmark(
            "You rate memories. On a scale of 1 to 10, where 1 is purely mundane (e.g. a "
            "greeting, the weather) and 10 is extremely poignant (e.g. a death, a betrayal, a "
            f"life saved), rate how much each memory matters to {_name(name)}. Answer with one "
            "number per line and nothing else."
        )
    return [("system", system), ("user", lines)]


def rating_grammar(n: int) -> str:
    """GBNF of `n` ratings, one per line."""
    return f'root ::= (rating "\\n"){{{n}}}\nrating ::= [1-9] | "10"\n'


def parse_ratings(text: str, n: int) -> list[float] | None:
    """The `n` ratings in the model's answer, or None when it did not give exactly `n`."""
    found = [float(m) for m in re.findall(r"\b(10|[1-9])\b", text)]
    return found[:n] if len(found) >= n else None
