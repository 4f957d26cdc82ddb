"""`her export ...`: the command-line face of `her_sdk.export` (a typer sub-app).

    her export gguf SRC --out model.q4_k_m.gguf --type q4_k_m [--adapter DIR] [--no-verify]
    her export gguf-lora ADAPTER --base SRC --out adapter.gguf
    her export onnx SRC --out model-onnx/ --precision int4 [--cuda]

Each command verifies what it wrote against the source (report beside the output) and exits
with code 2 and the reason when the file is broken. Heavy imports happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["export_app"]

export_app = typer.Typer(
    help="Export checkpoints to GGUF / ONNX, verified against the source (needs the `export` "
    "extra).",
    no_args_is_help=True,
)
_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)

Verify = Annotated[bool, typer.Option("--verify/--no-verify", help="Check the file afterwards.")]
Tol = Annotated[
    float | None,
    typer.Option("--tolerance", help="Max |logit diff| for f32/fp32 (default 1e-3 per 10 logits)."),
]


Style = Annotated[
    str,
    typer.Option(
        "--prompt-style",
        help="How the model was trained to be prompted (her.prompt_style): 'chatml' (this "
        "project's prompt) or 'her' (HER's own, for a released HER checkpoint).",
    ),
]
PlanChars = Annotated[
    int | None,
    typer.Option(
        "--max-plan-chars",
        help="Longest plan the model was trained with, in characters (default: the style's: "
        "400 for chatml, 3000 for her).",
    ),
]
ThoughtChars = Annotated[
    int | None,
    typer.Option("--max-thought-chars", help="Longest inner thought it was trained with."),
]
LineBreaks = Annotated[
    bool | None,
    typer.Option(
        "--line-breaks/--no-line-breaks",
        help="Whether its sections span lines (default: the style's: no for chatml, yes for her).",
    ),
]


def _meta(
    prompt_style: str, plan_chars: int | None, thought_chars: int | None, lines: bool | None
) -> dict:
    from .to_gguf import her_model_metadata

    return her_model_metadata(
        prompt_style,
        max_plan_chars=plan_chars,
        max_thought_chars=thought_chars,
        line_breaks=lines,
    )


def _show(summary: dict) -> None:
    t = Table(show_header=False, box=None)
    t.add_row("file", summary["path"])
    t.add_row("size", f"{summary['size_bytes'] / 2**20:.1f} MiB")
    for k in ("load_s", "convert_s", "quantize_s"):
        if k in summary:
            t.add_row(k.replace("_s", " time"), f"{summary[k]:.1f} s")
    rep = summary.get("verify")
    if rep:
        m = rep["metrics"]
        t.add_row("tokenizer agreement", f"{m['tokenizer_agreement']:.0%}")
        t.add_row("max logit diff", f"{m['max_logit_diff']:.3g}")
        t.add_row("top-1 agreement", f"{m['top1_agreement']:.2%}")
        if m["greedy_agreement"] is not None:
            t.add_row("greedy agreement", f"{m['greedy_agreement']:.2%}")
        t.add_row("perplexity src/export", f"{m['ppl_source']:.4g} / {m['ppl_export']:.4g}")
        t.add_row("report", rep["report_md"])
    _out.print(t)


def _run(fn) -> None:
    from her_sdk import HerError, VerificationError

    try:
        summary = fn()
    except VerificationError as exc:
        _err.print(f"[bold red]verification failed:[/] {exc}")
        raise typer.Exit(code=2) from None
    except HerError as exc:
        _err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=1) from None
    _show(summary)


@export_app.command("gguf")
def gguf_cmd(
    src: Annotated[Path, typer.Argument(help="Hugging Face checkpoint directory.")],
    out: Annotated[Path, typer.Option("--out", help="The .gguf file to write.")],
    type_: Annotated[
        str, typer.Option("--type", help="f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, ...")
    ] = "f16",
    adapter: Annotated[
        Path | None,
        typer.Option("--adapter", "--lora", help="PEFT LoRA adapter to merge first."),
    ] = None,
    verify: Verify = True,
    tolerance: Tol = None,
    prompt_style: Style = "chatml",
    max_plan_chars: PlanChars = None,
    max_thought_chars: ThoughtChars = None,
    line_breaks: LineBreaks = None,
) -> None:
    """Convert a checkpoint to GGUF (llama.cpp), quantized with llama.cpp's quantizer.

    A released HER checkpoint: `--prompt-style her` (the runtime then prompts it with HER's own
    prompt and decodes it with HER-sized plans)."""
    from .to_gguf import export_gguf

    _run(
        lambda: export_gguf(
            src,
            out,
            outtype=type_.lower(),
            adapter=adapter,
            verify=verify,
            tolerance=tolerance,
            her_meta=_meta(prompt_style, max_plan_chars, max_thought_chars, line_breaks),
        )
    )


@export_app.command("gguf-lora")
def gguf_lora_cmd(
    adapter: Annotated[Path, typer.Argument(help="PEFT LoRA adapter directory.")],
    base: Annotated[Path, typer.Option("--base", help="The base checkpoint directory.")],
    out: Annotated[Path, typer.Option("--out", help="The adapter .gguf to write.")],
    base_gguf: Annotated[
        Path | None,
        typer.Option("--base-gguf", help="Verify on this GGUF of the base (default: f32)."),
    ] = None,
    verify: Verify = True,
    tolerance: Tol = None,
    plan: Annotated[
        bool,
        typer.Option("--plan/--no-plan", help="Trained to plan before each turn (her.plan)."),
    ] = True,
    prompt_style: Style = "chatml",
    max_plan_chars: PlanChars = None,
    max_thought_chars: ThoughtChars = None,
    line_breaks: LineBreaks = None,
) -> None:
    """Write a LoRA adapter as a GGUF adapter (load_model(base, adapter=FILE))."""
    from .to_gguf import export_gguf_lora

    _run(
        lambda: export_gguf_lora(
            adapter,
            base,
            out,
            verify=verify,
            base_gguf=base_gguf,
            plan=plan,
            tolerance=tolerance,
            her_meta=_meta(prompt_style, max_plan_chars, max_thought_chars, line_breaks),
        )
    )


@export_app.command("onnx")
def onnx_cmd(
    src: Annotated[Path, typer.Argument(help="Hugging Face checkpoint directory.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    precision: Annotated[
        str, typer.Option("--precision", help="fp32, fp16, int8 or int4.")
    ] = "int4",
    cuda: Annotated[bool, typer.Option("--cuda", help="Build for the CUDA provider.")] = False,
    adapter: Annotated[
        Path | None,
        typer.Option("--adapter", "--lora", help="PEFT LoRA adapter to merge first."),
    ] = None,
    verify: Verify = True,
    tolerance: Tol = None,
) -> None:
    """Build an ONNX Runtime GenAI model folder (load_model(FOLDER))."""
    from .to_onnx import export_onnx

    if cuda and verify:
        _err.print("[yellow]note:[/] verification runs on CPU; skipped for --cuda")
        verify = False
    _run(
        lambda: export_onnx(
            src,
            out,
            precision=precision.lower(),
            execution_provider="cuda" if cuda else "cpu",
            adapter=adapter,
            verify=verify,
            tolerance=tolerance,
        )
    )
