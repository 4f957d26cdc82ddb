"""`her bundle`: the folder's size and its cold start, beside `her serve` from the virtualenv.

    .venv/bin/python benchmarks/bundle.py                    # embedded model, 5 starts each
    .venv/bin/python benchmarks/bundle.py --runs 3 --llama-lib build/llama-variants/bin

1. Build time: freezing with PyInstaller into an empty cache, then a second bundle from the
   cache (what a game's build script pays on a change of her_sdk, and on a change of model).
2. Size: the runtime (everything but models/; target < 150 MB) and the model, and the largest
   parts of `_internal/`.
3. Cold start, from the process start to the port file (the ports accept) and to "ready" (the
   model loaded: GET /healthz answers 200), for the bundle started with a clean environment and
   for `her serve` from the virtualenv, alternated so machine noise hits both; median and max.
   The first start of each reads the model from disk; the page cache serves the rest.
4. The bundle's memory (VmHWM) once ready, with the default --max-sequences (8) and with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from her_sdk.bundle import build_bundle

MB = 2**20


def start(cmd: list[str], env: dict[str, str], work: Path) -> tuple[float, float, int]:
    """(seconds to the port file, seconds to ready, peak RSS in kB) of one cold start."""
    ports = work / "ports.json"
    ports.unlink(missing_ok=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*cmd, "--port", "0", "--http-port", "0", "--port-file", str(ports)]
        + ["--log-file", str(work / "server.log")],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not ports.exists():
            if proc.poll() is not None:
                raise SystemExit(f"the server exited: {proc.stderr.read()}")
            time.sleep(0.005)
        t_port = time.monotonic() - t0
        url = json.loads(ports.read_text())["http"]
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=5):
                    break
            except urllib.error.HTTPError:
                time.sleep(0.01)
        t_ready = time.monotonic() - t0
        with open(f"/proc/{proc.pid}/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
        return t_port, t_ready, hwm
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--llama-lib", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="her-bundle-bench-"))
    try:
        t = time.monotonic()
        first = build_bundle(work / "a", cache=work / "cache", llama_lib=args.llama_lib)
        t_fresh = time.monotonic() - t
        t = time.monotonic()
        build_bundle(work / "b", cache=work / "cache", llama_lib=args.llama_lib, name="npc")
        t_cached = time.monotonic() - t
        print(f"build: {t_fresh:.1f} s frozen fresh, {t_cached:.1f} s from the cache")
        print(
            f"size: runtime {first.runtime_bytes / MB:.1f} MB + model {first.model_bytes / MB:.1f}"
            f" MB; CPU: {'variants' if first.cpu_variants else first.cpu_requires}"
        )
        internal = first.path / "_internal"
        parts = []
        for p in internal.iterdir():
            size = (
                sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
                if p.is_dir()
                else (0 if p.is_symlink() else p.stat().st_size)
            )
            parts.append((size, p.name))
        top = ", ".join(f"{n} {s / MB:.1f}" for s, n in sorted(parts, reverse=True)[:8])
        print(f"largest in _internal/ (MB): {top}")

        clean = {"PATH": "/usr/bin:/bin", "HOME": str(work)}
        her = shutil.which("her", path=str(Path(sys.executable).parent))
        if her is None:
            raise SystemExit("no `her` next to this Python")
        venv_env = {**os.environ}
        runs: dict[str, list[tuple[float, float, int]]] = {"bundle": [], "her serve": []}
        for _ in range(args.runs):
            runs["bundle"].append(start([str(first.executable)], clean, work))
            runs["her serve"].append(start([her, "serve"], venv_env, work))
        for name, rs in runs.items():
            ports = [r[0] for r in rs]
            ready = [r[1] for r in rs]
            print(
                f"{name:10s} port file: median {statistics.median(ports):.2f} s, max "
                f"{max(ports):.2f} s; ready: median {statistics.median(ready):.2f} s, max "
                f"{max(ready):.2f} s (first {ready[0]:.2f} s)"
            )
        _, _, hwm8 = runs["bundle"][-1]
        _, _, hwm2 = start([str(first.executable), "--max-sequences", "2"], clean, work)
        print(f"bundle memory when ready: {hwm8 / 1024:.0f} MB (8 sequences), ", end="")
        print(f"{hwm2 / 1024:.0f} MB (--max-sequences 2)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
