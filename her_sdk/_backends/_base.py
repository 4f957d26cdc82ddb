"""The one small interface every backend implements, and the types it speaks.

A backend turns a rendered prompt into streamed text. It knows nothing about characters,
scenes or the HER format: `Character` renders the prompt and parses what comes back. The
helpers at the end (`cut_at_stop`, `StopScanner`) are the one stop-string scan that every
backend uses.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import msgspec
from msgspec import UNSET, UnsetType

from .._errors import ConfigError
from ..format import PromptStyle, PromptText, TurnShape
from ._scheduler import Priority

__all__ = [
    "Backend",
    "CancelToken",
    "Sampling",
    "StopScanner",
    "TextStream",
    "cut_at_stop",
    "tokenize_prompt",
]


def tokenize_prompt(
    prompt: str,
    tokenize: Callable[[str, bool], list[int]],
    is_control: Callable[[int], bool],
    piece: Callable[[int], str],
    user_defined: Callable[[int], str] | None = None,
) -> list[int]:
    """The tokens of `prompt`, with special tokens parsed only in its scaffolding.

    `tokenize(text, parse_special)` is the engine's tokenizer on a fragment (no BOS/EOS);
    `is_control(token)` tells control tokens; `piece(token)` is a control token's text. The
    engine's tokenizer splits text at special tokens and tokenizes the pieces between them on
    their own; this splits at the control tokens the scaffolding writes only, so a prompt
    without special-token strings in its literal text gets exactly the tokens that
    `tokenize(prompt, True)` gives, and one with them gets those strings as plain text.

    Some tokenizers (llama.cpp's) match user-defined tokens (Gemma's `[multimodal]`) even
    without special-token parsing: with `user_defined(token)` (the token's text if it is such a
    token, else ""), text that would become one is split inside it and tokenized in two parts,
    so it stays text.
    """
    literal = getattr(prompt, "literal", ())
    if not literal:
        return tokenize(prompt, True)
    cuts: list[tuple[int, int, int]] = []  # (start, end, token) of each scaffolding control
    for a, b in PromptText(prompt, literal).scaffold():
        fragment = prompt[a:b]
        at = 0
        for token in tokenize(fragment, True):
            if is_control(token) and (text := piece(token)):
                k = fragment.find(text, at)
                if k >= 0:
                    cuts.append((a + k, a + k + len(text), token))
                    at = k + len(text)

    def plain(text: str) -> list[int]:
        tokens = tokenize(text, False)
        if user_defined is None:
            return tokens
        for token in tokens:
            name = user_defined(token)
            k = text.find(name) if name else -1
            if k >= 0:
                cut = k + 1  # "[multimodal]" -> "[" + "multimodal]": no longer the token
                return plain(text[:cut]) + plain(text[cut:])
        return tokens

    out: list[int] = []
    pos = 0
    for a, b, token in cuts:
        if a > pos:
            out += plain(prompt[pos:a])
        out.append(token)
        pos = b
    if pos < len(prompt):
        out += plain(prompt[pos:])
    return out


# llama.cpp's own defaults, but for the history: the prompt's last 1024 tokens (the scene).
DRY_DEFAULTS: dict[str, float | int] = {
    "dry_multiplier": 0.0,
    "dry_base": 1.75,
    "dry_allowed_length": 2,
    "dry_penalty_last_n": 1024,
}


class Sampling(msgspec.Struct, kw_only=True, frozen=True):
    """Sampling settings, named as in llama-cpp-python's `create_completion`.

    `seed=None` means a fresh random seed per call; a fixed seed makes a call reproducible.
    `temperature=0` is greedy decoding. `dry_*` are llama.cpp's DRY sampler ("don't repeat
    yourself"; off while `dry_multiplier` is 0): it lowers the odds of extending a run of tokens
    that is already in the scene's recent text, the more the longer the run (llama.cpp only;
    other engines ignore it).
    """

    max_tokens: int = 256
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    seed: int | None = None
    # Unset DRY fields take the defaults of `DRY_DEFAULTS` and are left out of save files, so a
    # character that does not use DRY saves exactly as before it existed.
    dry_multiplier: float | UnsetType = UNSET
    dry_base: float | UnsetType = UNSET
    dry_allowed_length: int | UnsetType = UNSET
    dry_penalty_last_n: int | UnsetType = UNSET

    def __post_init__(self) -> None:
        mult, base, allowed, last_n = self.dry()
        floats = (self.temperature, self.top_p, self.min_p, self.repeat_penalty, mult, base)
        if not all(math.isfinite(x) for x in floats):
            raise ConfigError("sampling values must be finite numbers (not NaN or infinity)")
        if self.max_tokens < 1:
            raise ConfigError("max_tokens must be >= 1")
        if self.temperature < 0:
            raise ConfigError("temperature must be >= 0")
        if not 0 < self.top_p <= 1 or not 0 <= self.min_p <= 1:
            raise ConfigError("top_p must be in (0, 1] and min_p in [0, 1]")
        if self.top_k < 0 or self.repeat_penalty <= 0:
            raise ConfigError("top_k must be >= 0 and repeat_penalty > 0")
        if mult < 0 or base < 1:
            raise ConfigError("dry_multiplier must be >= 0 and dry_base >= 1")
        if allowed < 1 or not 1 <= last_n <= 1 << 20:
            raise ConfigError("dry_allowed_length must be >= 1, dry_penalty_last_n in 1..2**20")

    def dry(
        self, defaults: Mapping[str, float | int] = DRY_DEFAULTS
    ) -> tuple[float, float, int, int]:
        """(dry_multiplier, dry_base, dry_allowed_length, dry_penalty_last_n): what this sets,
        else `defaults` (a backend's, e.g. `LlamaBackend(dry_multiplier=0.8)`)."""
        return tuple(  # type: ignore[return-value]
            defaults[k] if getattr(self, k) is UNSET else getattr(self, k) for k in DRY_DEFAULTS
        )


# How HER's own code decodes its released models (chat_demo/chat_demo.py: max_new_tokens 1024,
# temperature 0.7, top-p 0.9), with what that leaves to transformers' generate: top-k 20 from
# the Qwen3 generation config the checkpoints inherit, no min-p, no repetition penalty. The
# default of characters on a "her"-style model: a budget that holds a plan of HER's length and
# the turn after it.
HER_SAMPLING = Sampling(
    max_tokens=1024, temperature=0.7, top_p=0.9, top_k=20, min_p=0.0, repeat_penalty=1.0
)


class CancelToken:
    """Thread-safe cancellation flag: `cancel()` from any thread stops the generation it is
    passed to before the next token."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class TextStream:
    """An iterator of text pieces with the statistics of the generation behind it.

    `pieces` is the text, or a function that is given this stream and returns the text pieces
    (typically a generator method of the backend): that form lets the generation record its
    statistics on the stream as it runs. A generator's body only runs when iteration begins.

    The counters are final once iteration ends. `finish_reason` is "stop" (stop string, end of
    grammar or end-of-generation token), "length" (max_tokens) or "cancelled".
    """

    def __init__(
        self,
        pieces: Iterable[str] | Callable[[TextStream], Iterable[str]],
        prompt_tokens: int = 0,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = 0  # prompt tokens re-used from the engine's cache
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.started = time.perf_counter()
        self.first_token_s: float | None = None
        self.total_s: float | None = None
        self._pieces: Iterator[str] = iter(pieces(self) if callable(pieces) else pieces)

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        try:
            piece = next(self._pieces)
        except StopIteration:
            if self.total_s is None:
                self.total_s = time.perf_counter() - self.started
            raise
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started
        return piece

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


class Backend(ABC):
    """What a model engine must provide to run characters.

    - `prompt_style`: how prompts are rendered for it ("chatml", "template", "fewshot" or "her");
      with "template", `chat_template` holds the model's Jinja template.
    - `n_ctx`: the context window in tokens.
    - `stream(...)`: generate text for a prompt, stopping at any of `stop` (the stop string is
      not yielded), honouring `sampling`, an optional GBNF `grammar`, `cancel`, and the turn's
      `priority` ("player", "normal" or "background"; see `schedules`).
    - `count_tokens(text)`: how many tokens the engine would read for `text`.

    Capabilities, declared here and read by callers (never inferred from a backend's type):
    - `supports_grammar`: the engine honours a GBNF `grammar`; a Character constrains its turns
      with one by default only then (a backend that ignores grammars says False).
    - `plans`: the model was trained to write a plan before each turn; a Character asks for
      one by default only then (False for a model tuned on plan-less turns).
    - `prefills`: the engine continues the prompt text as given, so a prompt may already begin
      the reply (`<system_thinking>`); False for backends that produce whole turns themselves.
    - `schedules`: concurrent `stream` calls are decoded together and scheduled by their
      `priority`; other backends take the keyword and run calls as they come.
    - `supports_logprobs`: `logprobs(prompt, continuation)` scores text (held-out NLL);
      backends without it raise `ConfigError` there.
    - `turn_shape`: the `TurnShape` a Character on this model uses when it sets none (None:
      the grammar's caps, and no limit without a grammar).
    - `sampling`: the `Sampling` a Character on this model uses when it sets none.

    `default_shape()` and `default_sampling()` read the last two, falling back on what the
    prompt style implies: a "her"-style model (a released HER model) plans at length, so its
    characters get `TurnShape.FREE` and HER's own decoding (`HER_SAMPLING`).
    """

    supports_grammar: bool = True
    plans: bool = True
    prefills: bool = True
    schedules: bool = False
    supports_logprobs: bool = False
    turn_shape: TurnShape | None = None
    sampling: Sampling | None = None
    prompt_style: PromptStyle = "chatml"
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    n_ctx: int = 4096
    name: str = "backend"

    @abstractmethod
    def stream(
        self,
        prompt: str,
        *,
        stop: Sequence[str] = (),
        sampling: Sampling | None = None,
        grammar: str | None = None,
        cancel: CancelToken | None = None,
        priority: Priority = "normal",
    ) -> TextStream: ...

    @abstractmethod
    def count_tokens(self, text: str) -> int: ...

    def default_shape(self) -> TurnShape | None:
        """The `TurnShape` of a character on this model that sets none."""
        if self.turn_shape is not None:
            return self.turn_shape
        return TurnShape.FREE if self.prompt_style == "her" else None

    def default_sampling(self) -> Sampling:
        """The `Sampling` of a character on this model that sets none."""
        if self.sampling is not None:
            return self.sampling
        return HER_SAMPLING if self.prompt_style == "her" else Sampling(max_tokens=320)

    def logprobs(
        self, prompt: str, continuation: str, *, priority: Priority = "normal"
    ) -> list[float]:
        """The natural-log probability of each token of `continuation` after `prompt` (and the
        continuation's tokens before it), in order; only where `supports_logprobs`."""
        raise ConfigError(f"{type(self).__name__} cannot score text (supports_logprobs is False)")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engine resources. The backend is unusable afterwards."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Return (text before the earliest stop string, whether one was found). Empty stop
    strings are ignored."""
    best = len(text)
    found = False
    for s in stop:
        if s:
            k = text.find(s)
            if k != -1 and k < best:
                best, found = k, True
    return text[:best], found


def _stop_holdback(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters of `text` could be the start of a stop string."""
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


class StopScanner:
    """Incremental stop-string scan over streamed text, the one every backend uses.

    `push(piece)` returns the text that is now certain (it cannot be part of a stop string)
    and whether a stop string was found; after a stop nothing more comes out, and the stop
    string itself never does. Text that could still begin a stop string is held back until the
    next piece; `flush()` returns it when generation ends without a stop.

        scan = StopScanner(["<|im_end|>"])
        scan.push("Hello<|im")   # ("Hello", False)
        scan.push("_end|>more")  # ("", True)
    """

    __slots__ = ("_pending", "stop", "stopped")

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = [s for s in stop if s]
        self.stopped = False
        self._pending = ""

    def push(self, piece: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        text = self._pending + piece
        cut, found = cut_at_stop(text, self.stop)
        if found:
            self._pending = ""
            self.stopped = True
            return cut, True
        hold = _stop_holdback(text, self.stop)
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        """The held-back text, once generation ended without a stop string."""
        out, self._pending = self._pending, ""
        return out
