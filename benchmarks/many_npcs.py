"""Many NPCs on one model: concurrent turns decoded together vs one at a time, and priorities.

    .venv/bin/python benchmarks/many_npcs.py [--model PATH] [--tokens 48] [--sizes 1,2,4,8]
                                             [--runs 3] [--grpc 64] [--json OUT.json]

Prints, each measured in this one run on the same model:
- aggregate generation tokens/s of N NPC turns started together (N = --sizes) vs the same N
  turns one after another, and their ratio (target for N = 8 on 2 CPU cores: >= 1.8x). Every
  NPC has its own persona and prompt; prompts are read once beforehand, so both modes generate
  from cached prompts, and each turn generates exactly --tokens tokens (fixed budget, no stop);
- time to first speech of a player-facing turn (the demo's Mara, plan and grammar on) while 7
  background turns are generating vs on an idle model (target <= 2x), and the same turn at the
  background turns' own priority under that load, to show what the priority buys;
- with --grpc N: N concurrent Turn streams through a real `her serve` server on loopback over
  this model (N NPCs in N/8 scenes): errors (target 0) and p50/p99 per-turn latency.

Single-turn speed against raw llama-cpp-python is benchmarks/runtime.py's measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

from her_sdk import CancelToken, Character, Sampling, load_model
from her_sdk.demo import PLAYER, build_demo_scene

TRADES = [
    ("Bram", "the blacksmith, loud and proud of his blades"),
    ("Celia", "the herbalist, who whispers and trusts no one"),
    ("Doran", "a guard on the wall, bored and hungry"),
    ("Edda", "the innkeeper, who hears every rumour first"),
    ("Fenn", "a bard who turns every answer into a rhyme"),
    ("Gwen", "the miller's daughter, quick and sharp-tongued"),
    ("Hale", "an old soldier who misses the war"),
    ("Isra", "a merchant from the south, haggling over everything"),
]


def town_npcs(model, n: int) -> list[Character]:
    """`n` townsfolk, each with a persona of its own and the same greeting from the player."""
    out = []
    for i in range(n):
        name, trade = TRADES[i % len(TRADES)]
        name = name if i < len(TRADES) else f"{name}{i // len(TRADES)}"
        c = Character(
            name=name,
            source="the market town of Vell",
            profile=f"{name} is {trade}.",
            scenario="Market day. The square is crowded; a stranger walks up.",
            model=model,
            grammar=False,
        )
        c.hear(PLAYER, "Good morning! What news in town?")
        out.append(c)
    return out


def prompts_of(npcs: list[Character]) -> list[str]:
    return [c.prompt().text for c in npcs]


def run_turns(model, prompts: list[str], tokens: int, together: bool) -> tuple[float, int]:
    """(wall seconds, tokens generated) for one turn per prompt, together or one by one."""
    # A fixed budget: no stop strings, and the end-of-generation token does not come up in
    # practice within a few dozen tokens of free text; the counts are checked, not assumed.
    sampling = [Sampling(max_tokens=tokens, temperature=0.8, seed=i) for i in range(len(prompts))]
    counts = [0] * len(prompts)

    def one(i: int) -> None:
        stream = model.stream(prompts[i], sampling=sampling[i])
        for _ in stream:
            pass
        counts[i] = stream.completion_tokens

    t0 = time.perf_counter()
    if together:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i in range(len(prompts)):
            one(i)
    return time.perf_counter() - t0, sum(counts)


def throughput(model, sizes: list[int], tokens: int, runs: int) -> list[dict]:
    rows = []
    npcs = town_npcs(model, max(sizes))
    prompts = prompts_of(npcs)
    run_turns(model, prompts, 2, together=False)  # read every prompt once: caches are warm
    for n in sizes:
        seq, con = [], []
        for _ in range(runs):
            s_wall, s_tok = run_turns(model, prompts[:n], tokens, together=False)
            c_wall, c_tok = run_turns(model, prompts[:n], tokens, together=True)
            seq.append(s_tok / s_wall)
            con.append(c_tok / c_wall)
        row = {
            "n": n,
            "sequential_tok_s": statistics.median(seq),
            "concurrent_tok_s": statistics.median(con),
        }
        row["ratio"] = row["concurrent_tok_s"] / row["sequential_tok_s"]
        rows.append(row)
        print(
            f"N={n}: one at a time {row['sequential_tok_s']:.1f} tok/s, together "
            f"{row['concurrent_tok_s']:.1f} tok/s aggregate: {row['ratio']:.2f}x",
            flush=True,
        )
    return rows


def first_speech(model, priority: str, load: int, runs: int) -> float:
    """Median seconds to the first speech of Mara's turn (demo scene), with `load` background
    turns generating meanwhile."""
    background = town_npcs(model, load)
    prompts = prompts_of(background)
    if prompts:
        run_turns(model, prompts, 2, together=False)  # their prompts are cached, as in a game
    times = []
    for r in range(runs):
        cancel = CancelToken()
        started = threading.Barrier(load + 1) if load else None

        def chatter(i: int, cancel=cancel, started=started) -> None:
            stream = model.stream(
                prompts[i],
                sampling=Sampling(max_tokens=400, seed=100 + i),
                cancel=cancel,
                priority="background",
            )
            first = True
            for _ in stream:
                if first and started is not None:
                    started.wait()
                    first = False

        threads = [threading.Thread(target=chatter, args=(i,)) for i in range(load)]
        for t in threads:
            t.start()
        if started is not None:
            started.wait()  # every background turn is generating
        scene = build_demo_scene(model, seed=7)
        # The secrets guard may end a turn before it speaks; here only the latency counts.
        scene.characters["Mara"].guard_secrets = False
        scene.narrate("Night at the north gate. Rain.")
        scene.say(PLAYER, "Let me through, captain. I have papers from the duke.")
        reply = scene.turn("Mara", seed=r, max_tokens=120, priority=priority)
        cancel.cancel()
        for t in threads:
            t.join()
        if reply.first_speech_s is not None:
            times.append(reply.first_speech_s)
    # A turn that ended without speech (its token budget spent on the plan) has no time.
    return statistics.median(times) if times else float("nan")


def grpc_load(model, n: int, tokens: int) -> dict:
    from her_sdk.client import Client
    from her_sdk.server import HerServer, ServerSettings

    settings = ServerSettings(
        port=0, max_workers=max(128, 2 * n + 8), max_concurrent_rpcs=max(96, 2 * n)
    )
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    with HerServer(settings, model=model) as server, Client(server.target, timeout=None) as client:
        jobs = []
        for s in range(0, n, 8):
            names = [f"{TRADES[i % 8][0]}{s // 8}" for i in range(s, min(n, s + 8))]
            ids = [
                client.create_character(name, profile=f"{name} is {TRADES[i % 8][1]}.")
                for i, name in enumerate(names)
            ]
            scene = client.create_scene(ids, players=PLAYER)
            scene.say(PLAYER, "Good morning, everyone!")
            jobs += [(scene, name) for name in names]
        barrier = threading.Barrier(len(jobs))

        def turn(scene, name: str) -> None:
            barrier.wait()
            t0 = time.perf_counter()
            try:
                scene.turn(name, max_tokens=tokens)
                with lock:
                    latencies.append(time.perf_counter() - t0)
            except Exception as exc:  # counted and reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")

        t0 = time.perf_counter()
        threads = [threading.Thread(target=turn, args=job) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    out = {
        "streams": n,
        "errors": len(errors),
        "p50_s": statistics.median(latencies) if latencies else None,
        "p99_s": statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else None,
        "wall_s": wall,
    }
    print(
        f"gRPC: {n} concurrent Turn streams, {len(errors)} errors, per-turn latency p50 "
        f"{out['p50_s'] or 0:.2f} s, p99 {out['p99_s'] or 0:.2f} s, all done in {wall:.1f} s",
        flush=True,
    )
    for e in errors[:5]:
        print("  error:", e)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="GGUF file (default: the embedded model)")
    ap.add_argument("--tokens", type=int, default=48, help="tokens per turn (throughput)")
    ap.add_argument("--sizes", default="1,2,4,8", help="numbers of concurrent turns")
    ap.add_argument("--runs", type=int, default=3, help="repeats (medians are reported)")
    ap.add_argument("--background", type=int, default=7, help="background turns under load")
    ap.add_argument("--grpc", type=int, default=64, help="concurrent gRPC streams (0: skip)")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    # The bare embedded model (adapter=None), as in the README's figures: the engine, not the
    # adapter, is what this measures.
    model = load_model(args.model, adapter=None, n_ctx=args.n_ctx, max_sequences=max(8, *sizes))
    print(f"{model!r}, {model.n_threads} threads", flush=True)
    results: dict = {"model": str(model.path), "tokens": args.tokens}
    results["throughput"] = throughput(model, sizes, args.tokens, args.runs)
    idle = first_speech(model, "player", 0, args.runs)
    loaded = first_speech(model, "player", args.background, args.runs)
    same = first_speech(model, "background", args.background, args.runs)
    results["first_speech"] = {
        "idle_s": idle,
        "player_under_load_s": loaded,
        "same_priority_under_load_s": same,
        "ratio": loaded / idle,
    }
    print(
        f"time to first speech: idle {idle:.2f} s; with {args.background} background turns "
        f"{loaded:.2f} s as player-facing ({loaded / idle:.2f}x idle), {same:.2f} s at their "
        f"priority ({same / idle:.2f}x)",
        flush=True,
    )
    if args.grpc:
        results["grpc"] = grpc_load(model, args.grpc, 16)
    model.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
