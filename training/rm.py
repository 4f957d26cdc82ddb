"""Training the HER reward model (generative pairwise judge): `RMArguments`, `run_rm`.

    # CPU smoke run: tiny random judge, automatic pairs from synthetic scenes (about a minute):
    her train rm --config training/configs/rm_tiny_cpu.yaml --output_dir runs/rm-tiny

    # Gemma-3-270M judge (the SDK's GGUF, dequantized), LoRA, on the RM portion of the data:
    her train rm --config training/configs/rm_gemma3_270m.yaml --output_dir runs/rm

    # Qwen3-32B judge on GPUs (see the config's header for the hardware):
    accelerate launch --config_file training/configs/accelerate_zero3.yaml \
        -m her_sdk.training rm --config training/configs/rm_qwen3_32b.yaml

Stages:
1. data — preference pairs: `pairs_file` (teacher-judged pairs from `her data rm-pairs`, or
   any `pairs.auto_pairs` / `pairs.teacher_rows` JSONL) or, by default, automatic
   gold-vs-corrupted pairs built from `samples`. Each pair becomes judge prompt/verdict rows in
   both candidate orders (`pairs.judge_sft_rows`), written to `OUTPUT/judge_data.jsonl`.
2. SFT of the judge on those verdicts — `training.sft` with the keys under `train:` (an SFT
   config: SFTArguments, trl's ModelConfig and SFTConfig), loss on the verdict only.
3. optional RL of the judge (`rl_steps > 0`): GRPO from the SFT model with a verifiable reward,
   1 when the parsed verdict names the labelled candidate, else 0 (`verdict_reward`); the keys
   under `rl:` are those of an RL config. Its pairs come from `rl_pairs_file` or `rl_samples`
   (the `rm_rl` portion of `her data split`, as HER trains its judge's RL on data of its own);
   without either, from the SFT pairs' training rows.
Held-out pairwise accuracy (both orders combined) is measured before and after when
`eval_pairs > 0`. Results: the adapter/model in OUTPUT (RL: OUTPUT/rl), `her_rm.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from her_sdk import ConfigError
from her_sdk.format import Message, render_chatml

from .common import (
    ModelSpec,
    config_dict,
    load_causal_lm,
    load_rows,
    load_tokenizer,
    parse_config,
    require_train_extra,
    resolve_model,
)
from .data import read_jsonl, write_jsonl
from .judge import WINNER_PATTERNS, parse_verdict
from .pairs import CORRUPTIONS, auto_pairs, judge_sft_rows
from .principles import PrincipleSet, load_principles

__all__ = [
    "RMArguments",
    "RMResult",
    "build_pair_data",
    "config_types",
    "judge_accuracy",
    "rl_configs",
    "run_rm",
    "sft_configs",
    "trainer_phases",
    "verdict_reward",
]

log = logging.getLogger("her_sdk.training.rm")


@dataclass
class RMArguments:
    """A reward-model run. Its two training stages are nested: `train` holds the keys of an
    SFT config (`training/sft.py`: SFTArguments, ModelConfig, SFTConfig) and `rl` those of an
    RL config (`training/rl.py`); both are type-checked when the file is read."""

    output_dir: str = "runs/rm"
    # data
    samples: str = "synthetic:96"  # gold turns: synthetic:N or the RM portion of `her data split`
    pairs_file: str | None = None  # prebuilt pairs (`her data rm-pairs` / auto_pairs JSONL)
    # the judge's RL data, as `samples`/`pairs_file` for its SFT (the rm_rl portion of
    # `her data split`); neither: the SFT pairs' training rows
    rl_samples: str | None = None
    rl_pairs_file: str | None = None
    corruptions: list[str] = field(default_factory=lambda: list(CORRUPTIONS))
    per_sample: int = 1
    both_orders: bool = True
    eval_every: int = 10  # when the data has no eval split: every n-th pair is held out
    # judge prompt
    principles: str | None = None  # a principles YAML (default: the packaged set)
    principle_ids: list[str] | None = None  # a subset (small judges, short prompts)
    detail: str = "brief"  # "brief" | "full" principle descriptions
    max_history: int | None = 8
    # "sdk": this project's judge prompt and answer; "her_rm": HER-RM's prompt without a
    # principle list and HER's JSON answer, from `her data rm-pairs --protocol her` pairs
    judge_prompt: str = "sdk"
    # HER's quotas by winner pattern (filter_high_quality_sft.py: both_sides 20,000, cand_1_only
    # and cand_2_only 10,000 each), on pairs of `rm-pairs --protocol her`: pairs of a pattern
    # past its cap are left out (seeded), so one-sided verdicts cannot swamp the judge's data
    pattern_caps: dict[str, int] | None = None
    # accuracy measurement (generative, greedy, both orders)
    eval_pairs: int = 0
    eval_max_tokens: int = 160
    eval_batch_size: int = 8
    # stage 2: the judge's SFT (keys of an SFT config)
    train: dict[str, Any] = field(default_factory=dict)
    # stage 3: the judge's GRPO (keys of an RL config)
    rl_steps: int = 0
    rl: dict[str, Any] = field(default_factory=dict)
    # start the GRPO from this merged SFT judge and skip stage 2 (a second launch, after
    # `her train merge`); None: from OUTPUT/merged of this same run
    rl_from: str | None = None

    def __post_init__(self) -> None:
        bad = [c for c in self.corruptions if c not in CORRUPTIONS]
        if bad:
            raise ConfigError(f"unknown corruption(s) {bad}; use {list(CORRUPTIONS)}")
        if self.detail not in ("brief", "full"):
            raise ConfigError("detail must be brief or full")
        caps = self.pattern_caps or {}
        bad_caps = set(caps) - set(WINNER_PATTERNS)
        if bad_caps or any(not isinstance(v, int) or v < 0 for v in caps.values()):
            raise ConfigError(
                f"pattern_caps: patterns are {', '.join(WINNER_PATTERNS)}, caps counts >= 0"
            )
        if self.judge_prompt not in ("sdk", "her_rm"):
            raise ConfigError("judge_prompt must be sdk or her_rm")
        if self.judge_prompt == "her_rm" and self.eval_pairs and self.eval_max_tokens < 2048:
            raise ConfigError(
                "judge_prompt her_rm: the judge answers with a JSON analysis per principle; "
                f"eval_max_tokens {self.eval_max_tokens} would cut it (use >= 2048)"
            )


def config_types() -> tuple[type, ...]:
    """The dataclasses of an RM config file, in `parse_config` order."""
    return (RMArguments,)


def sft_configs(args: RMArguments, *, for_this_machine: bool = True) -> tuple[Any, ...]:
    """(SFTArguments, ModelConfig, SFTConfig) of the judge's SFT: `args.train` plus the judge
    data written by the run and the run's output directory."""
    from .sft import config_types as sft_types

    over = {
        "train_file": str(Path(args.output_dir) / "judge_data.jsonl"),
        "train_split": "train",
        "eval_split": "eval",
        **args.train,
        "output_dir": args.output_dir,
    }
    if args.rl_steps > 0 and over.get("use_peft") and not args.rl_from:
        over["save_merged"] = True  # the judge's RL starts from the merged SFT model
    try:
        return parse_config(sft_types(), None, over, for_this_machine=for_this_machine)
    except ConfigError as exc:
        raise ConfigError(f"train.{exc}") from None


def rl_configs(
    args: RMArguments, start: str, sft: tuple[Any, ...], *, for_this_machine: bool = True
) -> tuple[Any, ...]:
    """(RLArguments, ModelConfig, GRPOConfig) of the judge's GRPO from model dir `start`."""
    from .rl import config_types as rl_types

    sft_args, sft_model, sft_train = sft
    over = {
        "model_name_or_path": start,
        "chat_template": sft_args.chat_template,
        "dtype": sft_model.dtype,
        # the judge's RL trains a LoRA like its SFT did, unless `rl:` says otherwise
        "use_peft": sft_model.use_peft,
        "lora_r": sft_model.lora_r,
        "lora_alpha": sft_model.lora_alpha,
        "lora_target_modules": sft_model.lora_target_modules,
        "judge_model": "none",
        "seed": sft_train.seed,
        "bf16": sft_train.bf16,
        "activation_checkpointing": sft_train.activation_checkpointing,
        **args.rl,
        "max_steps": args.rl_steps,
        "output_dir": str(Path(args.output_dir) / "rl"),
    }
    try:
        return parse_config(rl_types(), None, over, for_this_machine=for_this_machine)
    except ConfigError as exc:
        raise ConfigError(f"rl.{exc}") from None


def check_nested(args: RMArguments, *, for_this_machine: bool = True) -> None:
    """Type-check the nested `train` and `rl` stage configs now, not after the data is built."""
    sft = sft_configs(args, for_this_machine=for_this_machine)
    if args.rl_steps > 0:
        rl_configs(args, "judge", sft, for_this_machine=for_this_machine)


def trainer_phases(args: RMArguments) -> list[tuple[str, str, str, tuple[Any, ...]]]:
    """The trainers a run starts, for the memory plan of `her train check`: (phase, trainer
    "sft" or "grpo", the config section holding its keys, its three configs)."""
    sft = sft_configs(args, for_this_machine=False)
    phases = []
    if not args.rl_from:  # rl_from: a launch of the judge's RL alone
        phases.append(("judge SFT", "sft", "train", sft))
    if args.rl_steps > 0:
        start = args.rl_from or sft[1].model_name_or_path
        phases.append(
            ("judge RL", "grpo", "rl", rl_configs(args, start, sft, for_this_machine=False))
        )
    return phases


@dataclass
class RMResult:
    output_dir: str
    pairs: dict
    sft: dict | None  # None when the run only did the judge's RL (`rl_from`)
    accuracy_before: dict | None
    accuracy_after: dict | None
    rl: dict | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _principles(cfg: RMArguments) -> PrincipleSet:
    return load_principles(cfg.principles).subset(cfg.principle_ids)


def cap_patterns(pairs: Sequence[dict], caps: dict[str, int], seed: int = 42) -> list[dict]:
    """`pairs` with at most `caps[pattern]` pairs of each winner pattern (both records of a
    pair stay together), chosen with a seeded shuffle as HER's filter samples (seed 42); pairs
    without a pattern, or of an uncapped one, are all kept. Order is kept."""
    by_pattern: dict[str, list[str]] = {}
    for p in pairs:
        pattern = p.get("winner_pattern")
        ids = by_pattern.setdefault(str(pattern), [])
        if pattern in caps and p["id"] not in ids:
            ids.append(p["id"])
    dropped: set[str] = set()
    rng = random.Random(seed)
    for pattern, ids in by_pattern.items():
        cap = caps.get(pattern)
        if cap is not None and len(ids) > cap:
            rng.shuffle(ids)
            dropped.update(ids[cap:])
    if dropped:
        log.info("pattern_caps: %d pairs over their pattern's cap left out", len(dropped))
    return [p for p in pairs if p["id"] not in dropped]


def build_pair_data(cfg: RMArguments) -> tuple[list[dict], list[dict]]:
    """(pairs, judge SFT rows) for `cfg`; every pair has a `split` (train / eval)."""
    if cfg.pairs_file:
        if not Path(cfg.pairs_file).exists():
            raise ConfigError(f"pairs file not found: {cfg.pairs_file}")
        pairs = read_jsonl(cfg.pairs_file)
        if cfg.pattern_caps:
            pairs = cap_patterns(pairs, cfg.pattern_caps)
    else:
        samples = load_rows(cfg.samples, None)
        pairs = auto_pairs(samples, kinds=cfg.corruptions, per_sample=cfg.per_sample)
    if not pairs:
        raise ConfigError("no preference pairs (are the samples from `her data convert`?)")
    if not any(p.get("split") == "eval" for p in pairs) and cfg.eval_every:
        for p in pairs:
            h = int(hashlib.sha1(str(p["id"]).encode()).hexdigest(), 16)
            p["split"] = "eval" if h % cfg.eval_every == 0 else "train"
    rows = judge_sft_rows(
        pairs,
        principles=_principles(cfg),
        detail=cfg.detail,
        both_orders=cfg.both_orders,
        max_history=cfg.max_history,
        prompt_format=cfg.judge_prompt,
    )
    return pairs, rows


# ---------------------------------------------------------------------------------------------
# Accuracy and the verifiable reward
# ---------------------------------------------------------------------------------------------


def _prompt_text(messages: Sequence[dict]) -> str:
    return render_chatml([Message(m["role"], m["content"]) for m in messages])


def judge_accuracy(
    backend, rows: Sequence[dict], principles: PrincipleSet, *, max_tokens: int = 160
) -> dict[str, float]:
    """Pairwise accuracy of a judge on labelled rows (from `judge_sft_rows`, both orders).

    Per pair, the gold candidate's score in each order (1 win, .5 tie, 0 loss; unreadable
    verdicts are left out) is averaged; `accuracy` is the share of pairs whose combined score
    is above .5, `mean_score` its mean (abstained pairs count .5), `abstain` the share of
    unreadable verdicts, `consistent` the share of pairs with the same winner in both orders.
    `backend` needs `generate_batch` (TransformersBackend) or a her_sdk Backend.
    """
    prompts = [_prompt_text(r["prompt"]) for r in rows]
    if hasattr(backend, "generate_batch"):
        texts = backend.generate_batch(prompts, max_new_tokens=max_tokens)
    else:
        from her_sdk import Sampling

        texts = [
            "".join(backend.stream(p, sampling=Sampling(max_tokens=max_tokens, temperature=0)))
            for p in prompts
        ]
    by_pair: dict[str, list[float | None]] = {}
    unread = 0
    for r, t in zip(rows, texts, strict=True):
        v = parse_verdict(t, principles)
        pid = r["id"].rsplit(":", 1)[0]
        if v is None:
            unread += 1
            by_pair.setdefault(pid, []).append(None)
            continue
        if r["label"] == "tie":  # a teacher's tie: only a tie is right
            s = float(v.better == "tie")
        else:
            s = 0.5 if v.better == "tie" else float(v.better == r["label"])
        by_pair.setdefault(pid, []).append(s)
    scores, consistent, n = [], 0, len(by_pair)
    for ss in by_pair.values():
        got = [s for s in ss if s is not None]
        scores.append(sum(got) / len(got) if got else 0.5)
        consistent += len(got) == 2 and got[0] == got[1]
    return {
        "pairs": n,
        "accuracy": sum(s > 0.5 for s in scores) / max(1, n),
        "mean_score": sum(scores) / max(1, n),
        "abstain": unread / max(1, len(rows)),
        "consistent": consistent / max(1, n),
    }


def verdict_reward(
    prompts: Sequence[Any], completions: Sequence[Any], label: Sequence[str], **kw: Any
) -> list[float]:
    """Verifiable reward for RL of the judge: 1 when the verdict names the labelled candidate."""
    from .rewards import completion_text

    out = []
    for c, lab in zip(completions, label, strict=True):
        v = parse_verdict(completion_text(c))
        out.append(1.0 if v is not None and v.better == lab else 0.0)
    return out


verdict_reward.__name__ = "verdict"


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _load_judge(spec, tokenizer, adapter_dir: str | None, batch_size: int = 8):
    from her_sdk import TransformersBackend

    model = load_causal_lm(spec)
    if adapter_dir and (Path(adapter_dir) / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    elif adapter_dir:
        model = load_causal_lm(ModelSpec(adapter_dir))
    return TransformersBackend(model, tokenizer, batch_size=batch_size)


def run_rm(args: RMArguments) -> RMResult:
    require_train_extra()
    from .sft import run_sft

    t0 = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ps = _principles(args)
    sft = sft_configs(args)  # checked before the data is built
    sft_args, sft_model, sft_train = sft
    pairs, rows = build_pair_data(args)
    from accelerate import PartialState

    state = PartialState()  # under `accelerate launch` every rank runs this: one writer
    if state.is_main_process:
        write_jsonl(sft_args.train_file, rows)
    state.wait_for_everyone()
    kinds: dict[str, int] = {}
    for p in pairs:
        kinds[p.get("kind") or "teacher"] = kinds.get(p.get("kind") or "teacher", 0) + 1
    eval_rows = [r for r in rows if r["split"] == "eval"]
    pair_info = {
        "pairs": len(pairs),
        "rows": len(rows),
        "eval_rows": len(eval_rows),
        "kinds": kinds,
    }
    log.info("judge data: %s", pair_info)
    if sft_model.model_name_or_path == "tiny" and "texts" not in sft_args.tiny:
        # A tiny tokenizer trained on judge text too keeps judge prompts short (tests, smoke runs).
        texts = [_prompt_text(r["prompt"] + r["completion"]) for r in rows[:24]]
        sft_args.tiny = {**sft_args.tiny, "texts": texts}
    spec = resolve_model(
        sft_model.model_name_or_path, gguf_file=sft_args.gguf_file, tiny=sft_args.tiny, work_dir=out
    )
    tok = load_tokenizer(spec, sft_args.chat_template)
    eval_sel = []
    if args.eval_pairs > 0:
        ids = list(dict.fromkeys(r["id"].rsplit(":", 1)[0] for r in eval_rows))[: args.eval_pairs]
        keep = set(ids)
        eval_sel = [r for r in eval_rows if r["id"].rsplit(":", 1)[0] in keep]

    before = None
    if eval_sel and not args.rl_from:
        before = judge_accuracy(
            _load_judge(spec, tok, None, args.eval_batch_size),
            eval_sel,
            ps,
            max_tokens=args.eval_max_tokens,
        )
        log.info("judge accuracy before: %s", before)
    if args.rl_from:  # the judge's SFT ran in an earlier launch; its merge is args.rl_from
        if args.rl_steps <= 0:
            raise ConfigError("rl_from is set but rl_steps is 0: nothing to run")
        if not Path(args.rl_from).is_dir():
            raise ConfigError(f"rl_from: {args.rl_from} not found (run `her train merge` first)")
        sft_res = None
    else:
        sft_res = run_sft(*sft)
    after = None
    if eval_sel and sft_res is not None:
        after = judge_accuracy(
            _load_judge(spec, tok, str(out), args.eval_batch_size),
            eval_sel,
            ps,
            max_tokens=args.eval_max_tokens,
        )
        log.info("judge accuracy after SFT: %s", after)

    rl_info = None
    if args.rl_steps > 0:
        rl_rows = [r for r in rows if r["split"] == "train"]
        if args.rl_samples or args.rl_pairs_file:
            own = replace(
                args, samples=args.rl_samples or args.samples, pairs_file=args.rl_pairs_file
            )
            rl_rows = build_pair_data(own)[1]  # all of them: the RL data is its own portion
            log.info("judge RL data: %d rows of its own", len(rl_rows))
        rl_info = _judge_rl(args, out, tok, rl_rows, sft, ps, eval_sel)
    res = RMResult(
        output_dir=str(out),
        pairs=pair_info,
        sft=sft_res.as_dict() if sft_res is not None else None,
        accuracy_before=before,
        accuracy_after=after,
        rl=rl_info,
        seconds=round(time.perf_counter() - t0, 2),
    )
    report = {"stage": "rm", "config": config_dict(args), "result": res.as_dict()}
    if state.is_main_process:  # a judge-RL-only launch keeps the SFT launch's report
        name = "her_rm_rl.json" if args.rl_from else "her_rm.json"
        (out / name).write_text(json.dumps(report, indent=2))
    return res


def _judge_rl(cfg: RMArguments, out: Path, tok, rows: list[dict], sft, ps, eval_sel):
    """GRPO of the SFT judge with the verifiable verdict reward."""
    from .rl import build_grpo_trainer

    start = out / "merged" if sft[1].use_peft else out
    if cfg.rl_from:  # a launch of the judge's RL alone, from the merge of its SFT
        start = Path(cfg.rl_from)
    rl_args, rl_model, rl_train = rl_configs(cfg, str(start), sft)
    data = [{"prompt": _prompt_text(r["prompt"]), "label": r["label"]} for r in rows]
    trainer = build_grpo_trainer(
        rl_args,
        rl_model,
        rl_train,
        data,
        [verdict_reward],
        [1.0],
        model_spec=ModelSpec(str(start)),
        tokenizer=tok,
    )
    trainer.train()
    rl_dir = Path(rl_train.output_dir)
    trainer.save_model(str(rl_dir))  # the adapter, gathered from every rank's shard
    if trainer.is_world_process_zero():
        tok.save_pretrained(str(rl_dir))
    trace = [float(h["reward"]) for h in trainer.state.log_history if "reward" in h]
    info: dict[str, Any] = {
        "steps": int(trainer.state.global_step),
        "output_dir": str(rl_dir),
        "reward_first": trace[0] if trace else None,
        "reward_last": trace[-1] if trace else None,
    }
    if eval_sel:
        from her_sdk import TransformersBackend

        info["accuracy"] = judge_accuracy(
            TransformersBackend(trainer.model, tok), eval_sel, ps, max_tokens=cfg.eval_max_tokens
        )
    return info
