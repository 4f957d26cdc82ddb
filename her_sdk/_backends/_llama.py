"""LlamaBackend: GGUF models through llama.cpp (llama-cpp-python's low-level bindings).

This is a thin engine wrapper, not a second llama-cpp-python: it loads a model and a context,
keeps the KV cache of the last prompt so a character's next turn re-reads only what changed,
and runs its own token loop for one reason: grammar cost. llama-cpp-python applies a grammar
to every one of the vocabulary's candidates at every step (262k for Gemma: 2.7x slower). Here a
token is sampled freely first and the grammar only checks that one token; the full grammar pass
runs just when the pick is illegal (where a tag must open or close), as llama.cpp's own
`common_sampler` does. The structure guarantee is the same; the cost is a few percent.

Safety around the engine: the file is validated by `her_sdk._gguf` before llama.cpp sees it,
and weight repacking ("extra buffer types") is switched off on CPUs with AMX, where llama.cpp's
AMX path segfaults on batched decode (upstream issue #20824) whatever the build flags.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import os
import platform
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from .._errors import (
    ConfigError,
    ContextOverflowError,
    GenerationError,
    InvalidModelError,
    MissingDependencyError,
)
from .._gguf import GGUFInfo, read_gguf_info
from ._base import Backend, CancelToken, Sampling, TextStream, stop_holdback

__all__ = ["LlamaBackend", "cpu_has_amx"]

_TOKEN_DATA = [("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]  # llama_token_data layout

log = logging.getLogger("her_sdk")


_engine_log = logging.getLogger("her_sdk.llama_cpp")
_log_callback = None  # keep the ctypes callback alive for the life of the process
_verbose = False


def _import_llama_cpp():
    global _log_callback
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


def cpu_has_amx() -> bool:
    """True when the CPU advertises Intel AMX (Linux /proc/cpuinfo)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_tile" in line or "amx_int8" in line
    except OSError:
        pass
    # Unknown x86-64 OS (Windows, macOS on Intel): assume the worst; repacking is an
    # optimisation, a segfault is not.
    return platform.system() != "Linux"


class LlamaBackend(Backend):
    """A GGUF model on llama.cpp. Keyword arguments follow llama.cpp's own flag names.

    - `n_ctx`: context window (tokens); `n_batch`: prompt tokens per decode call, which is also
      the granularity at which a cached prompt prefix is re-used (see `_prepare`).
    - `n_threads` / `n_threads_batch`: CPU threads for generation / prompt; default all cores.
    - `n_gpu_layers`: layers to offload when llama.cpp was built with a GPU backend.
    - `lora_path`: a GGUF LoRA adapter applied at load time.
    - `use_extra_bufts`: weight repacking; default on except on CPUs with AMX (see module doc).
    - `cache_slots`: saved prompt states kept for other characters (each a copy of their KV
      cache), so many characters on one model each resume from their own cached persona.
    - `prompt_style`: override how prompts are rendered ("chatml", "template", "fewshot").
    - `verbose`: let llama.cpp print its own logs to stderr.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_ctx: int = 4096,
        n_batch: int = 64,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_gpu_layers: int = 0,
        lora_path: str | os.PathLike[str] | None = None,
        use_extra_bufts: bool | None = None,
        cache_slots: int = 4,
        prompt_style: str | None = None,
        verbose: bool = False,
    ) -> None:
        self._model = None
        self._ctx = None
        self._batch = None
        self._last_tokens: tuple[bool, str, list[int]] | None = None
        self.info: GGUFInfo = read_gguf_info(model_path)
        path = self.info.path
        if n_ctx < 64 or n_batch < 1:
            raise ConfigError("n_ctx must be >= 64 and n_batch >= 1")
        global _verbose
        lib = _import_llama_cpp()
        self._lib = lib
        _verbose = _verbose or verbose
        self.path = path
        self.name = self.info.name
        self.n_threads = n_threads or os.cpu_count() or 1
        self.n_threads_batch = n_threads_batch or self.n_threads

        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        if use_extra_bufts is None:
            use_extra_bufts = not cpu_has_amx()
        self.use_extra_bufts = use_extra_bufts
        if hasattr(mparams, "use_extra_bufts"):
            mparams.use_extra_bufts = use_extra_bufts
        elif cpu_has_amx():  # a build too old to switch repacking off: refuse, do not crash
            raise InvalidModelError(
                "this llama-cpp-python build cannot disable AMX weight repacking, which crashes "
                "on this CPU; upgrade llama-cpp-python (>=0.3.16)",
                str(path),
            )
        self._lock = threading.Lock()
        model = lib.llama_model_load_from_file(str(path).encode("utf-8"), mparams)
        if not model:
            raise InvalidModelError(f"llama.cpp could not load the model file {path}", str(path))
        self._model = model
        self._vocab = lib.llama_model_get_vocab(model)
        self._lora = None
        if lora_path is not None:
            self._lora = self._load_lora(Path(lora_path))

        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads_batch
        ctx = lib.llama_init_from_model(model, cparams)
        if not ctx:
            self.close()
            raise InvalidModelError(f"llama.cpp could not create a context for {path}", str(path))
        self._ctx = ctx
        if self._lora is not None:
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(self._lora)
            if lib.llama_set_adapters_lora(ctx, adapters, 1, (ctypes.c_float * 1)(1.0)):
                self.close()
                raise InvalidModelError(f"LoRA adapter {lora_path} does not fit {path}", str(path))
        self._mem = lib.llama_get_memory(ctx)
        self.n_ctx = lib.llama_n_ctx(ctx)
        self.n_batch = n_batch
        self._batch = lib.llama_batch_init(n_batch, 0, 1)
        self._n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self._cached: list[int] = []  # tokens whose KV is in sequence 0
        self._slots: list[_Slot] = []  # parked sequence states, least recently used first
        self.cache_slots = cache_slots
        self._canonical = 0  # how many of them were evaluated as a prompt (see _prepare)

        self.bos_token = self._piece(lib.llama_vocab_bos(self._vocab), special=True)
        self.eos_token = self._piece(lib.llama_vocab_eos(self._vocab), special=True)
        self.chat_template = self.info.chat_template
        self.prompt_style = prompt_style or _detect_style(self.info)
        if self.prompt_style not in ("chatml", "template", "fewshot"):
            raise ConfigError(f"unknown prompt_style {self.prompt_style!r}")
        if self.prompt_style == "template" and not self.chat_template:
            raise ConfigError(f"{path} has no chat template; use prompt_style='fewshot'")

    # -- setup helpers ------------------------------------------------------------------------

    def _load_lora(self, lora: Path):
        read_gguf_info(lora, kind="adapter")
        adapter = self._lib.llama_adapter_lora_init(self._model, str(lora).encode("utf-8"))
        if not adapter:
            raise InvalidModelError(f"llama.cpp could not load the LoRA adapter {lora}", str(lora))
        return adapter

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

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        # A Character counts its prompt's tokens and then streams the same prompt: keep the
        # last result so a turn tokenizes its prompt once.
        last = self._last_tokens
        if last is not None and last[0] == add_special and last[1] == text:
            return list(last[2])
        tokens = self._tokenize(text, add_special)
        self._last_tokens = (add_special, text, tokens)
        return list(tokens)

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        raw = text.encode("utf-8")
        n_max = len(raw) + 8
        arr = (self._lib.llama_token * n_max)()
        n = self._lib.llama_tokenize(self._vocab, raw, len(raw), arr, n_max, add_special, True)
        if n < 0:
            arr = (self._lib.llama_token * -n)()
            n = self._lib.llama_tokenize(self._vocab, raw, len(raw), arr, -n, add_special, True)
        return list(arr[:n])

    def count_tokens(self, text: str) -> int:
        self._check_open()
        return len(self.tokenize(text))

    def _check_open(self) -> None:
        if self._ctx is None:
            raise GenerationError("this LlamaBackend is closed")

    # -- generation ---------------------------------------------------------------------------

    def stream(
        self,
        prompt: str,
        *,
        stop: Sequence[str] = (),
        sampling: Sampling | None = None,
        grammar: str | None = None,
        cancel: CancelToken | None = None,
    ) -> TextStream:
        self._check_open()
        sampling = sampling or Sampling()
        tokens = self.tokenize(prompt)
        if len(tokens) + 1 > self.n_ctx:
            raise ContextOverflowError(
                f"prompt is {len(tokens)} tokens; the context window is {self.n_ctx}"
            )
        stream = TextStream(iter(()), prompt_tokens=len(tokens))
        stream._pieces = self._generate(tokens, list(stop), sampling, grammar, cancel, stream)
        return stream

    def _make_chain(self, s: Sampling):
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        add = lib.llama_sampler_chain_add
        if s.repeat_penalty != 1.0:
            # The Python binding declares a leading n_vocab that current llama.cpp no longer
            # takes; both int arguments are 64 so the C side reads last_n=64 either way.
            add(chain, lib.llama_sampler_init_penalties(64, 64, s.repeat_penalty, 0.0, 0.0))
        if s.temperature == 0:
            add(chain, lib.llama_sampler_init_greedy())
            return chain
        if s.top_k > 0:
            add(chain, lib.llama_sampler_init_top_k(s.top_k))
        add(chain, lib.llama_sampler_init_top_p(s.top_p, 1))
        add(chain, lib.llama_sampler_init_min_p(s.min_p, 1))
        add(chain, lib.llama_sampler_init_temp(s.temperature))
        seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little")
        add(chain, lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _decode(self, tokens: list[int], start_pos: int) -> None:
        """Evaluate `tokens` at positions start_pos.., in batches that never cross a multiple of
        n_batch; logits only for the last token."""
        lib = self._lib
        batch = self._batch
        off = 0
        while off < len(tokens):
            pos0 = start_pos + off
            size = min(len(tokens) - off, self.n_batch - pos0 % self.n_batch)
            chunk = tokens[off : off + size]
            batch.n_tokens = size
            for i, t in enumerate(chunk):
                batch.token[i] = t
                batch.pos[i] = pos0 + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = False
            batch.logits[size - 1] = True
            rc = lib.llama_decode(self._ctx, batch)
            if rc != 0:
                self._cached = self._cached[:pos0]
                self._canonical = min(self._canonical, pos0)
                raise GenerationError(f"llama_decode failed with code {rc}")
            self._cached.extend(chunk)
            off += size

    def _prepare(self, tokens: list[int]) -> int:
        """Make the KV cache hold `tokens`, re-using the longest cached prefix.

        Reproducibility: a seeded turn must give the same text whether the prompt was cached or
        not. So every prompt is evaluated the same way — batches aligned to multiples of
        n_batch, and the last token alone — and only whole aligned batches computed that way
        are re-used (tokens generated one by one are not).

        Several characters on one model: when another saved state shares a longer prefix with
        this prompt (the same character's previous turn), the live state is parked in a slot
        and that one restored, so a character does not re-read its persona every turn.
        Returns how many prompt tokens came from the cache.
        """
        nb = self.n_batch
        live = _common_prefix(self._cached, tokens, min(self._canonical, len(tokens) - 1))
        best, best_i = live - live % nb, -1
        for i, slot in enumerate(self._slots):
            c = _common_prefix(slot.tokens, tokens, min(slot.canonical, len(tokens) - 1))
            if c - c % nb > best:
                best, best_i = c - c % nb, i
        if best_i >= 0:
            slot = self._slots.pop(best_i)
            self._park()
            self._restore(slot)
        keep = best
        if best_i < 0 and keep + nb <= self._canonical:
            self._park()  # this prompt diverges early: keep the live state for its owner
        if not self._lib.llama_memory_seq_rm(self._mem, 0, keep, -1):
            keep = 0
            self._lib.llama_memory_clear(self._mem, True)
        self._cached = self._cached[:keep]
        self._decode(tokens[keep:-1], keep)
        self._canonical = (len(tokens) - 1) // nb * nb
        self._decode(tokens[-1:], len(tokens) - 1)
        return keep

    def _park(self) -> None:
        """Save the live sequence into a slot (dropping the least recently used)."""
        if self.cache_slots <= 0 or self._canonical < self.n_batch:
            return
        lib = self._lib
        size = lib.llama_state_seq_get_size(self._ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        if lib.llama_state_seq_get_data(self._ctx, buf, size, 0) != size:
            return
        self._slots.append(_Slot(list(self._cached), self._canonical, buf))
        del self._slots[: max(0, len(self._slots) - self.cache_slots)]

    def _restore(self, slot: _Slot) -> None:
        lib = self._lib
        lib.llama_memory_seq_rm(self._mem, 0, -1, -1)
        if lib.llama_state_seq_set_data(self._ctx, slot.state, len(slot.state), 0) == 0:
            lib.llama_memory_clear(self._mem, True)
            self._cached, self._canonical = [], 0
            return
        self._cached, self._canonical = slot.tokens, slot.canonical

    def _grammar_check(self, grammar):
        """A reusable one-candidate check: does the grammar allow this token next?"""
        lib = self._lib
        one = lib.llama_token_data(0, 0.0, 0.0)
        arr = lib.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        arr_ref = ctypes.byref(arr)
        apply = lib.llama_sampler_apply
        neg_inf = float("-inf")

        def allows(token: int) -> bool:
            one.id = token
            one.logit = 1.0
            arr.size = 1
            apply(grammar, arr_ref)
            return one.logit != neg_inf

        return allows

    def _sample_constrained(self, chain, grammar) -> int:
        """Grammar-aware resampling, used only when the free pick was illegal.

        The grammar is applied to the 256 most likely tokens first (one cheap pass); the whole
        vocabulary is scanned only if none of those is legal.
        """
        import numpy as np

        lib = self._lib
        n = self._n_vocab
        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, -1), shape=(n,))
        for ids in (np.argpartition(logits, -256)[-256:] if n > 256 else None, None):
            if ids is None:
                ids = np.arange(n, dtype=np.int32)
            m = len(ids)
            data = (lib.llama_token_data * m)()
            view = np.frombuffer(data, dtype=_TOKEN_DATA)
            view["id"] = ids
            view["logit"] = logits[ids]
            arr = lib.llama_token_data_array(data, m, -1, False)
            lib.llama_sampler_apply(grammar, ctypes.byref(arr))
            if not np.isfinite(view["logit"]).any():
                if m == n:
                    break
                continue
            lib.llama_sampler_apply(chain, ctypes.byref(arr))
            if 0 <= arr.selected < arr.size:
                token = int(arr.data[arr.selected].id)
                lib.llama_sampler_accept(chain, token)
                return token
        raise GenerationError("the grammar left no legal token")

    def _generate(
        self,
        tokens: list[int],
        stop: list[str],
        sampling: Sampling,
        grammar_text: str | None,
        cancel: CancelToken | None,
        stream: TextStream,
    ) -> Iterator[str]:
        lib = self._lib
        with self._lock:
            # Samplers are made here, not in stream(), so an unstarted stream owns nothing.
            grammar = None
            if grammar_text:
                grammar = lib.llama_sampler_init_grammar(
                    self._vocab, grammar_text.encode("utf-8"), b"root"
                )
                if not grammar:
                    raise ConfigError("invalid GBNF grammar (llama.cpp rejected it)")
            chain = self._make_chain(sampling)
            try:
                stream.cached_tokens = self._prepare(tokens)
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                pending = ""  # text held back because it may begin a stop string
                pos = len(tokens)
                allows = self._grammar_check(grammar) if grammar is not None else None
                stream.finish_reason = "length"
                for _ in range(sampling.max_tokens):
                    if cancel is not None and cancel.cancelled:
                        stream.finish_reason = "cancelled"
                        break
                    token = lib.llama_sampler_sample(chain, self._ctx, -1)
                    if allows is not None:
                        if allows(token):
                            lib.llama_sampler_accept(grammar, token)
                        else:
                            token = self._sample_constrained(chain, grammar)
                            lib.llama_sampler_accept(grammar, token)
                    if lib.llama_vocab_is_eog(self._vocab, token):
                        stream.finish_reason = "stop"
                        break
                    stream.completion_tokens += 1
                    pending += decoder.decode(self._piece_bytes(token))
                    hit = min((k for s in stop if (k := pending.find(s)) != -1), default=-1)
                    if hit != -1:
                        if pending[:hit]:
                            yield pending[:hit]
                        pending = ""
                        stream.finish_reason = "stop"
                        break
                    hold = stop_holdback(pending, stop)
                    if len(pending) > hold:
                        yield pending[: len(pending) - hold]
                        pending = pending[len(pending) - hold :]
                    if pos + 1 >= self.n_ctx:
                        break  # context full: finish as "length"
                    self._decode([token], pos)
                    pos += 1
                else:
                    pass
                if pending and stream.finish_reason != "stop":
                    yield pending
            finally:
                lib.llama_sampler_free(chain)
                if grammar is not None:
                    lib.llama_sampler_free(grammar)

    def reset(self) -> None:
        """Forget the cached prompt (the next call re-reads its whole prompt)."""
        with self._lock:
            self._check_open()
            self._lib.llama_memory_clear(self._mem, True)
            self._cached = []
            self._canonical = 0
            self._slots.clear()

    def close(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_lora", None) is not None:
            lib.llama_adapter_lora_free(self._lora)
            self._lora = None
        if self._model is not None:
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"LlamaBackend({str(self.path)!r}, n_ctx={self.n_ctx}, style={self.prompt_style!r})"


class _Slot:
    __slots__ = ("canonical", "state", "tokens")

    def __init__(self, tokens: list[int], canonical: int, state) -> None:
        self.tokens = tokens
        self.canonical = canonical
        self.state = state


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    limit = min(limit, len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def _detect_style(info: GGUFInfo) -> str:
    meta = info.metadata
    if meta.get("her.format_version") is not None:
        return "chatml"
    template = info.chat_template
    if not template:
        return "fewshot"
    if "<|im_start|>" in template:
        return "chatml"
    return "template"
