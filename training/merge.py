"""Fold a LoRA adapter into its base model, as a step of its own: `merge_adapter`.

    her train merge --adapter runs/her-sft-qwen3-32b --out runs/her-sft-qwen3-32b/merged
    her train merge --base Qwen/Qwen3-32B --adapter runs/her-sft-qwen3-32b --out DIR --device cuda

A distributed run (DeepSpeed ZeRO-3, FSDP) holds only a shard of every weight on each rank, so
merging there (`merge_and_unload` over partitioned parameters on rank 0) writes a broken
checkpoint. The trainers save the adapter (gathered by the trainer's own `save_model`); this
module then loads the full base in one process — in float32 by default, on the CPU or one GPU —
applies the adapter from disk, merges and saves the result (in the base checkpoint's dtype
unless told otherwise) with the tokenizer the run saved. The output folder appears only when
complete. This module merges; it does not train or convert formats (see `her export`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from her_sdk import ConfigError, NotFoundError

from .common import (
    ModelSpec,
    _outside_zero3,
    load_causal_lm,
    load_tokenizer,
    require_train_extra,
    resolve_model,
)

__all__ = ["MergeResult", "adapter_base", "merge_adapter"]

log = logging.getLogger("her_sdk.training.merge")

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclasses.dataclass
class MergeResult:
    out: str
    base: str
    adapter: str
    dtype: str  # the dtype the merge was computed in
    save_dtype: str  # the dtype of the saved weights
    lora_modules: int  # LoRA layers folded in
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def adapter_base(adapter: str | os.PathLike) -> str:
    """The base model an adapter was trained on (`base_model_name_or_path` of its config)."""
    cfg = Path(adapter) / "adapter_config.json"
    if not cfg.exists():
        raise NotFoundError(f"{adapter} holds no LoRA adapter (adapter_config.json is missing)")
    base = json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{cfg} names no base model; pass --base")
    return str(base)


def _checkpoint_dtype(spec: ModelSpec) -> str | None:
    cfg = Path(spec.path) / "config.json"
    if spec.gguf_file or not cfg.exists():
        return None
    data = json.loads(cfg.read_text(encoding="utf-8"))
    for d in (data, data.get("text_config") or {}):
        name = d.get("dtype") or d.get("torch_dtype")
        if isinstance(name, str):
            return name
    return None


def merge_adapter(
    adapter: str | os.PathLike,
    out: str | os.PathLike,
    *,
    base: str | ModelSpec | None = None,
    gguf_file: str | None = None,
    dtype: str = "float32",
    save_dtype: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> MergeResult:
    """Load `base` (default: the adapter's own base) in `dtype` on `device`, apply the LoRA
    adapter saved in `adapter`, merge it into the weights and save a plain checkpoint in `out`
    (weights in `save_dtype`, default the base checkpoint's dtype, else `dtype`), with the
    tokenizer saved beside the adapter (else the base's). Single process by design."""
    require_train_extra()
    import torch
    from peft import PeftModel

    t0 = time.perf_counter()
    adapter = Path(adapter)
    base_name = adapter_base(adapter)
    if base is None:
        base = base_name
    spec = base if isinstance(base, ModelSpec) else resolve_model(base, gguf_file=gguf_file)
    if not spec.gguf_file and not Path(spec.path).exists() and "/" not in spec.path:
        raise NotFoundError(f"base model not found: {spec.path}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    target = save_dtype or _checkpoint_dtype(spec) or dtype
    try:
        target_dtype = getattr(torch, target)
    except AttributeError:
        raise ConfigError(f"unknown dtype {target!r}") from None

    log.info("loading base %s (%s, %s)", spec.path, dtype, device)
    with _outside_zero3():  # whole weights, no collective, even inside a ZeRO-3 launch
        model = load_causal_lm(spec, dtype=dtype).to(device)
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    n_lora = sum(1 for name, _ in model.named_modules() if name.endswith(".lora_A"))
    if n_lora == 0:
        raise ConfigError(f"{adapter}: the adapter matched no module of {spec.path}")
    merged = model.merge_and_unload().to(dtype=target_dtype, device="cpu")
    if any(Path(adapter, f).exists() for f in _TOKENIZER_FILES):
        tok = load_tokenizer(ModelSpec(str(adapter)), "model")
    else:
        tok = load_tokenizer(spec, "chatml")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        merged.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        res = MergeResult(
            out=str(out),
            base=spec.path + (f"#{spec.gguf_file}" if spec.gguf_file else ""),
            adapter=str(adapter),
            dtype=dtype,
            save_dtype=target,
            lora_modules=n_lora,
            seconds=round(time.perf_counter() - t0, 2),
        )
        (tmp / "her_merge.json").write_text(json.dumps(res.as_dict(), indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)  # the folder appears only when complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("merged %d LoRA modules into %s", n_lora, out)
    return res


def merge_after_training(trainer, base: ModelSpec, out: Path, dtype: str | None) -> None:
    """`save_merged` at the end of a run: every rank waits until the trainer has saved the
    adapter, the main process merges it from disk in one process (never the sharded weights in
    memory), and every rank waits for the merged folder (a later stage may load it). Big models:
    run `her train merge` as its own step instead, so no rank idles at a collective meanwhile."""
    acc = trainer.accelerator
    acc.wait_for_everyone()
    if trainer.is_world_process_zero():
        save = dtype if dtype not in (None, "auto") else None
        merge_adapter(out, out / "merged", base=base, save_dtype=save, overwrite=True)
    acc.wait_for_everyone()
