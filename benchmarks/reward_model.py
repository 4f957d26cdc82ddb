"""HER reward model and RL benchmark: a small judge's pairwise accuracy and a short GRPO run.

    .venv/bin/python benchmarks/reward_model.py                   # defaults (2 CPU cores)
    .venv/bin/python benchmarks/reward_model.py --judge-model embedded:gemma-3-270m \
        --judge-steps 60 --eval-pairs 40 --rl-steps 20 --rollouts 16    # on a GPU / idle CPU

Prints, all measured in this one run on this machine:
1. Judge: pairwise accuracy of a small generative judge on held-out automatic pairs (gold turn
   vs a corrupted copy, from scenes not seen in training), both candidate orders combined,
   before and after SFT on verdicts with `training.rm` — plus abstain rate (no readable
   verdict) and position consistency. Default judge: a small Qwen3 (random init, tokenizer
   trained on the fly) fully fine-tuned; `--judge-model embedded:gemma-3-270m` uses the SDK's
   Gemma-3-270M GGUF (dequantized) with LoRA.
2. Policy: format validity (`rewards.format_score == 1`: dual-layer turn, nothing private on a
   public channel) and mean total reward (judge + format + length + repetition, weights as in
   rl_gemma3_270m.yaml) of Gemma-3-270M rollouts (temperature 0.7) on held-out prompts, before
   and after a short GRPO run with `training.rl` (LoRA; bf16 weights by default, ~2x faster
   than f32 on CPU). To fit a CPU budget the RL judge is the rule-based in-process judge
   (`heuristic`); `--rl-judge DIR` uses a trained judge instead.

Data are synthetic HER scenes (`training.tiny.synthetic_samples`), split by scene. Everything is
written under --work (a temp dir by default).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

JUDGE_PRINCIPLES = ["CD1", "RD2", "AD2", "DI1", "DI2", "DD2", "OQ1", "WC1"]


def judge_sft_options(args) -> dict:
    """SFT options of the judge: Gemma-3-270M + LoRA, or a small Qwen3 trained from scratch."""
    if args.judge_model == "tiny":
        return {
            "model_name_or_path": "tiny",
            "dtype": "float32",
            "tiny": {
                "vocab_size": 1024,
                "hidden_size": 64,
                "num_layers": 2,
                "num_heads": 4,
                "num_kv_heads": 2,
                "intermediate_size": 128,
            },
            "max_length": 2048,
            "use_peft": False,
            "per_device_train_batch_size": 4,
            "learning_rate": 5e-3,
        }
    return {
        "model_name_or_path": args.judge_model,
        "chat_template": "chatml",
        "dtype": "float32",
        "max_length": 1024,
        "use_peft": True,
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "lora_target_modules": [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        "per_device_train_batch_size": 2,
        "learning_rate": 3e-4,
    }


def judge_part(args, work: Path) -> dict:
    from her_sdk.training.launch import parse_stage
    from her_sdk.training.rm import run_rm

    (cfg,) = parse_stage(
        "rm",
        None,
        {
            "output_dir": str(work / "rm"),
            "samples": f"synthetic:{args.samples}",
            "principle_ids": JUDGE_PRINCIPLES,
            "max_history": 3,
            "eval_pairs": args.eval_pairs,
            "eval_max_tokens": 110,
            "eval_batch_size": 8,
            "train": {
                **judge_sft_options(args),
                "max_steps": args.judge_steps,
                "gradient_accumulation_steps": 1,
                "lr_scheduler_type": "constant",
                "logging_steps": 5,
                "save_steps": 10_000,
                "eval_before": False,
                "max_eval_samples": 8,
                "bf16": False,
                "activation_checkpointing": False,
                "seed": 0,
            },
        },
    )
    res = run_rm(cfg)
    return res.as_dict()


def rollouts(backend, rows, max_tokens: int) -> list[str]:
    return backend.generate_batch(
        [r["prompt"] for r in rows],
        max_new_tokens=max_tokens,
        temperature=0.7,
        stop=["<|im_end|>", "<|im_start|>"],
    )


def score(rows, texts, funcs, weights) -> dict:
    from her_sdk.training.rewards import completion_text, format_score

    cols = {k: [r[k] for r in rows] for k in ("prefill", "character", "plan", "her_json")}
    total = [0.0] * len(rows)
    per = {}
    for f, w in zip(funcs, weights, strict=True):
        vals = f([r["prompt"] for r in rows], texts, **cols)
        per[getattr(f, "__name__", "f")] = statistics.mean(vals)
        total = [t + w * v for t, v in zip(total, vals, strict=True)]
    valid = [
        format_score(completion_text(t, r["prefill"]), r["character"], plan=r["plan"]) == 1.0
        for t, r in zip(texts, rows, strict=True)
    ]
    return {
        "format_valid": sum(valid) / len(valid),
        "mean_reward": statistics.mean(total),
        "terms": per,
    }


def policy_part(args, work: Path) -> dict:
    from her_sdk.training.common import load_causal_lm, load_tokenizer, resolve_model
    from her_sdk.training.launch import parse_stage
    from her_sdk.training.rewards import build_rewards
    from her_sdk.training.rl import build_grpo_trainer, policy_rows
    from her_sdk.training.tiny import synthetic_samples

    from her_sdk import TransformersBackend

    cfg, model_args, train_args = parse_stage(
        "rl",
        ROOT / "training/configs/rl_gemma3_270m.yaml",
        {
            "model_name_or_path": "embedded:gemma-3-270m",
            "output_dir": str(work / "rl"),
            "dtype": args.policy_dtype,
            "judge_model": args.rl_judge,
            "max_steps": args.rl_steps,
            "num_generations": 4,
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "max_completion_length": args.max_tokens,
            "learning_rate": args.rl_lr,
            "save_steps": 10_000,
        },
    )
    spec = resolve_model(model_args.model_name_or_path, gguf_file=cfg.gguf_file)
    tok = load_tokenizer(spec, cfg.chat_template)
    data = synthetic_samples(args.samples + 200, seed=7)
    train = policy_rows([s for s in data if s["split"] == "train"][: args.samples], plan=cfg.plan)
    held = policy_rows([s for s in data if s["split"] == "eval"][: args.rollouts], plan=cfg.plan)
    funcs, weights = build_rewards(cfg)
    model = load_causal_lm(spec, dtype=model_args.dtype)  # loaded once: rollouts, GRPO, rollouts

    t = time.perf_counter()
    before = score(
        held, rollouts(TransformersBackend(model, tok), held, args.max_tokens), funcs, weights
    )
    before["seconds"] = round(time.perf_counter() - t, 1)
    print(f"policy before: {json.dumps(before)}", flush=True)
    t = time.perf_counter()
    trainer = build_grpo_trainer(
        cfg,
        model_args,
        train_args,
        train,
        funcs,
        weights,
        model_spec=spec,
        tokenizer=tok,
        model=model,
    )
    trainer.train()
    train_s = round(time.perf_counter() - t, 1)
    trace = [h.get("reward") for h in trainer.state.log_history if "reward" in h]
    after = score(
        held,
        rollouts(TransformersBackend(trainer.model, tok), held, args.max_tokens),
        funcs,
        weights,
    )
    return {
        "before": before,
        "after": after,
        "train_seconds": train_s,
        "rl": {"steps": int(trainer.state.global_step), "train_reward_per_step": trace},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=None)
    p.add_argument("--samples", type=int, default=120, help="synthetic samples (pairs, prompts)")
    p.add_argument(
        "--judge-model",
        default="tiny",
        help="tiny (a small Qwen3 trained from scratch) or embedded:gemma-3-270m",
    )
    p.add_argument("--judge-steps", type=int, default=80)
    p.add_argument("--eval-pairs", type=int, default=12)
    p.add_argument("--rl-steps", type=int, default=2)
    p.add_argument("--rl-judge", default="heuristic")
    p.add_argument("--rl-lr", type=float, default=1e-4)
    p.add_argument("--policy-dtype", default="bfloat16", help="bfloat16 is ~2x faster on CPU")
    p.add_argument("--rollouts", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--skip-judge", action="store_true")
    p.add_argument("--skip-policy", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("her_sdk.training").setLevel(logging.INFO)
    work = Path(args.work or tempfile.mkdtemp(prefix="her-rm-bench-"))
    t0 = time.perf_counter()
    out: dict = {"work": str(work), "args": vars(args)}
    if not args.skip_judge:
        t = time.perf_counter()
        rm = judge_part(args, work)
        out["judge"] = {
            "before": rm["accuracy_before"],
            "after": rm["accuracy_after"],
            "train_pairs": rm["pairs"],
            "sft_steps": rm["sft"]["steps"],
            "seconds": round(time.perf_counter() - t, 1),
        }
        b, a = rm["accuracy_before"], rm["accuracy_after"]
        print(
            f"judge (Gemma-3-270M, {b['pairs']} held-out pairs, both orders): accuracy "
            f"{b['accuracy']:.2f} -> {a['accuracy']:.2f}, mean score {b['mean_score']:.2f} -> "
            f"{a['mean_score']:.2f}, abstain {b['abstain']:.2f} -> {a['abstain']:.2f}, "
            f"consistent {b['consistent']:.2f} -> {a['consistent']:.2f} "
            f"({rm['sft']['steps']} LoRA steps)",
            flush=True,
        )
    if not args.skip_policy:
        t = time.perf_counter()
        pol = policy_part(args, work)
        pol["seconds"] = round(time.perf_counter() - t, 1)
        out["policy"] = pol
        b, a = pol["before"], pol["after"]
        print(
            f"policy (Gemma-3-270M, {args.rollouts} held-out prompts, judge {args.rl_judge}): "
            f"format valid {b['format_valid']:.2f} -> {a['format_valid']:.2f}, mean reward "
            f"{b['mean_reward']:.3f} -> {a['mean_reward']:.3f} ({pol['rl']['steps']} GRPO steps)",
            flush=True,
        )
    out["seconds"] = round(time.perf_counter() - t0, 1)
    (work / "reward_model_bench.json").write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
