"""Tiny models and synthetic HER data for CPU tests, smoke runs and CI (no model hub needed).

    from her_sdk.training.tiny import build_tiny_model, synthetic_samples
    path = build_tiny_model("/tmp/tiny")          # random-weight Qwen3 + BPE tokenizer, saved
    rows = synthetic_samples(64, seed=0)          # HER prompt/completion samples

`build_tiny_model` trains a byte-level BPE tokenizer on the fly (on HER-formatted text, so tags
and ChatML markers are cheap) and saves a random-weight causal LM of the given architecture with
a ChatML chat template, like the released HER models. Every training stage (SFT, reward model,
RL) uses it for tests and the `*_tiny_cpu.yaml` configs. The synthetic scenes are rendered
through `training.data` / `her_sdk.format`, so they follow the HER contract exactly.

This module is not a model zoo: the weights are random; results only show that code runs and
parameters move.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from her_sdk import MissingDependencyError, Persona
from her_sdk.format import CHATML_TEMPLATE, ENVIRONMENT, Segment, Turn

__all__ = ["build_tiny_model", "build_tokenizer", "synthetic_samples"]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


# ---------------------------------------------------------------------------------------------
# Synthetic scenes
# ---------------------------------------------------------------------------------------------

_NAMES = ["Mara", "Brannoc", "Ysolde", "Tobin", "Kestrel", "Orla"]
_PLACES = ["the gate of Vell", "the Salt Road Inn", "a ferry at dusk", "the archive tower"]
_SPEECH = [
    "Your papers, traveler.",
    "I have nothing to hide.",
    "Then you will not mind if I look.",
    "The road was long and the rain was cold.",
    "Pay by the new moon, or the guild takes the inn.",
    "Give me until the first frost.",
    "Who sent you here?",
    "Nobody sends me anywhere.",
    "Keep your voice down.",
    "The bell rings at midnight.",
]
_ACTIONS = [
    "crosses her arms",
    "leans on the counter",
    "glances at the door",
    "taps the ledger",
    "steps closer",
    "wipes the table slowly",
]
_THOUGHTS = [
    "I do not trust this one.",
    "If they find the letter, I am finished.",
    "Stay calm. Smile.",
    "This could be useful.",
    "Something is wrong here.",
]
_PLANS = [
    "{n} should stay guarded and answer with a question; {n} distrusts strangers.",
    "{n} is cornered, so {n} bargains with a half-truth and keeps the secret hidden.",
    "{n} wants to end the talk quickly; a curt reply and a warning suit {n} now.",
    "{n} senses an opening and should press the other for details, politely.",
]


def _synthetic_turn(rng: random.Random, name: str, plan: bool) -> Turn:
    segs = []
    if plan:
        segs.append(Segment("plan", rng.choice(_PLANS).format(n=name)))
    if rng.random() < 0.8:
        segs.append(Segment("thought", rng.choice(_THOUGHTS)))
    if rng.random() < 0.6:
        segs.append(Segment("action", rng.choice(_ACTIONS)))
    segs.append(Segment("speech", rng.choice(_SPEECH)))
    return Turn.from_segments(segs)


def synthetic_samples(
    n: int = 64, *, seed: int = 0, plan: bool = True, eval_every: int = 5
) -> list[dict]:
    """`n` HER samples from random little scenes (two characters, narration, plans on targets).

    Every `eval_every`-th scene goes to the "eval" split, so a held-out loss can be measured.
    """
    from .data import ConvertReport, Entry, scene_samples

    rng = random.Random(seed)
    out: list[dict] = []
    scene_no = 0
    while len(out) < n:
        a, b = rng.sample(_NAMES, 2)
        place = rng.choice(_PLACES)
        personas = {
            who: Persona(
                name=who,
                source="the Vell chronicles",
                profile=f"{who} keeps watch at {place}.",
                scenario=f"{a} and {b} meet at {place}.",
                goals=f"{who} wants the truth.",
            )
            for who in (a, b)
        }
        entries = [
            Entry(
                ENVIRONMENT,
                Turn.from_segments([Segment("speech", f"Rain falls on {place}.")]),
                False,
            )
        ]
        for k in range(rng.randint(3, 6)):
            who = a if k % 2 == 0 else b
            entries.append(Entry(who, _synthetic_turn(rng, who, plan)))
        split = "eval" if eval_every and scene_no % eval_every == eval_every - 1 else "train"
        meta = {
            "source": "synthetic",
            "book": "synthetic",
            "scene": f"synthetic#{seed}#{scene_no}",
            "split": split,
        }
        out.extend(scene_samples(entries, personas, meta=meta, report=ConvertReport()))
        scene_no += 1
    return out[:n]


def _corpus(extra: Iterable[str] = ()) -> list[str]:
    from her_sdk.format import render_chatml

    texts = list(extra)
    for s in synthetic_samples(48, seed=123):
        from her_sdk.format import Message

        msgs = [Message(m["role"], m["content"]) for m in s["prompt"] + s["completion"]]
        texts.append(render_chatml(msgs))
    texts.append("The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>/")
    return texts


# ---------------------------------------------------------------------------------------------
# Tokenizer and model
# ---------------------------------------------------------------------------------------------


def build_tokenizer(vocab_size: int = 512, texts: Iterable[str] = ()):
    """A byte-level BPE tokenizer trained in well under a second, with ChatML specials."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        raise MissingDependencyError("transformers", "train") from None

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(
    output_dir: str | Path,
    *,
    arch: str = "qwen3",
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    texts: Iterable[str] = (),
    **config_overrides: Any,
) -> Path:
    """Build and save a random-weight causal LM + tokenizer under `output_dir`; return the path.

    Reuses `output_dir` when it already holds a model built with the same settings.
    """
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        raise MissingDependencyError("torch and transformers", "train") from None

    out = Path(output_dir)
    spec = {
        "arch": arch,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "seed": seed,
        **config_overrides,
    }
    stamp = out / "tiny_spec.json"
    if stamp.exists() and not list(texts):
        try:
            if json.loads(stamp.read_text()) == spec:
                return out
        except (OSError, json.JSONDecodeError):
            pass
    tokenizer = build_tokenizer(vocab_size, texts)
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        arch,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **config_overrides,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    stamp.write_text(json.dumps(spec))
    return out
