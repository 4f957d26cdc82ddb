"""Runtime benchmark: a Character turn vs raw llama-cpp-python, on the same model and prompt.

    .venv/bin/python benchmarks/runtime.py [--model PATH] [--runs 5] [--tokens 96]

Prints, each measured in this one run (median of --runs):
- generation tokens/s of a Character turn (grammar off) vs raw `Llama.create_completion`
  on the identical prompt, and their ratio (target >= 0.97);
- the structure guarantee's cost: constrained (GBNF) vs free tokens/s (target <= 15% slower);
- time to the first *speech* token of a turn without a plan vs raw first token, both reading the
  whole prompt from a cold cache (target <= 1.5x);
- peak memory (RSS) of this process.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

from her_sdk import Character, Sampling, load_model
from her_sdk._backends._llama import cpu_has_amx
from her_sdk._demo import PLAYER, build_demo_scene


def raw_llama(path: str, n_ctx: int):
    import llama_cpp

    if cpu_has_amx():  # same crash guard as the SDK, else the baseline itself segfaults
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
    """(first token seconds, generation tokens/s after the first token)."""
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
    memory = list(character.memory)
    stream = character.stream(private=True, seed=seed, max_tokens=tokens)
    reply = stream.wait()
    character.memory = memory  # keep the prompt identical across runs
    gen = reply.total_s - (reply.first_token_s or 0)
    return (
        reply.first_speech_s if reply.first_speech_s is not None else float("nan"),
        (reply.completion_tokens - 1) / max(gen, 1e-9),
        reply.completion_tokens,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=96)
    args = ap.parse_args()

    backend = load_model(args.model)
    path = str(backend.path)
    scene = build_demo_scene(backend)
    scene.say(PLAYER, "Let me through, captain. I carry papers sealed by the duke himself.")
    mara = scene.characters["Mara"]
    llm = raw_llama(path, backend.n_ctx)
    print(f"model: {path}\ncpu threads: {os.cpu_count()}  AMX: {cpu_has_amx()}")

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
