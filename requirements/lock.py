"""Write and check the dependency locks in this folder (a developer tool, run by the Makefile).

Usage:
    python requirements/lock.py write requirements/py311-linux-x86_64.txt   # `make lock`
    python requirements/lock.py check requirements/py311-linux-x86_64.txt   # after every install

A lock is a pip constraints file: every distribution of a known-good environment at its exact
version, for one Python minor version and platform (the file name says which). `make demo` and
`make test` install with it, so two installs on two days get the same versions; `make lock`
makes it anew from the newest releases pyproject's ranges allow, after the whole suite passed on
them. `check` compares the running interpreter's installed distributions with the lock.

Local version labels (`torch==2.13.0+cpu`) are written without the label: the label names a
build of one machine (CPU or CUDA), the version is what the project was tested with.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

HEADER = """\
# Exact versions `make demo` and `make test` install for this Python and platform (a pip
# constraints file). Made by `make lock` after the whole suite passed on them; do not edit by
# hand. `make test-latest` runs the suite on the newest releases pyproject.toml allows.
"""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _public(version: str) -> str:
    return version.split("+", 1)[0]


def installed() -> dict[str, str]:
    """{normalised name: version} of every distribution this interpreter sees, but this project."""
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and _norm(name) != "her-sdk":
            out[_norm(name)] = _public(dist.version)
    return out


def read(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            if not version:
                raise SystemExit(f"{path}: not an exact pin: {line!r}")
            pins[_norm(name)] = version.strip()
    return pins


def write(path: Path) -> int:
    pins = installed()
    body = "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))
    path.write_text(HEADER + body, encoding="utf-8")
    print(f"wrote {path}: {len(pins)} distributions")
    return 0


def check(path: Path) -> int:
    pins, have = read(path), installed()
    wrong = [
        f"{n} {have[n]} (lock: {pins[n]})" for n in sorted(have) if pins.get(n, have[n]) != have[n]
    ]
    extra = sorted(n for n in have if n not in pins)
    if extra:
        # A platform-only dependency (a CUDA build of torch pulls nvidia-*): not an error.
        print(f"note: installed but not in {path.name}: {', '.join(extra)}", file=sys.stderr)
    if wrong:
        print(f"{path}: installed versions differ from the lock:", file=sys.stderr)
        for w in wrong:
            print(f"  {w}", file=sys.stderr)
        return 1
    print(f"{len(have)} distributions match {path.name}")
    return 0


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip())
        return 0
    if len(argv) != 2 or argv[0] not in ("write", "check"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return write(Path(argv[1])) if argv[0] == "write" else check(Path(argv[1]))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
