"""Layering: the modules of her_sdk import each other without a cycle, and each imports alone.

The graph is read from the source with `ast`, so it holds every import: at module level, inside
functions (the usual way to hide a cycle), and under `if TYPE_CHECKING:` (a type-only import is
still a dependency of the design, and a type checker follows it). Relative imports are resolved.
The nodes are the modules of the packages the distribution installs under `her_sdk` (read from
`pyproject.toml`: the runtime in her_sdk/, and training/, export/, evaluation/ as
`her_sdk.training`, ...), except the generated protobuf stubs in her_sdk/server/_pb.

An edge goes to the module an import names (`from her_sdk.format import Turn` -> her_sdk.format,
`from . import _savefile` -> her_sdk._savefile, `from her_sdk import Persona` -> the package
her_sdk).
Python also runs each parent package's `__init__` on the way, but that implicit step is not an
edge: a package's `__init__` re-exporting its submodules (the public facade) is the intended
shape, and counting it would make every submodule depend on everything.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ("her_sdk.server._pb",)


def package_dirs() -> dict[str, Path]:
    """Each top-level package the distribution installs under her_sdk, and its folder."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {pkg: ROOT / folder for pkg, folder in setuptools["package-dir"].items()}


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the packages above."""
    out: dict[str, Path] = {}
    for pkg, folder in package_dirs().items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("").parts
            out[".".join((pkg, *(rel[:-1] if rel[-1] == "__init__" else rel)))] = path
    return out


def imports_of(name: str, source: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules in `modules` that the module `name` imports, anywhere in its source."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def nearest(dotted: str) -> str | None:  # the module itself, or the package holding it
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            # `from pkg import sub` imports the submodule; `from pkg import name`, the package.
            targets = [
                f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin
                for a in node.names
            ]
        else:
            continue
        for target in targets:
            module = nearest(target)
            if module is not None and module != name:
                found.add(module)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports. Generated stubs are leaves: their imports are not read."""
    files = module_files()
    return {
        name: set()
        if name.startswith(GENERATED)
        else imports_of(name, path.read_text(), path.name == "__init__.py", set(files))
        for name, path in files.items()
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that ends where it starts) through each tangle of the graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    tangles: list[set[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                tangles.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    return [_shortest_cycle(graph, tangle) for tangle in tangles]


def _shortest_cycle(graph: dict[str, set[str]], tangle: set[str]) -> list[str]:
    start = min(tangle)
    paths = {start: [start]}  # breadth first, inside the tangle, until an edge leads back
    frontier = [start]
    while True:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & tangle):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    following.append(w)
        frontier = following


def test_the_import_graph_sees_hidden_and_type_only_imports():
    modules = {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.sub", "pkg.sub.d"}
    source = (
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "from .c import thing\n"
        "if TYPE_CHECKING:\n"
        "    from .b import B\n"
        "def f():\n"
        "    from . import sub\n"
        "    import pkg.sub.d\n"
        "    from .. import outside\n"
    )
    assert imports_of("pkg.a", source, False, modules) == {"pkg.b", "pkg.c", "pkg.sub", "pkg.sub.d"}
    assert imports_of("pkg.sub.d", "from .. import a\nfrom ..a import x", False, modules) == {
        "pkg.a"
    }
    assert imports_of("pkg.sub", "from . import d\nfrom pkg import x", True, modules) == {
        "pkg.sub.d",
        "pkg",
    }
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == [
        ["a", "b", "c", "a"]
    ]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_her_sdk_has_no_import_cycle():
    graph = import_graph()
    assert {"her_sdk._character", "her_sdk._scene", "her_sdk._savefile"} <= set(graph)
    assert "her_sdk.training.sft" in graph and "her_sdk.export.cli" in graph
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


def test_the_save_file_is_a_leaf_and_a_character_knows_no_scene():
    graph = import_graph()
    assert graph["her_sdk._savefile"] == {"her_sdk._errors"}
    assert not graph["her_sdk._character"] & {"her_sdk._scene", "her_sdk"}
    # Inside the runtime nobody goes through the public facade: it sits on top of everything.
    facade_users = {m for m in runtime_modules() if "her_sdk" in graph[m]}
    assert not facade_users


def runtime_modules() -> list[str]:
    """The modules in her_sdk/ itself (not the add-ons installed under its name)."""
    files = module_files()
    inside = [m for m, path in files.items() if ROOT / "her_sdk" in path.parents]
    return sorted(m for m in inside if not m.startswith(GENERATED))


# Import one module in a fresh interpreter. Where the module does not use the package facade,
# `her_sdk` is replaced by an empty package first, so that nothing but the module's own
# dependencies is imported (a real `import her_sdk.x` runs her_sdk/__init__ first, which imports
# most of the runtime in its own order and can hide an import-order problem).
_IMPORT_ALONE = """
import importlib, sys, types
name, alone = sys.argv[1], sys.argv[2] == "1"
if alone:
    pkg = types.ModuleType("her_sdk")
    pkg.__path__ = [sys.argv[3]]
    sys.modules["her_sdk"] = pkg
try:
    importlib.import_module(name)
except ModuleNotFoundError as exc:
    if exc.name and exc.name.split(".")[0] != "her_sdk":  # an extra that is not installed
        print("missing", exc.name)
        sys.exit(0)
    raise
print("ok")
"""


def _reaches(graph: dict[str, set[str]], start: str, target: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        if v == target:
            return True
        if v not in seen:
            seen.add(v)
            todo.extend(graph.get(v, ()))
    return False


def test_each_runtime_module_imports_alone():
    graph = import_graph()
    runtime = runtime_modules()
    assert "her_sdk._scene" in runtime and "her_sdk.server._service" in runtime

    def run(name: str) -> tuple[str, subprocess.CompletedProcess]:
        alone = not any(_reaches(graph, dep, "her_sdk") for dep in graph[name])
        args = [sys.executable, "-c", _IMPORT_ALONE, name, "1" if alone else "0"]
        args.append(str(ROOT / "her_sdk"))
        return name, subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, runtime))
    failed = [f"{name}:\n{r.stderr[-1500:]}" for name, r in results if r.returncode != 0]
    assert not failed, "modules that do not import alone:\n" + "\n".join(failed)
    missing = [f"{name} ({r.stdout.strip()})" for name, r in results if "missing" in r.stdout]
    if missing:
        pytest.skip(f"extras not installed, not checked: {', '.join(missing)}")


# The floors above the runtime (and the examples users copy) use her_sdk as its users do:
# through public names only. A private module (`her_sdk._x`, `her_sdk.server._x`) or a private
# name imported from a public one is a room they must not reach into; what they truly need
# becomes a public name of the runtime instead.
ADD_ONS = ("training", "export", "evaluation", "benchmarks", "examples")


def private_imports(source: str) -> list[str]:
    """The her_sdk imports in `source` that name something private, as written."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "her_sdk" and any(p.startswith("_") for p in parts[1:]):
                found.append(name)
    return found


def test_private_imports_are_recognised():
    source = (
        "from her_sdk import Character, _savefile\n"
        "from her_sdk._errors import HerError\n"
        "import her_sdk.server._pb\n"
        "from her_sdk.training.common import parse_config\n"
        "from .common import _merge\n"
        "def f():\n"
        "    from her_sdk.format import _clean\n"
    )
    assert private_imports(source) == [
        "her_sdk._savefile",
        "her_sdk._errors",
        "her_sdk._errors.HerError",
        "her_sdk.server._pb",
        "her_sdk.format._clean",
    ]


def test_add_ons_import_only_public_names_of_her_sdk():
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for folder in ADD_ONS
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name in private_imports(path.read_text())
    ]
    assert not offenders, "private her_sdk names used outside her_sdk/:\n" + "\n".join(offenders)
