"""TransformersBackend: a Hugging Face causal LM, in-process, through transformers.

    judge = TransformersBackend("runs/rm")          # a checkpoint folder or a LoRA adapter folder
    texts = judge.generate_batch(prompts, max_new_tokens=96)   # batched, greedy

For what a game does not run but a pipeline does: a small trained judge as an RL reward, a
policy sampled for reward-model pairs, a benchmark's rollouts, where no HTTP server is wanted.
It generates whole answers (no token streaming), ignores grammars, and needs torch and
transformers (the `train` extra); games run GGUF (llama.cpp) or ONNX models instead.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._errors import ConfigError, MissingDependencyError
from ._base import Backend, CancelToken, Sampling, TextStream, cut_at_stop
from ._scheduler import Priority

__all__ = ["TransformersBackend"]


def _load(path: Path, dtype: str) -> tuple[Any, Any]:
    """(model, tokenizer) of a checkpoint folder, or of a LoRA adapter folder over its base."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "transformers", "train") from None
    kw: dict[str, Any] = {"local_files_only": True}  # never download
    tokenizer = AutoTokenizer.from_pretrained(str(path), **kw)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kw["dtype"] = dtype if dtype == "auto" else getattr(torch, dtype)
    if (path / "adapter_config.json").exists():
        try:
            from peft import AutoPeftModelForCausalLM
        except ImportError:
            raise MissingDependencyError("peft", "train") from None
        return AutoPeftModelForCausalLM.from_pretrained(str(path), **kw), tokenizer
    return AutoModelForCausalLM.from_pretrained(str(path), **kw), tokenizer


class TransformersBackend(Backend):
    """Greedy or sampled generation with transformers. `model` is a checkpoint folder (a folder
    holding `adapter_config.json` loads as base + LoRA adapter) or a loaded model, which then
    needs its `tokenizer`. `dtype` ("auto", "float32", "bfloat16", ...) applies to a folder."""

    name = "transformers"
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
        if isinstance(model, (str, Path)):
            model, loaded = _load(Path(model).expanduser(), dtype)
            tokenizer = tokenizer or loaded
        if tokenizer is None:
            raise ConfigError("TransformersBackend needs a tokenizer with a loaded model")
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
        priority: Priority = "normal",
    ) -> TextStream:
        s = sampling or Sampling()
        text = self.generate_batch(
            [prompt], max_new_tokens=s.max_tokens, temperature=s.temperature, stop=stop
        )[0]
        stream = TextStream(iter([text] if text else []), prompt_tokens=self.count_tokens(prompt))
        stream.finish_reason = "stop"
        return stream
