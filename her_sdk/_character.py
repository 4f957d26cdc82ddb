"""Character: one NPC with a persona, a memory of what it perceived, and a private mind.

A character's prompt is built from two things only: its own persona and its own memory. The
memory holds what it perceived (other characters' *public* actions and speech, narration) and its
own past turns, thoughts included. Nothing else can reach its prompt, which is how knowledge
isolation holds by construction: a `Scene` hands each character only the public part of what
others did, and only if that character was there to perceive it.

Beyond that working memory (the recent items, verbatim), a character keeps a long-term memory
(`_memory.MemoryStore`) from which the most useful items are recalled before each turn, and a
running summary, written by the model from its point of view, of what no longer fits. Both are
its own, like its thoughts. A turn may carry calls of typed actions (`_actions`), and a secrets
guard (`_secrets`) keeps the persona's secrets out of what it says and does in public.

Generation streams: `character.stream()` yields typed `Delta`s as tokens arrive (public
channels only unless `private=True`) and leaves the finished `Reply` on the stream object.

A character knows nothing of `Scene`. A scene that adds it hands it a `Seat`: the two things it
needs from the scene (the seed of its next turn, and where its finished turn goes). The scene
delivers what the character perceives through `perceive()`. Saving is `to_state()` /
`from_state()` here, inside the save-file envelope of `_state`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec
from msgspec import UNSET, UnsetType

from . import _memory, _state
from ._actions import Action, ActionState, Call, InvalidCall, Target, check_actions, read_calls
from ._backends._base import Backend, CancelToken, Sampling, TextStream
from ._backends._scheduler import Priority, priority_rank
from ._errors import Cancelled, ConfigError, ContextOverflowError, GenerationError, StateError
from ._memory import Embedder, MemoryItem, MemoryStore
from ._persona import Persona
from ._secrets import BlockedReveal, SecretsGuard, normalize
from .format import (
    ENVIRONMENT,
    PRIVATE_CHANNELS,
    CallSpec,
    Delta,
    Heard,
    Message,
    Prompt,
    Segment,
    Turn,
    TurnParser,
    build_grammar,
    render_messages,
    render_prompt,
    render_system_prompt,
)

__all__ = ["Character", "CharacterState", "Reply", "Seat", "TurnStream"]

log = logging.getLogger("her_sdk")

_TRIMMED = Heard(speaker=ENVIRONMENT, speech="(Earlier events are no longer remembered.)")
ImportanceRater = Literal["heuristic", "model"]


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """One finished turn of a character.

    Public: `speech`, `actions` (as written, calls in their bracket form). Private: `plan`,
    `thoughts` (yours to show in a debug view or a "read mind" mechanic; other characters never
    see them). `raw` is the model's text.

    For the game: `calls`, the legal calls of typed actions the character made, in order;
    `invalid_calls`, calls it wrote that were not legal (only possible without a grammar);
    `blocked_reveals`, secrets the guard stopped it from saying (`finish_reason` is then
    "blocked": the turn ends where the reveal began).
    """

    character: str
    speech: str = ""
    actions: list[str] = msgspec.field(default_factory=list)
    plan: str = ""
    thoughts: list[str] = msgspec.field(default_factory=list)
    segments: list[Segment] = msgspec.field(default_factory=list)
    raw: str = ""
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_s: float | None = None
    first_speech_s: float | None = None
    total_s: float = 0.0
    calls: list[Call] = msgspec.field(default_factory=list)
    invalid_calls: list[InvalidCall] = msgspec.field(default_factory=list)
    blocked_reveals: list[BlockedReveal] = msgspec.field(default_factory=list)

    @property
    def turn(self) -> Turn:
        return Turn.from_segments(self.segments)

    @property
    def public_text(self) -> str:
        """What onlookers perceive: actions in parentheses, then speech."""
        parts = [f"({a})" for a in self.actions]
        if self.speech:
            parts.append(self.speech)
        return " ".join(parts)


class TurnStream:
    """Deltas of one turn as they arrive; `reply` is set once iteration has finished.

    `cancel()` (from any thread) stops generation before the next token; what was produced up to
    then is kept as the turn (it was already said) and `reply.finish_reason` is "cancelled".
    Iterating a cancelled stream simply ends; `wait()` raises `Cancelled`.
    """

    def __init__(
        self, character: Character, gen: Generator[Delta, None, None], cancel: CancelToken
    ) -> None:
        self.character = character
        self._gen = gen
        self._cancel = cancel
        self.reply: Reply | None = None

    def __iter__(self) -> Iterator[Delta]:
        return self._gen

    def __next__(self) -> Delta:
        return next(self._gen)

    def cancel(self) -> None:
        self._cancel.cancel()

    def close(self) -> None:
        """Stop early and release the model; safe to call at any time."""
        if self.reply is None:
            self._cancel.cancel()
        self._gen.close()

    def wait(self) -> Reply:
        """Consume the rest of the stream and return the reply.

        Raises `Cancelled` if the turn was cancelled or closed; what it said up to then is on
        `reply` and in the character's memory.
        """
        for _ in self._gen:
            pass
        name = self.character.name
        if self.reply is None:  # closed before generation started: nothing was said
            raise Cancelled(f"the turn of {name!r} was closed before it started")
        if self.reply.finish_reason == "cancelled":
            raise Cancelled(f"the turn of {name!r} was cancelled")
        return self.reply


def iter_nothing() -> Generator[Delta, None, None]:
    yield from ()


def mix_seed(seed: int, n: int) -> int:
    """The seed of turn `n` of something seeded with `seed` (a character, a scene)."""
    # SplitMix64 step: per-turn seeds that differ widely for consecutive turns.
    z = (seed + 0x9E3779B97F4A7C15 * (n + 1)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFF


class Seat(Protocol):
    """What a character in a scene uses of it. `Scene.add` hands one to the character."""

    def turn_seed(self) -> int | None:
        """The seed of the character's next turn, or None when the scene sets no seed."""
        ...

    def publish(self, turn: Turn) -> None:
        """Let everyone present perceive the public part of the character's finished turn."""
        ...

    def others(self) -> tuple[list[str], list[str]]:
        """(characters, players) present now, the character itself left out."""
        ...

    def report(self, blocked: BlockedReveal) -> None:
        """Tell the game that the secrets guard stopped a reveal."""
        ...


class CharacterState(msgspec.Struct, kw_only=True):
    """A character as saved: everything but its model (`Character.to_state()`).

    Fields added after the first save format are left out while unused (UNSET), so a character
    that uses none of them saves as it always did, and older saves load.
    """

    persona: Persona
    memory: list[Heard | Turn] = msgspec.field(default_factory=list)
    turns_taken: int = 0
    plan: bool = True
    keep_plans: bool = False
    grammar: bool | None = None
    # Saved under its first name, so files stay the same bytes in both directions.
    allowed_actions: list[str] | None = msgspec.field(default=None, name="actions")
    sampling: Sampling = msgspec.field(default_factory=Sampling)
    seed: int | None = None
    max_memory: int = 2000
    # Long-term memory, the running summary and what waits to be folded into it.
    long_term: list[MemoryItem] | UnsetType = UNSET
    summary: str | UnsetType = UNSET
    to_fold: list[Heard | Turn] | UnsetType = UNSET
    typed_actions: list[ActionState] | UnsetType = UNSET
    revealable: list[str] | UnsetType = UNSET
    recall: int | UnsetType = UNSET
    summarize: bool | UnsetType = UNSET
    rate_importance: ImportanceRater | UnsetType = UNSET
    guard_secrets: bool | UnsetType = UNSET
    max_long_term: int | UnsetType = UNSET


def _unset_if(value, default):
    return UNSET if value == default else value


def memory_text(item: Heard | Turn, name: str) -> tuple[str, bool]:
    """How `name` remembers `item` in long-term memory, and whether that holds its thoughts."""
    if isinstance(item, Heard):
        acts = " ".join(f"({a})" for a in item.actions if a.strip())
        return f"{item.speaker}: {' '.join(x for x in (acts, item.speech) if x)}", False
    parts = []
    for seg in item.segments:
        if seg.channel == "action":
            parts.append(f"({seg.text})")
        elif seg.channel == "speech":
            parts.append(seg.text)
        elif seg.channel == "thought":
            parts.append(f"[I thought: {seg.text}]")
    return f"{name} (me): {' '.join(parts)}", bool(item.thoughts)


class Character:
    """An NPC that thinks before it acts.

        mara = Character(name="Mara", profile="Gate captain of Vell.", goals="keep the gate shut",
                         model=load_model())
        mara.hear("Traveler", "Let me through.")
        reply = mara.reply()          # reply.speech, reply.actions; reply.plan, reply.thoughts

    Persona fields may be given as keywords or as a `Persona`. Settings:
    - `plan`: generate a private plan before each turn (HER's system thinking). Off gives a
      faster first word; inner thoughts remain. Default: as the model was trained
      (`model.plans`: True but for models tuned on plan-less turns, such as the default).
    - `keep_plans`: keep earlier plans in the prompt (HER models were trained without).
    - `grammar`: constrain decoding to the HER turn structure (default: on where the backend
      honours grammars, `model.supports_grammar`).
    - `allowed_actions`: if given, the only action texts the character may write (enforced by
      the grammar). `Reply.actions` are the actions it did take.
    - `actions`: typed `Action`s the game executes; the character's calls come back as
      `Reply.calls` (see `her_sdk.Action`). With `allowed_actions` too, an action is one of
      those texts or a call.
    - `sampling`: default `Sampling` for turns; `seed` makes the whole character reproducible.
    - `max_memory`: perceptions and own turns kept verbatim for the prompt (the working
      memory). Older ones are folded into a running summary the model writes from the
      character's point of view (`summarize`, one model call per fold), and stay in long-term
      memory, from which the `recall` most useful ones come back before each turn (0: none).
      Without `summarize`, what does not fit is dropped from the prompt.
    - `rate_importance`: how a new memory's importance is rated: "heuristic" (free) or "model"
      (one short model call before a turn for the memories formed since the last one).
    - `embedder`: texts -> vectors; when given, recall ranks by meaning as well as by words.
    - `guard_secrets`: keep the persona's `secrets` out of public speech and actions (see
      `allow_reveal`); a stopped reveal is in `Reply.blocked_reveals` and goes to
      `on_blocked_reveal` and to the scene.
    - `max_long_term`: memories kept in long-term memory (the least important and oldest go).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        model: Backend | None = None,
        persona: Persona | None = None,
        source: str = "",
        profile: str = "",
        background: str = "",
        scenario: str = "",
        goals: str = "",
        secrets: str = "",
        relationships: dict[str, str] | None = None,
        others: dict[str, str] | None = None,
        plan: bool | None = None,
        keep_plans: bool = False,
        grammar: bool | None = None,
        allowed_actions: Sequence[str] | None = None,
        actions: Sequence[Action] | None = None,
        sampling: Sampling | None = None,
        seed: int | None = None,
        max_memory: int = 2000,
        recall: int = 5,
        summarize: bool = True,
        rate_importance: ImportanceRater = "heuristic",
        embedder: Embedder | None = None,
        guard_secrets: bool = True,
        on_blocked_reveal: Callable[[BlockedReveal], None] | None = None,
        max_long_term: int = 5000,
    ) -> None:
        if persona is None:
            if name is None:
                raise ConfigError("a Character needs a name or a persona")
            persona = Persona(
                name=name,
                source=source,
                profile=profile,
                background=background,
                scenario=scenario,
                goals=goals,
                secrets=secrets,
                relationships=dict(relationships or {}),
                others=dict(others or {}),
            )
        elif name is not None and name != persona.name:
            raise ConfigError(f"name {name!r} differs from persona name {persona.name!r}")
        if model is not None and not isinstance(model, Backend):
            raise ConfigError("model must be a her_sdk Backend (see load_model, MockBackend)")
        if max_memory < 2:
            raise ConfigError("max_memory must be >= 2")
        if not isinstance(recall, int) or recall < 0:
            raise ConfigError("recall must be a whole number >= 0")
        if rate_importance not in ("heuristic", "model"):
            raise ConfigError("rate_importance must be 'heuristic' or 'model'")
        self.persona = persona
        self.model = model
        # None: as the model was trained (`model.plans`; a plan-less HER adapter says False).
        self.plan = plan if plan is not None else bool(getattr(model, "plans", True))
        self.keep_plans = keep_plans
        self.grammar = grammar
        self.allowed_actions = list(allowed_actions) if allowed_actions else None
        self.actions = check_actions(actions or [])
        self.sampling = sampling or Sampling(max_tokens=320)
        self.seed = seed
        self.max_memory = max_memory
        self.recall = recall
        self.summarize = summarize
        self.rate_importance = rate_importance
        self.guard_secrets = guard_secrets
        self.on_blocked_reveal = on_blocked_reveal
        self.memory: list[Heard | Turn] = []
        self.long_term = MemoryStore(capacity=max_long_term, embedder=embedder)
        self.summary = ""  # the running summary of what was folded out of `memory`
        self.revealable: list[str] = []  # secrets (or parts) the game allowed to come out
        self.turns_taken = 0
        self._to_fold: list[Heard | Turn] = []  # dropped from `memory`, not yet summarized
        self._unrated: list[MemoryItem] = []  # waiting for a model rating
        self._seat: Seat | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.persona.name

    @property
    def seat(self) -> Seat | None:
        """This character's seat in a scene, or None when it is in none."""
        return self._seat

    def join(self, seat: Seat) -> None:
        """Take `seat` in a scene. `Scene.add` calls this; game code adds to the scene."""
        if self._seat is not None:
            raise ConfigError(f"{self.name!r} is already in another scene")
        self._seat = seat

    def leave(self, seat: Seat) -> None:
        """Give `seat` back. `Scene.remove` calls this; game code removes from the scene."""
        if self._seat is seat:
            self._seat = None

    def __repr__(self) -> str:
        return f"Character({self.name!r}, turns={self.turns_taken}, memory={len(self.memory)})"

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

    def recall_for(self, query: str, k: int | None = None) -> list[MemoryItem]:
        """The long-term memories a turn would recall for `query` now (does not mark them)."""
        exclude = {memory_text(i, self.name)[0] for i in self.memory}
        return self.long_term.recall(query, k=k or self.recall or 5, exclude=exclude, touch=False)

    def _store(
        self, text: str, *, importance: float | None, kind: str, private: bool
    ) -> MemoryItem:
        by_model = importance is None and self.rate_importance == "model"
        item = self.long_term.add(
            text,
            importance=importance,
            kind=kind,  # type: ignore[arg-type]
            private=private,
            name=self.name,
        )
        if by_model:
            self._unrated.append(item)
        return item

    def _remember(self, item: Heard | Turn) -> None:
        self.memory.append(item)
        text, private = memory_text(item, self.name)
        if text.split(":", 1)[1].strip():
            kind = "own" if isinstance(item, Turn) else "perceived"
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

    # -- prompting ------------------------------------------------------------------------------

    def _require_model(self) -> Backend:
        if self.model is None:
            raise ConfigError(f"character {self.name!r} has no model; pass model=...")
        return self.model

    def _names(self) -> dict[Target, list[str]]:
        """Who each `Target` may name now."""
        if self._seat is not None:
            characters, players = self._seat.others()
        else:
            known = [*self.persona.others, *self.persona.relationships]
            known += [h.speaker for h in self.memory if isinstance(h, Heard)]
            characters = players = [
                n for n in dict.fromkeys(known) if n not in (self.name, ENVIRONMENT)
            ]
        return {
            Target.CHARACTER: list(characters),
            Target.PLAYER: list(players),
            Target.ANYONE: list(dict.fromkeys([*characters, *players])),
        }

    def _call_specs(self) -> list[CallSpec]:
        names = self._names()
        return [s for a in self.actions if (s := a.spec(names)) is not None]

    def _recalled(self, touch: bool) -> list[str]:
        """Texts recalled from long-term memory for the next turn."""
        if not self.recall or not len(self.long_term):
            return []
        exclude = {memory_text(i, self.name)[0] for i in self.memory}
        items = self.long_term.recall(self._query(), k=self.recall, exclude=exclude, touch=touch)
        return [it.text for it in items]

    def _query(self) -> str:
        """What just happened (up to three items since its own last turn), without speaker
        labels: a name that starts every line would make every memory of that person relevant."""
        recent: list[str] = []
        for item in reversed(self.memory[-3:]):
            if isinstance(item, Turn):
                break
            recent.append(" ".join([*item.actions, item.speech]))
        if not recent and self.memory:  # it spoke last: its own words are the situation
            item = self.memory[-1]
            recent.append(" ".join([*item.actions, item.speech]))
        return " ".join(reversed(recent))

    def prompt(self, *, max_tokens: int | None = None) -> Prompt:
        """The exact prompt of this character's next turn, trimmed to fit the context window.

        It shows the persona, the running summary, the memories recalled for this moment and
        as much of the working memory as fits. When even that is too long, the oldest items
        are left out of this prompt (a turn folds them into the summary first); the persona is
        always kept. Calling this does not change the character.
        """
        return self._fit(self._recalled(touch=False), self._call_specs(), max_tokens)[0]

    def _budget(self, max_tokens: int | None) -> int:
        model = self._require_model()
        return model.n_ctx - (max_tokens or self.sampling.max_tokens) - 8

    def _fit(
        self, recalled: list[str], calls: list[CallSpec], max_tokens: int | None
    ) -> tuple[Prompt, int]:
        """(prompt, how many of the oldest memory items it leaves out)."""
        model = self._require_model()
        budget = self._budget(max_tokens)

        def render(history: Sequence[Heard | Turn]) -> Prompt:
            return self._render(history, recalled, calls)

        full = render(self.memory)
        if model.count_tokens(full.text) <= budget:
            return full, 0
        # Binary search the fewest oldest items to drop so the prompt fits.
        lo, hi = 1, len(self.memory)
        best: tuple[Prompt, int] | None = None
        while lo <= hi:
            mid = (lo + hi) // 2
            head = [] if self.summary else [_TRIMMED]
            p = render([*head, *self.memory[mid:]])
            if model.count_tokens(p.text) <= budget:
                best, hi = (p, mid), mid - 1
            else:
                lo = mid + 1
        if best is None:
            raise ContextOverflowError(
                f"the persona of {self.name!r} alone does not fit the context window "
                f"({model.n_ctx} tokens, {max_tokens or self.sampling.max_tokens} reserved)"
            )
        return best

    def _render(
        self,
        history: Sequence[Heard | Turn],
        recalled: Sequence[str] = (),
        calls: Sequence[CallSpec] = (),
    ) -> Prompt:
        model = self._require_model()
        return render_prompt(
            self.persona,
            history,
            style=model.prompt_style,
            plan=self.plan,
            keep_plans=self.keep_plans,
            chat_template=model.chat_template,
            bos_token=model.bos_token,
            eos_token=model.eos_token,
            prefill=model.prefills,
            memories=recalled,
            summary=self.summary,
            calls=calls,
        )

    # -- the model calls memory makes -----------------------------------------------------------

    def _complete(self, messages: list[tuple[str, str]], grammar: str, max_tokens: int) -> str:
        """One plain request (not a HER turn) in the model's prompt style; its answer."""
        model = self._require_model()
        text, stop = render_messages([Message(r, c) for r, c in messages], model)
        use_grammar = self.grammar if self.grammar is not None else model.supports_grammar
        sampling = msgspec.structs.replace(
            self.sampling, max_tokens=max_tokens, temperature=0.3, seed=self._turn_seed(None)
        )
        stream = model.stream(
            text, stop=stop, sampling=sampling, grammar=grammar if use_grammar else None
        )
        try:
            return "".join(stream).strip()
        finally:
            stream.close()

    def _rate_unrated(self) -> None:
        """One model call rating the memories formed since the last turn (at most 16)."""
        pending, self._unrated = self._unrated[-16:], []
        if not pending:
            return
        answer = self._complete(
            _memory.rating_messages(self.name, [it.text for it in pending]),
            _memory.rating_grammar(len(pending)),
            max_tokens=4 * len(pending) + 4,
        )
        ratings = _memory.parse_ratings(answer, len(pending))
        if ratings is None:  # keep the heuristic ratings
            log.debug("importance rating of %s unreadable: %r", self.name, answer[:80])
            return
        for it, r in zip(pending, ratings, strict=True):
            it.importance = r

    def _fold(self, items: Sequence[Heard | Turn]) -> None:
        """Fold `items` (the oldest of what it remembers) into the running summary: one call."""
        lines = [memory_text(i, self.name)[0] for i in items]
        if not lines:
            return
        sheet = render_system_prompt(self.persona, plan=False).split("\n\n===Requirements===")[0]
        max_words = 120
        text = self._complete(
            _memory.summary_messages(self.name, sheet, self.summary, lines, max_words=max_words),
            _memory.summary_grammar(max_words * 8),
            max_tokens=max_words * 2,
        )
        text = " ".join(text.replace("<", " ").split())
        if not text:
            raise GenerationError(f"the model wrote an empty summary for {self.name!r}")
        self.summary = text
        log.debug("%s folded %d memories into its summary", self.name, len(lines))

    def _prepare(self, max_tokens: int) -> Prompt:
        """Everything before a turn: ratings, a fold if needed, recall; then the prompt."""
        if self._unrated:
            self._rate_unrated()
        calls = self._call_specs()
        recalled = self._recalled(touch=True)
        prompt, dropped = self._fit(recalled, calls, max_tokens)
        if not self.summarize:
            return prompt
        n = 0
        if dropped:
            # Fold at least half of the working memory, so folds stay rare: one call now, the
            # next only once as much has happened again.
            n = min(max(dropped, len(self.memory) // 2), len(self.memory) - 1)
        if self._to_fold or n:
            # What max_memory pushed out and what the context cannot hold: one call for both.
            self._fold([*self._to_fold, *self.memory[:n]])
            self._to_fold = []
            del self.memory[:n]
            prompt, _ = self._fit(recalled, calls, max_tokens)
        return prompt

    # -- generation -----------------------------------------------------------------------------

    def stream(
        self,
        *,
        private: bool = False,
        seed: int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        allowed_actions: Sequence[str] | None = None,
        cancel: CancelToken | None = None,
        priority: Priority = "normal",
    ) -> TurnStream:
        """Start this character's turn; iterate the result for `Delta`s as they arrive.

        Only public deltas (action, speech) are yielded unless `private=True`. The finished
        `Reply` (all four parts) is on `stream.reply` afterwards. Nothing runs until iteration.
        `allowed_actions` replaces the character's own closed set of actions for this turn.
        With the secrets guard on, public text is held back while it could begin a secret.
        `priority` matters when several turns share one model (`LlamaBackend`): "player" for
        the NPC the player is waiting on (started and decoded first), "normal", or "background"
        for ambient chatter (slowed down while higher-priority turns run, never starved).
        """
        priority_rank(priority)  # a bad name fails here, not when the turn runs
        cancel = cancel or CancelToken()
        overrides: dict[str, Any] = {}
        if max_tokens is not None:
            overrides["max_tokens"] = max_tokens
        if temperature is not None:
            overrides["temperature"] = temperature
        sampling = msgspec.structs.replace(self.sampling, **overrides) if overrides else None
        stream = TurnStream(self, iter_nothing(), cancel)
        stream._gen = self._run(stream, private, seed, sampling, allowed_actions, cancel, priority)
        return stream

    def reply(self, **kwargs) -> Reply:
        """Generate this character's turn and return it (same options as `stream`).

        Raises `Cancelled` if the turn is cancelled (through a `cancel=` token).
        """
        kwargs.setdefault("private", True)
        return self.stream(**kwargs).wait()

    def _turn_seed(self, explicit: int | None) -> int | None:
        if explicit is not None:
            return explicit
        seat = self._seat
        if seat is not None and (scene_seed := seat.turn_seed()) is not None:
            return scene_seed
        if self.seed is not None:
            return mix_seed(self.seed, self.turns_taken)
        return self.sampling.seed

    def _guard(self) -> SecretsGuard | None:
        if not self.guard_secrets or not self.persona.secrets.strip():
            return None
        guard = SecretsGuard([self.persona.secrets], allowed=self.revealable)
        guard.character = self.name
        return guard if guard.active else None

    def _run(
        self,
        stream: TurnStream,
        private: bool,
        seed: int | None,
        sampling: Sampling | None,
        allowed_actions: Sequence[str] | None,
        cancel: CancelToken,
        priority: Priority = "normal",
    ) -> Generator[Delta, None, None]:
        model = self._require_model()
        with self._lock:
            sampling = sampling or self.sampling
            sampling = msgspec.structs.replace(sampling, seed=self._turn_seed(seed))
            prompt = self._prepare(sampling.max_tokens)
            use_grammar = self.grammar if self.grammar is not None else model.supports_grammar
            grammar = None
            allowed = allowed_actions if allowed_actions is not None else self.allowed_actions
            names = self._names()
            specs = [s for a in self.actions if (s := a.spec(names)) is not None]
            if use_grammar:
                grammar = build_grammar(
                    self.name,
                    plan=self.plan,
                    prefilled=bool(prompt.prefill),
                    actions=allowed,
                    calls=specs or None,
                    end="\n" if prompt.style == "fewshot" else "",
                )
            log.debug("turn of %s: %d prompt chars", self.name, len(prompt.text))
            t0 = time.perf_counter()
            text_stream: TextStream = model.stream(
                prompt.text,
                stop=prompt.stop,
                sampling=sampling,
                grammar=grammar,
                cancel=cancel,
                priority=priority,
            )
            # Under the grammar the turn is tagged HER text, so brackets in speech are literal
            # (not CoSER's "(action)"): only a <role_action> can hold an action, or a call.
            parser = TurnParser(self.name, start=prompt.start, coser=False if grammar else None)
            guard = self._guard()
            segments: dict[int, list[str]] = {}  # what was said, as it was let through
            raw: list[str] = []
            first_speech: float | None = None

            def shown(deltas: Sequence[Delta]) -> Iterator[Delta]:
                # Deltas the guard let through: they are what was said, and what is streamed.
                nonlocal first_speech
                for d in deltas:
                    seg = segments.setdefault(d.segment, [d.channel, ""])
                    seg[1] += d.text
                    if first_speech is None and d.channel == "speech" and d.text.strip():
                        first_speech = time.perf_counter() - t0
                    if private or d.channel not in PRIVATE_CHANNELS:
                        yield d

            def passed(deltas: Sequence[Delta]) -> Iterator[Delta]:
                for delta in deltas:
                    yield from shown(guard.feed(delta) if guard is not None else (delta,))

            try:
                for piece in text_stream:
                    raw.append(piece)
                    yield from passed(parser.feed(piece))
                    if guard is not None and guard.blocked is not None:
                        break  # the turn ends where the reveal began
                else:
                    yield from passed(parser.close())
                    if guard is not None:
                        yield from shown(guard.close())
            finally:
                text_stream.close()
                parser.close()
                turn = Turn.from_segments(
                    Segment(c, t)  # type: ignore[arg-type]
                    for _, (c, t) in sorted(segments.items())
                )
                blocked = [guard.blocked] if guard is not None and guard.blocked else []
                calls, invalid = (
                    read_calls(turn.actions, self.actions, names) if self.actions else ([], [])
                )
                if cancel.cancelled:
                    finish = "cancelled"
                elif blocked:
                    finish = "blocked"
                else:
                    finish = text_stream.finish_reason or "stop"
                reply = Reply(
                    character=self.name,
                    speech=turn.speech,
                    actions=turn.actions,
                    plan=turn.plan,
                    thoughts=turn.thoughts,
                    segments=turn.segments,
                    raw=prompt.prefill + "".join(raw),
                    finish_reason=finish,
                    prompt_tokens=text_stream.prompt_tokens,
                    completion_tokens=text_stream.completion_tokens,
                    first_token_s=text_stream.first_token_s,
                    first_speech_s=first_speech,
                    total_s=time.perf_counter() - t0,
                    calls=calls,
                    invalid_calls=invalid,
                    blocked_reveals=blocked,
                )
                stream.reply = reply
                self._apply(calls)
                self._commit(turn, counted=finish != "cancelled")
                for b in blocked:
                    self._report(b)
                for bad in invalid:
                    log.warning("%s wrote an invalid call %r: %s", self.name, bad.text, bad.error)

    def _apply(self, calls: Sequence[Call]) -> None:
        """The effects a character's calls have on itself (relationship updates)."""
        regard = {a.name for a in self.actions if a.updates_relationship}
        for call in calls:
            if call.name in regard:
                self.set_relationship(call.args["who"], call.args["view"])

    def _report(self, blocked: BlockedReveal) -> None:
        # The reveal text holds the secret: it goes to the game's hooks, never to the log.
        log.info("the secrets guard stopped a reveal by %s", self.name)
        if self.on_blocked_reveal is not None:
            self.on_blocked_reveal(blocked)
        if self._seat is not None:
            self._seat.report(blocked)

    def _commit(self, turn: Turn, *, counted: bool = True) -> None:
        """Record a finished turn: privately in memory, publicly through the scene seat.

        `turns_taken` counts turns that said or did something and were not cancelled; a
        cancelled turn's text is still remembered and seen.
        """
        if not turn.segments:
            return
        if counted:
            self.turns_taken += 1
        self._remember(turn)
        if self._seat is not None:
            self._seat.publish(turn)

    # -- state ------------------------------------------------------------------------------------

    def to_state(self) -> CharacterState:
        """Everything this character is but its model, as saved."""
        return CharacterState(
            persona=self.persona,
            memory=list(self.memory),
            turns_taken=self.turns_taken,
            plan=self.plan,
            keep_plans=self.keep_plans,
            grammar=self.grammar,
            allowed_actions=self.allowed_actions,
            sampling=self.sampling,
            seed=self.seed,
            max_memory=self.max_memory,
            long_term=[msgspec.structs.replace(i) for i in self.long_term.items] or UNSET,
            summary=self.summary or UNSET,
            to_fold=list(self._to_fold) or UNSET,
            typed_actions=[a.to_state() for a in self.actions] or UNSET,
            revealable=list(self.revealable) or UNSET,
            recall=_unset_if(self.recall, 5),
            summarize=_unset_if(self.summarize, True),
            rate_importance=_unset_if(self.rate_importance, "heuristic"),
            guard_secrets=_unset_if(self.guard_secrets, True),
            max_long_term=_unset_if(self.long_term.capacity, 5000),
        )

    @classmethod
    def from_state(
        cls,
        state: CharacterState,
        *,
        model: Backend | None = None,
        embedder: Embedder | None = None,
    ) -> Character:
        """The character `state` describes, running on `model` (and `embedder`, if any).

        A save from before long-term memory existed gets one from its working memory.
        """

        def given(value, default):
            return default if value is UNSET else value

        c = cls(
            persona=state.persona,
            model=model,
            plan=state.plan,
            keep_plans=state.keep_plans,
            grammar=state.grammar,
            allowed_actions=state.allowed_actions,
            actions=[Action.from_state(a) for a in given(state.typed_actions, [])],
            sampling=state.sampling,
            seed=state.seed,
            max_memory=state.max_memory,
            recall=given(state.recall, 5),
            summarize=given(state.summarize, True),
            rate_importance=given(state.rate_importance, "heuristic"),
            embedder=embedder,
            guard_secrets=given(state.guard_secrets, True),
            max_long_term=given(state.max_long_term, 5000),
        )
        c.turns_taken = state.turns_taken
        c.summary = given(state.summary, "")
        c.revealable = list(given(state.revealable, []))
        c._to_fold = list(given(state.to_fold, []))
        if state.long_term is UNSET:
            for item in state.memory:
                c._remember(item)
            c._unrated = []
        else:
            c.long_term = MemoryStore(
                [msgspec.structs.replace(i) for i in state.long_term],
                capacity=c.long_term.capacity,
                embedder=embedder,
            )
        c.memory = list(state.memory)
        return c

    def dumps(self) -> bytes:
        """This character as save-file bytes (what `save` writes)."""
        return _state.encode("character", self.to_state())

    @classmethod
    def loads(
        cls, data: bytes, *, model: Backend | None = None, embedder: Embedder | None = None
    ) -> Character:
        """Read a character from save-file bytes; anything else raises `StateError`."""
        return cls._decode(data, model, embedder, "character data")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this character (persona, memory, settings) atomically to `path` (JSON)."""
        _state.atomic_write(path, self.dumps())

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        model: Backend | None = None,
        embedder: Embedder | None = None,
    ) -> Character:
        """Read a character written by `save`; a missing or bad file raises `StateError`."""
        return cls._decode(_state.read(path), model, embedder, str(Path(path)))

    @classmethod
    def _decode(
        cls, data: bytes, model: Backend | None, embedder: Embedder | None, source: str
    ) -> Character:
        state = _state.decode(data, "character", CharacterState, source=source)
        try:
            return cls.from_state(state, model=model, embedder=embedder)
        except ConfigError as exc:
            raise StateError(f"{source} is corrupt: {exc}") from None
