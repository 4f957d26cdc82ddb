"""LlamaBackend: GGUF models through llama.cpp (llama-cpp-python's low-level bindings).

This is a thin engine wrapper, not a second llama-cpp-python. It loads a model and one context
and runs its own token loop, for two reasons:

- **Many turns, one model.** Turns started from several threads (several NPCs talking at once,
  several gRPC calls) are decoded together: each running turn is one llama.cpp sequence with its
  own sampler chain, grammar, stop strings, seed and cancellation, and one engine thread feeds
  all of them to `llama_decode` in one batch per step (on 2 CPU cores, 8 sequences decode at
  about 1.8x the aggregate speed of one). `_scheduler` decides who starts and who decodes
  (player-facing turns first; background turns never starve); a new turn's prompt is read in
  chunks between the decode steps, so the streams already running keep going. Each sequence
  keeps the KV cache of its last prompt, and states of more characters are parked in host
  memory, so a character's next turn re-reads only what changed.
- **Grammar cost.** llama-cpp-python applies a grammar to every one of the vocabulary's
  candidates at every step (262k for Gemma: 2.7x slower). Here a token is sampled freely first
  and the grammar only checks that one token; the full grammar pass runs just when the pick is
  illegal (where a tag must open or close), as llama.cpp's own `common_sampler` does. The
  structure guarantee is the same; the cost is a few percent.

Reproducibility: a seeded turn run alone gives the same text whether its prompt was cached or
not, on any sequence. Each sequence has its own KV stream (`kv_unified=False`), so where its
cells lie never depends on the others; every prompt is read in chunks aligned to multiples of
`n_batch`, each in a `llama_decode` of its own, then its last token alone; and only whole aligned
chunks read that way are re-used. A turn decoded in one batch with others is computed with them,
so it may differ in the last bits from the same turn alone.

Safety around the engine: the file is validated by `her_sdk._gguf` before llama.cpp sees it
(including its HER format version), and weight repacking ("extra buffer types") is switched off
on CPUs with AMX, where llama.cpp's AMX path segfaults on batched decode (upstream issue #20824)
whatever the build flags.
"""

from __future__ import annotations

import codecs
import ctypes
import itertools
import logging
import math
import os
import platform
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from .._errors import (
    ConfigError,
    ContextOverflowError,
    GenerationError,
    InvalidModelError,
    MissingDependencyError,
)
from .._gguf import GGUFInfo, read_gguf_info
from ..format import detect_prompt_style
from ._base import Backend, CancelToken, Sampling, StopScanner, TextStream, tokenize_prompt
from ._scheduler import Priority, Scheduler, priority_rank

__all__ = ["LlamaBackend", "cpu_has_amx"]

_TOKEN_DATA = [("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]  # llama_token_data layout
_END = object()  # a turn's last queue item
# In-process default: each sequence owns n_ctx of KV cache (about 75 MB for the embedded model at
# 4096 tokens), so a game that runs one or two NPCs should not pay for eight. `her serve`
# asks for 8 (ServerSettings.max_sequences).
_DEFAULT_MAX_SEQUENCES = 4
_PENALTY_LAST_N = 64  # tokens a repeat penalty looks back over

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
        llama_cpp = _import_llama_cpp()
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


class LlamaBackend(Backend):
    """A GGUF model on llama.cpp. Keyword arguments follow llama.cpp's own flag names.

    - `n_ctx`: context window of one turn (tokens); `n_batch`: prompt tokens per decode call,
      which is also the granularity at which a cached prompt prefix is re-used and the chunk in
      which a new prompt is read while other turns run.
    - `max_sequences`: turns decoded together (each gets its own `n_ctx` of KV cache); more
      wait in a queue. Default: up to 4, fewer when the KV caches would take over a quarter of
      the available memory.
    - `max_waiting`: turns that may wait for a sequence; past it `stream()` raises
      `LimitExceededError` when iterated.
    - `n_threads` / `n_threads_batch`: CPU threads for generation / prompt; default all cores.
    - `n_gpu_layers`: layers to offload when llama.cpp was built with a GPU backend.
    - `lora_path`: a GGUF LoRA adapter applied at load time.
    - `use_extra_bufts`: weight repacking; default on except on CPUs with AMX (see module doc).
    - `cache_slots`: saved prompt states kept in host memory for characters whose sequence was
      given to another (each a copy of their KV cache), so many characters on one model each
      resume from their own cached persona.
    - `prompt_style`: override how prompts are rendered ("chatml", "template", "fewshot").
    - `verbose`: let llama.cpp print its own logs to stderr.

    `stream(..., priority=)` takes "player" (a turn the player is waiting for), "normal" or
    "background"; see `her_sdk._backends._scheduler`.
    """

    schedules = True

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_ctx: int = 4096,
        n_batch: int = 64,
        max_sequences: int | None = None,
        max_waiting: int = 256,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_gpu_layers: int = 0,
        lora_path: str | os.PathLike[str] | None = None,
        use_extra_bufts: bool | None = None,
        cache_slots: int = 4,
        prompt_style: str | None = None,
        verbose: bool = False,
    ) -> None:
        # llama.cpp handles (ctypes objects), None once closed
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._last_tokens: tuple[tuple, list[int]] | None = None
        self._thread: threading.Thread | None = None
        self._running: list[_Turn] = []
        self.info: GGUFInfo = read_gguf_info(model_path)
        path = self.info.path
        if n_ctx < 64 or n_batch < 1:
            raise ConfigError("n_ctx must be >= 64 and n_batch >= 1")
        if max_sequences is not None and not 1 <= max_sequences <= 256:
            raise ConfigError("max_sequences must be between 1 and 256")
        if cache_slots < 0:
            raise ConfigError("cache_slots must be >= 0")
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
        model = lib.llama_model_load_from_file(str(path).encode("utf-8"), mparams)
        if not model:
            raise InvalidModelError(f"llama.cpp could not load the model file {path}", str(path))
        self._model = model
        self._vocab = lib.llama_model_get_vocab(model)
        self._lora = None
        self.lora_path: Path | None = None
        self.lora_info: GGUFInfo | None = None
        if lora_path is not None:
            self.lora_path = Path(lora_path).expanduser()
            self.lora_info = read_gguf_info(self.lora_path, kind="adapter")
            self._lora = self._load_lora(self.lora_path)

        n_seq = max_sequences or self._default_sequences(n_ctx)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_ctx * n_seq
        cparams.n_seq_max = n_seq
        cparams.kv_unified = False  # one KV stream per sequence: see the module doc
        cparams.n_batch = cparams.n_ubatch = max(n_batch, n_seq)
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads_batch
        ctx = lib.llama_init_from_model(model, cparams)
        if not ctx:
            self.close()
            raise InvalidModelError(
                f"llama.cpp could not create a context for {path} "
                f"({n_seq} sequences of {n_ctx} tokens; try a smaller max_sequences or n_ctx)",
                str(path),
            )
        self._ctx = ctx
        if self._lora is not None:
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(self._lora)
            if lib.llama_set_adapters_lora(ctx, adapters, 1, (ctypes.c_float * 1)(1.0)):
                self.close()
                raise InvalidModelError(f"LoRA adapter {lora_path} does not fit {path}", str(path))
        self._mem = lib.llama_get_memory(ctx)
        self.n_ctx = lib.llama_n_ctx_seq(ctx)
        self.n_batch = n_batch
        self.max_sequences = n_seq
        self._batch = lib.llama_batch_init(max(n_batch, n_seq), 0, 1)
        self._n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self.cache_slots = cache_slots
        self._seqs = [_Cache() for _ in range(n_seq)]  # what each sequence's KV stream holds
        self._busy: list[_Turn | None] = [None] * n_seq  # the turn running on each sequence
        self._slots: list[_Cache] = []  # parked states, least recently used first
        self._tick = itertools.count(1)  # orders uses of cached states (LRU)
        # _cv guards the waiting queue and the engine thread's life; _ctx_lock the llama.cpp
        # context (the engine thread holds it for one step at a time).
        self._cv = threading.Condition()
        self._ctx_lock = threading.Lock()
        self._closing = False
        self._steps = 0
        self._sched: Scheduler[_Turn] = Scheduler(max_waiting=max_waiting)

        self.bos_token = self._piece(lib.llama_vocab_bos(self._vocab), special=True)
        self.eos_token = self._piece(lib.llama_vocab_eos(self._vocab), special=True)
        self.chat_template = self.info.chat_template
        # A HER adapter makes a HER model of any base: its metadata decides the prompt style
        # (ChatML, no few-shot example) and whether turns begin with a plan (`her.plan`).
        her_meta = [i for i in (self.lora_info, self.info) if i and i.her_format_version]
        self.prompt_style = prompt_style or detect_prompt_style(
            self.chat_template, her_model=bool(her_meta)
        )
        plans = [m.metadata.get("her.plan") for m in her_meta]
        self.plans = next((p for p in plans if isinstance(p, bool)), True)
        if self.prompt_style not in ("chatml", "template", "fewshot"):
            raise ConfigError(f"unknown prompt_style {self.prompt_style!r}")
        if self.prompt_style == "template" and not self.chat_template:
            raise ConfigError(f"{path} has no chat template; use prompt_style='fewshot'")

    # -- setup helpers ------------------------------------------------------------------------

    def _default_sequences(self, n_ctx: int) -> int:
        """Up to `_DEFAULT_MAX_SEQUENCES`, fewer when their KV caches (f16) would take over a
        quarter of the available memory."""
        lib, meta = self._lib, self.info.metadata
        arch = meta.get("general.architecture", "")
        n_head = max(1, lib.llama_model_n_head(self._model))
        head = lib.llama_model_n_embd(self._model) // n_head
        k = int(meta.get(f"{arch}.attention.key_length") or head)
        v = int(meta.get(f"{arch}.attention.value_length") or head)
        per_token = lib.llama_model_n_layer(self._model) * lib.llama_model_n_head_kv(self._model)
        per_seq = max(1, per_token * (k + v) * 2 * n_ctx)
        return max(1, min(_DEFAULT_MAX_SEQUENCES, _available_memory() // 4 // per_seq))

    def _load_lora(self, lora: Path):
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
        key = (add_special, text, getattr(text, "literal", ()))
        last = self._last_tokens
        if last is not None and last[0] == key:
            return list(last[1])
        tokens = self._tokenize(text, add_special)
        self._last_tokens = (key, tokens)
        return list(tokens)

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        if not getattr(text, "literal", ()):
            return self._tokenize_raw(text, add_special, True)
        # A PromptText: special tokens only in its scaffolding (see PromptText in _base).
        lib, vocab = self._lib, self._vocab
        tokens = tokenize_prompt(
            text,
            lambda fragment, special: self._tokenize_raw(fragment, False, special),
            lambda token: bool(lib.llama_vocab_is_control(vocab, token)),
            lambda token: self._piece(token, special=True),
        )
        if add_special and lib.llama_vocab_get_add_bos(vocab):
            tokens.insert(0, lib.llama_vocab_bos(vocab))
        if add_special and lib.llama_vocab_get_add_eos(vocab):
            tokens.append(lib.llama_vocab_eos(vocab))
        return tokens

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
        priority: Priority = "normal",
    ) -> TextStream:
        self._check_open()
        sampling = sampling or Sampling()
        rank = priority_rank(priority)
        tokens = self.tokenize(prompt)
        if len(tokens) + 1 > self.n_ctx:
            raise ContextOverflowError(
                f"prompt is {len(tokens)} tokens; the context window is {self.n_ctx}"
            )
        if not tokens:
            raise ConfigError("the prompt is empty")

        def pieces(stream: TextStream) -> Iterator[str]:
            turn = _Turn(tokens, rank, stream=stream, cancel=cancel)
            turn.sampling, turn.stop, turn.grammar_text = sampling, list(stop), grammar
            return self._follow(turn)

        return TextStream(pieces, prompt_tokens=len(tokens))

    def logprobs(
        self, prompt: str, continuation: str, *, priority: Priority = "normal"
    ) -> list[float]:
        """Log-probability (natural log) of each token of `continuation` given `prompt` and the
        continuation's tokens before it: one float per token, in order.

        `continuation` is tokenized as plain text (no special tokens, no BOS). The sum is the
        continuation's log-likelihood: held-out NLL is `-sum(...) / len(...)`. The request is
        scheduled like a turn (its prompt re-uses cached prefixes too).
        """
        self._check_open()
        rank = priority_rank(priority)
        ptoks = self.tokenize(prompt)
        ctoks = self._tokenize_raw(continuation, False, False)
        if not ptoks:
            raise ConfigError("logprobs needs a non-empty prompt")
        if not ctoks:
            return []
        if len(ptoks) + len(ctoks) > self.n_ctx:
            raise ContextOverflowError(
                f"prompt and continuation are {len(ptoks) + len(ctoks)} tokens; "
                f"the context window is {self.n_ctx}"
            )
        turn = _Turn(ptoks + ctoks, rank, score_from=len(ptoks))
        for _ in self._follow(turn):
            pass
        return turn.logprobs

    def _follow(self, turn: _Turn) -> Iterator[str]:
        """Queue `turn` and yield its text as the engine thread produces it."""
        self._submit(turn)
        try:
            while True:
                item = turn.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            turn.abandoned = True  # a caller that stops reading cancels its turn

    def _submit(self, turn: _Turn) -> None:
        with self._cv:
            if self._closing or self._ctx is None:
                raise GenerationError("this LlamaBackend is closed")
            self._sched.submit(turn, turn.rank)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._engine, name="her-llama-engine", daemon=True
                )
                self._thread.start()

    # -- the engine thread --------------------------------------------------------------------

    def _engine(self) -> None:
        """Run steps while there is work; the thread ends when there is none."""
        try:
            while True:
                with self._cv:
                    for t in self._sched.waiting:
                        if t.gone:
                            self._sched.remove(t)
                            self._finish(t, "cancelled")
                    if self._closing:
                        break
                    admitted = self._sched.admit(len(self._seqs) - len(self._running))
                    if not admitted and not self._running:
                        self._thread = None
                        return
                with self._ctx_lock:
                    for t in admitted:
                        self._start(t)
                    self._step()
        except BaseException as exc:  # a bug or a dead engine must not hang any caller
            log.exception("the llama.cpp engine thread failed")
            self._fail_all(GenerationError(f"the llama.cpp engine failed: {exc!r}"))
            return
        self._fail_all(GenerationError("this LlamaBackend was closed"))

    def _fail_all(self, error: GenerationError) -> None:
        """End every running and waiting turn with `error`; the engine thread then stops."""
        with self._ctx_lock:
            for t in list(self._running):
                self._finish(t, error)
        with self._cv:  # atomically with _submit: no turn is left queued without an engine
            for t in self._sched.admit(len(self._sched)):
                self._finish(t, error)
            self._thread = None

    def _start(self, t: _Turn) -> None:
        """Give `t` a sequence holding the longest cached prefix of its tokens, and samplers."""
        lib = self._lib
        try:
            if t.score_from is None:
                assert t.sampling is not None
                if t.grammar_text:
                    t.grammar = lib.llama_sampler_init_grammar(
                        self._vocab, t.grammar_text.encode("utf-8"), b"root"
                    )
                    if not t.grammar:
                        raise ConfigError("invalid GBNF grammar (llama.cpp rejected it)")
                    t.allows = self._grammar_check(t.grammar)
                t.chain = self._make_chain(t.sampling)
                t.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                t.scan = StopScanner(t.stop)
                limit = len(t.tokens) - 1  # the last prompt token is always decoded anew
            else:
                limit = t.score_from - 1  # from here on every position's logits are needed
            seq, keep = self._place(t.tokens, limit)
        except Exception as exc:
            self._finish(t, exc)
            return
        t.seq, t.pos = seq, keep
        self._busy[seq] = t
        self._running.append(t)
        if t.stream is not None:
            t.stream.cached_tokens = keep

    def _place(self, tokens: list[int], limit: int) -> tuple[int, int]:
        """Pick a free sequence and make its KV hold the longest cached prefix of `tokens`
        (at most `limit` tokens, whole aligned chunks only); return (sequence, prefix length).

        The prefix may come from the free sequence itself (the same character's last turn),
        from another sequence (copied: a shared few-shot preamble) or from a parked state. A
        free sequence whose own state is worth keeping is parked before it is overwritten.
        """
        lib, nb = self._lib, self.n_batch
        free = [s for s, busy in enumerate(self._busy) if busy is None]

        def usable(c: _Cache) -> int:
            n = _common_prefix(c.tokens, tokens, min(c.canonical, limit))
            return n - n % nb

        # Re-use a free sequence in place only when the prompt takes up most of what it holds
        # (the same character's last turn); a state that holds more, or any other state, is
        # copied into another sequence when that saves reading a chunk (a copy costs far less).
        in_place = [s for s in free if self._seqs[s].canonical < usable(self._seqs[s]) + nb]
        seq = max(in_place, key=lambda s: usable(self._seqs[s]), default=-1)
        keep = usable(self._seqs[seq]) if seq >= 0 else 0
        source: _Cache | None = None
        for c in [*self._slots, *self._seqs]:
            if (n := usable(c)) > keep:
                keep, source = n, c
        if source is not None or keep == 0:
            others = [s for s in free if self._seqs[s] is not source]
            seq = min(others or free, key=lambda s: self._seqs[s].used)  # least recently used
            if source is not None and source.state is not None:
                self._slots.remove(source)  # a parked state moves into `seq`
            own = self._seqs[seq]
            if own.canonical >= nb:
                self._park(seq)  # another character's state: keep it for them
            if source is not None and source is not own:
                self._copy_into(seq, source)
        cache = self._seqs[seq]
        cache.used = next(self._tick)
        if not lib.llama_memory_seq_rm(self._mem, seq, keep, -1):
            lib.llama_memory_seq_rm(self._mem, seq, -1, -1)
            keep = 0
        del cache.tokens[keep:]
        cache.canonical = min(cache.canonical, keep)
        return seq, keep

    def _park(self, seq: int) -> None:
        """Save sequence `seq`'s state into a host slot (dropping the least recently used)."""
        if self.cache_slots <= 0:
            return
        lib, cache = self._lib, self._seqs[seq]
        size = lib.llama_state_seq_get_size(self._ctx, seq)
        buf = (ctypes.c_uint8 * size)()
        if lib.llama_state_seq_get_data(self._ctx, buf, size, seq) != size:
            return
        slot = _Cache(list(cache.tokens), cache.canonical, buf)
        slot.used = cache.used
        self._slots.append(slot)
        del self._slots[: max(0, len(self._slots) - self.cache_slots)]

    def _copy_into(self, seq: int, source: _Cache) -> None:
        """Make sequence `seq` hold `source`'s state: a parked one or another sequence's
        (copied through host memory, so its cells lie as if they had been read afresh)."""
        lib = self._lib
        state = source.state
        if state is None:  # another sequence
            other = self._seqs.index(source)
            size = lib.llama_state_seq_get_size(self._ctx, other)
            state = (ctypes.c_uint8 * size)()
            if lib.llama_state_seq_get_data(self._ctx, state, size, other) != size:
                state = None
        cache = self._seqs[seq]
        lib.llama_memory_seq_rm(self._mem, seq, -1, -1)
        cache.tokens, cache.canonical = [], 0
        if state is not None and lib.llama_state_seq_set_data(self._ctx, state, len(state), seq):
            cache.tokens, cache.canonical = list(source.tokens), source.canonical
        else:
            lib.llama_memory_seq_rm(self._mem, seq, -1, -1)

    def _step(self) -> None:
        """One engine step: drop cancelled turns, read one prompt chunk, decode one token for
        each chosen running turn, and sample."""
        for t in [t for t in self._running if t.gone]:
            self._finish(t, "cancelled")
        if not self._running:
            return
        top = max(t.rank for t in self._running)
        self._steps += 1
        # Prompt reading, most urgent turn first. While streams are decoding, a step reads about
        # n_batch prompt tokens (so they stall for one chunk's time at most); with none to
        # stall, it reads a chunk of every turn of the top rank, so that they start decoding
        # together, in full batches, rather than one step apart.
        reading = sorted(
            (t for t in self._running if t.pending < 0), key=lambda t: (-t.rank, t.order)
        )
        streaming = any(t.pending >= 0 for t in self._running)
        budget = self.n_batch
        for t in reading:
            if not self._sched.reads(t.rank, top, self._steps) or (
                budget <= 0 if streaming else t.rank < reading[0].rank
            ):
                break
            budget -= self._read_chunk(t)
        decoding = [t for t in self._running if t.pending >= 0]
        if not decoding:
            return
        chosen = self._sched.decoders([t.rank for t in decoding], top, self._steps)
        # In sequence order: with one KV stream per sequence, llama.cpp splits a batch whose
        # sequences are out of order into several compute passes (8 turns: 1.8x slower).
        batch = sorted((decoding[i] for i in chosen), key=lambda t: t.seq)
        if not batch:
            return
        items = [(t.pending, t.pos, t.seq, True) for t in batch]
        rc = self._decode(items)
        if rc != 0:
            for t in batch:
                self._drop_after(t.seq, t.pos)
                self._finish(t, GenerationError(f"llama_decode failed with code {rc}"))
            return
        # Sampling is cut to the top candidates before anything costly (see _make_chain), so
        # one thread picks for the whole batch (0.2 ms a turn) while llama.cpp's are idle.
        picks = [self._pick(t, i) for i, t in enumerate(batch)]
        for t, token in zip(batch, picks, strict=True):
            self._seqs[t.seq].tokens.append(t.pending)
            t.pos += 1
            if isinstance(token, BaseException):
                self._finish(t, token)
            else:
                self._emit(t, token)

    def _read_chunk(self, t: _Turn) -> int:
        """Evaluate the next prompt chunk of `t`: up to the next multiple of n_batch, in a
        decode call of its own (so it is computed exactly as when the turn runs alone).
        Returns the number of tokens read."""
        nb, tokens = self.n_batch, t.tokens
        end = len(tokens) - 1 if t.score_from is None else len(tokens)
        size = 0
        if t.pos < end:
            size = min(end - t.pos, nb - t.pos % nb)
            pos0 = t.pos
            first = -1 if t.score_from is None else t.score_from - 1
            items = [
                (tokens[p], p, t.seq, first >= 0 and first <= p < len(tokens) - 1)
                for p in range(pos0, pos0 + size)
            ]
            rc = self._decode(items)
            if rc != 0:
                self._drop_after(t.seq, pos0)
                self._finish(t, GenerationError(f"llama_decode failed with code {rc}"))
                return size
            cache = self._seqs[t.seq]
            cache.tokens.extend(tokens[pos0 : pos0 + size])
            cache.canonical = len(cache.tokens) // nb * nb
            t.pos += size
            if t.score_from is not None:
                self._score(t, [(i, p) for i, (_, p, _, out) in enumerate(items) if out])
        if t.pos >= end:
            if t.score_from is not None:
                self._finish(t, "stop")
            else:
                t.pending = tokens[-1]  # decoded alone, with logits, in the next step
        return size

    def _score(self, t: _Turn, rows: list[tuple[int, int]]) -> None:
        import numpy as np

        lib, n = self._lib, self._n_vocab
        for i, p in rows:
            logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, i), shape=(n,))
            x = logits.astype(np.float64)
            top = x.max()
            lse = top + math.log(float(np.exp(x - top).sum()))
            t.logprobs.append(float(x[t.tokens[p + 1]] - lse))

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

    def _drop_after(self, seq: int, pos: int) -> None:
        """Forget what sequence `seq` holds from `pos` on (after a failed decode)."""
        cache = self._seqs[seq]
        self._lib.llama_memory_seq_rm(self._mem, seq, pos, -1)
        del cache.tokens[pos:]
        cache.canonical = min(cache.canonical, len(cache.tokens) // self.n_batch * self.n_batch)

    def _pick(self, t: _Turn, i: int) -> int | BaseException:
        lib = self._lib
        try:
            token = lib.llama_sampler_sample(t.chain, self._ctx, i)
            if t.allows is not None:
                if not t.allows(token):
                    token = self._sample_constrained(t.chain, t.grammar, i)
                lib.llama_sampler_accept(t.grammar, token)
            return token
        except Exception as exc:
            return exc

    def _emit(self, t: _Turn, token: int) -> None:
        """Stream the text of `t`'s new token and decide whether the turn ends there."""
        lib = self._lib
        stream, sampling = t.stream, t.sampling
        assert stream is not None and sampling is not None and t.scan is not None
        if lib.llama_vocab_is_eog(self._vocab, token):
            self._finish(t, "stop")
            return
        stream.completion_tokens += 1
        text, stopped = t.scan.push(t.decoder.decode(self._piece_bytes(token)))
        if text:
            t.out.put(text)
        if stopped:
            self._finish(t, "stop")
        elif stream.completion_tokens >= sampling.max_tokens or t.pos + 1 >= self.n_ctx:
            self._finish(t, "length")  # max_tokens, or the context window is full
        else:
            t.pending = token

    def _finish(self, t: _Turn, how: str | BaseException) -> None:
        """End `t`: free its samplers and sequence, then hand the caller its last item."""
        if t.done:
            return
        t.done = True
        lib = self._lib
        if t.chain is not None:
            lib.llama_sampler_free(t.chain)
        if t.grammar is not None:
            lib.llama_sampler_free(t.grammar)
        t.chain = t.grammar = t.allows = None
        if t in self._running:
            self._running.remove(t)
            self._busy[t.seq] = None
            self._seqs[t.seq].used = next(self._tick)
        if isinstance(how, BaseException):
            t.out.put(how)
            return
        if t.scan is not None and (rest := t.scan.flush()):
            t.out.put(rest)
        if t.stream is not None:
            t.stream.finish_reason = how
        t.out.put(_END)

    # -- sampling helpers -----------------------------------------------------------------------

    def _make_chain(self, s: Sampling):
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        add = lib.llama_sampler_chain_add
        if s.repeat_penalty != 1.0:
            # A penalty > 1 only lowers the logits of the (at most _PENALTY_LAST_N) tokens seen
            # last, so the k best after it are among the k + _PENALTY_LAST_N best before it:
            # cutting to those first gives the same picks without penalising all 262k
            # candidates of Gemma's vocabulary (0.9 -> 0.2 ms a token).
            k = 1 if s.temperature == 0 else s.top_k
            if s.repeat_penalty > 1.0 and k > 0:
                add(chain, lib.llama_sampler_init_top_k(k + _PENALTY_LAST_N))
            # The Python binding declares a leading n_vocab that current llama.cpp no longer
            # takes; both int arguments are the same so the C side reads last_n either way.
            last_n = _PENALTY_LAST_N
            add(chain, lib.llama_sampler_init_penalties(last_n, last_n, s.repeat_penalty, 0.0, 0.0))
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

    def _sample_constrained(self, chain, grammar, i: int) -> int:
        """Grammar-aware resampling from output row `i`, used only when the free pick was
        illegal.

        The grammar is applied to the 256 most likely tokens first (one cheap pass); the whole
        vocabulary is scanned only if none of those is legal.
        """
        import numpy as np

        lib = self._lib
        n = self._n_vocab
        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, i), shape=(n,))
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

    # -- lifecycle ----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the cached prompts (the next turn of each character re-reads its whole
        prompt). Sequences of turns running right now keep theirs."""
        self._check_open()
        with self._ctx_lock:
            for seq, cache in enumerate(self._seqs):
                if self._busy[seq] is None:
                    self._lib.llama_memory_seq_rm(self._mem, seq, -1, -1)
                    cache.tokens, cache.canonical = [], 0
            self._slots.clear()

    def close(self) -> None:
        """Stop the engine (running and waiting turns end with `GenerationError`) and free the
        model. Safe to call twice."""
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        cv = getattr(self, "_cv", None)
        if cv is not None:
            with cv:
                self._closing = True
                thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join()
        lock = getattr(self, "_ctx_lock", None) or threading.Lock()
        with lock:
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
            if hasattr(self, "_slots"):
                self._slots.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (
            f"LlamaBackend({str(self.path)!r}, n_ctx={self.n_ctx}, "
            f"max_sequences={getattr(self, 'max_sequences', 0)}, style={self.prompt_style!r})"
        )


_order = itertools.count()


class _Turn:
    """One request to the engine: a turn to generate, or a continuation to score
    (`score_from` set: the index of its first token). Its text goes to `out`."""

    def __init__(
        self,
        tokens: list[int],
        rank: int,
        *,
        stream: TextStream | None = None,
        cancel: CancelToken | None = None,
        score_from: int | None = None,
    ) -> None:
        self.tokens = tokens
        self.rank = rank
        self.order = next(_order)
        self.stream = stream
        self.cancel = cancel
        self.score_from = score_from
        self.sampling: Sampling | None = None
        self.stop: list[str] = []
        self.grammar_text: str | None = None
        self.out: SimpleQueue[Any] = SimpleQueue()  # text pieces, then _END or an exception
        self.logprobs: list[float] = []
        # engine state
        self.seq = -1
        self.pos = 0  # next position to evaluate
        self.pending = -1  # the token to decode at `pos` next; -1 while the prompt is read
        self.chain: Any = None
        self.grammar: Any = None
        self.allows: Any = None
        self.decoder: Any = None
        self.scan: StopScanner | None = None
        self.done = False
        self.abandoned = False

    @property
    def gone(self) -> bool:
        """The caller cancelled or stopped reading: the engine drops the turn."""
        return self.abandoned or (self.cancel is not None and self.cancel.cancelled)


class _Cache:
    """What a KV state holds: its tokens, how many of them were read as whole aligned prompt
    chunks (`canonical`, the re-usable part), and for a parked state its bytes."""

    __slots__ = ("canonical", "state", "tokens", "used")

    def __init__(self, tokens: list[int] | None = None, canonical: int = 0, state=None) -> None:
        self.tokens = tokens if tokens is not None else []
        self.canonical = canonical
        self.state = state
        self.used = 0


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    limit = min(limit, len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


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
