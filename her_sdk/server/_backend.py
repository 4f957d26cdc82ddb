"""The server's model: `ServerSettings` (the model flags of `her serve`) -> one Backend.

    model = backend_from_settings(settings)   # what `her serve --model ... --adapter ...` loads

This is the only place where the server turns its settings into a model; it hands them to
the SDK's one reader of model specs (`backend_from_spec`) and holds no model logic.
`describe(model)` is what GetServerInfo reports about a loaded one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._backends._base import Backend
from ..format import TurnShape
from ._settings import ServerSettings

__all__ = ["backend_from_settings", "describe"]


def backend_from_settings(s: ServerSettings) -> Backend:
    """Load the model `s` names (the embedded default when it names none)."""
    from .._model import backend_from_spec

    extra: dict[str, Any] = {}  # what is given, so that the spec's own defaults stay
    if s.adapter is not None:
        extra["adapter"] = None if s.adapter.lower() == "none" else s.adapter
    key = s.remote_api_key.get_secret_value() if s.remote_api_key is not None else None
    if s.dry_multiplier is not None:
        extra["dry_multiplier"] = s.dry_multiplier
    if s.turn_shape is not None:
        extra["turn_shape"] = TurnShape.preset(s.turn_shape)
    if s.cache_any_prefix:
        extra["cache_any_prefix"] = True
    # llama.cpp decodes concurrent turns together, within max_sequences and max_waiting.
    return backend_from_spec(
        s.model,
        n_ctx=s.n_ctx,
        n_threads=s.n_threads,
        n_gpu_layers=s.n_gpu_layers,
        max_sequences=s.max_sequences,
        max_waiting=s.max_waiting_turns,
        prompt_style=s.prompt_style,  # type: ignore[arg-type]  # checked by ServerSettings
        api_key=key,
        **extra,
    )


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
