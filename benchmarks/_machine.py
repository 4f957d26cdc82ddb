"""What the benchmarks print about the machine they ran on (their figures depend on it)."""

from __future__ import annotations

import os
import platform


def cpu_header() -> str:
    """The CPU's model name, cores and vector extensions, as /proc/cpuinfo gives them."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw"]
    wanted += ["avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"]
    ext = " ".join(f for f in wanted if f in flags) or "unknown"
    model = model or platform.processor() or platform.machine()
    return f"CPU: {model}, {os.cpu_count()} cores; vector extensions: {ext}"


def llama_header() -> str:
    """The CPU features llama.cpp's build compiled in and detected (its kernels follow them: an
    AVX2-only build on an AVX-512 CPU runs as an AVX2 CPU would)."""
    try:
        import llama_cpp

        info = llama_cpp.llama_print_system_info().decode(errors="replace")
    except Exception as exc:  # a benchmark without llama.cpp still reports
        return f"llama.cpp: unavailable ({type(exc).__name__})"
    cpu = next((part for part in info.split("\n") if "CPU :" in part), info)
    feats = [f.split("=")[0].strip() for f in cpu.split("|") if f.strip().endswith("= 1")]
    return "llama.cpp CPU kernels: " + " ".join(f.replace("CPU : ", "") for f in feats)
