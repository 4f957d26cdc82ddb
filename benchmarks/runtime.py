"""Runtime benchmark: a Character turn vs raw llama-cpp-python, on the same model and prompt.

    .venv/bin/python benchmarks/runtime.py [--model PATH] [--runs 5] [--tokens 96]

Prints, each measured in this one run (median of --runs):
- generation tokens/s of a Character turn (grammar off) vs raw `Llama.create_completion`
  on the identical prompt, and their ratio (target >= 0.97);
- the structure guarantee's cost: constrained (GBNF) vs free tokens/s (target <= 15% slower);
- time to the first *speech* token of a turn without a plan vs raw first token, both reading the
  whole prompt from a cold cache (target <= 1.5x);
- peak memory (RSS) of this process.

`npc_mind_costs(backend)` (run with --npc) measures what game-ready minds add to a turn: recall
from a long-term memory of 1000 items, and the secrets guard (targets: each <= 5% of a turn).
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import resource
import statistics
import threading
import time

from her_sdk import Character, LlamaBackend, MockBackend, Sampling, load_model
from her_sdk.demo import PLAYER, build_demo_scene


def raw_llama(path: str, n_ctx: int):
    import llama_cpp

    if LlamaBackend.cpu_has_amx():  # the SDK's crash guard, else the baseline segfaults
        orig = llama_cpp.llama_cpp.llama_model_default_params

        def patched():
            p = orig()
            p.use_extra_bufts = False
            return p

        llama_cpp.llama_cpp.llama_model_default_params = patched
    return llama_cpp.Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_threads=os.cpu_count(),
        n_threads_batch=os.cpu_count(),
        verbose=False,
    )


def raw_run(llm, prompt: str, tokens: int, seed: int, cold: bool) -> tuple[float, float]:
    """(first token seconds, generation tokens/s after the first token).

    Run on a thread of its own that ends with the run, as the SDK's engine thread does: llama.cpp
    computes with an OpenMP team per calling thread, and while two teams live in one process
    (here the main thread's and the engine's) libgomp sees more threads than cores and stops
    spin-waiting, which makes *both* engines about 1.5x slower on 2 cores.
    """
    out: list[tuple[float, float]] = []
    thread = threading.Thread(target=lambda: out.append(_raw_run(llm, prompt, tokens, seed, cold)))
    thread.start()
    thread.join()
    return out[0]


def _raw_run(llm, prompt: str, tokens: int, seed: int, cold: bool) -> tuple[float, float]:
    if cold:
        llm.reset()
        llm._ctx.kv_cache_clear()
    t0 = time.perf_counter()
    first = None
    n = 0
    for _ in llm.create_completion(
        prompt,
        max_tokens=tokens,
        temperature=0.8,
        top_k=40,
        top_p=0.95,
        min_p=0.05,
        repeat_penalty=1.1,
        seed=seed,
        stream=True,
        stop=[],
    ):
        n += 1
        if first is None:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return first or total, (n - 1) / max(total - (first or 0), 1e-9)


def sdk_run(character: Character, tokens: int, seed: int, cold: bool) -> tuple[float, float, int]:
    """(first speech seconds, generation tokens/s after the first token, tokens)."""
    if cold:
        character.model.reset()
    memory, long_term = list(character.memory), copy.deepcopy(character.long_term)
    stream = character.stream(private=True, seed=seed, max_tokens=tokens)
    reply = stream.wait()
    character.memory, character.long_term = memory, long_term  # the same prompt every run
    gen = reply.total_s - (reply.first_token_s or 0)
    return (
        reply.first_speech_s if reply.first_speech_s is not None else float("nan"),
        (reply.completion_tokens - 1) / max(gen, 1e-9),
        reply.completion_tokens,
    )


def _turn_s(character: Character, tokens: int, seed: int) -> tuple[float, object]:
    memory, long_term = list(character.memory), copy.deepcopy(character.long_term)
    t0 = time.perf_counter()
    reply = character.reply(seed=seed, max_tokens=tokens)
    elapsed = time.perf_counter() - t0
    character.memory, character.long_term = memory, long_term
    return elapsed, reply


def npc_mind_costs(backend, runs: int = 5, tokens: int = 96) -> None:
    """Per-turn cost of long-term memory recall and of the secrets guard on `backend`."""
    scene = build_demo_scene(backend)
    scene.say(PLAYER, "Let me through, captain. Your brother said you would understand.")
    mara = scene.characters["Mara"]
    rng = random.Random(0)
    words = [
        "gate", "duke", "rain", "brother", "cart", "wine", "papers", "road", "Essen", "guard",
        "night", "river", "coin", "key", "smuggler", "rifles", "seal", "captain", "husband",
        "orders", "dawn", "tavern", "horse", "letter",
    ]  # fmt: skip
    for i in range(1000):  # a long play history
        mara.long_term.add(f"Traveler: {' '.join(rng.choices(words, k=12))} ({i})")

    # Recall alone, in Python: what the turn computes before it renders the prompt.
    situation = "Let me through, captain. Your brother said you would understand."
    t = []
    for _ in range(runs * 20):
        t0 = time.perf_counter()
        mara.long_term.recall(situation, k=mara.recall, touch=False)
        t.append(time.perf_counter() - t0)
    recall_s = statistics.median(t)

    # Whole turns with and without recall (the recalled lines also lengthen the prompt). One
    # warm-up turn of each first, so neither side pays for the cold prompt.
    for recall in (5, 0):
        mara.recall = recall
        _turn_s(mara, tokens, 299)
    with_recall, without = [], []
    for i in range(runs):
        mara.recall = 5
        with_recall.append(_turn_s(mara, tokens, 300 + i)[0])
        mara.recall = 0
        without.append(_turn_s(mara, tokens, 300 + i)[0])
    mara.recall = 5
    a, b = statistics.median(with_recall), statistics.median(without)
    print(
        f"memory recall (1000 memories): {1000 * recall_s:.2f} ms in Python; turn "
        f"{1000 * a:.0f} ms with recall vs {1000 * b:.0f} ms without: "
        f"{100 * (a / b - 1):+.1f}%  (target <= 5%)"
    )

    # The guard: a real turn replayed by a scripted model with and without it (its Python cost
    # alone), and whole turns with and without it.
    mara.recall = 0
    turn_s, reply = _turn_s(mara, tokens, 400)
    replayed = {}
    for guard_on in (True, False):
        actor = Character(
            persona=mara.persona, model=MockBackend(lambda _prompt: reply.raw), grammar=False
        )
        actor.guard_secrets = guard_on
        t = []
        for _ in range(runs * 20):
            t0 = time.perf_counter()
            actor.reply()
            t.append(time.perf_counter() - t0)
        replayed[guard_on] = statistics.median(t)
    guard_s = max(replayed[True] - replayed[False], 0.0)
    on, off = [], []
    for guard_on in (True, False):
        mara.guard_secrets = guard_on
        _turn_s(mara, tokens, 499)
    for i in range(runs):
        mara.guard_secrets = True
        on.append(_turn_s(mara, tokens, 500 + i)[0])
        mara.guard_secrets = False
        off.append(_turn_s(mara, tokens, 500 + i)[0])
    a, b = statistics.median(on), statistics.median(off)
    print(
        f"secrets guard: {1000 * guard_s:.2f} ms per turn in Python "
        f"({100 * guard_s / turn_s:.2f}% of a {1000 * turn_s:.0f} ms turn); turn {1000 * a:.0f} ms "
        f"on vs {1000 * b:.0f} ms off: {100 * (a / b - 1):+.1f}%  (target <= 5%)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--npc", action="store_true", help="only the costs of memory and the guard")
    args = ap.parse_args()

    # The bare GGUF on both sides (no adapter): raw llama-cpp-python runs the same file, with
    # the same samplers (no DRY) and no turn shape.
    backend = load_model(args.model, adapter=None, dry_multiplier=0.0, turn_shape=None)
    if args.npc:
        npc_mind_costs(backend, args.runs, args.tokens)
        return
    path = str(backend.path)
    scene = build_demo_scene(backend)
    scene.say(PLAYER, "Let me through, captain. I carry papers sealed by the duke himself.")
    mara = scene.characters["Mara"]
    llm = raw_llama(path, backend.n_ctx)
    print(f"model: {path}\ncpu threads: {os.cpu_count()}  AMX: {LlamaBackend.cpu_has_amx()}")

    # 1. Throughput on the identical prompt, grammar off.
    mara.grammar = False
    prompt = mara.prompt().text
    free = [sdk_run(mara, args.tokens, 100 + i, cold=False)[1] for i in range(args.runs)]
    raw = [raw_run(llm, prompt, args.tokens, 100 + i, cold=False)[1] for i in range(args.runs)]
    sdk_tps, raw_tps = statistics.median(free), statistics.median(raw)
    print(
        f"\ngeneration tokens/s  raw llama-cpp-python {raw_tps:6.1f}   Character {sdk_tps:6.1f}"
        f"   ratio {sdk_tps / raw_tps:.3f}  (target >= 0.97)"
    )

    # 2. Cost of the structure guarantee.
    mara.grammar = True
    constrained = [sdk_run(mara, args.tokens, 100 + i, cold=False)[1] for i in range(args.runs)]
    con_tps = statistics.median(constrained)
    print(
        f"grammar: constrained {con_tps:6.1f} tok/s vs free {sdk_tps:6.1f}"
        f"   cost {100 * (1 - con_tps / sdk_tps):.1f}%  (target <= 15%)"
    )

    # 3. Time to first speech token without a plan, cold cache, vs raw first token.
    fast = Character(
        persona=mara.persona,
        model=backend,
        plan=False,
        grammar=True,
        sampling=Sampling(max_tokens=args.tokens),
    )
    fast.memory = list(mara.memory)
    fast_prompt = fast.prompt().text
    ttfs = [sdk_run(fast, 24, 200 + i, cold=True)[0] for i in range(args.runs)]
    raw_first = [raw_run(llm, fast_prompt, 1, 200 + i, cold=True)[0] for i in range(args.runs)]
    a, b = statistics.median(ttfs), statistics.median(raw_first)
    print(
        f"first speech token (no plan, cold): Character {1000 * a:.0f} ms vs raw first token "
        f"{1000 * b:.0f} ms   ratio {a / b:.2f}  (target <= 1.5)"
    )
    print(f"prompt: {backend.count_tokens(fast_prompt)} tokens")

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS (both engines loaded): {rss:.0f} MB")


if __name__ == "__main__":
    main()
