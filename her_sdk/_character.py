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

Beside the turn loop, which is here: what a character knows and remembers, without its model,
is its `Mind` (`_mind`); what goes into the prompt and how it is fitted to the context window is
`_prompting`; the model calls memory makes between turns (importance ratings, summaries) are
`_upkeep`; reading a turn's text as it streams (parser, secrets guard) and the `Reply` it makes
are `_turn`.

A character knows nothing of `Scene`. A scene that adds it hands it a `Seat`: the two things it
needs from the scene (the seed of its next turn, and where its finished turn goes). The scene
delivers what the character perceives through `perceive()`. Saving is `to_state()` /
`from_state()` here; `save` / `load` and the save-file envelope are `_savefile`'s.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Generator, Sequence
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from ._actions import Action, ActionState, Call, Target, check_actions, read_calls
from ._backends._base import Backend, CancelToken, Sampling, TextStream
from ._backends._scheduler import Priority, priority_rank
from ._errors import ConfigError, ContextOverflowError
from ._memory import Embedder, MemoryItem, MemoryStore
from ._mind import ImportanceRater, Mind
from ._persona import Persona
from ._prompting import fit, memory_text, recall, target_names
from ._savefile import Saveable
from ._secrets import BlockedReveal, SecretsGuard
from ._turn import Reply, Seat, TurnReader, TurnStream, iter_nothing, mix_seed
from ._upkeep import ask, rate_importance, summarize
from .format import (
    CallSpec,
    Delta,
    Heard,
    Prompt,
    ShapeGuard,
    Turn,
    TurnShape,
    build_grammar,
    render_prompt,
)

__all__ = ["Character", "CharacterState"]

log = logging.getLogger("her_sdk")


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
    shape: TurnShape | UnsetType | None = UNSET


# Settings saved only when they differ from their defaults (CharacterState's UNSET fields).
_LATER_SETTINGS: dict[str, Any] = {
    "recall": 5,
    "summarize": True,
    "rate_importance": "heuristic",
    "guard_secrets": True,
    "max_long_term": 5000,
    "shape": None,
}


class Character(Mind, Saveable):
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
    - `shape`: the most sections and the longest text of its turns (`TurnShape`; e.g.
      `TurnShape.GAME` for a dialogue box). Written within by the grammar, stopped at its edge on
      engines without one. Default: the model's own (`model.default_shape()`: its `turn_shape`,
      `TurnShape.FREE` for a released HER model), else the grammar's caps and no limit where
      there is no grammar.
    - `allowed_actions`: if given, the only action texts the character may write (enforced by
      the grammar). `Reply.actions` are the actions it did take.
    - `typed_actions`: `Action`s the game executes; the character's calls come back as
      `Reply.calls` (see `her_sdk.Action`). With `allowed_actions` too, an action is one of
      those texts or a call. (`actions=`, their first name, is deprecated.)
    - `sampling`: default `Sampling` for turns (default: the model's, `model.default_sampling()`:
      HER's own decoding for a released HER model, else 320 tokens); `seed` makes the whole
      character reproducible.
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

    `save` / `load` (and `dumps` / `loads`) take the keywords of `from_state`: `model` and
    `embedder`, which a save does not hold.
    """

    save_kind = "character"
    state_type = CharacterState

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
        typed_actions: Sequence[Action] | None = None,
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
        shape: TurnShape | None = None,
        actions: Sequence[Action] | None = None,
    ) -> None:
        if actions is not None:
            warnings.warn(
                "Character(actions=) is deprecated; use typed_actions=", DeprecationWarning, 2
            )
            typed_actions = typed_actions if typed_actions is not None else actions
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
        super().__init__(
            persona,
            max_memory=max_memory,
            recall=recall,
            summarize=summarize,
            rate_importance=rate_importance,
            max_long_term=max_long_term,
            embedder=embedder,
        )
        self.model = model
        # None: as the model was trained (`model.plans`; a plan-less HER adapter says False).
        self.plan = plan if plan is not None else bool(getattr(model, "plans", True))
        self.keep_plans = keep_plans
        self.grammar = grammar
        self.allowed_actions = list(allowed_actions) if allowed_actions else None
        self.typed_actions = check_actions(typed_actions or [])
        # None: the model's (`model.default_sampling()`: HER's decoding for a released HER model).
        self.sampling = sampling or (
            model.default_sampling() if model is not None else Sampling(max_tokens=320)
        )
        self.seed = seed
        self.guard_secrets = guard_secrets
        if shape is not None and not isinstance(shape, TurnShape):
            raise ConfigError("shape must be a TurnShape (e.g. TurnShape.GAME)")
        self.shape = shape
        self.on_blocked_reveal = on_blocked_reveal
        self.turns_taken = 0
        self._last_cut = 0  # the oldest memories the last prompt left out: where fitting starts
        self._seat: Seat | None = None
        self._lock = threading.Lock()

    @property
    def actions(self) -> list[Action]:
        """Deprecated: `typed_actions` (a turn's performed actions are `Reply.actions`)."""
        warnings.warn("Character.actions is deprecated; use typed_actions", DeprecationWarning, 2)
        return self.typed_actions

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

    # -- prompting ------------------------------------------------------------------------------

    def _require_model(self) -> Backend:
        if self.model is None:
            raise ConfigError(f"character {self.name!r} has no model; pass model=...")
        return self.model

    def _names(self) -> dict[Target, list[str]]:
        """Who each `Target` may name now."""
        present = self._seat.others() if self._seat is not None else None
        return target_names(self.name, self.persona, self.memory, present)

    def _call_specs(self, names: dict[Target, list[str]] | None = None) -> list[CallSpec]:
        names = names if names is not None else self._names()
        return [s for a in self.typed_actions if (s := a.spec(names)) is not None]

    def prompt(self, *, max_tokens: int | None = None) -> Prompt:
        """The exact prompt of this character's next turn, trimmed to fit the context window.

        It shows the persona, the running summary, the memories recalled for this moment and
        as much of the working memory as fits. When even that is too long, the oldest items
        are left out of this prompt (a turn folds them into the summary first); the persona is
        always kept. Calling this does not change the character.
        """
        recalled = recall(self.long_term, self.memory, self.name, self.recall, touch=False)
        return self._fit(recalled, self._call_specs(), max_tokens)[0]

    def _fit(
        self, recalled: list[str], calls: list[CallSpec], max_tokens: int | None
    ) -> tuple[Prompt, int]:
        """(prompt, how many of the oldest memory items it leaves out)."""
        model = self._require_model()
        reserved = max_tokens or self.sampling.max_tokens

        def render(history: Sequence[Heard | Turn]) -> Prompt:
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

        budget = model.n_ctx - reserved - 8
        fitted = fit(
            render,
            model.count_tokens,
            self.memory,
            budget,
            summarized=bool(self.summary),
            hint=self._last_cut,
        )
        if fitted is None:
            raise ContextOverflowError(
                f"the persona of {self.name!r} alone does not fit the context window "
                f"({model.n_ctx} tokens, {reserved} reserved)"
            )
        self._last_cut = fitted[1]
        return fitted

    def _ask(self, messages: list[tuple[str, str]], grammar: str, max_tokens: int) -> str:
        """One plain request (not a HER turn) to this character's model: a rating, a summary."""
        model = self._require_model()
        sampling = msgspec.structs.replace(
            self.sampling, max_tokens=max_tokens, temperature=0.3, seed=self._turn_seed(None)
        )
        return ask(model, messages, sampling, grammar if self._constrained(model) else None)

    def _constrained(self, model: Backend) -> bool:
        return self.grammar if self.grammar is not None else model.supports_grammar

    def _prepare(self, max_tokens: int) -> Prompt:
        """Everything before a turn: ratings, a fold if needed, recall; then the prompt."""
        if self._unrated:
            pending, self._unrated = self._unrated[-16:], []
            rate_importance(self._ask, self.name, pending)
        calls = self._call_specs()
        recalled = recall(self.long_term, self.memory, self.name, self.recall, touch=True)
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
            folded = [*self._to_fold, *self.memory[:n]]
            if folded:
                lines = [memory_text(i, self.name)[0] for i in folded]
                self.summary = summarize(self._ask, self.persona, self.summary, lines)
                log.debug("%s folded %d memories into its summary", self.name, len(lines))
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
        shape: TurnShape | None = None,
    ) -> TurnStream:
        """Start this character's turn; iterate the result for `Delta`s as they arrive.

        Only public deltas (action, speech) are yielded unless `private=True`. The finished
        `Reply` (all four parts) is on `stream.reply` afterwards. Nothing runs until iteration.
        `allowed_actions` replaces the character's own closed set of actions for this turn, and
        `shape` its `TurnShape`.
        With the secrets guard on, public text is held back while it could begin a secret.
        `priority` matters when several turns share one model (`LlamaBackend`): "player" for
        the NPC the player is waiting on (started and decoded first), "normal", or "background"
        for ambient chatter (slowed down while higher-priority turns run, never starved).
        """
        priority_rank(priority)  # a bad name fails here, not when the turn runs
        if shape is not None and not isinstance(shape, TurnShape):
            raise ConfigError("shape must be a TurnShape (e.g. TurnShape.GAME)")
        cancel = cancel or CancelToken()
        overrides: dict[str, Any] = {}
        if max_tokens is not None:
            overrides["max_tokens"] = max_tokens
        if temperature is not None:
            overrides["temperature"] = temperature
        sampling = msgspec.structs.replace(self.sampling, **overrides) if overrides else None
        stream = TurnStream(self, iter_nothing(), cancel)
        stream._gen = self._run(
            stream, private, seed, sampling, allowed_actions, cancel, priority, shape
        )
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
        shape: TurnShape | None = None,
    ) -> Generator[Delta, None, None]:
        model = self._require_model()
        shape = shape or self.shape or model.default_shape()
        with self._lock:
            sampling = msgspec.structs.replace(
                sampling or self.sampling, seed=self._turn_seed(seed)
            )
            prompt = self._prepare(sampling.max_tokens)
            names = self._names()
            grammar = self._grammar(model, prompt, allowed_actions, names, shape)
            log.debug("turn of %s: %d prompt chars", self.name, len(prompt.text))
            reader = TurnReader(
                self.name,
                prompt,
                tagged=grammar is not None,
                guard=self._guard(),
                private=private,
                shape=ShapeGuard(shape) if shape is not None else None,
            )
            text = model.stream(
                prompt.text,
                stop=prompt.stop,
                sampling=sampling,
                grammar=grammar,
                cancel=cancel,
                priority=priority,
            )
            try:
                yield from reader.read(text)
            finally:
                text.close()
                self._finish(stream, reader, text, cancel, names)

    def _grammar(
        self,
        model: Backend,
        prompt: Prompt,
        allowed_actions: Sequence[str] | None,
        names: dict[Target, list[str]],
        shape: TurnShape | None,
    ) -> str | None:
        """The GBNF of this turn (its actions, typed calls and shape), if constrained."""
        if not self._constrained(model):
            return None
        if allowed_actions is None:
            allowed_actions = self.allowed_actions
        return build_grammar(
            self.name,
            plan=self.plan,
            prefilled=bool(prompt.prefill),
            allowed_actions=allowed_actions,
            calls=self._call_specs(names) or None,
            end="\n" if prompt.style == "fewshot" else "",
            shape=shape,
        )

    def _finish(
        self,
        stream: TurnStream,
        reader: TurnReader,
        text: TextStream,
        cancel: CancelToken,
        names: dict[Target, list[str]],
    ) -> None:
        """End a turn, however it ended: its reply on `stream`, its calls applied, the turn
        remembered and published, a stopped reveal reported."""
        turn = reader.turn()
        typed = self.typed_actions
        # Calls come only from action sections written as such (and let through).
        calls, invalid = (
            read_calls(reader.tagged(turn.actions), typed, names) if typed else ([], [])
        )
        blocked = reader.blocked
        if cancel.cancelled:
            finish = "cancelled"
        elif blocked:
            finish = "blocked"
        elif reader.shape is not None and reader.shape.done:
            finish = "stop"  # a complete turn that reached the edge of its shape
        else:
            finish = text.finish_reason or "stop"
            if finish == "length" and reader.ended_in == "plan":
                finish = "plan_length"
                log.warning(
                    "the turn of %s ended inside its plan at max_tokens=%d: it said nothing. "
                    "Raise max_tokens (a HER model plans at length) or lower the turn shape's "
                    "max_plan_chars.",
                    self.name,
                    text.completion_tokens,
                )
        stream.reply = reader.reply(
            self.name, turn, text, finish=finish, calls=calls, invalid=invalid
        )
        self._apply(calls)
        self._commit(turn, counted=finish != "cancelled")
        for b in blocked:
            self._report(b)
        for bad in invalid:
            log.warning("%s wrote an invalid call %r: %s", self.name, bad.text, bad.error)

    def _apply(self, calls: Sequence[Call]) -> None:
        """The effects a character's calls have on itself (relationship updates)."""
        regard = {a.name for a in self.typed_actions if a.updates_relationship}
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
        settings = {k: getattr(self, k) for k in _LATER_SETTINGS}
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
            typed_actions=[a.to_state() for a in self.typed_actions] or UNSET,
            revealable=list(self.revealable) or UNSET,
            **{k: UNSET if v == _LATER_SETTINGS[k] else v for k, v in settings.items()},
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

        settings = {k: given(getattr(state, k), d) for k, d in _LATER_SETTINGS.items()}
        c = cls(
            persona=state.persona,
            model=model,
            plan=state.plan,
            keep_plans=state.keep_plans,
            grammar=state.grammar,
            allowed_actions=state.allowed_actions,
            typed_actions=[Action.from_state(a) for a in given(state.typed_actions, [])],
            sampling=state.sampling,
            seed=state.seed,
            max_memory=state.max_memory,
            embedder=embedder,
            **settings,
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
