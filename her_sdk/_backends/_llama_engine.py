"""llama.cpp's handles and their lifetime: one model, its LoRA adapter, one context, one batch.

`LlamaEngine` makes them in order and registers each one's free function on an `ExitStack` as
soon as it exists (as llama-cpp-python's `_internals` do), so a failure half-way frees what was
made, and `close()` frees everything in reverse order, once. Beside the handles it holds the
primitives the rest of the backend builds on: tokenizing a fragment, a token's text, and one
`llama_decode` of (token, position, sequence, wants logits) items. It also routes llama.cpp's
logging into Python's, and switches weight repacking off on CPUs with AMX (`cpu_has_amx`).

Not here: which turns run and where their KV cache lies (`_llama_batching`), how a token is
picked (`_llama_sampling`), the `Backend` face (`_llama`).
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .._errors import GenerationError, InvalidModelError, MissingDependencyError
from .._gguf import GGUFInfo

__all__ = ["LlamaEngine", "cpu_has_amx"]

# In-process default: each sequence owns n_ctx of KV cache (about 75 MB for the embedded model at
# 4096 tokens), so a game that runs one or two NPCs should not pay for eight. `her serve`
# asks for 8 (ServerSettings.max_sequences).
_DEFAULT_MAX_SEQUENCES = 4

_engine_log = logging.getLogger("her_sdk.llama_cpp")
_log_callback = None  # keep the ctypes callback alive for the life of the process
_verbose = False


def import_llama_cpp(verbose: bool = False):
    global _log_callback, _verbose
    _verbose = _verbose or verbose
    try:
        import llama_cpp
    except ImportError:
        raise MissingDependencyError("llama-cpp-python", "llama") from None
    if _log_callback is None:
        # llama.cpp logs to stderr by default. Route it to Python logging at DEBUG (or to
        # stderr when a backend asked for verbose), so nothing is printed by default.
        @llama_cpp.llama_log_callback
        def _cb(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
            msg = text.decode("utf-8", errors="replace")
            if _verbose:
                print(msg, end="", file=sys.stderr, flush=True)
            else:
                _engine_log.debug(msg.rstrip())

        llama_cpp.llama_log_set(_cb, ctypes.c_void_p(0))
        _log_callback = _cb
    return llama_cpp


_CPUINFO = "/proc/cpuinfo"


def cpu_has_amx() -> bool:
    """True when llama.cpp may repack weights for Intel AMX here (the crash of the module doc).

    Linux: the CPU's flags (/proc/cpuinfo). Elsewhere on x86-64 (Windows, macOS on Intel) the
    engine itself is asked: its CPU backend offers the "AMX" weight buffer only when it was built
    with AMX and the CPU has it (llama.cpp checks that at run time). Only a build too old to be
    asked is assumed to have it: repacking is an optimisation, a segfault is not.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open(_CPUINFO, encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_tile" in line or "amx_int8" in line
    except OSError:
        pass
    bufts = _engine_weight_buffers()
    return bufts is None or "AMX" in bufts


def _engine_weight_buffers() -> list[str] | None:
    """Names of the extra weight buffer types ("AMX", "CPU_REPACK", ...) that llama.cpp's CPU
    backend registered on this machine, or None when this build cannot be asked."""
    try:
        llama_cpp = import_llama_cpp()
        from llama_cpp._ctypes_extensions import load_shared_library

        libdir = Path(llama_cpp.__file__).resolve().parent / "lib"
        ggml = load_shared_library("ggml", libdir)
        base = load_shared_library("ggml-base", libdir)
        ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
        ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
        ggml.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
        ggml.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
        ggml.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
        ggml.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        base.ggml_backend_buft_name.restype = ctypes.c_char_p
        base.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    except (MissingDependencyError, ImportError, OSError, RuntimeError, AttributeError):
        return None
    dev = ggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    if not dev:
        return None
    reg = ggml.ggml_backend_dev_backend_reg(dev)
    fn = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if not fn:
        return None
    bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(fn)(dev)
    names: list[str] = []
    while bufts and bufts[len(names)]:  # a NULL-terminated array
        names.append(base.ggml_backend_buft_name(bufts[len(names)]).decode("ascii", "replace"))
    return names


class LlamaEngine:
    """One GGUF model (and optional GGUF LoRA adapter) with one context of `n_seq` sequences of
    `n_ctx` tokens each (see the module doc); `max_sequences=None` picks `n_seq` from the free
    memory. `_ctx` is None once closed."""

    def __init__(
        self,
        info: GGUFInfo,
        *,
        n_ctx: int,
        n_batch: int,
        max_sequences: int | None,
        n_threads: int,
        n_threads_batch: int,
        n_gpu_layers: int,
        adapter: GGUFInfo | None,
        use_extra_bufts: bool,
        verbose: bool,
    ) -> None:
        self._model: Any = None  # llama.cpp handles (ctypes objects), None once closed
        self._ctx: Any = None
        self._batch: Any = None
        self._lora: Any = None
        self._stack = ExitStack()
        lib = self._lib = import_llama_cpp(verbose)
        path = info.path
        try:
            self._load_model(info, n_gpu_layers, use_extra_bufts)
            if adapter is not None:
                file = str(adapter.path)
                self._lora = lib.llama_adapter_lora_init(self._model, file.encode("utf-8"))
                if not self._lora:
                    raise InvalidModelError(
                        f"llama.cpp could not load the LoRA adapter {file}", file
                    )
                self._stack.callback(lib.llama_adapter_lora_free, self._lora)
            n_seq = max_sequences or self._default_sequences(info, n_ctx)
            cparams = lib.llama_context_default_params()
            cparams.n_ctx = n_ctx * n_seq
            cparams.n_seq_max = n_seq
            cparams.kv_unified = False  # one KV stream per sequence: see LlamaBackend's doc
            cparams.n_batch = cparams.n_ubatch = max(n_batch, n_seq)
            cparams.n_threads = n_threads
            cparams.n_threads_batch = n_threads_batch
            ctx = lib.llama_init_from_model(self._model, cparams)
            if not ctx:
                raise InvalidModelError(
                    f"llama.cpp could not create a context for {path} "
                    f"({n_seq} sequences of {n_ctx} tokens; try a smaller max_sequences or n_ctx)",
                    str(path),
                )
            self._stack.callback(lib.llama_free, ctx)
            if self._lora is not None:
                adapters = (lib.llama_adapter_lora_p_ctypes * 1)(self._lora)
                if lib.llama_set_adapters_lora(ctx, adapters, 1, (ctypes.c_float * 1)(1.0)):
                    raise InvalidModelError(
                        f"LoRA adapter {adapter.path if adapter else ''} does not fit {path}",
                        str(path),
                    )
            self._batch = lib.llama_batch_init(max(n_batch, n_seq), 0, 1)
            self._stack.callback(lib.llama_batch_free, self._batch)
        except BaseException:
            self._release()
            raise
        self._ctx = ctx
        self._mem = lib.llama_get_memory(ctx)
        self.n_seq = n_seq
        self._n_vocab = lib.llama_vocab_n_tokens(self._vocab)

    def _load_model(self, info: GGUFInfo, n_gpu_layers: int, use_extra_bufts: bool) -> None:
        lib, path = self._lib, info.path
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        if hasattr(mparams, "use_extra_bufts"):
            mparams.use_extra_bufts = use_extra_bufts
        elif cpu_has_amx():  # a build too old to switch repacking off: refuse, do not crash
            raise InvalidModelError(
                "this llama-cpp-python build cannot disable AMX weight repacking, which crashes "
                "on this CPU; upgrade llama-cpp-python (>=0.3.16)",
                str(path),
            )
        model = lib.llama_model_load_from_file(str(path).encode("utf-8"), mparams)
        if not model:
            raise InvalidModelError(f"llama.cpp could not load the model file {path}", str(path))
        self._stack.callback(lib.llama_model_free, model)
        self._model = model
        self._vocab = lib.llama_model_get_vocab(model)

    def _default_sequences(self, info: GGUFInfo, n_ctx: int) -> int:
        """Up to `_DEFAULT_MAX_SEQUENCES`, fewer when their KV caches (f16) would take over a
        quarter of the available memory."""
        lib, meta = self._lib, info.metadata
        arch = meta.get("general.architecture", "")
        n_head = max(1, lib.llama_model_n_head(self._model))
        head = lib.llama_model_n_embd(self._model) // n_head
        k = int(meta.get(f"{arch}.attention.key_length") or head)
        v = int(meta.get(f"{arch}.attention.value_length") or head)
        per_token = lib.llama_model_n_layer(self._model) * lib.llama_model_n_head_kv(self._model)
        per_seq = max(1, per_token * (k + v) * 2 * n_ctx)
        return max(1, min(_DEFAULT_MAX_SEQUENCES, _available_memory() // 4 // per_seq))

    def _piece(self, token: int, special: bool = False) -> str:
        if token < 0:
            return ""
        return self._piece_bytes(token, special).decode("utf-8", errors="replace")

    def _piece_bytes(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def _tokenize_raw(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        raw = text.encode("utf-8")
        n_max = len(raw) + 8
        arr = (self._lib.llama_token * n_max)()
        args = (add_special, parse_special)
        n = self._lib.llama_tokenize(self._vocab, raw, len(raw), arr, n_max, *args)
        if n < 0:
            arr = (self._lib.llama_token * -n)()
            n = self._lib.llama_tokenize(self._vocab, raw, len(raw), arr, -n, *args)
        return list(arr[:n])

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> int:
        """One llama_decode of (token, position, sequence, wants logits) items."""
        batch = self._batch
        batch.n_tokens = len(items)
        for i, (token, pos, seq, out) in enumerate(items):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = out
        return self._lib.llama_decode(self._ctx, batch)

    def _check_open(self) -> None:
        if self._ctx is None:
            raise GenerationError(f"this {type(self).__name__} is closed")

    def _release(self) -> None:
        """Free every handle, in reverse order of making; safe to call twice."""
        stack = getattr(self, "_stack", None)
        if stack is not None:
            stack.close()
        self._batch = self._ctx = self._lora = self._model = None


def _available_memory() -> int:
    """Bytes of memory available to this process (Linux MemAvailable; else a guess of 4 GiB)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 4 << 30
