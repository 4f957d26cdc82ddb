"""`her eval quick` for the embedded default model on the CoSER sample, printed as a table.

    .venv/bin/python benchmarks/eval_default.py [--records 3] [--lines N] [--no-grammar]

Reads `../shared/data/coser/example_test_set.json` relative to the repository (3 records in the
CoSER test-set schema) and exits 0 with a clear "skipped" line when it is absent: the CoSER data
is not part of the project. Writes the run (results.json, report.md, plots) under `--out`, a
temporary directory by default. All figures come from this one run on this machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "coser" / "example_test_set.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--records", type=int, default=3)
    ap.add_argument("--lines", type=int, default=None, help="character lines per record")
    ap.add_argument("--grammar", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} not found (the CoSER sample is not shipped with the project)")
        return 0
    from her_sdk.evaluation import QuickSettings, run_quick
    from her_sdk.evaluation._report import _fmt
    from her_sdk.evaluation._table import metrics_for

    out = args.out or Path(tempfile.mkdtemp(prefix="her-eval-quick-"))
    settings = QuickSettings(grammar=args.grammar, max_lines=args.lines)
    t0 = time.perf_counter()
    res = run_quick(args.data, out, settings, records=args.records)
    wall = time.perf_counter() - t0
    print(
        f"her eval quick, embedded model, {res['records']} records, "
        f"{res['turns_generated']} generated turns, {res['nll_tokens']} gold tokens scored, "
        f"grammar={'default' if args.grammar is None else args.grammar}, {wall:.0f} s"
    )
    print()
    print("| metric | value |")
    print("|---|---|")
    for m in metrics_for("quick"):
        print(f"| {m.label} | {_fmt(res['scores'].get(m.key), m.key)} |")
    print(f"\nrun written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
