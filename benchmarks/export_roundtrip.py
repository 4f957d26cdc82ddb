"""Gemma-3-270M export round trip: embedded GGUF -> transformers -> GGUF f16 / q8_0 / q4_k_m.

    .venv/bin/python benchmarks/export_roundtrip.py [--workdir /tmp/her-roundtrip]

Loads the embedded default model (Q4_K_M GGUF) into transformers (dequantized to f32), saves
it as a checkpoint, exports it with `her_sdk.export` to f16, q8_0 and q4_k_m, verifies each file
against the transformers model, and prints file sizes, export/quantize times and perplexity on
held-out HER-format text (`her_sdk.export.verify.heldout_texts`), with the issue's targets:
f16 export < 60 s, q4_k_m quantization < 10 s, q8_0 perplexity within 1% of f16, q4_k_m
within 10%. Needs the `export` and `llama` extras; no network.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def to_checkpoint(gguf_path: Path, out: Path) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # A GGUF-loaded model carries quantization markers that block save_pretrained.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = ["Gemma3ForCausalLM"]
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--types", default="f16,q8_0,q4_k_m")
    args = ap.parse_args()

    from her_sdk.export.to_gguf import export_gguf

    from her_sdk import default_model_path

    work = args.workdir or Path(tempfile.mkdtemp(prefix="her-roundtrip-"))
    work.mkdir(parents=True, exist_ok=True)
    src = default_model_path()
    ckpt = work / "gemma-3-270m-hf"
    if not (ckpt / "config.json").is_file():
        t = to_checkpoint(src, ckpt)
        print(
            f"GGUF -> transformers checkpoint: {t:.1f} s ({src.name}, "
            f"{src.stat().st_size / 2**20:.0f} MiB)"
        )
    rows = []
    for typ in args.types.split(","):
        out = work / f"gemma-3-270m.{typ}.gguf"
        t0 = time.perf_counter()
        s = export_gguf(ckpt, out, outtype=typ, raise_on_fail=False)
        total = time.perf_counter() - t0
        v = s["verify"]
        m = v["metrics"]
        rows.append(
            {
                "type": typ,
                "size_mib": s["size_bytes"] / 2**20,
                "load_s": s["load_s"],
                "convert_s": s["convert_s"],
                "quantize_s": s.get("quantize_s"),
                "export_s": s["convert_s"] + s.get("quantize_s", 0),
                "verify_s": total - s["convert_s"] - s.get("quantize_s", 0),
                "ppl_source": m["ppl_source"],
                "ppl": m["ppl_export"],
                "top1": m["top1_agreement"],
                "greedy": m["greedy_agreement"],
                "max_logit_diff": m["max_logit_diff"],
                "tokenizer_agreement": m["tokenizer_agreement"],
                "failures": v["failures"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print()
    print("| type | size MiB | export s | quantize s | ppl | ppl / f16 | top-1 | greedy |")
    print("|---|---|---|---|---|---|---|---|")
    f16 = next((r["ppl"] for r in rows if r["type"] == "f16"), None)
    for r in rows:
        ratio = f"{r['ppl'] / f16:.4f}" if f16 else "-"
        q = f"{r['quantize_s']:.1f}" if r["quantize_s"] is not None else "-"
        print(
            f"| {r['type']} | {r['size_mib']:.0f} | {r['export_s']:.1f} | {q} | "
            f"{r['ppl']:.3f} | {ratio} | {r['top1']:.3f} | {r['greedy']:.2f} |"
        )
    print(
        f"\nsource (transformers f32) perplexity: {rows[0]['ppl_source']:.3f} "
        f"on {len(rows) and 'held-out HER text'}"
    )
    by = {r["type"]: r for r in rows}
    checks = []
    if "f16" in by:
        checks.append(("f16 export < 60 s", by["f16"]["export_s"] < 60))
    if "q4_k_m" in by:
        checks.append(("q4_k_m quantize < 10 s", by["q4_k_m"]["quantize_s"] < 10))
    if f16 and "q8_0" in by:
        checks.append(("q8_0 ppl within 1% of f16", by["q8_0"]["ppl"] / f16 <= 1.01))
    if f16 and "q4_k_m" in by:
        checks.append(("q4_k_m ppl within 10% of f16", by["q4_k_m"]["ppl"] / f16 <= 1.10))
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
