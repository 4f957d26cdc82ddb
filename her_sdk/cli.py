"""The `her` command line (typer + rich; installed by the `cli` extra).

    her demo [--show-thoughts] [--model PATH] [--seed N]   an offline scene, streamed
    her chat --character FILE [--as NAME]                   talk to one character yourself
    her serve [--port N] [--token T] [--expose-thoughts]    gRPC service for game engines
    her --version

Each command imports what it needs when it runs, so `her --help` stays instant.
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

from ._errors import ConfigError, HerError
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
    err_console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=1)


def _load(model: Path | None):
    from ._model import load_model

    with console.status("Loading model…" if model else "Preparing the embedded model…"):
        return load_model(model)


class _Printer:
    """Streams one turn's deltas: a line per section, styled by channel."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.channel: str | None = None

    def delta(self, channel: str, text: str) -> None:
        if channel != self.channel:
            self._end()
            self.channel = channel
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


def _play_turn(scene, name: str, show_thoughts: bool) -> None:
    console.print(f"[bold green]{name}[/]")
    printer = _Printer(name)
    stream = scene.stream(name, private=show_thoughts)
    for delta in stream:
        printer.delta(delta.channel, delta.text)
    printer.finish()
    reply = stream.reply
    if reply is not None and not reply.speech and not reply.actions:
        console.print("  [dim](says nothing)[/]")


@app.command()
def demo(
    show_thoughts: Annotated[
        bool, typer.Option("--show-thoughts", help="Also show each NPC's private plan and thoughts.")
    ] = False,
    model: Annotated[
        Path | None, typer.Option("--model", help="A GGUF model file (default: embedded model).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for a reproducible scene.")] = 7,
) -> None:
    """Play a short offline scene: a gate captain, a smuggler and a scripted traveler."""
    from ._demo import PLAYER, SCRIPT, build_demo_scene

    try:
        backend = _load(model)
        scene = build_demo_scene(backend, seed=seed)
        console.rule(f"[bold]{scene.name}")
        for kind, text, action in SCRIPT:
            if kind == "narrate":
                scene.narrate(text)
                console.print(f"[dim italic]{text}[/]")
            elif kind == "say":
                scene.say(PLAYER, text, action)
                act = f"[yellow]({action})[/] " if action else ""
                console.print(f"[bold blue]{PLAYER}[/]\n  {act}[bold]“{text}”[/]")
            else:
                _play_turn(scene, text, show_thoughts)
        console.rule()
        if not show_thoughts:
            console.print("[dim]Run `her demo --show-thoughts` to see what they were thinking.[/]")
    except HerError as exc:
        _fail(exc)


def _character_from_file(path: Path, model):
    from ._character import Character
    from ._persona import Persona
    from ._state import load_character

    if path.suffix.lower() == ".png":
        return Character(persona=Persona.from_card(path), model=model)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from None
    if isinstance(data, dict) and data.get("kind") == "character":
        return load_character(path, model=model)
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
    model: Annotated[Path | None, typer.Option("--model", help="A GGUF model file.")] = None,
    show_thoughts: Annotated[bool, typer.Option("--show-thoughts")] = False,
    save: Annotated[
        Path | None, typer.Option("--save", help="Save the character here when you leave.")
    ] = None,
) -> None:
    """Talk to a character. Lines starting with '*' are actions; /quit leaves."""
    from ._scene import Scene

    try:
        backend = _load(model)
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


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind (0.0.0.0: all).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="TCP port (0: pick a free one).")] = 50051,
    model: Annotated[
        Path | None, typer.Option("--model", help="A GGUF model file (default: embedded model).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="HER_SERVER_TOKEN",
            help="Require `authorization: Bearer TOKEN` on every call (or $HER_SERVER_TOKEN).",
        ),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="PEM certificate.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key.")] = None,
    expose_thoughts: Annotated[
        bool,
        typer.Option("--expose-thoughts", help="Let clients ask for plans and inner thoughts."),
    ] = False,
    n_threads: Annotated[
        int | None, typer.Option("--n-threads", help="CPU threads for the model.")
    ] = None,
    max_message_bytes: Annotated[
        int, typer.Option("--max-message-bytes", help="Largest gRPC message.")
    ] = 4 * 1024 * 1024,
    max_text_chars: Annotated[
        int, typer.Option("--max-text-chars", help="Longest text field in a request.")
    ] = 8000,
    max_characters: Annotated[
        int, typer.Option("--max-characters", help="Most characters alive at once.")
    ] = 1000,
    max_scenes: Annotated[int, typer.Option("--max-scenes", help="Most scenes alive at once.")] = 100,
    max_workers: Annotated[
        int, typer.Option("--max-workers", help="Server threads (one per running call).")
    ] = 128,
    drain_seconds: Annotated[
        float, typer.Option("--drain-seconds", help="On SIGTERM, time for in-flight calls.")
    ] = 30.0,
) -> None:
    """Serve characters and scenes over gRPC (protos/her/v1/her.proto) for game engines."""
    import logging

    from pydantic import ValidationError

    from .server import ServerSettings, serve

    try:
        settings = ServerSettings(
            host=host, port=port, model=model, n_threads=n_threads, token=token,
            tls_cert=tls_cert, tls_key=tls_key, expose_thoughts=expose_thoughts,
            max_message_bytes=max_message_bytes, max_text_chars=max_text_chars,
            max_characters=max_characters, max_scenes=max_scenes, max_workers=max_workers,
            drain_seconds=drain_seconds,
        )
    except ValidationError as exc:
        _fail(ConfigError("; ".join(e["msg"] for e in exc.errors())))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    def ready(server) -> None:
        scheme = "TLS" if settings.tls_cert else "plaintext"
        auth = "bearer token" if settings.token else "no auth"
        thoughts = "exposed on request" if settings.expose_thoughts else "never sent"
        err_console.print(
            f"[bold green]her serve[/] listening on {server.target} ({scheme}, {auth}; "
            f"private thoughts {thoughts}). Ctrl-C or SIGTERM drains and stops."
        )

    try:
        err_console.print("[dim]Loading the model…[/]")
        serve(settings, ready=ready)
    except HerError as exc:
        _fail(exc)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
