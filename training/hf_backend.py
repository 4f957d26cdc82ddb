"""TransformersBackend: a her_sdk Backend over an in-process Hugging Face causal LM.

    from her_sdk.training.hf_backend import TransformersBackend
    judge_backend = TransformersBackend("runs/rm")          # a full model or a LoRA adapter dir
    texts = judge_backend.generate_batch(prompts, max_new_tokens=96)   # batched, greedy

Used to run a small trained judge in-process (RL reward, accuracy benchmarks) where no HTTP
server is wanted. It generates whole answers (no token streaming) and ignores grammars; it is
not the SDK's runtime backend (games use llama.cpp / ONNX through `her_sdk`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from her_sdk import Backend, CancelToken, Sampling
from her_sdk._backends._base import TextStream, cut_at_stop

from .common import ModelSpec, load_causal_lm, load_tokenizer, require_train_extra

__all__ = ["TransformersBackend"]


class TransformersBackend(Backend):
    """Greedy/sampled generation with transformers. `model` is a path, a loaded model, or a
    ModelSpec; a directory holding `adapter_config.json` is loaded as base + LoRA adapter."""

    name = "transformers"
    prompt_style = "chatml"
    supports_grammar = False  # generate() is not grammar-constrained; grammars are ignored

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        dtype: str = "auto",
        n_ctx: int = 4096,
        batch_size: int = 8,
    ) -> None:
        require_train_extra()
        if isinstance(model, (str, Path, ModelSpec)):
            spec = model if isinstance(model, ModelSpec) else ModelSpec(str(model))
            tokenizer = tokenizer or load_tokenizer(spec, "model")
            if (Path(spec.path) / "adapter_config.json").exists():
                from peft import AutoPeftModelForCausalLM

                model = AutoPeftModelForCausalLM.from_pretrained(spec.path, local_files_only=True)
            else:
                model = load_causal_lm(spec, dtype=dtype)
        if tokenizer is None:
            raise ValueError("TransformersBackend needs a tokenizer with a loaded model")
        self.model = model
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.batch_size = batch_size
        self._lock = threading.Lock()  # one generate at a time per model

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate_batch(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        stop: Sequence[str] = (),
    ) -> list[str]:
        """Generate for many prompts (left-padded batches); returns the decoded continuations."""
        import torch

        tok = self.tokenizer
        out: list[str] = []
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            with self._lock:
                self.model.eval()
                device = next(self.model.parameters()).device
                for i in range(0, len(prompts), self.batch_size):
                    chunk = list(prompts[i : i + self.batch_size])
                    enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
                    enc = {k: v.to(device) for k, v in enc.items()}
                    kw: dict[str, Any] = {
                        "max_new_tokens": max_new_tokens,
                        "pad_token_id": tok.pad_token_id,
                        "eos_token_id": tok.eos_token_id,
                    }
                    if temperature > 0:
                        kw.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
                    else:
                        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                    with torch.no_grad():
                        gen = self.model.generate(**enc, **kw)
                    new = gen[:, enc["input_ids"].shape[1] :]
                    for row in new:
                        text = tok.decode(row, skip_special_tokens=False)
                        for sp in (tok.pad_token, tok.eos_token):
                            if sp:
                                text = (
                                    text.split(sp)[0]
                                    if sp == tok.eos_token
                                    else text.replace(sp, "")
                                )
                        out.append(cut_at_stop(text, stop)[0])
        finally:
            tok.padding_side = side
        return out

    def stream(
        self,
        prompt: str,
        *,
        stop: Sequence[str] = (),
        sampling: Sampling | None = None,
        grammar: str | None = None,
        cancel: CancelToken | None = None,
    ) -> TextStream:
        s = sampling or Sampling()
        text = self.generate_batch(
            [prompt], max_new_tokens=s.max_tokens, temperature=s.temperature, stop=stop
        )[0]
        stream = TextStream(iter([text] if text else []), prompt_tokens=self.count_tokens(prompt))
        stream.finish_reason = "stop"
        return stream
