"""Loading the source of an export: a Hugging Face checkpoint directory, optionally with a LoRA
adapter merged in (peft). Shared by the GGUF and ONNX exporters and by verification.

This module is not a model zoo: it knows the four architectures the exporters support and
refuses the rest with a clear message.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from her_sdk import ConfigError, MissingDependencyError, ModelNotFoundError

__all__ = [
    "SUPPORTED",
    "arch_of",
    "import_torch",
    "load_source",
    "merge_lora",
    "read_hf_config",
    "save_merged",
]

# transformers architecture -> llama.cpp architecture name
SUPPORTED = {
    "Qwen3ForCausalLM": "qwen3",
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
    "Gemma3ForCausalLM": "gemma3",
}


def import_torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise MissingDependencyError("torch and transformers", "export") from None
    return torch


def _check_dir(src: str | Path) -> Path:
    p = Path(src).expanduser()
    if not p.is_dir() or not (p / "config.json").is_file():
        raise ModelNotFoundError(
            f"{p} is not a Hugging Face checkpoint directory (no config.json)", str(p)
        )
    return p


def read_hf_config(src: str | Path) -> dict[str, Any]:
    """The checkpoint's `config.json` as a dict (ModelNotFoundError if `src` is not one)."""
    return json.loads((_check_dir(src) / "config.json").read_text())


def arch_of(config: Any) -> str:
    archs = getattr(config, "architectures", None) or []
    for a in archs:
        if a in SUPPORTED:
            return SUPPORTED[a]
    raise ConfigError(f"unsupported architecture {archs or '?'}; supported: {', '.join(SUPPORTED)}")


def load_source(src: str | Path, *, adapter: str | Path | None = None, dtype: str = "float32"):
    """(model, tokenizer) in eval mode on CPU; a PEFT `adapter` is merged into the weights."""
    torch = import_torch()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _check_dir(src)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), attn_implementation="eager", local_files_only=True
    )
    arch_of(model.config)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if adapter is not None:
        model = merge_lora(model, adapter)
    model.eval()
    return model, tok


def merge_lora(model, adapter_dir: str | Path):
    try:
        from peft import PeftModel
    except ImportError:
        raise MissingDependencyError("peft", "export") from None
    adir = Path(adapter_dir).expanduser()
    if not (adir / "adapter_config.json").is_file():
        raise ModelNotFoundError(
            f"{adir} is not a PEFT adapter (no adapter_config.json)", str(adir)
        )
    return PeftModel.from_pretrained(model, adir).merge_and_unload()


def save_merged(src: str | Path, adapter: str | Path, workdir: str | Path | None = None) -> Path:
    """Write base+adapter merged as a checkpoint directory (for tools that read directories)."""
    model, tok = load_source(src, adapter=adapter)
    out = Path(workdir or tempfile.mkdtemp(prefix="her-merged-"))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
