"""Instruction sets: which ones this x86-64 CPU has, and which ones a llama.cpp build needs.

A bundle (`her bundle`) carries one build of llama.cpp. Built the default way (`-march=native`,
llama-cpp-python's default) it uses every instruction set of the machine that built it, and a
player's CPU without one of them would die of SIGILL in the middle of a turn. So the bundle
records what its build needs (`ggml_cpu_has_*`, read from the build at bundle time) and its
executable checks the CPU before it loads llama.cpp, refusing with one line that names what is
missing. A build with llama.cpp's CPU variants (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS) needs
nothing beyond x86-64: it picks its best variant at run time.

How the CPU is read, without executing machine code of our own:
- Linux: the `flags` line of /proc/cpuinfo (what the CPU has *and* the kernel enabled);
- macOS (Intel): the `machdep.cpu.features` / `machdep.cpu.leaf7_features` sysctls;
- Windows: `IsProcessorFeaturePresent`, which knows SSE3, SSSE3, AVX, AVX2 and AVX512F only;
  the others are then unknown, and an unknown instruction set is not a reason to refuse.
macOS and Windows are untested (no such machine here). This module is stdlib-only: it runs
before anything heavy is imported.
"""

from __future__ import annotations

import ctypes
import platform
import sys
from collections.abc import Iterable

__all__ = ["GGML_FEATURES", "cpu_flags", "describe", "missing_features", "required_by_build"]

# ggml_cpu_has_<name>() -> the name of that instruction set in /proc/cpuinfo's flags, which is
# the vocabulary of this module (Linux calls SSE3 "pni").
GGML_FEATURES: dict[str, str] = {
    "sse3": "pni",
    "ssse3": "ssse3",
    "avx": "avx",
    "avx2": "avx2",
    "f16c": "f16c",
    "fma": "fma",
    "bmi2": "bmi2",
    "avx_vnni": "avx_vnni",
    "avx512": "avx512f",
    "avx512_vbmi": "avx512vbmi",
    "avx512_vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16",
}  # not amx_int8: llama.cpp uses AMX only after asking the OS for it at run time

_NAMES = {  # how a player or a developer knows them
    "pni": "SSE3",
    "ssse3": "SSSE3",
    "avx": "AVX",
    "avx2": "AVX2",
    "f16c": "F16C",
    "fma": "FMA",
    "bmi2": "BMI2",
    "avx_vnni": "AVX-VNNI",
    "avx512f": "AVX-512 (F)",
    "avx512vbmi": "AVX-512 VBMI",
    "avx512_vnni": "AVX-512 VNNI",
    "avx512_bf16": "AVX-512 BF16",
}

# macOS sysctl words -> /proc/cpuinfo names
_MACOS = {
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "AVX1.0": "avx",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX512F": "avx512f",
    "AVX512VBMI": "avx512vbmi",
    "AVX512VNNI": "avx512_vnni",
}

# Windows PF_* constants of IsProcessorFeaturePresent -> /proc/cpuinfo names
_WINDOWS = {13: "pni", 36: "ssse3", 39: "avx", 40: "avx2", 41: "avx512f"}


def describe(flags: Iterable[str]) -> str:
    """Names a person recognises: "AVX2, FMA"."""
    return ", ".join(_NAMES.get(f, f.upper()) for f in flags)


def _is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> dict[str, bool] | None:
    """The instruction sets this module can tell about, name -> present; None when it can tell
    nothing (not x86-64, or an OS it cannot ask)."""
    if not _is_x86_64():
        return None
    if sys.platform.startswith("linux"):
        try:
            with open(cpuinfo, encoding="ascii", errors="ignore") as f:
                for line in f:
                    if line.startswith("flags"):
                        have = set(line.partition(":")[2].split())
                        return {name: name in have for name in _NAMES}
        except OSError:
            pass
        return None
    if sys.platform == "darwin":  # pragma: no cover - untested here (no Mac)
        return _macos_flags()
    if sys.platform == "win32":  # pragma: no cover - untested here (no Windows)
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        return {name: bool(kernel32.IsProcessorFeaturePresent(pf)) for pf, name in _WINDOWS.items()}
    return None


def _macos_flags() -> dict[str, bool] | None:  # pragma: no cover - untested here (no Mac)
    libc = ctypes.CDLL("/usr/lib/libc.dylib")
    words: set[str] = set()
    for key in (b"machdep.cpu.features", b"machdep.cpu.leaf7_features"):
        size = ctypes.c_size_t(0)
        if libc.sysctlbyname(key, None, ctypes.byref(size), None, 0) != 0:
            return None
        buf = ctypes.create_string_buffer(size.value)
        if libc.sysctlbyname(key, buf, ctypes.byref(size), None, 0) != 0:
            return None
        words.update(buf.value.decode("ascii", "ignore").split())
    return {name: word in words for word, name in _MACOS.items()}


def missing_features(required: Iterable[str], flags: dict[str, bool] | None = None) -> list[str]:
    """Those of `required` (/proc/cpuinfo names) this CPU is known to lack. What cannot be
    told (another OS, another architecture) is not counted as missing."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return []
    return [f for f in required if flags.get(f) is False]


def required_by_build(libggml_cpu: ctypes.CDLL) -> list[str]:
    """The instruction sets a llama.cpp CPU backend was compiled for (its `ggml_cpu_has_*`
    answer what the compiler was told to use, not what this machine has)."""
    needed = []
    for ggml_name, flag in GGML_FEATURES.items():
        fn = getattr(libggml_cpu, f"ggml_cpu_has_{ggml_name}", None)
        if fn is not None:
            fn.restype = ctypes.c_int
            fn.argtypes = []
            if fn():
                needed.append(flag)
    return needed
