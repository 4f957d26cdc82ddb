"""`her train check`: will this run start and fit on that hardware? Answered before any GPU is used.

    her train check --config training/configs/rl_qwen3_32b.yaml            # the header's hardware
    her train check --config training/configs/sft_qwen3_32b.yaml --gpus 1 --gpu-memory 24

`check_config` resolves every file the run will read — the stage config (with its nested RM
stages), the accelerate / DeepSpeed / FSDP file named in the config's header (`--config_file`)
or in its `deepspeed` / `fsdp` fields, the vLLM settings and the judge endpoint — and reports:
- contradictions between them that make the libraries refuse to start or silently change the
  run (DeepSpeed gradient accumulation / micro-batch / clipping / precision against the stage's,
  world size against GPUs × nodes, a GRPO generation batch not divisible by num_generations,
  vLLM tensor parallelism not dividing the world size, a judge or vLLM server on GPUs the
  training already fills, bf16 on hardware without it, `save_merged` under a sharded launch);
- a memory plan per GPU for each training phase: weights, gradients and optimizer state (ZeRO
  stage / FSDP and LoRA aware), activations at the configured sequence length and micro-batch
  (with or without activation checkpointing), logits, the colocated vLLM share with its KV cache,
  an in-process judge — each line with its arithmetic — and a verdict.

Model dimensions come from the model's `config.json` when it is on this machine, else from the
built-in table `KNOWN_MODELS` matched by name in the model path (or named with `arch=`); the
report says which. The figures are estimates of the dominant terms (stated with their formulas),
not a profiler: a PASS leaves 8% of the memory as headroom; TIGHT means it may still fit.
This module reads configs; it never imports torch nor touches a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from her_sdk import ConfigError, parse_backend_spec

from .common import EMBEDDED_GEMMA, _merge, parse_overrides, read_config_file
from .stages import stage_of

__all__ = [
    "KNOWN_MODELS",
    "CheckReport",
    "Finding",
    "Hardware",
    "ModelDims",
    "check_config",
    "header_hardware",
]

GIB = 1024**3
HEADROOM = 0.92  # PASS below this share of a GPU's memory; TIGHT up to 100%
RUNTIME_OVERHEAD_GIB = 2.5  # CUDA context, NCCL buffers, allocator fragmentation
VLLM_PROFILE_GIB = 1.5  # vLLM's own activations / CUDA graphs inside its share
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "0.0.0.0", "::1", ""}


# ---------------------------------------------------------------------------------------------
# Hardware and model dimensions
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Hardware:
    """What the run is given: `nodes` machines of `gpus` GPUs with `gpu_memory` GiB each."""

    gpus: int
    gpu_memory: float  # GiB per GPU (an "80 GB" A100/H100 has 80 GiB)
    nodes: int = 1
    bf16: bool = True  # Ampere or newer; False for V100 / T4

    def __post_init__(self) -> None:
        if self.gpus < 1 or self.nodes < 1 or self.gpu_memory <= 0:
            raise ConfigError("hardware: gpus and nodes must be >= 1 and gpu memory > 0")

    def __str__(self) -> str:
        return (
            f"{self.nodes} node{'s' * (self.nodes > 1)} × {self.gpus} GPU{'s' * (self.gpus > 1)}"
            f" × {self.gpu_memory:g} GiB"
        )


_HW_LINE = re.compile(
    r"^#\s*hardware:\s*(\d+)\s*nodes?\s*[×x]\s*(\d+)\s*GPUs?\s*[×x]\s*(\d+(?:\.\d+)?)\s*GB",
    re.IGNORECASE | re.MULTILINE,
)


def header_hardware(path: str | os.PathLike) -> Hardware | None:
    """The hardware a config's header names: `# hardware: 2 nodes × 8 GPUs × 80 GB ...`."""
    m = _HW_LINE.search(_config_text(path))
    return Hardware(int(m.group(2)), float(m.group(3)), int(m.group(1))) if m else None


@dataclasses.dataclass
class ModelDims:
    """The shape of a decoder-only transformer, enough to count parameters and activations."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    max_positions: int | None = None
    source: str = ""

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one block."""
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def layer_params(self) -> int:
        norms = 2 * self.hidden + 2 * self.head_dim  # input/post norms, q/k norms
        return sum(a * b for a, b in self.linears().values()) + norms

    def embed_params(self) -> int:
        return self.vocab * self.hidden

    def params(self) -> int:
        emb = self.embed_params() * (1 if self.tied else 2)
        return emb + self.layers * self.layer_params() + self.hidden

    def lora_params(self, r: int, targets: list[str] | str | None) -> int:
        lin = self.linears()
        if targets in (None, "all-linear", ["all-linear"]):
            names = list(lin)
        else:
            names = [t for t in ([targets] if isinstance(targets, str) else targets) if t in lin]
        return self.layers * sum(r * (lin[n][0] + lin[n][1]) for n in names)

    def lora_inputs(self, targets: list[str] | str | None) -> int:
        """Summed input width of the LoRA'd linears of one block (lora_dropout copies these)."""
        lin = self.linears()
        if targets in (None, "all-linear", ["all-linear"]):
            names = list(lin)
        else:
            names = [t for t in ([targets] if isinstance(targets, str) else targets) if t in lin]
        return sum(lin[n][0] for n in names)

    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_dim * 2  # K and V, bf16

    def describe(self) -> str:
        return (
            f"{self.name}: {self.params() / 1e9:.2f} B params, hidden {self.hidden}, "
            f"{self.layers} layers, {self.heads}/{self.kv_heads} heads × {self.head_dim}, "
            f"MLP {self.intermediate}, vocab {self.vocab} ({self.source})"
        )


def _dims(name, h, n_layers, heads, kv, hd, inter, vocab, tied, max_pos) -> ModelDims:
    return ModelDims(name, h, n_layers, heads, kv, hd, inter, vocab, tied, max_pos)


# From each model's published config.json (Hugging Face model cards).
KNOWN_MODELS: dict[str, ModelDims] = {
    "qwen3-32b": _dims("Qwen3-32B", 5120, 64, 64, 8, 128, 25600, 151936, False, 40960),
    "qwen3-14b": _dims("Qwen3-14B", 5120, 40, 40, 8, 128, 17408, 151936, False, 40960),
    "qwen3-8b": _dims("Qwen3-8B", 4096, 36, 32, 8, 128, 12288, 151936, False, 40960),
    "qwen3-4b": _dims("Qwen3-4B", 2560, 36, 32, 8, 128, 9728, 151936, True, 40960),
    "qwen3-1.7b": _dims("Qwen3-1.7B", 2048, 28, 16, 8, 128, 6144, 151936, True, 40960),
    "qwen3-0.6b": _dims("Qwen3-0.6B", 1024, 28, 16, 8, 128, 3072, 151936, True, 40960),
    "gemma-3-1b": _dims("Gemma-3-1B", 1152, 26, 4, 1, 256, 6912, 262144, True, 32768),
    "gemma-3-270m": _dims("Gemma-3-270M", 640, 18, 4, 1, 256, 2048, 262144, True, 32768),
}


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", s.lower()).replace("gemma3", "gemma-3")


def _from_config_json(path: Path, name: str) -> ModelDims:
    data = json.loads(path.read_text(encoding="utf-8"))
    d = data.get("text_config") or data
    h = int(d["hidden_size"])
    heads = int(d["num_attention_heads"])
    return ModelDims(
        name=name,
        hidden=h,
        layers=int(d["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d.get("head_dim") or h // heads),
        intermediate=int(d["intermediate_size"]),
        vocab=int(d["vocab_size"]),
        tied=bool(data.get("tie_word_embeddings", d.get("tie_word_embeddings", True))),
        max_positions=d.get("max_position_embeddings"),
        source=f"from {path}",
    )


def _local_config_json(model: str) -> Path | None:
    p = Path(model).expanduser()
    if (p / "config.json").is_file():
        return p / "config.json"
    adapter = p / "adapter_config.json"
    if adapter.is_file():  # an adapter folder: its base model's shape
        base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        return _local_config_json(base) if base else None
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not p.exists():  # a hub id: the cache only
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(model, "config.json")
        except Exception:  # no hub client, or an id it refuses: use the table
            return None
        return Path(found) if isinstance(found, str) else None
    return None


def model_dims(model: str, *, tiny: dict | None = None, arch: str | None = None) -> ModelDims:
    """The dimensions of `model`: the tiny test model's settings, a local config.json, or the
    built-in table (`arch`, else a known name inside the model path)."""
    if arch:
        key = _norm(arch)
        if key not in KNOWN_MODELS:
            raise ConfigError(f"unknown arch {arch!r}; known: {', '.join(KNOWN_MODELS)}")
        return dataclasses.replace(KNOWN_MODELS[key], source=f"built-in table, arch={arch}")
    if model == "tiny":
        t = {
            "vocab_size": 512,
            "hidden_size": 64,
            "num_layers": 2,
            "num_heads": 4,
            "num_kv_heads": 2,
            "intermediate_size": 128,
            **(tiny or {}),
        }
        h, heads = int(t["hidden_size"]), int(t["num_heads"])
        return ModelDims(
            "tiny", h, int(t["num_layers"]), heads, int(t["num_kv_heads"]), h // heads,
            int(t["intermediate_size"]), int(t["vocab_size"]), True, None,
            "the config's `tiny` settings",
        )  # fmt: skip
    if model == EMBEDDED_GEMMA:
        return dataclasses.replace(KNOWN_MODELS["gemma-3-270m"], source="built-in table (embedded)")
    cfg = _local_config_json(model)
    if cfg is not None:
        return _from_config_json(cfg, Path(model).name or model)
    key = _norm(model)
    for k in sorted(KNOWN_MODELS, key=len, reverse=True):  # qwen3-32b before qwen3-3...
        if re.search(rf"(^|[^a-z0-9.]){re.escape(k)}($|[^a-z0-9.])", key):
            return dataclasses.replace(
                KNOWN_MODELS[k], source=f"built-in table, matched {k!r} in {model!r}"
            )
    raise ConfigError(
        f"model dimensions of {model!r} unknown: no local config.json and no known name in it "
        f"(pass arch=, one of {', '.join(KNOWN_MODELS)})"
    )


# ---------------------------------------------------------------------------------------------
# The launcher: accelerate / DeepSpeed / FSDP
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Launch:
    kind: str  # "single" | "deepspeed" | "fsdp" | "ddp"
    world: int = 1  # processes in all
    machines: int = 1
    zero_stage: int = 0  # 3 for FSDP full shard
    ds_gas: Any = None  # gradient_accumulation_steps fixed by the launcher (None / "auto")
    ds_micro: Any = None
    ds_clip: Any = None
    mixed_precision: str | None = None
    offload_optimizer: bool = False
    offload_params: bool = False
    source: str = "no launcher: one process (`her train ...`)"

    @property
    def sharded_weights(self) -> bool:
        return self.zero_stage >= 3

    def describe(self) -> str:
        if self.kind == "single":
            return self.source
        what = {"deepspeed": f"DeepSpeed ZeRO-{self.zero_stage}", "fsdp": "FSDP full shard"}
        return (
            f"{self.source}: {what.get(self.kind, 'DDP')}, {self.world} processes on "
            f"{self.machines} machine{'s' * (self.machines > 1)}"
        )


def _config_text(path: str | os.PathLike) -> str:
    p = Path(path)
    if not p.exists():
        p = Path(__file__).parent / "configs" / p.name
    return p.read_text(encoding="utf-8") if p.exists() else ""


def _find_file(name: str, near: Path | None) -> Path | None:
    for cand in (Path(name), (near / name) if near else None, Path(__file__).parent / "configs" /
                 Path(name).name):  # fmt: skip
        if cand is not None and cand.is_file():
            return cand
    return None


def _read_ds_json(path: Path, launch: Launch) -> None:
    ds = json.loads(path.read_text(encoding="utf-8"))
    zo = ds.get("zero_optimization", {})
    launch.zero_stage = int(zo.get("stage", 0))
    launch.ds_gas = ds.get("gradient_accumulation_steps")
    launch.ds_micro = ds.get("train_micro_batch_size_per_gpu")
    launch.ds_clip = ds.get("gradient_clipping")
    if (ds.get("bf16") or {}).get("enabled") is True:
        launch.mixed_precision = "bf16"
    elif (ds.get("fp16") or {}).get("enabled") is True:
        launch.mixed_precision = "fp16"
    launch.offload_optimizer = (zo.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")
    launch.offload_params = (zo.get("offload_param") or {}).get("device") in ("cpu", "nvme")


def resolve_launch(config: str | os.PathLike, train_raw: dict, launcher: str | None) -> Launch:
    """The launcher of a run: `launcher` ("none" for a plain single process, or a file), else
    the `--config_file` in the stage config's header, else the trainer config's `deepspeed` /
    `fsdp` keys (in `train_raw`, the trainer's keys as written)."""
    text = _config_text(config)
    near = Path(config).parent
    if launcher in ("none", "single"):
        return Launch("single")
    path: Path | None = None
    source = ""
    if launcher:
        path = _find_file(launcher, near)
        if path is None:
            raise ConfigError(f"launcher file not found: {launcher}")
        source = str(launcher)
    else:
        m = re.search(r"^#.*--config_file[ =](\S+)", text, re.MULTILINE)
        if m:
            path = _find_file(m.group(1), near)
            if path is None:
                raise ConfigError(f"{config}: its header names {m.group(1)}, which is not found")
            source = f"{m.group(1)} (named in the config's header)"
    ds_field = train_raw.get("deepspeed")
    if path is None and ds_field:
        launch = Launch("deepspeed", source=f"deepspeed: {ds_field} (config field)")
        if isinstance(ds_field, dict):
            tmp = ds_field
            launch.zero_stage = int(tmp.get("zero_optimization", {}).get("stage", 0))
        else:
            p = _find_file(str(ds_field), near)
            if p is None:
                raise ConfigError(f"deepspeed file not found: {ds_field}")
            _read_ds_json(p, launch)
        return launch
    if path is None:
        if train_raw.get("fsdp"):
            return Launch("fsdp", zero_stage=3, source="fsdp (config field), one process per GPU")
        return Launch("single")
    if path.suffix == ".json":  # a DeepSpeed config given directly
        launch = Launch("deepspeed", source=source)
        _read_ds_json(path, launch)
        return launch
    acc = read_config_file(path)
    dtype = str(acc.get("distributed_type", "NO")).upper()
    launch = Launch(
        {"DEEPSPEED": "deepspeed", "FSDP": "fsdp", "MULTI_GPU": "ddp"}.get(dtype, "single"),
        world=int(acc.get("num_processes", 1) or 1),
        machines=int(acc.get("num_machines", 1) or 1),
        mixed_precision=acc.get("mixed_precision"),
        source=source,
    )
    if launch.kind == "deepspeed":
        ds = acc.get("deepspeed_config") or {}
        if ds.get("deepspeed_config_file"):
            p = _find_file(ds["deepspeed_config_file"], path.parent)
            if p is None:
                raise ConfigError(f"{path}: deepspeed_config_file {ds['deepspeed_config_file']}")
            _read_ds_json(p, launch)
        else:
            launch.zero_stage = int(ds.get("zero_stage", 0))
            launch.ds_gas = ds.get("gradient_accumulation_steps")
            launch.ds_clip = ds.get("gradient_clipping")
            launch.offload_optimizer = ds.get("offload_optimizer_device", "none") != "none"
            launch.offload_params = ds.get("offload_param_device", "none") != "none"
    elif launch.kind == "fsdp":
        fs = acc.get("fsdp_config") or {}
        strategy = str(fs.get("fsdp_sharding_strategy", "FULL_SHARD")).upper()
        launch.zero_stage = 3 if strategy in ("FULL_SHARD", "1", "HYBRID_SHARD") else 2
        launch.offload_params = bool(fs.get("fsdp_offload_params"))
        launch.offload_optimizer = launch.offload_params
    return launch


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Finding:
    level: str  # "error" | "warning" | "note"
    message: str


@dataclasses.dataclass
class MemoryLine:
    what: str
    gib: float
    how: str


@dataclasses.dataclass
class Phase:
    """One training phase (an RM run has the judge's SFT and optionally its RL)."""

    name: str
    lines: list[MemoryLine] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(x.gib for x in self.lines)


@dataclasses.dataclass
class CheckReport:
    config: str
    stage: str
    hardware: Hardware
    sources: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    placement: list[str] = dataclasses.field(default_factory=list)
    findings: list[Finding] = dataclasses.field(default_factory=list)
    phases: list[Phase] = dataclasses.field(default_factory=list)

    def error(self, msg: str) -> None:
        self.findings.append(Finding("error", msg))

    def warn(self, msg: str) -> None:
        self.findings.append(Finding("warning", msg))

    def note(self, msg: str) -> None:
        self.findings.append(Finding("note", msg))

    @property
    def errors(self) -> list[str]:
        return [f.message for f in self.findings if f.level == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def verdict(self) -> str:
        if self.errors:
            return "FAIL"
        peak = max((p.total for p in self.phases), default=0.0)
        return "TIGHT" if peak > HEADROOM * self.hardware.gpu_memory else "PASS"

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["verdict"] = self.verdict
        for p, ph in zip(d["phases"], self.phases, strict=True):
            p["total_gib"] = round(ph.total, 2)
        return d

    def text(self) -> str:
        out = [f"her train check: {self.config} (stage {self.stage}) on {self.hardware}"]
        out.append("resolved:")
        out += [f"  {k:<10} {v}" for k, v in self.sources]
        if self.placement:
            out.append("placement:")
            out += [f"  {line}" for line in self.placement]
        cap = self.hardware.gpu_memory
        for ph in self.phases:
            out.append(f"memory per GPU, {ph.name} (GiB):")
            for ln in ph.lines:
                out.append(f"  {ln.what:<34} {ln.gib:7.2f}   {ln.how}")
            out.append(
                f"  {'total':<34} {ph.total:7.2f}   of {cap:g} GiB ({100 * ph.total / cap:.0f}%; "
                f"PASS below {HEADROOM:.0%})"
            )
        if self.findings:
            out.append("findings:")
            order = ("error", "warning", "note")
            for f in sorted(self.findings, key=lambda f: order.index(f.level)):
                out.append(f"  {f.level.upper():<7} {f.message}")
        verdict = self.verdict
        why = {
            "PASS": "the run's configs agree and every phase fits with headroom",
            "TIGHT": "no contradiction, but a phase uses more than the headroom allows",
            "FAIL": f"{len(self.errors)} error(s) above",
        }[verdict]
        out.append(f"verdict: {verdict} — {why}")
        return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------


def _gib(n_bytes: float) -> float:
    return n_bytes / GIB


def _fmt(n: float) -> str:
    return f"{n / 1e9:.2f}e9" if n >= 1e8 else f"{n:,.0f}"


def _dtype_bytes(model_args: Any) -> tuple[float, str]:
    if getattr(model_args, "load_in_4bit", False):
        return 0.55, "4-bit NF4 (≈0.55 B/param with constants)"
    if getattr(model_args, "load_in_8bit", False):
        return 1.0, "int8"
    d = str(model_args.dtype or "auto")
    if d in ("bfloat16", "float16", "bf16", "fp16"):
        return 2.0, d
    if d == "auto":
        return 2.0, "auto (bf16 on a bf16 GPU)"
    return 4.0, d


def _section(data: dict, key: str) -> dict:
    """A section of a config file's data ("" is the top level)."""
    return (data.get(key) or {}) if key else data


@dataclasses.dataclass
class _Ctx:
    rep: CheckReport
    hw: Hardware
    launch: Launch
    free_gpus_on_train_node: int


def _phase(
    ctx: _Ctx,
    name: str,
    kind: str,
    her_args: Any,
    model_args: Any,
    targs: Any,
    dims: ModelDims,
    raw: dict,
) -> Phase:
    """Contradictions and the memory plan of one trainer (kind "sft" or "grpo")."""
    rep, hw, launch = ctx.rep, ctx.hw, ctx.launch
    w = launch.world
    ph = Phase(name)
    micro = int(targs.per_device_train_batch_size)
    gas = int(targs.gradient_accumulation_steps)
    bf16 = bool(getattr(targs, "bf16", False))
    ckpt = bool(getattr(targs, "activation_checkpointing", False))
    lora = bool(model_args.use_peft)

    # -- the launcher against the stage
    if launch.kind == "deepspeed":
        for key, fixed, ours in (
            ("gradient_accumulation_steps", launch.ds_gas, gas),
            ("train_micro_batch_size_per_gpu", launch.ds_micro, micro),
            ("gradient_clipping", launch.ds_clip, targs.max_grad_norm),
        ):
            if fixed not in (None, "auto") and float(fixed) != float(ours):
                rep.error(
                    f"{name}: DeepSpeed {key} is {fixed} ({launch.source}) but the stage's is "
                    f"{ours}: transformers refuses to start on the mismatch (leave it out of the "
                    f"launcher file or set it to auto; the stage config is the one place for it)"
                )
    if launch.mixed_precision in ("bf16", "fp16") and not (bf16 or getattr(targs, "fp16", False)):
        rep.error(f"{name}: the launcher asks for {launch.mixed_precision} mixed precision, the "
                  f"stage for neither bf16 nor fp16")  # fmt: skip
    if launch.mixed_precision == "fp16" and bf16:
        rep.error(f"{name}: the launcher asks for fp16, the stage for bf16")
    if bf16 and not hw.bf16:
        rep.error(f"{name}: bf16 is on but these GPUs lack bf16 (pre-Ampere): set bf16: false")
    if getattr(model_args, "load_in_4bit", False) and launch.sharded_weights:
        rep.error(
            f"{name}: load_in_4bit (QLoRA) with {launch.describe()}: ZeRO-3/FSDP cannot "
            "partition bitsandbytes weights here; run QLoRA without the launcher"
        )
    if lora and getattr(her_args, "save_merged", False) and w > 1:
        rep.warn(
            f"{name}: save_merged under {w} processes: rank 0 merges from disk while the others "
            "wait at a collective; for big models set save_merged: false and run "
            "`her train merge` as a step of its own"
        )

    # -- batch arithmetic
    if kind == "grpo":
        # trl fills generation_batch_size for the world size of the machine parsing the
        # config (this one): recompute it for the run's, unless the config sets it.
        steps_gen = int(raw.get("steps_per_generation") or gas)
        gen_batch = int(raw.get("generation_batch_size") or micro * w * steps_gen)
        n_gen = int(targs.num_generations)
        prompt = int(her_args.max_prompt_tokens)
        compl = int(targs.max_completion_length)
        seq = prompt + compl
        rep.note(
            f"{name}: micro-batch {micro} × grad-acc {gas} × {w} process(es) = "
            f"{micro * gas * w} completions per optimizer step; generation batch {gen_batch} = "
            f"{gen_batch // max(n_gen, 1)} prompts × {n_gen} generations"
        )
        if gen_batch % n_gen:
            rep.error(
                f"{name}: generation batch {gen_batch} (per_device_train_batch_size {micro} × "
                f"{w} processes × steps_per_generation {steps_gen}) is not divisible by "
                f"num_generations {n_gen}: trl refuses to start"
            )
    else:
        seq = int(getattr(targs, "max_length", None) or 1024)
        rep.note(
            f"{name}: micro-batch {micro} × grad-acc {gas} × {w} process(es) = "
            f"{micro * gas * w} sequences per optimizer step, up to {seq} tokens each"
        )
    if dims.max_positions and seq > dims.max_positions:
        rep.warn(f"{name}: sequences of {seq} tokens exceed the model's {dims.max_positions}")

    # -- memory: weights
    P = dims.params()
    b, dname = _dtype_bytes(model_args)
    shard = w if launch.sharded_weights and not launch.offload_params else 1
    ph.lines.append(MemoryLine(
        f"weights ({dname}{', sharded' if shard > 1 else ''})", _gib(P * b / shard),
        f"{_fmt(P)} params × {b:g} B" + (f" / {shard} ranks" if shard > 1 else "")
        + (" (offloaded to CPU)" if launch.offload_params else ""),
    ))  # fmt: skip
    if launch.offload_params:
        ph.lines[-1].gib = 0.0
    elif ph.lines[-1].gib > hw.gpu_memory:
        rep.error(
            f"{name}: the {dname} weights alone take {ph.lines[-1].gib:.1f} GiB per GPU "
            f"({_fmt(P)} params × {b:g} B{f' / {shard}' if shard > 1 else ''}), more than "
            f"the {hw.gpu_memory:g} GiB given: shard them over more GPUs (ZeRO-3 / FSDP), "
            "quantize (load_in_4bit) or pick a smaller model"
        )
    if shard > 1 or launch.offload_params:
        live = 2 * max(dims.layer_params(), dims.embed_params())
        ph.lines.append(MemoryLine(
            "gathered weights (ZeRO-3 / FSDP)", _gib(live * b),
            f"2 × largest block {_fmt(live / 2)} params × {b:g} B (current + prefetched)",
        ))  # fmt: skip

    # -- trainable parameters: gradients + optimizer (+ adapter weights)
    if lora:
        r = int(model_args.lora_r)
        n_t = dims.lora_params(r, model_args.lora_target_modules)
        trained = f"LoRA r{r} on {model_args.lora_target_modules}: {_fmt(n_t)} params"
    else:
        n_t = P
        trained = f"full fine-tuning: {_fmt(n_t)} params"
    zs = launch.zero_stage if launch.kind in ("deepspeed", "fsdp") else 0
    mixed = launch.kind in ("deepspeed", "fsdp") and bf16
    if mixed:  # bf16 weights (counted above when full), fp32 grads, fp32 master + Adam m, v
        per_w, per_g, per_o = (2.0 if lora else 0.0), 4.0, 12.0
        how_o = "fp32 master + Adam m, v: 12 B"
    elif lora:  # peft keeps adapters in fp32
        per_w, per_g, per_o = 4.0, 4.0, 8.0
        how_o = "Adam m, v in fp32: 8 B"
    else:  # plain torch AdamW: states in the parameters' dtype
        per_w, per_g, per_o = 0.0, b, 2 * b
        how_o = f"Adam m, v: 2 × {b:g} B"
    d_w = w if zs >= 3 else 1
    d_g = w if zs >= 2 else 1
    d_o = w if zs >= 1 else 1
    if per_w:
        ph.lines.append(MemoryLine(
            "adapter weights", _gib(n_t * per_w / d_w),
            f"{trained} × {per_w:g} B" + (f" / {d_w}" if d_w > 1 else ""),
        ))  # fmt: skip
    ph.lines.append(MemoryLine(
        "gradients", _gib(n_t * per_g / d_g),
        f"{_fmt(n_t)} trainable × {per_g:g} B" + (f" / {d_g}" if d_g > 1 else "")
        + ("" if per_w or lora else f" ({trained})"),
    ))  # fmt: skip
    ph.lines.append(MemoryLine(
        "optimizer state", 0.0 if launch.offload_optimizer else _gib(n_t * per_o / d_o),
        f"{_fmt(n_t)} × {how_o}" + (f" / {d_o}" if d_o > 1 else "")
        + (" (offloaded to CPU)" if launch.offload_optimizer else ""),
    ))  # fmt: skip

    # -- activations: bf16 tensors a block keeps for backward, per token
    h, i = dims.hidden, dims.intermediate
    per_tok = 2 * (4 * h + 2 * dims.q_dim + 2 * dims.kv_dim + 4 * i)
    how_tok = "2 B × (4h + 2·q + 2·kv + 4·mlp)"
    if lora and float(model_args.lora_dropout or 0) > 0:
        per_tok += 3 * dims.lora_inputs(model_args.lora_target_modules)
        how_tok += " + lora_dropout copies (3 B × LoRA inputs)"
    tokens = micro * seq
    if ckpt:
        stored = tokens * h * 2 * dims.layers
        ph.lines.append(MemoryLine(
            "activations (checkpointed)", _gib(stored + tokens * per_tok),
            f"{micro} × {seq} tokens × ({dims.layers} layers × h {h} × 2 B "
            f"+ one block recomputed: {per_tok:,} B/token)",
        ))  # fmt: skip
    else:
        ph.lines.append(MemoryLine(
            "activations (no checkpointing)", _gib(tokens * per_tok * dims.layers),
            f"{micro} × {seq} tokens × {dims.layers} layers × {per_tok:,} B/token "
            f"[{how_tok}]",
        ))  # fmt: skip
    logit_tokens = micro * (compl if kind == "grpo" else seq)
    ph.lines.append(MemoryLine(
        "logits + loss", _gib(logit_tokens * dims.vocab * 12),
        f"{micro} × {compl if kind == 'grpo' else seq} tokens × vocab {dims.vocab} × 12 B "
        "(bf16 logits, fp32 upcast, log-softmax, gradient)",
    ))  # fmt: skip

    # -- vLLM colocated with training
    if kind == "grpo" and targs.use_vllm:
        tp = int(targs.vllm_tensor_parallel_size)
        if targs.vllm_mode == "colocate":
            util = float(targs.vllm_gpu_memory_utilization)
            share = util * hw.gpu_memory
            if w % tp:
                rep.error(f"{name}: vllm_tensor_parallel_size {tp} does not divide the world "
                          f"size {w}: trl refuses to start")  # fmt: skip
            wts = _gib(P * 2 / tp)
            kv_room = share - wts - VLLM_PROFILE_GIB
            per_tok_kv = dims.kv_bytes_per_token() / tp
            max_len = int(targs.vllm_max_model_length or seq)
            fits_tokens = max(0.0, kv_room) * GIB / per_tok_kv
            ph.lines.append(MemoryLine(
                f"vLLM colocated (TP {tp})", share,
                f"gpu_memory_utilization {util:g} × {hw.gpu_memory:g} GiB: weights "
                f"{_fmt(P)} × 2 B / TP {tp} = {wts:.1f}, profile {VLLM_PROFILE_GIB}, "
                f"KV cache {max(kv_room, 0):.1f} GiB = {fits_tokens:,.0f} tokens at "
                f"{per_tok_kv / 1024:.0f} KiB/token",
            ))  # fmt: skip
            if kv_room <= 0:
                rep.error(
                    f"{name}: vLLM's share {util:g} × {hw.gpu_memory:g} GiB = {share:.1f} GiB "
                    f"cannot hold the bf16 weights ({_fmt(P)} × 2 B / TP {tp} = {wts:.1f} GiB) "
                    f"plus {VLLM_PROFILE_GIB} GiB for its own activations: raise "
                    "vllm_tensor_parallel_size or vllm_gpu_memory_utilization"
                )
            elif fits_tokens < max_len:
                rep.error(
                    f"{name}: vLLM's KV cache holds {fits_tokens:,.0f} tokens, less than one "
                    f"sequence of {max_len} (vLLM refuses to start)"
                )
            else:
                per_group = gen_batch // max(w // tp, 1)  # generation_batch_size is global
                conc = int(fits_tokens // max_len)
                rep.note(
                    f"{name}: vLLM KV cache fits {conc} sequences of {max_len} tokens at once per "
                    f"TP group; {per_group} rollouts per group per generation"
                    + (" (generated in waves)" if conc < per_group else "")
                )
        else:  # server mode
            url = targs.vllm_server_base_url or f"http://{targs.vllm_server_host}:8000"
            host = urlparse(url).hostname or ""
            _external(ctx, name, "the vLLM rollout server", host, url)
    elif kind == "grpo":
        rep.warn(f"{name}: use_vllm is off: rollouts are generated by transformers in the "
                 "training processes (slow for long completions)")  # fmt: skip

    ph.lines.append(MemoryLine(
        "runtime overhead", RUNTIME_OVERHEAD_GIB, "CUDA context, NCCL buffers, fragmentation"
    ))  # fmt: skip
    return ph


def _external(ctx: _Ctx, name: str, what: str, host: str, where: str) -> None:
    """A server the run talks to: on the training node it needs GPUs the training leaves free;
    elsewhere it needs a node of its own."""
    rep = ctx.rep
    if host in _LOCAL_HOSTS:
        if ctx.free_gpus_on_train_node < 1:
            rep.error(
                f"{name}: {what} at {where} runs on the training node, whose {ctx.hw.gpus} "
                f"GPUs the {ctx.launch.world // ctx.launch.machines} training processes per node "
                "already take: serve it on another node (and point the config at that host) or "
                "leave GPUs free"
            )
        else:
            rep.note(f"{name}: {what} at {where} uses the {ctx.free_gpus_on_train_node} GPU(s) "
                     "the training leaves free on its node")  # fmt: skip
    else:
        ctx.rep.placement.append(f"{what}: {where} (another machine, host {host!r})")


def _judge(ctx: _Ctx, her_args: Any, ph: Phase) -> None:
    """Where the RL judge runs: a server (placed), llama.cpp, or transformers in-process (its
    weights counted). The spec is read as `her_sdk.backend_from_spec` reads it."""
    spec = str(her_args.judge_model or "none")
    rep = ctx.rep
    rep.sources.append(("judge", spec))
    if spec in ("none", "heuristic", "mock"):
        return
    judge = parse_backend_spec(spec)
    if judge.kind == "url":
        _external(ctx, "RL", "the judge server", urlparse(judge.target).hostname or "", spec)
    elif judge.kind == "default" or judge.target.endswith(".gguf"):
        rep.note("RL: the GGUF judge runs on the CPU (llama.cpp) in every training process")
    elif judge.kind == "path":  # a checkpoint folder, in-process on every rank
        try:
            jd = model_dims(judge.target, arch=None)
        except ConfigError as exc:
            rep.warn(f"RL: in-process judge {spec}: {exc}; its weights are not counted")
            return
        ph.lines.insert(-1, MemoryLine(
            "judge in-process (transformers, bf16)", _gib(jd.params() * 2),
            f"{_fmt(jd.params())} params × 2 B on every rank ({jd.source})",
        ))  # fmt: skip


def check_config(
    config: str | os.PathLike,
    hardware: Hardware | None = None,
    *,
    overrides: list[str] | dict[str, Any] | None = None,
    stage: str | None = None,
    launcher: str | None = None,
    arch: str | None = None,
) -> CheckReport:
    """Check the run of `config` on `hardware` (default: the hardware its header names).

    `launcher`: an accelerate / DeepSpeed file to use instead of the one in the header, or
    "none" for a plain single process. `arch`: a key of `KNOWN_MODELS` for the model's shape
    when its config.json is not on this machine and its path names no known model.
    `stage` defaults to the one the config names (`stage: sft`)."""
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    data = _merge(read_config_file(config), extra)  # what the run reads: file + overrides
    stage = stage or data.get("stage")
    if not isinstance(stage, str):
        raise ConfigError(f"{config} names no stage: add `stage: sft|rm|rl` or pass --stage")
    table = stage_of(stage)
    hw = hardware or header_hardware(config)
    if hw is None:
        raise ConfigError(f"{config}: no `# hardware:` header line; pass --gpus/--gpu-memory")
    rep = CheckReport(str(config), stage, hw)
    rep.sources.append(("stage", f"{config} ({stage})"))
    launch = resolve_launch(config, _section(data, table.trainer_section), launcher)

    # trl checks a GRPO batch against the world size of the machine parsing the config (1
    # here): state the run's generation batch so that it checks the run's world size instead.
    grpo = table.grpo_section
    grpo_raw = None if grpo is None else _section(data, grpo)
    if grpo_raw is not None and not {"generation_batch_size", "steps_per_generation"} & set(
        grpo_raw
    ):
        from trl import GRPOConfig

        dflt = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
        key = "per_device_train_batch_size"
        n = int(grpo_raw.get(key, dflt[key])) * launch.world
        n *= int(grpo_raw.get("gradient_accumulation_steps", dflt["gradient_accumulation_steps"]))
        batch: dict[str, Any] = {"generation_batch_size": n}
        extra = _merge(extra, {grpo: batch} if grpo else batch)
    try:
        configs = table.parse(config, extra, for_this_machine=False)
        phases = table.phases(configs)
    except ConfigError as exc:
        rep.error(f"the config does not parse: {exc}")
        return rep

    rep.sources.append(("launcher", launch.describe()))

    # placement: GPUs and nodes
    gpus_all = hw.gpus * hw.nodes
    if launch.machines > hw.nodes:
        rep.error(f"the launcher asks for {launch.machines} machines; {hw.nodes} given")
    if launch.world % launch.machines:
        rep.error(f"{launch.world} processes do not split evenly over {launch.machines} machines")
    per_node = math.ceil(launch.world / launch.machines)
    if per_node > hw.gpus:
        rep.error(
            f"world size {launch.world} ({launch.source}) needs {per_node} GPUs per machine × "
            f"{launch.machines}; the hardware has {hw.gpus} per node × {hw.nodes} = {gpus_all}"
        )
    rep.placement.append(
        f"training: {launch.world} process(es), one GPU each, on {launch.machines} of "
        f"{hw.nodes} node(s)"
    )
    ctx = _Ctx(rep, hw, launch, max(0, hw.gpus - per_node))

    dims: ModelDims | None = None
    for name, kind, section, (her_args, model_args, targs) in phases:
        try:
            dims = model_dims(model_args.model_name_or_path, tiny=her_args.tiny, arch=arch)
        except ConfigError as exc:
            if name == "judge RL" and dims is not None:  # RL starts from the SFT judge's merge
                dims = dataclasses.replace(dims, source=f"{dims.source}; judge RL from its merge")
            else:
                rep.error(f"{name}: {exc}")
                continue
        rep.sources.append(("model", f"{name}: {dims.describe()}"))
        ph = _phase(ctx, name, kind, her_args, model_args, targs, dims, _section(data, section))
        if kind == "grpo" and section == "":  # a policy's RL has its judge beside it
            _judge(ctx, her_args, ph)
        rep.phases.append(ph)
        if ph.total > hw.gpu_memory:
            big = sorted(ph.lines, key=lambda x: -x.gib)[:3]
            rep.error(
                f"{name}: needs {ph.total:.1f} GiB per GPU, more than the {hw.gpu_memory:g} GiB "
                "given; largest: " + ", ".join(f"{x.what} {x.gib:.1f}" for x in big)
            )
    external = [p for p in rep.placement if "another machine" in p]
    if external and hw.nodes < launch.machines + len(external):
        rep.error(
            f"{len(external)} server(s) on other machines ({'; '.join(external)}) plus "
            f"{launch.machines} training node(s) need {launch.machines + len(external)} nodes; "
            f"{hw.nodes} given"
        )
    elif external:
        for k, p in enumerate(external):
            rep.note(f"node {launch.machines + k} serves {p.split(':', 1)[0]}")
    idle = hw.nodes - launch.machines - len(external)
    if idle > 0:
        rep.warn(f"{idle} node(s) left idle (the launcher uses {launch.machines} machine(s))")
    return rep
