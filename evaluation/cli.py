"""`her eval ...`: the command-line face of `her_sdk.evaluation` (a typer sub-app).

    her eval coser TEST_SET.json --actor model.gguf --judge http://host/v1 --judge-model NAME \
        --records 20 --out runs/eval-coser [--preset her] [--env SPEC] [--nsp SPEC]
    her eval quick TEST_SET.json [--model model.gguf] --records 50 --out runs/eval-quick
    her eval play [--scenes benchmarks/heldout_scenes.json] [--adapter none] --out runs/play
    her eval compare runs/eval-a runs/eval-b

A model SPEC is a GGUF file, an ONNX folder, an OpenAI-compatible base URL (with --*-model naming
the served model), or `mock:FILE` (a scripted backend; see `her_sdk.evaluation._backends`).
Heavy imports happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["eval_app"]

eval_app = typer.Typer(
    help="Measure role-play quality: the CoSER benchmark with any judge, CPU metrics, "
    "multi-turn game scenes, comparisons (needs the `eval` extra).",
    no_args_is_help=True,
)
_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)

Spec = Annotated[str | None, typer.Option(help="GGUF file, ONNX folder, http(s) URL or mock:FILE.")]
Name = Annotated[str, typer.Option(help="Served model name, for a URL spec.")]


def _fail(exc: BaseException) -> None:
    _err.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=1)


@eval_app.command()
def coser(
    test_set: Annotated[Path, typer.Argument(help="A test set in the CoSER schema (JSON list).")],
    out: Annotated[Path, typer.Option(help="Run directory (results, report, plots).")],
    judge: Spec = None,
    judge_model: Name = "",
    actor: Annotated[
        str | None, typer.Option(help="Model under test (default: the embedded model).")
    ] = None,
    actor_model: Name = "",
    env: Annotated[str | None, typer.Option(help="Environment model (default: the actor).")] = None,
    env_model: Name = "",
    nsp: Annotated[
        str | None, typer.Option(help="Next-speaker model (default: the environment model).")
    ] = None,
    nsp_model: Name = "",
    records: Annotated[int | None, typer.Option(help="Use the first N records.")] = None,
    preset: Annotated[str, typer.Option(help="coser (default) or her (HER's adaptation).")] = (
        "coser"
    ),
    max_rounds: Annotated[int | None, typer.Option(help="Override the preset's round cap.")] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Override actor/env/NSP temperature.")
    ] = None,
    grammar: Annotated[
        bool | None, typer.Option("--grammar/--no-grammar", help="Constrain actors' turns.")
    ] = None,
    actor_max_tokens: Annotated[
        int | None,
        typer.Option(help="Override the preset's actor budget (coser 512, her 4096 tokens)."),
    ] = None,
    actor_prompt: Annotated[
        str | None,
        typer.Option(
            help="Actors: her_eval (HER's eval agents and prompt; her preset) or sdk "
            "(her_sdk Characters; coser preset)."
        ),
    ] = None,
    actor_prompt_style: Annotated[
        str | None,
        typer.Option(
            help="Override the actor's prompt style (her preset: her; coser: the model's)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of scenes and fallbacks.")] = 42,
    n_ctx: Annotated[int, typer.Option(help="Context window for GGUF models.")] = 8192,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard a previous run in --out.")
    ] = False,
) -> None:
    """CoSER's Given-Circumstance Acting benchmark: multi-agent simulation, then a judge."""
    from rich.progress import Progress

    from her_sdk import HerError

    from .coser import CoserSettings, run_coser

    try:
        settings = CoserSettings.for_preset(
            preset,
            actor=actor,
            actor_model=actor_model,
            env=env,
            env_model=env_model,
            nsp=nsp,
            nsp_model=nsp_model,
            judge=judge,
            judge_model=judge_model,
            max_rounds=max_rounds,
            temperature=temperature,
            grammar=grammar,
            actor_max_tokens=actor_max_tokens,
            actor_prompt=actor_prompt,
            actor_prompt_style=actor_prompt_style,
            seed=seed,
            n_ctx=n_ctx,
        )
        with Progress(console=_err, transient=True) as progress:
            task = progress.add_task("simulating and judging", total=None)

            def step(done: int, total: int, summary: dict) -> None:
                avg = summary["scores"].get("average")
                progress.update(task, completed=done, total=total)
                progress.console.print(
                    f"[{done}/{total}] {summary['id']}: average "
                    f"{'n/a' if avg is None else f'{avg:.1f}'}, {summary['rounds']} rounds"
                )

            results = run_coser(
                test_set, out, settings, records=records, restart=restart, on_record=step
            )
    except HerError as exc:
        _fail(exc)
        return
    _show(results)
    _out.print(f"report: {out / 'report.md'}")


@eval_app.command()
def quick(
    test_set: Annotated[Path, typer.Argument(help="A test set in the CoSER schema (JSON list).")],
    out: Annotated[Path, typer.Option(help="Run directory (results, report, plots).")],
    model: Annotated[
        str | None, typer.Option(help="Model to measure (default: the embedded model).")
    ] = None,
    model_name: Name = "",
    adapter: Annotated[
        str | None,
        typer.Option(
            help="GGUF LoRA adapter for a GGUF model (the embedded model: its shipped "
            "adapter unless 'none')."
        ),
    ] = None,
    records: Annotated[int | None, typer.Option(help="Use the first N records.")] = None,
    lines: Annotated[int | None, typer.Option(help="At most N character lines per record.")] = None,
    grammar: Annotated[
        bool | None, typer.Option("--grammar/--no-grammar", help="Constrain generated turns.")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Token cap of a generated turn.")] = 200,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.8,
    seed: Annotated[int, typer.Option(help="Seed of generation.")] = 0,
    n_ctx: Annotated[int, typer.Option(help="Context window for GGUF models.")] = 8192,
) -> None:
    """CPU metrics without a judge: held-out NLL, format validity, leaks, copying, diversity."""
    from rich.progress import Progress

    from her_sdk import HerError

    from .quick import QuickSettings, run_quick

    settings = QuickSettings(
        model=model,
        model_name=model_name,
        adapter=adapter,
        grammar=grammar,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        max_lines=lines,
        n_ctx=n_ctx,
    )
    try:
        with Progress(console=_err, transient=True) as progress:
            task = progress.add_task("scoring and generating lines", total=None)
            results = run_quick(
                test_set,
                out,
                settings,
                records=records,
                on_line=lambda d, t: progress.update(task, completed=d, total=t),
            )
    except HerError as exc:
        _fail(exc)
        return
    _show(results)
    _out.print(f"report: {out / 'report.md'}")


@eval_app.command()
def play(
    out: Annotated[Path, typer.Option(help="Run directory (results, report, plots).")],
    scenes: Annotated[
        Path | None,
        typer.Option(help="A scenes file (default: the packaged scenes of her eval play)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model to measure (default: the embedded model).")
    ] = None,
    model_name: Name = "",
    adapter: Annotated[
        str | None,
        typer.Option(
            help="GGUF LoRA adapter for a GGUF model (the embedded model: its shipped "
            "adapter unless 'none')."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Play the first N scenes.")] = None,
    grammar: Annotated[
        bool | None, typer.Option("--grammar/--no-grammar", help="Constrain generated turns.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Token cap of a turn (default: a Character's).")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature (default: a Character's).")
    ] = None,
    dry_multiplier: Annotated[
        float | None,
        typer.Option(help="llama.cpp's DRY sampler over the scene's recent text (0.8 is usual)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Added to every scene's seed.")] = 0,
    n_ctx: Annotated[int, typer.Option(help="Context window for GGUF models.")] = 8192,
    shape: Annotated[
        str,
        typer.Option(
            help="The characters' TurnShape: game, default, free, or model (the model's own)."
        ),
    ] = "model",
) -> None:
    """Multi-turn game scenes through the public API: turn length and shape, narration,
    copying, repetition, forged speakers, secrets, validity, time to first speech."""
    from rich.progress import Progress

    from her_sdk import HerError

    from .play import PlaySettings, run_play

    settings = PlaySettings(
        model=model,
        model_name=model_name,
        adapter=adapter,
        grammar=grammar,
        max_tokens=max_tokens,
        temperature=temperature,
        dry_multiplier=dry_multiplier,
        seed=seed,
        n_ctx=n_ctx,
        shape=shape,
    )
    try:
        with Progress(console=_err, transient=True) as progress:
            task = progress.add_task("playing scenes", total=None)
            results = run_play(
                out,
                settings,
                scenes=scenes,
                limit=limit,
                on_turn=lambda d, t: progress.update(task, completed=d, total=t),
            )
    except HerError as exc:
        _fail(exc)
        return
    _show(results)
    _out.print(f"report: {out / 'report.md'}")


@eval_app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="First run directory (or results.json).")],
    run_b: Annotated[Path, typer.Argument(help="Second run directory (or results.json).")],
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print a Markdown table instead.")
    ] = False,
) -> None:
    """Two runs side by side, with the differences marked."""
    from her_sdk import HerError

    from ._report import compare_markdown, compare_runs

    try:
        result = compare_runs(run_a, run_b)
    except HerError as exc:
        _fail(exc)
        return
    if markdown:
        # Plain stdout: the console would wrap long lines and break the table.
        typer.echo(compare_markdown(result, str(run_a), str(run_b)))
        return
    from ._report import _fmt

    t = Table(title=f"{result['kind']} runs: A = {run_a}, B = {run_b}")
    for col in ("metric", "A", "B", "Δ (B − A)", ""):
        t.add_column(col)
    style = {"better": "green", "worse": "red", "same": "dim", "": ""}
    label = {"better": "▲ better", "worse": "▼ worse", "same": "=", "": ""}
    for r in result["rows"]:
        d = "n/a" if r["delta"] is None else f"{r['delta']:+.4g}"
        t.add_row(
            r["metric"],
            _fmt(r["a"], r["key"]),
            _fmt(r["b"], r["key"]),
            d,
            f"[{style[r['mark']]}]{label[r['mark']]}[/]" if r["mark"] else "",
        )
    _out.print(t)
    for k, (x, y) in result["settings_changed"].items():
        _out.print(f"  setting {k}: {x!r} → {y!r}", markup=False)


def _show(results: dict) -> None:
    from ._report import _fmt, goal_text
    from ._table import metrics_for

    kind = results["kind"]
    unit = "scenes" if kind == "play" else "records"
    t = Table(title=f"her eval {kind}: {results[unit]} {unit}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    if kind == "play":
        t.add_column("goal")
    for m in metrics_for(kind):
        value = results["scores"].get(m.key)
        row = [m.label, _fmt(value, m.key)]
        t.add_row(*row, goal_text(m, value)) if kind == "play" else t.add_row(*row)
    _out.print(t)
    if results["kind"] == "coser" and results["parse_failures"]["total"]:
        _out.print(
            f"[yellow]judge parse failures (not scored): {results['parse_failures']['total']}[/]"
        )
