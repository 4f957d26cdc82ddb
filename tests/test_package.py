"""Package hygiene: a cheap import, the documented public names, one error hierarchy."""

from __future__ import annotations

import subprocess
import sys

import her_sdk


def test_import_does_not_load_heavy_engines():
    code = (
        "import sys, her_sdk\n"
        "heavy = [m for m in ('torch', 'llama_cpp', 'grpc', 'transformers', 'onnxruntime',"
        " 'numpy') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names_exist():
    for name in her_sdk.__all__:
        try:
            assert getattr(her_sdk, name) is not None
        except her_sdk.MissingDependencyError as exc:  # an engine backend without its extra
            assert name.endswith("Backend") and exc.extra
    for name in (
        "Character",
        "Scene",
        "load_model",
        "parse_turn",
        "TurnParser",
        "MockBackend",
        "Reply",
        "Delta",
        "Turn",
        "HerError",
        "build_grammar",
    ):
        assert name in her_sdk.__all__


def test_every_error_is_a_her_error():
    for name in her_sdk.__all__:
        if name.endswith("Backend") and name not in ("Backend", "MockBackend"):
            continue  # engine backends load lazily behind extras
        obj = getattr(her_sdk, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, her_sdk.HerError)
