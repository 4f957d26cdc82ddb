"""`her data ...` and `her train ...`: the command-line face of `her_sdk.training` (typer sub-apps).

    her data convert coser BOOK.json --out data/train.jsonl --eval-ratio 0.05
    her data synth-plans data/train.jsonl --out data/planned.jsonl --teacher http://HOST/v1#MODEL
    her data enrich-thoughts data/train.jsonl --out data/thoughts.jsonl --teacher http://HOST/v1#M
    her data complete-settings data/thoughts.jsonl --out data/settings.jsonl --teacher ...
    her data split data/planned.jsonl --out data/her      # sft, rl, rm_sft, rm_rl, test .jsonl
    her data rm-pairs data/her/rm_sft.jsonl --out data/rm_pairs.jsonl \
        --policy http://HOST/v1#SFT_MODEL --teacher http://HOST/v1#TEACHER
    her data rl-refs data/rl_pairs.jsonl --out data/her/rl_ref.jsonl   # rm-pairs on rl.jsonl
    her train sft --config training/configs/sft_tiny_cpu.yaml [key=value | --key value ...]
    her train rm  --config training/configs/rm_tiny_cpu.yaml
    her train rl  --config training/configs/rl_tiny_cpu.yaml

Only typer and rich are imported at module level; each command imports the training stack
(torch, transformers, trl) when it runs, so `her --help` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from her_sdk import HerError, backend_from_spec

from .stages import STAGES, Stage

# A model for a teacher, a policy or a judge: any backend spec (her_sdk.backend_from_spec), or
# `mock`, the command's own scripted stand-in.
_TEACHER_HELP = (
    "mock | http(s)://HOST/v1#MODEL | chat+http(s)://HOST/v1#MODEL | a GGUF file | "
    "a checkpoint folder | mock:FILE"
)

__all__ = ["data_app", "train_app"]

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def _fail(exc: BaseException) -> None:
    err_console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=1)


data_app = typer.Typer(
    help="HER training data: convert datasets, synthesize plans, split by stage.",
    no_args_is_help=True,
)
train_app = typer.Typer(help="Train HER models (needs the `train` extra).", no_args_is_help=True)


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
    source_text: Annotated[
        bool,
        typer.Option(
            "--source-text/--no-source-text",
            help="Keep each CoSER plot's book text on its samples (what complete-settings "
            "grounds its additions in).",
        ),
    ] = True,
    her_profile: Annotated[
        bool,
        typer.Option(
            "--her-profile",
            help="CoSER: put each character's description and experience into its profile, "
            "as HER's system prompt has them.",
        ),
    ] = False,
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
        source_text=source_text,
        her_profile=her_profile,
        seed=seed,
    )
    try:
        report = convert_file(source, input_path, out, opts)
    except (HerError, OSError) as exc:
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


@data_app.command("split")
def data_split(
    input_path: Annotated[Path, typer.Argument(help="JSONL from `her data convert`.", exists=True)],
    out: Annotated[
        Path,
        typer.Option("--out", help="Folder for sft, rl, rm_sft, rm_rl and test .jsonl files."),
    ],
    sft: Annotated[float, typer.Option("--sft", help="Share of samples for SFT.")] = 0.33,
    rl: Annotated[float, typer.Option("--rl", help="Share for RL of the policy.")] = 0.08,
    rm_sft: Annotated[float, typer.Option("--rm-sft", help="Share for the judge's SFT.")] = 0.34,
    rm_rl: Annotated[float, typer.Option("--rm-rl", help="Share for the judge's RL.")] = 0.25,
    rm: Annotated[
        float | None,
        typer.Option(
            "--rm",
            help="One reward-model portion (rm.jsonl) instead of --rm-sft/--rm-rl, for a judge "
            "trained without its RL stage.",
        ),
    ] = None,
    test: Annotated[
        int,
        typer.Option("--test", help="Samples held out for testing (at most a tenth; 0: none)."),
    ] = 200,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Split samples by scene into disjoint portions: SFT / RL of the policy, SFT / RL of the
    judge, and a test set (HER's 33/8/34/25 and 200 samples by default)."""
    from her_sdk.training.data import split_file

    ratios = {"sft": sft, "rl": rl}
    ratios.update({"rm": rm} if rm is not None else {"rm_sft": rm_sft, "rm_rl": rm_rl})
    try:
        report = split_file(input_path, out, ratios, seed=seed, test=test)
    except (HerError, OSError) as exc:
        _fail(exc)
    for name, r in report.items():
        console.print(f"{name}: {r['samples']} samples, {r['scenes']} scenes -> {out / name}.jsonl")


@data_app.command("shape")
def data_shape(
    input_path: Annotated[Path, typer.Argument(help="JSONL from `her data convert`.", exists=True)],
    out: Annotated[Path, typer.Option("--out", help="Output JSONL of shaped samples.")],
    max_actions: Annotated[int, typer.Option("--max-actions")] = 1,
    max_sentences: Annotated[int, typer.Option("--max-sentences")] = 3,
    max_speech_words: Annotated[int, typer.Option("--max-speech-words")] = 40,
) -> None:
    """Keep, trim or drop each target turn so that it reads as a game line (one speech, at most
    one action, no narration or quotations inside speech)."""
    from her_sdk.evaluation.lines import LineLimits
    from her_sdk.training.shaping import shape_file

    try:
        shape = LineLimits(
            max_segments=2 + max_actions,
            max_actions=max_actions,
            max_speech_words=max_speech_words,
            max_sentences=max_sentences,
        )
        report = shape_file(input_path, out, shape).as_dict()
    except (HerError, OSError) as exc:
        _fail(exc)
    console.print(
        f"{report['written']} samples -> {out} ({report['kept']} kept as they were, "
        f"{report['trimmed']} trimmed) of {report['samples']}; dropped {report['dropped']}"
        + (f", {report['skipped']} without structured fields" if report["skipped"] else "")
    )


@data_app.command("synth-plans")
def data_synth_plans(
    input_path: Annotated[Path, typer.Argument(help="JSONL from `her data convert`.", exists=True)],
    out: Annotated[Path, typer.Option("--out", help="Output JSONL (appended; resumable).")],
    teacher: Annotated[
        str,
        typer.Option("--teacher", help=_TEACHER_HELP),
    ],
    concurrency: Annotated[int, typer.Option("--concurrency")] = 4,
    retries: Annotated[int, typer.Option("--retries")] = 2,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per teacher call.")] = 120.0,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.7,
    limit: Annotated[
        int | None, typer.Option("--limit", help="At most this many new samples.")
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="short: 2-3 sentences from a teacher that sees the reply (small runtime "
            "models); her: HER's two phases, long plans (a reasoning teacher, then a rewrite; "
            "each call may take --timeout or 600 s, whichever is longer).",
        ),
    ] = "short",
    rewriter: Annotated[
        str | None,
        typer.Option("--rewriter", help="--mode her: the phase-2 model (default: the teacher)."),
    ] = None,
) -> None:
    """Ask a teacher for the third-person plan behind each known reply; keep the valid ones."""
    from her_sdk.training.plans import mock_teacher, synth_plans
    from rich.progress import Progress

    if mode not in ("short", "her"):
        raise typer.BadParameter("--mode must be short or her")
    if mode == "her":
        from her_sdk.training.plans_her import (
            mock_reasoning_teacher,
            mock_rewriter,
            synth_plans_her,
        )

        def run_her(progress):
            first = backend_from_spec(teacher, mock=mock_reasoning_teacher)
            # the teacher rewrites too unless told otherwise ("mock": the rewriting stand-in)
            spec = rewriter or (teacher if teacher == "mock" else None)
            second = backend_from_spec(spec, mock=mock_rewriter) if spec else None
            return synth_plans_her(
                input_path,
                out,
                first,
                second,
                concurrency=concurrency,
                retries=retries,
                timeout=max(timeout, 600.0),
                temperature=temperature,
                limit=limit,
                progress=progress,
            )

        r = _run_teacher_job("plans (HER's two phases)", run_her)
        console.print(f"phase 1 (draft plans): {r.get('stats', {}).get('phase1')} -> {out}")
        return
    try:
        backend = backend_from_spec(teacher, mock=mock_teacher)
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


def _run_teacher_job(label: str, run) -> dict:
    """Run a teacher command with a progress bar; print its kept/dropped report."""
    from rich.progress import Progress

    try:
        with Progress(console=err_console, transient=True) as bar:
            task = bar.add_task(label, total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            report = run(progress)
    except (HerError, OSError) as exc:
        _fail(exc)
    r = report.as_dict()
    console.print(
        f"kept {r['kept']}, dropped {sum(r['dropped'].values())} {r['dropped']}, "
        f"resumed past {r['resumed']} of {r['total']}"
    )
    if r["rejections"]:
        console.print(f"[dim]rejected attempts: {r['rejections']}[/]")
    return r


@data_app.command("rm-pairs")
def data_rm_pairs(
    input_path: Annotated[
        Path,
        typer.Argument(
            help="Samples: the rm_sft (or rm_rl) portion of `her data split`.", exists=True
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output JSONL (appended; resumable).")],
    policy: Annotated[
        str, typer.Option("--policy", help=f"The SFT policy to sample: {_TEACHER_HELP}")
    ],
    teacher: Annotated[
        str,
        typer.Option("--teacher", help=f"The judge: heuristic | {_TEACHER_HELP}"),
    ],
    samples: Annotated[
        int,
        typer.Option(
            "--samples", help="Policy samples per prompt (paired 1-2, 3-4, ...; HER: 8, 4 pairs)."
        ),
    ] = 8,
    plan: Annotated[
        bool, typer.Option("--plan/--no-plan", help="Prompt the policy for a plan first.")
    ] = True,
    corruptions: Annotated[
        str | None,
        typer.Option(
            "--corruptions",
            help="Also add gold-vs-corrupted pairs: 'all' or kinds, comma-separated.",
        ),
    ] = None,
    keep_inconsistent: Annotated[
        bool, typer.Option("--keep-inconsistent", help="Keep pairs judged position-dependently.")
    ] = False,
    principles: Annotated[
        Path | None, typer.Option("--principles", help="A principles YAML (default: packaged).")
    ] = None,
    detail: Annotated[
        str, typer.Option("--detail", help="Principles in the teacher prompt: full or brief.")
    ] = "full",
    concurrency: Annotated[int, typer.Option("--concurrency")] = 4,
    retries: Annotated[int, typer.Option("--retries")] = 2,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per model call.")] = 300.0,
    temperature: Annotated[
        float, typer.Option("--temperature", help="Policy sampling temperature.")
    ] = 1.0,
    max_tokens: Annotated[
        int,
        typer.Option(
            "--max-tokens",
            help="Per policy sample: the RL stage's max_completion_length, so the judge is "
            "trained on turns as long as the rollouts it will judge (rl_qwen3_32b.yaml: 1024).",
        ),
    ] = 1024,
    judge_max_tokens: Annotated[int, typer.Option("--judge-max-tokens")] = 1024,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="sdk: this project's judge prompt; her: HER's teacher prompt (principles "
            "selected and added, a JSON analysis each, >= 3 principles kept), for a judge "
            "trained with judge_prompt: her_rm.",
        ),
    ] = "sdk",
    limit: Annotated[
        int | None, typer.Option("--limit", help="At most this many new prompts.")
    ] = None,
) -> None:
    """HER's reward data: N policy samples per prompt, paired, judged by a teacher in both
    orders; the teacher's reasoning and ties are kept as the reward model's targets."""
    from her_sdk.training.pairs import CORRUPTIONS, heuristic_judge, mock_policy, rm_pairs
    from her_sdk.training.principles import load_principles

    kinds: list[str] = []
    if corruptions:
        kinds = list(CORRUPTIONS) if corruptions == "all" else corruptions.split(",")
    if detail not in ("full", "brief"):
        raise typer.BadParameter("--detail must be full or brief")
    try:
        policy_backend = backend_from_spec(policy, mock=mock_policy())
        spec = "mock" if teacher == "heuristic" else teacher
        teacher_backend = backend_from_spec(spec, mock=heuristic_judge)
        ps = load_principles(str(principles) if principles else None)
    except (HerError, OSError) as exc:
        _fail(exc)
    r = _run_teacher_job(
        "pairs",
        lambda progress: rm_pairs(
            input_path,
            out,
            policy_backend,
            teacher_backend,
            samples=samples,
            plan=plan,
            corruptions=kinds,
            principles=ps,
            detail=detail,
            keep_inconsistent=keep_inconsistent,
            concurrency=concurrency,
            retries=retries,
            timeout=timeout,
            temperature=temperature,
            max_tokens=max_tokens,
            judge_max_tokens=judge_max_tokens,
            protocol=protocol,
            limit=limit,
            progress=progress,
        ),
    )
    stats = dict(r.get("stats", {}))
    length = stats.pop("length", {})
    console.print(f"{stats} -> {out}")
    frac = length.get("chosen_longer")
    line = (
        f"length check: the preferred candidate is the longer one in "
        f"{'n/a' if frac is None else f'{frac:.0%}'} of {length.get('decisive', 0)} decisive "
        f"pairs ({length.get('ties', 0)} ties); by kind {length.get('by_kind', {})}"
    )
    skewed = frac is not None and length.get("decisive", 0) >= 20 and not 0.35 <= frac <= 0.65
    if skewed:  # "longer wins" (or "shorter wins") would be learnable from this data
        err_console.print(f"[yellow]{line}: length predicts the label[/]")
    else:
        console.print(line)


@data_app.command("rl-refs")
def data_rl_refs(
    pairs: Annotated[
        Path,
        typer.Argument(help="`her data rm-pairs` output on the rl portion.", exists=True),
    ],
    out: Annotated[Path, typer.Option("--out", help="RL rows (the train_file of an RL config).")],
) -> None:
    """HER's RL data: one row per judged pair of policy samples, the teacher-preferred sample as
    the reference the judge compares rollouts against (ties skipped)."""
    from her_sdk.training.pairs import rl_references

    try:
        counts = rl_references(pairs, out)
    except (HerError, OSError) as exc:
        _fail(exc)
    console.print(
        f"{counts['rows']} rows from {counts['pairs']} pairs -> {out} (ties {counts['ties']}, "
        f"unparsable {counts['unparsable']}, not policy pairs {counts['not_policy']})"
    )


@data_app.command("enrich-thoughts")
def data_enrich_thoughts(
    input_path: Annotated[Path, typer.Argument(help="JSONL from `her data convert`.", exists=True)],
    out: Annotated[Path, typer.Option("--out", help="Output JSONL (appended; resumable).")],
    teacher: Annotated[str, typer.Option("--teacher", help=_TEACHER_HELP)],
    concurrency: Annotated[int, typer.Option("--concurrency", help="Scenes at a time.")] = 4,
    retries: Annotated[int, typer.Option("--retries")] = 2,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per teacher call.")] = 120.0,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.7,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many scenes.")] = None,
) -> None:
    """HER data step 2: a teacher makes each turn's inner thoughts explicit (actions and speech
    kept word for word), scene by scene; every sample is re-rendered with the enriched turns."""
    from her_sdk.training.enrich import enrich_thoughts, mock_thought_teacher

    try:
        backend = backend_from_spec(teacher, mock=mock_thought_teacher)
    except (HerError, OSError) as exc:
        _fail(exc)
    r = _run_teacher_job(
        "scenes",
        lambda progress: enrich_thoughts(
            input_path,
            out,
            backend,
            concurrency=concurrency,
            retries=retries,
            timeout=timeout,
            temperature=temperature,
            limit=limit,
            progress=progress,
        ),
    )
    console.print(f"turns {r.get('stats', {})} -> {out}")


@data_app.command("complete-settings")
def data_complete_settings(
    input_path: Annotated[Path, typer.Argument(help="JSONL of samples.", exists=True)],
    out: Annotated[Path, typer.Option("--out", help="Output JSONL (appended; resumable).")],
    teacher: Annotated[str, typer.Option("--teacher", help=_TEACHER_HELP)],
    concurrency: Annotated[int, typer.Option("--concurrency")] = 4,
    retries: Annotated[int, typer.Option("--retries")] = 2,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per teacher call.")] = 180.0,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.3,
    scenario: Annotated[
        bool,
        typer.Option(
            "--scenario/--no-scenario",
            help="First complete each scene's scenario, one call per scene (OUT.scenarios.jsonl).",
        ),
    ] = True,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", help="At most this many scenes, then (scene, character) groups of them."
        ),
    ] = None,
) -> None:
    """HER data step 4: a teacher completes each scene's scenario, then each character's sheet
    (profile, background, motivation, and its description and experience where the samples
    carry them) so they explain the characters' behaviour in the scene; originals are kept.
    With the book's text on the samples (`her data convert coser` keeps it), additions must
    quote it."""
    from her_sdk.training.enrich import complete_settings, mock_setting_teacher

    try:
        backend = backend_from_spec(teacher, mock=mock_setting_teacher)
    except (HerError, OSError) as exc:
        _fail(exc)
    r = _run_teacher_job(
        "sheets",
        lambda progress: complete_settings(
            input_path,
            out,
            backend,
            scenario=scenario,
            concurrency=concurrency,
            retries=retries,
            timeout=timeout,
            temperature=temperature,
            limit=limit,
            progress=progress,
        ),
    )
    console.print(f"scenarios {r.get('stats', {})} -> {out}")


def _train_stage(stage: str, ctx: typer.Context, config: Path, output_dir: str | None) -> None:
    """Run `stage` with `config` and the key=value / --key value overrides after it; print."""
    import logging

    from .launch import run_stage

    overrides = list(ctx.args) + (["--output_dir", output_dir] if output_dir else [])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = run_stage(stage, config, overrides)
    except HerError as exc:
        _fail(exc)
    console.print_json(json.dumps(result))


_OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}
_OutputDir = Annotated[str | None, typer.Option("--output_dir", "--output-dir")]
_CONFIG_HELP = "YAML config (training/configs/{}_*.yaml, or a bare packaged name)."


def _stage_command(stage: Stage) -> None:
    """`her train NAME`: one command per row of the stage table."""

    def command(ctx: typer.Context, config: Path, output_dir: _OutputDir = None) -> None:
        _train_stage(stage.name, ctx, config, output_dir)

    # An annotation object, not text: typer reads the help of this stage's --config from it.
    help_text = _CONFIG_HELP.format(stage.name)
    command.__annotations__["config"] = Annotated[Path, typer.Option("--config", help=help_text)]
    command.__doc__ = (
        f"{stage.help}\n    Extra args override the config: key=value or --key value "
        f"(e.g. {stage.example})."
    )
    train_app.command(stage.name, context_settings=_OVERRIDES)(command)


for _stage in STAGES.values():
    _stage_command(_stage)


@train_app.command("check", context_settings=_OVERRIDES)
def train_check(
    ctx: typer.Context,
    config: Annotated[Path, typer.Option("--config", help="A stage config (sft/rm/rl).")],
    stage: Annotated[
        str | None,
        typer.Option("--stage", help="The config's stage (default: its own `stage:` line)."),
    ] = None,
    gpus: Annotated[
        int | None, typer.Option("--gpus", help="GPUs per node (default: the config's header).")
    ] = None,
    gpu_memory: Annotated[
        float | None, typer.Option("--gpu-memory", help="Memory per GPU in GB (GiB).")
    ] = None,
    nodes: Annotated[int, typer.Option("--nodes", help="Machines.")] = 1,
    no_bf16: Annotated[
        bool, typer.Option("--no-bf16", help="The GPUs lack bf16 (V100, T4).")
    ] = False,
    launcher: Annotated[
        str | None,
        typer.Option(
            "--launcher", help="accelerate/DeepSpeed file instead of the header's; none: 1 process."
        ),
    ] = None,
    arch: Annotated[
        str | None, typer.Option("--arch", help="Model shape from the built-in table: qwen3-32b...")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Before renting GPUs: resolve every config the run reads, report contradictions and a
    per-GPU memory plan with a verdict (exit 1 on FAIL). Extra args override the config."""
    from her_sdk.training.check import Hardware, check_config

    try:
        hw = None
        if gpus is not None or gpu_memory is not None:
            if gpus is None or gpu_memory is None:
                raise typer.BadParameter("give both --gpus and --gpu-memory (or neither)")
            hw = Hardware(gpus, gpu_memory, nodes, bf16=not no_bf16)
        report = check_config(
            config, hw, overrides=list(ctx.args), stage=stage, launcher=launcher, arch=arch
        )
    except HerError as exc:
        _fail(exc)
    if as_json:
        console.print_json(json.dumps(report.as_dict()))
    else:
        typer.echo(report.text())  # unwrapped: the arithmetic lines stay whole
    if not report.ok:
        raise typer.Exit(code=1)


@train_app.command("merge")
def train_merge(
    adapter: Annotated[Path, typer.Option("--adapter", help="A LoRA adapter (a run's folder).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the merged checkpoint.")],
    base: Annotated[
        str | None, typer.Option("--base", help="Base model (default: the adapter's own base).")
    ] = None,
    gguf_file: Annotated[str | None, typer.Option("--gguf-file", help="A GGUF in --base.")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="Precision of the merge.")] = "float32",
    save_dtype: Annotated[
        str | None, typer.Option("--save-dtype", help="Saved weights (default: the base's).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or one GPU (cuda:0).")] = "cpu",
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Fold a LoRA adapter into its base, in one process (never inside a ZeRO-3/FSDP run)."""
    import logging

    from her_sdk.training.merge import merge_adapter

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        res = merge_adapter(
            adapter,
            out,
            base=base,
            gguf_file=gguf_file,
            dtype=dtype,
            save_dtype=save_dtype,
            device=device,
            overwrite=overwrite,
        )
    except (HerError, OSError) as exc:
        _fail(exc)
    console.print_json(json.dumps(res.as_dict()))
