"""What a bundle says about itself: LICENSES.txt (every component, its licence and the texts
found) and README.txt (for the game developer who ships the folder).

`her_sdk.bundle` builds the folder and calls these last, on the staged result; this module only
writes text.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from . import _cpu
from ._model import default_adapter_path
from ._version import __version__

__all__ = ["lib_suffixes", "write_licenses", "write_readme"]


def lib_suffixes() -> tuple[str, ...]:
    """File suffixes of shared libraries on this platform."""
    if sys.platform == "win32":
        return (".dll",)
    if sys.platform == "darwin":
        return (".dylib",)
    return (".so",)


# -- licences ------------------------------------------------------------------------------------

LLAMA_CPP_LICENSE = """MIT License

Copyright (c) 2023-2026 The ggml authors

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

GEMMA_NOTICE = (
    "Gemma is provided under and subject to the Gemma Terms of Use found at "
    "ai.google.dev/gemma/terms"
)

# Shared libraries of the operating system that PyInstaller copies beside the Python runtime
# (by file-name prefix). Their licences as their projects publish them; a distribution may add
# its own patches, so check your build machine's packages before you ship.
_SYSTEM_LIBS = {
    "libpython": "Python (PSF-2.0): the interpreter",
    "libgomp": "GCC OpenMP runtime (GPL-3.0-or-later WITH GCC-exception-3.1)",
    "libstdc++": "GCC C++ runtime (GPL-3.0-or-later WITH GCC-exception-3.1)",
    "libgcc_s": "GCC runtime (GPL-3.0-or-later WITH GCC-exception-3.1)",
    "libssl": "OpenSSL (Apache-2.0 for 3.x; OpenSSL/SSLeay for 1.x)",
    "libcrypto": "OpenSSL (Apache-2.0 for 3.x; OpenSSL/SSLeay for 1.x)",
    "libffi": "libffi (MIT)",
    "libz": "zlib (Zlib)",
    "libbz2": "bzip2 (bzip2-1.0.6)",
    "liblzma": "XZ Utils liblzma (0BSD / public domain)",
    "libsqlite3": "SQLite (public domain)",
    "libexpat": "Expat (MIT)",
    "libuuid": "util-linux libuuid (BSD-3-Clause)",
    "libmpdec": "mpdecimal (BSD-2-Clause)",
    "libtinfo": "ncurses (X11/MIT)",
    "libncursesw": "ncurses (X11/MIT)",
    "libpanelw": "ncurses (X11/MIT)",
    "libcrypt": "libxcrypt (LGPL-2.1-or-later)",
    "libnsl": "libnsl (LGPL-2.1-or-later)",
    "libgdbm": "GNU dbm (GPL-3.0-or-later)",
}


def _dist_license(dist: md.Distribution) -> str:
    fields = dist.metadata.json  # lower-case keys; multiple-use fields as lists
    expr = fields.get("license_expression")
    if isinstance(expr, str) and expr:
        return expr
    lic = fields.get("license")
    lic = lic.strip() if isinstance(lic, str) else ""
    if lic and len(lic) < 80 and "\n" not in lic:
        return lic
    classifiers = fields.get("classifier") or []
    found = [c.split("::")[-1].strip() for c in classifiers if c.startswith("License ::")]
    if found:
        return "; ".join(found)
    return "see its licence text below" if lic else "not stated in its metadata"


def _dist_license_texts(dist: md.Distribution) -> list[tuple[str, str]]:
    texts = []
    for f in dist.files or []:
        name = f.name.upper()
        if name.startswith(("LICENSE", "LICENCE", "COPYING", "NOTICE")) and (
            "dist-info" in str(f) or "licenses" in str(f).lower()
        ):
            try:
                text = Path(str(dist.locate_file(f))).read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            texts.append((str(f), text))
    return texts


def _included_distributions(modules: set[str]) -> list[md.Distribution]:
    tops = {m.split(".")[0] for m in modules}
    mapping = md.packages_distributions()
    names = {d for t in tops for d in mapping.get(t, [])}
    dists = []
    seen = set()
    for n in sorted(names, key=str.lower):
        try:
            d = md.distribution(n)
        except md.PackageNotFoundError:
            continue
        key = (d.metadata["Name"] or n).lower()
        if key not in seen and not key.startswith("her-sdk"):
            seen.add(key)
            dists.append(d)
    return dists


def write_licenses(
    out: Path,
    modules: set[str],
    model: Path,
    adapter: Path | None,
    gemma: bool,
) -> None:
    lines = [
        "THIRD-PARTY COMPONENTS OF THIS FOLDER AND THEIR LICENCES",
        "=" * 56,
        "",
        "Made by `her bundle` (her_sdk). Components, then the licence texts found on the",
        "machine that built it. Ship this file with the folder.",
        "",
        "Program",
        "-------",
        f"- her_sdk {__version__}: MIT (the server code, the HER format, the LoRA adapter's code)",
        f"- Python {platform.python_version()}: PSF-2.0 (the interpreter and its standard library)",
        "- llama.cpp (ggml), _internal/llama_cpp/lib/, from llama-cpp-python: MIT (text below)",
    ]
    dists = _included_distributions(modules)
    for d in dists:
        lines.append(f"- {d.metadata['Name']} {d.version}: {_dist_license(d)}")
    # Links point into a package's folder (llama_cpp/lib, numpy.libs): those are the package's.
    libs = sorted(
        p.name
        for p in (out / "_internal").glob("*")
        if p.is_file() and not p.is_symlink() and any(s in p.name for s in lib_suffixes())
    )
    system = []
    for lib in libs:
        label = next((v for k, v in _SYSTEM_LIBS.items() if lib.startswith(k)), None)
        system.append(f"- {lib}: {label or 'an operating-system library; see its package'}")
    if system:
        lines += ["", "Operating-system libraries copied beside the runtime", "-" * 52, *system]
    lines += ["", "Model", "-----"]
    if gemma:
        lines += [
            f"- {model.name}: Gemma 3 270M by Google, quantized (Q4_K_M).",
            f"  {GEMMA_NOTICE}.",
            "  The Gemma Terms of Use (and its Prohibited Use Policy) bind whoever distributes",
            "  the model or a model derivative: ship a copy of the terms with your game, pass",
            "  their use restrictions on to your players, and keep this notice.",
        ]
    else:
        lines.append(f"- {model.name}: your model; its licence is yours to state here.")
    if adapter is not None:
        if adapter == default_adapter_path():
            lines += [
                f"- {adapter.name}: her_sdk's LoRA adapter for Gemma 3 270M (MIT as her_sdk's",
                "  code; as a Gemma model derivative, also under the Gemma Terms of Use).",
            ]
        else:
            lines.append(f"- {adapter.name}: your adapter; its licence is yours to state here.")
    lines += [
        "",
        "",
        "LICENCE TEXTS",
        "=" * 13,
        "",
        "llama.cpp (ggml)",
        "-" * 16,
        LLAMA_CPP_LICENSE,
    ]
    py_license = (
        Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    )
    for candidate in (py_license / "LICENSE.txt", Path(sys.base_prefix) / "LICENSE.txt"):
        if candidate.is_file():
            text = candidate.read_text(encoding="utf-8", errors="replace")
            lines += ["", "Python", "-" * 6, text]
            break
    for d in dists:
        for path, text in _dist_license_texts(d):
            where = re.sub(r"^[^/]*\.dist-info/(licenses/)?", "", path)
            lines += ["", f"{d.metadata['Name']} {d.version} ({where})", "-" * 40, text]
    (out / "LICENSES.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_readme(out: Path, manifest: dict[str, Any]) -> None:
    exe = manifest["executable"]
    req = manifest["llama_cpp"]["cpu_requires"]
    if manifest["llama_cpp"]["cpu_variants"]:
        cpu = "any x86-64 CPU: llama.cpp picks its fastest variant for the player's CPU at start."
    else:
        cpu = (
            f"a CPU with {_cpu.describe(req)}. On a CPU without them the server exits at once "
            "with code 4 and one line naming what is missing (it never crashes mid-game)."
            if req
            else "any x86-64 CPU."
        )
    files = manifest["model"] + (f" + {manifest['adapter']}" if manifest["adapter"] else "")
    title = f"{exe}: her_sdk's NPC server, self-contained"
    text = f"""\
    {title} (her_sdk {manifest["her_sdk"]}, {manifest["platform"]})
    {"=" * 88}

    This folder runs without Python or anything else installed. Ship it whole, as it is:
    {exe} finds its runtime in _internal/ and its model in models/ beside it.

    Start it from the game (one server per game session):

        {exe} --port 0 --http-port 0 --port-file PATH --exit-with-parent --log-file PATH

    - --port 0 / --http-port 0: free ports; gRPC and JSON (the Connect protocol) on 127.0.0.1.
    - --port-file PATH: once the ports accept, the server writes (atomically)
      {{"grpc": "127.0.0.1:PORT", "http": "http://127.0.0.1:PORT"}} there. Calls made
      before the model is loaded answer UNAVAILABLE (HTTP 503); poll GetServerInfo or
      GET /healthz (200 when ready) or gRPC health (SERVING).
    - --exit-with-parent: the server stops when the game's process ends, even if the game
      crashed. Otherwise stop it with SIGTERM (Windows: end the process) or kill it.
    - --log-file PATH: its log goes there; stderr then carries only the error line of a
      failed start.
    - --n-threads N: CPU threads for the model (default: all cores; leave some to the game).
    - Every flag of `her serve` works (`{exe} --help`); each can also be set in the
      environment as HER_SERVER_<FLAG>.

    Exit codes: 0 stopped; 1 could not start (bad setting, port in use, unwritable file);
    2 bad command line; 3 model or adapter missing or not loadable; 4 this CPU lacks an
    instruction set llama.cpp needs. A failed start prints exactly one line, "error: ...",
    on stderr.

    {{needs}}

    Model: {files}; `{exe} --model OTHER.gguf` serves another.
    The API: her.v1.HerService (protos/her/v1/her.proto in her_sdk); clients for Godot,
    Unity and Python are in her_sdk's examples/. Licences: LICENSES.txt (ship it too).
    """
    needs = textwrap.fill(
        f"What a player's machine needs: {cpu} Memory: the model ({manifest['model_mb']} MB, "
        "mapped) plus the KV cache of each turn decoded at once (--max-sequences, default 8, "
        "each holding --n-ctx tokens): a game with one or two NPCs talking at once passes "
        "--max-sequences 2. Disk: this folder. Nothing else: no Python, no compiler, no network.",
        width=88,
    )
    text = textwrap.dedent(text).replace("{needs}", needs)
    (out / "README.txt").write_text(text, encoding="utf-8")
