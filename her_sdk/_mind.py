"""A character's mind, without its model: its persona, what it perceived and remembers, how it
regards others, and which of its secrets may come out.

`Character` (`_character`) is a `Mind` with a model: it adds the turns. Everything here only
records; nothing calls a model. The working memory (`memory`, verbatim) feeds the prompt; every
item also goes into long-term memory (`long_term`, `_memory.MemoryStore`), own thoughts marked
private; what the working memory drops waits in `_to_fold` for the next turn's summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from ._errors import ConfigError
from ._memory import Embedder, MemoryItem, MemoryKind, MemoryStore
from ._persona import Persona
from ._prompting import memory_text
from ._secrets import normalize
from .format import Heard, Segment, Turn

__all__ = ["ImportanceRater", "Mind"]

ImportanceRater = Literal["heuristic", "model"]


class Mind:
    """A persona and its memories (see the module doc); `Character` is one with a model."""

    def __init__(
        self,
        persona: Persona,
        *,
        max_memory: int,
        recall: int,
        summarize: bool,
        rate_importance: ImportanceRater,
        max_long_term: int,
        embedder: Embedder | None,
    ) -> None:
        if max_memory < 2:
            raise ConfigError("max_memory must be >= 2")
        if not isinstance(recall, int) or recall < 0:
            raise ConfigError("recall must be a whole number >= 0")
        if rate_importance not in ("heuristic", "model"):
            raise ConfigError("rate_importance must be 'heuristic' or 'model'")
        self.persona = persona
        self.max_memory = max_memory
        self.recall = recall
        self.summarize = summarize
        self.rate_importance: ImportanceRater = rate_importance
        self.memory: list[Heard | Turn] = []
        self.long_term = MemoryStore(capacity=max_long_term, embedder=embedder)
        self.summary = ""  # the running summary of what was folded out of `memory`
        self.revealable: list[str] = []  # secrets (or parts) the game allowed to come out
        self._to_fold: list[Heard | Turn] = []  # dropped from `memory`, not yet summarized
        self._unrated: list[MemoryItem] = []  # waiting for a model rating

    @property
    def name(self) -> str:
        return self.persona.name

    @property
    def max_long_term(self) -> int:
        """How many memories long-term memory keeps."""
        return self.long_term.capacity

    # -- perception and memory ------------------------------------------------------------------

    def perceive(self, heard: Heard) -> None:
        """Remember something this character perceived. Only public content belongs here.

        A line of its own (one the game scripted for it) is remembered as a turn it took, so
        that its prompt shows those words as its own.
        """
        if not isinstance(heard, Heard):
            raise ConfigError("perceive() takes a Heard (public speech/actions or narration)")
        if heard.speaker != self.name:
            self._remember(heard)
            return
        segments = [Segment("action", a) for a in heard.actions]
        if heard.speech:
            segments.append(Segment("speech", heard.speech))
        self._remember(Turn.from_segments(segments))

    def hear(self, speaker: str, text: str = "", action: str | Sequence[str] | None = None) -> None:
        """Shorthand: `speaker` said `text` (and did `action`) where this character could see."""
        if not speaker or not speaker.strip():
            raise ConfigError("speaker must be a non-empty name")
        actions = [action] if isinstance(action, str) else list(action or [])
        if not (text or "").strip() and not any(a.strip() for a in actions):
            raise ConfigError("nothing was said or done: give text or an action")
        self.perceive(Heard(speaker=speaker.strip(), speech=(text or "").strip(), actions=actions))

    def remember(self, text: str, *, importance: float | None = None) -> MemoryItem:
        """Plant a fact in this character's long-term memory ("The traveler saved my daughter").

        It comes back into the prompt when something related happens. `importance` (1-10)
        defaults to a rating like that of any memory (see `rate_importance`).
        """
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("remember() needs some text")
        return self._store(text, importance=importance, kind="planted", private=False)

    def _store(
        self, text: str, *, importance: float | None, kind: MemoryKind, private: bool
    ) -> MemoryItem:
        by_model = importance is None and self.rate_importance == "model"
        item = self.long_term.add(
            text, importance=importance, kind=kind, private=private, name=self.name
        )
        if by_model:
            self._unrated.append(item)
        return item

    def _remember(self, item: Heard | Turn) -> None:
        self.memory.append(item)
        text, private = memory_text(item, self.name)
        if text.split(":", 1)[1].strip():
            kind: MemoryKind = "own" if isinstance(item, Turn) else "perceived"
            self._store(text, importance=None, kind=kind, private=private)
        if len(self.memory) > self.max_memory:
            dropped = self.memory[: len(self.memory) - self.max_memory]
            del self.memory[: len(dropped)]
            if self.summarize:
                # Folded into the summary before the next turn; bounded if no turn comes.
                self._to_fold.extend(dropped)
                del self._to_fold[: max(len(self._to_fold) - self.max_memory, 0)]

    # -- relationships and secrets --------------------------------------------------------------

    @property
    def relationships(self) -> dict[str, str]:
        """How this character regards each person it has a note on (a copy)."""
        return dict(self.persona.relationships)

    def set_relationship(self, who: str, note: str) -> None:
        """Set how this character regards `who` (an empty note removes it). Saved with it."""
        if not isinstance(who, str) or not who.strip():
            raise ConfigError("set_relationship needs a name")
        rel = dict(self.persona.relationships)
        if note and note.strip():
            rel[who.strip()] = " ".join(note.split())
        else:
            rel.pop(who.strip(), None)
        self.persona = msgspec.structs.replace(self.persona, relationships=rel)

    def allow_reveal(self, secret: str | None = None) -> None:
        """Let this character say `secret` (its whole `secrets`, or a part of them) in public.

        A part must be a piece of the persona's secrets (compared case-insensitively).
        """
        secret = self.persona.secrets if secret is None else secret
        if not isinstance(secret, str) or not secret.strip():
            raise ConfigError("allow_reveal needs the secret (or a part of it)")
        if normalize(secret) not in normalize(self.persona.secrets):
            raise ConfigError(f"{secret!r} is not one of {self.name!r}'s secrets")
        if secret not in self.revealable:
            self.revealable.append(secret)
