"""The models of an evaluation, by role, and the plain chat agents (environment, next speaker,
judge).

Every role takes a backend spec (`her_sdk.backend_from_spec`: a GGUF path, an ONNX folder, an
OpenAI-compatible `http(s)://HOST/v1#MODEL`, `mock:FILE`, ...); `BackendPool` loads each once.
A URL serves actors through `/completions` with her_sdk's rendered prompt (as HER's evaluation
drives HER models) and the other roles through `/chat/completions`, so any chat model can judge.

Characters (actors) run through `her_sdk.Character`, which renders HER prompts itself. The
environment model, the next-speaker predictor and the judge are not characters: they are chat
agents as in CoSER's `Agent` class (system prompt plus a message list, same-role messages merged),
rendered by `her_sdk.format.render_messages` in the backend's prompt style: ChatML, the model's
own chat template, or, for base models without one, a plain script that ends with the agent's
label (`Environment:` or `Next Speaker:`) and stops at the line's end.
"""

from __future__ import annotations

import warnings

from her_sdk import Backend, Sampling, TextStream
from her_sdk import backend_from_spec as _from_spec
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


def _load(
    spec: str | None,
    model_name: str,
    role: str,
    n_ctx: int,
    api_key: str | None,
    adapter: str | None,
    prompt_style: str | None = None,
) -> Backend:
    """A role's backend: `model_name` names the served model of a URL without `#MODEL`;
    `adapter` "none" loads a GGUF model without any (None: `load_model`'s default);
    `prompt_style` overrides the model's (None: from its metadata)."""
    if model_name and spec and "://" in spec and "#" not in spec:
        spec = f"{spec}#{model_name}"
    kw: dict = {} if adapter is None else {"adapter": None if adapter == "none" else adapter}
    if prompt_style is not None:
        kw["prompt_style"] = prompt_style
    return _from_spec(spec, n_ctx=n_ctx, chat=role != "actor", api_key=api_key, **kw)


def backend_from_spec(
    spec: str | None,
    *,
    model_name: str = "",
    role: str = "actor",
    n_ctx: int = 8192,
    api_key: str | None = None,
    adapter: str | None = None,
) -> Backend:
    """Deprecated: `her_sdk.backend_from_spec` reads every spec (`BackendPool` by role)."""
    warnings.warn(
        "her_sdk.evaluation.backend_from_spec is deprecated; use her_sdk.backend_from_spec",
        DeprecationWarning,
        stacklevel=2,
    )
    return _load(spec, model_name, role, n_ctx, api_key, adapter)


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
        prompt_style: str | None = None,
    ) -> Backend:
        kind = "actor" if role == "actor" else "chat"  # URLs differ by mode only
        key = (spec, model_name, kind if spec and "://" in spec else "", adapter, prompt_style)
        if key not in self._loaded:
            self._loaded[key] = _load(
                spec, model_name, role, self.n_ctx, self.api_key, adapter, prompt_style
            )
        return self._loaded[key]

    def close(self) -> None:
        for backend in self._loaded.values():
            backend.close()
        self._loaded.clear()


class ChatAgent:
    """A system prompt and a message list, as CoSER's `Agent` keeps them.

    `update(role, text)` appends a message, or, with `merge` (CoSER `Agent.update`), extends the
    last one with a blank line between when it has the same role; HER's `CharacterAgent` keeps
    every message apart (`merge=False`). Empty text is ignored. The system prompt loses its
    outer newlines unless `verbatim` (HER's actor prompts end in blank lines the model saw).
    `last` is the stream of the latest `chat` (finish reason, token counts, timings).
    """

    def __init__(
        self,
        backend: Backend,
        system: str,
        *,
        label: str,
        merge: bool = True,
        one_line: bool = True,
        verbatim: bool = False,
    ) -> None:
        self.backend = backend
        self.label = label  # the agent's name in a base-model script ("Environment", ...)
        self.merge = merge
        self.one_line = one_line
        self.messages: list[Message] = [
            Message("system", system if verbatim else system.strip("\n"))
        ]
        self.last: TextStream | None = None

    def update(self, role: str, text: str) -> None:
        if not text:
            return
        last = self.messages[-1]
        if self.merge and last.role == role:
            self.messages[-1] = Message(role, last.content + "\n\n" + text)
        else:
            self.messages.append(Message(role, text))

    def render(self, messages: list[Message] | None = None) -> Rendered:
        """(prompt text, stop strings) for the backend's prompt style; in a base model's
        script the agent answers after its label (one line, with `one_line`)."""
        msgs = messages if messages is not None else self.messages
        return render_messages(msgs, self.backend, label=self.label, one_line=self.one_line)

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
        self.last = stream
        try:
            return "".join(stream).strip()
        finally:
            stream.close()
