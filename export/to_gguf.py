"""Hugging Face checkpoint -> GGUF (f32/f16/bf16, then llama.cpp's own quantizer).

What this module does: maps a Qwen3, Qwen2, Llama or Gemma3 checkpoint's tensors to llama.cpp
names with PyPI `gguf`'s tensor-name maps, applies the few layout conventions llama.cpp expects
(Llama's q/k row permutation, Gemma's `1 + weight` RMSNorm), embeds the tokenizer (byte-level
BPE or SentencePiece), special tokens, chat template and `her.*` metadata, writes the file with
`GGUFWriter`, and quantizes with `llama_cpp.llama_model_quantize`. It also writes LoRA adapters
as GGUF adapters (`general.type = "adapter"`) that llama.cpp applies at load time.

What it is not: a general converter. Other architectures, vision towers, MoE and exotic rope
types are refused with a message instead of producing a file that computes something else.
Every export is checked afterwards by `her_sdk.export.verify` unless the caller skips it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from her_sdk import ConfigError, MissingDependencyError, ModelError
from her_sdk.format import FORMAT_VERSION_KEY, HER_FORMAT_VERSION, SHAPE_METADATA, TurnShape

from ._source import arch_of, import_torch, load_source

__all__ = [
    "FLOAT_TYPES",
    "HER_FORMAT_VERSION",
    "QUANT_TYPES",
    "export_gguf",
    "export_gguf_lora",
    "quantize_gguf",
    "write_gguf",
]

FLOAT_TYPES = ("f32", "f16", "bf16")
# name -> llama_ftype (llama.h); all that llama.cpp quantizes without an importance matrix.
QUANT_TYPES = {
    "q8_0": 7,
    "q6_k": 18,
    "q5_k_m": 17,
    "q5_k_s": 16,
    "q5_0": 8,
    "q5_1": 9,
    "q4_k_m": 15,
    "q4_k_s": 14,
    "q4_0": 2,
    "q4_1": 3,
    "q3_k_l": 13,
    "q3_k_m": 12,
    "q3_k_s": 11,
    "q2_k": 10,
    "iq4_nl": 25,
    "iq4_xs": 30,
}
ALL_TYPES = (*FLOAT_TYPES, *QUANT_TYPES)


def _gguf():
    try:
        import gguf
    except ImportError:
        raise MissingDependencyError("gguf", "export") from None
    return gguf


def _llama_cpp():
    from her_sdk import LlamaBackend

    return LlamaBackend.llama_cpp()


# ---------------------------------------------------------------------------------------------
# hyperparameters
# ---------------------------------------------------------------------------------------------


def _rope(config: Any, arch: str) -> tuple[dict, dict | None]:
    """(rope parameters of full attention, of sliding attention or None) from a transformers-5
    config (`rope_parameters`, nested per layer type for Gemma3) or a legacy one."""
    rp = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in rp:
        return dict(rp["full_attention"]), dict(rp.get("sliding_attention") or {})
    if not rp:
        rp = {"rope_theta": getattr(config, "rope_theta", 10000.0)}
        if getattr(config, "rope_scaling", None):
            rp.update(config.rope_scaling)
    local = None
    if arch == "gemma3":
        local = {"rope_theta": getattr(config, "rope_local_base_freq", 10000.0)}
    return dict(rp), local


def _llama3_rope_factors(rp: dict, head_dim: int) -> np.ndarray:
    # Meta's published llama3 frequency scaling, as llama.cpp consumes it (rope_freqs tensor).
    base = float(rp["rope_theta"])
    factor = float(rp["factor"])
    low, high = float(rp["low_freq_factor"]), float(rp["high_freq_factor"])
    old_ctx = float(rp["original_max_position_embeddings"])
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _write_hparams(w, gguf, config: Any, arch: str) -> list[tuple[str, np.ndarray]]:
    """Architecture metadata; returns extra tensors some rope types need."""
    extra: list[tuple[str, np.ndarray]] = []
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(getattr(config, "num_key_value_heads", heads) or heads)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_vocab_size(config.vocab_size)
    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
    full, local = _rope(config, arch)
    w.add_rope_freq_base(float(full.get("rope_theta", 10000.0)))
    kind = full.get("rope_type", full.get("type", "default")) or "default"
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(full["factor"]))
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(full["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(full["original_max_position_embeddings"]))
    elif kind == "llama3" and arch == "llama":
        extra.append(("rope_freqs.weight", _llama3_rope_factors(full, head_dim)))
    elif kind != "default":
        raise ConfigError(f"rope type {kind!r} is not supported for {arch} export")
    if arch == "gemma3":
        if config.sliding_window:
            w.add_sliding_window(config.sliding_window)
        local_theta = float((local or {}).get("rope_theta", 10000.0))
        if local_theta != 10000.0:
            # llama.cpp fixes Gemma3's sliding-layer rope base at 10000; say so, verification
            # then measures the consequence.
            raise ConfigError(f"gemma3 sliding-attention rope_theta {local_theta} != 10000")
        scalar = getattr(config, "query_pre_attn_scalar", head_dim)
        if scalar != head_dim:
            raise ConfigError(
                f"gemma3 query_pre_attn_scalar {scalar} != head_dim {head_dim}: llama.cpp scales "
                "attention by 1/sqrt(head_dim)"
            )
        if getattr(config, "final_logit_softcapping", None):
            w.add_final_logit_softcapping(float(config.final_logit_softcapping))
        if getattr(config, "attn_logit_softcapping", None):
            w.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
    return extra


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------


def _tokenizer_kind(tj: dict) -> str:
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise ConfigError(f"tokenizer model {model.get('type')!r} is not supported (BPE only)")
    if model.get("byte_fallback"):
        return "spm"
    return "bpe"


def _space_prefix(tj: dict) -> bool:
    """Whether the SentencePiece-style tokenizer prepends '▁' to the text."""

    def walk(node: Any):
        if isinstance(node, dict):
            yield node
            for v in node.values():
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)

    for n in walk([tj.get("normalizer"), tj.get("pre_tokenizer")]):
        if n.get("type") == "Prepend" and n.get("prepend") == "▁":
            return True
        if n.get("type") == "Metaspace":
            scheme = n.get("prepend_scheme", "always" if n.get("add_prefix_space", True) else "")
            return scheme in ("always", "first")
    return False


_QWEN2_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # noqa: E501
_LLAMA3_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # noqa: E501


def _bpe_pre(tj: dict, arch: str) -> str:
    """llama.cpp's name for the byte-level BPE pre-tokenizer regex."""
    text = json.dumps(tj.get("pre_tokenizer"))
    if json.dumps(_QWEN2_RE)[1:-1] in text:
        return "qwen2"
    if json.dumps(_LLAMA3_RE)[1:-1] in text:
        return "llama-bpe"
    pre = tj.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    raise ConfigError(
        "unknown byte-level BPE pre-tokenizer; llama.cpp would split text differently "
        "(supported: Qwen2, Llama-3, GPT-2 regexes)"
    )


def _add_special(tok) -> tuple[bool, bool]:
    ids = tok("a")["input_ids"]
    bare = tok("a", add_special_tokens=False)["input_ids"]
    add_bos = tok.bos_token_id is not None and len(ids) > len(bare) and ids[0] == tok.bos_token_id
    add_eos = tok.eos_token_id is not None and len(ids) > len(bare) and ids[-1] == tok.eos_token_id
    return add_bos, add_eos


def _write_tokenizer(w, gguf, tok, config: Any, arch: str, src: Path | None) -> None:
    tj = json.loads(tok.backend_tokenizer.to_str())
    kind = _tokenizer_kind(tj)
    n_vocab = config.vocab_size
    vocab = tok.get_vocab()
    if len(vocab) > n_vocab:
        raise ConfigError(f"tokenizer has {len(vocab)} tokens, the model only {n_vocab}")
    rev = {i: t for t, i in vocab.items()}
    added = tok.added_tokens_decoder  # id -> AddedToken
    T = gguf.TokenType
    tokens: list[str] = []
    types: list[int] = []
    scores: list[float] = []
    sp_scores = None
    if kind == "spm" and src is not None and (src / "tokenizer.model").is_file():
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
        sp_scores = [sp.GetScore(i) for i in range(sp.GetPieceSize())]
    merge_rank: dict[str, int] = {}
    if kind == "spm" and sp_scores is None:
        # Scores from merge order: llama.cpp's SentencePiece tokenizer merges the highest-scoring
        # bigram first, which is the BPE merge order.
        for r, m in enumerate(tj["model"].get("merges") or []):
            a, b = m if isinstance(m, list) else m.split(" ", 1)
            merge_rank.setdefault(a + b, r)
    unk = tok.unk_token_id
    for i in range(n_vocab):
        t = rev.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
            scores.append(-1e4)
            continue
        if i in added:
            tokens.append(t)
            types.append(T.CONTROL if added[i].special else T.USER_DEFINED)
        elif kind == "spm" and i == unk:
            tokens.append(t)
            types.append(T.UNKNOWN)
        elif kind == "spm" and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            tokens.append(t)
            types.append(T.BYTE)
        else:
            tokens.append(t)
            types.append(T.NORMAL)
        if kind == "spm":
            if sp_scores is not None and i < len(sp_scores):
                scores.append(float(sp_scores[i]))
            else:
                scores.append(-float(merge_rank.get(t, 0)) if t in merge_rank else 0.0)
        else:
            scores.append(0.0)
    if kind == "bpe":
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(_bpe_pre(tj, arch))
    else:
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_add_space_prefix(_space_prefix(tj))
    w.add_token_list(tokens)
    w.add_token_types(types)
    if kind == "spm":
        w.add_token_scores(scores)
    else:
        merges = []
        for m in tj["model"].get("merges") or []:
            if isinstance(m, list):
                m = " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in p) for p in m)
            merges.append(m)
        w.add_token_merges(merges)
    for name in ("bos", "eos", "unk", "pad"):
        tid = getattr(tok, f"{name}_token_id", None)
        if tid is not None and 0 <= tid < n_vocab:
            getattr(w, f"add_{name}_token_id")(tid)
    add_bos, add_eos = _add_special(tok)
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(add_eos)
    template = getattr(tok, "chat_template", None)
    if isinstance(template, str) and template.strip():
        w.add_chat_template(template)


# ---------------------------------------------------------------------------------------------
# tensors
# ---------------------------------------------------------------------------------------------


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # HF Llama stores q/k rows in rotate-half order; llama.cpp's LLAMA rope is interleaved.
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _gguf_arch(gguf, arch: str):
    return {
        "qwen3": gguf.MODEL_ARCH.QWEN3,
        "qwen2": gguf.MODEL_ARCH.QWEN2,
        "llama": gguf.MODEL_ARCH.LLAMA,
        "gemma3": gguf.MODEL_ARCH.GEMMA3,
    }[arch]


def _tensors(state: dict, config: Any, arch: str, gguf):
    """(gguf name, float32 array) for every tensor llama.cpp reads."""
    tmap = gguf.get_tensor_name_map(_gguf_arch(gguf, arch), config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", heads) or heads
    tied = getattr(config, "tie_word_embeddings", False)
    for name, t in state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name == "lm_head.weight" and tied:
            continue
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ConfigError(f"no GGUF name for tensor {name!r} ({arch})")
        data = t.detach().float().cpu().numpy()
        if arch == "llama" and name.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            data = data + 1.0  # Gemma's RMSNorm multiplies by (1 + w); llama.cpp by w
        yield new, np.ascontiguousarray(data, dtype=np.float32)


def _add_tensor(w, gguf, name: str, data: np.ndarray, outtype: str) -> None:
    # 1-D tensors (norms, biases) stay f32, as llama.cpp expects.
    if data.ndim <= 1 or outtype == "f32":
        w.add_tensor(name, data)
    elif outtype == "f16":
        w.add_tensor(name, data.astype(np.float16))
    else:
        q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)


def _her_metadata(w, extra: dict | None = None) -> None:
    # The HER format version (her_sdk.format) the model was trained on; the runtime refuses a
    # version newer than its own. Written into full models and adapters alike.
    w.add_uint32(FORMAT_VERSION_KEY, HER_FORMAT_VERSION)
    w.add_bool("her.dual_layer", True)
    for k, v in (extra or {}).items():
        if isinstance(v, bool):
            w.add_bool(f"her.{k}", v)
        elif isinstance(v, int):
            w.add_int64(f"her.{k}", v)
        else:
            w.add_string(f"her.{k}", str(v))


def her_model_metadata(
    prompt_style: str = "chatml",
    *,
    max_plan_chars: int | None = None,
    max_thought_chars: int | None = None,
    line_breaks: bool | None = None,
) -> dict[str, Any]:
    """What a model file says about how to prompt and decode it (the `her.*` keys beside the
    format version): its prompt style ("chatml", the project's own prompt; "her", HER's own, for
    a released HER checkpoint) and the section lengths it was trained with, which the runtime
    turns into its default `TurnShape` (`TurnShape.from_metadata`). Unset lengths are the
    style's: the contract's short plans for "chatml", `TurnShape.FREE`'s for "her"."""
    if prompt_style not in ("chatml", "her"):
        raise ConfigError(f"prompt style {prompt_style!r}: a HER model is 'chatml' or 'her'")
    base = TurnShape.FREE if prompt_style == "her" else TurnShape()
    shape = msgspec.structs.replace(
        base,
        max_plan_chars=base.max_plan_chars if max_plan_chars is None else max_plan_chars,
        max_thought_chars=base.max_thought_chars
        if max_thought_chars is None
        else max_thought_chars,
        line_breaks=base.line_breaks if line_breaks is None else line_breaks,
    )  # checks the values
    meta: dict[str, Any] = {"prompt_style": prompt_style}
    for key, field in SHAPE_METADATA.items():
        meta[key.removeprefix("her.")] = getattr(shape, field)
    return meta


def write_gguf(
    model,
    tok,
    out: str | Path,
    *,
    outtype: str = "f16",
    name: str | None = None,
    src: str | Path | None = None,
    her: bool = True,
    her_meta: dict[str, Any] | None = None,
) -> Path:
    """Write an in-memory transformers model + tokenizer as an f32/f16/bf16 GGUF file;
    `her_meta` (`her_model_metadata()`) says how to prompt and decode it."""
    gguf = _gguf()
    if outtype not in FLOAT_TYPES:
        raise ConfigError(f"write_gguf writes {FLOAT_TYPES}; quantize afterwards")
    config = model.config
    arch = arch_of(config)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(name or getattr(config, "_name_or_path", "") or out.stem)
    w.add_file_type({"f32": 0, "f16": 1, "bf16": 32}[outtype])
    extra = _write_hparams(w, gguf, config, arch)
    _write_tokenizer(w, gguf, tok, config, arch, Path(src) if src else None)
    if her:
        _her_metadata(w, her_meta if her_meta is not None else her_model_metadata())
    for tname, data in extra:
        w.add_tensor(tname, data)
    for tname, data in _tensors(model.state_dict(), config, arch, gguf):
        _add_tensor(w, gguf, tname, data, outtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def quantize_gguf(src: str | Path, out: str | Path, qtype: str, *, threads: int = 0) -> Path:
    """Quantize an f32/f16/bf16 GGUF with llama.cpp's own quantizer."""
    if qtype not in QUANT_TYPES:
        raise ConfigError(f"unknown quantization type {qtype!r}; one of {', '.join(QUANT_TYPES)}")
    lib = _llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[qtype]
    params.nthread = threads or os.cpu_count() or 1
    rc = lib.llama_model_quantize(
        str(src).encode("utf-8"), str(out).encode("utf-8"), lib.byref(params)
    )
    if rc != 0:
        raise ModelError(f"llama.cpp failed to quantize {src} to {qtype} (code {rc})")
    return Path(out)


def export_gguf(
    src: str | Path,
    out: str | Path,
    *,
    outtype: str = "f16",
    adapter: str | Path | None = None,
    verify: bool = True,
    name: str | None = None,
    lora: str | Path | None = None,
    her_meta: dict[str, Any] | None = None,
    **verify_kw,
) -> dict:
    """Export a checkpoint (plus an optional PEFT LoRA `adapter`, merged) to one GGUF file.

    Returns a summary dict (path, sizes, timings, and the verification report unless
    `verify=False`). Raises `her_sdk.VerificationError` when the file is broken. `her_meta`
    (`her_model_metadata(...)`) is written into the file: for a released HER checkpoint,
    `her_model_metadata("her")`. `lora=` is the deprecated first name of `adapter=`.
    """
    if lora is not None:
        warnings.warn("export_gguf(lora=) is deprecated; use adapter=", DeprecationWarning, 2)
        adapter = adapter if adapter is not None else lora
    if outtype not in ALL_TYPES:
        raise ConfigError(f"unknown GGUF type {outtype!r}; one of {', '.join(ALL_TYPES)}")
    import_torch()
    out = Path(out)
    t0 = time.perf_counter()
    model, tok = load_source(src, adapter=adapter)
    t_load = time.perf_counter() - t0
    summary: dict[str, Any] = {"path": str(out), "type": outtype, "source": str(src)}
    if outtype in FLOAT_TYPES:
        write_gguf(model, tok, out, outtype=outtype, name=name, src=Path(src), her_meta=her_meta)
        summary["convert_s"] = time.perf_counter() - t0
    else:
        # Quantize from a 16-bit float file (bf16 sources stay bf16): as llama.cpp's own
        # workflow does; an f32 intermediate doubles the bytes written and read for no
        # measurable gain once the weights are quantized to 8 bits or fewer.
        base_type = _float_base(src)
        with tempfile.TemporaryDirectory(prefix="her-gguf-", dir=out.parent) as tmp:
            mid = Path(tmp) / f"model-{base_type}.gguf"
            write_gguf(
                model, tok, mid, outtype=base_type, name=name, src=Path(src), her_meta=her_meta
            )
            summary["convert_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            quantize_gguf(mid, out, outtype)
            summary["quantize_s"] = time.perf_counter() - t1
    summary["load_s"] = t_load
    summary["size_bytes"] = out.stat().st_size
    if verify:
        from .verify import verify_gguf

        summary["verify"] = verify_gguf(out, model, tok, outtype=outtype, **verify_kw)
    return summary


def _float_base(src: str | Path) -> str:
    cfg = json.loads((Path(src) / "config.json").read_text())
    dt = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
    return "bf16" if dt == "bfloat16" else "f16"


# ---------------------------------------------------------------------------------------------
# LoRA adapters
# ---------------------------------------------------------------------------------------------


def export_gguf_lora(
    adapter_dir: str | Path,
    base: str | Path,
    out: str | Path,
    *,
    verify: bool = True,
    base_gguf: str | Path | None = None,
    plan: bool = True,
    her_meta: dict[str, Any] | None = None,
    **verify_kw,
) -> dict:
    """Write a PEFT LoRA adapter as a GGUF adapter for llama.cpp (`load_model(base, adapter=)`).

    Only the low-rank matrices are written (A as rank x in, B as out x rank, f32); llama.cpp
    computes `W x + (alpha / r) * B A x`. With `verify`, the adapter is applied to `base_gguf`
    (or to an f32 GGUF of `base` written for the check) and compared with the merged model.
    `plan=False` records (`her.plan`) that the adapter was trained on turns without a plan, so
    characters on it do not ask for one. `her_meta` as for `export_gguf`.
    """
    gguf = _gguf()
    torch = import_torch()
    adir = Path(adapter_dir).expanduser()
    cfg_path = adir / "adapter_config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{adir} is not a PEFT adapter (no adapter_config.json)")
    acfg = json.loads(cfg_path.read_text())
    if acfg.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"adapter type {acfg.get('peft_type')!r} is not LoRA")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base)
    arch = arch_of(config)
    rank = int(acfg["r"])
    alpha = float(acfg.get("lora_alpha", rank))
    if acfg.get("use_rslora"):
        alpha *= math.sqrt(rank)  # rsLoRA scales by alpha/sqrt(r); llama.cpp by alpha/r
    if acfg.get("rank_pattern") or acfg.get("alpha_pattern"):
        raise ConfigError("per-module rank/alpha patterns are not supported")
    state = _load_adapter_state(adir, torch)
    tmap = gguf.get_tensor_name_map(_gguf_arch(gguf, arch), config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", heads) or heads
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, t in state.items():
        # base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
        if ".lora_A." not in key and ".lora_B." not in key:
            raise ConfigError(f"adapter tensor {key!r} is not a LoRA matrix (modules_to_save?)")
        ab = "a" if ".lora_A." in key else "b"
        mod = key.split(".lora_A." if ab == "a" else ".lora_B.")[0]
        mod = mod.removeprefix("base_model.model.")
        pairs.setdefault(mod, {})[ab] = t.detach().float().cpu().numpy()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out), arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    w.add_name(adir.name)
    _her_metadata(w, {**(her_meta if her_meta is not None else her_model_metadata()), "plan": plan})
    for mod, ab in sorted(pairs.items()):
        if set(ab) != {"a", "b"}:
            raise ConfigError(f"adapter module {mod} lacks lora_A or lora_B")
        new = tmap.get_name(mod + ".weight", try_suffixes=(".weight",))
        if new is None:
            raise ConfigError(f"no GGUF name for adapted module {mod!r}")
        a, b = ab["a"], ab["b"]
        if arch == "llama" and mod.endswith("q_proj"):
            b = _permute(b, heads)
        elif arch == "llama" and mod.endswith("k_proj"):
            b = _permute(b, kv_heads)
        w.add_tensor(new + ".lora_a", np.ascontiguousarray(a, dtype=np.float32))
        w.add_tensor(new + ".lora_b", np.ascontiguousarray(b, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    summary: dict[str, Any] = {"path": str(out), "type": "lora", "size_bytes": out.stat().st_size}
    if verify:
        from .verify import verify_gguf

        merged, tok = load_source(base, adapter=adir)
        with tempfile.TemporaryDirectory(prefix="her-lora-", dir=out.parent) as tmp:
            base_file = Path(base_gguf) if base_gguf else None
            if base_file is None:
                bmodel, btok = load_source(base)
                base_file = write_gguf(bmodel, btok, Path(tmp) / "base-f32.gguf", outtype="f32")
                del bmodel
            summary["verify"] = verify_gguf(
                base_file, merged, tok, outtype="f32", adapter=out, report_path=out, **verify_kw
            )
    return summary


def _load_adapter_state(adir: Path, torch) -> dict:
    st = adir / "adapter_model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    bin_ = adir / "adapter_model.bin"
    if bin_.is_file():
        return torch.load(bin_, map_location="cpu", weights_only=True)
    raise ConfigError(f"{adir} holds no adapter_model.safetensors")
