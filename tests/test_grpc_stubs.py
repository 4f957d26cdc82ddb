"""The committed stubs match protos/her/v1/her.proto, pyproject's version ranges match what the
stubs require, and every element of the proto is documented."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools", reason="needs grpcio-tools (the test extra)")

from her_sdk.server import _codegen

ROOT = Path(__file__).resolve().parents[1]


def test_committed_stubs_match_the_proto():
    assert _codegen.stale() == [], "run: python -m her_sdk.server._codegen"


def test_a_changed_proto_makes_the_stubs_stale(tmp_path):
    proto = tmp_path / _codegen.PROTO
    proto.parent.mkdir(parents=True)
    text = (_codegen.PROTO_DIR / _codegen.PROTO).read_text()
    proto.write_text(
        text + "\n// A message the committed stubs lack.\nmessage Extra { string x = 1; }\n"
    )
    assert set(_codegen.stale(tmp_path)) >= {"her_pb2.py", "her_pb2.pyi"}


def test_only_the_generator_version_lines_are_ignored():
    pb2 = (_codegen.OUT / "her_pb2.py").read_text()
    grpc_py = (_codegen.OUT / "her_pb2_grpc.py").read_text()
    # Another patch release of grpcio-tools / protoc writes other numbers there: same content.
    other_pb2 = re.sub(r"(Protobuf Python Version: )[\d.]+", r"\g<1>7.99.9", pb2)
    other_pb2 = re.sub(r"(Domain\.PUBLIC,)\s*\d+,\s*\d+,\s*\d+,", r"\1 7, 99, 9,", other_pb2)
    other_grpc = re.sub(
        r"GRPC_GENERATED_VERSION = '[\d.]+'", "GRPC_GENERATED_VERSION = '1.99.9'", grpc_py
    )
    assert other_pb2 != pb2 and other_grpc != grpc_py
    assert _codegen._content(other_pb2) == _codegen._content(pb2)
    assert _codegen._content(other_grpc) == _codegen._content(grpc_py)
    # ...but nothing else is: a changed service name or descriptor byte is a difference.
    assert _codegen._content(grpc_py.replace("HerService", "HisService")) != _codegen._content(
        grpc_py
    )
    assert _codegen._content(pb2.replace("her.v1", "her.v2")) != _codegen._content(pb2)


def test_codegen_help_writes_nothing(capsys):
    before = {n: (_codegen.OUT / n).stat().st_mtime_ns for n in _codegen.FILES}
    with pytest.raises(SystemExit) as exit_:
        _codegen.main(["--help"])
    assert exit_.value.code == 0 and "--check" in capsys.readouterr().out
    assert {n: (_codegen.OUT / n).stat().st_mtime_ns for n in _codegen.FILES} == before


def _lower_bound(spec: list[str], package: str) -> tuple[int, ...]:
    for item in spec:
        m = re.fullmatch(rf"{re.escape(package)}>=([\d.]+),<(\d+)", item.replace(" ", ""))
        if m:
            return tuple(int(x) for x in m.group(1).split(".")), int(m.group(2))
    raise AssertionError(f"{package} has no '>=X,<Y' range in the grpc extra: {spec}")


def test_pyproject_ranges_match_what_the_stubs_require():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+")
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["grpc"]
    pb2 = (_codegen.OUT / "her_pb2.py").read_text()
    m = re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", pb2)
    gencode = tuple(int(x) for x in m.groups())
    low, upper_major = _lower_bound(extra, "protobuf")
    # protobuf refuses gencode newer than the runtime or of another major version.
    assert low >= gencode and low[0] == gencode[0] and upper_major == gencode[0] + 1
    grpc_gen = re.search(
        r"GRPC_GENERATED_VERSION = '([\d.]+)'", (_codegen.OUT / "her_pb2_grpc.py").read_text()
    )
    need = tuple(int(x) for x in grpc_gen.group(1).split("."))
    for pkg in ("grpcio", "grpcio-health-checking", "grpcio-reflection"):
        low, _ = _lower_bound(extra, pkg)
        assert low >= need, (pkg, low, need)


def test_every_service_rpc_message_field_and_enum_value_is_documented():
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        assert (
            protoc.main(
                [
                    "protoc",
                    f"-I{_codegen.PROTO_DIR}",
                    "--include_source_info",
                    f"--descriptor_set_out={out}",
                    _codegen.PROTO,
                ]
            )
            == 0
        )
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    f = fds.file[0]
    documented = {
        tuple(loc.path)
        for loc in f.source_code_info.location
        if loc.leading_comments.strip() or loc.trailing_comments.strip()
    }
    missing = []

    def need(path: tuple[int, ...], what: str) -> None:
        if path not in documented:
            missing.append(what)

    # Field numbers of FileDescriptorProto / DescriptorProto / ServiceDescriptorProto.
    for i, svc in enumerate(f.service):
        need((6, i), svc.name)
        for j, m in enumerate(svc.method):
            need((6, i, 2, j), f"{svc.name}.{m.name}")

    def walk(msg, path: tuple[int, ...], prefix: str) -> None:
        if msg.options.map_entry:
            return
        for k, field in enumerate(msg.field):
            need((*path, 2, k), f"{prefix}{msg.name}.{field.name}")
        for k, nested in enumerate(msg.nested_type):
            walk(nested, (*path, 3, k), f"{prefix}{msg.name}.")

    for i, msg in enumerate(f.message_type):
        need((4, i), msg.name)
        walk(msg, (4, i), "")
    for i, enum in enumerate(f.enum_type):
        need((5, i), enum.name)
        for k, v in enumerate(enum.value):
            need((5, i, 2, k), v.name)
    assert not missing, "undocumented in her.proto: " + ", ".join(missing)
