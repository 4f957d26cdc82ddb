"""OpenAIBackend: any OpenAI-compatible HTTP server (vLLM, llama.cpp server, SGLang, ...).

    backend = OpenAIBackend("http://localhost:8000/v1", model="ChengyuDu0123/HER-32B")
    mara = Character(name="Mara", model=backend)

Two modes:
- "completions" (default): the SDK renders the prompt (ChatML by default) and the server
  continues it via `/completions`. Prefill, stop strings and a GBNF grammar (`grammar`, which
  llama.cpp's server and vLLM's guided decoding read) work as with the local engine.
- "chat": `/chat/completions` with the messages recovered from a ChatML prompt, for servers or
  models that only speak chat. A prefill goes as a final assistant message with vLLM's
  `continue_final_message`; servers that do not know it may ignore it.

Only the standard library is used (urllib); streaming reads server-sent events. Cancellation is
checked between events; `timeout` bounds connecting and each read.
It is not a client for OpenAI's hosted features (tools, images, batching).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence

from .._errors import ConfigError, GenerationError, ModelError
from ._base import Backend, CancelToken, Sampling, TextStream, cut_at_stop, stop_holdback

__all__ = ["OpenAIBackend", "chatml_to_messages"]

_CHATML = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>\n?|$)", re.S)


def chatml_to_messages(prompt: str) -> tuple[list[dict], str]:
    """Split a ChatML prompt into messages; returns (messages, prefill of the open assistant
    turn). A prompt that is not ChatML becomes one user message."""
    if "<|im_start|>" not in prompt:
        return [{"role": "user", "content": prompt}], ""
    msgs = [{"role": r, "content": c} for r, c in _CHATML.findall(prompt)]
    prefill = ""
    if msgs and msgs[-1]["role"] == "assistant" and not prompt.rstrip("\n").endswith("<|im_end|>"):
        prefill = msgs.pop()["content"]
    return msgs, prefill


class OpenAIBackend(Backend):
    """A backend that sends prompts to an OpenAI-compatible endpoint.

    `base_url` ends in `/v1`; `model` is the served model name; `api_key` goes in a Bearer
    header when given. `count_tokens` estimates (about four characters a token) unless the
    server exposes llama.cpp's or vLLM's `/tokenize`.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str = "",
        *,
        api_key: str | None = None,
        mode: str = "completions",
        prompt_style: str = "chatml",
        n_ctx: int = 32768,
        timeout: float = 120.0,
        extra_body: dict | None = None,
    ) -> None:
        if mode not in ("completions", "chat"):
            raise ConfigError("OpenAIBackend mode must be 'completions' or 'chat'")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"OpenAIBackend base_url must be http(s)://…, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.mode = mode
        self.prompt_style = prompt_style
        self.n_ctx = n_ctx
        self.timeout = timeout
        self.extra_body = dict(extra_body or {})

    def _request(self, path: str, body: dict):
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(
            self.base_url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode("utf-8", "replace")
            raise GenerationError(f"{self.base_url}{path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ModelError(f"cannot reach {self.base_url}: {exc}") from None

    def count_tokens(self, text: str) -> int:
        return (len(text) + 3) // 4

    def stream(
        self,
        prompt: str,
        *,
        stop: Sequence[str] = (),
        sampling: Sampling | None = None,
        grammar: str | None = None,
        cancel: CancelToken | None = None,
    ) -> TextStream:
        s = sampling or Sampling()
        body: dict = {
            "model": self.model,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "stream": True,
            **({"seed": s.seed} if s.seed is not None else {}),
            **({"stop": list(stop)[:4]} if stop else {}),  # OpenAI allows 4; we cut locally too
        }
        if s.top_k:
            body["top_k"] = s.top_k
        if s.min_p:
            body["min_p"] = s.min_p
        if grammar:
            body["grammar"] = grammar
        if self.mode == "completions":
            body["prompt"] = prompt
            path = "/completions"
        else:
            messages, prefill = chatml_to_messages(prompt)
            if prefill:
                messages.append({"role": "assistant", "content": prefill})
                body.update(continue_final_message=True, add_generation_prompt=False)
            body["messages"] = messages
            path = "/chat/completions"
        body.update(self.extra_body)
        resp = self._request(path, body)
        stream = TextStream(iter(()), prompt_tokens=self.count_tokens(prompt))
        stream._pieces = self._pieces(resp, stop, cancel, stream)
        return stream

    def _events(self, resp) -> Iterator[dict]:
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                yield json.loads(data)
            except json.JSONDecodeError:
                continue

    def _pieces(
        self, resp, stop: Sequence[str], cancel: CancelToken | None, stream: TextStream
    ) -> Iterator[str]:
        text = ""  # text generated so far; the part not yet yielded is held for stop matching
        sent = 0
        stream.finish_reason = "stop"
        try:
            for event in self._events(resp):
                if cancel is not None and cancel.cancelled:
                    stream.finish_reason = "cancelled"
                    return
                if "error" in event:
                    raise GenerationError(f"{self.base_url}: {event['error']}")
                choices = event.get("choices") or []
                if not choices:
                    continue
                c = choices[0]
                piece = c.get("text")
                if piece is None:
                    piece = (c.get("delta") or {}).get("content") or ""
                if piece:
                    stream.completion_tokens += 1
                    text += piece
                    cut, found = cut_at_stop(text, stop)
                    if found:
                        if len(cut) > sent:
                            yield cut[sent:]
                        return
                    safe = len(text) - stop_holdback(text, stop)
                    if safe > sent:
                        yield text[sent:safe]
                        sent = safe
                if c.get("finish_reason"):
                    stream.finish_reason = "length" if c["finish_reason"] == "length" else "stop"
            if len(text) > sent:
                yield text[sent:]
        except (OSError, TimeoutError) as exc:
            raise GenerationError(f"{self.base_url}: connection lost: {exc}") from None
        finally:
            resp.close()
