"""Regenerate the committed Python stubs from `protos/her/v1/her.proto` (a developer tool).

    .venv/bin/python -m her_sdk.server._codegen          # rewrite her_sdk/server/_pb/*.py
    .venv/bin/python -m her_sdk.server._codegen --check  # exit 1 if the stubs are stale

The stubs are committed (so installing her-sdk[grpc] needs no protoc); `tests/test_grpc_stubs.py`
fails when they no longer match the proto. Needs grpcio-tools, which the runtime does not.
The generated `her_pb2_grpc.py` imports `her.v1.her_pb2` absolutely; it is rewritten to a relative
import so the stubs live inside this package.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protos"
PROTO = "her/v1/her.proto"
OUT = Path(__file__).resolve().parent / "_pb"
FILES = ("her_pb2.py", "her_pb2.pyi", "her_pb2_grpc.py")


def generate() -> dict[str, str]:
    """Run protoc (from grpcio-tools) on the proto; return {file name: text}."""
    from grpc_tools import protoc  # dev-only dependency

    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(PROTO_DIR / PROTO),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO_DIR / PROTO}")
        gen = Path(tmp) / "her" / "v1"
        out = {name: (gen / name).read_text(encoding="utf-8") for name in FILES}
    out["her_pb2_grpc.py"] = out["her_pb2_grpc.py"].replace(
        "from her.v1 import her_pb2 as", "from . import her_pb2 as"
    )
    return out


def stale() -> list[str]:
    """Names of committed stub files that differ from freshly generated ones."""
    fresh = generate()
    return [
        n
        for n, text in fresh.items()
        if not (OUT / n).exists() or (OUT / n).read_text(encoding="utf-8") != text
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--check" in argv:
        bad = stale()
        if bad:
            print("stale stubs (run python -m her_sdk.server._codegen):", ", ".join(bad))
            return 1
        print("stubs match the proto")
        return 0
    for name, text in generate().items():
        (OUT / name).write_text(text, encoding="utf-8")
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
