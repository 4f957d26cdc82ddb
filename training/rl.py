"""RL of a HER policy against the reward model on trl's GRPOTrainer: `RLArguments`, rewards.

    # CPU smoke run: tiny random policy, rule-based in-process judge (about a minute):
    her train rl --config training/configs/rl_tiny_cpu.yaml --output_dir runs/rl-tiny

    # Gemma-3-270M policy (merged SFT output) with a judge trained by `her train rm`:
    her train rl --config training/configs/rl_gemma3_270m.yaml judge_model=runs/rm

    # Qwen3-32B on GPUs (see the config's header for the hardware and the judge server):
    accelerate launch --config_file training/configs/accelerate_zero3.yaml \
        -m her_sdk.training rl --config training/configs/rl_qwen3_32b.yaml

A config file holds the keys of `RLArguments` (HER's data, judge and reward options, below),
trl's `ModelConfig` (the policy and its LoRA) and trl's `GRPOConfig` (the GRPO run, vLLM).
Reward of a rollout (each term weighted by `rewards` in the config, trl sums them):
- `judge`: the generative judge's verdict of the rollout against the reference turn of the
  sample — win 1, tie 0.5, loss 0 — judged in both orders and averaged (`judge.Judge`);
- `format`: a valid dual-layer turn (plan when asked and within the runtime's plan cap,
  well-formed tags, something visible, any mix of thought/action/speech segments) with nothing
  private on a public channel (no tag text, no inner thought read aloud) — 0..1;
- `length`: 0 inside [length_min_chars, length_max_chars] of turn text, down to -1 outside;
- `repetition`: minus the share of repeated word trigrams.

The judge runs on any her_sdk Backend named by `judge_model`: `heuristic` (rule-based,
in-process, for tests), `none`, or a backend spec (`her_sdk.backend_from_spec`): a trained
judge's folder (in-process via transformers), `http://HOST/v1#MODEL` (vLLM or any
OpenAI-compatible server), a GGUF file (llama.cpp). Prompts are rendered by
`her_sdk.format.render_prompt` with the runtime's prefill, so the policy is trained on exactly
the prompts the SDK will show it.
This module trains; the judge prompt and verdict parsing live in `judge.py`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from her_sdk import Backend, ConfigError, backend_from_spec, cut_at_stop
from her_sdk.format import (
    CHATML_STOP,
    MAX_PLAN_CHARS,
    PRIVATE_CHANNELS,
    parse_turn,
    render_prompt,
)

from .common import (
    config_dict,
    load_causal_lm,
    load_rows,
    load_tokenizer,
    require_train_extra,
    resolve_model,
)
from .data import decode_her
from .judge import Judge
from .pairs import repetition_ratio, tag_errors
from .principles import load_principles

if TYPE_CHECKING:
    from trl import GRPOConfig, ModelConfig

__all__ = [
    "JudgeReward",
    "RLArguments",
    "RLResult",
    "build_grpo_trainer",
    "build_rewards",
    "completion_text",
    "config_types",
    "format_reward",
    "format_score",
    "length_penalty",
    "load_judge_backend",
    "policy_rows",
    "repetition_penalty",
    "run_rl",
    "turn_end_ids",
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


def format_score(text: str, name: str, *, plan: bool = True) -> float:
    """0..1: how well `text` (a full turn, plan included) follows the dual-layer format.

    0 when anything private reaches a public channel (tag text in speech/actions, an inner
    thought or the plan spoken aloud) or nothing visible is left; otherwise the share of
    checks passed: a plan when asked, within the runtime's plan cap (`MAX_PLAN_CHARS`),
    well-formed tags, no second speaker's line. Which segments a turn has is free: HER mixes
    speech only, action then speech, thought-action-speech, ... so no segment is required
    beyond something visible.
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
        len(turn.plan.strip()) <= MAX_PLAN_CHARS,
        tag_errors(text) == 0,
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
    `abstain`: the reward when the judge gives no readable verdict in either order (a backend
    error or an unreadable answer, after retries). Such rewards are constant, so a dead judge
    would leave RL optimising the other terms only: the share of abstentions among the last
    `window` comparisons is logged (`judge/abstain_rate`) and above `max_abstain_rate` the run
    stops with GenerationError.
    """

    __name__ = "judge"

    def __init__(
        self,
        judge: Judge,
        *,
        both_orders: bool = True,
        abstain: float = 0.5,
        max_abstain_rate: float = 0.2,
        window: int = 64,
    ) -> None:
        self.judge = judge
        self.both_orders = both_orders
        self.abstain = abstain
        self.max_abstain_rate = max_abstain_rate
        self.recent: deque[bool] = deque(maxlen=window)  # True: abstained
        self.abstain_rate = 0.0

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kw: Any
    ) -> list[float]:
        prefills = kw.get("prefill") or [""] * len(completions)
        items = []
        for c, p, her in zip(completions, prefills, kw["her_json"], strict=True):
            persona, history, reference = decode_her({"her": json.loads(her)})
            items.append((persona, history, completion_text(c, p), reference))
        comps = self.judge.compare_turns_many(items, both_orders=self.both_orders)
        self._watch([c.score is None for c in comps], kw.get("log_metric"))
        return [self.abstain if c.score is None else c.score for c in comps]

    def _watch(self, abstained: list[bool], log_metric: Callable | None) -> None:
        from her_sdk import GenerationError

        self.recent.extend(abstained)
        self.abstain_rate = sum(self.recent) / len(self.recent)
        if log_metric is not None:  # trl averages it per logging step
            log_metric("judge/abstain_rate", sum(abstained) / max(1, len(abstained)))
        if any(abstained):
            log.warning(
                "judge abstained on %d of %d rollouts (recent rate %.0f%%)",
                sum(abstained),
                len(abstained),
                100 * self.abstain_rate,
            )
        if len(self.recent) >= min(8, self.recent.maxlen or 8) and (
            self.abstain_rate > self.max_abstain_rate
        ):
            err = self.judge.last_error
            raise GenerationError(
                f"the judge abstained on {self.abstain_rate:.0%} of the last {len(self.recent)} "
                f"comparisons (judge_max_abstain_rate {self.max_abstain_rate:.0%}); "
                f"{self.judge.errors} backend errors"
                + (f", last: {type(err).__name__}: {err}" if err else ", answers unreadable")
            )


def load_judge_backend(spec: str | None) -> Backend | None:
    """The judge `judge_model` names: `none` (no judge), `heuristic` (the rule-based judge,
    in-process) or any backend spec (`her_sdk.backend_from_spec`)."""
    if spec in ("none", "", None):
        return None
    from .pairs import heuristic_judge

    return backend_from_spec("mock" if spec == "heuristic" else spec, mock=heuristic_judge)


# ---------------------------------------------------------------------------------------------
# Config, data, trainer
# ---------------------------------------------------------------------------------------------


REWARDS = ("judge", "format", "length", "repetition")


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
    judge_max_tokens: int = 384
    judge_retries: int = 1
    judge_concurrency: int = 8
    judge_abstain: float = 0.5  # the reward of a rollout the judge gives no verdict on
    judge_max_abstain_rate: float = 0.2  # stop the run above this share of abstentions
    judge_health_check: bool = True  # one judgment before training; fails fast on a dead judge
    # the reward terms and their weights (trl sums them); GRPOConfig.reward_weights is set from it
    rewards: dict[str, float] = field(
        default_factory=lambda: {"judge": 1.0, "format": 0.5, "length": 0.1, "repetition": 0.5}
    )
    length_min_chars: int = 20
    length_max_chars: int = 400
    save_merged: bool = False  # also write output_dir/merged (see `merge.merge_after_training`)

    def __post_init__(self) -> None:
        unknown = set(self.rewards) - set(REWARDS)
        if unknown:
            raise ConfigError(
                f"rewards: unknown term(s) {', '.join(sorted(unknown))}; use {', '.join(REWARDS)}"
            )
        if self.judge_detail not in ("brief", "full"):
            raise ConfigError("judge_detail must be brief or full")


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
        peft_config=get_peft_config(model_args),
    )


def build_rewards(
    args: RLArguments, judge_backend: Backend | None = None
) -> tuple[list, list[float]]:
    """The weighted reward functions of `args.rewards` (zero-weight terms are left out)."""
    w = args.rewards
    funcs: list = []
    weights: list[float] = []
    if w.get("judge", 0):
        backend = judge_backend
        if backend is None:
            backend = load_judge_backend(args.judge_model)
        if backend is not None:
            ps = load_principles(args.judge_principles).subset(args.judge_principle_ids)
            judge = Judge(
                backend,
                principles=ps,
                detail=args.judge_detail,
                retries=args.judge_retries,
                max_tokens=args.judge_max_tokens,
                concurrency=args.judge_concurrency,
            )
            funcs.append(
                JudgeReward(
                    judge,
                    both_orders=args.judge_both_orders,
                    abstain=args.judge_abstain,
                    max_abstain_rate=args.judge_max_abstain_rate,
                )
            )
            weights.append(float(w["judge"]))
        else:
            log.warning("rewards.judge is set but judge_model is none; no judge reward")
    if w.get("format", 0):
        funcs.append(format_reward)
        weights.append(float(w["format"]))
    if w.get("length", 0):
        funcs.append(length_penalty(args.length_min_chars, args.length_max_chars))
        weights.append(float(w["length"]))
    if w.get("repetition", 0):
        funcs.append(repetition_penalty)
        weights.append(float(w["repetition"]))
    if not funcs:
        raise ConfigError("no reward: set a positive weight in `rewards`")
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
    trainer.train()
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
