"""Short LoRA SFT of Gemma-3-270M on CoSER samples: held-out NLL and format validity, before/after.

    .venv/bin/python benchmarks/sft_gemma.py --data ../shared/data/coser --steps 8

Converts the CoSER book files found in `--data` (King_Lear.json, Othello.json, …; the scenes of
example_test_set.json are excluded), holds out whole scenes, loads the SDK's embedded Gemma GGUF
through transformers (dequantized), and prints, before and after a short LoRA run with
`training.sft`:
- NLL per token of the gold replies of held-out scenes (the completion tokens only);
- format validity of sampled replies to held-out prompts: the reply is one well-formed HER turn
  of the right character (`NAME: ` then closed thought/action tags and speech, no other
  speaker's line), checked with `her_sdk.format.parse_turn` and a structural pattern.

All figures come from this one run on this machine. The CoSER data is not part of the project:
the script reads it from wherever you keep it and writes everything under --work (a temp dir).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def say(msg: str) -> None:
    print(msg, flush=True)


def valid_turn(text: str, name: str) -> bool:
    from her_sdk.format import parse_turn

    text = text.strip()
    seg = r"(?:<role_thinking>[^<]+</role_thinking>|<role_action>[^<]+</role_action>|[^<\n]+)"
    pattern = rf"(?:<system_thinking>[^<]+</system_thinking>)?{re.escape(name)}: {seg}+"
    if not re.fullmatch(pattern, text):
        return False
    turn = parse_turn(text, name)
    return bool(turn.speech or turn.actions)


def completion_nll(model, tok, rows) -> tuple[float, int]:
    """Mean NLL per token of the completions (prompt tokens are context only)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for r in rows:
            p_ids = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True)
            a_ids = tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True)
            p_ids = p_ids["input_ids"] if hasattr(p_ids, "keys") else p_ids
            a_ids = a_ids["input_ids"] if hasattr(a_ids, "keys") else a_ids
            ids = torch.tensor([a_ids])
            n = len(a_ids) - len(p_ids)  # completion tokens
            # Only the logits that predict completion tokens: Gemma's 262k-token head is costly.
            logits = model(input_ids=ids, logits_to_keep=n + 1).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, ids[0, -n:], reduction="none")
            total += float(nll.sum())
            count += len(a_ids) - len(p_ids)
    return total / max(count, 1), count


def sample_replies(model, tok, rows, max_new_tokens: int, seed: int) -> list[str]:
    import torch

    outs = []
    end_id = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else None
    for i, r in enumerate(rows):
        text = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
        ids = tok(text, return_tensors="pt", add_special_tokens=True)
        torch.manual_seed(seed + i)
        with torch.no_grad():
            gen = model.generate(
                **ids,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=0.7,
                top_p=0.95,
                pad_token_id=tok.pad_token_id,
                eos_token_id=end_id or tok.eos_token_id,
            )
        out = tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=False)
        outs.append(out.split("<|im_end|>")[0].split("<|im_start|>")[0].split("<eos>")[0])
    return outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "coser"))
    ap.add_argument("--work", default=None)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--eval-samples", type=int, default=8)
    ap.add_argument("--gen-samples", type=int, default=4)
    ap.add_argument("--gen-tokens", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from her_sdk.training.common import EMBEDDED_GEMMA, parse_config
    from her_sdk.training.data import ConvertOptions, convert_records, load_exclude, write_jsonl
    from her_sdk.training.sft import build_trainer, config_types

    data = Path(args.data)
    books = sorted(
        p
        for p in data.glob("*.json")
        if p.name not in ("example_test_set.json", "sft_sharegpt.json")
    )
    if not books:
        sys.exit(f"no CoSER book files in {data}")
    bench = data / "example_test_set.json"
    opts = ConvertOptions(
        eval_ratio=0.25,
        max_profile_chars=200,
        max_other_chars=60,
        max_background_chars=150,
        max_scenario_chars=200,
        seed=1,
        exclude=load_exclude([bench]) if bench.exists() else frozenset(),
    )
    rows = []
    for b in books:
        r, rep = convert_records("coser", b, opts)
        rows += r
        print(f"{b.name}: {rep.samples} samples, {rep.scenes} scenes, bad {rep.bad_total()}")
    work = Path(args.work or tempfile.mkdtemp(prefix="her-sft-gemma-"))
    train_file = work / "coser.jsonl"
    write_jsonl(train_file, rows)

    t0 = time.perf_counter()
    cfg = dict(
        model_name_or_path=EMBEDDED_GEMMA,
        chat_template="chatml",
        dtype="float32",
        train_file=str(train_file),
        max_length=args.max_length,
        use_peft=True,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        lora_target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        output_dir=str(work / "run"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=10,
        save_steps=10_000,
        eval_before=False,
        seed=0,
        max_eval_samples=args.eval_samples,
        bf16=False,
        activation_checkpointing=False,
    )
    trainer, info = build_trainer(*parse_config(config_types(), None, cfg))
    load_s = time.perf_counter() - t0
    tok, model = trainer.processing_class, trainer.model
    eval_rows = [
        {"prompt": r["prompt"], "completion": r["completion"]} for r in trainer.eval_dataset
    ]
    names = [r["completion"][0]["content"].split(":")[0] for r in eval_rows]
    gen_rows = eval_rows[: args.gen_samples]
    print(
        f"train {info['train_samples']} / held-out {info['eval_samples']} samples "
        f"(dropped {info['dropped_long']} > {args.max_length} tokens); load {load_s:.0f}s"
    )

    with model.disable_adapter():
        t = time.perf_counter()
        nll0, ntok = completion_nll(model, tok, eval_rows)
        say(f"NLL before: {nll0:.3f} ({time.perf_counter() - t:.0f}s)")
        t = time.perf_counter()
        gen0 = sample_replies(model, tok, gen_rows, args.gen_tokens, seed=0)
        gen_s0 = time.perf_counter() - t
        say(f"sampled {len(gen0)} replies before ({gen_s0:.0f}s)")
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    say(f"trained {args.steps} steps ({train_s:.0f}s)")
    nll1, _ = completion_nll(model, tok, eval_rows)
    gen1 = sample_replies(model, tok, gen_rows, args.gen_tokens, seed=0)
    v0 = sum(valid_turn(g, n) for g, n in zip(gen0, names, strict=False)) / len(gen_rows)
    v1 = sum(valid_turn(g, n) for g, n in zip(gen1, names, strict=False)) / len(gen_rows)
    result = {
        "model": "gemma-3-270m (embedded GGUF, dequantized f32), LoRA r=16",
        "train_samples": info["train_samples"],
        "heldout_samples": len(eval_rows),
        "heldout_completion_tokens": ntok,
        "steps": args.steps,
        "batch": args.batch,
        "train_seconds": round(train_s, 1),
        "seconds_per_step": round(train_s / max(args.steps, 1), 2),
        "nll_per_token_before": round(nll0, 4),
        "nll_per_token_after": round(nll1, 4),
        "ppl_before": round(math.exp(nll0), 2),
        "ppl_after": round(math.exp(nll1), 2),
        "format_valid_before": f"{v0:.0%} of {len(gen_rows)}",
        "format_valid_after": f"{v1:.0%} of {len(gen_rows)}",
        "sample_before": gen0[0][:200],
        "sample_after": gen1[0][:200],
        "generation_seconds_before": round(gen_s0, 1),
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    (work / "result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
