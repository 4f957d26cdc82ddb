"""Tiny random-weight checkpoints for the export tests, built on the fly (no model hub).

One per supported architecture, with a tokenizer trained here: byte-level BPE (`tokenizers`,
Qwen2 regex, ChatML specials) for Qwen3/Qwen2, SentencePiece BPE with byte fallback
(`sentencepiece`) for Llama and Gemma3. Hidden size 256 and FFN 512 so K-quants apply.
"""

from __future__ import annotations

from pathlib import Path

from her_sdk.format import CHATML_TEMPLATE

CHATML = CHATML_TEMPLATE  # the HER contract's template (her_sdk.format)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else 'user' }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
)

QWEN2_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)


def corpus() -> list[str]:
    from her_sdk.export.verify import heldout_texts

    base = [
        "The river ran high that spring, and the mill wheel never stopped turning.",
        "Mara: <role_action>shrugs</role_action>Rules are rules, friend.",
        "<system_thinking>She should deflect; she distrusts him since the ball.</system_thinking>",
        "<role_thinking>Another one with a story.</role_thinking>Papers first.",
        "===Conversation Start===\n\nTraveler: Let me through, I have papers.",
        "You are Mara from Vell. ===Mara's Profile=== Gate captain, dry-humoured.",
        "Environment: Rain hammers the gatehouse roof. The fire cracks; a dog barks outside.",
        "Forty crowns? Sit, have a drink first, the road is long. 1234567890 !?.,;:'\"()[]{}",
    ]
    return base * 20 + heldout_texts()


def bpe_tokenizer(out: Path):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(corpus(), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
    )
    tok.chat_template = CHATML
    return tok


def spm_tokenizer(out: Path, kind: str):
    import sentencepiece as spm
    from transformers import GemmaTokenizer, LlamaTokenizer

    out.mkdir(parents=True, exist_ok=True)
    text = out / "corpus.txt"
    text.write_text("\n".join(corpus()))
    prefix = out / "sp"
    controls = ["<start_of_turn>", "<end_of_turn>"] if kind == "gemma" else []
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(prefix),
        vocab_size=600,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        control_symbols=controls,
        pad_id=0 if kind == "gemma" else -1,
        unk_id=1 if kind == "gemma" else 0,
        bos_id=2 if kind == "gemma" else 1,
        eos_id=3 if kind == "gemma" else 2,
        add_dummy_prefix=kind != "gemma",
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    text.unlink()
    Path(str(prefix) + ".vocab").unlink()
    Path(str(prefix) + ".model").rename(out / "tokenizer.model")
    # transformers 5 converts a SentencePiece model only in from_pretrained (the constructor
    # with vocab_file= builds an empty tokenizer).
    if kind == "gemma":
        tok = GemmaTokenizer.from_pretrained(out)
        tok.chat_template = GEMMA_TEMPLATE
    else:
        tok = LlamaTokenizer.from_pretrained(out)
        tok.chat_template = LLAMA_TEMPLATE
    return tok, out / "tokenizer.model"


def _train(model, tok, steps: int) -> None:
    """A few optimizer steps on the corpus, so that predictions have real margins (quantized
    files are judged by top-1 agreement; a random model's argmax is a coin toss)."""
    import torch

    ids = tok("\n".join(corpus()[-40:]), return_tensors="pt")["input_ids"][0]
    seq = 128
    chunks = [ids[i : i + seq] for i in range(0, len(ids) - seq, seq // 2)]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = torch.stack([chunks[(step * 4 + j) % len(chunks)] for j in range(4)])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def build(arch: str, out: Path, *, seed: int = 0, std: float = 0.02, steps: int = 30) -> Path:
    """Write a tiny `arch` checkpoint ("qwen3", "qwen2", "llama", "gemma3") into `out`."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    sp_model = None
    if arch in ("qwen3", "qwen2"):
        tok = bpe_tokenizer(out)
    else:
        tok, sp_model = spm_tokenizer(out / "_sp", "gemma" if arch == "gemma3" else "llama")
    common = dict(
        vocab_size=len(tok),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=std,
        rms_norm_eps=1e-6,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if arch == "qwen3":
        from transformers import Qwen3Config

        cfg = Qwen3Config(head_dim=64, tie_word_embeddings=True, **common)
    elif arch == "qwen2":
        from transformers import Qwen2Config

        cfg = Qwen2Config(tie_word_embeddings=False, **common)
    elif arch == "llama":
        from transformers import LlamaConfig

        cfg = LlamaConfig(tie_word_embeddings=False, **common)
    elif arch == "gemma3":
        from transformers import Gemma3TextConfig

        cfg = Gemma3TextConfig(
            head_dim=64,
            query_pre_attn_scalar=64,
            sliding_window=32,
            **common,
        )
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                # Random norm weights exercise Gemma's (1 + w) convention.
                p.add_(torch.randn_like(p) * 0.1)
            if name.endswith("bias"):
                p.normal_(0, std)
    _train(model, tok, steps)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if sp_model is not None:
        shutil.copy(sp_model, out / "tokenizer.model")
        shutil.rmtree(sp_model.parent)
    return out
