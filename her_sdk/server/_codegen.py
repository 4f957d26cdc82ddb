"""Regenerate the committed Python stubs from `protos/her/v1/her.proto` (a developer tool).

    .venv/bin/python -m her_sdk.server._codegen          # rewrite her_sdk/server/_pb/*.py
    .venv/bin/python -m her_sdk.server._codegen --check  # exit 1 if the stubs are stale

The stubs are committed (so installing her-sdk[grpc] needs no protoc); `tests/test_grpc_stubs.py`
fails when they no longer match the proto. Needs grpcio-tools, which the runtime does not.
The generated `her_pb2_grpc.py` imports `her.v1.her_pb2` absolutely; it is rewritten to a relative
import so the stubs live inside this package.

"Match" ignores the lines that only carry the generator's own version (another patch release of
grpcio-tools writes another number there): the stubs' version is the lower bound of the grpc
extra, which tests/test_grpc_stubs.py checks separately.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protos"
PROTO = "her/v1/her.proto"
OUT = Path(__file__).resolve().parent / "_pb"
FILES = ("her_pb2.py", "her_pb2.pyi", "her_pb2_grpc.py")


# The generator's version, written into the stubs: `# Protobuf Python Version: 7.35.1`,
# `GRPC_GENERATED_VERSION = '1.85.1'` and the numbers of `ValidateProtobufRuntimeVersion(...)`.
_GENERATOR_VERSION = re.compile(
    r"(?m)^(# Protobuf Python Version: |GRPC_GENERATED_VERSION = )\S+$"
    r"|(ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,)\s*\d+,\s*\d+,\s*\d+,"
)


def _content(text: str) -> str:
    """The stub text without its generator's version numbers."""
    return _GENERATOR_VERSION.sub(lambda m: (m.group(1) or m.group(2)) + "<version>", text)


def generate(proto_dir: Path = PROTO_DIR) -> dict[str, str]:
    """Run protoc (from grpcio-tools) on the proto; return {file name: text}."""
    from grpc_tools import protoc  # dev-only dependency

    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{proto_dir}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(proto_dir / PROTO),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto_dir / PROTO}")
        gen = Path(tmp) / "her" / "v1"
        out = {name: (gen / name).read_text(encoding="utf-8") for name in FILES}
    out["her_pb2_grpc.py"] = out["her_pb2_grpc.py"].replace(
        "from her.v1 import her_pb2 as", "from . import her_pb2 as"
    )
    return out


def stale(proto_dir: Path = PROTO_DIR) -> list[str]:
    """Names of committed stub files whose content differs from freshly generated ones."""
    fresh = generate(proto_dir)
    return [
        n
        for n, text in fresh.items()
        if not (OUT / n).exists()
        or _content((OUT / n).read_text(encoding="utf-8")) != _content(text)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m her_sdk.server._codegen",
        description="Regenerate her_sdk/server/_pb/*.py from protos/her/v1/her.proto "
        "(needs grpcio-tools, in the test extra).",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the stubs are stale"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.check:
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
