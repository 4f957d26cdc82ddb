"""LlamaBackend: GGUF models through llama.cpp (llama-cpp-python's low-level bindings).

This is a thin engine wrapper, not a second llama-cpp-python. It loads a model and one context
and runs its own token loop, for two reasons: many turns decode together on one model (several
NPCs talking at once, several gRPC calls; `_llama_batching`), and a grammar costs a few percent
instead of 2.7x (`_llama_sampling`). The handles and their lifetime are `_llama_engine`'s.

This module is the `Backend` face: it checks the file (`her_sdk._gguf`, including its HER format
version) before llama.cpp sees it, reads the prompt style and the plan setting from the model's
(or its adapter's) metadata, tokenizes prompts (special tokens in the scaffolding only), and
queues turns and scoring requests for the engine thread. Weight repacking ("extra buffer
types") is switched off on CPUs with AMX, where llama.cpp's AMX path segfaults on batched decode
(upstream issue #20824) whatever the build flags.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .._errors import ConfigError, ContextOverflowError
from .._gguf import GGUFInfo, read_gguf_info
from ..format import PromptStyle, TurnShape, check_prompt_style, detect_prompt_style
from ._base import DRY_DEFAULTS, Backend, CancelToken, Sampling, TextStream, tokenize_prompt
from ._llama_batching import BatchingEngine, _Turn
from ._llama_engine import cpu_has_amx, import_llama_cpp
from ._llama_sampling import make_chain
from ._scheduler import Priority, priority_rank

__all__ = ["LlamaBackend", "cpu_has_amx"]

_USER_DEFINED = 1 << 4  # LLAMA_TOKEN_ATTR_USER_DEFINED


class LlamaBackend(Backend, BatchingEngine):
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
    - `adapter`: a GGUF LoRA adapter applied at load time (`lora_path=`, its first name, is
      deprecated).
    - `use_extra_bufts`: weight repacking; default on except on CPUs with AMX (see module doc).
    - `cache_slots`: saved prompt states kept in host memory for characters whose sequence was
      given to another (each a copy of their KV cache), so many characters on one model each
      resume from their own cached persona.
    - `cache_any_prefix`: re-use every cached token of a prompt (and generated text), not only
      whole `n_batch` chunks: each turn re-reads only what changed (up to `n_batch - 1` tokens
      fewer; many NPCs run faster, see `benchmarks/many_npcs.py`), but a seeded turn is no
      longer bit-for-bit reproducible whatever was cached before (off by default).
    - `prompt_style`: override how prompts are rendered ("chatml", "template", "fewshot", or
      "her": HER's own prompt for a released HER model; default: the model's metadata).
    - `dry_multiplier`: llama.cpp's DRY sampler for turns whose `Sampling` leaves it unset
      (0: off, llama.cpp's default; 0.8 is usual): fewer runs repeated from the scene.
    - `turn_shape`: the `TurnShape` of characters on this model that set none.
    - `verbose`: let llama.cpp print its own logs to stderr.

    `stream(..., priority=)` takes "player" (a turn the player is waiting for), "normal" or
    "background"; see `her_sdk._backends._scheduler`.
    """

    schedules = True
    supports_logprobs = True

    # For code that runs llama.cpp itself beside her_sdk (export's verification, benchmarks):
    # the same crash guard, the same quiet import, the same file checks.
    cpu_has_amx = staticmethod(cpu_has_amx)
    # The sampler chain this backend builds for a `Sampling` (free it with llama_sampler_free):
    # a baseline that decodes with llama.cpp directly samples exactly as the SDK does.
    sampler_chain = staticmethod(make_chain)

    @staticmethod
    def llama_cpp() -> Any:
        """llama-cpp-python's module, its logs routed to Python's logging (at DEBUG)."""
        return import_llama_cpp()

    @staticmethod
    def check_file(path: str | os.PathLike[str], kind: str = "model") -> GGUFInfo:
        """The checks every load makes before llama.cpp sees a file (structure, the values
        llama.cpp would abort on, the HER format version); `kind` "model" or "adapter".
        A bad file raises `InvalidModelError`, a missing one `ModelNotFoundError`."""
        return read_gguf_info(path, kind=kind)

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
        adapter: str | os.PathLike[str] | None = None,
        use_extra_bufts: bool | None = None,
        cache_slots: int = 4,
        cache_any_prefix: bool = False,
        prompt_style: PromptStyle | None = None,
        dry_multiplier: float = 0.0,
        turn_shape: TurnShape | None = None,
        verbose: bool = False,
        lora_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if lora_path is not None:
            warnings.warn(
                "LlamaBackend(lora_path=) is deprecated; use adapter=", DeprecationWarning, 2
            )
            adapter = adapter if adapter is not None else lora_path
        self._last_tokens: tuple[tuple, list[int]] | None = None
        self._user_defined: dict[int, str] = {}  # token -> its text, if a user-defined one
        self.info: GGUFInfo = read_gguf_info(model_path)
        if n_ctx < 64 or n_batch < 1:
            raise ConfigError("n_ctx must be >= 64 and n_batch >= 1")
        if max_sequences is not None and not 1 <= max_sequences <= 256:
            raise ConfigError("max_sequences must be between 1 and 256")
        if cache_slots < 0:
            raise ConfigError("cache_slots must be >= 0")
        if turn_shape is not None and not isinstance(turn_shape, TurnShape):
            raise ConfigError("turn_shape must be a TurnShape")
        Sampling(dry_multiplier=dry_multiplier)  # checks it
        self.dry_defaults = {**DRY_DEFAULTS, "dry_multiplier": float(dry_multiplier)}
        self.turn_shape = turn_shape
        self.path = self.info.path
        self.name = self.info.name
        self.n_threads = n_threads or os.cpu_count() or 1
        self.n_threads_batch = n_threads_batch or self.n_threads
        self.use_extra_bufts = not cpu_has_amx() if use_extra_bufts is None else use_extra_bufts
        self.adapter_path: Path | None = None
        self.adapter_info: GGUFInfo | None = None
        if adapter is not None:
            self.adapter_path = Path(adapter).expanduser()
            self.adapter_info = read_gguf_info(self.adapter_path, kind="adapter")
        super().__init__(
            self.info,
            n_ctx=n_ctx,
            n_batch=n_batch,
            max_sequences=max_sequences,
            max_waiting=max_waiting,
            cache_slots=cache_slots,
            cache_any_prefix=cache_any_prefix,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads_batch,
            n_gpu_layers=n_gpu_layers,
            adapter=self.adapter_info,
            use_extra_bufts=self.use_extra_bufts,
            verbose=verbose,
        )
        lib = self._lib
        self.bos_token = self._piece(lib.llama_vocab_bos(self._vocab), special=True)
        self.eos_token = self._piece(lib.llama_vocab_eos(self._vocab), special=True)
        self.chat_template = self.info.chat_template
        # A HER adapter makes a HER model of any base: its metadata decides the prompt style
        # (ChatML, no few-shot example) and whether turns begin with a plan (`her.plan`).
        # A model exported with `--prompt-style her` (a released HER model) says so itself,
        # and its metadata may declare the section lengths it was trained with.
        her_meta = [i for i in (self.adapter_info, self.info) if i and i.her_format_version]
        declared = next((s for m in her_meta if (s := m.metadata.get("her.prompt_style"))), None)
        self.prompt_style = check_prompt_style(
            prompt_style
            or detect_prompt_style(self.chat_template, her_model=bool(her_meta), declared=declared),
            self.chat_template,
        )
        plans = [m.metadata.get("her.plan") for m in her_meta]
        self.plans = next((p for p in plans if isinstance(p, bool)), True)
        if self.turn_shape is None:
            base = TurnShape.FREE if self.prompt_style == "her" else TurnShape()
            self.turn_shape = next(
                (s for m in her_meta if (s := TurnShape.from_metadata(m.metadata, base))), None
            )

    @property
    def lora_path(self) -> Path | None:
        """Deprecated: `adapter_path`."""
        warnings.warn(
            "LlamaBackend.lora_path is deprecated; use adapter_path", DeprecationWarning, 2
        )
        return self.adapter_path

    # -- tokens ---------------------------------------------------------------------------------

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
            self._user_defined_text,
        )
        if add_special and lib.llama_vocab_get_add_bos(vocab):
            tokens.insert(0, lib.llama_vocab_bos(vocab))
        if add_special and lib.llama_vocab_get_add_eos(vocab):
            tokens.append(lib.llama_vocab_eos(vocab))
        return tokens

    def _user_defined_text(self, token: int) -> str:
        """The text of `token` if it is a user-defined token that is not whitespace, else ""
        (remembered per token: every prompt asks about every one of its tokens)."""
        text = self._user_defined.get(token)
        if text is None:
            attr = self._lib.llama_vocab_get_attr(self._vocab, token)
            text = self._piece(token, special=True) if attr & _USER_DEFINED else ""
            text = text if text.strip() and len(text) > 1 else ""
            self._user_defined[token] = text
        return text

    def count_tokens(self, text: str) -> int:
        self._check_open()
        return len(self.tokenize(text))

    # -- generation -----------------------------------------------------------------------------

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

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the engine (running and waiting turns end with `GenerationError`) and free the
        model. Safe to call twice."""
        if getattr(self, "_lib", None) is None:
            return  # the file was refused before llama.cpp saw it
        self._stop()
        with getattr(self, "_ctx_lock", None) or threading.Lock():
            self._release()
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
