"""Hugging Face checkpoint -> ONNX Runtime GenAI model folder (fp32, int8, int4).

Runs onnxruntime-genai's model builder in-process (CPU by default, `execution_provider="cuda"`
as an option) and then verifies the folder against transformers (`her_sdk.export.verify`).

One adaptation: transformers 5 stores Gemma3's rope settings as `rope_parameters` nested per
layer type ({"full_attention": {...}, "sliding_attention": {...}}); the builder's Gemma3 path
still reads `rope_theta`, `rope_local_base_freq` and a flat `rope_parameters`. While the builder
runs, its Gemma3 constructor is wrapped to put those back on the config; nothing is patched on
disk or left patched afterwards. It is not a second builder: every other step is theirs.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from her_sdk import ConfigError, MissingDependencyError, ModelError

from ._source import import_torch, load_source, read_hf_config, save_merged

__all__ = ["PRECISIONS", "export_onnx"]

PRECISIONS = ("fp32", "fp16", "int8", "int4")


def _builder():
    try:
        from onnxruntime_genai.models import builder
    except ImportError:
        raise MissingDependencyError("onnxruntime-genai", "export") from None
    return builder


def _flatten_gemma3_rope(config: Any) -> None:
    rp = getattr(config, "rope_parameters", None)
    if not isinstance(rp, dict) or "full_attention" not in rp:
        return
    full = dict(rp["full_attention"])
    local = dict(rp.get("sliding_attention") or {})
    config.rope_theta = full.get("rope_theta", 10000.0)
    config.rope_local_base_freq = local.get("rope_theta", 10000.0)
    full.setdefault("rope_type", "default")
    config.rope_parameters = full


@contextlib.contextmanager
def _gemma3_rope_fix(builder):
    # The builder imports its model classes as top-level `builders` (it extends sys.path), so
    # patch the class object the builder module itself refers to.
    cls = builder.Gemma3Model
    original = cls.__init__

    def init(self, config, *args, **kwargs):
        _flatten_gemma3_rope(config)
        original(self, config, *args, **kwargs)

    cls.__init__ = init
    try:
        yield
    finally:
        cls.__init__ = original


def build_onnx(
    src: str | Path, out: str | Path, *, precision: str = "fp32", execution_provider: str = "cpu"
) -> Path:
    """Run the onnxruntime-genai builder on a checkpoint directory."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    builder = _builder()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="her-onnx-cache-"))
    args = (
        None,
        str(Path(src).resolve()),
        str(out.resolve()),
        precision,
        execution_provider,
        str(cache),
    )
    try:
        # The builder prints its progress; keep the caller's stdout for the caller.
        with _gemma3_rope_fix(builder), contextlib.redirect_stdout(io.StringIO()):
            extra = builder.parse_extra_options(*args, [])
            builder.create_model(*args, **extra)
    except Exception as exc:
        raise ModelError(f"onnxruntime-genai could not build {src}: {exc}") from exc
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if not (out / "genai_config.json").is_file():
        raise ModelError(f"the builder wrote no genai_config.json into {out}")
    _copy_chat_template(Path(src), out)
    _her_metadata(out)
    return out


def _copy_chat_template(src: Path, out: Path) -> None:
    # The builder saves the tokenizer; keep the chat template next to it in the file that
    # transformers 5 writes, so the runtime finds it whatever the tokenizer_config holds.
    for name in ("chat_template.jinja", "tokenizer.model"):
        if (src / name).is_file() and not (out / name).is_file():
            shutil.copy(src / name, out / name)


def _her_metadata(out: Path) -> None:
    from her_sdk.format import HER_FORMAT_VERSION

    (out / "her.json").write_text(
        json.dumps({"format_version": HER_FORMAT_VERSION, "dual_layer": True}) + "\n"
    )


def export_onnx(
    src: str | Path,
    out: str | Path,
    *,
    precision: str = "fp32",
    execution_provider: str = "cpu",
    adapter: str | Path | None = None,
    verify: bool = True,
    lora: str | Path | None = None,
    **verify_kw,
) -> dict:
    """Export a checkpoint (plus an optional PEFT LoRA `adapter`, merged) to an ONNX model
    folder. `lora=` is the deprecated first name of `adapter=`."""
    if lora is not None:
        warnings.warn("export_onnx(lora=) is deprecated; use adapter=", DeprecationWarning, 2)
        adapter = adapter if adapter is not None else lora
    import_torch()
    cfg = read_hf_config(src)
    if not cfg.get("architectures"):
        raise ConfigError(f"{src}/config.json names no architecture")
    t0 = time.perf_counter()
    tmp = None
    try:
        build_src = Path(src)
        if adapter is not None:
            tmp = Path(tempfile.mkdtemp(prefix="her-merged-"))
            build_src = save_merged(src, adapter, tmp)
        out = build_onnx(build_src, out, precision=precision, execution_provider=execution_provider)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    summary: dict[str, Any] = {
        "path": str(out),
        "type": precision,
        "source": str(src),
        "convert_s": time.perf_counter() - t0,
        "size_bytes": size,
    }
    if verify:
        from .verify import verify_onnx

        if execution_provider != "cpu":
            raise ConfigError("verification runs on CPU; pass verify=False for a CUDA export")
        model, tok = load_source(src, adapter=adapter)
        summary["verify"] = verify_onnx(out, model, tok, precision=precision, **verify_kw)
    return summary
