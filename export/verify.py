"""Verification of exported files against the source model in transformers.

After an export, the file is loaded in its own engine (llama.cpp for GGUF, ONNX Runtime GenAI
for ONNX) and compared with the transformers model on a fixed prompt set rendered with
`her_sdk.format` (HER prompts and plain text) and on held-out HER-format conversations:

- tokenizer agreement: the engine's tokenization of every text equals transformers';
- max |logit difference| and top-1 agreement over every position (teacher-forced, same ids);
- greedy agreement: fraction of 16 greedily generated tokens before the first divergence;
- perplexity of the held-out HER text, source vs export.

A report (JSON and a markdown table) is written beside the output; `VerificationError` (a
`her_sdk.ModelError`, with the reason) is raised when a limit for the type is broken. This is a
parity check, not a quality benchmark: random-weight test models pass it as well as trained ones.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from her_sdk import VerificationError

__all__ = [
    "LIMITS",
    "LlamaScorer",
    "OnnxScorer",
    "VerificationError",
    "check_metrics",
    "heldout_texts",
    "prompt_texts",
    "verify_gguf",
    "verify_onnx",
]


# type -> (max |logit diff| or None, min top-1 agreement, max perplexity ratio export/source).
# The logit limit is for logits up to 10 in magnitude and grows linearly above (see check_metrics).
LIMITS: dict[str, tuple[float | None, float, float]] = {
    # f32 is not bit-exact: llama.cpp evaluates GELU through an f16 table, an error relative to
    # the activations that grows with depth (the embedded Gemma-3-270M exported at f32: 0.024 at
    # logits up to 32, i.e. 7.6e-3 per 10 units; a conversion bug shows as errors of order 1).
    "f32": (1e-2, 0.99, 1.001),
    "fp32": (1e-2, 0.99, 1.001),
    "f16": (None, 0.95, 1.01),
    "bf16": (None, 0.9, 1.02),
    "q8_0": (None, 0.9, 1.02),
    "int8": (None, 0.85, 1.05),
    "q6_k": (None, 0.85, 1.05),
    "q5_k_m": (None, 0.8, 1.08),
    "q5_k_s": (None, 0.8, 1.08),
    "q5_0": (None, 0.8, 1.08),
    "q5_1": (None, 0.8, 1.08),
    "q4_k_m": (None, 0.7, 1.15),
    "q4_k_s": (None, 0.7, 1.15),
    "q4_0": (None, 0.65, 1.2),
    "q4_1": (None, 0.65, 1.2),
    "iq4_nl": (None, 0.65, 1.2),
    "iq4_xs": (None, 0.65, 1.2),
    "int4": (None, 0.65, 1.2),
    "q3_k_l": (None, 0.5, 1.5),
    "q3_k_m": (None, 0.5, 1.5),
    "q3_k_s": (None, 0.45, 1.6),
    "q2_k": (None, 0.35, 2.5),
}
GREEDY_TOKENS = 16


# ---------------------------------------------------------------------------------------------
# the fixed texts
# ---------------------------------------------------------------------------------------------


def _scene():
    from her_sdk import Persona
    from her_sdk.format import Heard, Segment, Turn

    mara = Persona(
        name="Mara",
        source="Vell",
        profile="Gate captain of Vell, dry-humoured, tired of smugglers.",
        goals="Keep the gate shut until the magistrate arrives.",
        secrets="She let her brother through last winter.",
    )
    turn = Turn.from_segments(
        [
            Segment("plan", "Mara distrusts him; she stalls and asks for his papers."),
            Segment("thought", "Another one with a story."),
            Segment("action", "leans on her spear"),
            Segment("speech", "Papers first. Then we talk about the gate."),
        ]
    )
    history = [
        Heard(speaker="Environment", speech="Rain hammers the gatehouse roof."),
        Heard(speaker="Traveler", speech="Let me through, I have papers.", actions=["waves"]),
        turn,
        Heard(speaker="Traveler", speech="Here. Signed by the guild."),
    ]
    return mara, history, turn


def prompt_texts(tok) -> list[str]:
    """The fixed prompt set: two HER prompts (ChatML and the model's own template when it has
    one) and two plain sentences."""
    from her_sdk.format import render_prompt

    persona, history, _ = _scene()
    texts = [render_prompt(persona, history, style="chatml").text]
    template = getattr(tok, "chat_template", None)
    if isinstance(template, str) and template.strip():
        try:
            texts.append(
                render_prompt(
                    persona,
                    history[:2],
                    style="template",
                    chat_template=template,
                    bos_token=tok.bos_token or "",
                    eos_token=tok.eos_token or "",
                ).text
            )
        except Exception:  # a template that rejects system messages etc.: skip that prompt
            pass
    texts.append("The river ran high that spring, and the mill wheel never stopped turning.")
    texts.append("Mara: <role_action>shrugs</role_action>Rules are rules, friend.")
    return texts


def _closed(messages: list, reply: str) -> str:
    """A whole conversation ending with `reply` as a finished assistant turn (ChatML)."""
    from her_sdk.format import CHATML_STOP, render_chatml

    return render_chatml(messages, reply) + CHATML_STOP[0]  # CHATML_STOP[0] is <|im_end|>


def heldout_texts() -> list[str]:
    """Held-out HER-format conversations (not in any prompt), for perplexity."""
    from her_sdk import Persona
    from her_sdk.format import Heard, Segment, Turn, build_messages, render_turn

    out = []
    persona, history, turn = _scene()
    msgs = build_messages(persona, history[:2])
    out.append(_closed(msgs, render_turn(turn, persona.name, keep_plan=True)))
    brannoc = Persona(
        name="Brannoc",
        source="the Salt Road",
        profile="Innkeeper of the Drowned Lantern; warm, evasive, counts every coin twice.",
        scenario="A guild collector has come about the unpaid spring accounts.",
        goals="Delay the collector until the caravan pays him tomorrow.",
    )
    reply = Turn.from_segments(
        [
            Segment(
                "plan",
                "Brannoc is afraid but hides it; he stalls and tries to learn what she knows.",
            ),
            Segment("thought", "She has seen the spring accounts. Who told her?"),
            Segment("action", "pours her a cup of cider"),
            Segment("speech", "Forty crowns? Sit, have a drink first, the road is long."),
            Segment("action", "slides the cup across the bar"),
        ]
    )
    hist = [
        Heard(
            speaker="Ysolde",
            speech="You owe the guild forty crowns.",
            actions=["drops a ledger on the bar"],
        ),
        Heard(speaker="Environment", speech="The fire cracks; a dog barks outside."),
    ]
    msgs = build_messages(brannoc, hist)
    out.append(_closed(msgs, render_turn(reply, "Brannoc", keep_plan=True)))
    return out


# ---------------------------------------------------------------------------------------------
# engines
# ---------------------------------------------------------------------------------------------


class LlamaScorer:
    """Full-sequence logits and greedy decoding from a GGUF file through llama.cpp, with an f32
    KV cache so that an f32 file can match transformers to ~1e-5."""

    def __init__(
        self,
        path: str | Path,
        *,
        adapter: str | Path | None = None,
        n_ctx: int = 1024,
        n_threads: int | None = None,
    ) -> None:
        import ctypes

        from her_sdk import LlamaBackend

        LlamaBackend.check_file(path)
        lib = self._lib = LlamaBackend.llama_cpp()
        mp = lib.llama_model_default_params()
        if hasattr(mp, "use_extra_bufts"):
            mp.use_extra_bufts = not LlamaBackend.cpu_has_amx()  # AMX repacking crashes
        self._model = lib.llama_model_load_from_file(str(path).encode(), mp)
        if not self._model:
            raise VerificationError(f"llama.cpp could not load {path}")
        self._lora = None
        if adapter is not None:
            self._lora = lib.llama_adapter_lora_init(self._model, str(adapter).encode())
            if not self._lora:
                raise VerificationError(f"llama.cpp could not load the LoRA adapter {adapter}")
        cp = lib.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_ctx
        cp.n_ubatch = n_ctx
        cp.type_k = 0  # GGML_TYPE_F32
        cp.type_v = 0
        if hasattr(cp, "flash_attn_type"):
            # llama.cpp casts an f32 KV cache to f16 for flash attention; keep plain attention.
            cp.flash_attn_type = 0
        cp.n_threads = cp.n_threads_batch = n_threads or os.cpu_count() or 1
        self._ctx = lib.llama_init_from_model(self._model, cp)
        if not self._ctx:
            raise VerificationError(f"llama.cpp could not create a context for {path}")
        if self._lora is not None:
            arr = (lib.llama_adapter_lora_p_ctypes * 1)(self._lora)
            if lib.llama_set_adapters_lora(self._ctx, arr, 1, (ctypes.c_float * 1)(1.0)):
                raise VerificationError(f"LoRA adapter {adapter} does not fit {path}")
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self.n_ctx = n_ctx
        self._batch = lib.llama_batch_init(n_ctx, 0, 1)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        lib = self._lib
        raw = text.encode("utf-8")
        n = len(raw) + 16
        arr = (lib.llama_token * n)()
        k = lib.llama_tokenize(self._vocab, raw, len(raw), arr, n, add_special, True)
        if k < 0:
            raise VerificationError("llama.cpp tokenization overflowed")
        return list(arr[:k])

    def _decode(self, ids: Sequence[int], start: int, all_logits: bool) -> None:
        b = self._batch
        b.n_tokens = len(ids)
        for i, t in enumerate(ids):
            b.token[i] = int(t)
            b.pos[i] = start + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = all_logits or i == len(ids) - 1
        rc = self._lib.llama_decode(self._ctx, b)
        if rc != 0:
            raise VerificationError(f"llama_decode failed ({rc})")

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        if len(ids) > self.n_ctx:
            raise VerificationError("sequence longer than the scorer's context")
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self._ctx), True)
        self._decode(ids, 0, True)
        ptr = self._lib.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(len(ids), self.n_vocab)).copy()

    def greedy(self, ids: Sequence[int], n: int) -> list[int]:
        lib = self._lib
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        self._decode(ids, 0, False)
        out: list[int] = []
        pos = len(ids)
        for _ in range(n):
            row = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, -1), (self.n_vocab,))
            t = int(np.argmax(row))
            out.append(t)
            self._decode([t], pos, False)
            pos += 1
        return out

    def close(self) -> None:
        lib = self._lib
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._lora:
            lib.llama_adapter_lora_free(self._lora)
            self._lora = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None


class OnnxScorer:
    """Full-sequence logits and greedy decoding through ONNX Runtime GenAI."""

    def __init__(self, path: str | Path) -> None:
        from her_sdk import OnnxBackend

        og = self._og = OnnxBackend.genai()
        self._model = og.Model(str(path))
        self._tok = og.Tokenizer(self._model)
        cfg = json.loads((Path(path) / "genai_config.json").read_text())
        self.n_ctx = int(cfg["model"].get("context_length", 2048))
        window = cfg["model"].get("decoder", {}).get("sliding_window") or {}
        self.min_length = int(window.get("window_size", 0)) + 1

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return [int(t) for t in self._tok.encode(text)]

    def _generator(self, n: int):
        og = self._og
        params = og.GeneratorParams(self._model)
        n = max(n, self.min_length)
        params.set_search_options(max_length=min(n, self.n_ctx), do_sample=False)
        return og.Generator(self._model, params)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        gen = self._generator(len(ids) + 1)
        gen.append_tokens(np.asarray(ids, dtype=np.int32))
        out = np.asarray(gen.get_output("logits"), dtype=np.float32)
        return out.reshape(-1, out.shape[-1])[-len(ids) :]

    def greedy(self, ids: Sequence[int], n: int) -> list[int]:
        gen = self._generator(len(ids) + n)
        gen.append_tokens(np.asarray(ids, dtype=np.int32))
        out: list[int] = []
        for _ in range(n):
            row = np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1)
            t = int(np.argmax(row))
            out.append(t)
            gen.append_tokens(np.asarray([t], dtype=np.int32))
        return out

    def close(self) -> None:
        self._model = None
        self._tok = None


# ---------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------


def _hf_logits(model, ids: Sequence[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(torch.tensor([list(ids)]), use_cache=False)
    return out.logits[0].float().numpy()


def _hf_greedy(model, ids: Sequence[int], n: int) -> list[int]:
    import torch

    out: list[int] = []
    with torch.no_grad():
        res = model(torch.tensor([list(ids)]), use_cache=True)
        for _ in range(n):
            t = int(res.logits[0, -1].argmax())
            out.append(t)
            res = model(torch.tensor([[t]]), past_key_values=res.past_key_values, use_cache=True)
    return out


def _nll(logits: np.ndarray, ids: Sequence[int]) -> tuple[float, int]:
    x = logits[:-1].astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    tgt = x[np.arange(len(ids) - 1), np.asarray(ids[1:])]
    return float((lse - tgt).sum()), len(ids) - 1


def _hf_ids(tok, text: str, max_len: int) -> list[int]:
    return list(tok(text)["input_ids"])[:max_len]


def compare(
    model,
    tok,
    scorer: Any,
    *,
    max_len: int = 256,
    greedy_tokens: int = GREEDY_TOKENS,
    prompts: Sequence[str] | None = None,
    heldout: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Measure the export (`scorer`) against the transformers `model` on the fixed texts."""
    prompts = list(prompts) if prompts is not None else prompt_texts(tok)
    heldout = list(heldout) if heldout is not None else heldout_texts()
    max_diff = scale = 0.0
    agree = total = 0
    tok_match = 0
    greedy_fracs: list[float] = []
    nll_src = nll_exp = 0.0
    n_tok = 0
    finite = True
    for i, text in enumerate(prompts + heldout):
        ids = _hf_ids(tok, text, max_len)
        if scorer.tokenize(text)[:max_len] == ids:
            tok_match += 1
        a = _hf_logits(model, ids)
        b = scorer.logits(ids)
        if a.shape != b.shape:
            raise VerificationError(f"logit shapes differ: source {a.shape}, export {b.shape}")
        finite = finite and bool(np.isfinite(b).all())
        max_diff = max(max_diff, float(np.abs(a - b).max()))
        scale = max(scale, float(np.abs(a).max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += len(ids)
        if i >= len(prompts):
            s, n = _nll(a, ids)
            e, _ = _nll(b, ids)
            nll_src += s
            nll_exp += e
            n_tok += n
        elif greedy_tokens:
            budget = min(len(ids), max_len - greedy_tokens)
            g_src = _hf_greedy(model, ids[:budget], greedy_tokens)
            g_exp = scorer.greedy(ids[:budget], greedy_tokens)
            k = 0
            while k < greedy_tokens and g_src[k] == g_exp[k]:
                k += 1
            greedy_fracs.append(k / greedy_tokens)
    ppl_src = math.exp(nll_src / max(n_tok, 1))
    ppl_exp = math.exp(nll_exp / max(n_tok, 1)) if finite else float("inf")
    return {
        "texts": len(prompts) + len(heldout),
        "positions": total,
        "tokenizer_agreement": tok_match / (len(prompts) + len(heldout)),
        "max_logit_diff": max_diff,
        "max_abs_logit": scale,
        "top1_agreement": agree / max(total, 1),
        "greedy_agreement": float(np.mean(greedy_fracs)) if greedy_fracs else None,
        "ppl_source": ppl_src,
        "ppl_export": ppl_exp,
        "ppl_ratio": ppl_exp / ppl_src,
        "heldout_tokens": n_tok,
        "finite": finite,
    }


def check_metrics(
    metrics: dict[str, Any], kind: str, *, tolerance: float | None = None
) -> list[str]:
    """Reasons the export fails its limits (empty list: it passes)."""
    max_diff, min_top1, max_ppl = LIMITS.get(kind, (None, 0.5, 1.5))
    if tolerance is not None:
        max_diff = tolerance
    why = []
    if not metrics["finite"]:
        why.append("the export produced NaN/inf logits")
    if metrics["tokenizer_agreement"] < 1.0:
        why.append(
            f"tokenization differs from transformers on "
            f"{1 - metrics['tokenizer_agreement']:.0%} of the texts"
        )
    if max_diff is not None and tolerance is None:
        # The f32 limit is per 10 units of logit (see LIMITS; Gemma logits reach 30+).
        max_diff *= max(1.0, metrics["max_abs_logit"] / 10.0)
    if max_diff is not None and metrics["max_logit_diff"] > max_diff:
        why.append(f"max logit diff {metrics['max_logit_diff']:.3g} > {max_diff:g}")
    if metrics["top1_agreement"] < min_top1:
        why.append(f"top-1 agreement {metrics['top1_agreement']:.3f} < {min_top1}")
    if metrics["ppl_ratio"] > max_ppl:
        why.append(f"perplexity ratio {metrics['ppl_ratio']:.4f} > {max_ppl}")
    return why


def write_report(report: dict[str, Any], base: Path) -> tuple[Path, Path]:
    """`<base>.verify.json` and `<base>.verify.md` (inside `base` when it is a directory)."""
    if base.is_dir():
        jpath, mpath = base / "verify.json", base / "verify.md"
    else:
        stem = base.with_suffix("")
        jpath = stem.with_name(stem.name + ".verify.json")
        mpath = stem.with_name(stem.name + ".verify.md")
    jpath.write_text(json.dumps(report, indent=2) + "\n")
    m = report["metrics"]
    rows = [
        ("tokenizer agreement", f"{m['tokenizer_agreement']:.0%}"),
        ("max logit diff", f"{m['max_logit_diff']:.3g}"),
        ("top-1 agreement", f"{m['top1_agreement']:.2%}"),
        (
            "greedy agreement",
            "-" if m["greedy_agreement"] is None else f"{m['greedy_agreement']:.2%}",
        ),
        ("perplexity (source)", f"{m['ppl_source']:.4g}"),
        ("perplexity (export)", f"{m['ppl_export']:.4g}"),
        ("perplexity ratio", f"{m['ppl_ratio']:.4f}"),
    ]
    lines = [
        f"# Verification of `{Path(report['path']).name}` ({report['type']})",
        "",
        f"Engine: {report['engine']}; {m['texts']} texts, {m['positions']} positions, "
        f"{m['heldout_tokens']} held-out tokens.",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        "**PASS**" if report["ok"] else "**FAIL**: " + "; ".join(report["failures"]),
        "",
    ]
    mpath.write_text("\n".join(lines))
    return jpath, mpath


def _run(
    make_scorer: Callable[[], Any],
    model,
    tok,
    *,
    path: Path,
    kind: str,
    engine: str,
    report_path: Path | None,
    tolerance: float | None,
    raise_on_fail: bool,
    max_len: int,
    greedy_tokens: int,
) -> dict[str, Any]:
    scorer = make_scorer()
    try:
        metrics = compare(model, tok, scorer, max_len=max_len, greedy_tokens=greedy_tokens)
    finally:
        scorer.close()
    failures = check_metrics(metrics, kind, tolerance=tolerance)
    report = {
        "path": str(path),
        "type": kind,
        "engine": engine,
        "limits": dict(
            zip(
                ("max_logit_diff", "min_top1", "max_ppl_ratio"),
                LIMITS.get(kind, (None, 0.5, 1.5)),
                strict=True,
            )
        ),
        "metrics": metrics,
        "ok": not failures,
        "failures": failures,
    }
    if tolerance is not None:
        report["limits"]["max_logit_diff"] = tolerance
    jpath, mpath = write_report(report, report_path or path)
    report["report_json"], report["report_md"] = str(jpath), str(mpath)
    if failures and raise_on_fail:
        raise VerificationError(
            f"{path} failed verification ({kind}): " + "; ".join(failures) + f" — see {mpath}"
        )
    return report


def verify_gguf(
    path: str | Path,
    model,
    tok,
    *,
    outtype: str,
    adapter: str | Path | None = None,
    report_path: str | Path | None = None,
    tolerance: float | None = None,
    raise_on_fail: bool = True,
    max_len: int = 256,
    greedy_tokens: int = GREEDY_TOKENS,
) -> dict[str, Any]:
    """Compare a GGUF file (optionally with a LoRA adapter) with `model` (transformers)."""
    path = Path(path)
    return _run(
        lambda: LlamaScorer(path, adapter=adapter, n_ctx=max(max_len, 64)),
        model,
        tok,
        path=path,
        kind=outtype,
        engine="llama.cpp (f32 KV cache)",
        report_path=Path(report_path) if report_path else None,
        tolerance=tolerance,
        raise_on_fail=raise_on_fail,
        max_len=max_len,
        greedy_tokens=greedy_tokens,
    )


def verify_onnx(
    path: str | Path,
    model,
    tok,
    *,
    precision: str,
    tolerance: float | None = None,
    raise_on_fail: bool = True,
    max_len: int = 256,
    greedy_tokens: int = GREEDY_TOKENS,
) -> dict[str, Any]:
    """Compare an ONNX Runtime GenAI model folder with `model` (transformers)."""
    path = Path(path)
    return _run(
        lambda: OnnxScorer(path),
        model,
        tok,
        path=path,
        kind=precision,
        engine="onnxruntime-genai (CPU)",
        report_path=None,
        tolerance=tolerance,
        raise_on_fail=raise_on_fail,
        max_len=max_len,
        greedy_tokens=greedy_tokens,
    )
