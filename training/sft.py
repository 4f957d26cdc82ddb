"""Supervised fine-tuning of a HER policy model on trl's SFTTrainer: `SFTArguments`, `run_sft`.

    # CPU smoke run, tiny random model built on the fly (well under a minute on 2 cores):
    her train sft --config training/configs/sft_tiny_cpu.yaml --output_dir runs/tiny

    # Gemma-3-270M (the SDK's embedded GGUF, loaded dequantized) with LoRA on its data portion:
    her data convert coser King_Lear.json --out data/lear.jsonl --eval-ratio 0.1
    her data split data/lear.jsonl --out data/lear
    her train sft --config training/configs/sft_gemma3_270m.yaml train_file=data/lear/sft.jsonl \
        --output_dir runs/gemma3-270m-sft

    # Qwen3-32B, LoRA, 8 GPUs per node, DeepSpeed ZeRO-3 (see the config for multi-node),
    # then the merge as a step of its own (training/recipes/qwen3_32b.md has the whole recipe):
    her train check --config training/configs/sft_qwen3_32b.yaml
    accelerate launch --config_file training/configs/accelerate_zero3.yaml \
        -m her_sdk.training sft --config training/configs/sft_qwen3_32b.yaml
    her train merge --adapter runs/her-sft-qwen3-32b --out runs/her-sft-qwen3-32b/merged

    # resume after an interruption (latest checkpoint in output_dir):
    her train sft --config ... --output_dir runs/gemma resume_from_checkpoint=latest

A config file holds the keys of three dataclasses, as trl's own scripts do: `SFTArguments`
(HER's data and model-source options, below), trl's `ModelConfig` (`model_name_or_path`,
`dtype`, `use_peft`, `lora_*`, `load_in_4bit`) and trl's `SFTConfig` (everything about the
training itself). Samples are trl prompt/completion conversations (see `training.data`); the
loss covers the completion only (the target turn: plan, thoughts, actions, speech and the
end-of-turn token), and samples longer than `max_length` are dropped rather than truncated so
a completion is never cut. The output directory gets checkpoints, the final adapter (or full
model), the tokenizer, and `her_sft.json` with the config and the eval loss before and after.

This module trains; it does not convert data or export models.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from her_sdk import ConfigError

from .common import (
    config_dict,
    last_checkpoint,
    load_causal_lm,
    load_rows,
    load_tokenizer,
    require_train_extra,
    resolve_model,
)

if TYPE_CHECKING:
    from trl import ModelConfig, SFTConfig

__all__ = ["SFTArguments", "SFTResult", "build_trainer", "config_types", "run_sft"]

log = logging.getLogger("her_sdk.training.sft")


@dataclass
class SFTArguments:
    """HER's own SFT options. Everything else is trl's: the model and LoRA in `ModelConfig`
    (`model_name_or_path`, `dtype`, `use_peft`, `lora_r`, `load_in_4bit`, ...), the training in
    `SFTConfig` (`output_dir`, `learning_rate`, `max_steps`, `max_length`, ...); one YAML file
    holds the keys of all three."""

    # where the model comes from, beyond ModelConfig.model_name_or_path
    gguf_file: str | None = None  # a GGUF inside the model directory (loaded dequantized)
    tiny: dict[str, Any] = field(default_factory=dict)  # build_tiny_model kwargs (model "tiny")
    chat_template: str | None = "chatml"  # "chatml" | "model" | a Jinja template
    # data
    train_file: str = "synthetic:64"  # synthetic:N or a `her data convert/split` JSONL
    eval_file: str | None = None  # None: the eval split of train_file
    train_split: str | None = "train"  # rows whose `split` field matches (None: all rows)
    eval_split: str = "eval"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    # bookkeeping
    eval_before: bool = True  # measure the held-out loss before training too
    # also write output_dir/merged (adapter folded in, from disk, by the main process); for big
    # distributed runs leave it off and run `her train merge` as a step of its own
    save_merged: bool = False


def config_types() -> tuple[type, ...]:
    """The dataclasses of an SFT config file, in `parse_config` order."""
    from trl import ModelConfig, SFTConfig

    return (SFTArguments, ModelConfig, SFTConfig)


@dataclass
class SFTResult:
    output_dir: str
    train_samples: int
    eval_samples: int
    dropped_long: int
    steps: int
    train_loss: float | None
    eval_loss_before: float | None
    eval_loss_after: float | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fits(tokenizer, rows: list[dict], max_length: int) -> tuple[list[dict], int]:
    """Drop samples longer than max_length: truncation would cut the completion (the target)."""
    keep = []
    for r in rows:
        ids = tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        if len(ids) <= max_length:
            keep.append({"prompt": r["prompt"], "completion": r["completion"]})
    return keep, len(rows) - len(keep)


class _LogLines:
    """A TrainerCallback printing one plain line per log event (readable in CI logs)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class LogLines(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                if not logs or not state.is_world_process_zero:
                    return
                keys = ("loss", "eval_loss", "learning_rate", "grad_norm", "train_loss")
                parts = [
                    f"{k}={logs[k]:.4g}" for k in keys if isinstance(logs.get(k), (int, float))
                ]
                if parts:
                    log.info("step %d/%d %s", state.global_step, state.max_steps, " ".join(parts))

        return LogLines()


def build_trainer(args: SFTArguments, model_args: ModelConfig, training_args: SFTConfig):
    """The configured trl SFTTrainer (model, tokenizer, datasets, LoRA), not yet trained.

    The model is loaded after `training_args` exists, so that under DeepSpeed ZeRO-3 the
    weights are partitioned as they load (transformers activates `zero.Init` from it).
    Returns (trainer, info) with info = {"model_spec", "train_samples", "eval_samples",
    "dropped_long"}.
    """
    require_train_extra()
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTTrainer, get_peft_config

    set_seed(training_args.seed)
    out = Path(training_args.output_dir)
    spec = resolve_model(
        model_args.model_name_or_path, gguf_file=args.gguf_file, tiny=args.tiny, work_dir=out
    )
    tokenizer = load_tokenizer(spec, args.chat_template)
    max_length = training_args.max_length or 1024

    train_rows = load_rows(args.train_file, args.train_split)
    if args.eval_file:
        eval_rows = load_rows(args.eval_file, None)
    else:
        eval_rows = load_rows(args.train_file, args.eval_split)
    train_rows, dropped = _fits(tokenizer, train_rows, max_length)
    eval_rows, dropped_eval = _fits(tokenizer, eval_rows, max_length)
    if args.max_train_samples:
        train_rows = train_rows[: args.max_train_samples]
    if args.max_eval_samples:
        eval_rows = eval_rows[: args.max_eval_samples]
    if not train_rows:
        raise ConfigError(
            f"no training samples in {args.train_file} (split {args.train_split!r}, "
            f"max_length {max_length}, {dropped} too long)"
        )
    if dropped or dropped_eval:
        log.warning(
            "dropped %d train / %d eval samples longer than %d tokens",
            dropped,
            dropped_eval,
            max_length,
        )
    model = load_causal_lm(
        spec,
        dtype=model_args.dtype or "auto",
        quantize_4bit=model_args.load_in_4bit,
        attn_implementation=model_args.attn_implementation,
    )
    if not eval_rows and training_args.eval_strategy != "no":
        training_args.eval_strategy = "no"  # nothing to evaluate on: trl would refuse to start
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[_LogLines()],
    )
    info = {
        "model_spec": spec,
        "train_samples": len(train_rows),
        "eval_samples": len(eval_rows),
        "dropped_long": dropped + dropped_eval,
    }
    return trainer, info


def _eval_loss(trainer) -> float | None:
    if trainer.eval_dataset is None:
        return None
    loss = trainer.evaluate().get("eval_loss")
    return float(loss) if loss is not None and math.isfinite(loss) else None


def run_sft(args: SFTArguments, model_args: ModelConfig, training_args: SFTConfig) -> SFTResult:
    """Train, evaluate held-out loss before/after, save adapter/model + tokenizer + report."""
    t0 = time.perf_counter()
    trainer, info = build_trainer(args, model_args, training_args)
    out = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    if resume in ("latest", "true"):
        resume = last_checkpoint(out)
        if resume is None:
            log.warning("no checkpoint in %s; starting from scratch", out)
    before = None
    if args.eval_before and not resume and trainer.eval_dataset is not None:
        # Evaluated by the training loop itself at step 0: under DeepSpeed an evaluate() before
        # train() builds an inference engine that train() then fails to back-propagate through.
        trainer.args.eval_on_start = True
    result = trainer.train(resume_from_checkpoint=resume or None)
    if trainer.args.eval_on_start:
        first = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h][:1]
        before = float(first[0]) if first and math.isfinite(first[0]) else None
    after = _eval_loss(trainer)
    trainer.save_model(str(out))  # the adapter (or model), gathered from every rank's shard
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(out))
    if args.save_merged and model_args.use_peft:
        from .merge import merge_after_training

        merge_after_training(trainer, info.pop("model_spec"), out, model_args.dtype)
    info.pop("model_spec", None)
    res = SFTResult(
        output_dir=str(out),
        steps=int(trainer.state.global_step),
        train_loss=float(result.training_loss) if result.training_loss is not None else None,
        eval_loss_before=before,
        eval_loss_after=after,
        seconds=round(time.perf_counter() - t0, 2),
        **info,
    )
    if trainer.is_world_process_zero():
        config = config_dict(args, model_args, training_args)
        report = {"stage": "sft", "config": config, "result": res.as_dict()}
        (out / "her_sft.json").write_text(json.dumps(report, indent=2))
    return res
