"""Run outputs for people and machines: results.json, report.md, PNG plots, and `compare`.

All files are written atomically (temporary file, fsync, rename), so a killed run never leaves a
half-written result behind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from her_sdk import ConfigError, atomic_write

__all__ = ["atomic_json", "compare_runs", "load_results", "write_outputs"]

COSER_ROWS = [
    ("storyline_consistency", "Storyline Consistency", True),
    ("anthropomorphism", "Anthropomorphism", True),
    ("character_fidelity", "Character Fidelity", True),
    ("storyline_quality", "Storyline Quality", True),
    ("average", "Average", True),
    ("bleu", "BLEU", True),
    ("rouge_l", "ROUGE-L", True),
]

# (key, label, higher is better, one-line definition)
QUICK_ROWS = [
    (
        "nll_per_token",
        "held-out NLL / token",
        False,
        "mean negative log-likelihood per token of the gold reply given the her_sdk-rendered "
        "context (summed over replies, divided by their tokens)",
    ),
    (
        "format_validity",
        "HER-format validity",
        True,
        "share of generated turns in the strict HER shape: optional closed plan, "
        "optional `NAME: `, then closed canonical tags and plain speech only, with some "
        "public content",
    ),
    (
        "leak_rate",
        "private-text leak rate",
        False,
        "share of turns whose plan/thought text (or a private tag) appears in a public channel, "
        "or in the next prompt of another character present",
    ),
    (
        "forged_speaker_rate",
        "forged-speaker rate",
        False,
        "share of turns whose public text speaks for someone else (`Other:` or `Environment:`)",
    ),
    (
        "copy_rate",
        "copy rate",
        False,
        "share of turns whose speech shares an 8-word run with one of the last 5 lines of other "
        "characters or with the prompt's few-shot example",
    ),
    (
        "self_repetition",
        "self-repetition",
        False,
        "mean share of a turn's word 4-grams that already occurred earlier in the same turn",
    ),
    ("distinct_1", "distinct-1", True, "unique words / all words, over all generated public text"),
    ("distinct_2", "distinct-2", True, "unique word bigrams / all bigrams, same text"),
    ("plan_words", "plan words / turn", None, "mean words in the plan per turn"),
    ("thought_words", "thought words / turn", None, "mean words of inner thoughts per turn"),
    ("action_words", "action words / turn", None, "mean words of actions per turn"),
    ("speech_words", "speech words / turn", None, "mean words of speech per turn"),
    (
        "first_speech_s",
        "time to first speech (s)",
        False,
        "median seconds from the start of a turn to its first speech character (prompt included)",
    ),
]


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
    if data.get("kind") not in ("coser", "quick"):
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


def _rows(results: dict) -> list[tuple[str, str, bool | None]]:
    if results["kind"] == "coser":
        return [(k, label, better) for k, label, better in COSER_ROWS]
    return [(k, label, better) for k, label, better, _ in QUICK_ROWS]


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
        for key, label, _ in _rows(results):
            n = results["scored_records"].get(key, results["records"])
            lines.append(f"| {label} | {_fmt(scores.get(key), key)} | {n} |")
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
                + " | ".join(_fmt(s.get(k), k) for k, _, _ in COSER_ROWS)
                + f" | {r['rounds']} | {r['end_reason']} |"
            )
    else:
        lines += [
            "# her eval quick: role-play metrics on a CPU (no judge)",
            "",
            f"Records: {results['records']}; gold character lines scored: "
            f"{results['lines_scored']}; turns generated: {results['turns_generated']}.",
            "",
            "| metric | value | definition |",
            "|---|---|---|",
        ]
        for key, label, _, definition in QUICK_ROWS:
            lines.append(f"| {label} | {_fmt(scores.get(key), key)} | {definition} |")
    lines += ["", "## Settings", "", *_settings_md(results["settings"])]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


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
        keys = [k for k, _, _ in COSER_ROWS[:5]]
        labels = [
            "Storyline\nConsistency",
            "Anthropo-\nmorphism",
            "Character\nFidelity",
            "Storyline\nQuality",
            "Average",
        ]
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
        names = [lb.replace("-\n", "").replace("\n", " ") for lb in labels]
        ax.set_xticks(range(1, len(labels) + 1), names)
        for i, d in enumerate(dims):
            ax.scatter([i + 1] * len(d), d, s=12, alpha=0.6)
        ax.set_ylim(0, 100)
        ax.set_title("per-record scores")
        ax.tick_params(axis="x", labelsize=7)
        made.append(_save(fig, out / "per_record.png"))
    else:
        keys = [
            "format_validity",
            "leak_rate",
            "forged_speaker_rate",
            "copy_rate",
            "self_repetition",
            "distinct_1",
            "distinct_2",
        ]
        values = [scores.get(k) or 0.0 for k in keys]
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.bar([k.replace("_", "\n") for k in keys], values, color="#4c72b0")
        ax.set_ylim(0, 1)
        ax.set_title(f"her eval quick, {results['records']} records")
        for i, v in enumerate(values):
            ax.text(i, v + 0.02, f"{v:.2f}", ha="center")
        made.append(_save(fig, out / "metrics.png"))
        nll = [r.get("nll_per_token") for r in results["per_record"]]
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
    for key, label, better in _rows(a):
        va, vb = a["scores"].get(key), b["scores"].get(key)
        delta = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        mark = ""
        if delta is not None and better is not None:
            mark = "same" if abs(delta) < 1e-9 else ("better" if (delta > 0) == better else "worse")
        rows.append({"key": key, "metric": label, "a": va, "b": vb, "delta": delta, "mark": mark})
    sa, sb = a.get("settings", {}), b.get("settings", {})
    changed = {
        k: (sa.get(k), sb.get(k)) for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)
    }
    return {
        "kind": a["kind"],
        "records": (a["records"], b["records"]),
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
