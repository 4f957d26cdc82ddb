"""What the server holds, counted against its limits: events per scene (`max_scene_events`) and
characters of text in all (`max_total_chars`).

Every copy counts. A scene's log holds each event once, and every character that perceives it
keeps its own copy in its memories, so a line heard by eight NPCs costs nine times its length.
Deleting frees exactly what it drops: a scene its log, a character its memories (a scene deleted
with `keep_characters` frees only its log). Text is counted as it arrives, never re-measured:
what a character forgets later still counts until it is deleted, so the count is an upper bound
of what is held.
"""

from __future__ import annotations

import threading

import msgspec

from .._errors import LimitExceededError

__all__ = ["TextBudget", "text_chars"]


def text_chars(obj: object) -> int:
    """Characters of text in `obj` (a save's state, or part of one): every string, keys too."""
    total, stack = 0, [msgspec.to_builtins(obj)]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return total


class TextBudget:
    """The counts of one server; thread-safe."""

    def __init__(self, max_scene_events: int, max_total_chars: int) -> None:
        self.max_scene_events = max_scene_events
        self.max_total_chars = max_total_chars
        self.total = 0  # characters held, every copy counted
        self._scenes: dict[str, list[int]] = {}  # scene id -> [events, characters in its log]
        self._kept: dict[str, int] = {}  # character id -> characters in its memories
        self._lock = threading.Lock()

    def charge(
        self, scene: str, events: int, chars: int, holders: dict[str, int] | None = None
    ) -> None:
        """Count `events` and `chars` of text in `scene`'s log and `holders[character]` kept by
        each character; past a limit nothing is counted and `LimitExceededError` is raised."""
        holders = holders or {}
        with self._lock:
            used = self._scenes.setdefault(scene, [0, 0])
            if used[0] + events > self.max_scene_events:
                raise LimitExceededError(
                    f"the scene has recorded {used[0]} events, the most this server allows in "
                    "one scene: save it and go on in a new one"
                )
            total = chars + sum(holders.values())
            if self.total + total > self.max_total_chars:
                raise LimitExceededError(
                    f"the server holds {self.max_total_chars} characters of text (every "
                    "character that heard a line keeps its own copy): delete scenes or "
                    "characters it no longer needs"
                )
            self._add(used, events, chars, holders)

    def record(self, scene: str, chars: int, holders: dict[str, int]) -> None:
        """Count text that is already held (a finished turn: never cut for the budget)."""
        with self._lock:
            if scene in self._scenes:
                self._add(self._scenes[scene], 0, chars, holders)

    def _add(self, used: list[int], events: int, chars: int, holders: dict[str, int]) -> None:
        used[0] += events
        used[1] += chars
        for cid, n in holders.items():
            self._kept[cid] = self._kept.get(cid, 0) + n
        self.total += chars + sum(holders.values())

    def drop_scene(self, scene: str) -> None:
        """A scene's log is gone (its characters keep what they heard)."""
        with self._lock:
            used = self._scenes.pop(scene, None)
            if used is not None:
                self.total -= used[1]

    def drop_character(self, character: str) -> None:
        """A character and its memories are gone."""
        with self._lock:
            self.total -= self._kept.pop(character, 0)
