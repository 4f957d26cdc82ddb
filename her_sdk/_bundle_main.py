"""The executable of a bundle (`her bundle`): `her serve`, frozen, as a game's sidecar.

It runs `her_sdk._serve_cli` (the same flags, the same exit codes as `her serve`) after three
things `her serve` does not need:

1. the CPU is checked against the instruction sets the bundled llama.cpp was built for
   (`bundle.json`, written by `her bundle`); a CPU without one ends it with exit code 4 and one
   `error:` line naming what is missing, before llama.cpp is loaded (which would die of SIGILL
   in the middle of a turn);
2. a llama.cpp build with CPU variants (GGML_BACKEND_DL) gets the best variant for this CPU
   loaded from the bundle's library folder;
3. without `--model`, it serves the model and adapter the manifest names, beside it.

PyInstaller freezes this module as the program (`her_sdk.bundle` excludes the rest of the CLI
and everything of training and export); it is not used by the SDK otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from . import _cpu

__all__ = ["main"]

EXIT_ERROR = 1  # the codes of her_sdk._serve_cli, which this module imports only later
EXIT_CPU = 4


def _die(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _home() -> Path:
    if not getattr(sys, "frozen", False):
        _die("her_sdk._bundle_main runs inside a bundle (made by `her bundle`)", EXIT_ERROR)
    return Path(sys.executable).resolve().parent


def _manifest(home: Path) -> dict[str, Any]:
    path = home / "bundle.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["llama_cpp"]["cpu_requires"]
        data["model"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _die(f"{path}: not a bundle manifest ({exc}); rebuild the folder with her bundle", 1)
    return data


def _check_cpu(manifest: dict[str, Any]) -> None:
    missing = _cpu.missing_features(manifest["llama_cpp"]["cpu_requires"])
    if missing:
        _die(
            f"this CPU lacks {_cpu.describe(missing)}, which this build of llama.cpp needs "
            f"(it needs {_cpu.describe(manifest['llama_cpp']['cpu_requires'])}); the game's "
            "developer can make a bundle for every x86-64 CPU with llama.cpp's CPU variants",
            EXIT_CPU,
        )


def _load_cpu_variants() -> None:
    """Register llama.cpp's CPU backend: the variant that scores best on this CPU."""
    import ctypes

    from llama_cpp._ctypes_extensions import load_shared_library

    from ._backends._llama_engine import import_llama_cpp

    llama_cpp = import_llama_cpp()  # first: llama.cpp's own logs then go to the log, not stderr

    libdir = Path(llama_cpp.__file__).resolve().parent / "lib"
    ggml = load_shared_library("ggml", libdir)
    ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_load_all_from_path.restype = None
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    if not ggml.ggml_backend_dev_by_type(0):  # GGML_BACKEND_DEVICE_TYPE_CPU
        ggml.ggml_backend_load_all_from_path(str(libdir).encode())
    if not ggml.ggml_backend_dev_by_type(0):
        _die("no CPU variant of the bundled llama.cpp runs on this CPU", EXIT_CPU)


def main(argv: list[str] | None = None, home: Path | None = None) -> None:
    home = home or _home()
    manifest = _manifest(home)
    args = sys.argv[1:] if argv is None else argv
    if "--help" not in args:  # the help works on any CPU
        _check_cpu(manifest)
        if manifest["llama_cpp"].get("cpu_variants"):
            _load_cpu_variants()

    import typer

    from ._serve_cli import SERVE_HELP, serve_command

    def bundled_model(settings):
        """Without --model: the model (and adapter) this bundle carries."""
        if settings.model is not None:
            return settings
        update = {"model": str(home / manifest["model"])}
        if settings.adapter is None:
            adapter = manifest.get("adapter")
            update["adapter"] = str(home / adapter) if adapter else "none"
        return type(settings)(**{**dict(settings), **update})

    doc = SERVE_HELP + (
        "Exit code 4: this CPU lacks an instruction set the bundled llama.cpp needs.\n\n"
        f"Without --model it serves this bundle's {manifest['model']}"
        + (f" with the adapter {manifest['adapter']}" if manifest.get("adapter") else "")
        + "."
    )
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(serve_command(defaults=bundled_model, doc=doc))
    app(args=argv, prog_name=Path(sys.argv[0]).name)


if __name__ == "__main__":
    main()
