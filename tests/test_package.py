"""Package hygiene: a cheap import, the documented public names, one error hierarchy."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys

import pytest

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


def _public_names(module) -> set[str]:
    """Public names a module defines at top level (def, class, assignment); for a package's
    `__init__`, also what it imports from its own submodules (re-exporting is its job)."""
    tree = ast.parse(inspect.getsource(module))
    is_package = hasattr(module, "__path__")
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.ImportFrom) and is_package and node.level > 0:
                names.update(a.asname or a.name for a in node.names)
            elif isinstance(node, (ast.If, ast.Try)):  # conditional definitions
                visit(node.body)
                visit(node.orelse)
                for h in getattr(node, "handlers", []):
                    visit(h.body)

    visit(tree.body)
    return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize("module_name", ["her_sdk", "her_sdk.format"])
def test_all_is_exactly_the_public_surface(module_name):
    module = importlib.import_module(module_name)
    exported = set(module.__all__)
    assert len(exported) == len(module.__all__), "a name is listed twice in __all__"
    assert sorted(_public_names(module) - exported) == [], "public but not in __all__"
    for name in module.__all__:  # every listed name resolves (lazy backends included)
        try:
            assert getattr(module, name) is not None
        except her_sdk.MissingDependencyError as exc:  # an engine backend without its extra
            assert name.endswith("Backend") and exc.extra


def test_lazy_backends_resolve_to_backend_classes():
    for name in ("LlamaBackend", "OnnxBackend", "OpenAIBackend"):
        assert name in her_sdk.__all__
        try:
            cls = getattr(her_sdk, name)
        except her_sdk.MissingDependencyError:
            continue
        assert issubclass(cls, her_sdk.Backend) and cls.__name__ == name
    with pytest.raises(AttributeError):
        her_sdk.NoSuchBackend  # noqa: B018


def test_every_error_class_lives_in_errors_and_is_exported():
    from her_sdk import _errors

    classes = {
        name
        for name, obj in vars(_errors).items()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    }
    assert classes == set(_errors.__all__)
    assert classes <= set(her_sdk.__all__)
    for name in classes:
        assert getattr(her_sdk, name) is getattr(_errors, name)
