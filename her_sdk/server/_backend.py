"""The server's model: `ServerSettings` (the model flags of `her serve`) -> one Backend.

    model = backend_from_settings(settings)   # what `her serve --model ... --adapter ...` loads

This is the only place where the server turns its settings into a model; it calls the SDK's
own loaders (`load_model` for GGUF and ONNX files, `OpenAIBackend` for an http(s) URL) and
holds no model logic. `describe(model)` is what GetServerInfo reports about a loaded one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._backends._base import Backend
from ._settings import ServerSettings

__all__ = ["backend_from_settings", "describe"]


def _is_url(model: str | None) -> bool:
    return model is not None and model.startswith(("http://", "https://"))


def backend_from_settings(s: ServerSettings) -> Backend:
    """Load the model `s` names (the embedded default when it names none)."""
    if _is_url(s.model):
        from .._backends._openai import OpenAIBackend

        assert s.model is not None
        remote: dict[str, Any] = {}
        if s.prompt_style is not None:
            remote["prompt_style"] = s.prompt_style
        if s.n_ctx is not None:
            remote["n_ctx"] = s.n_ctx
        key = s.remote_api_key.get_secret_value() if s.remote_api_key is not None else None
        return OpenAIBackend(s.model, s.remote_model, api_key=key, **remote)

    from .._model import load_model

    kw: dict[str, Any] = {}
    if s.adapter is not None:
        kw["adapter"] = None if s.adapter.lower() == "none" else s.adapter
    if s.prompt_style is not None:
        kw["prompt_style"] = s.prompt_style
    if s.n_ctx is not None:
        kw["n_ctx"] = s.n_ctx
    if s.model is not None and Path(s.model).expanduser().is_dir():
        return load_model(s.model, **kw)  # an ONNX folder: its engine takes no llama flags
    if s.n_threads:
        kw["n_threads"] = s.n_threads
    if s.n_gpu_layers is not None:
        kw["n_gpu_layers"] = s.n_gpu_layers
    # A GGUF model: llama.cpp decodes concurrent turns together.
    kw["max_sequences"] = s.max_sequences
    kw["max_waiting"] = s.max_waiting_turns
    return load_model(s.model, **kw)


_ENGINES = {
    "LlamaBackend": "llama.cpp",
    "OnnxBackend": "onnx",
    "OpenAIBackend": "openai",
    "MockBackend": "mock",
}


def describe(model: Backend) -> dict[str, Any]:
    """What GetServerInfo says about a loaded model: names, never paths."""
    path = getattr(model, "path", None)
    remote = str(getattr(model, "model", "") or model.name)
    name = path.name if isinstance(path, Path) else remote
    adapter = getattr(model, "lora_path", None)
    return {
        "model": name,
        "adapter": adapter.name if isinstance(adapter, Path) else "",
        "backend": _ENGINES.get(type(model).__name__, model.name),
        "context_size": int(model.n_ctx),
        "prompt_style": model.prompt_style,
        "plan": bool(model.plans),
        "grammar": bool(model.supports_grammar),
    }
