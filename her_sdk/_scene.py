"""Scene: the world's event bus. Who was there, who perceived what, whose turn it is.

Every event (speech, action, narration, an NPC's turn) records who perceived it. The scene's
log holds public content only: an NPC's plan and thoughts stay inside that character. When an
event happens, each character who perceives it gets the public part in its own memory; the
scene never copies anything else into anyone's memory, so no prompt can hold another's mind.

Players are names, not models: they perceive everything they are present for, and the game
shows them `scene.events`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence

import msgspec

from ._character import Character, Reply, TurnStream
from ._errors import ConfigError
from .format import ENVIRONMENT, Heard, Turn

__all__ = ["Event", "Scene"]


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Something that happened in public. `perceivers` are the names that saw or heard it."""

    index: int
    kind: str  # "speech" | "narration" | "turn"
    speaker: str
    speech: str = ""
    actions: list[str] = msgspec.field(default_factory=list)
    perceivers: list[str] = msgspec.field(default_factory=list)

    @property
    def text(self) -> str:
        parts = [f"({a})" for a in self.actions]
        if self.speech:
            parts.append(self.speech)
        return " ".join(parts)


class Scene:
    """Characters and players in one place, and everything that happens between them.

        scene = Scene([mara, jory], player="Traveler")
        scene.say("Traveler", "Let me through, I have papers.")
        reply = scene.turn("Mara")

    `seed` makes every turn in the scene reproducible, also after save and load.
    `max_events` bounds the public log kept in `events` (characters remember on their own).
    """

    def __init__(
        self,
        characters: Iterable[Character] = (),
        player: str | Sequence[str] | None = None,
        *,
        name: str = "",
        seed: int | None = None,
        max_events: int = 10_000,
    ) -> None:
        characters = list(characters)
        players = [player] if isinstance(player, str) else list(player or [])
        names = [c.name for c in characters if isinstance(c, Character)] + players
        if len(set(names)) != len(names):
            raise ConfigError("names in a scene must be unique")
        for c in characters:  # validate everything before attaching anything
            if isinstance(c, Character) and c.scene is not None:
                raise ConfigError(f"{c.name!r} is already in another scene")
        if max_events < 1:
            raise ConfigError("max_events must be >= 1")
        self.name = name
        self.seed = seed
        self.max_events = max_events
        self.characters: dict[str, Character] = {}
        self.players: list[str] = []
        self.events: list[Event] = []
        self.clock = 0  # counts events; drives per-turn seeds
        self._lock = threading.RLock()
        for who in players:
            self.add_player(who)
        for c in characters:
            self.add(c)

    def __repr__(self) -> str:
        return f"Scene(characters={list(self.characters)}, players={self.players})"

    # -- participants ---------------------------------------------------------------------------

    def _check_new_name(self, name: str) -> None:
        if name in self.characters or name in self.players or name == ENVIRONMENT:
            raise ConfigError(f"{name!r} is already in the scene (or is reserved)")

    def add(self, character: Character) -> Character:
        """Bring a character into the scene. It perceives what happens from now on."""
        if not isinstance(character, Character):
            raise ConfigError("Scene.add takes a Character")
        with self._lock:
            self._check_new_name(character.name)
            if character.scene is not None and character.scene is not self:
                raise ConfigError(f"{character.name!r} is already in another scene")
            self.characters[character.name] = character
            character.scene = self
        return character

    def add_player(self, name: str) -> None:
        if not isinstance(name, str) or not name.strip() or any(c in name for c in "<>\n:"):
            raise ConfigError(f"invalid player name {name!r}")
        with self._lock:
            self._check_new_name(name.strip())
            self.players.append(name.strip())

    def remove(self, name: str) -> Character | None:
        """Take a character or player out of the scene; it perceives nothing more here."""
        with self._lock:
            if name in self.players:
                self.players.remove(name)
                return None
            character = self._get(name)
            del self.characters[name]
            character.scene = None
            return character

    def _get(self, who: Character | str) -> Character:
        name = who.name if isinstance(who, Character) else who
        try:
            return self.characters[name]
        except KeyError:
            raise ConfigError(f"no character named {name!r} in this scene") from None

    @property
    def present(self) -> list[str]:
        return [*self.characters, *self.players]

    # -- events ---------------------------------------------------------------------------------

    def _audience(self, speaker: str | None, to: Sequence[str] | None) -> list[str]:
        if to is None:
            return self.present
        unknown = [n for n in to if n not in self.characters and n not in self.players]
        if unknown:
            raise ConfigError(f"not in the scene: {', '.join(unknown)}")
        who = [*to] if speaker is None else [speaker, *to]
        return list(dict.fromkeys(who))

    def _record(self, kind: str, speaker: str, speech: str, actions: list[str], to) -> Event:
        with self._lock:
            perceivers = self._audience(speaker if speaker != ENVIRONMENT else None, to)
            event = Event(
                index=self.clock,
                kind=kind,
                speaker=speaker,
                speech=speech,
                actions=actions,
                perceivers=perceivers,
            )
            self._append(event)
            heard = Heard(speaker=speaker, speech=speech, actions=actions)
            for name in perceivers:
                c = self.characters.get(name)
                if c is None:
                    continue
                if name == speaker:  # a scripted line for an NPC: it remembers saying it
                    c._remember(_scripted_turn(speech, actions))
                else:
                    c._remember(heard)
            return event

    def _append(self, event: Event) -> None:
        self.events.append(event)
        self.clock += 1
        if len(self.events) > self.max_events:
            del self.events[: len(self.events) - self.max_events]

    def say(
        self,
        speaker: str,
        text: str = "",
        action: str | Sequence[str] | None = None,
        *,
        to: Sequence[str] | None = None,
    ) -> Event:
        """`speaker` (a player or a character) says `text` and/or does `action`.

        Everyone present perceives it, or only `to` (and the speaker) for a whisper.
        """
        if speaker not in self.characters and speaker not in self.players:
            raise ConfigError(f"{speaker!r} is not in the scene")
        actions = [action] if isinstance(action, str) else list(action or [])
        actions = [a.strip() for a in actions if a and a.strip()]
        text = (text or "").strip()
        if not text and not actions:
            raise ConfigError("nothing was said or done: give text or an action")
        return self._record("speech", speaker, text, actions, to)

    def narrate(self, text: str, *, to: Sequence[str] | None = None) -> Event:
        """Narration ("Environment: ...") perceived by everyone present, or only `to`."""
        if not text or not text.strip():
            raise ConfigError("narration text is empty")
        return self._record("narration", ENVIRONMENT, text.strip(), [], to)

    def _on_turn(self, character: Character, turn: Turn) -> None:
        # Called by the character after its turn: broadcast only the public projection.
        public = turn.public()
        if not public.segments:
            return
        with self._lock:
            perceivers = self.present
            event = Event(
                index=self.clock,
                kind="turn",
                speaker=character.name,
                speech=public.speech,
                actions=public.actions,
                perceivers=perceivers,
            )
            self._append(event)
            heard = Heard(speaker=character.name, speech=public.speech, actions=public.actions)
            for name in perceivers:
                other = self.characters.get(name)
                if other is not None and other is not character:
                    other._remember(heard)

    # -- turns ----------------------------------------------------------------------------------

    def turn(self, who: Character | str | None = None, **options) -> Reply:
        """Generate the turn of `who` (default: `next_speaker()`) and return its Reply."""
        options.setdefault("private", True)
        return self.stream(who, **options).wait()

    def stream(self, who: Character | str | None = None, **options) -> TurnStream:
        """Stream the turn of `who`; public deltas only unless `private=True`."""
        character = self._get(who if who is not None else self.next_speaker())
        return character.stream(**options)

    def next_speaker(self) -> str:
        """A simple choice for NPC-to-NPC talk: the NPC named in the last line, else the one
        who has waited longest (never the one who just spoke)."""
        with self._lock:
            if not self.characters:
                raise ConfigError("the scene has no characters")
            last = self.events[-1] if self.events else None
            candidates = [n for n in self.characters if last is None or n != last.speaker]
            if not candidates:
                return next(iter(self.characters))
            if last is not None:
                text = f"{last.speech} {' '.join(last.actions)}"
                for n in candidates:
                    if re.search(rf"\b{re.escape(n)}\b", text, re.IGNORECASE):
                        return n
            last_spoke = {n: -1 for n in candidates}
            for e in self.events:
                if e.speaker in last_spoke:
                    last_spoke[e.speaker] = e.index
            return min(candidates, key=lambda n: last_spoke[n])

    def transcript(self, viewer: str | None = None) -> list[Event]:
        """The public log, or only what `viewer` perceived."""
        with self._lock:
            if viewer is None:
                return list(self.events)
            return [e for e in self.events if viewer in e.perceivers]

    # -- state ----------------------------------------------------------------------------------

    def save(self, path: str) -> None:
        """Write the whole scene (characters' minds included) atomically to `path` (JSON)."""
        from ._state import save_scene

        save_scene(self, path)

    @classmethod
    def load(cls, path: str, *, model=None, models: dict | None = None) -> Scene:
        """Read a scene written by `save`. `model` serves every character, or `models` by name."""
        from ._state import load_scene

        return load_scene(path, model=model, models=models)


def _scripted_turn(speech: str, actions: list[str]) -> Turn:
    from .format import Segment

    segs = [Segment("action", a) for a in actions]
    if speech:
        segs.append(Segment("speech", speech))
    return Turn.from_segments(segs)
