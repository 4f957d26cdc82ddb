"""How a llama.cpp turn picks its next token: the sampler chain of a `Sampling`, and the grammar.

Grammar cost: llama-cpp-python applies a grammar to every one of the vocabulary's candidates at
every step (262k for Gemma: 2.7x slower). Here a token is sampled freely first and the grammar
only checks that one token (`grammar_check`); the full grammar pass (`sample_constrained`) runs
just when the pick is illegal (where a tag must open or close), as llama.cpp's own
`common_sampler` does. The structure guarantee is the same; the cost is a few percent.

Repetition across turns: a character reads its own and the others' earlier lines, and a small
model copies them. `Sampling.dry_multiplier` turns on llama.cpp's DRY sampler ("don't repeat
yourself"), which lowers the odds of a token that would extend a run already in the text, more
the longer the run. Unlike the repeat penalty it leaves single words (names, "the") alone. It is
given the prompt's last `dry_penalty_last_n` tokens as history, so it sees the scene, not just
the turn; line breaks and speaker colons break runs, as in llama.cpp's server.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._errors import GenerationError
from ._base import DRY_DEFAULTS, Sampling

__all__ = ["grammar_check", "make_chain", "sample_constrained"]

_TOKEN_DATA = [("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]  # llama_token_data layout
_PENALTY_LAST_N = 64  # tokens a repeat penalty looks back over
_DRY_BREAKERS = ("\n", ":", '"', "*")  # llama.cpp's defaults: a run never crosses them


def make_chain(
    lib: Any,
    s: Sampling,
    vocab: Any = None,
    history: Sequence[int] = (),
    dry_defaults: Mapping[str, float | int] = DRY_DEFAULTS,
) -> Any:
    """A llama.cpp sampler chain for `s` (the caller frees it with `llama_sampler_free`).

    DRY (a `dry_multiplier` > 0, from `s` or else `dry_defaults`) needs the model's `vocab`;
    `history` is the text it reads before the turn begins (the prompt's tokens; the last
    `dry_penalty_last_n` are used).
    """
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
    dry_multiplier, dry_base, dry_allowed, dry_last_n = s.dry(dry_defaults)
    if dry_multiplier > 0 and vocab is not None:
        breakers = (ctypes.c_char_p * len(_DRY_BREAKERS))(*(b.encode() for b in _DRY_BREAKERS))
        dry = lib.llama_sampler_init_dry(
            vocab,
            dry_multiplier,
            dry_base,
            dry_allowed,
            dry_last_n,
            breakers,
            len(_DRY_BREAKERS),
        )
        # (after the cut above: DRY lowers a few more candidates, well within its 64 spare)
        add(chain, dry)  # the chain owns it now; it is still ours to feed
        for token in history[-dry_last_n:]:
            lib.llama_sampler_accept(dry, token)
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


def grammar_check(lib: Any, grammar: Any) -> Callable[[int], bool]:
    """A reusable one-candidate check: does the grammar allow this token next?"""
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


def sample_constrained(lib: Any, ctx: Any, n: int, chain: Any, grammar: Any, i: int) -> int:
    """Grammar-aware resampling from output row `i`, used only when the free pick was
    illegal.

    The grammar is applied to the 256 most likely tokens first (one cheap pass); the whole
    vocabulary is scanned only if none of those is legal.
    """
    import numpy as np

    logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, i), shape=(n,))
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
