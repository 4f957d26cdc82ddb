"""The llama.cpp backend on the real embedded model (Gemma-3-270M, Q4_K_M).

These tests run real inference (a few seconds each); they need the `llama` extra, which
`make test` installs.
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from _turns import her_shaped  # noqa: E402

from her_sdk import (  # noqa: E402
    Character,
    InvalidModelError,
    ModelNotFoundError,
    Scene,
    load_model,
)
from her_sdk._backends import _llama, _llama_engine  # noqa: E402
from her_sdk._backends._llama_sampling import make_chain  # noqa: E402
from her_sdk._model import default_model_path  # noqa: E402
from her_sdk.demo import PLAYER, build_demo_scene  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    m = load_model(n_ctx=2048, adapter=None)  # the engine on the bare base model
    yield m
    m.close()


def test_default_model_is_assembled_once_and_loads(model):
    path = default_model_path()
    assert path.exists() and path.stat().st_size > 200_000_000
    assert default_model_path() == path  # second call reuses the cache
    assert model.prompt_style == "fewshot"  # a base model without a chat template
    assert model.n_threads >= 1 and model.count_tokens("Hello there") > 1


def scene_with(model, seed=11):
    scene = build_demo_scene(model, seed=seed)
    scene.narrate("Night at the north gate. Rain.")
    scene.say(PLAYER, "Let me through, captain. I have papers from the duke.")
    return scene


def test_grammar_constrained_turns_parse_and_never_leak(model):
    for seed in range(4):
        scene = scene_with(model)
        stream = scene.stream("Mara", seed=seed, max_tokens=160)
        public = "".join(d.text for d in stream)
        reply = stream.reply
        # "blocked" is the secrets guard doing its job: which seed's sampling drifts towards
        # Mara's secret depends on the CPU's rounding, so any of these may happen here.
        assert reply.finish_reason in ("stop", "length", "plan_length", "blocked")
        complete = reply.finish_reason == "stop"
        for blocked in reply.blocked_reveals:  # the turn ended where the reveal began
            assert blocked.text.lower() not in public.lower()
            assert blocked.text.lower() not in (reply.speech + " ".join(reply.actions)).lower()
        assert reply.blocked_reveals or reply.finish_reason != "blocked"
        assert her_shaped(reply.raw, "Mara", complete=complete, plan_newlines=False), reply.raw
        assert reply.plan, reply.raw
        assert reply.speech or reply.actions or not complete, reply.raw
        for private in [reply.plan, *reply.thoughts]:
            assert private not in public
            assert private not in reply.speech and all(private not in a for a in reply.actions)
        assert "<" not in reply.speech and all("<" not in a for a in reply.actions)
        jory_prompt = scene.characters["Jory"].prompt().text
        for private in [reply.plan, *reply.thoughts]:
            assert private not in jory_prompt


def test_same_seed_same_turn_even_with_a_cold_cache(model):
    a = scene_with(model).turn("Mara", seed=3, max_tokens=60).raw
    model.reset()
    b = scene_with(model).turn("Mara", seed=3, max_tokens=60).raw
    assert a == b


def test_reloaded_scene_continues_exactly(model, tmp_path):
    scene = scene_with(model, seed=21)
    scene.turn("Mara", max_tokens=80)
    scene.turn("Jory", max_tokens=80)
    scene.save(str(tmp_path / "s.json"))
    expected = scene.turn("Mara", max_tokens=80).raw
    loaded = Scene.load(str(tmp_path / "s.json"), model=model)
    model.reset()
    assert loaded.turn("Mara", max_tokens=80).raw == expected


def test_cancel_stops_real_generation(model):
    scene = scene_with(model)
    stream = scene.stream("Mara", private=True, max_tokens=200)
    for n, _ in enumerate(stream):
        if n == 2:
            stream.cancel()
    assert stream.reply.finish_reason == "cancelled"
    assert stream.reply.completion_tokens < 12


def test_turn_without_plan_starts_with_speech_or_action(model):
    c = Character(name="Mara", profile="Gate captain.", model=model, plan=False)
    c.hear("Traveler", "Open the gate.")
    r = c.reply(seed=1, max_tokens=60)
    assert r.plan == "" and r.raw.startswith("Mara: ")
    assert r.first_speech_s is None or r.first_speech_s < r.total_s + 1e-6


def test_actions_are_restricted_to_the_legal_set(model):
    legal = ["opens the gate", "keeps the gate shut"]
    c = Character(name="Mara", profile="Gate captain.", model=model, allowed_actions=legal)
    c.hear("Traveler", "Open the gate!", action="bangs on the gate")
    for seed in range(3):
        r = c.reply(seed=seed, max_tokens=160)
        assert set(r.actions) <= set(legal), r.raw


def test_amx_cpus_load_without_weight_repacking(monkeypatch):
    monkeypatch.setattr(_llama, "cpu_has_amx", lambda: True)
    m = load_model(n_ctx=256, adapter=None)
    try:
        assert m.use_extra_bufts is False
        c = Character(name="Mara", model=m, grammar=False)
        c.hear("P", "Hi")
        c.reply(seed=0, max_tokens=8)  # batched prompt decode: the path that crashed
    finally:
        m.close()


def test_amx_check_off_linux_asks_the_engine(monkeypatch, tmp_path):
    # Without /proc/cpuinfo (Windows, macOS) the engine's own run-time check decides, not the OS.
    bufts = _llama_engine._engine_weight_buffers()
    assert bufts is not None, "this llama.cpp build cannot report its weight buffer types"
    with open("/proc/cpuinfo") as f:
        flags = next((line for line in f if line.startswith("flags")), "")
    if "amx_int8" not in flags:
        assert "AMX" not in bufts  # the engine never offers AMX on a CPU without it
    monkeypatch.setattr(_llama_engine, "_CPUINFO", str(tmp_path / "absent"))
    assert _llama_engine.cpu_has_amx() == ("AMX" in bufts)
    monkeypatch.setattr(_llama_engine, "_engine_weight_buffers", lambda: None)
    assert _llama_engine.cpu_has_amx() is True  # a build that cannot be asked: no repacking


# -- bad model files: clear errors naming the file, never a crash ----------------------------


def _load_in_subprocess(path) -> subprocess.CompletedProcess:
    code = (
        "import sys\nfrom her_sdk import load_model, HerError\n"
        f"try:\n    load_model({str(path)!r})\n"
        "except HerError as e:\n    print(type(e).__name__, e); sys.exit(3)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


def _gguf_header(kv: dict[str, str], n_tensors: int = 0) -> bytes:
    out = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kv))
    for k, v in kv.items():
        kb, vb = k.encode(), v.encode()
        out += struct.pack("<Q", len(kb)) + kb + struct.pack("<I", 8)
        out += struct.pack("<Q", len(vb)) + vb
    return out


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"nope\.gguf"):
        load_model(tmp_path / "nope.gguf")


@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        (
            "notes.gguf",
            lambda src: b"these are not the weights you are looking for" * 10,
            "bad magic",
        ),
        ("tiny.gguf", lambda src: b"GGUF", "bytes"),
        (
            "adapter.gguf",
            lambda src: _gguf_header({"general.type": "adapter", "general.architecture": "llama"}),
            "not a model",
        ),
        ("empty.gguf", lambda src: _gguf_header({"general.architecture": "llama"}), "no tensors"),
        ("truncated.gguf", lambda src: src.read_bytes()[:30_000_000], "truncated"),
    ],
)
def test_bad_model_files_give_clear_errors(tmp_path, name, make, match):
    path = tmp_path / name
    path.write_bytes(make(default_model_path()))
    with pytest.raises(InvalidModelError, match=match) as info:
        load_model(path)
    assert str(path) in str(info.value) and info.value.path == str(path)


def test_corrupted_model_never_crashes_the_process(tmp_path):
    data = bytearray(default_model_path().read_bytes())
    # Scribble over the tensor table and the start of the weights.
    for off in range(6_000_000, 6_200_000, 97):
        data[off] = (data[off] * 31 + 7) % 256
    for off in range(2_000, 400_000, 13):
        data[off] ^= 0x5A
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(bytes(data))
    res = _load_in_subprocess(path)
    assert res.returncode in (0, 3), (res.returncode, res.stderr[-2000:])
    if res.returncode == 3:
        assert "corrupt.gguf" in res.stdout


def test_lora_must_be_an_adapter(tmp_path):
    with pytest.raises(InvalidModelError, match=r"not a adapter"):
        load_model(lora=default_model_path(), n_ctx=256)


def test_each_character_resumes_from_its_own_cached_state(model):
    model.reset()
    scene = scene_with(model)
    mara, jory = (scene.characters[n].prompt().text for n in ("Mara", "Jory"))
    sampling = __import__("her_sdk").Sampling(max_tokens=4, seed=1)
    first = model.stream(mara, sampling=sampling)
    a = "".join(first)
    list(model.stream(jory, sampling=sampling))  # another character takes the model
    again = model.stream(mara, sampling=sampling)
    b = "".join(again)
    n = model.count_tokens(mara)
    assert first.cached_tokens == 0
    assert again.cached_tokens >= n - 2 * model.n_batch  # Mara's persona was not re-read
    assert a == b  # and the restored state computes exactly what a cold one did


def test_invalid_grammar_is_a_config_error(model):
    from her_sdk import ConfigError, Sampling

    with pytest.raises(ConfigError, match="GBNF"):
        list(model.stream("hello", grammar="root ::= ( [a-", sampling=Sampling(max_tokens=2)))
    assert "".join(model.stream("The gate", sampling=Sampling(max_tokens=2, seed=1)))


def _full_penalty_chain(lib, s):
    """The textbook chain: the repeat penalty over the whole vocabulary, then the cuts."""
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    add = lib.llama_sampler_chain_add
    add(chain, lib.llama_sampler_init_penalties(64, 64, s.repeat_penalty, 0.0, 0.0))
    if s.temperature == 0:
        add(chain, lib.llama_sampler_init_greedy())
        return chain
    add(chain, lib.llama_sampler_init_top_k(s.top_k))
    add(chain, lib.llama_sampler_init_top_p(s.top_p, 1))
    add(chain, lib.llama_sampler_init_min_p(s.min_p, 1))
    add(chain, lib.llama_sampler_init_temp(s.temperature))
    add(chain, lib.llama_sampler_init_dist(s.seed))
    return chain


@pytest.mark.parametrize(
    "settings",
    [dict(seed=5), dict(seed=6, temperature=1.5, top_k=8), dict(temperature=0, seed=0)],
    ids=["default", "hot", "greedy"],
)
def test_repeat_penalty_shortcut_picks_what_the_full_pass_picks(model, settings):
    from her_sdk import Sampling

    s = Sampling(repeat_penalty=1.8, **settings)  # strong, so it changes picks
    lib = model._lib
    ours, ref = make_chain(lib, s), _full_penalty_chain(lib, s)
    # Repetitive text, so that many candidates near the top are penalised.
    tokens = model.tokenize("the gate the gate the gate is shut, the gate is shut tonight " * 3)
    picks = []
    with model._ctx_lock:
        seq = 0
        lib.llama_memory_seq_rm(model._mem, seq, 0, -1)
        model._seqs[seq].tokens.clear()
        model._seqs[seq].canonical = 0
        assert model._decode([(t, p, seq, True) for p, t in enumerate(tokens)]) == 0
        for chain in (ours, ref):
            for t in tokens[-64:]:
                lib.llama_sampler_accept(chain, t)
        for row in range(len(tokens) - 64, len(tokens)):
            a = lib.llama_sampler_sample(ours, model._ctx, row)
            b = lib.llama_sampler_sample(ref, model._ctx, row)
            picks.append((a, b))
        lib.llama_memory_seq_rm(model._mem, seq, 0, -1)
    lib.llama_sampler_free(ours)
    lib.llama_sampler_free(ref)
    assert all(a == b for a, b in picks), picks


def test_game_shaped_turns_are_written_within_the_shape(model):
    # The grammar makes the model write within the shape, so the guard that stops engines
    # without one never has to cut: the raw text parses to the very turn that was said.
    from her_sdk import TurnShape
    from her_sdk.format import QUOTE_MARKS, parse_turn

    for seed in range(3):
        scene = scene_with(model)
        # (a plan, a thought, an action and three sentences fit 320 tokens; "length" would be
        # a budget end, legal on any CPU: the shape is checked on what was said either way)
        reply = scene.turn("Mara", seed=seed, max_tokens=320, shape=TurnShape.GAME)
        assert reply.finish_reason in ("stop", "blocked", "length", "plan_length"), reply.raw
        raw = parse_turn(reply.raw, "Mara")
        unquoted = "".join(ch for ch in raw.speech if ch not in QUOTE_MARKS).strip()
        if reply.finish_reason == "stop":  # (the grammar lets a speech open with a quote)
            assert (unquoted, raw.actions, raw.thoughts) == (
                reply.speech,
                reply.actions,
                reply.thoughts,
            ), reply.raw
        assert len(reply.actions) <= 1 and len(reply.thoughts) <= 1
        assert len(reply.speech) <= TurnShape.GAME.max_speech_chars
        assert len(re.findall(r"[.!?]+(?=\s+\S)", reply.speech)) <= 2, reply.speech
        assert not set(reply.speech) & set(QUOTE_MARKS)


def test_the_largest_shape_builds_a_grammar_the_engine_takes(model):
    from her_sdk import TurnShape

    most = {f: 8000 if f.endswith("_chars") else 16 for f in TurnShape.__struct_fields__}
    most.update(quotes=True, line_breaks=True, max_actions=8, max_thoughts=8, max_speeches=8)
    scene = scene_with(model)
    reply = scene.turn("Mara", seed=1, max_tokens=8, shape=TurnShape(**most))
    assert reply.finish_reason in ("length", "plan_length")  # 8 tokens: inside the plan
