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


def _play_turn(scene, name: str, show_thoughts: bool) -> None:
    console.print(f"[bold green]{name}[/]")
    printer = _Printer(name)
    stream = scene.stream(name, private=show_thoughts)
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
    model: Annotated[
        Path | None, typer.Option("--model", help="A GGUF model file (default: embedded model).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for a reproducible scene.")] = 2,
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
    max_scenes: Annotated[
        int, typer.Option("--max-scenes", help="Most scenes alive at once.")
    ] = 100,
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
            host=host,
            port=port,
            model=model,
            n_threads=n_threads,
            token=token,
            tls_cert=tls_cert,
            tls_key=tls_key,
            expose_thoughts=expose_thoughts,
            max_message_bytes=max_message_bytes,
            max_text_chars=max_text_chars,
            max_characters=max_characters,
            max_scenes=max_scenes,
            max_workers=max_workers,
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


# -- training: `her data convert|synth-plans`, `her train sft` (`train rm|rl` below) ------

data_app = typer.Typer(
    help="HER training data: convert datasets, synthesize plans.", no_args_is_help=True
)
train_app = typer.Typer(help="Train HER models (needs the `train` extra).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")


@data_app.command("convert")
def data_convert(
    source: Annotated[str, typer.Argument(help="Input layout: coser, her or sharegpt.")],
    input_path: Annotated[Path, typer.Argument(help="JSON or JSONL input file.", exists=True)],
    out: Annotated[Path, typer.Option("--out", help="Output JSONL (trl prompt/completion).")],
    eval_ratio: Annotated[
        float, typer.Option("--eval-ratio", help="Share of scenes held out.")
    ] = 0.0,
    test_ratio: Annotated[float, typer.Option("--test-ratio")] = 0.0,
    split_by: Annotated[str, typer.Option("--split-by", help="scene or book.")] = "scene",
    exclude: Annotated[
        list[Path] | None,
        typer.Option("--exclude", help="Scenes to leave out: a CoSER test set or a list of keys."),
    ] = None,
    max_profile_chars: Annotated[int, typer.Option("--max-profile-chars")] = 0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Convert CoSER / HER / ShareGPT records into one SFT sample per character turn."""
    from her_sdk.training.data import SOURCES, ConvertOptions, convert_file, load_exclude

    if source not in SOURCES:
        raise typer.BadParameter(f"source must be one of {', '.join(SOURCES)}")
    if split_by not in ("scene", "book"):
        raise typer.BadParameter("--split-by must be scene or book")
    opts = ConvertOptions(
        eval_ratio=eval_ratio,
        test_ratio=test_ratio,
        split_by=split_by,
        exclude=load_exclude(exclude or []),
        max_profile_chars=max_profile_chars,
        seed=seed,
    )
    try:
        report = convert_file(source, input_path, out, opts)
    except (OSError, ValueError) as exc:
        _fail(exc)
    r = report.as_dict()
    console.print(
        f"{r['samples']} samples from {r['scenes']} scenes ({r['records']} records) -> {out}\n"
        f"splits {r['splits']}  excluded scenes {r['excluded_scenes']}  skipped {r['skipped']}"
    )
    if report.bad_total():
        err_console.print(f"[yellow]{report.bad_total()} bad records[/] {r['bad']}")
        for line in r["bad_examples"]:
            err_console.print(f"  [dim]{line}[/]")


@data_app.command("synth-plans")
def data_synth_plans(
    input_path: Annotated[Path, typer.Argument(help="JSONL from `her data convert`.", exists=True)],
    out: Annotated[Path, typer.Option("--out", help="Output JSONL (appended; resumable).")],
    teacher: Annotated[
        str,
        typer.Option(
            "--teacher", help="mock | openai:URL#MODEL | openai-chat:URL#MODEL | gguf:PATH"
        ),
    ],
    concurrency: Annotated[int, typer.Option("--concurrency")] = 4,
    retries: Annotated[int, typer.Option("--retries")] = 2,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per teacher call.")] = 120.0,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.7,
    limit: Annotated[
        int | None, typer.Option("--limit", help="At most this many new samples.")
    ] = None,
) -> None:
    """Ask a teacher for the third-person plan behind each known reply; keep the valid ones."""
    from rich.progress import Progress

    from her_sdk.training.plans import synth_plans, teacher_from_spec

    try:
        backend = teacher_from_spec(teacher)
        with Progress(console=err_console, transient=True) as bar:
            task = bar.add_task("plans", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            report = synth_plans(
                input_path,
                out,
                backend,
                concurrency=concurrency,
                retries=retries,
                timeout=timeout,
                temperature=temperature,
                limit=limit,
                progress=progress,
            )
    except (HerError, OSError) as exc:
        _fail(exc)
    r = report.as_dict()
    console.print(
        f"kept {r['kept']} (+{r['passthrough']} already planned), "
        f"dropped {sum(r['dropped'].values())} "
        f"{r['dropped']}, resumed past {r['resumed']} of {r['total']} -> {out}"
    )
    if r["rejections"]:
        console.print(f"[dim]rejected attempts: {r['rejections']}[/]")


def _train_stage(config_cls: type, run, ctx: typer.Context, config: Path, output_dir) -> None:
    """Load `config` (with key=value overrides from the command line), run the stage, print."""
    import logging

    from her_sdk.training.common import load_config

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = run(load_config(config_cls, config, list(ctx.args), output_dir=output_dir))
    except HerError as exc:
        _fail(exc)
    console.print_json(json.dumps(result.as_dict()))


_OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}
_OutputDir = Annotated[str | None, typer.Option("--output_dir", "--output-dir")]


@train_app.command("sft", context_settings=_OVERRIDES)
def train_sft(
    ctx: typer.Context,
    config: Annotated[Path, typer.Option("--config", help="YAML config (training/configs/).")],
    output_dir: _OutputDir = None,
) -> None:
    """Supervised fine-tuning (trl SFTTrainer, LoRA/QLoRA/full). Extra args: key=value overrides."""
    from her_sdk.training.sft import SFTRunConfig, run_sft

    _train_stage(SFTRunConfig, run_sft, ctx, config, output_dir)


@train_app.command("rm", context_settings=_OVERRIDES)
def train_rm(
    ctx: typer.Context,
    config: Annotated[Path, typer.Option("--config", help="YAML config (training/configs/rm_*).")],
    output_dir: _OutputDir = None,
) -> None:
    """Train the HER reward model (pairwise judge): SFT on verdicts, optional RL of the judge.
    Extra args: key=value overrides (e.g. train.max_steps=2 rl_steps=4)."""
    from her_sdk.training.rm import RMRunConfig, run_rm

    _train_stage(RMRunConfig, run_rm, ctx, config, output_dir)


@train_app.command("rl", context_settings=_OVERRIDES)
def train_rl(
    ctx: typer.Context,
    config: Annotated[Path, typer.Option("--config", help="YAML config (training/configs/rl_*).")],
    output_dir: _OutputDir = None,
) -> None:
    """RL of a HER policy (trl GRPO) against the judge plus format/length/repetition rewards.
    Extra args: key=value overrides (e.g. judge=hf:runs/rm max_steps=10)."""
    from her_sdk.training.rl import RLRunConfig, run_rl

    _train_stage(RLRunConfig, run_rl, ctx, config, output_dir)


# -- her export ... (the `export` extra; commands live in her_sdk.export.cli) ------------------
# export.cli imports only typer at module level; its heavy imports run inside the commands.
from her_sdk.export.cli import export_app as _export_app  # noqa: E402

app.add_typer(_export_app, name="export")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
