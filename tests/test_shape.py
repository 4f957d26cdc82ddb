"""TurnShape: the grammar writes within it, ShapeGuard stops a streamed turn at its edge, and a
character keeps its shape through saves (the engine-level checks are in test_llama)."""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from her_sdk import Character, ConfigError, MockBackend, Scene, StateError, TurnShape
from her_sdk.format import QUOTE_MARKS, Delta, ShapeGuard, build_grammar, parse_turn

LONG = (
    "<system_thinking>I will not open the gate tonight, whatever he says.</system_thinking>"
    "Mara: <role_action>folds her arms</role_action><role_action>steps closer</role_action>"
    '"No." She shakes her head. "The duke sends no one at night. Go home. Come back at dawn, '
    'friend, and bring your papers."<role_thinking>He is lying.</role_thinking>'
    "<role_action>turns away</role_action>"
)


def guarded(shape: TurnShape, deltas: list[Delta]) -> tuple[list[Delta], bool]:
    g = ShapeGuard(shape)
    out = list(g.filter(deltas))
    return out, g.done


def sentences(text: str) -> int:
    return len(re.findall(r"[^\s.!?][^.!?]*(?:[.!?]+|$)", text.strip()))


# -- the shape itself -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_segments": 0},
        {"max_actions": -1},
        {"max_speech_chars": 1.5},
        {"max_sentences": 0},
        {"max_plan_chars": True},
        {"max_sentences": 4, "max_speech_chars": 20},
    ],
)
def test_bad_shapes_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match="TurnShape"):
        TurnShape(**kwargs)


def test_presets():
    game = TurnShape.GAME
    assert (game.max_actions, game.max_speeches, game.max_sentences, game.quotes) == (
        1,
        1,
        3,
        False,
    )
    assert TurnShape.FREE.max_plan_chars > TurnShape().max_plan_chars
    assert TurnShape() == TurnShape(max_segments=6)  # the runtime's caps before shapes existed


def test_default_shape_keeps_the_grammar_it_replaced():
    assert build_grammar("Mara", shape=TurnShape()) == build_grammar("Mara")


# -- ShapeGuard ---------------------------------------------------------------------------------


def test_guard_ends_the_turn_at_a_section_too_many():
    deltas = [
        Delta("plan", "Hold.", 0),
        Delta("action", "folds her arms", 1),
        Delta("action", "steps closer", 2),
        Delta("speech", "No.", 3),
    ]
    out, done = guarded(TurnShape.GAME, deltas)
    assert [d.text for d in out] == ["Hold.", "folds her arms"] and done


def test_guard_counts_sentences_across_deltas_and_drops_quotes():
    pieces = [' "No', '." She', " sha", "kes her head! Go", " home? Now."]
    deltas = [Delta("speech", p, 1) for p in pieces]
    out, done = guarded(TurnShape.GAME, deltas)
    said = "".join(d.text for d in out)
    assert said == " No. She shakes her head! Go home?" and done
    assert not set(said) & set(QUOTE_MARKS)


def test_guard_cuts_a_long_speech_and_ends_the_turn():
    shape = TurnShape(max_speech_chars=20)
    out, done = guarded(shape, [Delta("speech", "word " * 10, 1), Delta("action", "x", 2)])
    assert len("".join(d.text for d in out)) <= 20 and done


def test_guard_cuts_a_long_plan_but_the_turn_goes_on():
    shape = TurnShape(max_plan_chars=10)
    deltas = [Delta("plan", "a" * 8, 0), Delta("plan", "b" * 8, 0), Delta("speech", "Hi.", 1)]
    out, done = guarded(shape, deltas)
    assert "".join(d.text for d in out if d.channel == "plan") == "a" * 8 + "bb"
    assert out[-1].text == "Hi." and not done


def test_apostrophes_stay():
    out, _ = guarded(TurnShape.GAME, [Delta("speech", "Don't. The captain's orders.", 1)])
    assert out[0].text == "Don't. The captain's orders."


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["thought", "action", "speech"]),
            st.text(alphabet="ab .!?\"'\u201c", min_size=1, max_size=40),
        ),
        max_size=8,
    ),
    st.integers(1, 6),
    st.integers(1, 3),
    st.integers(1, 4),
    st.booleans(),
)
def test_guard_output_is_always_within_the_shape(sections, cut, segments, n_sentences, quotes):
    shape = TurnShape(
        max_segments=segments,
        max_actions=1,
        max_speeches=2,
        max_sentences=n_sentences,
        max_speech_chars=40,
        max_action_chars=12,
        quotes=quotes,
    )
    deltas = []
    for i, (channel, text) in enumerate(sections):
        # each section arrives in pieces of `cut` characters
        deltas += [Delta(channel, text[j : j + cut], i + 1) for j in range(0, len(text), cut)]
    out, _ = guarded(shape, deltas)
    texts: dict[int, tuple[str, str]] = {}
    for d in out:
        channel, text = texts.get(d.segment, (d.channel, ""))
        texts[d.segment] = (channel, text + d.text)
    kinds = [c for c, _ in texts.values()]
    assert len(set(d.segment for d in out)) <= segments
    assert kinds.count("action") <= 1 and kinds.count("speech") <= 2
    for channel, text in texts.values():
        assert len(text) <= shape.limit(channel)  # type: ignore[arg-type]
        if channel == "speech":
            assert sentences(text) <= n_sentences, text
            assert quotes or not set(text) & set(QUOTE_MARKS)


# -- a character with a shape, on an engine without a grammar ------------------------------------


def test_a_character_keeps_its_shape_without_a_grammar():
    mara = Character(name="Mara", model=MockBackend([LONG, LONG]), shape=TurnShape.GAME)
    mara.hear("Traveler", "Let me through.")
    reply = mara.reply()
    assert reply.finish_reason == "stop"
    assert reply.actions == ["folds her arms"] and reply.speech == ""
    # per turn: another shape for this turn only
    reply = mara.reply(shape=TurnShape(max_actions=2, max_sentences=2, quotes=False))
    assert reply.actions == ["folds her arms", "steps closer"]
    assert reply.speech == "No. She shakes her head." and reply.thoughts == []
    assert mara.shape is TurnShape.GAME


def test_what_the_shape_cut_is_not_remembered_nor_published():
    scene = Scene(seed=1)
    scene.add_player("Traveler")
    mara = scene.add(Character(name="Mara", model=MockBackend([LONG]), shape=TurnShape.GAME))
    jory = scene.add(Character(name="Jory", model=MockBackend(["Jory: Hm."])))
    scene.say("Traveler", "Let me through.")
    scene.turn("Mara")
    assert "steps closer" not in jory.prompt().text
    assert "steps closer" not in mara.prompt().text
    assert "folds her arms" in jory.prompt().text


def test_no_shape_means_no_limit_without_a_grammar():
    mara = Character(name="Mara", model=MockBackend([LONG]))
    reply = mara.reply()
    assert reply.actions == ["folds her arms", "steps closer", "turns away"]
    assert reply.speech == parse_turn(LONG, "Mara").speech


def test_the_model_may_bring_its_own_shape():
    backend = MockBackend([LONG, LONG])
    backend.turn_shape = TurnShape.GAME
    assert Character(name="Mara", model=backend).reply().actions == ["folds her arms"]
    free = Character(name="Mara", model=backend, shape=TurnShape.FREE).reply()
    assert len(free.actions) == 3


def test_bad_shape_arguments():
    with pytest.raises(ConfigError, match="TurnShape"):
        Character(name="Mara", model=MockBackend(["x"]), shape={"max_actions": 1})  # type: ignore[arg-type]
    mara = Character(name="Mara", model=MockBackend(["x"]))
    with pytest.raises(ConfigError, match="TurnShape"):
        mara.stream(shape="game")  # type: ignore[arg-type]


def test_the_shape_is_saved_and_old_saves_load(tmp_path):
    mara = Character(name="Mara", model=MockBackend([LONG]), shape=TurnShape.GAME)
    data = mara.dumps()
    assert Character.loads(data).shape == TurnShape.GAME
    plain = Character(name="Mara").dumps()
    assert b"shape" not in plain  # a character without one saves as it always did
    assert Character.loads(plain).shape is None
    doc = msgspec.json.decode(data)
    doc["character"]["shape"]["max_actions"] = 0
    with pytest.raises(StateError):
        Character.loads(msgspec.json.encode(doc))


def test_presets_by_name():
    assert TurnShape.preset("game") is TurnShape.GAME
    assert TurnShape.preset("free") is TurnShape.FREE
    assert TurnShape.preset("default") == TurnShape()
    with pytest.raises(ConfigError, match="unknown turn shape"):
        TurnShape.preset("tiny")


def test_a_backend_spec_and_the_server_settings_set_the_models_shape(tmp_path):
    import json

    from her_sdk import backend_from_spec
    from her_sdk.server._backend import backend_from_settings

    script = tmp_path / "m.json"
    script.write_text(json.dumps([LONG]))
    backend = backend_from_spec(f"mock:{script}", turn_shape=TurnShape.GAME)
    assert backend.turn_shape is TurnShape.GAME
    assert Character(name="Mara", model=backend).reply().actions == ["folds her arms"]
    pytest.importorskip("pydantic")
    from her_sdk.server._settings import ServerSettings

    served = backend_from_settings(ServerSettings(model=f"mock:{script}", turn_shape="free"))
    assert served.turn_shape is TurnShape.FREE
    with pytest.raises(ValueError, match="turn_shape"):
        ServerSettings(turn_shape="tiny")


def test_a_turn_that_ends_inside_its_plan_says_so(caplog):
    # A HER model plans at length: a budget that ends inside the plan leaves nothing said, and
    # the reply and the log say so (never a silent empty turn).
    long_plan = "<system_thinking>" + "I weigh every word the traveler said. " * 40
    mara = Character(name="Mara", model=MockBackend([long_plan + "</system_thinking>Mara: No."]))
    with caplog.at_level("WARNING", logger="her_sdk"):
        reply = mara.reply(max_tokens=40)
    assert reply.finish_reason == "plan_length" and reply.speech == "" and reply.plan
    assert "max_tokens=40" in caplog.text and "I weigh" not in caplog.text  # nothing private
    mara = Character(name="Mara", model=MockBackend(["Mara: " + "Fine, fine. " * 40]), plan=False)
    assert mara.reply(max_tokens=20).finish_reason == "length"  # inside its speech: "length"


def test_a_model_file_declares_the_caps_it_was_trained_with():
    """Export writes the plan and thought lengths a model was trained with (`her.*` metadata);
    the runtime makes them the model's shape, ignoring values it cannot use."""
    meta = {"her.max_plan_chars": 1500, "her.max_thought_chars": 600, "her.line_breaks": True}
    shape = TurnShape.from_metadata(meta, TurnShape())
    assert shape is not None
    assert (shape.max_plan_chars, shape.max_thought_chars, shape.line_breaks) == (1500, 600, True)
    assert shape.max_segments == TurnShape().max_segments  # the rest is the base's
    assert TurnShape.from_metadata({}, TurnShape()) is None
    assert TurnShape.from_metadata({"her.max_plan_chars": "long"}, TurnShape()) is None
    assert TurnShape.from_metadata({"her.max_plan_chars": 10**9}, TurnShape()) is None
    assert TurnShape.from_metadata({"her.line_breaks": 1}, TurnShape.FREE) is None


def test_export_metadata_of_each_style():
    pytest.importorskip("gguf")
    from her_sdk.export.to_gguf import her_model_metadata

    own = her_model_metadata()
    assert own == {
        "prompt_style": "chatml",
        "max_plan_chars": 400,
        "max_thought_chars": 240,
        "line_breaks": False,
    }
    her = her_model_metadata("her")
    assert her["prompt_style"] == "her" and her["line_breaks"] is True
    assert her["max_plan_chars"] == TurnShape.FREE.max_plan_chars
    assert her_model_metadata("her", max_plan_chars=2500)["max_plan_chars"] == 2500
    with pytest.raises(ConfigError):
        her_model_metadata("fewshot")
    with pytest.raises(ConfigError, match="max_plan_chars"):
        her_model_metadata(max_plan_chars=0)


def test_line_breaks_survive_the_wire_and_saves():
    pytest.importorskip("grpc")
    from her_sdk.server._convert import shape_from_pb, shape_to_pb
    from her_sdk.server._pb import her_pb2 as pb

    assert shape_from_pb(shape_to_pb(TurnShape.FREE)) == TurnShape.FREE
    assert shape_from_pb(pb.TurnShape(preset=pb.TURN_SHAPE_PRESET_FREE)).line_breaks is True
    assert shape_from_pb(pb.TurnShape(line_breaks=True)).line_breaks is True
    mara = Character(name="Mara", model=MockBackend([LONG]), shape=TurnShape.FREE)
    assert Character.loads(mara.dumps()).shape == TurnShape.FREE


def test_the_guard_keeps_a_turn_on_one_line_unless_the_shape_allows_line_breaks():
    # Engines without a grammar get the shape the grammar would have given them.
    deltas = [Delta("speech", "Go home.\nCome back", 1), Delta("speech", " at dawn.", 1)]
    one_line, _ = guarded(TurnShape(), deltas)
    assert "".join(d.text for d in one_line) == "Go home. Come back at dawn."
    free, _ = guarded(TurnShape.FREE, deltas)
    assert "".join(d.text for d in free) == "Go home.\nCome back at dawn."
