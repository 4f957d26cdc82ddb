"""Many turns on one real model (Gemma-3-270M), decoded together in shared llama.cpp batches.

Each test keeps turns short (a few tokens): what is checked is isolation, scheduling and
bookkeeping, not prose.
"""

from __future__ import annotations

import math
import threading
import time

import pytest

pytest.importorskip("llama_cpp")

from _turns import her_shaped

from her_sdk import (
    CancelToken,
    LimitExceededError,
    Sampling,
    load_model,
)
from her_sdk.demo import PLAYER, build_demo_scene

pytestmark = pytest.mark.slow

GREEDY = Sampling(max_tokens=6, temperature=0)
PREAMBLE = (
    "This is a log of vault access. Every vault has one password, and the keeper repeats it "
    "exactly when asked, with nothing else. The log is kept by the guild of locksmiths, who "
    "check it every morning and evening; a wrong word means a new lock. "
) * 2  # long enough that the prompts share whole chunks (the shared-prefix copy path)
WORDS = ["BANANA", "CHERRY", "WALNUT", "PEPPER"]


def vault(word: str) -> str:
    return (
        f"{PREAMBLE}\nVault of {word.title()}: the password is {word}.\n"
        f"Asked again, the keeper says: {word}. Asked once more, the keeper says:"
    )


@pytest.fixture(scope="module")
def model():
    m = load_model(n_ctx=1024, max_sequences=4, adapter=None)
    yield m
    m.close()


def run_together(model, prompts, sampling=GREEDY, **kw):
    """Start all prompts at once from their own threads; return their (text, stream)."""
    out: dict[int, tuple[str, object]] = {}
    barrier = threading.Barrier(len(prompts))

    def go(i: int) -> None:
        s = model.stream(prompts[i], sampling=sampling, **kw)
        barrier.wait()
        out[i] = ("".join(s), s)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return [out[i] for i in range(len(prompts))]


def test_the_shape_check_accepts_budget_ends_anywhere_and_nothing_else():
    turn = "<system_thinking>She stalls.</system_thinking>Mara: Papers first."
    for cut in range(1, len(turn)):
        assert her_shaped(turn[:cut], "Mara", complete=False), turn[:cut]
    assert her_shaped(turn, "Mara", complete=True)
    assert not her_shaped("<system_thinking>She stalls.</", "Mara", complete=True)
    for bad in (
        "<system_thinking>She stalls.</system_thinking>Jory: Papers first.",
        "<system_thinking>She stalls.<role_action>waves</role_action>",
        "Mara: Papers first.",
        "<system_thinking>She stalls.</system_thinking> Mara: no",
    ):
        assert not her_shaped(bad, "Mara", complete=False), bad


def test_sequences_decoded_together_keep_their_own_private_text(model):
    model.reset()
    "".join(model.stream(vault(WORDS[0]), sampling=GREEDY))  # one sequence reads the preamble
    results = run_together(model, [vault(w) for w in WORDS])
    assert len(results) == 4
    for word, (text, stream) in zip(WORDS, results, strict=True):
        assert word in text, (word, text)  # each continues its own prompt...
        assert not any(o in text for o in WORDS if o != word), (word, text)  # ...only its own
        assert stream.finish_reason in ("stop", "length")
    # every prompt re-used the shared preamble that one sequence had read (copied to others)
    assert min(s.cached_tokens for _, s in results) >= model.n_batch


def test_batched_turns_are_well_formed_turns_of_the_right_character(model):
    scenes = [build_demo_scene(model, seed=i) for i in range(4)]
    streams = []
    for i, scene in enumerate(scenes):
        scene.say(PLAYER, "Captain, the duke's papers. Let me through.")
        streams.append(scene.stream("Mara" if i % 2 else "Jory", private=True, max_tokens=40))
    threads = [threading.Thread(target=lambda s=s: list(s)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for i, stream in enumerate(streams):
        reply = stream.reply
        name = "Mara" if i % 2 else "Jory"
        other = "Jory" if name == "Mara" else "Mara"
        assert reply.character == name
        # The HER shape under the grammar; a turn that hit its budget is a prefix of one,
        # wherever the budget fell (inside the plan, or inside `</system_thinking>NAME:`).
        # "blocked": the secrets guard ended the turn where a reveal began (which turn drifts
        # towards a secret depends on the CPU's rounding).
        assert reply.finish_reason in ("stop", "length", "plan_length", "blocked")
        assert bool(reply.blocked_reveals) == (reply.finish_reason == "blocked")
        assert her_shaped(reply.raw, name, complete=reply.finish_reason == "stop"), reply.raw
        assert reply.plan, reply.raw
        assert f"{other}:" not in reply.raw
        other_prompt = scenes[i].characters[other].prompt().text
        for private in [reply.plan, *reply.thoughts]:
            assert private not in other_prompt


def test_cancelling_one_sequence_frees_it_and_leaves_the_others_alone(model):
    long = Sampling(max_tokens=24, temperature=0)
    cancel = CancelToken()
    alone = ["".join(model.stream(vault(w), sampling=long)) for w in WORDS[1:]]
    streams = [model.stream(vault(WORDS[0]), sampling=long, cancel=cancel)]
    streams += [model.stream(vault(w), sampling=long) for w in WORDS[1:]]
    texts = ["", "", "", ""]

    def read(i: int) -> None:
        for n, piece in enumerate(streams[i]):
            texts[i] += piece
            if i == 0 and n == 1:
                cancel.cancel()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert streams[0].finish_reason == "cancelled"
    assert streams[0].completion_tokens < 24
    for i in range(1, 4):
        assert streams[i].finish_reason in ("stop", "length")
        # Greedy agreement where the model is sure: each vault's password (its log-probability
        # checked alone, so any decode that computes this sequence's logits picks it). After it,
        # batched and single kernels round differently on some CPUs, enough to flip a near-tie
        # (a newline or a space after the password): the logits themselves are compared
        # within a stated tolerance in test_batched_logits_match_single_logits.
        sure = f" {WORDS[i]}."
        assert math.exp(sum(model.logprobs(vault(WORDS[i]), sure))) > 0.5
        assert alone[i - 1].startswith(sure) and texts[i].startswith(sure), (texts[i], alone)
    assert model._busy == [None] * model.max_sequences  # every sequence is free again
    assert "".join(model.stream(vault(WORDS[0]), sampling=GREEDY))  # and usable


# Batched (several sequences per llama_decode) and single decoding use other kernels; on every
# CPU seen their log-probabilities agree to ~1e-2 nats. A sequence reading another's KV cells or
# logits rows is off by whole nats.
LOGPROB_TOLERANCE = 0.25


def test_batched_logits_match_single_logits(model):
    conts = [f" {w}. Asked once more, the keeper says: {w}." for w in WORDS]
    alone = [model.logprobs(vault(w), c) for w, c in zip(WORDS, conts, strict=True)]
    together: dict[int, list[float]] = {}
    barrier = threading.Barrier(len(WORDS))

    def score(i: int) -> None:
        barrier.wait()
        together[i] = model.logprobs(vault(WORDS[i]), conts[i])

    model.reset()  # cold caches: all four prompts are read in shared batches
    threads = [threading.Thread(target=score, args=(i,)) for i in range(len(WORDS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for i in range(len(WORDS)):
        assert len(together[i]) == len(alone[i])
        worst = max(abs(a - b) for a, b in zip(alone[i], together[i], strict=True))
        assert worst < LOGPROB_TOLERANCE, (WORDS[i], worst)
    # The check can fail: another prompt's numbers are far outside the tolerance.
    other = model.logprobs(vault(WORDS[1]), conts[0])
    assert max(abs(a - b) for a, b in zip(alone[0], other, strict=True)) > LOGPROB_TOLERANCE


def test_limits_queue_then_refuse(model):
    tiny = load_model(n_ctx=256, max_sequences=1, max_waiting=1, adapter=None)
    try:
        slow = Sampling(max_tokens=30, temperature=0)
        first = tiny.stream("The gate", sampling=slow)
        second = tiny.stream("The wall", sampling=slow)
        third = tiny.stream("The road", sampling=slow)
        next(first)  # running
        done = threading.Event()
        threading.Thread(target=lambda: (list(second), done.set())).start()  # waiting
        time.sleep(0.2)
        with pytest.raises(LimitExceededError, match="waiting"):
            next(third)
        list(first)
        assert done.wait(120) and second.finish_reason in ("stop", "length")
    finally:
        tiny.close()


def test_player_turn_is_admitted_before_earlier_background_turns():
    m = load_model(n_ctx=256, max_sequences=1, adapter=None)
    m._sched.age_bound_s = 1e6  # a slow shared machine must not make the others "old"
    try:
        order: list[str] = []
        # The only sequence stays busy (a long turn, cancelled below) while the others queue:
        # a short one could finish before the player turn is even submitted on a fast machine.
        stop_blocker = CancelToken()
        blocker = m.stream(
            "The gate", sampling=Sampling(max_tokens=250, temperature=0), cancel=stop_blocker
        )
        next(blocker)

        def run(name: str, priority: str) -> None:
            list(m.stream(f"The {name}", sampling=GREEDY, priority=priority))
            order.append(name)

        threads = [
            threading.Thread(target=run, args=("wall", "background")),
            threading.Thread(target=run, args=("road", "background")),
        ]
        for t in threads:
            t.start()
        time.sleep(0.3)
        threads.append(threading.Thread(target=run, args=("king", "player")))
        threads[-1].start()
        time.sleep(0.3)
        stop_blocker.cancel()
        list(blocker)
        for t in threads:
            t.join(timeout=120)
        assert order[0] == "king", order
    finally:
        m.close()


def test_seeded_turn_alone_is_reproducible_after_crowds_and_resets(model):
    def mara() -> str:
        scene = build_demo_scene(model, seed=5)
        scene.say(PLAYER, "Open the gate.")
        return scene.turn("Mara", seed=7, max_tokens=12).raw

    a = mara()
    run_together(model, [vault(w) for w in WORDS])  # others take and move the cached states
    assert mara() == a
    model.reset()
    assert mara() == a


def test_logprobs_of_a_continuation(model):
    prompt, cont = vault("CHERRY"), " CHERRY."
    lp = model.logprobs(prompt, cont)
    assert len(lp) == len(model._tokenize_raw(cont, False, False)) and all(x <= 0 for x in lp)
    model.reset()
    assert model.logprobs(prompt, cont) == lp  # cold and cached give the same numbers
    assert sum(lp) > sum(model.logprobs(prompt, " BANANA."))  # its own password is likelier
    assert model.logprobs(prompt, "") == []


def test_closing_ends_running_and_waiting_turns():
    from her_sdk import GenerationError

    m = load_model(n_ctx=256, max_sequences=1, adapter=None)
    running = m.stream("The gate", sampling=Sampling(max_tokens=200, seed=1))
    waiting = m.stream("The wall", sampling=Sampling(max_tokens=200, seed=1))
    outcome: list[BaseException] = []

    def wait_in_queue() -> None:
        try:
            list(waiting)
        except GenerationError as exc:
            outcome.append(exc)

    next(running)
    t = threading.Thread(target=wait_in_queue)
    t.start()
    time.sleep(0.2)
    m.close()
    t.join(timeout=60)
    with pytest.raises(GenerationError, match="closed"):
        list(running)
    assert len(outcome) == 1 and "closed" in str(outcome[0])
    assert m._thread is None
    with pytest.raises(GenerationError, match="closed"):
        m.stream("Again")


def test_cache_any_prefix_rereads_only_what_changed():
    """By default a turn re-uses only whole n_batch chunks of a cached prompt (so seeded turns
    are bit-exact whatever was cached); with `cache_any_prefix` it re-uses every cached token,
    generated text included, and re-reads only the new tail."""
    base = vault("BANANA")
    exact = load_model(n_ctx=1024, max_sequences=2, adapter=None)
    anyp = load_model(n_ctx=1024, max_sequences=2, adapter=None, cache_any_prefix=True)
    try:
        for m in (exact, anyp):
            first = m.stream(base, sampling=GREEDY)
            said = "".join(first)
            n = first.prompt_tokens
            assert n % m.n_batch not in (0, 1)  # the prompt ends inside a chunk
            again = m.stream(base + said + " And once more:", sampling=GREEDY)
            "".join(again)
            grown = again.prompt_tokens
            if m is exact:
                assert again.cached_tokens % m.n_batch == 0
                assert again.cached_tokens <= n - n % m.n_batch
            else:  # the whole first prompt (at its seam with the new text, a token may differ)
                assert again.cached_tokens >= n - 1
                assert grown - again.cached_tokens < grown - (n - n % m.n_batch)
            assert again.finish_reason in ("stop", "length")
    finally:
        exact.close()
        anyp.close()


def test_cache_any_prefix_reaches_the_model_from_a_spec_and_from_her_serve():
    pytest.importorskip("pydantic")
    from her_sdk import backend_from_spec
    from her_sdk.server._backend import backend_from_settings
    from her_sdk.server._settings import ServerSettings

    m = backend_from_spec(None, adapter=None, n_ctx=256, cache_any_prefix=True)
    assert m.cache_any_prefix is True
    m.close()
    served = backend_from_settings(
        ServerSettings(adapter="none", n_ctx=256, max_sequences=1, cache_any_prefix=True)
    )
    assert served.cache_any_prefix is True
    served.close()
    plain = backend_from_settings(ServerSettings(adapter="none", n_ctx=256, max_sequences=1))
    assert plain.cache_any_prefix is False
    plain.close()
    with pytest.raises(ValueError, match="cache_any_prefix"):
        ServerSettings(model="http://127.0.0.1:1/v1#m", cache_any_prefix=True)
