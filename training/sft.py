"""Supervised fine-tuning of a HER policy model: `SFTRunConfig` and `run_sft`, on trl's SFTTrainer.

    # CPU smoke run, tiny random model built on the fly (well under a minute on 2 cores):
    her train sft --config training/configs/sft_tiny_cpu.yaml --output_dir runs/tiny

    # Gemma-3-270M (the SDK's embedded GGUF, loaded dequantized) with LoRA on converted data:
    her data convert coser King_Lear.json --out data/lear.jsonl --eval-ratio 0.1
    her train sft --config training/configs/sft_gemma3_270m.yaml train_file=data/lear.jsonl \
        --output_dir runs/gemma

    # Qwen3-32B, LoRA, 8 GPUs per node, DeepSpeed ZeRO-3 (see the config for multi-node):
    accelerate launch --config_file training/configs/accelerate_zero3.yaml \
        -m her_sdk.training.sft --config training/configs/sft_qwen3_32b.yaml \
        --output_dir runs/her-sft-32b

    # resume after an interruption (latest checkpoint in output_dir):
    her train sft --config ... --output_dir runs/gemma resume_from_checkpoint=true

Samples are trl prompt/completion conversations (see `training.data`); the loss covers the
completion only (the target turn: plan, thoughts, actions, speech and the end-of-turn token),
packing is off by default, and long samples are dropped rather than truncated so a completion is
never cut. The output directory gets checkpoints, the final adapter (or full model), the
tokenizer, and `her_sft.json` with the config and the eval loss before and after training.

This module trains; it does not convert data or export models.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from her_sdk import ConfigError

from .common import (
    config_dict,
    last_checkpoint,
    load_causal_lm,
    load_config,
    load_rows,
    load_tokenizer,
    lora_config,
    require_train_extra,
    resolve_model,
)

__all__ = ["SFTResult", "SFTRunConfig", "build_trainer", "run_sft"]

log = logging.getLogger("her_sdk.training.sft")


@dataclass
class SFTRunConfig:
    """Everything an SFT run needs; YAML keys are these field names."""

    # model
    model: str = "tiny"  # "tiny" | "embedded:gemma-3-270m" | HF dir | path/to/model.gguf
    gguf_file: str | None = None
    tiny: dict = field(default_factory=dict)  # build_tiny_model kwargs when model == "tiny"
    chat_template: str | None = "chatml"  # "chatml" | "model" | a Jinja template
    dtype: str = "auto"
    attn_implementation: str | None = None
    # data
    train_file: str = "synthetic:64"
    eval_file: str | None = None  # None: the eval split of train_file
    train_split: str | None = "train"
    eval_split: str = "eval"
    max_length: int = 1024
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    # adapter
    peft: str = "lora"  # "lora" | "qlora" | "none" (full fine-tuning)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: Any = "all-linear"
    # optimisation
    output_dir: str = "runs/sft"
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 2
    per_device_eval_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    packing: bool = False
    completion_only_loss: bool = True
    seed: int = 42
    # bookkeeping
    logging_steps: int = 10
    eval_steps: int | None = None  # None: evaluate at the end only
    save_steps: int = 100
    save_total_limit: int | None = 2
    eval_before: bool = True
    resume_from_checkpoint: Any = None  # true (latest in output_dir) or a checkpoint path
    deepspeed: str | None = None
    report_to: str = "none"
    save_merged: bool = False  # also write output_dir/merged (adapter folded in) for export
    trl_args: dict = field(default_factory=dict)  # passed through to trl.SFTConfig

    def __post_init__(self) -> None:
        if self.peft not in ("lora", "qlora", "none"):
            raise ConfigError(f"peft must be lora, qlora or none, not {self.peft!r}")
        if self.max_length < 16:
            raise ConfigError("max_length must be >= 16")


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


def build_trainer(cfg: SFTRunConfig):
    """The configured trl SFTTrainer (model, tokenizer, datasets, LoRA), not yet trained.

    Returns (trainer, info) with info = {"train_samples", "eval_samples", "dropped_long"}.
    """
    require_train_extra()
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    spec = resolve_model(cfg.model, gguf_file=cfg.gguf_file, tiny=cfg.tiny, work_dir=out)
    tokenizer = load_tokenizer(spec, cfg.chat_template)

    train_rows = load_rows(cfg.train_file, cfg.train_split)
    if cfg.eval_file:
        eval_rows = load_rows(cfg.eval_file, None)
    else:
        eval_rows = load_rows(cfg.train_file, cfg.eval_split)
    train_rows, dropped = _fits(tokenizer, train_rows, cfg.max_length)
    eval_rows, dropped_eval = _fits(tokenizer, eval_rows, cfg.max_length)
    if cfg.max_train_samples:
        train_rows = train_rows[: cfg.max_train_samples]
    if cfg.max_eval_samples:
        eval_rows = eval_rows[: cfg.max_eval_samples]
    if not train_rows:
        raise ConfigError(
            f"no training samples in {cfg.train_file} (split {cfg.train_split!r}, "
            f"max_length {cfg.max_length}, {dropped} too long)"
        )
    if dropped or dropped_eval:
        log.warning(
            "dropped %d train / %d eval samples longer than %d tokens",
            dropped,
            dropped_eval,
            cfg.max_length,
        )

    model = load_causal_lm(
        spec,
        dtype=cfg.dtype,
        quantize_4bit=cfg.peft == "qlora",
        attn_implementation=cfg.attn_implementation,
    )
    peft_config = None
    if cfg.peft != "none":
        peft_config = lora_config(
            cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules
        )
    has_eval = bool(eval_rows)
    use_cpu = not torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(out),
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=cfg.bf16,
        packing=cfg.packing,
        completion_only_loss=cfg.completion_only_loss,
        max_length=cfg.max_length,
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        eval_strategy=("steps" if cfg.eval_steps else "no") if has_eval else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to=cfg.report_to,
        deepspeed=cfg.deepspeed,
        use_cpu=use_cpu,
        dataloader_num_workers=0,
        # Passed only when on: transformers 5 warns that the name is deprecated.
        **({"gradient_checkpointing": True} if cfg.gradient_checkpointing else {}),
        **cfg.trl_args,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if has_eval else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_LogLines()],
    )
    info = {
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


def run_sft(cfg: SFTRunConfig) -> SFTResult:
    """Train, evaluate held-out loss before/after, save adapter/model + tokenizer + report."""
    t0 = time.perf_counter()
    trainer, info = build_trainer(cfg)
    out = Path(cfg.output_dir)
    resume = cfg.resume_from_checkpoint
    if resume is True or (isinstance(resume, str) and resume.lower() in ("true", "latest")):
        resume = last_checkpoint(out)
        if resume is None:
            log.warning("no checkpoint in %s; starting from scratch", out)
    before = _eval_loss(trainer) if cfg.eval_before and not resume else None
    result = trainer.train(resume_from_checkpoint=resume or None)
    after = _eval_loss(trainer)
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(out))
        if cfg.save_merged and cfg.peft != "none":
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(str(out / "merged"))
            trainer.processing_class.save_pretrained(str(out / "merged"))
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
        report = {"stage": "sft", "config": config_dict(cfg), "result": res.as_dict()}
        (out / "her_sft.json").write_text(json.dumps(report, indent=2))
    return res


def main(argv: list[str] | None = None) -> None:
    """`python -m her_sdk.training.sft --config FILE [key=value ...]` (for accelerate launch)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--output_dir", default=None)
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(SFTRunConfig, a.config, a.overrides, output_dir=a.output_dir)
    res = run_sft(cfg)
    print(json.dumps(res.as_dict(), indent=2))


if __name__ == "__main__":
    main()
