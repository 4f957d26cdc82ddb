"""Shared plumbing of the training stages (SFT here; reward model and RL build on it).

- `load_config(Cls, path, overrides)`: a stage's config dataclass from YAML plus `key=value`
  overrides (values parsed as YAML, so `lr=1e-4`, `peft=none`, `lora_target_modules=[q_proj]`).
- `resolve_model(...)`: `tiny` (random model built on the fly, see `tiny.py`),
  `embedded:gemma-3-270m` (the SDK's GGUF, loaded dequantized through transformers), a local
  Hugging Face directory, or a directory + `gguf_file`.
- `load_tokenizer(...)`, `load_causal_lm(...)`, `lora_config(...)`, `load_rows(...)`:
  the pieces every stage needs, with the heavy imports inside the functions.

It holds no stage logic: each stage keeps one config dataclass beside its trainer (trl style).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, TypeVar

from her_sdk import ConfigError, MissingDependencyError

__all__ = [
    "ModelSpec",
    "clear_gguf_markers",
    "last_checkpoint",
    "load_causal_lm",
    "load_config",
    "load_rows",
    "load_tokenizer",
    "lora_config",
    "parse_overrides",
    "require_train_extra",
    "resolve_model",
]

log = logging.getLogger("her_sdk.training")
T = TypeVar("T")
EMBEDDED_GEMMA = "embedded:gemma-3-270m"


def require_train_extra() -> None:
    """Raise MissingDependencyError naming the `train` extra when its packages are absent."""
    for mod, pkg in (
        ("torch", "torch"),
        ("transformers", "transformers"),
        ("trl", "trl"),
        ("peft", "peft"),
        ("datasets", "datasets"),
        ("yaml", "pyyaml"),
    ):
        try:
            __import__(mod)
        except ImportError:
            raise MissingDependencyError(pkg, "train") from None


# ---------------------------------------------------------------------------------------------
# Config files
# ---------------------------------------------------------------------------------------------


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`["a=1", "b.c=x"]` -> `{"a": 1, "b": {"c": "x"}}` (values parsed as YAML scalars/lists)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: {exc}") from None
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(
    cls: type[T],
    path: str | os.PathLike | None = None,
    overrides: list[str] | dict | None = None,
    **explicit: Any,
) -> T:
    """Build config dataclass `cls` from a YAML file, then overrides, then explicit kwargs."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            # A bare name like `sft_tiny_cpu.yaml` also finds the packaged configs.
            packaged = Path(__file__).parent / "configs" / p.name
            if packaged.exists():
                p = packaged
            else:
                raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
    if isinstance(overrides, dict):
        data = _merge(data, overrides)
    else:
        data = _merge(data, parse_overrides(overrides))
    data = _merge(data, {k: v for k, v in explicit.items() if v is not None})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


def config_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelSpec:
    """Where weights come from: a directory, and optionally a GGUF file inside it."""

    path: str
    gguf_file: str | None = None


def resolve_model(
    model: str,
    *,
    gguf_file: str | None = None,
    tiny: dict | None = None,
    work_dir: str | os.PathLike | None = None,
) -> ModelSpec:
    if model == "tiny":
        from .tiny import build_tiny_model

        base = Path(work_dir or ".") / "tiny-base"
        return ModelSpec(str(build_tiny_model(base, **(tiny or {}))))
    if model == EMBEDDED_GEMMA:
        from her_sdk._model import default_model_path

        p = default_model_path()
        return ModelSpec(str(p.parent), p.name)
    p = Path(model).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return ModelSpec(str(p.parent), p.name)
    if gguf_file:
        return ModelSpec(str(p), gguf_file)
    return ModelSpec(model)  # a directory, or a hub id already in the local cache (no download)


def load_tokenizer(spec: ModelSpec, chat_template: str | None = "chatml"):
    """The model's tokenizer with a pad token and the requested chat template.

    `chat_template`: "chatml" (HER's convention), "model" (keep the model's own) or a Jinja string.
    """
    from transformers import AutoTokenizer

    from .tiny import CHATML_TEMPLATE

    # local_files_only: a hub id must already be in the local cache; nothing is downloaded.
    kw: dict[str, Any] = {"local_files_only": True}
    if spec.gguf_file:
        kw["gguf_file"] = spec.gguf_file
    tok = AutoTokenizer.from_pretrained(spec.path, **kw)
    if chat_template == "chatml":
        tok.chat_template = CHATML_TEMPLATE
    elif chat_template and chat_template != "model":
        tok.chat_template = chat_template
    if not tok.chat_template:
        raise ConfigError(f"{spec.path} has no chat template; set chat_template: chatml")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def clear_gguf_markers(model) -> None:
    """A GGUF loaded by transformers is dequantized, yet keeps quantizer markers that make
    `save_pretrained` and full fine-tuning refuse; the weights are plain tensors, so drop them."""
    for obj in (model, getattr(model, "base_model", None)):
        if obj is None:
            continue
        if getattr(obj, "hf_quantizer", None) is not None:
            obj.hf_quantizer = None
        if getattr(obj, "is_quantized", False):
            obj.is_quantized = False
        cfg = getattr(obj, "config", None)
        if cfg is not None and hasattr(cfg, "quantization_config"):
            try:
                del cfg.quantization_config
            except AttributeError:
                cfg.quantization_config = None


def _dtype(name: str):
    import torch

    if name in (None, "auto"):
        return (
            torch.bfloat16
            if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            else torch.float32
        )
    try:
        return getattr(torch, name)
    except AttributeError:
        raise ConfigError(f"unknown dtype {name!r}") from None


def load_causal_lm(
    spec: ModelSpec,
    *,
    dtype: str = "auto",
    quantize_4bit: bool = False,
    attn_implementation: str | None = None,
    model_cls=None,
):
    """Load a causal LM (or `model_cls`, e.g. a sequence classifier for reward models)."""
    from transformers import AutoModelForCausalLM

    cls = model_cls or AutoModelForCausalLM
    kw: dict[str, Any] = {"dtype": _dtype(dtype), "local_files_only": True}  # never download
    if spec.gguf_file:
        kw["gguf_file"] = spec.gguf_file
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    if quantize_4bit:
        try:
            import bitsandbytes  # noqa: F401
            import torch
            from transformers import BitsAndBytesConfig
        except ImportError:
            raise MissingDependencyError("bitsandbytes (QLoRA, CUDA only)", "train") from None
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = cls.from_pretrained(spec.path, **kw)
    if spec.gguf_file:
        clear_gguf_markers(model)
    return model


def lora_config(
    r: int,
    alpha: int,
    dropout: float,
    target_modules: Any,
    task_type: str = "CAUSAL_LM",
    modules_to_save: list[str] | None = None,
):
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type=task_type,
        modules_to_save=modules_to_save,
        bias="none",
    )


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def load_rows(spec: str, split: str | None = None) -> list[dict]:
    """Samples from `synthetic:N` or a JSONL file written by `her data convert/synth-plans`.

    `split` keeps only rows whose `split` field matches (rows without one count as "train").
    """
    if spec.startswith("synthetic"):
        from .tiny import synthetic_samples

        _, _, n = spec.partition(":")
        rows = synthetic_samples(int(n or 64))
    else:
        from .data import read_jsonl

        if not Path(spec).exists():
            raise ConfigError(f"data file not found: {spec}")
        rows = read_jsonl(spec)
    if split is not None:
        rows = [r for r in rows if r.get("split", "train") == split]
    return rows
