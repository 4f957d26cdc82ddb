"""OnnxBackend: ONNX Runtime GenAI model folders (what `her export onnx` writes).

A thin engine wrapper like `LlamaBackend`: it tokenizes with the folder's own tokenizer, runs
ONNX Runtime GenAI's generator token by token (so stop strings and cancellation act between
tokens), and renders prompts in the style the folder's chat template implies.

Differences from the llama.cpp backend, by engine limits:
- grammar: ONNX Runtime GenAI constrains decoding only with its own guidance formats (Lark,
  regex, JSON schema) and only in builds with guidance enabled; it does not read GBNF. So
  `supports_grammar` is False (a Character sends no grammar by default); a grammar passed anyway
  is ignored (logged at debug level). The HER parser accepts free text.
- sampling: temperature, top_k, top_p, repetition penalty and seed map to GenAI search options;
  `min_p` has no counterpart and is ignored.
- no prompt cache between calls: every call reads its whole prompt.

A folder written by `her export onnx` carries `her.json` with the HER format version; a version
newer than this runtime's is refused with `InvalidModelError`, as for GGUF files.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .._errors import (
    ContextOverflowError,
    GenerationError,
    InvalidModelError,
    MissingDependencyError,
    ModelNotFoundError,
)
from ..format import (
    PromptStyle,
    TurnShape,
    check_prompt_style,
    detect_prompt_style,
    format_version_problem,
)
from ._base import Backend, CancelToken, Sampling, StopScanner, TextStream
from ._scheduler import Priority

__all__ = ["OnnxBackend"]

log = logging.getLogger("her_sdk")


def _import_og():
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise MissingDependencyError("onnxruntime-genai", "onnx") from None
    return og


def _token_text(value: object) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value or "")


def _read_template(path: Path, tok_cfg: dict) -> str | None:
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    t = tok_cfg.get("chat_template")
    if isinstance(t, str) and t.strip():
        return t
    if isinstance(t, list):  # named templates: take "default"
        for item in t:
            if isinstance(item, dict) and item.get("name") == "default":
                return item.get("template")
    return None


class OnnxBackend(Backend):
    """A model folder with `genai_config.json`, run by ONNX Runtime GenAI.

    - `n_ctx`: context window; default the folder's `context_length`.
    - `execution_provider`: e.g. "cuda"; default whatever the folder was built for.
    - `prompt_style`: override how prompts are rendered ("chatml", "template", "fewshot", or
      "her": HER's own prompt for a released HER model; default: the model's metadata).
    """

    supports_grammar = False  # ONNX Runtime GenAI does not read GBNF (see the module doc)

    @staticmethod
    def genai() -> Any:
        """The `onnxruntime_genai` module (`MissingDependencyError` without the onnx extra)."""
        return _import_og()

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n_ctx: int | None = None,
        execution_provider: str | None = None,
        prompt_style: PromptStyle | None = None,
    ) -> None:
        self.path = Path(path).expanduser()
        cfg_path = self.path / "genai_config.json"
        if not cfg_path.is_file():
            raise ModelNotFoundError(f"{self.path} has no genai_config.json", str(self.path))
        her = self.path / "her.json"
        try:
            self.her = json.loads(her.read_text(encoding="utf-8")) if her.is_file() else {}
            if not isinstance(self.her, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise InvalidModelError(f"{her} is unreadable: {exc}", str(self.path)) from None
        problem = format_version_problem(self.her.get("format_version"), key="format_version")
        if problem is not None:
            raise InvalidModelError(f"{her}: {problem}", str(self.path))
        og = self._og = _import_og()
        try:
            genai = json.loads(cfg_path.read_text())
            cfg = og.Config(str(self.path))
            if execution_provider:
                cfg.clear_providers()
                if execution_provider != "cpu":
                    cfg.append_provider(execution_provider)
            self._model = og.Model(cfg)
            self._tok = og.Tokenizer(self._model)
        except (OSError, ValueError, RuntimeError) as exc:
            raise InvalidModelError(
                f"ONNX Runtime GenAI could not load {self.path}: {exc}", str(self.path)
            ) from None
        context = int(genai.get("model", {}).get("context_length", 4096))
        self.n_ctx = min(n_ctx, context) if n_ctx else context
        # GroupQueryAttention refuses a KV cache smaller than the sliding window.
        window = genai.get("model", {}).get("decoder", {}).get("sliding_window") or {}
        self.min_length = int(window.get("window_size", 0)) + 1
        eos = genai.get("model", {}).get("eos_token_id", [])
        self._eos = set(eos if isinstance(eos, list) else [eos])
        tok_cfg_path = self.path / "tokenizer_config.json"
        tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
        self.bos_token = _token_text(tok_cfg.get("bos_token"))
        self.eos_token = _token_text(tok_cfg.get("eos_token"))
        self.chat_template = _read_template(self.path, tok_cfg)
        self.name = self.path.name
        self._lock = threading.Lock()
        self._warned_grammar = False
        her_model = self.her.get("format_version") is not None
        declared = self.her.get("prompt_style")
        self.prompt_style = check_prompt_style(
            prompt_style
            or detect_prompt_style(self.chat_template, her_model=her_model, declared=declared),
            self.chat_template,
        )
        if her_model:  # the section lengths it was trained with, as a GGUF declares them
            base = TurnShape.FREE if self.prompt_style == "her" else TurnShape()
            meta = {f"her.{k}": v for k, v in self.her.items()}
            self.turn_shape = TurnShape.from_metadata(meta, base)

    def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self._tok.encode(text)]

    def count_tokens(self, text: str) -> int:
        self._check_open()
        return len(self.tokenize(text))

    def _check_open(self) -> None:
        if self._model is None:
            raise GenerationError("this OnnxBackend is closed")

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
        self._check_open()
        sampling = sampling or Sampling()
        if grammar and not self._warned_grammar:
            log.debug("OnnxBackend ignores GBNF grammars (ONNX Runtime GenAI does not read GBNF)")
            self._warned_grammar = True
        tokens = self.tokenize(prompt)
        if len(tokens) + 1 > self.n_ctx:
            raise ContextOverflowError(
                f"prompt is {len(tokens)} tokens; the context window is {self.n_ctx}"
            )
        return TextStream(
            lambda stream: self._generate(tokens, list(stop), sampling, cancel, stream),
            prompt_tokens=len(tokens),
        )

    def _params(self, n_prompt: int, s: Sampling):
        params = self._og.GeneratorParams(self._model)
        seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
        opts = {
            "max_length": min(self.n_ctx, max(n_prompt + s.max_tokens, self.min_length)),
            "do_sample": s.temperature > 0,
            "repetition_penalty": s.repeat_penalty,
            "random_seed": seed,
        }
        if s.temperature > 0:
            opts.update(temperature=s.temperature, top_p=s.top_p)
            if s.top_k > 0:
                opts["top_k"] = s.top_k
        params.set_search_options(**opts)
        return params

    def _generate(
        self,
        tokens: list[int],
        stop: Sequence[str],
        sampling: Sampling,
        cancel: CancelToken | None,
        stream: TextStream,
    ) -> Iterator[str]:
        import numpy as np  # comes with onnxruntime-genai; imported here to keep import light

        with self._lock:
            gen = self._og.Generator(self._model, self._params(len(tokens), sampling))
            try:
                gen.append_tokens(np.asarray(tokens, dtype=np.int32))
                decoder = self._tok.create_stream()
                scan = StopScanner(stop)
                stream.finish_reason = "length"
                for _ in range(sampling.max_tokens):
                    if cancel is not None and cancel.cancelled:
                        stream.finish_reason = "cancelled"
                        break
                    if gen.is_done():
                        break
                    gen.generate_next_token()
                    token = int(gen.get_next_tokens()[0])
                    if token in self._eos:
                        stream.finish_reason = "stop"
                        break
                    stream.completion_tokens += 1
                    text, stopped = scan.push(decoder.decode(token))
                    if text:
                        yield text
                    if stopped:
                        stream.finish_reason = "stop"
                        break
                if rest := scan.flush():
                    yield rest
            finally:
                del gen

    def close(self) -> None:
        self._tok = None
        self._model = None

    def __repr__(self) -> str:
        return f"OnnxBackend({str(self.path)!r}, n_ctx={self.n_ctx}, style={self.prompt_style!r})"
