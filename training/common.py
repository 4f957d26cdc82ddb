"""Shared plumbing of the training stages: config parsing, model and data loading.

- `parse_config(types, path, overrides)`: one instance of each config dataclass of a stage
  (HER's own arguments, trl's `ModelConfig` and the trainer's config, as in trl's scripts) from
  YAML plus command-line overrides (`key=value` or `--key value`), every value type-checked.
- `resolve_model(...)`: `tiny` (random model built on the fly, see `tiny.py`),
  `embedded:gemma-3-270m` (the SDK's GGUF, loaded dequantized through transformers), a local
  Hugging Face directory, or a directory + `gguf_file`.
- `load_tokenizer(...)`, `load_causal_lm(...)`, `load_rows(...)`: the pieces every stage needs,
  with the heavy imports inside the functions.

It holds no stage logic: each stage keeps its HER-specific arguments beside its trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import json
import logging
import os
import re
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from her_sdk import ConfigError, MissingDependencyError

__all__ = [
    "ModelSpec",
    "clear_gguf_markers",
    "config_dict",
    "last_checkpoint",
    "load_causal_lm",
    "load_rows",
    "load_tokenizer",
    "parse_config",
    "parse_overrides",
    "read_config_file",
    "require_train_extra",
    "resolve_model",
]

log = logging.getLogger("her_sdk.training")
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

# Keys a YAML file may hold beside the dataclass fields (trl's TrlParser reads `env` too;
# `stage` names the stage the file is for, training/stages.py).
_ENV_KEY = "env"
_STAGE_KEY = "stage"
_KEY_EQ = re.compile(r"^[A-Za-z_][\w.]*=")  # `key=value`: an override, not the value of a flag


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """Command-line overrides -> a nested dict. Accepts `key=value`, `--key=value`,
    `--key value` and a bare `--flag` (true); a dotted key nests (`train.max_steps=2`).
    Values are read as YAML (`1e-4`, `none`, `[q_proj, v_proj]`, `{a: 1}`); their types are
    checked later, against the dataclass fields, by `parse_config`."""
    import yaml

    out: dict[str, Any] = {}
    args = list(items or [])
    i = 0
    while i < len(args):
        item = args[i]
        i += 1
        if item.startswith("--"):
            key, sep, raw = item[2:].partition("=")
            if not sep:  # `--key value`, or a bare `--flag` (followed by another override)
                if i < len(args) and not args[i].startswith("--") and not _KEY_EQ.match(args[i]):
                    raw, i = args[i], i + 1
                else:
                    raw = "true"
        else:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r} is not key=value (or --key value)")
        key = key.strip().replace("-", "_")
        if not key:
            raise ConfigError(f"override {item!r} has no key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {key}: {exc}") from None
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {p} is not a mapping")
            node = child
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


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a YAML config file; a bare name (`sft_tiny_cpu.yaml`) also finds the
    packaged configs in `training/configs/`."""
    import yaml

    p = Path(path)
    if not p.exists():
        packaged = Path(__file__).parent / "configs" / p.name
        if not packaged.exists():
            raise ConfigError(f"config file not found: {path}")
        p = packaged
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def _checkable(tp: Any) -> Any:
    """`tp` in a form msgspec can validate: transformers types its choices as `Enum | str`,
    which msgspec refuses (two string-like types); the Enum alone checks the same values."""
    if get_origin(tp) in (Union, types.UnionType):
        args = get_args(tp)
        if str in args and any(isinstance(a, type) and issubclass(a, enum.Enum) for a in args):
            kept = tuple(a for a in args if a is not str)
            return kept[0] if len(kept) == 1 else Union[kept]  # noqa: UP007
    return tp


def _is_list(tp: Any) -> bool:
    if get_origin(tp) in (Union, types.UnionType):
        return any(_is_list(a) for a in get_args(tp))
    return get_origin(tp) in (list, tuple) or tp in (list, tuple)


def _typed(key: str, value: Any, tp: Any, where: str) -> Any:
    import msgspec

    tp = _checkable(tp)
    try:
        return msgspec.convert(value, tp, strict=False)
    except msgspec.ValidationError as exc:
        if isinstance(value, str) and _is_list(tp):
            # One value for a list field, as `--lora_target_modules all-linear` gives argparse.
            return _typed(key, [value], tp, where)
        if isinstance(value, bool):  # YAML 1.1 reads `eval_strategy=no` as false
            try:
                return msgspec.convert("yes" if value else "no", tp, strict=False)
            except msgspec.ValidationError:
                pass
        raise ConfigError(f"{where}{key}: {str(exc).lower()} ({value!r})") from None


def parse_config(
    config_types: Sequence[type],
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] | dict[str, Any] | None = None,
    *,
    for_this_machine: bool = True,
) -> tuple[Any, ...]:
    """One instance of each dataclass in `config_types`, from a YAML file and overrides.

    The shape of trl's scripts (`TrlParser((ScriptArguments, SFTConfig, ModelConfig))`): every
    key belongs to exactly one of the dataclasses, HER's own arguments or trl's configs. Each
    value is converted to its field's type (msgspec), so a wrong type (`learning_rate=fast`) or
    an unknown key (`no_such_key=1`), in the file or on the command line, is a ConfigError
    naming the key. Overrides win over the file; each dataclass's own checks then run.

    `for_this_machine=False` reads a config meant for other hardware (a GPU config on a laptop,
    for `her train check` and tests): transformers refuses `bf16` where no GPU supports it, so
    the trainer config is built as if for the CPU, then marked back as not `use_cpu`.
    """
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    data = _merge(data, extra)
    data.pop(_ENV_KEY, None)
    data.pop(_STAGE_KEY, None)

    def where(key: str) -> str:  # errors say whether the file or the command line was wrong
        return "override " if key in extra or path is None else f"{path}: "

    owner: dict[str, type] = {}
    for cls in reversed(config_types):  # the first dataclass that declares a field owns it
        for f in dataclasses.fields(cls):
            if f.init:
                owner[f.name] = cls
    unknown = sorted(set(data) - set(owner))
    if unknown:
        names = ", ".join(c.__name__ for c in config_types)
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, owner, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"{where(unknown[0])}unknown option(s) {', '.join(hints)}: not a field of {names}"
        )
    out = []
    for cls in config_types:
        hints_of = get_type_hints(cls)
        kwargs = {
            k: _typed(k, v, hints_of[k], where(k)) for k, v in data.items() if owner[k] is cls
        }
        elsewhere = not for_this_machine and "use_cpu" in hints_of and "use_cpu" not in kwargs
        try:
            obj = cls(**kwargs, **({"use_cpu": True} if elsewhere else {}))
            if elsewhere:
                obj.use_cpu = False
            out.append(obj)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path or 'config'}: {cls.__name__}: {exc}") from None
    return tuple(out)


def config_dict(*configs: Any) -> dict[str, Any]:
    """The configs of a run as one JSON-safe mapping (for the run's report file)."""
    out: dict[str, Any] = {}
    for cfg in configs:
        d = cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
        out[type(cfg).__name__] = json.loads(json.dumps(d, default=str))
    return out


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelSpec:
    """Where weights come from: a directory, and optionally a GGUF file inside it."""

    path: str
    gguf_file: str | None = None


def resolve_model(
    model: str | None,
    *,
    gguf_file: str | None = None,
    tiny: dict | None = None,
    work_dir: str | os.PathLike | None = None,
) -> ModelSpec:
    if not model:
        raise ConfigError("model_name_or_path is not set (tiny, embedded:gemma-3-270m or a path)")
    if model == "tiny":
        from .tiny import build_tiny_model

        base = Path(work_dir or ".") / "tiny-base"
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return ModelSpec(str(build_tiny_model(base, **(tiny or {}))))
        # Under a launcher every rank gets here: one process per machine writes the files while
        # the others wait, then all read the same folder (no rank reads a half-written model).
        from accelerate import PartialState

        state = PartialState()
        if state.is_local_main_process:
            with _outside_zero3():
                base = build_tiny_model(base, **(tiny or {}))
        state.wait_for_everyone()
        return ModelSpec(str(base))
    if model == EMBEDDED_GEMMA:
        from her_sdk import default_model_path

        p = default_model_path()
        return ModelSpec(str(p.parent), p.name)
    p = Path(model).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return ModelSpec(str(p.parent), p.name)
    if gguf_file:
        return ModelSpec(str(p), gguf_file)
    return ModelSpec(model)  # a directory, or a hub id already in the local cache (no download)


# ChatML for a tokenizer that has no `<|im_end|>` token (Gemma): there the marker is plain text
# that generation cannot stop at, so a final assistant message also ends with the tokenizer's
# eos, which it can. Prompts (ending in a user turn or an open assistant turn) render exactly as
# ChatML, as the runtime renders them.
CHATML_EOS_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% if loop.last and message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@contextlib.contextmanager
def _outside_zero3():
    """Build a model whole although the trainer's config has switched DeepSpeed's zero.Init on
    (transformers would partition it as it is created, and save empty shards)."""
    from transformers.integrations import deepspeed as hf_ds

    ref = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = ref


def load_tokenizer(spec: ModelSpec, chat_template: str | None = "chatml"):
    """The model's tokenizer with a pad token and the requested chat template.

    `chat_template`: "chatml" (HER's convention), "model" (keep the model's own) or a Jinja string.
    """
    from transformers import AutoTokenizer

    from her_sdk.format import CHATML_TEMPLATE

    # local_files_only: a hub id must already be in the local cache; nothing is downloaded.
    kw: dict[str, Any] = {"local_files_only": True}
    if spec.gguf_file:
        kw["gguf_file"] = spec.gguf_file
    tok = AutoTokenizer.from_pretrained(spec.path, **kw)
    if chat_template == "chatml":
        one_token = len(tok("<|im_end|>", add_special_tokens=False)["input_ids"]) == 1
        plain = one_token or not tok.eos_token
        tok.chat_template = CHATML_TEMPLATE if plain else CHATML_EOS_TEMPLATE
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
