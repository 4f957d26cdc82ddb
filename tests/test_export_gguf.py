"""GGUF export: tiny trained-for-30-steps checkpoints of every supported architecture (built in
`_export_tiny`), exported, loaded back in llama.cpp and compared with transformers."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from _export_tiny import build
from her_sdk.export.to_gguf import export_gguf, export_gguf_lora
from her_sdk.export.verify import VerificationError, verify_gguf

from her_sdk import Character, Sampling, load_model
from her_sdk._gguf import read_gguf_info

ARCHS = ["qwen3", "qwen2", "llama", "gemma3"]  # BPE, BPE, SentencePiece, SentencePiece


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    cache: dict = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = build(arch, root / arch)
        return cache[arch]

    return get


def character_turn(backend) -> None:
    npc = Character(
        name="Mara",
        model=backend,
        profile="Gate captain of Vell.",
        sampling=Sampling(max_tokens=12, temperature=0.0),
    )
    npc.hear("Traveler", "Let me through.")
    reply = npc.reply()
    assert reply.completion_tokens > 0
    assert reply.finish_reason in ("stop", "length", "plan_length")  # a random model rambles


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_matches_transformers(models, arch, tmp_path):
    out = tmp_path / f"{arch}.f32.gguf"
    s = export_gguf(models(arch), out, outtype="f32")
    m = s["verify"]["metrics"]
    assert m["tokenizer_agreement"] == 1.0
    assert m["max_logit_diff"] < 1e-3, m
    assert m["top1_agreement"] == 1.0
    assert abs(m["ppl_ratio"] - 1) < 1e-4
    report = json.loads((tmp_path / f"{arch}.f32.verify.json").read_text())
    assert report["ok"] and report["metrics"] == m
    assert "| max logit diff |" in (tmp_path / f"{arch}.f32.verify.md").read_text()
    info = read_gguf_info(out)
    assert info.architecture == arch
    assert info.metadata["her.format_version"] == 1 and info.metadata["her.dual_layer"] is True
    assert info.chat_template
    with load_model(out, n_ctx=512, n_threads=2) as backend:
        assert backend.prompt_style == "chatml"  # her.format_version marks a HER model
        character_turn(backend)


@pytest.mark.parametrize(("arch", "qtype"), [("qwen3", "q4_k_m"), ("gemma3", "q8_0")])
def test_quantized_keeps_top1(models, arch, qtype, tmp_path):
    out = tmp_path / f"{arch}.{qtype}.gguf"
    s = export_gguf(models(arch), out, outtype=qtype)
    m = s["verify"]["metrics"]
    assert m["top1_agreement"] >= 0.9, m
    assert read_gguf_info(out).metadata["general.file_type"] != 0
    with load_model(out, n_ctx=512, n_threads=2) as backend:
        character_turn(backend)


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m"])
def test_every_type_qwen3(models, qtype, tmp_path):
    out = tmp_path / f"m.{qtype}.gguf"
    s = export_gguf(models("qwen3"), out, outtype=qtype)
    assert s["verify"]["ok"]
    assert s["verify"]["metrics"]["top1_agreement"] >= 0.8


def test_f32_smaller_types_are_smaller(models, tmp_path):
    sizes = {}
    for t in ("f16", "q4_k_m"):
        sizes[t] = export_gguf(models("qwen3"), tmp_path / f"{t}.gguf", outtype=t, verify=False)[
            "size_bytes"
        ]
    assert sizes["q4_k_m"] < 0.5 * sizes["f16"]


def test_verification_catches_a_wrong_file(models, tmp_path):
    # The file of one model checked against another model must fail, with the report kept.
    out = tmp_path / "a.gguf"
    export_gguf(models("qwen3"), out, outtype="f32", verify=False)
    from her_sdk.export._source import load_source

    other = build("qwen3", tmp_path / "other", seed=1, steps=0)
    model, tok = load_source(other)
    with pytest.raises(VerificationError, match="max logit diff"):
        verify_gguf(out, model, tok, outtype="f32")
    assert not json.loads((tmp_path / "a.verify.json").read_text())["ok"]


def _lora(base, out, seed=0):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
    )
    peft_model = get_peft_model(model, cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:  # B starts at zero: make the adapter do something
                p.normal_(0, 0.05)
    peft_model.save_pretrained(out)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen3"])  # llama: q/k permutation applies to B
def test_lora_adapter_matches_merged(models, arch, tmp_path):
    base = models(arch)
    adapter = _lora(base, tmp_path / "adapter")
    base_gguf = tmp_path / "base.f32.gguf"
    export_gguf(base, base_gguf, outtype="f32", verify=False)
    out = tmp_path / "adapter.gguf"
    s = export_gguf_lora(adapter, base, out, base_gguf=base_gguf)
    m = s["verify"]["metrics"]
    assert m["max_logit_diff"] < 2e-3 and m["top1_agreement"] == 1.0, m
    assert read_gguf_info(out, kind="adapter").metadata["adapter.type"] == "lora"
    # the adapter really changes the model: the base alone does not match the merged model
    from her_sdk.export._source import load_source

    merged, tok = load_source(base, adapter=adapter)
    with pytest.raises(VerificationError):
        verify_gguf(base_gguf, merged, tok, outtype="f32", report_path=tmp_path / "x.gguf")
    with load_model(base_gguf, lora=out, n_ctx=512, n_threads=2) as backend:
        character_turn(backend)


def test_lora_merge_flag(models, tmp_path):
    base = models("qwen3")
    adapter = _lora(base, tmp_path / "adapter", seed=3)
    s = export_gguf(base, tmp_path / "merged.q8_0.gguf", outtype="q8_0", lora=adapter)
    assert s["verify"]["ok"]


def test_cli(models, tmp_path):
    from typer.testing import CliRunner

    from her_sdk.cli import app

    runner = CliRunner()
    out = tmp_path / "cli.q8_0.gguf"
    res = runner.invoke(
        app, ["export", "gguf", str(models("qwen3")), "--out", str(out), "--type", "q8_0"]
    )
    assert res.exit_code == 0, res.output
    assert out.is_file() and (tmp_path / "cli.q8_0.verify.md").is_file()
    res = runner.invoke(app, ["export", "gguf", str(tmp_path), "--out", str(out)])
    assert res.exit_code == 1 and "config.json" in res.output
    # an impossible tolerance makes the verification fail: exit code 2, with the reason
    res = runner.invoke(
        app,
        [
            "export",
            "gguf",
            str(models("qwen3")),
            "--out",
            str(tmp_path / "f.gguf"),
            "--type",
            "f32",
            "--tolerance",
            "0",
        ],
    )
    assert res.exit_code == 2 and "max logit diff" in res.output


def test_a_her_release_export_runs_with_hers_prompt_and_plans(models, tmp_path):
    """`her export gguf --prompt-style her` (a released HER checkpoint, here a tiny random
    Qwen3 with ChatML) writes how to run it into the file: loaded with no setting, it gets
    HER's prompt without a prefill, HER's decoding and a grammar whose caps hold a HER plan:
    every token of a scripted 2,000-character multi-line plan and the speech after it passes
    llama.cpp's own grammar sampler, where the project's own caps stop it."""
    from her_sdk.export.to_gguf import her_model_metadata
    from test_her_style import MARA, TURN

    from her_sdk import TurnShape
    from her_sdk._backends._base import HER_SAMPLING
    from her_sdk._backends._llama_sampling import grammar_check
    from her_sdk.format import build_grammar

    out = tmp_path / "her-release.gguf"
    meta = her_model_metadata("her")
    export_gguf(models("qwen3"), out, outtype="f32", verify=False, her_meta=meta)
    backend = load_model(out, n_ctx=2048)
    assert backend.prompt_style == "her"
    assert backend.default_shape() == TurnShape.FREE  # caps from the file: 3000-char plans
    mara = Character(persona=MARA, model=backend)
    assert mara.sampling == HER_SAMPLING
    mara.hear("Traveler", "Open up, captain.")
    assert mara.prompt().text.endswith("<|im_start|>assistant\n")  # no prefill

    lib, vocab = backend._lib, backend._vocab  # the engine's own grammar check (tests only)
    tokens = backend.tokenize(TURN, add_special=False)
    eos = lib.llama_vocab_eos(vocab)

    def admitted(shape) -> int:
        """How many tokens of the scripted turn the grammar of `shape` lets through."""
        gbnf = build_grammar("Mara", prefilled=False, end="", shape=shape)
        grammar = lib.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        allows = grammar_check(lib, grammar)
        try:
            for n, token in enumerate(tokens):
                if not allows(token):
                    return n
                lib.llama_sampler_accept(grammar, token)
            assert allows(eos)  # and the turn may end there
            return len(tokens)
        finally:
            lib.llama_sampler_free(grammar)

    assert admitted(backend.default_shape()) == len(tokens)
    assert admitted(TurnShape()) < len(tokens) // 10  # the first line break of the plan
    reply = Character(persona=MARA, model=backend, sampling=Sampling(max_tokens=24)).reply()
    assert reply.completion_tokens > 0  # the real engine runs the style end to end
    backend.close()


def test_a_her_release_plans_at_length_on_the_engine(models, tmp_path, monkeypatch, caplog):
    """The scripted 2,000-character multi-line plan and its speech, decoded by llama.cpp on the
    tiny HER-release export: with a budget that holds it, the reply parses into that plan and
    that speech; with 320 tokens, it ends inside the plan, says nothing, and warns about the
    budget. The engine is scripted by a grammar that admits only the scripted turn (the
    project's own grammar admitting it is checked above); every tokenization of the plan takes
    more than 320 tokens, checked here, so the outcome cannot depend on the random weights."""
    import logging

    from her_sdk.export.to_gguf import her_model_metadata
    from test_her_style import MARA, PLAN, TURN
    from transformers import AutoTokenizer

    out = tmp_path / "her-release.gguf"
    export_gguf(
        models("qwen3"), out, outtype="f32", verify=False, her_meta=her_model_metadata("her")
    )
    tok = AutoTokenizer.from_pretrained(models("qwen3"))
    pieces = {tok.decode([i]) for i in range(len(tok))}
    planned = "<system_thinking>" + PLAN + "</system_thinking>"
    fewest = [0] + [len(planned) + 1] * len(planned)  # fewest tokens that spell each prefix
    for end in range(1, len(planned) + 1):
        for start in range(max(0, end - 32), end):
            if planned[start:end] in pieces:
                fewest[end] = min(fewest[end], fewest[start] + 1)
    assert fewest[-1] > 320

    escaped = TURN.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    monkeypatch.setattr("her_sdk._character.build_grammar", lambda *a, **k: f'root ::= "{escaped}"')
    backend = load_model(out, n_ctx=4096)
    try:
        whole = Character(
            persona=MARA, model=backend, sampling=Sampling(max_tokens=3000, seed=1)
        ).reply()
        assert whole.finish_reason == "stop"
        assert whole.plan == PLAN and whole.speech == "Papers can be forged.\nShow me the seal."
        short = Character(persona=MARA, model=backend, sampling=Sampling(max_tokens=320, seed=1))
        with caplog.at_level(logging.WARNING, logger="her_sdk"):
            cut = short.reply()
        assert cut.finish_reason == "plan_length" and cut.completion_tokens == 320
        assert cut.speech == "" and cut.actions == []
        assert "max_tokens=320" in caplog.text and "Raise max_tokens" in caplog.text
    finally:
        backend.close()
