"""Turn scheduling for an engine that decodes many turns together: who starts, who decodes.

Many NPCs share one model. Running turns are decoded together in one batch per step; this module
decides, without touching the engine:

- **admission**: which waiting turns start when a sequence is free — the highest priority first,
  oldest first within a priority; a turn that has waited `age_bound_s` counts as top priority,
  so background turns never starve behind a stream of player-facing ones. The waiting queue is
  bounded: past `max_waiting`, `submit` raises `LimitExceededError` (RESOURCE_EXHAUSTED over
  gRPC) instead of queueing without end;
- **decoding**: which running turns get a token in the next step. Every turn of the top priority
  present decodes every step; lower-priority turns all decode together every `lower_every`
  steps, so each still advances. On a CPU a step of one token costs far less than a step of
  two (the matrix kernels change), while eight cost little more than two: so the top turn gets
  steps to itself, and the others come in bulk. That keeps a player-facing turn's words quick
  while background chatter goes on;
- **prompt reading**: a new turn's prompt is read one chunk per step, the most urgent turn's
  first; below the top priority present, only every `lower_read_every` steps.

Priorities are names: "player" (the NPC the player is talking to), "normal" (the default) and
"background" (ambient chatter). The module is pure Python: it holds items of any type and never
sees a token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Generic, Literal, TypeVar

from .._errors import ConfigError, LimitExceededError

__all__ = ["PRIORITIES", "Priority", "Scheduler", "priority_rank"]

Priority = Literal["player", "normal", "background"]
PRIORITIES: dict[str, int] = {"background": 0, "normal": 1, "player": 2}
_TOP = max(PRIORITIES.values())

T = TypeVar("T")


def priority_rank(priority: str) -> int:
    """The rank of a priority name (higher is served first); a bad name is a `ConfigError`."""
    try:
        return PRIORITIES[priority]
    except (KeyError, TypeError):
        names = ", ".join(repr(p) for p in PRIORITIES)
        raise ConfigError(f"priority must be one of {names}, not {priority!r}") from None


class _Waiting(Generic[T]):
    __slots__ = ("item", "order", "rank", "since")

    def __init__(self, item: T, rank: int, since: float, order: int) -> None:
        self.item = item
        self.rank = rank
        self.since = since
        self.order = order


class Scheduler(Generic[T]):
    """Admission queue and per-step decode choice (see the module doc). Not thread-safe: the
    engine calls it under its own lock."""

    def __init__(
        self,
        *,
        max_waiting: int = 256,
        age_bound_s: float = 10.0,
        lower_every: int = 4,
        lower_read_every: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_waiting < 0 or age_bound_s <= 0 or lower_every < 1 or lower_read_every < 1:
            raise ConfigError(
                "max_waiting must be >= 0, age_bound_s > 0, lower_every and lower_read_every >= 1"
            )
        self.max_waiting = max_waiting
        self.age_bound_s = age_bound_s
        self.lower_every = lower_every
        self.lower_read_every = lower_read_every
        self._clock = clock
        self._waiting: list[_Waiting[T]] = []
        self._order = 0

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def waiting(self) -> list[T]:
        return [w.item for w in self._waiting]

    def submit(self, item: T, rank: int) -> None:
        """Queue `item`; `LimitExceededError` when `max_waiting` items already wait."""
        if len(self._waiting) >= self.max_waiting:
            raise LimitExceededError(
                f"{len(self._waiting)} turns are already waiting for the model "
                f"(max_waiting={self.max_waiting}); try again later"
            )
        self._order += 1
        self._waiting.append(_Waiting(item, rank, self._clock(), self._order))

    def remove(self, item: T) -> bool:
        """Take a waiting item out (a cancelled turn); False if it was not waiting."""
        for i, w in enumerate(self._waiting):
            if w.item is item:
                del self._waiting[i]
                return True
        return False

    def admit(self, free: int) -> list[T]:
        """Up to `free` waiting items to start now, best first."""
        if free <= 0 or not self._waiting:
            return []
        now = self._clock()

        def key(w: _Waiting[T]) -> tuple[int, int]:
            rank = _TOP if now - w.since >= self.age_bound_s else w.rank
            return (-rank, w.order)

        self._waiting.sort(key=key)
        chosen, self._waiting = self._waiting[:free], self._waiting[free:]
        return [w.item for w in chosen]

    def decoders(self, ranks: Sequence[int], top: int, step: int) -> list[int]:
        """Indices of the running turns that decode at engine step `step`.

        `ranks[i]` is turn i's priority rank; `top` is the highest rank among all running turns
        (turns whose prompt is still being read included, so a player-facing prompt already
        slows the background down).
        """
        every = step % self.lower_every == 0
        return [i for i, r in enumerate(ranks) if r >= top or every]

    def reads(self, rank: int, top: int, step: int) -> bool:
        """Whether the prompt chunk of a turn of `rank` is read at engine step `step`: always at
        the top rank, every `lower_read_every` steps below it (reading a chunk costs several
        decode steps, which would slow the top-priority turn down)."""
        return rank >= top or step % self.lower_read_every == 0
