"""The `her` command line (typer + rich; installed by the `cli` extra).

    her demo [--show-thoughts] [--model SPEC] [--seed N]   an offline scene, streamed
    her chat --character FILE [--as NAME]                   talk to one character yourself
    her serve [--port N] [--http-port N] [--token T] ...     gRPC + JSON (Connect) service for
                                                            game engines (one flag per
                                                            ServerSettings field)
    her bundle --out DIR [--model F] [--adapter F] ...       a self-contained server folder
                                                            for a game (no Python needed)
    her data convert|synth-plans ...                        training data (her_sdk.training.cli)
    her train sft|rm|rl --config FILE [key=value ...]       training (her_sdk.training.cli)
    her export gguf|gguf-lora|onnx SRC --out ...            verified export (her_sdk.export.cli)
    her eval coser|quick|compare ...                        evaluation (her_sdk.evaluation.cli)
    her --version

`demo`, `chat` and `serve` live here; the other groups are typer sub-apps of their packages,
registered at the end of this module. Each command imports its engines (llama.cpp, grpc, torch)
when it runs, so `her --help` stays quick; only `serve`'s flags are read at start, from the
`ServerSettings` pydantic model. A model is named by a backend spec everywhere
(`her_sdk.backend_from_spec`). This module holds no game or model logic of its own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

try:
    import typer
    from rich.console import Console
except ImportError:  # pragma: no cover - exercised only without the cli extra
    from ._errors import MissingDependencyError

    raise MissingDependencyError("typer and rich", "cli") from None

from ._errors import HerError
from ._version import __version__

app = typer.Typer(
    name="her",
    help="her_sdk: game characters that think before they act.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

STYLE = {"plan": "dim magenta", "thought": "italic cyan", "action": "yellow", "speech": "bold"}


def _version(value: bool) -> None:
    if value:
        console.print(f"her_sdk {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    pass


def _fail(exc: BaseException) -> None:
    from ._serve_cli import fail

    fail(exc)


def _load(model: str | None, **kwargs):
    from ._model import backend_from_spec

    with console.status("Loading model…" if model else "Preparing the embedded model…"):
        return backend_from_spec(model, **kwargs)


_MODEL_HELP = (
    "The model: a GGUF file, an ONNX folder, http://HOST/v1#MODEL (an OpenAI-compatible "
    "server), ... (a backend spec; default: the embedded model)."
)


class _Printer:
    """Streams one turn's deltas: a line per section, styled by channel."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.channel: str | None = None
        self.segment = -1

    def delta(self, channel: str, text: str, segment: int = 0) -> None:
        if channel != self.channel or segment != self.segment:
            self._end()
            self.channel, self.segment = channel, segment
            head = {"plan": "  plan: ", "thought": "  thinks: ", "action": "  (", "speech": "  “"}
            console.print(head[channel], style=STYLE[channel], end="")
            text = text.lstrip()
        console.print(text, style=STYLE[channel], end="", markup=False)

    def _end(self) -> None:
        if self.channel is not None:
            tail = {"action": ")", "speech": "”"}.get(self.channel, "")
            console.print(tail, style=STYLE[self.channel])
        self.channel = None

    def finish(self) -> None:
        self._end()


def _play_turn(scene, name: str, show_thoughts: bool, **options) -> None:
    console.print(f"[bold green]{name}[/]")
    printer = _Printer(name)
    stream = scene.stream(name, private=show_thoughts, **options)
    for delta in stream:
        printer.delta(delta.channel, delta.text, delta.segment)
    printer.finish()
    reply = stream.reply
    if reply is not None and not reply.speech and not reply.actions:
        console.print("  [dim](says nothing)[/]")


@app.command()
def demo(
    show_thoughts: Annotated[
        bool,
        typer.Option("--show-thoughts", help="Also show each NPC's private plan and thoughts."),
    ] = False,
    model: Annotated[str | None, typer.Option("--model", help=_MODEL_HELP)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for a reproducible scene.")] = 2,
    crowd: Annotated[
        bool,
        typer.Option(
            "--crowd",
            help="Meanwhile, two guards talk by the fire on the same model (batched with the "
            "gate scene, whose turns go first).",
        ),
    ] = False,
) -> None:
    """Play a short offline scene: a gate captain, a smuggler and a scripted traveler."""
    from .demo import PLAYER, SCRIPT, build_demo_scene

    try:
        # The scene takes one turn at a time: one llama.cpp sequence (two with the side
        # conversation) keeps the KV cache, and so the memory, small.
        backend = _load(model, max_sequences=2 if crowd else 1)
        scene = build_demo_scene(backend, seed=seed)
        console.rule(f"[bold]{scene.name}")
        side = _Crowd(backend, show_thoughts) if crowd else None
        for kind, text, action in SCRIPT:
            if side is not None:
                side.print_new()
            if kind == "narrate":
                scene.narrate(text)
                console.print(f"[dim italic]{text}[/]")
            elif kind == "say":
                scene.say(PLAYER, text, action)
                act = f"[yellow]({action})[/] " if action else ""
                console.print(f"[bold blue]{PLAYER}[/]\n  {act}[bold]“{text}”[/]")
            else:
                _play_turn(scene, text, show_thoughts, priority="player" if side else "normal")
        if side is not None:
            side.finish()
        console.rule()
        if not show_thoughts:
            console.print("[dim]Run `her demo --show-thoughts` to see what they were thinking.[/]")
    except HerError as exc:
        _fail(exc)


class _Crowd:
    """`her demo --crowd`: the guards' side conversation, played on a thread of its own as
    background turns. Its lines are printed whole, between the gate scene's turns, so the two
    conversations never interleave mid-line."""

    def __init__(self, backend, show_thoughts: bool) -> None:
        import queue
        import threading

        from .demo import CROWD_OPENING, build_crowd_scene

        self.scene = build_crowd_scene(backend)
        self.show_thoughts = show_thoughts
        self.lines: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self._print("Doran", CROWD_OPENING, [], None)
        self.thread = threading.Thread(target=self._run, name="her-demo-crowd", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from .demo import CROWD_TURNS

        try:
            for _ in range(CROWD_TURNS):
                reply = self.scene.turn(priority="background")
                self.lines.put(reply)
        except BaseException as exc:  # shown by the main thread, which owns the console
            self.error = exc

    def _print(self, name: str, speech: str, actions: list[str], thoughts: str | None) -> None:
        from rich.markup import escape  # model text may hold [brackets]

        parts = [f"({a})" for a in actions] + ([f"“{speech}”"] if speech else [])
        line = escape(" ".join(parts) or "(says nothing)")
        console.print(f"  [dim]· by the fire · [bold]{name}[/bold]: {line}[/]")
        if thoughts:
            console.print(f"  [dim italic]    thinks: {escape(thoughts)}[/]")

    def print_new(self) -> None:
        while not self.lines.empty():
            r = self.lines.get()
            thoughts = " ".join(r.thoughts) if self.show_thoughts and r.thoughts else None
            self._print(r.character, r.speech, list(r.actions), thoughts)

    def finish(self) -> None:
        self.thread.join()
        self.print_new()
        if self.error is not None:
            raise self.error


def _character_from_file(path: Path, model):
    from ._character import Character
    from ._persona import Persona

    if path.suffix.lower() == ".png":
        return Character(persona=Persona.from_card(path), model=model)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from None
    if isinstance(data, dict) and data.get("kind") == "character":
        return Character.load(path, model=model)
    if isinstance(data, dict) and ("spec" in data or "data" in data):
        return Character(persona=Persona.from_card(data), model=model)
    if isinstance(data, dict):
        import msgspec

        try:
            persona = msgspec.convert(data, Persona)
        except msgspec.ValidationError as exc:
            raise typer.BadParameter(f"{path}: not a persona: {exc}") from None
        return Character(persona=persona, model=model)
    raise typer.BadParameter(f"{path}: expected a JSON object")


@app.command()
def chat(
    character: Annotated[
        Path,
        typer.Option(
            "--character", help="Persona JSON, Character Card (JSON/PNG) or a saved character."
        ),
    ],
    as_name: Annotated[str, typer.Option("--as", help="Your name in the scene.")] = "Traveler",
    model: Annotated[str | None, typer.Option("--model", help=_MODEL_HELP)] = None,
    show_thoughts: Annotated[bool, typer.Option("--show-thoughts")] = False,
    save: Annotated[
        Path | None, typer.Option("--save", help="Save the character here when you leave.")
    ] = None,
    prompt_style: Annotated[
        str | None,
        typer.Option(
            "--prompt-style",
            help="chatml, template, fewshot, or her (HER's own prompt, for a released HER "
            "model). Default: from the model's metadata.",
        ),
    ] = None,
    n_gpu_layers: Annotated[
        int | None,
        typer.Option(
            "--n-gpu-layers", help="Layers on the GPU (-1: all; a GPU build of llama.cpp)."
        ),
    ] = None,
    n_ctx: Annotated[int | None, typer.Option("--n-ctx", help="Context size in tokens.")] = None,
    adapter: Annotated[
        str | None, typer.Option("--adapter", help="GGUF LoRA adapter, or 'none'.")
    ] = None,
) -> None:
    """Talk to a character. Lines starting with '*' are actions; /quit leaves."""
    from ._scene import Scene

    try:
        options: dict = {"prompt_style": prompt_style, "n_gpu_layers": n_gpu_layers, "n_ctx": n_ctx}
        if adapter is not None:
            options["adapter"] = None if adapter == "none" else adapter
        backend = _load(model, **options)
        npc = _character_from_file(character, backend)
        scene = Scene([npc], player=as_name)
        console.print(f"You are [bold blue]{as_name}[/], talking to [bold green]{npc.name}[/].")
        console.print("[dim]Type a line; '*waves' for an action; /quit to leave.[/]")
        while True:
            try:
                line = console.input(f"[bold blue]{as_name}>[/] ").strip()
            except (EOFError, KeyboardInterrupt):
                break
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            if line.startswith("*"):
                scene.say(as_name, "", line.lstrip("*").strip())
            else:
                scene.say(as_name, line)
            _play_turn(scene, npc.name, show_thoughts)
        if save is not None:
            npc.save(str(save))
            console.print(f"[dim]saved {npc.name} to {save}[/]")
    except HerError as exc:
        _fail(exc)


# -- her serve: one option per ServerSettings field ---------------------------------------------
# The options are derived from the pydantic model (as llama-cpp-python's server does): a new
# setting is a new flag, named after the field, with the field's description as its help. The
# command lives in `_serve_cli`, which a bundle's executable runs without this module.
from ._serve_cli import serve_command  # noqa: E402

app.command(name="serve")(serve_command())


@app.command()
def bundle(
    out: Annotated[
        Path,
        typer.Option("--out", help="Folder to create (it must not exist, or be empty)."),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="GGUF model file to ship (default: the embedded Gemma-3-270M, Q4_K_M).",
        ),
    ] = None,
    adapter: Annotated[
        str | None,
        typer.Option(
            "--adapter",
            help="GGUF LoRA adapter to ship, or 'none' (default: her_sdk's adapter with the "
            "embedded model, none with another model).",
        ),
    ] = None,
    name: Annotated[
        str,
        typer.Option("--name", help="File name of the executable (.exe is added on Windows)."),
    ] = "her-server",
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an earlier bundle in --out (only one)."),
    ] = False,
    llama_lib: Annotated[
        Path | None,
        typer.Option(
            "--llama-lib",
            help="Folder of llama.cpp libraries to ship instead of llama-cpp-python's: a "
            "GGML_BACKEND_DL build with all CPU variants runs on any x86-64 CPU (README: "
            "Shipping in a game).",
        ),
    ] = None,
) -> None:
    """Build a self-contained folder for this platform that serves NPCs on a player's machine
    without Python: one executable (her serve's flags), llama.cpp, the model, LICENSES.txt and
    README.txt. Needs the bundle extra (PyInstaller)."""
    from .bundle import build_bundle

    try:
        result = build_bundle(
            out,
            model=model,
            adapter=adapter,
            name=name,
            force=force,
            llama_lib=llama_lib,
            say=lambda msg: err_console.print(f"[dim]{msg}[/]"),
        )
    except HerError as exc:
        _fail(exc)
        return
    mb = 1024 * 1024
    console.print(f"[bold green]bundle[/] {result.path}")
    console.print(f"  executable  {result.executable.name}")
    console.print(
        f"  size        {result.runtime_bytes / mb:.0f} MB runtime + "
        f"{result.model_bytes / mb:.0f} MB model"
    )
    if result.cpu_variants:
        console.print("  CPU         any x86-64 (llama.cpp CPU variants)")
    else:
        from ._cpu import describe

        console.print(f"  CPU         needs {describe(result.cpu_requires) or 'x86-64'}")
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)


# -- her data / her train (the `train` extra; commands live in her_sdk.training.cli) ---------
from her_sdk.training.cli import data_app as _data_app  # noqa: E402
from her_sdk.training.cli import train_app as _train_app  # noqa: E402

app.add_typer(_data_app, name="data")
app.add_typer(_train_app, name="train")


# -- her export ... (the `export` extra; commands live in her_sdk.export.cli) ------------------
# export.cli imports only typer at module level; its heavy imports run inside the commands.
from her_sdk.export.cli import export_app as _export_app  # noqa: E402

app.add_typer(_export_app, name="export")

from her_sdk.evaluation.cli import eval_app as _eval_app  # noqa: E402

app.add_typer(_eval_app, name="eval")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
