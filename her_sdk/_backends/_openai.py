"""OpenAIBackend: any OpenAI-compatible HTTP server (vLLM, llama.cpp server, SGLang, ...).

    backend = OpenAIBackend("http://localhost:8000/v1", model="ChengyuDu0123/HER-32B")
    mara = Character(name="Mara", model=backend)

Two modes:
- "completions" (default): the SDK renders the prompt (ChatML by default) and the server
  continues it via `/completions`. Prefill and stop strings work as with the local engine, and
  so does a GBNF grammar where the server reads one (see `grammar_field`).
- "chat": `/chat/completions` with the messages recovered from a ChatML prompt
  (`her_sdk.format.chatml_to_messages`), for servers or models that only speak chat. A prefill
  goes as a final assistant message with vLLM's `continue_final_message`; servers that do not
  know it may ignore it.

Errors, one class each (both are `GenerationError`s):
- `BackendUnavailableError`: the server cannot be reached (connection refused, DNS failure,
  timeout) or the connection is lost while the answer streams;
- `BackendHTTPError`: the server answered with an HTTP error status (`status`), or sent an
  error event inside the stream (`status` 0).

Only the standard library is used (urllib); streaming reads server-sent events. Cancellation is
checked between events; `timeout` bounds connecting and each read. Token counts are estimates
(about four characters a token): the server is never asked to tokenize.
It is not a client for OpenAI's hosted features (tools, images, batching).
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence

from .._errors import BackendHTTPError, BackendUnavailableError, ConfigError
from ..format import PromptStyle, chatml_to_messages, check_prompt_style
from ._base import Backend, CancelToken, Sampling, StopScanner, TextStream
from ._scheduler import Priority

__all__ = ["OpenAIBackend"]


class OpenAIBackend(Backend):
    """A backend that sends prompts to an OpenAI-compatible endpoint.

    - `base_url` ends in `/v1`; `model` is the served model name; `api_key` goes in a Bearer
      header when given.
    - `grammar_field`: the request field that carries a GBNF grammar: "grammar" (llama.cpp's
      server, the default), "guided_grammar" (vLLM), or None for a server without grammar
      support (then `supports_grammar` is False and Characters send none).
    - `count_tokens` estimates about four characters a token; it does not call the server.
    - `extra_body`: more fields for every request (they override the SDK's own).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str = "",
        *,
        api_key: str | None = None,
        mode: str = "completions",
        prompt_style: PromptStyle = "chatml",
        n_ctx: int = 32768,
        timeout: float = 120.0,
        grammar_field: str | None = "grammar",
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
        self.prompt_style = check_prompt_style(prompt_style)
        self.n_ctx = n_ctx
        self.timeout = timeout
        self.grammar_field = grammar_field
        self.supports_grammar = grammar_field is not None
        self.extra_body = dict(extra_body or {})

    def _request(self, path: str, body: dict):
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.base_url + path
        req = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read(500).decode("utf-8", "replace")
            except (OSError, http.client.HTTPException):
                detail = ""
            finally:
                exc.close()
            message = f"{url}: HTTP {exc.code}" + (f": {detail}" if detail else "")
            raise BackendHTTPError(message, status=exc.code, url=url) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise BackendUnavailableError(
                f"cannot reach {self.base_url}: {reason}", url=self.base_url
            ) from None

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
        priority: Priority = "normal",
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
        if grammar and self.grammar_field:
            body[self.grammar_field] = grammar
        if self.mode == "completions":
            body["prompt"] = prompt
            path = "/completions"
        else:
            messages, prefill = chatml_to_messages(prompt)
            chat = [{"role": m.role, "content": m.content} for m in messages]
            if prefill:
                chat.append({"role": "assistant", "content": prefill})
                body.update(continue_final_message=True, add_generation_prompt=False)
            body["messages"] = chat
            path = "/chat/completions"
        body.update(self.extra_body)
        resp = self._request(path, body)
        return TextStream(
            lambda stream: self._pieces(resp, list(stop), cancel, stream),
            prompt_tokens=self.count_tokens(prompt),
        )

    def _events(self, resp) -> Iterator[dict | None]:
        """The JSON events of a server-sent event stream; None for the final `[DONE]`."""
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                yield None
                return
            try:
                event = json.loads(data)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                yield event

    def _pieces(
        self, resp, stop: Sequence[str], cancel: CancelToken | None, stream: TextStream
    ) -> Iterator[str]:
        scan = StopScanner(stop)
        stream.finish_reason = "stop"
        finished = False  # the server said it was done ([DONE] or a finish_reason)
        try:
            for event in self._events(resp):
                if event is None:
                    finished = True
                    break
                if cancel is not None and cancel.cancelled:
                    stream.finish_reason = "cancelled"
                    return
                if "error" in event:
                    error = event["error"]
                    message = error.get("message", error) if isinstance(error, dict) else error
                    raise BackendHTTPError(
                        f"{self.base_url}: error in the stream: {message}", url=self.base_url
                    )
                choices = event.get("choices") or []
                if not choices:
                    continue
                c = choices[0]
                piece = c.get("text")
                if piece is None:
                    piece = (c.get("delta") or {}).get("content") or ""
                if piece:
                    stream.completion_tokens += 1
                    text, stopped = scan.push(piece)
                    if text:
                        yield text
                    if stopped:
                        return
                if c.get("finish_reason"):
                    finished = True
                    stream.finish_reason = "length" if c["finish_reason"] == "length" else "stop"
            if not finished:
                # urllib ends a chunked body quietly when the peer hangs up mid-stream.
                raise BackendUnavailableError(
                    f"{self.base_url}: connection lost: the stream ended before the answer did",
                    url=self.base_url,
                )
            if rest := scan.flush():
                yield rest
        except (OSError, http.client.HTTPException) as exc:
            raise BackendUnavailableError(
                f"{self.base_url}: connection lost: {exc!r}", url=self.base_url
            ) from None
        finally:
            resp.close()
