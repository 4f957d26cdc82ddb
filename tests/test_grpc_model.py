"""One end-to-end NPC turn over gRPC on the real embedded model (Gemma-3-270M via llama.cpp)."""

from __future__ import annotations

import pytest
from _grpc_util import running

from her_sdk.client import Client


@pytest.mark.slow
def test_real_model_turn_end_to_end():
    pytest.importorskip("llama_cpp", reason="needs the llama extra")
    from her_sdk import load_model

    model = load_model(n_threads=2, n_ctx=2048)
    with running(model, expose_thoughts=True) as server, Client(server.target, timeout=300) as c:
        mara = c.create_character(
            "Mara",
            profile="Captain of the north gate of Vell. Stern, speaks briefly.",
            goals="Keep the gate shut until dawn.",
            max_tokens=64,
            seed=1,
        )
        scene = c.create_scene([mara], players="Traveler", seed=7)
        scene.say("Traveler", "Let me through, captain. I have papers.", "holds up a letter")
        stream = scene.stream("Mara", private=True)
        deltas = list(stream)
        reply = stream.reply
    assert reply is not None and reply.character == "Mara"
    assert 0 < reply.completion_tokens <= 64 and reply.prompt_tokens > 0
    assert reply.finish_reason in ("stop", "length", "plan_length")
    assert deltas and reply.first_token_s is not None
    # What streamed is what the summary holds: the speech segments, in order, joined by a
    # space (segments may abut in the raw text: `papers.<role_action>…</role_action>"The`).
    segments: dict[int, str] = {}
    for d in deltas:
        if d.channel == "speech":
            segments[d.segment] = segments.get(d.segment, "") + d.text
    streamed = " ".join(t.strip() for _, t in sorted(segments.items()) if t.strip())
    assert " ".join(streamed.split()) == " ".join(reply.speech.split())
