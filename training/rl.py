"""RL of a HER policy against the reward model: `RLRunConfig`, reward functions, trl GRPOTrainer.

    # CPU smoke run: tiny random policy, rule-based in-process judge (about a minute):
    her train rl --config training/configs/rl_tiny_cpu.yaml --output_dir runs/rl-tiny

    # Gemma-3-270M policy (the SDK's GGUF, dequantized) with a judge trained by `her train rm`:
    her train rl --config training/configs/rl_gemma3_270m.yaml judge=hf:runs/rm --output_dir runs/rl

    # Qwen3-32B on GPUs: judge served by vLLM over HTTP, rollouts by vLLM (colocated):
    vllm serve runs/her-rm-32b --port 8001 &
    accelerate launch --config_file training/configs/accelerate_zero3.yaml \
        -m her_sdk.training.rl --config training/configs/rl_qwen3_32b.yaml \
        --output_dir runs/her-rl-32b

Reward of a rollout (each term weighted by `reward_weights` in the config, trl sums them):
- `judge`: the generative judge's verdict of the rollout against the reference turn of the
  sample — win 1, tie 0.5, loss 0 — judged in both orders and averaged (`judge.Judge`);
- `format`: a valid dual-layer turn (plan when asked, well-formed tags, something visible) with
  nothing private on a public channel (no tag text, no inner thought read aloud) — 0..1;
- `length`: 0 inside [length_min_chars, length_max_chars] of turn text, down to -1 outside;
- `repetition`: minus the share of repeated word trigrams.

The judge is any her_sdk Backend named by `judge`: `heuristic` (rule-based, in-process, for
tests), `hf:DIR` (a trained judge in-process via transformers), `openai:URL#MODEL` /
`openai-chat:URL#MODEL` (vLLM or any OpenAI-compatible server), `gguf:PATH` (llama.cpp), or
`none`. Prompts are rendered by `her_sdk.format.render_prompt` with the runtime's prefill, so
the policy is trained on exactly the prompts the SDK will show it. This module trains; the
judge prompt and verdict parsing live in `judge.py`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from her_sdk import Backend, ConfigError
from her_sdk._backends._base import cut_at_stop
from her_sdk.format import CHATML_STOP, PRIVATE_CHANNELS, parse_turn, render_prompt

from .common import (
    config_dict,
    load_causal_lm,
    load_config,
    load_rows,
    load_tokenizer,
    lora_config,
    require_train_extra,
    resolve_model,
)
from .data import decode_her
from .judge import Judge
from .pairs import repetition_ratio, tag_errors
from .principles import load_principles

__all__ = [
    "JudgeReward",
    "RLResult",
    "RLRunConfig",
    "build_grpo_trainer",
    "completion_text",
    "format_reward",
    "format_score",
    "judge_backend_from_spec",
    "length_penalty",
    "policy_rows",
    "repetition_penalty",
    "run_rl",
]

log = logging.getLogger("her_sdk.training.rl")


# ---------------------------------------------------------------------------------------------
# Reward functions (trl signature: (prompts, completions, **dataset columns) -> list[float])
# ---------------------------------------------------------------------------------------------


def completion_text(completion: Any, prefill: str = "") -> str:
    """The turn text of a trl completion (string or chat messages), cut at the first stop
    marker, with the prompt's prefill (e.g. `<system_thinking>`) put back in front."""
    if isinstance(completion, list):
        completion = "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    text, _ = cut_at_stop(str(completion), CHATML_STOP)
    return prefill + text


def format_score(text: str, name: str, *, plan: bool = True) -> float:
    """0..1: how well `text` (a full turn, plan included) follows the dual-layer format.

    0 when anything private reaches a public channel (tag text in speech/actions, an inner
    thought or the plan spoken aloud) or nothing visible is left; otherwise the share of
    checks passed: a plan when asked, well-formed tags, a role thought, no second speaker label.
    """
    turn = parse_turn(text, name)
    public = " ".join([turn.speech, *turn.actions])
    low = public.lower()
    if not public.strip():
        return 0.0
    if any(t in low for t in ("system_thinking", "role_thinking", "role_action", "<", ">")):
        return 0.0  # markup on a public channel: something private may be leaking
    privates = [s.text for s in turn.segments if s.channel in PRIVATE_CHANNELS]
    if any(len(p) >= 12 and p.lower() in low for p in privates):
        return 0.0
    checks = [
        bool(turn.plan) if plan else True,
        tag_errors(text) == 0,
        bool(turn.thoughts),
        f"{name}:" not in turn.speech and "\n" not in text.strip(),
    ]
    return sum(checks) / len(checks)


def _names(kwargs: dict, n: int) -> list[str]:
    names = kwargs.get("character") or [""] * n
    return [str(x) for x in names]


def format_reward(prompts: Sequence[Any], completions: Sequence[Any], **kw: Any) -> list[float]:
    prefills = kw.get("prefill") or [""] * len(completions)
    plans = kw.get("plan") or [True] * len(completions)
    return [
        format_score(completion_text(c, p), n, plan=bool(pl))
        for c, p, n, pl in zip(
            completions, prefills, _names(kw, len(completions)), plans, strict=True
        )
    ]


def _turn_chars(text: str, name: str) -> int:
    t = parse_turn(text, name)
    return len(" ".join([*t.thoughts, *t.actions, t.speech]).strip())


def length_penalty(min_chars: int = 20, max_chars: int = 400) -> Callable[..., list[float]]:
    """0 for turns of min..max characters (thoughts, actions, speech), down to -1 outside."""

    def length(prompts: Sequence[Any], completions: Sequence[Any], **kw: Any) -> list[float]:
        prefills = kw.get("prefill") or [""] * len(completions)
        out = []
        for c, p, name in zip(completions, prefills, _names(kw, len(completions)), strict=True):
            n = _turn_chars(completion_text(c, p), name)
            if n < min_chars:
                out.append(-min(1.0, (min_chars - n) / max(1, min_chars)))
            elif n > max_chars:
                out.append(-min(1.0, (n - max_chars) / max_chars))
            else:
                out.append(0.0)
        return out

    length.__name__ = "length"
    return length


def repetition_penalty(
    prompts: Sequence[Any], completions: Sequence[Any], **kw: Any
) -> list[float]:
    prefills = kw.get("prefill") or [""] * len(completions)
    return [
        -repetition_ratio(completion_text(c, p)) for c, p in zip(completions, prefills, strict=True)
    ]


repetition_penalty.__name__ = "repetition"


class JudgeReward:
    """The judge's verdict of each rollout against the sample's reference turn (both orders).

    Needs dataset columns `her_json` (the sample's structured inputs) and `prefill`.
    `abstain`: the reward when the judge gives no readable verdict in either order.
    """

    __name__ = "judge"

    def __init__(self, judge: Judge, *, both_orders: bool = True, abstain: float = 0.5) -> None:
        self.judge = judge
        self.both_orders = both_orders
        self.abstain = abstain

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kw: Any
    ) -> list[float]:
        prefills = kw.get("prefill") or [""] * len(completions)
        items = []
        for c, p, her in zip(completions, prefills, kw["her_json"], strict=True):
            persona, history, reference = decode_her({"her": json.loads(her)})
            items.append((persona, history, completion_text(c, p), reference))
        comps = self.judge.compare_many(items, both_orders=self.both_orders)
        return [self.abstain if c.score is None else c.score for c in comps]


def judge_backend_from_spec(spec: str, **kw: Any) -> Backend | None:
    """`heuristic`, `hf:DIR`, `openai:URL#MODEL`, `openai-chat:URL#MODEL`, `gguf:PATH`, `none`."""
    if spec in ("none", "", None):
        return None
    if spec == "heuristic":
        from .pairs import heuristic_backend

        return heuristic_backend()
    if spec.startswith("hf:"):
        from .hf_backend import TransformersBackend

        return TransformersBackend(spec[3:], **kw)
    from .plans import teacher_from_spec  # openai / openai-chat / gguf: helper-3's parser

    if spec == "mock":
        raise ConfigError("judge 'mock' is the plan teacher; use judge: heuristic")
    return teacher_from_spec(spec, **kw)


# ---------------------------------------------------------------------------------------------
# Config, data, trainer
# ---------------------------------------------------------------------------------------------


@dataclass
class RLRunConfig:
    """Everything a GRPO run of the policy needs; YAML keys are these field names."""

    # policy
    model: str = "tiny"  # "tiny" | "embedded:gemma-3-270m" | HF dir (e.g. an SFT merged dir)
    gguf_file: str | None = None
    tiny: dict = field(default_factory=dict)
    chat_template: str | None = "chatml"
    dtype: str = "auto"
    attn_implementation: str | None = None
    # data: SFT samples (their `her` field gives persona, history, reference turn)
    train_file: str = "synthetic:32"
    train_split: str | None = "train"
    max_train_samples: int | None = None
    max_prompt_tokens: int = 1024  # longer prompts are dropped
    plan: bool = True  # ask for a plan (system prompt + `<system_thinking>` prefill)
    # judge and rewards
    judge: str = "heuristic"
    judge_both_orders: bool = True
    judge_detail: str = "brief"
    judge_principles: str | None = None  # a principles YAML (default: the packaged set)
    judge_principle_ids: list | None = None  # a subset, e.g. for small judges
    judge_max_tokens: int = 384
    judge_retries: int = 1
    judge_concurrency: int = 8
    judge_abstain: float = 0.5
    reward_weights: dict = field(
        default_factory=lambda: {"judge": 1.0, "format": 0.5, "length": 0.1, "repetition": 0.5}
    )
    length_min_chars: int = 20
    length_max_chars: int = 400
    # LoRA
    peft: str = "lora"  # "lora" | "none"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: Any = "all-linear"
    # GRPO
    output_dir: str = "runs/rl"
    max_steps: int = 50
    num_generations: int = 4
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_completion_length: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.0
    loss_type: str = "dapo"
    learning_rate: float = 1e-5
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 42
    # rollouts on vLLM (GPU): colocate (same process) or server (`trl vllm-serve`)
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    vllm_server_base_url: str | None = None
    vllm_gpu_memory_utilization: float = 0.3
    vllm_tensor_parallel_size: int = 1
    # bookkeeping
    logging_steps: int = 1
    save_steps: int = 100
    save_total_limit: int | None = 2
    deepspeed: str | None = None
    report_to: str = "none"
    save_merged: bool = False
    trl_args: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.peft not in ("lora", "none"):
            raise ConfigError(f"peft must be lora or none, not {self.peft!r}")
        unknown = set(self.reward_weights) - {"judge", "format", "length", "repetition"}
        if unknown:
            raise ConfigError(f"unknown reward_weights key(s): {', '.join(sorted(unknown))}")
        if self.vllm_mode not in ("colocate", "server"):
            raise ConfigError("vllm_mode must be colocate or server")
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2 (GRPO compares a group)")


def policy_rows(samples: Sequence[dict], *, plan: bool = True) -> list[dict]:
    """GRPO rows from SFT samples: a text `prompt` rendered by her_sdk.format (ChatML with the
    runtime's prefill), plus the columns the rewards read."""
    rows = []
    for s in samples:
        if "her" not in s:
            continue
        persona, history, _ = decode_her(s)
        p = render_prompt(persona, history, style="chatml", plan=plan)
        rows.append(
            {
                "prompt": p.text,
                "prefill": p.prefill,
                "character": persona.name,
                "plan": plan,
                "her_json": json.dumps(s["her"]),
            }
        )
    return rows


def _drop_long(tokenizer, rows: list[dict], max_tokens: int) -> tuple[list[dict], int]:
    keep = [
        r
        for r in rows
        if len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) <= max_tokens
    ]
    return keep, len(rows) - len(keep)


def build_grpo_trainer(
    cfg: Any,
    rows: list[dict],
    reward_funcs: list,
    weights: list[float],
    *,
    model_spec=None,
    tokenizer=None,
    model=None,
):
    """A trl GRPOTrainer for `rows` (needs a `prompt` column) with the given rewards.

    `cfg` is an RLRunConfig-like object (the judge's RL in `rm.py` reuses this)."""
    require_train_extra()
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import GRPOConfig, GRPOTrainer

    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    spec = model_spec or resolve_model(
        cfg.model, gguf_file=cfg.gguf_file, tiny=cfg.tiny, work_dir=out
    )
    tok = tokenizer or load_tokenizer(spec, cfg.chat_template)
    if model is None:  # a caller may pass a loaded model (benchmarks reuse one load)
        model = load_causal_lm(spec, dtype=cfg.dtype, attn_implementation=cfg.attn_implementation)
    # trl's generation stops at the model's eos; ChatML models end turns with <|im_end|>.
    if tok.eos_token_id is not None:
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
    peft_config = None
    if cfg.peft == "lora":
        peft_config = lora_config(
            cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules
        )
    vllm: dict[str, Any] = {}
    if cfg.use_vllm:
        vllm = {
            "use_vllm": True,
            "vllm_mode": cfg.vllm_mode,
            "vllm_gpu_memory_utilization": cfg.vllm_gpu_memory_utilization,
            "vllm_tensor_parallel_size": cfg.vllm_tensor_parallel_size,
        }
        if cfg.vllm_server_base_url:
            vllm["vllm_server_base_url"] = cfg.vllm_server_base_url
    args = GRPOConfig(
        output_dir=str(out),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        max_grad_norm=cfg.max_grad_norm,
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        reward_weights=list(weights),
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to=cfg.report_to,
        deepspeed=cfg.deepspeed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        **vllm,
        **cfg.trl_args,
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=peft_config,
    )


def build_rewards(
    cfg: RLRunConfig, judge_backend: Backend | None = None
) -> tuple[list, list[float]]:
    """The weighted reward functions of `cfg` (zero-weight terms are left out)."""
    w = cfg.reward_weights
    funcs: list = []
    weights: list[float] = []
    if w.get("judge", 0):
        backend = judge_backend if judge_backend is not None else judge_backend_from_spec(cfg.judge)
        if backend is not None:
            ps = load_principles(cfg.judge_principles).subset(cfg.judge_principle_ids)
            judge = Judge(
                backend,
                principles=ps,
                detail=cfg.judge_detail,
                retries=cfg.judge_retries,
                max_tokens=cfg.judge_max_tokens,
                concurrency=cfg.judge_concurrency,
            )
            funcs.append(
                JudgeReward(judge, both_orders=cfg.judge_both_orders, abstain=cfg.judge_abstain)
            )
            weights.append(float(w["judge"]))
        else:
            log.warning("reward_weights.judge is set but judge is none; no judge reward")
    if w.get("format", 0):
        funcs.append(format_reward)
        weights.append(float(w["format"]))
    if w.get("length", 0):
        funcs.append(length_penalty(cfg.length_min_chars, cfg.length_max_chars))
        weights.append(float(w["length"]))
    if w.get("repetition", 0):
        funcs.append(repetition_penalty)
        weights.append(float(w["repetition"]))
    if not funcs:
        raise ConfigError("no reward: set a positive weight in reward_weights")
    return funcs, weights


@dataclass
class RLResult:
    output_dir: str
    train_prompts: int
    dropped_long: int
    steps: int
    rewards: list[str]
    reward_first: float | None
    reward_last: float | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reward_trace(trainer) -> list[float]:
    return [
        float(h["reward"])
        for h in trainer.state.log_history
        if isinstance(h.get("reward"), (int, float)) and math.isfinite(h["reward"])
    ]


def run_rl(cfg: RLRunConfig, *, judge_backend: Backend | None = None) -> RLResult:
    """GRPO of the policy; saves adapter/model + tokenizer + `her_rl.json`."""
    require_train_extra()
    t0 = time.perf_counter()
    out = Path(cfg.output_dir)
    spec = resolve_model(cfg.model, gguf_file=cfg.gguf_file, tiny=cfg.tiny, work_dir=out)
    tok = load_tokenizer(spec, cfg.chat_template)
    samples = load_rows(cfg.train_file, cfg.train_split)
    if cfg.max_train_samples:
        samples = samples[: cfg.max_train_samples]
    rows, dropped = _drop_long(tok, policy_rows(samples, plan=cfg.plan), cfg.max_prompt_tokens)
    if not rows:
        raise ConfigError(f"no usable prompts in {cfg.train_file} ({dropped} too long)")
    funcs, weights = build_rewards(cfg, judge_backend)
    trainer = build_grpo_trainer(cfg, rows, funcs, weights, model_spec=spec, tokenizer=tok)
    trainer.train()
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        tok.save_pretrained(str(out))
        if cfg.save_merged and cfg.peft != "none":
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(str(out / "merged"))
            tok.save_pretrained(str(out / "merged"))
    trace = _reward_trace(trainer)
    res = RLResult(
        output_dir=str(out),
        train_prompts=len(rows),
        dropped_long=dropped,
        steps=int(trainer.state.global_step),
        rewards=[getattr(f, "__name__", type(f).__name__) for f in funcs],
        reward_first=trace[0] if trace else None,
        reward_last=trace[-1] if trace else None,
        seconds=round(time.perf_counter() - t0, 2),
    )
    if trainer.is_world_process_zero():
        report = {
            "stage": "rl",
            "config": config_dict(cfg),
            "result": res.as_dict(),
            "log": trainer.state.log_history,
        }
        (out / "her_rl.json").write_text(json.dumps(report, indent=2, default=str))
    return res


def main(argv: list[str] | None = None) -> None:
    """`python -m her_sdk.training.rl --config FILE [key=value ...]` (for accelerate launch)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--output_dir", default=None)
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(RLRunConfig, a.config, a.overrides, output_dir=a.output_dir)
    print(json.dumps(run_rl(cfg).as_dict(), indent=2))


if __name__ == "__main__":
    main()
