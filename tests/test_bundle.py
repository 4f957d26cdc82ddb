"""`her bundle`: a self-contained server folder a player's machine runs without Python.

The slow tests build a real bundle with PyInstaller (cached by the content of what goes in, in
$HER_SDK_CACHE/bundle, so a second run only copies files), copy it to a fresh folder, and run it
from /bin/sh with a clean environment, as a game would: --port 0 --port-file, a turn over gRPC
and over JSON, then the game dies and the server must follow. The fast tests cover the frozen
program's checks (CPU, manifest, model) in a plain process, and the command's flags and errors.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from her_sdk import _cpu

HER = shutil.which("her", path=str(Path(sys.executable).parent)) or "her"
BUNDLE_EXTRA = "needs the bundle extra (pip install 'her-sdk[bundle]')"


def run_her(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([HER, *args], capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# -- the command ---------------------------------------------------------------------------------


def test_bundle_help_documents_every_flag():
    import typer

    from her_sdk.cli import app

    command = typer.main.get_command(app).commands["bundle"]
    options = [p for p in command.params if p.name != "help"]
    assert {o.opts[0] for o in options} == {
        "--out",
        "--model",
        "--adapter",
        "--name",
        "--force",
        "--llama-lib",
    }
    res = run_her("bundle", "--help")
    assert res.returncode == 0, res.stderr
    help_text = " ".join(res.stdout.split())
    for opt in options:
        assert opt.opts[0] in help_text
        assert opt.help and " ".join(opt.help.split()[:3]) in help_text, opt.name
    assert "Python" in help_text and "bundle extra" in help_text


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "http://127.0.0.1:9/v1"], "remote model"),
        (["--name", "../evil"], "--name"),
        (["--name", "her-server.exe"], "--name"),
    ],
)
def test_bad_bundle_arguments_are_one_clear_error(tmp_path, args, words):
    pytest.importorskip("PyInstaller", reason=BUNDLE_EXTRA)
    res = run_her("bundle", "--out", str(tmp_path / "b"), *args)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    (line,) = error_lines(res.stderr)
    assert line.startswith("error:") and words in line
    assert not (tmp_path / "b").exists()


def test_bundle_refuses_a_folder_it_did_not_make(tmp_path):
    pytest.importorskip("PyInstaller", reason=BUNDLE_EXTRA)
    pytest.importorskip("llama_cpp", reason="needs the llama extra")
    (tmp_path / "game").mkdir()
    (tmp_path / "game" / "save.dat").write_text("precious")
    for extra in ([], ["--force"]):
        res = run_her("bundle", "--out", str(tmp_path / "game"), *extra)
        assert res.returncode == 1 and "not empty" in res.stderr
    assert (tmp_path / "game" / "save.dat").read_text() == "precious"


def test_a_missing_pyinstaller_names_the_extra(monkeypatch, tmp_path):
    from her_sdk import MissingDependencyError, bundle

    monkeypatch.setitem(sys.modules, "PyInstaller", None)  # import PyInstaller fails
    with pytest.raises(MissingDependencyError) as err:
        bundle.build_bundle(tmp_path / "b")
    assert err.value.extra == "bundle" and "her-sdk[bundle]" in str(err.value)


# -- instruction sets ----------------------------------------------------------------------------


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    if not sys.platform.startswith("linux") or not _cpu._is_x86_64():
        pytest.skip("reads /proc/cpuinfo of an x86-64 Linux")
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse2 pni ssse3 avx fma f16c avx2 bmi2\n")
    flags = _cpu.cpu_flags(str(fake))
    assert flags is not None and flags["avx2"] and flags["pni"] and not flags["avx512f"]
    assert _cpu.missing_features(["avx2", "fma", "avx512f", "avx512_bf16"], flags) == [
        "avx512f",
        "avx512_bf16",
    ]
    assert _cpu.missing_features(["avx2", "some_future_set"], flags) == []  # unknown: not missing
    assert _cpu.describe(["avx2", "avx512f"]) == "AVX2, AVX-512 (F)"
    assert _cpu.cpu_flags(str(tmp_path / "absent")) is None


def test_the_installed_llama_cpp_needs_only_what_this_cpu_has():
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs the llama extra")
    import ctypes

    libdir = Path(llama_cpp.__file__).parent / "lib"
    cpu_libs = sorted(libdir.glob("libggml-cpu.so*"))
    if not cpu_libs:
        pytest.skip("not a one-CPU build of llama.cpp")
    needed = _cpu.required_by_build(ctypes.CDLL(str(cpu_libs[0])))
    assert set(needed) <= set(_cpu.GGML_FEATURES.values())
    # It runs here, so this CPU has all it was compiled for.
    assert _cpu.missing_features(needed) == []


# -- the frozen program's checks, in a plain process ---------------------------------------------

_MAIN = """
import sys
from pathlib import Path
from her_sdk import _bundle_main, _cpu
lacks = sys.argv[2]
if lacks:
    real = _cpu.cpu_flags
    _cpu.cpu_flags = lambda *a: {**(real() or {}), lacks: False}
try:
    _bundle_main.main(sys.argv[3:], home=Path(sys.argv[1]))
except SystemExit as e:
    print("llama_cpp loaded:", "llama_cpp" in sys.modules, file=sys.stdout)
    raise
"""


def _run_main(home: Path, *args: str, lacks: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _MAIN, str(home), lacks, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _manifest(home: Path, requires: list[str], model: str = "models/m.gguf") -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "bundle.json").write_text(
        json.dumps(
            {
                "executable": "her-server",
                "model": model,
                "adapter": None,
                "llama_cpp": {"cpu_variants": False, "cpu_requires": requires},
            }
        )
    )


def test_a_cpu_without_what_the_build_needs_is_refused_before_llama_cpp_loads(tmp_path):
    pytest.importorskip("typer", reason="needs the cli extra")
    _manifest(tmp_path, ["avx", "avx2", "avx512f"])
    res = _run_main(tmp_path, "--port", "0", lacks="avx512f")
    assert res.returncode == 4, res.stderr
    (line,) = error_lines(res.stderr)
    assert line.startswith("error:") and "AVX-512 (F)" in line and "AVX2" not in line.split(",")[0]
    assert "llama_cpp loaded: False" in res.stdout  # refused before llama.cpp could crash
    res = _run_main(tmp_path, "--help", lacks="avx512f")
    assert res.returncode == 0 and "--port-file" in res.stdout  # the help works on any CPU


def test_a_missing_or_corrupt_bundled_model_is_exit_code_3_and_one_line(tmp_path):
    pytest.importorskip("grpc", reason="needs the grpc extra")
    pytest.importorskip("typer", reason="needs the cli extra")
    _manifest(tmp_path, [])
    log = tmp_path / "logs" / "server.log"
    res = _run_main(tmp_path, "--port", "0", "--log-file", str(log))
    assert res.returncode == 3, res.stderr
    (line,) = error_lines(res.stderr)  # with --log-file, the error line is all of stderr
    assert line.startswith("error:") and "m.gguf" in line
    assert "m.gguf" in log.read_text()  # and the log has it too
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    res = _run_main(tmp_path, "--port", "0", "--log-file", str(log))
    assert res.returncode == 3 and len(error_lines(res.stderr)) == 1, res.stderr
    assert "m.gguf" in res.stderr and "Traceback" not in res.stderr


def test_a_broken_manifest_is_one_clear_error(tmp_path):
    (tmp_path / "bundle.json").write_text("{not json")
    res = _run_main(tmp_path)
    assert res.returncode == 1
    (line,) = error_lines(res.stderr)
    assert line.startswith("error:") and "bundle.json" in line


# -- a real bundle -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle of the embedded model, built (or taken from the cache) and copied to a fresh
    folder of its own, as a game's export would copy it."""
    pytest.importorskip("PyInstaller", reason=BUNDLE_EXTRA)
    pytest.importorskip("llama_cpp", reason="needs the llama extra")
    pytest.importorskip("connectrpc", reason="needs the http extra")
    if not sys.platform.startswith("linux"):
        pytest.skip("the bundle tests run the Linux bundle")
    from her_sdk.bundle import build_bundle, python_can_be_frozen

    if python_can_be_frozen() is not None:
        pytest.skip(python_can_be_frozen())

    built = build_bundle(tmp_path_factory.mktemp("build") / "npc-server")
    assert built.executable.name == "her-server"
    game = tmp_path_factory.mktemp("game") / "npc"
    shutil.copytree(built.path, game, symlinks=True)
    shutil.rmtree(built.path)  # nothing may point back at where it was built
    return game, built


def _clean_env(home: Path) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    assert str(Path(sys.executable).parent) not in env["PATH"]
    return env


def _wait(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and " Z " in stat.read_text()  # exited; only a zombie left to reap


@pytest.mark.slow
def test_the_folder_holds_no_training_stack_and_says_what_is_inside(bundle):
    from her_sdk.bundle import bundle_modules, forbidden_contents

    folder, built = bundle
    modules = bundle_modules(folder)
    assert "her_sdk._bundle_main" in modules and "llama_cpp" in modules and "grpc" in modules
    for heavy in ("torch", "transformers", "trl", "datasets", "peft", "onnxruntime"):
        assert not [m for m in modules if m == heavy or m.startswith(heavy + ".")], heavy
    for code in ("her_sdk.training", "her_sdk.export", "her_sdk.evaluation", "her_sdk.cli"):
        assert not [m for m in modules if m == code or m.startswith(code + ".")], code
    files = [str(p.relative_to(folder)).lower() for p in folder.rglob("*")]
    assert not [f for f in files if "torch" in f or "transformers" in f]
    assert forbidden_contents(folder) == []
    # llama.cpp's libraries, the model and the adapter are inside, not referenced from outside.
    assert (folder / "_internal" / "llama_cpp" / "lib" / "libllama.so").is_file()
    manifest = json.loads((folder / "bundle.json").read_text())
    assert (folder / manifest["model"]).is_file() and (folder / manifest["adapter"]).is_file()
    assert built.runtime_bytes < 150 * 2**20, built.runtime_bytes  # besides the model
    licenses = (folder / "LICENSES.txt").read_text()
    for component in ("Python", "llama.cpp", "grpcio", "protobuf", "pydantic", "numpy"):
        assert component in licenses, component
    assert "Gemma Terms of Use" in licenses and "MIT" in licenses and "Apache" in licenses
    readme = (folder / "README.txt").read_text()
    for flag in ("--port-file", "--exit-with-parent", "--log-file", "--n-threads"):
        assert flag in readme


@pytest.mark.slow
def test_the_executable_takes_every_flag_of_her_serve(bundle, tmp_path):
    from her_sdk.server._settings import ServerSettings

    folder, _ = bundle
    res = subprocess.run(
        [str(folder / "her-server"), "--help"],
        capture_output=True,
        text=True,
        env={**_clean_env(tmp_path), "COLUMNS": "200"},
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    for name in ServerSettings.model_fields:
        assert f"--{name.replace('_', '-')}" in res.stdout, name
    assert "gemma-3-270m-q4_k_m.gguf" in res.stdout  # what it serves without --model


@pytest.mark.slow
def test_a_game_starts_it_without_python_plays_turns_and_it_ends_with_the_game(bundle, tmp_path):
    from _connect_client import stream, unary

    from her_sdk.client import Client

    folder, _ = bundle
    exe = folder / "her-server"
    ports, log = tmp_path / "run" / "ports.json", tmp_path / "run" / "server.log"
    flags = (
        f"--port 0 --http-port 0 --port-file '{ports}' --log-file '{log}' --exit-with-parent "
        "--n-threads 2"
    )
    # The "game": a shell (no Python) that starts the sidecar, says its pid, and waits.
    game = subprocess.Popen(
        ["/bin/sh", "-c", f"'{exe}' {flags} 2>'{tmp_path}/stderr' & echo $!; exec sleep 600"],
        stdout=subprocess.PIPE,
        text=True,
        env=_clean_env(tmp_path),
        cwd=tmp_path,
    )
    server = int(game.stdout.readline())
    try:
        started = time.monotonic()
        addresses = _wait(
            lambda: ports.exists() and json.loads(ports.read_text()), 120, "the port file"
        )
        with Client(addresses["grpc"], timeout=300) as her:
            her.wait_ready(timeout=300)
            ready_s = time.monotonic() - started
            mara = her.create_character(
                "Mara", profile="Gate captain of Vell. Speaks briefly.", max_tokens=24, seed=1
            )
            scene = her.create_scene([mara], players="Traveler", seed=3)
            scene.say("Traveler", "Open the gate, captain.", "knocks")
            reply = scene.turn("Mara")
            assert reply.character == "Mara" and 0 < reply.completion_tokens <= 24
            assert reply.finish_reason in ("stop", "length")
            info = her.server_info()
            assert info.ready and info.backend == "llama.cpp"
            assert info.model == "gemma-3-270m-q4_k_m.gguf" and info.adapter
        url = addresses["http"]
        jory = {"persona": {"name": "Jory"}, "settings": {"maxTokens": 24, "seed": "2"}}
        status, jory = unary(url, "CreateCharacter", jory)
        assert status == 200
        status, sc = unary(url, "CreateScene", {"characterIds": [jory["id"]], "players": ["Ann"]})
        assert status == 200
        assert (
            unary(url, "Say", {"sceneId": sc["id"], "speaker": "Ann", "text": "Hello?"})[0] == 200
        )
        status, _, messages, end = stream(url, "Turn", {"sceneId": sc["id"], "character": "Jory"})
        assert status == 200 and end.get("error") is None, end
        summary = messages[-1]["summary"]
        assert summary["character"] == "Jory" and int(summary["completionTokens"]) > 0
        assert "ready on" in log.read_text()
        print(f"bundle: ready {ready_s:.1f} s after start")
        assert not _gone(server)

        game.kill()  # the game dies without stopping its sidecar
        game.wait(10)
        _wait(lambda: _gone(server), 20, "the server to end with the game")
        assert not ports.exists()  # it named a live server only
        assert (tmp_path / "stderr").read_text() == ""  # with --log-file, nothing on stderr
    finally:
        if game.poll() is None:
            game.kill()
        if not _gone(server):
            os.kill(server, signal.SIGKILL)


@pytest.mark.slow
def test_the_bundle_refuses_a_bad_model_with_exit_code_3(bundle, tmp_path):
    folder, _ = bundle
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(200))
    for model in (bad, tmp_path / "missing.gguf"):
        res = subprocess.run(
            [str(folder / "her-server"), "--port", "0", "--model", str(model)],
            capture_output=True,
            text=True,
            env=_clean_env(tmp_path),
            timeout=120,
        )
        assert res.returncode == 3, res.stderr
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and model.name in errors[0] and "Traceback" not in res.stderr


@pytest.mark.slow
def test_a_bundle_with_llama_cpp_cpu_variants_picks_one_and_plays_a_turn(tmp_path):
    """With a GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS build of llama.cpp (README: Shipping in a
    game; a long build, so not made here) named by $HER_LLAMA_VARIANTS_DIR."""
    variants = os.environ.get("HER_LLAMA_VARIANTS_DIR")
    if not variants:
        pytest.skip("set HER_LLAMA_VARIANTS_DIR to a llama.cpp build with its CPU variants")
    pytest.importorskip("PyInstaller", reason=BUNDLE_EXTRA)
    from _connect_client import stream, unary

    from her_sdk.bundle import build_bundle

    built = build_bundle(tmp_path / "npc", llama_lib=variants)
    assert built.cpu_variants and built.cpu_requires == []
    assert built.runtime_bytes < 150 * 2**20, built.runtime_bytes
    ports, log = tmp_path / "ports.json", tmp_path / "server.log"
    server = subprocess.Popen(
        [str(built.executable), "--port", "0", "--http-port", "0", "--port-file", str(ports)]
        + ["--log-file", str(log), "--n-threads", "2"],
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_env(tmp_path),
    )
    try:
        url = _wait(lambda: ports.exists() and json.loads(ports.read_text()), 120, "ports")["http"]
        _wait(lambda: unary(url, "GetServerInfo", {})[1].get("ready"), 300, "the model")
        status, c = unary(url, "CreateCharacter", {"persona": {"name": "Mara"}, "settings": {}})
        status, sc = unary(url, "CreateScene", {"characterIds": [c["id"]], "players": ["Ann"]})
        unary(url, "Say", {"sceneId": sc["id"], "speaker": "Ann", "text": "Open up."})
        req = {"sceneId": sc["id"], "character": "Mara", "maxTokens": 24}
        status, _, messages, end = stream(url, "Turn", req)
        assert status == 200 and end.get("error") is None and messages[-1]["summary"], end
        server.terminate()
        assert server.wait(60) == 0
        assert server.stderr.read() == ""  # llama.cpp's own messages go to logging, not stderr
    finally:
        if server.poll() is None:
            server.kill()
