"""MockBackend: a scripted backend for tests, yours and ours (as httpx ships MockTransport).

The handler sees the fully rendered prompt, so a test can assert on exactly what a character
was shown, and returns the raw model output, which is then streamed in small chunks so that
parsing and streaming run as they would on a real model.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .._errors import ConfigError, DataError, GenerationError
from ..format import PromptStyle, check_prompt_style
from ._base import Backend, CancelToken, Sampling, TextStream, cut_at_stop
from ._scheduler import Priority

__all__ = ["MockBackend"]

_CHUNK = re.compile(r".{1,4}", re.S)


class MockBackend(Backend):
    """A backend whose output comes from `handler(prompt) -> str`.

    `handler` may also be a list of outputs, returned in order (one per call). Every rendered
    prompt is recorded in `prompts`. `chunk_delay` (seconds) slows streaming down, for tests of
    cancellation and concurrency. Grammars are accepted and ignored (`supports_grammar` is
    False, so a Character sends none unless asked to).

        backend = MockBackend(lambda prompt: "<system_thinking>Be curt.</system_thinking>Mara: No.")
        mara = Character(name="Mara", model=backend)
    """

    name = "mock"
    supports_grammar = False
    prefills = False  # the handler returns whole turns, plan tag included

    def __init__(
        self,
        handler: Callable[[str], str] | Sequence[str],
        *,
        prompt_style: PromptStyle = "chatml",
        n_ctx: int = 8192,
        chunk_delay: float = 0.0,
    ) -> None:
        if callable(handler):
            self._handler = handler
        elif isinstance(handler, Sequence) and not isinstance(handler, str):
            outputs = list(handler)
            lock = threading.Lock()

            def scripted(_prompt: str) -> str:
                with lock:
                    if not outputs:
                        raise GenerationError("MockBackend: the scripted outputs are used up")
                    return outputs.pop(0)

            self._handler = scripted
        else:
            raise ConfigError("MockBackend needs a callable or a list of outputs")
        self.prompt_style = check_prompt_style(prompt_style)  # a mock has no chat template
        self.n_ctx = n_ctx
        self.chunk_delay = chunk_delay
        self.prompts: list[str] = []
        self.tokens_generated = 0  # total chunks streamed, across calls
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs) -> MockBackend:
        """A scripted backend from a JSON file (the `mock:FILE` spec of `backend_from_spec`).

        The file holds a list of replies, used in order (cycling), or an object mapping a text
        the prompt contains to the reply (the first key, in file order, found in the prompt
        wins; `"*"` is the default). A reply that is not a string is sent as its JSON text, so a
        judge's script can hold JSON answers. Keyword arguments go to `MockBackend`.
        """
        path = Path(path)
        try:
            script = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read mock script {path}: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"mock script {path} is not JSON: {exc}") from None

        def text(value: object) -> str:
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

        if isinstance(script, list) and script:
            replies = [text(v) for v in script]
            lock = threading.Lock()
            state = {"n": 0}

            def in_order(_prompt: str) -> str:
                with lock:
                    reply = replies[state["n"] % len(replies)]
                    state["n"] += 1
                return reply

            return cls(in_order, **kwargs)
        if isinstance(script, dict) and script:
            table = [(k, text(v)) for k, v in script.items()]

            def by_content(prompt: str) -> str:
                for key, reply in table:
                    if key != "*" and key in prompt:
                        return reply
                if "*" in script:
                    return text(script["*"])
                raise ConfigError(f"mock script {path}: no key matches the prompt, no '*' default")

            return cls(by_content, **kwargs)
        raise DataError(f"mock script {path} must be a non-empty JSON list or object")

    def count_tokens(self, text: str) -> int:
        # About four characters a token, like the chunks below.
        return (len(text) + 3) // 4

    def stream(
        self,
        prompt: str,
        *,
        stop: Sequence[str] = (),
        sampling: Sampling | None = None,
        grammar: str | None = None,
        cancel: CancelToken | None = None,
        priority: Priority = "normal",
    ) -> TextStream:
        sampling = sampling or Sampling()
        with self._lock:
            self.prompts.append(prompt)
        try:
            out = self._handler(prompt)
        except GenerationError:
            raise
        except Exception as exc:  # a user's handler failing is a generation failure
            raise GenerationError(f"MockBackend handler failed: {exc!r}") from exc
        if not isinstance(out, str):
            raise GenerationError("MockBackend handler must return a str")
        text, _ = cut_at_stop(out, stop)
        return TextStream(
            lambda stream: self._pieces(text, sampling.max_tokens, cancel, stream),
            prompt_tokens=self.count_tokens(prompt),
        )

    def _pieces(
        self, text: str, max_tokens: int, cancel: CancelToken | None, stream: TextStream
    ) -> Iterator[str]:
        stream.finish_reason = "stop"
        for n, piece in enumerate(_CHUNK.findall(text)):
            if cancel is not None and cancel.cancelled:
                stream.finish_reason = "cancelled"
                return
            if n >= max_tokens:
                stream.finish_reason = "length"
                return
            if self.chunk_delay:
                time.sleep(self.chunk_delay)
            stream.completion_tokens += 1
            with self._lock:
                self.tokens_generated += 1
            yield piece
