"""Run outputs for people and machines: results.json, report.md, PNG plots, and `compare`.

All files are written atomically (temporary file, fsync, rename), so a killed run never leaves a
half-written result behind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from her_sdk import ConfigError, atomic_write

from ._table import KINDS, Metric, metrics_for

__all__ = ["atomic_json", "compare_runs", "load_results", "write_outputs"]


def atomic_json(path: str | Path, data: object) -> None:
    atomic_write(path, json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8"))


def load_results(run: str | Path) -> dict:
    p = Path(run)
    if p.is_dir():
        p = p / "results.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no results.json in {run}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {p}: {exc}") from None
    if data.get("kind") not in KINDS:
        raise ConfigError(f"{p} is not a her eval results file")
    return data


def _fmt(value: object, key: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        if key in ("bleu", "rouge_l"):
            return f"{value:.4f}"
        if key.endswith(("_words", "_s")) or abs(value) > 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value)


# -- report.md and plots -----------------------------------------------------------------------


def write_outputs(out: str | Path, results: dict) -> None:
    """results.json, report.md and the PNG plots of a finished run."""
    out = Path(out)
    atomic_json(out / "results.json", results)
    plots = _plots(out, results)
    atomic_write(out / "report.md", _report_md(results, plots).encode("utf-8"))


def _settings_md(settings: dict) -> list[str]:
    lines = ["| setting | value |", "|---|---|"]
    for k, v in settings.items():
        lines.append(f"| {k} | `{v}` |")
    return lines


def _report_md(results: dict, plots: list[str]) -> str:
    scores = results["scores"]
    lines: list[str] = []
    if results["kind"] == "coser":
        lines += [
            "# her eval coser: Given-Circumstance Acting (CoSER protocol)",
            "",
            f"Records: {results['records']} (of {results['records_planned']} planned). "
            "Dimension scores are 0-100, `clip(100 - 5 * (S - 0.3 * R), 0, 100)` per record "
            "(S: the judge's summed flaw severities, R: non-Environment messages), averaged over "
            "records; Average is the mean of the four dimensions; BLEU and ROUGE-L compare the "
            "simulated dialogue with the gold one and are not in the average.",
            "",
            "| metric | score | records scored |",
            "|---|---|---|",
        ]
        for m in metrics_for("coser"):
            n = results["scored_records"].get(m.key, results["records"])
            lines.append(f"| {m.label} | {_fmt(scores.get(m.key), m.key)} | {n} |")
        pf = results["parse_failures"]
        lines += ["", f"Judge parse failures (after retries; not scored): **{pf['total']}**"]
        for key, ids in pf.items():
            if key != "total" and ids:
                lines.append(f"- {key}: {', '.join(ids)}")
        lines += [
            "",
            "## Per record",
            "",
            "| record | SC | AN | CF | SQ | avg | BLEU | ROUGE-L | rounds | end |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["per_record"]:
            s = r["scores"]
            lines.append(
                f"| {r['id']} | "
                + " | ".join(_fmt(s.get(m.key), m.key) for m in metrics_for("coser"))
                + f" | {r['rounds']} | {r['end_reason']} |"
            )
    elif results["kind"] == "quick":
        lines += [
            "# her eval quick: role-play metrics on a CPU (no judge)",
            "",
            f"Records: {results['records']}; gold character lines scored: "
            f"{results['lines_scored']}; turns generated: {results['turns_generated']}.",
            "",
            "| metric | value | definition |",
            "|---|---|---|",
        ]
        for m in metrics_for("quick"):
            lines.append(f"| {m.label} | {_fmt(scores.get(m.key), m.key)} | {m.definition} |")
    else:
        lines += _play_md(results)
    lines += ["", "## Settings", "", *_settings_md(results["settings"])]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def goal_text(m: Metric, value: float | None) -> str:
    """`≤ 0.05 ✓`: the metric's goal and whether `value` meets it ("" without a goal)."""
    if m.goal is None:
        return ""
    op, bound = m.goal
    met = m.meets(value)
    mark = "" if met is None else (" ✓" if met else " ✗")
    return f"{'≤' if op == '<=' else '≥'} {bound:g}{mark}"


def _play_md(results: dict) -> list[str]:
    scores = results["scores"]
    lines = [
        "# her eval play: multi-turn game scenes (public API, no judge)",
        "",
        f"Scenes: {results['scenes']}; NPC turns: {results['turns_generated']}; scenes file: "
        f"`{results['settings'].get('scenes', '')}`. Goals are the bounds a shipped default "
        "model must meet (issue #24).",
        "",
        "| metric | value | goal | definition |",
        "|---|---|---|---|",
    ]
    for m in metrics_for("play"):
        v = scores.get(m.key)
        lines.append(f"| {m.label} | {_fmt(v, m.key)} | {goal_text(m, v)} | {m.definition} |")
    per_scene = [
        ("speech_words_median", "median words"),
        ("long_turn_rate", ">60 words"),
        ("narration_rate", "narration"),
        ("nested_quote_rate", "quotes"),
        ("copy_others_rate", "copies others"),
        ("own_repeat_rate", "repeats own"),
        ("valid_turn_rate", "valid"),
    ]
    lines += [
        "",
        "## Per scene",
        "",
        "| scene | NPC turns | " + " | ".join(h for _, h in per_scene) + " |",
        "|---|---|" + "---|" * len(per_scene),
    ]
    for sc in results["per_scene"]:
        cells = " | ".join(_fmt(sc["scores"].get(k), k) for k, _ in per_scene)
        lines.append(f"| {sc['id']} | {sc['turns']} | {cells} |")
    lines += ["", "## Transcripts", ""]
    for sc in results["per_scene"]:
        lines += [f"### {sc['id']}: {sc['title']}", ""]
        for ln in sc["transcript"]:
            who = ln["speaker"]
            lines.append(f"- **{who}**: {ln['text']}" if who else f"- *{ln['text']}*")
        lines.append("")
    return lines


def _plots(out: Path, results: dict) -> list[str]:
    """Per-metric bars and the per-record distribution; skipped (and said so) without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    scores = results["scores"]
    if results["kind"] == "coser":
        shown = [m for m in metrics_for("coser") if m.plot]
        keys = [m.key for m in shown]
        labels = [m.label.replace(" ", "\n") for m in shown]
        values = [scores.get(k) or 0.0 for k in keys]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(labels, values, color=["#4c72b0"] * 4 + ["#dd8452"])
        ax.set_ylim(0, 100)
        ax.set_ylabel("score (0-100)")
        ax.set_title(f"CoSER GCA, {results['records']} records")
        for i, v in enumerate(values):
            ax.text(i, v + 1, f"{v:.1f}", ha="center")
        made.append(_save(fig, out / "dimensions.png"))
        per = [r["scores"].get("average") for r in results["per_record"]]
        per = [p for p in per if p is not None]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        dims = [
            [r["scores"].get(k) for r in results["per_record"] if r["scores"].get(k) is not None]
            for k in keys[:4]
        ] + [per]
        ax.boxplot([d or [0.0] for d in dims])
        names = [m.label for m in shown]
        ax.set_xticks(range(1, len(labels) + 1), names)
        for i, d in enumerate(dims):
            ax.scatter([i + 1] * len(d), d, s=12, alpha=0.6)
        ax.set_ylim(0, 100)
        ax.set_title("per-record scores")
        ax.tick_params(axis="x", labelsize=7)
        made.append(_save(fig, out / "per_record.png"))
    else:
        keys = [m.key for m in metrics_for(results["kind"]) if m.plot]
        values = [scores.get(k) or 0.0 for k in keys]
        fig, ax = plt.subplots(figsize=(max(8, 0.8 * len(keys)), 4))
        ax.bar([k.replace("_", "\n") for k in keys], values, color="#4c72b0")
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", labelsize=7)
        unit = "records" if "records" in results else "scenes"
        ax.set_title(f"her eval {results['kind']}, {results[unit]} {unit}")
        for i, v in enumerate(values):
            ax.text(i, v + 0.02, f"{v:.2f}", ha="center")
        made.append(_save(fig, out / "metrics.png"))
        nll = [r.get("nll_per_token") for r in results.get("per_record", [])]
        nll = [x for x in nll if x is not None]
        if nll:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.hist(nll, bins=min(20, max(3, len(nll))), color="#dd8452")
            ax.set_xlabel("NLL per token of a gold line")
            ax.set_ylabel("lines")
            ax.set_title("per-line held-out NLL")
            made.append(_save(fig, out / "per_record.png"))
    return made


def _save(fig, path: Path) -> str:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path.name


# -- compare -----------------------------------------------------------------------------------


def compare_runs(run_a: str | Path, run_b: str | Path) -> dict:
    """Rows of (metric, A, B, B - A, mark) for two runs of the same kind, plus the settings
    that differ. `mark` is "better", "worse", "same" or "" (no preferred direction)."""
    a, b = load_results(run_a), load_results(run_b)
    if a["kind"] != b["kind"]:
        raise ConfigError(f"cannot compare a {a['kind']} run with a {b['kind']} run")
    rows = []
    for m in metrics_for(a["kind"]):
        va, vb = a["scores"].get(m.key), b["scores"].get(m.key)
        delta = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        mark = ""
        if delta is not None and m.better is not None:
            same = abs(delta) < 1e-9
            mark = "same" if same else ("better" if (delta > 0) == m.better else "worse")
        rows.append(
            {"key": m.key, "metric": m.label, "a": va, "b": vb, "delta": delta, "mark": mark}
        )
    sa, sb = a.get("settings", {}), b.get("settings", {})
    changed = {
        k: (sa.get(k), sb.get(k)) for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)
    }
    return {
        "kind": a["kind"],
        "records": (a.get("records", a.get("scenes")), b.get("records", b.get("scenes"))),
        "rows": rows,
        "settings_changed": changed,
    }


def compare_markdown(result: dict, name_a: str = "A", name_b: str = "B") -> str:
    marks = {"better": "▲ better", "worse": "▼ worse", "same": "=", "": ""}
    lines = [f"| metric | {name_a} | {name_b} | Δ (B − A) | |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        d = "n/a" if r["delta"] is None else f"{r['delta']:+.4g}"
        lines.append(
            f"| {r['metric']} | {_fmt(r['a'], r['key'])} | {_fmt(r['b'], r['key'])} | {d} "
            f"| {marks[r['mark']]} |"
        )
    if result["settings_changed"]:
        lines += ["", "Settings that differ:"]
        for k, (x, y) in result["settings_changed"].items():
            lines.append(f"- {k}: `{x}` → `{y}`")
    return "\n".join(lines) + "\n"
