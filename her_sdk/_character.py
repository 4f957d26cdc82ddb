"""Character: one NPC with a persona, a memory of what it perceived, and a private mind.

A character's prompt is built from two things only: its own persona and its own memory. The
memory holds what it perceived (other characters' *public* actions and speech, narration) and its
own past turns, thoughts included. Nothing else can reach its prompt, which is how knowledge
isolation holds by construction: a `Scene` hands each character only the public part of what
others did, and only if that character was there to perceive it.

Generation streams: `character.stream()` yields typed `Delta`s as tokens arrive (public
channels only unless `private=True`) and leaves the finished `Reply` on the stream object.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import msgspec

from ._backends._base import Backend, CancelToken, Sampling, TextStream
from ._errors import ConfigError, ContextOverflowError
from ._persona import Persona
from .format import (
    ENVIRONMENT,
    PRIVATE_CHANNELS,
    Delta,
    Heard,
    Prompt,
    Segment,
    Turn,
    TurnParser,
    build_grammar,
    render_prompt,
)

if TYPE_CHECKING:
    from ._scene import Scene

__all__ = ["Character", "Reply", "TurnStream"]

log = logging.getLogger("her_sdk")

_TRIMMED = Heard(speaker=ENVIRONMENT, speech="(Earlier events are no longer remembered.)")


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """One finished turn of a character.

    Public: `speech`, `actions`. Private: `plan`, `thoughts` (yours to show in a debug view or a
    "read mind" mechanic; other characters never see them). `raw` is the model's text.
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
    """

    def __init__(self, character: Character, gen: Iterator[Delta], cancel: CancelToken) -> None:
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
        """Consume the rest of the stream and return the reply."""
        for _ in self._gen:
            pass
        assert self.reply is not None
        return self.reply


def _mix_seed(seed: int, n: int) -> int:
    # SplitMix64 step: per-turn seeds that differ widely for consecutive turns.
    z = (seed + 0x9E3779B97F4A7C15 * (n + 1)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFF


class Character:
    """An NPC that thinks before it acts.

        mara = Character(name="Mara", profile="Gate captain of Vell.", goals="keep the gate shut",
                         model=load_model())
        mara.hear("Traveler", "Let me through.")
        reply = mara.reply()          # reply.speech, reply.actions; reply.plan, reply.thoughts

    Persona fields may be given as keywords or as a `Persona`. Settings:
    - `plan`: generate a private plan before each turn (HER's system thinking). Off gives a
      faster first word; inner thoughts remain.
    - `keep_plans`: keep earlier plans in the prompt (HER models were trained without).
    - `grammar`: constrain decoding to the HER turn structure (default: on for real models).
    - `actions`: if given, the only actions the character may take (enforced by the grammar).
    - `sampling`: default `Sampling` for turns; `seed` makes the whole character reproducible.
    - `max_memory`: perceptions and own turns remembered (older ones are forgotten).
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
        plan: bool = True,
        keep_plans: bool = False,
        grammar: bool | None = None,
        actions: Sequence[str] | None = None,
        sampling: Sampling | None = None,
        seed: int | None = None,
        max_memory: int = 2000,
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
        self.persona = persona
        self.model = model
        self.plan = plan
        self.keep_plans = keep_plans
        self.grammar = grammar
        self.actions = list(actions) if actions else None
        self.sampling = sampling or Sampling(max_tokens=320)
        self.seed = seed
        self.max_memory = max_memory
        self.memory: list[Heard | Turn] = []
        self.turns_taken = 0
        self.scene: Scene | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.persona.name

    def __repr__(self) -> str:
        return f"Character({self.name!r}, turns={self.turns_taken}, memory={len(self.memory)})"

    # -- perception -----------------------------------------------------------------------------

    def perceive(self, heard: Heard) -> None:
        """Remember something this character perceived. Only public content belongs here."""
        if not isinstance(heard, Heard):
            raise ConfigError("perceive() takes a Heard (public speech/actions or narration)")
        self._remember(heard)

    def hear(self, speaker: str, text: str = "", action: str | Sequence[str] | None = None) -> None:
        """Shorthand: `speaker` said `text` (and did `action`) where this character could see."""
        if not speaker or not speaker.strip():
            raise ConfigError("speaker must be a non-empty name")
        actions = [action] if isinstance(action, str) else list(action or [])
        if not (text or "").strip() and not any(a.strip() for a in actions):
            raise ConfigError("nothing was said or done: give text or an action")
        self._remember(Heard(speaker=speaker.strip(), speech=(text or "").strip(), actions=actions))

    def _remember(self, item: Heard | Turn) -> None:
        self.memory.append(item)
        if len(self.memory) > self.max_memory:
            del self.memory[: len(self.memory) - self.max_memory]

    # -- prompting ------------------------------------------------------------------------------

    def _require_model(self) -> Backend:
        if self.model is None:
            raise ConfigError(f"character {self.name!r} has no model; pass model=...")
        return self.model

    def prompt(self, *, max_tokens: int | None = None) -> Prompt:
        """The exact prompt of this character's next turn, trimmed to fit the context window.

        Oldest memories are dropped first; the persona is always kept.
        """
        model = self._require_model()
        budget = model.n_ctx - (max_tokens or self.sampling.max_tokens) - 8
        render = self._render
        full = render(self.memory)
        if model.count_tokens(full.text) <= budget:
            return full
        # Binary search the fewest oldest items to drop so the prompt fits.
        lo, hi = 1, len(self.memory)
        best: Prompt | None = None
        while lo <= hi:
            mid = (lo + hi) // 2
            p = render([_TRIMMED, *self.memory[mid:]])
            if model.count_tokens(p.text) <= budget:
                best, hi = p, mid - 1
            else:
                lo = mid + 1
        if best is None:
            raise ContextOverflowError(
                f"the persona of {self.name!r} alone does not fit the context window "
                f"({model.n_ctx} tokens, {max_tokens or self.sampling.max_tokens} reserved)"
            )
        return best

    def _render(self, history: Sequence[Heard | Turn]) -> Prompt:
        model = self._require_model()
        return render_prompt(
            self.persona,
            history,
            style=model.prompt_style,  # type: ignore[arg-type]
            plan=self.plan,
            keep_plans=self.keep_plans,
            chat_template=model.chat_template,
            bos_token=model.bos_token,
            eos_token=model.eos_token,
            prefill=getattr(model, "prefills", True),
        )

    # -- generation -----------------------------------------------------------------------------

    def stream(
        self,
        *,
        private: bool = False,
        seed: int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        actions: Sequence[str] | None = None,
        cancel: CancelToken | None = None,
    ) -> TurnStream:
        """Start this character's turn; iterate the result for `Delta`s as they arrive.

        Only public deltas (action, speech) are yielded unless `private=True`. The finished
        `Reply` (all four parts) is on `stream.reply` afterwards. Nothing runs until iteration.
        """
        cancel = cancel or CancelToken()
        overrides = {}
        if max_tokens is not None:
            overrides["max_tokens"] = max_tokens
        if temperature is not None:
            overrides["temperature"] = temperature
        sampling = msgspec.structs.replace(self.sampling, **overrides) if overrides else None
        stream = TurnStream(self, iter(()), cancel)
        stream._gen = self._run(stream, private, seed, sampling, actions, cancel)
        return stream

    def reply(self, **kwargs) -> Reply:
        """Generate this character's turn and return it (same options as `stream`)."""
        kwargs.setdefault("private", True)
        return self.stream(**kwargs).wait()

    def _turn_seed(self, explicit: int | None) -> int | None:
        if explicit is not None:
            return explicit
        base = self.scene.seed if self.scene is not None else None
        if base is not None:
            return _mix_seed(base, self.scene.clock)  # type: ignore[union-attr]
        if self.seed is not None:
            return _mix_seed(self.seed, self.turns_taken)
        return self.sampling.seed

    def _run(
        self,
        stream: TurnStream,
        private: bool,
        seed: int | None,
        sampling: Sampling | None,
        actions: Sequence[str] | None,
        cancel: CancelToken,
    ) -> Iterator[Delta]:
        model = self._require_model()
        with self._lock:
            sampling = sampling or self.sampling
            sampling = msgspec.structs.replace(sampling, seed=self._turn_seed(seed))
            prompt = self.prompt(max_tokens=sampling.max_tokens)
            use_grammar = self.grammar if self.grammar is not None else model.name != "mock"
            grammar = None
            allowed = actions if actions is not None else self.actions
            if use_grammar:
                grammar = build_grammar(
                    self.name,
                    plan=self.plan,
                    prefilled=bool(prompt.prefill),
                    actions=allowed,
                    end="\n" if prompt.style == "fewshot" else "",
                )
            log.debug("turn of %s: %d prompt chars", self.name, len(prompt.text))
            t0 = time.perf_counter()
            text_stream: TextStream = model.stream(
                prompt.text, stop=prompt.stop, sampling=sampling, grammar=grammar, cancel=cancel
            )
            parser = TurnParser(self.name, start=prompt.start)
            raw: list[str] = []
            first_speech: float | None = None
            try:
                for piece in text_stream:
                    raw.append(piece)
                    for delta in parser.feed(piece):
                        if (
                            first_speech is None
                            and delta.channel == "speech"
                            and delta.text.strip()
                        ):
                            first_speech = time.perf_counter() - t0
                        if private or delta.channel not in PRIVATE_CHANNELS:
                            yield delta
                for delta in parser.close():
                    if first_speech is None and delta.channel == "speech" and delta.text.strip():
                        first_speech = time.perf_counter() - t0
                    if private or delta.channel not in PRIVATE_CHANNELS:
                        yield delta
            finally:
                text_stream.close()
                parser.close()
                turn = parser.turn()
                finish = "cancelled" if cancel.cancelled else (text_stream.finish_reason or "stop")
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
                )
                stream.reply = reply
                self._commit(turn)

    def _commit(self, turn: Turn) -> None:
        """Record a finished turn: privately in memory, publicly in the scene."""
        self.turns_taken += 1
        if not turn.segments:
            return
        self._remember(turn)
        if self.scene is not None:
            self.scene._on_turn(self, turn)

    # -- state ------------------------------------------------------------------------------------

    def save(self, path: str) -> None:
        """Write this character (persona, memory, settings) atomically to `path` (JSON)."""
        from ._state import save_character

        save_character(self, path)

    @classmethod
    def load(cls, path: str, *, model: Backend | None = None) -> Character:
        """Read a character written by `save`."""
        from ._state import load_character

        return load_character(path, model=model)
