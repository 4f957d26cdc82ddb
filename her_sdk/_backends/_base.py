"""The one small interface every backend implements, and the types it speaks.

A backend turns a rendered prompt into streamed text. It knows nothing about characters,
scenes or the HER format: `Character` renders the prompt and parses what comes back.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import msgspec

__all__ = ["Backend", "CancelToken", "Sampling", "TextStream"]


class Sampling(msgspec.Struct, kw_only=True, frozen=True):
    """Sampling settings, named as in llama-cpp-python's `create_completion`.

    `seed=None` means a fresh random seed per call; a fixed seed makes a call reproducible.
    `temperature=0` is greedy decoding.
    """

    max_tokens: int = 256
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    seed: int | None = None

    def __post_init__(self) -> None:
        from .._errors import ConfigError

        if self.max_tokens < 1:
            raise ConfigError("max_tokens must be >= 1")
        if self.temperature < 0:
            raise ConfigError("temperature must be >= 0")
        if not 0 < self.top_p <= 1 or not 0 <= self.min_p <= 1:
            raise ConfigError("top_p must be in (0, 1] and min_p in [0, 1]")
        if self.top_k < 0 or self.repeat_penalty <= 0:
            raise ConfigError("top_k must be >= 0 and repeat_penalty > 0")


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

    The counters are final once iteration ends. `finish_reason` is "stop" (stop string, end of
    grammar or end-of-generation token), "length" (max_tokens) or "cancelled".
    """

    def __init__(self, pieces: Iterator[str], prompt_tokens: int = 0) -> None:
        self._pieces = pieces
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = 0  # prompt tokens re-used from the engine's cache
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.started = time.perf_counter()
        self.first_token_s: float | None = None
        self.total_s: float | None = None

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

    - `prompt_style`: how prompts are rendered for it ("chatml", "template" or "fewshot");
      with "template", `chat_template` holds the model's Jinja template.
    - `n_ctx`: the context window in tokens.
    - `stream(...)`: generate text for a prompt, stopping at any of `stop` (the stop string is
      not yielded), honouring `sampling`, an optional GBNF `grammar`, and `cancel`.
    - `count_tokens(text)`: how many tokens the engine would read for `text`.
    """

    prompt_style: str = "chatml"
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
    ) -> TextStream: ...

    @abstractmethod
    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engine resources. The backend is unusable afterwards."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Return (text before the earliest stop string, whether one was found)."""
    best = len(text)
    found = False
    for s in stop:
        if s:
            k = text.find(s)
            if k != -1 and k < best:
                best, found = k, True
    return text[:best], found


def stop_holdback(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters of `text` could be the start of a stop string."""
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold
