"""Many turns, one model: the llama.cpp engine thread, the KV placement of each turn, the step.

Turns started from several threads (several NPCs talking at once, several gRPC calls) are
decoded together: each running turn is one llama.cpp sequence with its own sampler chain,
grammar, stop strings, seed and cancellation, and one engine thread feeds all of them to
`llama_decode` in one batch per step (on 2 CPU cores, 8 sequences decode at about 1.8x the
aggregate speed of one). `_scheduler` decides who starts and who decodes (player-facing turns
first; background turns never starve); a new turn's prompt is read in chunks between the decode
steps, so the streams already running keep going. Each sequence keeps the KV cache of its last
prompt, and states of more characters are parked in host memory, so a character's next turn
re-reads only what changed (`_place`).

Reproducibility: a seeded turn run alone gives the same text whether its prompt was cached or
not, on any sequence. Each sequence has its own KV stream (`kv_unified=False`), so where its
cells lie never depends on the others; every prompt is read in chunks aligned to multiples of
`n_batch`, each in a `llama_decode` of its own, then its last token alone; and only whole aligned
chunks read that way are re-used. A turn decoded in one batch with others is computed with them,
so it may differ in the last bits from the same turn alone. `cache_any_prefix=True` trades that
guarantee for throughput: every cached token is re-used (the part of a prompt after its last
aligned chunk, and generated text), so a turn re-reads only what changed, not up to
`n_batch - 1` tokens more; a seeded turn's text may then depend on what was cached.

The handles are `_llama_engine`'s, the token choice `_llama_sampling`'s; the `Backend` face that
queues turns here is `_llama`.
"""

from __future__ import annotations

import codecs
import ctypes
import itertools
import logging
import math
import threading
from collections.abc import Iterator, Mapping
from queue import SimpleQueue
from typing import Any

from .._errors import ConfigError, GenerationError
from .._gguf import GGUFInfo
from ._base import DRY_DEFAULTS, CancelToken, Sampling, StopScanner, TextStream
from ._llama_engine import LlamaEngine
from ._llama_sampling import grammar_check, make_chain, sample_constrained
from ._scheduler import Scheduler

__all__ = ["BatchingEngine"]

_END = object()  # a turn's last queue item

log = logging.getLogger("her_sdk")


class BatchingEngine(LlamaEngine):
    """A `LlamaEngine` whose sequences run turns queued from any thread (see the module doc).

    `n_ctx` is the context window of one sequence; `cache_slots` the parked prompt states kept
    in host memory; `max_waiting` the turns that may wait for a sequence; `cache_any_prefix`
    re-uses every cached token, not only whole aligned chunks (see the module doc).
    """

    dry_defaults: Mapping[str, float | int] = DRY_DEFAULTS  # for turns whose Sampling sets none

    def __init__(
        self,
        info: GGUFInfo,
        *,
        n_ctx: int,
        n_batch: int,
        max_sequences: int | None,
        max_waiting: int,
        cache_slots: int,
        cache_any_prefix: bool = False,
        **engine: Any,
    ) -> None:
        self._thread: threading.Thread | None = None
        self._running: list[_Turn] = []
        super().__init__(info, n_ctx=n_ctx, n_batch=n_batch, max_sequences=max_sequences, **engine)
        lib = self._lib
        n_seq = self.n_seq
        self.n_ctx = lib.llama_n_ctx_seq(self._ctx)
        self.n_batch = n_batch
        self.max_sequences = n_seq
        self.cache_slots = cache_slots
        self.cache_any_prefix = cache_any_prefix
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

    # -- queueing turns (any thread) ------------------------------------------------------------

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

    # -- the engine thread ----------------------------------------------------------------------

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
                    t.allows = grammar_check(lib, t.grammar)
                t.chain = make_chain(lib, t.sampling, self._vocab, t.tokens, self.dry_defaults)
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
            return self._reusable(_common_prefix(c.tokens, tokens, min(c.canonical, limit)))

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
            cache = self._seqs[t.seq]
            cache.tokens.append(t.pending)
            if self.cache_any_prefix:
                cache.canonical = len(cache.tokens)
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
            cache.canonical = self._reusable(len(cache.tokens))
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

    def _drop_after(self, seq: int, pos: int) -> None:
        """Forget what sequence `seq` holds from `pos` on (after a failed decode)."""
        cache = self._seqs[seq]
        self._lib.llama_memory_seq_rm(self._mem, seq, pos, -1)
        del cache.tokens[pos:]
        cache.canonical = min(cache.canonical, self._reusable(len(cache.tokens)))

    def _reusable(self, n: int) -> int:
        """How many of `n` cached tokens a later prompt may start from: whole aligned chunks,
        or all of them with `cache_any_prefix`."""
        return n if self.cache_any_prefix else n - n % self.n_batch

    def _pick(self, t: _Turn, i: int) -> int | BaseException:
        lib = self._lib
        try:
            token = lib.llama_sampler_sample(t.chain, self._ctx, i)
            if t.allows is not None:
                if not t.allows(token):
                    token = sample_constrained(lib, self._ctx, self._n_vocab, t.chain, t.grammar, i)
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

    # -- lifecycle --------------------------------------------------------------------------------

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

    def _stop(self) -> None:
        """End the engine thread (running and waiting turns end with `GenerationError`)."""
        cv = getattr(self, "_cv", None)
        if cv is None:
            return
        with cv:
            self._closing = True
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


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
