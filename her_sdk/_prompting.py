"""What goes into a character's next prompt: what it recalls, whom it may name, and how the
prompt is fitted into the model's context window.

Pure functions over a character's memory; the character (`_character`) calls them before each
turn and renders the result with `her_sdk.format.render_prompt`. Nothing here calls a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

from ._actions import Target
from ._memory import MemoryStore
from ._persona import Persona
from .format import ENVIRONMENT, Heard, Prompt, Segment, Turn

__all__ = ["fit", "memory_text", "recall", "recall_query", "target_names"]

# Where the oldest memories were left out of a prompt and no summary stands in for them.
_TRIMMED = Heard(speaker=ENVIRONMENT, speech="(Earlier events are no longer remembered.)")


def memory_text(item: Heard | Turn, name: str) -> tuple[str, bool]:
    """How `name` remembers `item` in long-term memory, and whether that holds its thoughts."""
    if isinstance(item, Heard):
        return _heard_memory(item.speaker, item.speech, tuple(item.actions)), False
    return _turn_memory(tuple(item.segments), name), bool(item.thoughts)


# Every recall leaves out the texts of the whole working memory (a few hundred items in a long
# game), the same items turn after turn: each text is made once, keyed by the item's content.
@lru_cache(maxsize=8192)
def _heard_memory(speaker: str, speech: str, actions: tuple[str, ...]) -> str:
    acts = " ".join(f"({a})" for a in actions if a.strip())
    return f"{speaker}: {' '.join(x for x in (acts, speech) if x)}"


@lru_cache(maxsize=8192)
def _turn_memory(segments: tuple[Segment, ...], name: str) -> str:
    parts = []
    for seg in segments:
        if seg.channel == "action":
            parts.append(f"({seg.text})")
        elif seg.channel == "speech":
            parts.append(seg.text)
        elif seg.channel == "thought":
            parts.append(f"[I thought: {seg.text}]")
    return f"{name} (me): {' '.join(parts)}"


def recall_query(memory: Sequence[Heard | Turn]) -> str:
    """What just happened (up to three items since the character's own last turn), without
    speaker labels: a name that starts every line would make every memory of that person
    relevant."""
    recent: list[str] = []
    for item in reversed(memory[-3:]):
        if isinstance(item, Turn):
            break
        recent.append(" ".join([*item.actions, item.speech]))
    if not recent and memory:  # it spoke last: its own words are the situation
        item = memory[-1]
        recent.append(" ".join([*item.actions, item.speech]))
    return " ".join(reversed(recent))


def recall(
    long_term: MemoryStore,
    memory: Sequence[Heard | Turn],
    name: str,
    k: int,
    *,
    touch: bool,
) -> list[str]:
    """Texts of the `k` long-term memories most useful now, leaving out what the working
    `memory` already holds verbatim; `touch` marks them as recalled (a turn does, a look at
    the prompt does not)."""
    if not k or not len(long_term):
        return []
    exclude = {memory_text(i, name)[0] for i in memory}
    items = long_term.recall(recall_query(memory), k=k, exclude=exclude, touch=touch)
    return [it.text for it in items]


def target_names(
    name: str,
    persona: Persona,
    memory: Sequence[Heard | Turn],
    present: tuple[list[str], list[str]] | None,
) -> dict[Target, list[str]]:
    """Who each `Target` of a typed action may name now: those `present` (characters,
    players) in the character's scene, else everyone it knows of."""
    if present is not None:
        characters, players = present
    else:
        known = [*persona.others, *persona.relationships]
        known += [h.speaker for h in memory if isinstance(h, Heard)]
        characters = players = [n for n in dict.fromkeys(known) if n not in (name, ENVIRONMENT)]
    return {
        Target.CHARACTER: list(characters),
        Target.PLAYER: list(players),
        Target.ANYONE: list(dict.fromkeys([*characters, *players])),
    }


def fit(
    render: Callable[[Sequence[Heard | Turn]], Prompt],
    count_tokens: Callable[[str], int],
    memory: Sequence[Heard | Turn],
    budget: int,
    *,
    summarized: bool,
    hint: int = 0,
) -> tuple[Prompt, int] | None:
    """(the prompt of as much of `memory` as fits in `budget` tokens, how many of its oldest
    items that leaves out), or None when not even the persona fits. Without a running summary
    (`summarized`) the prompt says that earlier events are no longer remembered.

    `hint` is where the search starts: the last turn's cut, which in a long game is this turn's
    or next to it, so a turn renders its prompt two or three times instead of once per halving
    of the whole memory. Any hint gives the same answer.
    """
    n = len(memory)
    head = [] if summarized else [_TRIMMED]
    tried: dict[int, Prompt | None] = {}

    def attempt(k: int) -> Prompt | None:  # the prompt without the k oldest items, if it fits
        if k not in tried:
            p = render(memory if k == 0 else [*head, *memory[k:]])
            tried[k] = p if count_tokens(p.text) <= budget else None
        return tried[k]

    full = attempt(0)
    if full is not None:
        return full, 0
    # From one dropped item on, the prompt also says earlier events are gone, so only k >= 1
    # shrinks monotonically: search there (attempt(0) is known not to fit).
    k = min(max(hint, 1), n)
    if attempt(k) is not None:  # gallop towards fewer dropped items, then bisect
        good, step = k, 1
        while good > 1 and attempt(max(good - step, 1)) is not None:
            good, step = max(good - step, 1), step * 2
        bad = max(good - step, 1) if good > 1 else 0
    else:  # gallop towards more dropped items, then bisect
        bad, step = k, 1
        while True:
            if bad == n:
                return None  # not even the persona fits
            nxt = min(bad + step, n)
            if attempt(nxt) is not None:
                good = nxt
                break
            bad, step = nxt, step * 2
    while good - bad > 1:  # attempt(bad) does not fit, attempt(good) does
        mid = (bad + good) // 2
        if attempt(mid) is not None:
            good = mid
        else:
            bad = mid
    prompt = attempt(good)
    assert prompt is not None
    return prompt, good
