"""RL of a HER policy against the reward model on trl's GRPOTrainer: `RLArguments`, rewards.

    # CPU smoke run: tiny random policy, rule-based in-process judge (about a minute):
    her train rl --config training/configs/rl_tiny_cpu.yaml --output_dir runs/rl-tiny

    # Gemma-3-270M policy (merged SFT output) with a judge trained by `her train rm`:
    her train rl --config training/configs/rl_gemma3_270m.yaml judge_model=runs/rm

    # Qwen3-32B on GPUs (see the config's header for the hardware and the judge server):
    accelerate launch --config_file training/configs/accelerate_zero3.yaml \
        -m her_sdk.training rl --config training/configs/rl_qwen3_32b.yaml

    # The default model's second stage: GRPO of the SFT adapter against the game rewards:
    her train rl --config training/configs/rl_gemma3_270m_game.yaml init_adapter=runs/sft

A config file holds the keys of `RLArguments` (HER's data, judge and reward options, below),
trl's `ModelConfig` (the policy and its LoRA) and trl's `GRPOConfig` (the GRPO run, vLLM).
The reward of a rollout is the weighted sum (trl sums them) of the terms named in `rewards`,
rows of the table in `rewards.py`: the judge's verdict, format, length, repetition, and the game
terms a CPU computes (structure, shape, no narration, no quotes inside speech, no copying,
answers the last line, keeps the secret).

The judge runs on any her_sdk Backend named by `judge_model`: `heuristic` (rule-based,
in-process, for tests), `none`, or a backend spec (`her_sdk.backend_from_spec`): a trained
judge's folder (in-process via transformers), `http://HOST/v1#MODEL` (vLLM or any
OpenAI-compatible server), a GGUF file (llama.cpp). `judge_prompt: her_rm` asks it in HER-RM's
own prompt and reads its JSON answer, for the released HER-RM-32B:

    her train rl --config training/configs/rl_qwen3_32b.yaml \
        judge_model=http://judge-node:8001/v1#HER-RM-32B judge_prompt=her_rm Prompts are rendered by
`her_sdk.format.render_prompt` with the runtime's prefill, so the policy is trained on exactly
the prompts the SDK will show it.
A stopped run resumes with `resume_from_checkpoint=latest`. This module trains; the rewards live
in `rewards.py`, the judge prompt and verdict parsing in `judge.py`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from her_sdk import Backend, ConfigError
from her_sdk.format import MAX_PLAN_CHARS, render_prompt

from .common import (
    config_dict,
    last_checkpoint,
    load_causal_lm,
    load_rows,
    load_tokenizer,
    require_train_extra,
    resolve_model,
)
from .data import decode_her
from .judge import DEFAULT_MAX_TOKENS, PROMPT_FORMATS
from .rewards import JudgeReward, build_rewards, check_weights, shape_from

if TYPE_CHECKING:
    from trl import GRPOConfig, ModelConfig

__all__ = [
    "RLArguments",
    "RLResult",
    "build_grpo_trainer",
    "config_types",
    "policy_rows",
    "run_rl",
    "turn_end_ids",
]

log = logging.getLogger("her_sdk.training.rl")


# ---------------------------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------------------------


def turn_end_ids(tokenizer) -> list[int]:
    """The token ids that end an assistant turn: the chat template's own end-of-turn token
    (`<|im_end|>` for ChatML, `<end_of_turn>` for Gemma's template, ...) and the eos token.

    Read from the template itself: the text it writes right after an assistant message. A
    marker that the tokenizer splits into several tokens (ChatML's `<|im_end|>` on Gemma) cannot
    stop generation, so the template must then end a reply with eos (`common.load_tokenizer`
    does for ChatML); otherwise ConfigError, rather than rollouts that run to
    `max_completion_length` and train on what follows the turn.
    """
    probe = "her-turn-end-probe"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": probe}],
        tokenize=False,
    )
    suffix = text[text.rindex(probe) + len(probe) :]
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    ends: list[int] = []
    marker = suffix.strip().split()[0] if suffix.strip() else ""
    marker_ids = tokenizer(marker, add_special_tokens=False)["input_ids"] if marker else []
    if len(marker_ids) == 1:
        ends.append(marker_ids[0])
    eos = tokenizer.eos_token_id
    if eos is not None and (eos in ids or not marker):
        ends.append(eos)
    if not ends:
        raise ConfigError(
            f"the chat template ends a turn with {marker!r}, which this tokenizer splits into "
            f"{len(marker_ids)} tokens, and writes no eos after it: generation could not stop at "
            "the end of a turn. Use chat_template: chatml (it adds eos where needed) or a "
            "template whose end-of-turn marker is one token."
        )
    if eos is not None and eos not in ends:
        ends.append(eos)  # trl stops at eos anyway; listed for vLLM's stop_token_ids
    return list(dict.fromkeys(ends))


# ---------------------------------------------------------------------------------------------
# Config, data, trainer
# ---------------------------------------------------------------------------------------------


@dataclass
class RLArguments:
    """HER's own options of a GRPO run of the policy. Everything else is trl's: the policy model
    and its LoRA in `ModelConfig`, the GRPO run (`num_generations`, `max_completion_length`,
    `beta`, `loss_type`, `use_vllm`, `vllm_mode`, ...) in `GRPOConfig`."""

    # where the policy comes from, beyond ModelConfig.model_name_or_path
    gguf_file: str | None = None
    tiny: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = "chatml"
    # data: SFT samples (their `her` field gives persona, history, reference turn)
    train_file: str = "synthetic:32"  # the RL portion of `her data split`
    train_split: str | None = "train"
    max_train_samples: int | None = None
    max_prompt_tokens: int = 1024  # longer prompts are dropped
    plan: bool = True  # ask for a plan (system prompt + `<system_thinking>` prefill)
    # the judge: `load_judge_backend`'s spec (heuristic, none or a backend spec) and its prompt
    judge_model: str = "heuristic"
    judge_both_orders: bool = True
    judge_detail: str = "brief"  # "brief" | "full" principle descriptions
    judge_principles: str | None = None  # a principles YAML (default: the packaged set)
    judge_principle_ids: list[str] | None = None  # a subset, e.g. for small judges
    # "sdk": this project's judge prompt (a judge trained by `rm.py`); "her_rm": HER-RM's own
    # prompt and JSON answer (the released HER-RM-32B), see `judge.py`
    judge_prompt: str = "sdk"
    judge_max_tokens: int | None = None  # None: what the prompt's answer needs (384 / 4096)
    judge_retries: int = 1
    judge_concurrency: int = 8
    judge_abstain: float = 0.5  # the reward of a rollout the judge gives no verdict on
    judge_max_abstain_rate: float = 0.2  # stop the run above this share of abstentions
    judge_health_check: bool = True  # one judgment before training; fails fast on a dead judge
    # the reward terms (names of `rewards.REWARDS`) and their weights (trl sums them);
    # GRPOConfig.reward_weights is set from it
    rewards: dict[str, float] = field(
        default_factory=lambda: {"judge": 1.0, "format": 0.5, "length": 0.1, "repetition": 0.5}
    )
    length_min_chars: int = 20
    length_max_chars: int = 400
    # the longest plan the `format` reward accepts: the runtime's short cap for the project's
    # own models; a HER-style model plans at length (HER's plans run 800-2,500 characters)
    max_plan_chars: int = MAX_PLAN_CHARS
    # the turn shape the `shape` reward measures (`evaluation.lines.LineLimits`; missing keys:
    # the game default, one thought, one action, one speech of <= 3 sentences and <= 40 words)
    turn_shape: dict[str, int] = field(default_factory=dict)
    # a PEFT adapter folder (e.g. the SFT stage's output) whose LoRA this run trains further,
    # instead of a new one from ModelConfig's lora_* settings
    init_adapter: str | None = None
    save_merged: bool = False  # also write output_dir/merged (see `merge.merge_after_training`)

    def __post_init__(self) -> None:
        check_weights(self.rewards)
        if self.judge_detail not in ("brief", "full"):
            raise ConfigError("judge_detail must be brief or full")
        if self.judge_prompt not in PROMPT_FORMATS:
            raise ConfigError(f"judge_prompt must be one of {PROMPT_FORMATS}")
        if self.judge_max_tokens is None:
            self.judge_max_tokens = DEFAULT_MAX_TOKENS[self.judge_prompt]
        if self.judge_prompt == "her_rm" and self.judge_max_tokens < 2048:
            raise ConfigError(
                "HER-RM thinks, then writes a JSON analysis of 3-5 principles before its verdict: "
                f"judge_max_tokens {self.judge_max_tokens} would cut it; use >= 2048 (default 4096)"
            )
        self.shape = shape_from(self.turn_shape)


def config_types() -> tuple[type, ...]:
    """The dataclasses of an RL config file, in `parse_config` order."""
    from trl import GRPOConfig, ModelConfig

    return (RLArguments, ModelConfig, GRPOConfig)


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
    args: RLArguments,
    model_args: ModelConfig,
    training_args: GRPOConfig,
    rows: list[dict],
    reward_funcs: list,
    weights: list[float],
    *,
    model_spec=None,
    tokenizer=None,
    model=None,
):
    """A trl GRPOTrainer for `rows` (needs a `prompt` column) with the given weighted rewards.

    The model is loaded after `training_args` exists (ZeRO-3 partitions it as it loads); a
    caller may pass a loaded `model` instead (benchmarks reuse one load). The judge's own RL in
    `rm.py` reuses this with its verifiable reward."""
    require_train_extra()
    from datasets import Dataset
    from transformers import set_seed
    from trl import GRPOTrainer, get_peft_config

    set_seed(training_args.seed)
    spec = model_spec or resolve_model(
        model_args.model_name_or_path,
        gguf_file=args.gguf_file,
        tiny=args.tiny,
        work_dir=training_args.output_dir,
    )
    tok = tokenizer or load_tokenizer(spec, args.chat_template)
    if model is None:
        model = load_causal_lm(
            spec,
            dtype=model_args.dtype or "auto",
            attn_implementation=model_args.attn_implementation,
        )
    peft_config = get_peft_config(model_args)
    if args.init_adapter:
        # Train the given adapter further (the SFT stage's LoRA), so that the result is still
        # one adapter on the base: what `her export gguf-lora` ships.
        from peft import PeftModel

        if not Path(args.init_adapter, "adapter_config.json").is_file():
            raise ConfigError(f"init_adapter {args.init_adapter}: no adapter_config.json there")
        model = PeftModel.from_pretrained(model, args.init_adapter, is_trainable=True)
        peft_config = None
    # Rollouts end at the template's own end-of-turn token (<|im_end|>, <end_of_turn>) or eos,
    # read from the tokenizer, never assumed: trl stops at the model's eos ids, vLLM at its
    # sampling params' stop_token_ids.
    ends = turn_end_ids(tok)
    model.generation_config.eos_token_id = ends
    model.generation_config.pad_token_id = tok.pad_token_id
    if training_args.use_vllm:
        training_args.generation_kwargs = {
            "stop_token_ids": ends,
            **(training_args.generation_kwargs or {}),
        }
    if training_args.reward_weights is not None and list(training_args.reward_weights) != list(
        weights
    ):
        raise ConfigError("set the reward weights in `rewards`, not in reward_weights")
    training_args.reward_weights = list(weights)
    return GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=peft_config,
    )


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
    judge_abstain_rate: float | None = None  # over the last comparisons of the run

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reward_trace(trainer) -> list[float]:
    return [
        float(h["reward"])
        for h in trainer.state.log_history
        if isinstance(h.get("reward"), (int, float)) and math.isfinite(h["reward"])
    ]


def run_rl(
    args: RLArguments,
    model_args: ModelConfig,
    training_args: GRPOConfig,
    *,
    judge_backend: Backend | None = None,
) -> RLResult:
    """GRPO of the policy; saves adapter/model + tokenizer + `her_rl.json`."""
    require_train_extra()
    t0 = time.perf_counter()
    out = Path(training_args.output_dir)
    spec = resolve_model(
        model_args.model_name_or_path, gguf_file=args.gguf_file, tiny=args.tiny, work_dir=out
    )
    tok = load_tokenizer(spec, args.chat_template)
    samples = load_rows(args.train_file, args.train_split)
    if args.max_train_samples:
        samples = samples[: args.max_train_samples]
    rows, dropped = _drop_long(tok, policy_rows(samples, plan=args.plan), args.max_prompt_tokens)
    if not rows:
        raise ConfigError(f"no usable prompts in {args.train_file} ({dropped} too long)")
    funcs, weights = build_rewards(args, judge_backend)
    judge = next((f for f in funcs if isinstance(f, JudgeReward)), None)
    if judge is not None and args.judge_health_check:
        persona, history, reference = decode_her({"her": json.loads(rows[0]["her_json"])})
        judge.judge.health_check(persona, history, reference)  # before any model is loaded
        log.info("judge %s answered the health check", args.judge_model)
    trainer = build_grpo_trainer(
        args, model_args, training_args, rows, funcs, weights, model_spec=spec, tokenizer=tok
    )
    resume = training_args.resume_from_checkpoint
    if resume in ("latest", "true"):
        resume = last_checkpoint(out)
        if resume is None:
            log.warning("no checkpoint in %s; starting from scratch", out)
    trainer.train(resume_from_checkpoint=resume or None)
    trainer.save_model(str(out))  # the adapter (or model), gathered from every rank's shard
    if trainer.is_world_process_zero():
        tok.save_pretrained(str(out))
    if args.save_merged and model_args.use_peft:
        from .merge import merge_after_training

        merge_after_training(trainer, spec, out, model_args.dtype)
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
        judge_abstain_rate=judge.abstain_rate if judge is not None else None,
    )
    if trainer.is_world_process_zero():
        report = {
            "stage": "rl",
            "config": config_dict(args, model_args, training_args),
            "result": res.as_dict(),
            "log": trainer.state.log_history,
        }
        (out / "her_rl.json").write_text(json.dumps(report, indent=2, default=str))
    return res
