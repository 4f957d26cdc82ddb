"""The backend interface itself: capabilities, TextStream, the shared stop-string scan, and the
model-file checks every loader makes (HER format version). No engine is needed here."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from her_sdk import (
    Backend,
    BackendSpec,
    CancelToken,
    ConfigError,
    InvalidModelError,
    MockBackend,
    ModelNotFoundError,
    Sampling,
    backend_from_spec,
    load_model,
    parse_backend_spec,
)
from her_sdk._backends._base import StopScanner, TextStream, cut_at_stop
from her_sdk._backends._onnx import OnnxBackend
from her_sdk._backends._openai import OpenAIBackend
from her_sdk._gguf import read_gguf_info
from her_sdk.format import CHATML_STOP, FORMAT_VERSION_KEY, HER_FORMAT_VERSION

# -- capabilities ---------------------------------------------------------------------------------


def test_capabilities_are_declared_on_the_interface():
    assert Backend.supports_grammar is True and Backend.prefills is True
    mock = MockBackend(["x"])
    assert mock.supports_grammar is False and mock.prefills is False
    assert OnnxBackend.supports_grammar is False and OnnxBackend.prefills is True
    assert OpenAIBackend("http://127.0.0.1:1/v1").supports_grammar is True
    assert OpenAIBackend("http://127.0.0.1:1/v1", grammar_field=None).supports_grammar is False


def test_scoring_and_priority_are_declared_not_inferred():
    mock = MockBackend(["x"])
    assert Backend.supports_logprobs is False and Backend.schedules is False
    with pytest.raises(ConfigError, match="supports_logprobs"):
        mock.logprobs("prompt", "continuation")
    # every backend takes a turn's priority; only a scheduling engine acts on it
    assert "".join(mock.stream("p", priority="player")) == "x"


# -- backend specs --------------------------------------------------------------------------------


def test_backend_spec_grammar_reads_without_loading():
    assert parse_backend_spec(None) == BackendSpec("default")
    assert parse_backend_spec("default") == BackendSpec("default")
    assert parse_backend_spec("mock") == BackendSpec("mock")
    assert parse_backend_spec("mock:s.json") == BackendSpec("script", "s.json")
    assert parse_backend_spec("http://h:8/v1#m") == BackendSpec("url", "http://h:8/v1", "m")
    assert parse_backend_spec("chat+https://h/v1#a/b") == BackendSpec(
        "url", "https://h/v1", "a/b", chat=True
    )
    assert parse_backend_spec("runs/judge") == BackendSpec("path", "runs/judge")
    for bad in ("chat+ftp://x", "ftp://x/v1", "mock:", "carrier-pigeon:x"):
        with pytest.raises(ConfigError):
            parse_backend_spec(bad)
    for old, new in (
        ("openai:http://h/v1#m", "http://h/v1#m"),
        ("openai-chat:http://h/v1#m", "chat+http://h/v1#m"),
        ("hf:runs/rm", "runs/rm"),
        ("gguf:", "default"),
    ):
        with pytest.warns(DeprecationWarning):
            assert parse_backend_spec(old) == parse_backend_spec(new)


def test_backend_from_spec_builds_each_kind(tmp_path, monkeypatch):
    mine = MockBackend(["x"])
    assert backend_from_spec(mine) is mine
    stand_in = backend_from_spec("mock", mock=lambda prompt: "scripted")
    assert isinstance(stand_in, MockBackend) and "".join(stand_in.stream("p")) == "scripted"
    with pytest.raises(ConfigError, match="mock:FILE"):
        backend_from_spec("mock")
    script = tmp_path / "judge.json"
    script.write_text(json.dumps({"cand_1": {"better": "cand_1"}, "*": "tie"}))
    scripted = backend_from_spec(f"mock:{script}")
    assert "".join(scripted.stream("which? cand_1")) == '{"better": "cand_1"}'
    assert "".join(scripted.stream("anything")) == "tie"
    (tmp_path / "list.json").write_text('["a", "b"]')
    cycling = backend_from_spec(f"mock:{tmp_path / 'list.json'}")
    assert ["".join(cycling.stream("p")) for _ in range(3)] == ["a", "b", "a"]
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    server = backend_from_spec("http://127.0.0.1:1/v1#her-32b")
    assert isinstance(server, OpenAIBackend) and server.mode == "completions"
    assert (server.base_url, server.model, server.api_key) == (
        "http://127.0.0.1:1/v1", "her-32b", "from-env"
    )  # fmt: skip
    assert backend_from_spec("chat+http://127.0.0.1:1/v1#m").mode == "chat"
    assert backend_from_spec("http://127.0.0.1:1/v1#m", chat=True, api_key="k").api_key == "k"
    with pytest.raises(ModelNotFoundError):
        backend_from_spec(tmp_path / "missing.gguf")


# -- TextStream -----------------------------------------------------------------------------------


def test_text_stream_built_from_a_generator_function_is_lazy_and_records_stats():
    ran = []

    def generate(stream: TextStream):
        ran.append(True)
        stream.finish_reason = "stop"
        for piece in ("a", "b"):
            stream.completion_tokens += 1
            yield piece

    stream = TextStream(generate, prompt_tokens=7)
    assert ran == [] and stream.prompt_tokens == 7  # nothing runs before iteration
    assert list(stream) == ["a", "b"]
    assert (stream.completion_tokens, stream.finish_reason) == (2, "stop")
    assert stream.first_token_s is not None and stream.total_s >= stream.first_token_s


def test_text_stream_of_plain_text_and_close():
    assert list(TextStream(["x", "y"])) == ["x", "y"]
    closed = []

    def generate(_stream):
        try:
            yield "a"
            yield "b"
        finally:
            closed.append(True)

    stream = TextStream(generate)
    assert next(stream) == "a"
    stream.close()
    assert closed == [True]


def test_mock_backend_streams_through_the_same_machinery():
    mock = MockBackend(lambda _p: "Hello there, traveler.<|im_end|>ignored")
    stream = mock.stream("prompt", stop=CHATML_STOP, sampling=Sampling(max_tokens=3))
    assert "".join(stream) == "Hello there,"
    assert (stream.finish_reason, stream.completion_tokens) == ("length", 3)
    cancel = CancelToken()
    cancel.cancel()
    stream = mock.stream("prompt", cancel=cancel)
    assert list(stream) == [] and stream.finish_reason == "cancelled"


# -- the stop-string scan -------------------------------------------------------------------------


def test_stop_scanner_holds_back_what_may_begin_a_stop_string():
    scan = StopScanner(["<|im_end|>", "\n\n"])
    assert scan.push("Hello<|im") == ("Hello", False)
    assert scan.push("_e") == ("", False)
    assert scan.push("nd|>more") == ("", True)
    assert scan.push("after") == ("", True) and scan.flush() == ""
    scan = StopScanner(["<|im_end|>"])
    assert scan.push("a <|i") == ("a ", False)
    assert scan.push("s not it") == ("<|is not it", False)
    assert scan.push(" <") == (" ", False) and scan.flush() == "<"


def test_stop_scanner_ignores_empty_stop_strings_and_finds_the_earliest():
    scan = StopScanner(["", "END", "X"])
    assert scan.push("abc") == ("abc", False)
    assert scan.push("dXeEND") == ("d", True)
    assert cut_at_stop("abc", [""]) == ("abc", False)


_STOPS = ["<|im_end|>", "</system_thinking>", "\n", "aba"]


@given(
    st.lists(st.sampled_from(["a", "b", "<", "|", "im_end", ">", "</system_", "thinking>", "\n"])),
    st.lists(st.sampled_from(_STOPS), max_size=3),
    st.lists(st.integers(min_value=0, max_value=60), max_size=8),
)
@settings(max_examples=300)
def test_stop_scanner_is_chunking_invariant(pieces, stop, cuts):
    text = "".join(pieces)
    expected, found = cut_at_stop(text, stop)
    scan = StopScanner(stop)
    out, stopped, prev = "", False, 0
    for c in [*sorted({c for c in cuts if c < len(text)}), len(text)]:
        piece, stopped = scan.push(text[prev:c])
        out += piece
        prev = c
        if stopped:
            break
    if not stopped:
        out += scan.flush()
    assert (out, stopped) == (expected, found)


# -- the HER format version in model files --------------------------------------------------------


def _gguf(path, kv: dict[str, object]) -> None:
    """A GGUF header with the given metadata (strings and uint32s) and no tensors."""
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv))
    for k, v in kv.items():
        out += struct.pack("<Q", len(k)) + k.encode()
        if isinstance(v, int):
            out += struct.pack("<II", 4, v)
        else:
            out += struct.pack("<IQ", 8, len(str(v).encode())) + str(v).encode()
    path.write_bytes(out)


def test_gguf_of_a_newer_her_format_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "future.gguf"
    _gguf(path, {"general.architecture": "qwen3", FORMAT_VERSION_KEY: HER_FORMAT_VERSION + 1})
    with pytest.raises(InvalidModelError, match=FORMAT_VERSION_KEY) as info:
        read_gguf_info(path)
    assert str(path) in str(info.value) and "upgrade" in str(info.value)
    with pytest.raises(InvalidModelError, match=FORMAT_VERSION_KEY):
        load_model(path)  # checked before the engine is even imported
    adapter = tmp_path / "future-lora.gguf"
    _gguf(adapter, {"general.type": "adapter", FORMAT_VERSION_KEY: HER_FORMAT_VERSION + 1})
    with pytest.raises(InvalidModelError, match=FORMAT_VERSION_KEY):
        read_gguf_info(adapter, kind="adapter")
    odd = tmp_path / "odd.gguf"
    _gguf(odd, {"general.architecture": "qwen3", FORMAT_VERSION_KEY: "one"})
    with pytest.raises(InvalidModelError, match=FORMAT_VERSION_KEY):
        read_gguf_info(odd)


@pytest.mark.parametrize("version", [None, HER_FORMAT_VERSION])
def test_gguf_of_this_or_no_her_format_passes_the_version_check(tmp_path, version):
    path = tmp_path / "m.gguf"
    kv: dict[str, object] = {"general.architecture": "qwen3"}
    if version is not None:
        kv[FORMAT_VERSION_KEY] = version
    _gguf(path, kv)
    with pytest.raises(InvalidModelError, match="no tensors"):  # the next check down
        read_gguf_info(path)


def test_onnx_folder_of_a_newer_her_format_is_refused(tmp_path):
    (tmp_path / "genai_config.json").write_text("{}")
    (tmp_path / "her.json").write_text(json.dumps({"format_version": HER_FORMAT_VERSION + 1}))
    with pytest.raises(InvalidModelError, match="format_version") as info:
        load_model(tmp_path)
    assert "her.json" in str(info.value) and info.value.path == str(tmp_path)
    (tmp_path / "her.json").write_text("[1, 2")
    with pytest.raises(InvalidModelError, match=r"her\.json"):
        load_model(tmp_path)


def test_export_writes_this_runtimes_format_version(tmp_path):
    """The exporter's metadata (full models and adapters alike) carries her_sdk.format's version,
    and a file written that way passes the runtime's check."""
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    from her_sdk.export.to_gguf import _her_metadata

    for kind in ("model", "adapter"):
        path = tmp_path / f"{kind}.gguf"
        w = gguf.GGUFWriter(str(path), "qwen3")
        if kind == "adapter":
            w.add_type("adapter")
        _her_metadata(w)
        w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        info = read_gguf_info(path, kind=kind)
        assert info.metadata[FORMAT_VERSION_KEY] == HER_FORMAT_VERSION
        assert info.her_format_version == HER_FORMAT_VERSION


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"cache_any_prefix": True}, "cache_any_prefix: llama.cpp settings"),
        ({"dry_multiplier": 0.8, "n_threads": 2}, "dry_multiplier, n_threads: llama.cpp"),
        ({"n_cxt": 512}, "unknown setting n_cxt for an ONNX model"),
    ],
)
def test_llama_settings_for_an_onnx_model_are_a_config_error(tmp_path, settings, named):
    """An ONNX folder given llama.cpp's settings says so before loading anything (it once
    failed with a TypeError from the backend's constructor)."""
    from her_sdk import ConfigError, load_model

    (tmp_path / "genai_config.json").write_text("{}")
    with pytest.raises(ConfigError, match=named):
        load_model(tmp_path, **settings)


def test_her_serve_refuses_llama_settings_for_an_onnx_model(tmp_path):
    """As it refuses them for a URL: an ONNX folder has no adapter, GPU layers, DRY sampler or
    prompt-cache mode to set, so `her serve` says so instead of ignoring them."""
    pytest.importorskip("pydantic")
    from her_sdk.server._settings import ServerSettings

    (tmp_path / "genai_config.json").write_text("{}")
    for extra in ({"cache_any_prefix": True}, {"dry_multiplier": 0.8}, {"adapter": "a.gguf"}):
        with pytest.raises(ValueError, match=f"{next(iter(extra))} apply to GGUF models"):
            ServerSettings(model=str(tmp_path), **extra)
    assert ServerSettings(model=str(tmp_path), n_ctx=512).n_ctx == 512
