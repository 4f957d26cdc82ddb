"""Backends from command-line specs, and the plain chat agents (environment, next speaker, judge).

A spec is one of:
- a path to a `.gguf` file or an ONNX model folder: `her_sdk.load_model(path)`;
- an OpenAI-compatible base URL (`http(s)://host/v1`), with the served model's name;
- `mock:FILE`, a scripted backend for tests and dry runs. FILE is JSON: a list of replies used in
  order (cycling), or an object mapping a text the prompt contains to the reply (the first key,
  in file order, found in the prompt wins; `"*"` is the default). A reply that is not a string is
  sent as its JSON text, so a judge script can hold flaw lists as JSON.

Characters (actors) run through `her_sdk.Character`, which renders HER prompts itself. The
environment model, the next-speaker predictor and the judge are not characters: they are chat
agents as in CoSER's `Agent` class (system prompt plus a message list, same-role messages merged),
rendered here in the backend's prompt style: ChatML, the model's own chat template, or, for base
models without one, a plain script that ends with the agent's label (`Environment:` or
`Next Speaker:`) and stops at the line's end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from her_sdk import Backend, MockBackend, Sampling
from her_sdk._errors import ConfigError, DataError
from her_sdk.format import Message, Rendered, render_messages

__all__ = ["BackendPool", "ChatAgent", "backend_from_spec", "plain_sampling"]


def plain_sampling(temperature: float, max_tokens: int, seed: int | None = None) -> Sampling:
    """Sampling as an OpenAI-style API call with only `temperature` set: no top-k/p, no min-p,
    no repetition penalty (CoSER and HER call their models that way)."""
    return Sampling(
        temperature=temperature,
        max_tokens=max_tokens,
        top_k=0,
        top_p=1.0,
        min_p=0.0,
        repeat_penalty=1.0,
        seed=seed,
    )


def _scripted(path: Path) -> MockBackend:
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
        state = {"n": 0}

        def in_order(_prompt: str) -> str:
            reply = replies[state["n"] % len(replies)]
            state["n"] += 1
            return reply

        return MockBackend(in_order)
    if isinstance(script, dict) and script:
        table = [(k, text(v)) for k, v in script.items()]

        def by_content(prompt: str) -> str:
            for key, reply in table:
                if key != "*" and key in prompt:
                    return reply
            if "*" in script:
                return text(script["*"])
            raise ConfigError(f"mock script {path}: no key matches the prompt and no '*' default")

        return MockBackend(by_content)
    raise DataError(f"mock script {path} must be a non-empty JSON list or object")


def backend_from_spec(
    spec: str | None,
    *,
    model_name: str = "",
    role: str = "actor",
    n_ctx: int = 8192,
    api_key: str | None = None,
    adapter: str | None = None,
) -> Backend:
    """A backend for one role ("actor", "env", "nsp", "judge") from a spec (see module doc).

    `None` means the embedded default model (with its shipped adapter). `adapter` is a GGUF
    LoRA adapter for a GGUF spec; "none" loads the model without any. URLs serve actors
    through `/completions` with her_sdk's rendered ChatML (as HER's evaluation drives HER
    models) and the other roles through `/chat/completions`, so any chat model can be the judge.
    """
    if spec is not None and spec.startswith("mock:"):
        return _scripted(Path(spec[5:]))
    if spec is not None and spec.startswith(("http://", "https://")):
        from her_sdk import OpenAIBackend

        return OpenAIBackend(
            spec,
            model=model_name,
            api_key=api_key if api_key is not None else os.environ.get("OPENAI_API_KEY"),
            mode="completions" if role == "actor" else "chat",
        )
    from her_sdk import load_model

    kw = {} if adapter is None else {"adapter": None if adapter == "none" else adapter}
    if spec is not None and Path(spec).expanduser().is_dir():
        return load_model(spec, **kw)
    return load_model(spec, n_ctx=n_ctx, **kw)


class BackendPool:
    """Backends by spec, loaded once: `--env` defaulting to the actor shares its model."""

    def __init__(self, *, n_ctx: int = 8192, api_key: str | None = None) -> None:
        self.n_ctx = n_ctx
        self.api_key = api_key
        self._loaded: dict[tuple, Backend] = {}

    def get(
        self,
        spec: str | None,
        model_name: str = "",
        role: str = "actor",
        *,
        adapter: str | None = None,
    ) -> Backend:
        kind = "actor" if role == "actor" else "chat"  # URLs differ by mode only
        key = (spec, model_name, kind if spec and spec.startswith("http") else "", adapter)
        if key not in self._loaded:
            self._loaded[key] = backend_from_spec(
                spec,
                model_name=model_name,
                role=role,
                n_ctx=self.n_ctx,
                api_key=self.api_key,
                adapter=adapter,
            )
        return self._loaded[key]

    def close(self) -> None:
        for backend in self._loaded.values():
            backend.close()
        self._loaded.clear()


class ChatAgent:
    """A system prompt and a message list, as CoSER's `Agent` keeps them.

    `update(role, text)` appends a message, or extends the last one with a blank line between
    when it has the same role (CoSER `Agent.update`); empty text is ignored.
    """

    def __init__(self, backend: Backend, system: str, *, label: str) -> None:
        self.backend = backend
        self.label = label  # the agent's name in a base-model script ("Environment", ...)
        self.messages: list[Message] = [Message("system", system.strip("\n"))]

    def update(self, role: str, text: str) -> None:
        if not text:
            return
        last = self.messages[-1]
        if last.role == role:
            self.messages[-1] = Message(role, last.content + "\n\n" + text)
        else:
            self.messages.append(Message(role, text))

    def render(self, messages: list[Message] | None = None) -> Rendered:
        """(prompt text, stop strings) for the backend's prompt style; in a base model's
        script the agent answers one line after its label."""
        msgs = messages if messages is not None else self.messages
        return render_messages(msgs, self.backend, label=self.label, one_line=True)

    def chat(self, sampling: Sampling, messages: list[Message] | None = None) -> str:
        msgs = list(messages if messages is not None else self.messages)
        prompt, stop = self.render(msgs)
        # A long scene can outgrow a small model's window: forget the oldest messages (never
        # the system prompt), as a Character forgets its oldest memories.
        budget = self.backend.n_ctx - sampling.max_tokens - 8
        while len(msgs) > 2 and self.backend.count_tokens(prompt) > budget:
            del msgs[1]
            prompt, stop = self.render(msgs)
        stream = self.backend.stream(prompt, stop=stop, sampling=sampling)
        try:
            return "".join(stream).strip()
        finally:
            stream.close()
