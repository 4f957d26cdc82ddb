"""Scene: the world's event bus. Who was there, who perceived what, whose turn it is.

Every event (speech, action, narration, an NPC's turn) records who perceived it. The scene's
log holds public content only: an NPC's plan and thoughts stay inside that character. When an
event happens, each character who perceives it gets the public part in its own memory; the
scene never copies anything else into anyone's memory, so no prompt can hold another's mind.

Players are names, not models: they perceive everything they are present for, and the game
shows them `scene.events`.

The scene sits above `Character`: it hands each character it adds a seat (the `Seat` protocol:
the seed of its next turn, where its finished turn goes, who else is present, where a blocked
reveal of a secret is reported) and delivers perceptions through `Character.perceive`. Its
accessors (`characters`, `players`, `events`, ...) take the scene's lock and return copies, so
no caller needs the lock. Saving is `to_state()` / `from_state()`
here; `save` / `load` and the save-file envelope are `_savefile`'s.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Sequence

import msgspec

from ._backends._base import Backend
from ._character import Character, CharacterState
from ._errors import ConfigError
from ._memory import Embedder
from ._names import unnameable
from ._savefile import Saveable
from ._secrets import BlockedReveal
from ._turn import Reply, TurnStream, mix_seed
from .format import ENVIRONMENT, Heard, Turn

__all__ = ["Event", "Scene", "SceneState"]


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


class SceneState(msgspec.Struct, kw_only=True):
    """A scene as saved: everything but the models (`Scene.to_state()`)."""

    name: str = ""
    seed: int | None = None
    clock: int = 0
    max_events: int = 10_000
    players: list[str] = msgspec.field(default_factory=list)
    characters: list[CharacterState] = msgspec.field(default_factory=list)
    events: list[Event] = msgspec.field(default_factory=list)


class _Seat:
    """A character's seat in a scene: all the character may use of it (`Seat` protocol)."""

    __slots__ = ("_name", "_scene")

    def __init__(self, scene: Scene, name: str) -> None:
        self._scene = scene
        self._name = name

    def turn_seed(self) -> int | None:
        return self._scene._turn_seed()

    def publish(self, turn: Turn) -> None:
        self._scene._publish(self._name, turn)

    def others(self) -> tuple[list[str], list[str]]:
        with self._scene._lock:
            characters = [n for n in self._scene._characters if n != self._name]
            return characters, list(self._scene._players)

    def report(self, blocked: BlockedReveal) -> None:
        self._scene._report(blocked)


class Scene(Saveable):
    """Characters and players in one place, and everything that happens between them.

        scene = Scene([mara, jory], player="Traveler")
        scene.say("Traveler", "Let me through, I have papers.")
        reply = scene.turn("Mara")

    `seed` makes every turn in the scene reproducible, also after save and load.
    `max_events` bounds the public log kept in `events` (characters remember on their own).
    `characters`, `players`, `events` are copies taken under the scene's lock: change the scene
    through its methods. `save` / `load` (and `dumps` / `loads`) take the keywords of
    `from_state`: `model` for every character, or `models` by name, and an `embedder`.
    """

    save_kind = "scene"
    state_type = SceneState

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
            if isinstance(c, Character) and c.seat is not None:
                raise ConfigError(f"{c.name!r} is already in another scene")
        if max_events < 1:
            raise ConfigError("max_events must be >= 1")
        self.name = name
        self.seed = seed
        self.max_events = max_events
        self._characters: dict[str, Character] = {}
        self._players: list[str] = []
        self._events: list[Event] = []
        self._last_event: dict[str, int] = {}  # speaker -> index of its latest event
        self._clock = 0  # counts events; drives per-turn seeds
        self._lock = threading.RLock()
        self._on_blocked: list[Callable[[BlockedReveal], None]] = []
        self._blocked: list[BlockedReveal] = []
        for who in players:
            self.add_player(who)
        for c in characters:
            self.add(c)

    def __repr__(self) -> str:
        return f"Scene(characters={list(self.characters)}, players={self.players})"

    # -- read-only views (copies, taken under the lock) -----------------------------------------

    @property
    def characters(self) -> dict[str, Character]:
        """The characters in the scene, by name."""
        with self._lock:
            return dict(self._characters)

    @property
    def players(self) -> list[str]:
        """The players in the scene."""
        with self._lock:
            return list(self._players)

    @property
    def present(self) -> list[str]:
        """Everyone in the scene: characters first, then players."""
        with self._lock:
            return [*self._characters, *self._players]

    @property
    def events(self) -> list[Event]:
        """The public log: the last `max_events` events, oldest first."""
        with self._lock:
            return list(self._events)

    @property
    def event_count(self) -> int:
        """How many events the public log holds now (at most `max_events`)."""
        with self._lock:
            return len(self._events)

    @property
    def clock(self) -> int:
        """How many events ever happened here; the next event's `index`."""
        with self._lock:
            return self._clock

    def __contains__(self, who: object) -> bool:
        """`name in scene` for a character or player; `character in scene` for that object."""
        with self._lock:
            if isinstance(who, Character):
                return self._characters.get(who.name) is who
            return who in self._characters or who in self._players

    # -- participants ---------------------------------------------------------------------------

    def _check_new_name(self, name: str) -> None:
        if name in self._characters or name in self._players or name == ENVIRONMENT:
            raise ConfigError(f"{name!r} is already in the scene (or is reserved)")

    def add(self, character: Character) -> Character:
        """Bring a character into the scene. It perceives what happens from now on."""
        if not isinstance(character, Character):
            raise ConfigError("Scene.add takes a Character")
        with self._lock:
            self._check_new_name(character.name)
            character.join(_Seat(self, character.name))  # raises if it sits in another scene
            self._characters[character.name] = character
        return character

    def add_player(self, name: str) -> None:
        if not isinstance(name, str) or not name.strip() or any(c in name for c in "<>\n:"):
            raise ConfigError(f"invalid player name {name!r}")
        if (bad := unnameable(name)) is not None:
            raise ConfigError(f"player name {name!r} contains the character {bad!r}")
        with self._lock:
            self._check_new_name(name.strip())
            self._players.append(name.strip())

    def remove(self, name: str) -> Character | None:
        """Take a character or player out of the scene; it perceives nothing more here."""
        with self._lock:
            if name in self._players:
                self._players.remove(name)
                return None
            character = self._get(name)
            del self._characters[name]
            if character.seat is not None:
                character.leave(character.seat)
            return character

    def _get(self, who: Character | str) -> Character:
        name = who.name if isinstance(who, Character) else who
        with self._lock:
            try:
                return self._characters[name]
            except KeyError:
                raise ConfigError(f"no character named {name!r} in this scene") from None

    # -- events ---------------------------------------------------------------------------------

    def _audience(self, speaker: str | None, to: Sequence[str] | None) -> list[str]:
        if to is None:
            return self.present
        unknown = [n for n in to if n not in self._characters and n not in self._players]
        if unknown:
            raise ConfigError(f"not in the scene: {', '.join(unknown)}")
        who = [*to] if speaker is None else [speaker, *to]
        return list(dict.fromkeys(who))

    def _record(self, kind: str, speaker: str, speech: str, actions: list[str], to) -> Event:
        with self._lock:
            perceivers = self._audience(speaker if speaker != ENVIRONMENT else None, to)
            event = Event(
                index=self._clock,
                kind=kind,
                speaker=speaker,
                speech=speech,
                actions=actions,
                perceivers=perceivers,
            )
            self._append(event)
            heard = Heard(speaker=speaker, speech=speech, actions=actions)
            for name in perceivers:
                c = self._characters.get(name)
                if c is not None:  # the speaker too: a scripted NPC line is its own turn
                    c.perceive(heard)
            return event

    def _append(self, event: Event) -> None:
        self._events.append(event)
        self._last_event[event.speaker] = event.index
        self._clock += 1
        if len(self._events) > self.max_events:
            del self._events[: len(self._events) - self.max_events]

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
        if speaker not in self._characters and speaker not in self._players:
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

    # -- what a seat asks of the scene ----------------------------------------------------------

    def _turn_seed(self) -> int | None:
        with self._lock:
            return None if self.seed is None else mix_seed(self.seed, self._clock)

    def _publish(self, speaker: str, turn: Turn) -> None:
        # A character's finished turn: everyone present perceives its public projection only.
        public = turn.public()
        if not public.segments:
            return
        with self._lock:
            perceivers = self.present
            event = Event(
                index=self._clock,
                kind="turn",
                speaker=speaker,
                speech=public.speech,
                actions=public.actions,
                perceivers=perceivers,
            )
            self._append(event)
            heard = Heard(speaker=speaker, speech=public.speech, actions=public.actions)
            for name in perceivers:
                other = self._characters.get(name)
                if other is not None and name != speaker:  # it remembers its own turn already
                    other.perceive(heard)

    def _report(self, blocked: BlockedReveal) -> None:
        with self._lock:
            self._blocked.append(blocked)
            del self._blocked[: max(len(self._blocked) - 100, 0)]
            listeners = list(self._on_blocked)
        for listener in listeners:
            listener(blocked)

    # -- secrets, memories, relationships -------------------------------------------------------

    def allow_reveal(self, who: Character | str, secret: str | None = None) -> None:
        """Let `who` say `secret` (all its secrets when None, or a part of them) in public."""
        self._get(who).allow_reveal(secret)

    def on_blocked_reveal(self, callback: Callable[[BlockedReveal], None]) -> None:
        """Call `callback(blocked)` whenever the secrets guard stops a character here.

        `blocked.text` holds the beginning of the secret: show it to no player.
        """
        if not callable(callback):
            raise ConfigError("on_blocked_reveal takes a callable")
        with self._lock:
            self._on_blocked.append(callback)

    @property
    def blocked_reveals(self) -> list[BlockedReveal]:
        """The last 100 reveals the secrets guard stopped here (not saved; never public)."""
        with self._lock:
            return list(self._blocked)

    def set_relationship(self, who: Character | str, other: str, note: str) -> None:
        """Set how character `who` regards `other` (an empty note removes it)."""
        self._get(who).set_relationship(other, note)

    # -- turns ----------------------------------------------------------------------------------

    def turn(self, who: Character | str | None = None, **options) -> Reply:
        """Generate the turn of `who` (default: `next_speaker()`) and return its Reply.

        `options` are `Character.stream`'s: `seed`, `max_tokens`, `priority="player"` for the
        NPC the player is waiting on, ..."""
        options.setdefault("private", True)
        return self.stream(who, **options).wait()

    def stream(self, who: Character | str | None = None, **options) -> TurnStream:
        """Stream the turn of `who`; public deltas only unless `private=True`. Options as
        in `turn` (turns of several characters may stream at once, from several threads)."""
        character = self._get(who if who is not None else self.next_speaker())
        return character.stream(**options)

    def next_speaker(self) -> str:
        """A simple choice for NPC-to-NPC talk: the NPC named in the last line, else the one
        who has waited longest (never the one who just spoke)."""
        with self._lock:
            if not self._characters:
                raise ConfigError("the scene has no characters")
            last = self._events[-1] if self._events else None
            candidates = [n for n in self._characters if last is None or n != last.speaker]
            if not candidates:
                return next(iter(self._characters))
            if last is not None:
                text = f"{last.speech} {' '.join(last.actions)}"
                for n in candidates:
                    if re.search(rf"\b{re.escape(n)}\b", text, re.IGNORECASE):
                        return n
            # When each last spoke in the log (-1: not in it), without reading the whole log.
            first = self._events[0].index if self._events else 0
            last_spoke = {n: self._last_event.get(n, -1) for n in candidates}
            last_spoke = {n: i if i >= first else -1 for n, i in last_spoke.items()}
            return min(candidates, key=lambda n: last_spoke[n])

    def transcript(self, viewer: str | None = None) -> list[Event]:
        """The public log, or only what `viewer` perceived."""
        with self._lock:
            if viewer is None:
                return list(self._events)
            return [e for e in self._events if viewer in e.perceivers]

    # -- state ----------------------------------------------------------------------------------

    def to_state(self) -> SceneState:
        """Everything this scene is but the models (characters' minds included), as saved."""
        with self._lock:
            return SceneState(
                name=self.name,
                seed=self.seed,
                clock=self._clock,
                max_events=self.max_events,
                players=list(self._players),
                characters=[c.to_state() for c in self._characters.values()],
                events=list(self._events),
            )

    @classmethod
    def from_state(
        cls,
        state: SceneState,
        *,
        model: Backend | None = None,
        models: dict[str, Backend] | None = None,
        embedder: Embedder | None = None,
    ) -> Scene:
        """The scene `state` describes. `model` serves every character, or `models` by name;
        `embedder`, if given, serves every character's long-term memory."""
        scene = cls(name=state.name, seed=state.seed, max_events=state.max_events)
        for p in state.players:
            scene.add_player(p)
        for cs in state.characters:
            m = (models or {}).get(cs.persona.name, model)
            scene.add(Character.from_state(cs, model=m, embedder=embedder))
        scene._events = list(state.events)
        scene._last_event = {e.speaker: e.index for e in scene._events}
        scene._clock = state.clock
        return scene
