"""Many NPCs on one model: concurrent turns decoded together vs one at a time, and priorities.

    .venv/bin/python benchmarks/many_npcs.py [--model PATH] [--tokens 48] [--sizes 1,2,4,8]
                                             [--ceiling 1,2,4,8,16] [--runs 3] [--grpc 64]
                                             [--no-latency] [--cache-any-prefix]
                                             [--json OUT.json]

Prints, each measured in this one run on the same model:
- the CPU and its vector extensions, and those llama.cpp's build uses (its kernels follow them:
  figures from different CPUs or builds do not compare);
- aggregate generation tokens/s of N NPC turns started together (N = --sizes) vs the same N
  turns one after another, and their ratio (target for N = 8 on 2 CPU cores: >= 1.8x). Every
  NPC has its own persona and prompt; prompts are read once beforehand, so both modes generate
  from cached prompts, and each turn generates exactly --tokens tokens (fixed budget, no stop);
- the ceiling (N = --ceiling): raw llama.cpp (llama-cpp-python's low-level API, no her_sdk) on
  the same model file and the same prompts' tokens, one `llama_decode` per step holding one token
  of each of N sequences, each sampled with the SDK's sampler chain: tokens/s counting decode
  time only and counting decode and sampling; the SDK's N turns together; SDK / ceiling. Raw and
  SDK runs alternate, so both meet the same machine. Each SDK step is profiled from outside (its
  backend's own methods timed): decode, sampling, text out, prompt reading, the step's own
  Python, time outside steps, and how full its batches were;
- time to first speech of a player-facing turn (the demo's Mara, plan and grammar on) while 7
  background turns are generating vs on an idle model (target <= 2x), and the same turn at the
  background turns' own priority under that load, to show what the priority buys;
- with --cache-any-prefix, all of it with `LlamaBackend(cache_any_prefix=True)`: each turn
  re-reads only what its cached prompt lacks, not up to n_batch - 1 tokens more (the price of
  bit-exact seeded turns); run the benchmark once each way to see what that buys;
- with --grpc N: N concurrent Turn streams through a real `her serve` server on loopback over
  this model (N NPCs in N/8 scenes): errors (target 0) and p50/p99 per-turn latency.

Single-turn speed against raw llama-cpp-python is benchmarks/runtime.py's measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import threading
import time
from collections import Counter

from _machine import cpu_header, llama_header

from her_sdk import CancelToken, Character, LlamaBackend, Sampling, load_model
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


def on_own_thread(fn):
    """Run `fn()` on a thread that ends with it, as the SDK's engine thread does: two live
    OpenMP teams in one process slow each other down (see benchmarks/runtime.py)."""
    out: list = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # re-raised on the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, name="raw-llama")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return out[0]


class RawEngine:
    """Raw llama.cpp on the same model file, set up as the SDK sets it up (same threads, one KV
    stream per sequence, no weight repacking on AMX CPUs, prompts read in n_batch chunks), with
    every prompt but its last token read once. `run(n)` then decodes `tokens` steps of one
    `llama_decode` holding one token of each of n sequences, sampling each with the SDK's
    sampler chain: the batched-decoding ceiling, free of any SDK code."""

    def __init__(self, path: str, prompts: list[list[int]], n_seq: int, n_ctx: int) -> None:
        import llama_cpp as lib

        self.lib, self.prompts = lib, prompts
        threads = os.cpu_count() or 1
        n_batch = 64
        mparams = lib.llama_model_default_params()
        mparams.use_extra_bufts = not LlamaBackend.cpu_has_amx()
        self.model = lib.llama_model_load_from_file(str(path).encode(), mparams)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_ctx * n_seq
        cparams.n_seq_max = n_seq
        cparams.kv_unified = False
        cparams.n_batch = cparams.n_ubatch = max(n_batch, n_seq)
        cparams.n_threads = cparams.n_threads_batch = threads
        self.ctx = lib.llama_init_from_model(self.model, cparams)
        self.mem = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(max(n_batch, n_seq), 0, 1)

        def read() -> None:
            for seq in range(n_seq):
                p = prompts[seq % len(prompts)]
                for start in range(0, len(p) - 1, n_batch):
                    stop = min(len(p) - 1, start + n_batch)
                    self._decode([(p[i], i, seq, False) for i in range(start, stop)])

        on_own_thread(read)

    def _decode(self, items) -> None:
        batch = self.batch
        batch.n_tokens = len(items)
        for i, (token, pos, seq, logits) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        if self.lib.llama_decode(self.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def run(self, n: int, tokens: int, seed: int) -> tuple[float, float, float]:
        """(decode seconds, sampling seconds, wall seconds) of n sequences x `tokens` tokens."""
        return on_own_thread(lambda: self._run(n, tokens, seed))

    def _run(self, n: int, tokens: int, seed: int) -> tuple[float, float, float]:
        lib = self.lib
        chains = [
            LlamaBackend.sampler_chain(lib, Sampling(temperature=0.8, seed=seed + i))
            for i in range(n)
        ]
        pending, pos = [], []
        for seq in range(n):
            p = self.prompts[seq % len(self.prompts)]
            lib.llama_memory_seq_rm(self.mem, seq, len(p) - 1, -1)  # back to the read prompt
            pending.append(p[-1])
            pos.append(len(p) - 1)
        dec = smp = 0.0
        t0 = time.perf_counter()
        for _ in range(tokens):
            ta = time.perf_counter()
            self._decode([(pending[i], pos[i], i, True) for i in range(n)])
            tb = time.perf_counter()
            for i in range(n):
                pending[i], pos[i] = lib.llama_sampler_sample(chains[i], self.ctx, i), pos[i] + 1
            dec += tb - ta
            smp += time.perf_counter() - tb
        wall = time.perf_counter() - t0
        for chain in chains:
            lib.llama_sampler_free(chain)
        return dec, smp, wall

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)


class StepProfile:
    """Where the SDK engine's time goes: the backend's own methods, timed where they are called
    (instance attributes over its methods: nothing of the SDK is changed)."""

    METHODS = ("_step", "_decode", "_pick", "_emit", "_read_chunk", "_start", "_finish")

    def __init__(self, model) -> None:
        self.model = model
        self.time: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.batches: list[int] = []
        self._reading = False
        for name in self.METHODS:
            self._wrap(name)

    def _wrap(self, name: str) -> None:
        method = getattr(self.model, name)

        def timed(*args, **kwargs):
            key = name
            if name == "_decode":
                key = "_decode(prompt)" if self._reading else "_decode"
                if not self._reading:
                    self.batches.append(len(args[0]))
            if name == "_read_chunk":
                self._reading = True
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.time[key] += time.perf_counter() - t0
                self.calls[key] += 1
                if name == "_read_chunk":
                    self._reading = False

        setattr(self.model, name, timed)

    def close(self) -> None:
        for name in self.METHODS:
            delattr(self.model, name)


def ceiling(model, sizes: list[int], tokens: int, runs: int) -> list[dict]:
    """For each N: raw llama.cpp runs and SDK runs of N turns together, alternating (so both
    see the same machine), the SDK's engine methods timed; medians over `runs`."""
    npcs = town_npcs(model, max(sizes))
    prompts = prompts_of(npcs)
    run_turns(model, prompts, 2, together=False)  # SDK: every prompt cached, as in a game
    raw = RawEngine(str(model.path), [model.tokenize(p) for p in prompts], max(sizes), model.n_ctx)
    rows = []
    try:
        for n in sizes:
            raw_runs, sdk_runs = [], []
            prof = StepProfile(model)
            try:
                for r in range(runs):
                    raw_runs.append(raw.run(n, tokens, seed=100 * r))
                    sdk_runs.append(run_turns(model, prompts[:n], tokens, together=True)[0])
            finally:
                prof.close()
            rows.append(ceiling_row(n, tokens, runs, raw_runs, sdk_runs, prof))
    finally:
        raw.close()
    return rows


def ceiling_row(n, tokens, runs, raw_runs, sdk_runs, prof: StepProfile) -> dict:
    dec, smp, wall = (statistics.median(x) for x in zip(*raw_runs, strict=True))
    sdk_wall = statistics.median(sdk_runs)
    t, c = prof.time, prof.calls
    steps = max(c["_step"], 1)
    ms = {k: 1000 * v / steps for k, v in t.items()}
    inside = ms.get("_step", 0.0)
    measured = ("_decode", "_pick", "_emit", "_read_chunk", "_finish")
    row = {
        "n": n,
        "raw_decode_tok_s": n * tokens / dec,
        "raw_tok_s": n * tokens / wall,
        "sdk_tok_s": n * tokens / sdk_wall,
        "raw_decode_ms_per_step": 1000 * dec / tokens,
        "raw_sample_ms_per_step": 1000 * smp / tokens,
        "sdk_steps_per_turn": steps / runs,
        "sdk_wall_ms_per_step": 1000 * sum(sdk_runs) / steps,
        "sdk_mean_batch": statistics.mean(prof.batches) if prof.batches else 0.0,
        "sdk_full_batch_share": sum(b == n for b in prof.batches) / max(len(prof.batches), 1),
        "sdk_decode_ms": ms.get("_decode", 0.0),
        "sdk_sampling_ms": ms.get("_pick", 0.0),
        "sdk_text_out_ms": ms.get("_emit", 0.0) + ms.get("_finish", 0.0),
        "sdk_prompt_ms": ms.get("_read_chunk", 0.0),
        "sdk_step_python_ms": inside - sum(ms.get(k, 0.0) for k in measured),
    }
    row["sdk_outside_steps_ms"] = row["sdk_wall_ms_per_step"] - inside - ms.get("_start", 0.0)
    row["sdk_over_raw"] = row["sdk_tok_s"] / row["raw_tok_s"]
    row["sdk_over_decode"] = row["sdk_tok_s"] / row["raw_decode_tok_s"]
    print(
        f"N={n}: raw llama.cpp {row['raw_decode_tok_s']:.1f} tok/s counting decode only, "
        f"{row['raw_tok_s']:.1f} with sampling (decode {row['raw_decode_ms_per_step']:.1f} ms, "
        f"sampling {row['raw_sample_ms_per_step']:.2f} ms a step); SDK {row['sdk_tok_s']:.1f} "
        f"tok/s: SDK / ceiling {row['sdk_over_raw']:.2f} ({row['sdk_over_decode']:.2f} of "
        f"decode only)",
        flush=True,
    )
    print(
        f"    SDK step: {row['sdk_wall_ms_per_step']:.1f} ms (mean batch "
        f"{row['sdk_mean_batch']:.2f}, {row['sdk_full_batch_share']:.0%} of steps with all {n}): "
        f"decode {row['sdk_decode_ms']:.1f}, sampling {row['sdk_sampling_ms']:.2f}, text out "
        f"{row['sdk_text_out_ms']:.2f}, prompt reading {row['sdk_prompt_ms']:.1f}, the step's "
        f"own Python {row['sdk_step_python_ms']:.2f}, outside steps "
        f"{row['sdk_outside_steps_ms']:.2f} ms",
        flush=True,
    )
    return row


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
    # 16-token turns end inside their plans by design (the figure is latency under load):
    # keep their plan-budget warnings out of the report.
    logging.getLogger("her_sdk").setLevel(logging.ERROR)
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
    ap.add_argument("--sizes", default="1,2,4,8", help="concurrent turns ('': skip throughput)")
    ap.add_argument("--ceiling", default="1,2,4,8,16", help="N for raw vs SDK ('': skip)")
    ap.add_argument("--runs", type=int, default=3, help="repeats (medians are reported)")
    ap.add_argument("--background", type=int, default=7, help="background turns under load")
    ap.add_argument("--grpc", type=int, default=64, help="concurrent gRPC streams (0: skip)")
    ap.add_argument("--no-latency", action="store_true", help="skip time to first speech")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument(
        "--cache-any-prefix",
        action="store_true",
        help="re-use every cached prompt token (LlamaBackend(cache_any_prefix=True))",
    )
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    ceiling_sizes = [int(x) for x in args.ceiling.split(",") if x]
    print(cpu_header(), flush=True)
    # The bare embedded model (adapter=None), as in the README's figures: the engine, not the
    # adapter, is what this measures.
    model = load_model(
        args.model,
        adapter=None,
        dry_multiplier=0.0,  # the raw ceiling's sampler chain: no DRY, no turn shape
        turn_shape=None,
        n_ctx=args.n_ctx,
        max_sequences=max(8, *sizes, *ceiling_sizes),
        cache_any_prefix=args.cache_any_prefix,
    )
    print(llama_header(), flush=True)
    print(f"{model!r}, {model.n_threads} threads", flush=True)
    results: dict = {
        "cpu": cpu_header(),
        "llama_cpp": llama_header(),
        "model": str(model.path),
        "tokens": args.tokens,
        "cache_any_prefix": args.cache_any_prefix,
    }
    results["throughput"] = throughput(model, sizes, args.tokens, args.runs) if sizes else []
    if ceiling_sizes:
        results["ceiling"] = ceiling(model, ceiling_sizes, args.tokens, args.runs)
    if not args.no_latency:
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
            f"{loaded:.2f} s as player-facing ({loaded / idle:.2f}x idle), {same:.2f} s at "
            f"their priority ({same / idle:.2f}x)",
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
