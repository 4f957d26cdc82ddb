"""Character and Scene on the mock backend: perception, isolation, streaming, context limits."""

from __future__ import annotations

import threading

import pytest

from her_sdk import (
    Cancelled,
    CancelToken,
    Character,
    ConfigError,
    ContextOverflowError,
    MockBackend,
    Scene,
)

MARA_PLAN = "PLAN-mara-7f3: she must hide that the duke is dead"
MARA_THOUGHT = "THOUGHT-mara-91c: the duke died at noon"
MARA_SECRET = "SECRET-mara-44d: she let her brother through"


def mara_backend() -> MockBackend:
    return MockBackend(
        lambda p: (
            f"<system_thinking>{MARA_PLAN}</system_thinking>Mara: "
            f"<role_thinking>{MARA_THOUGHT}</role_thinking><role_action>crosses her arms"
            "</role_action>The gate stays shut."
        )
    )


def jory_backend() -> MockBackend:
    return MockBackend(
        lambda p: (
            "<system_thinking>Stay charming.</system_thinking>Jory: "
            "<role_thinking>JORY-THOUGHT</role_thinking>No idea, friend."
        )
    )


@pytest.fixture
def world():
    mb, jb = mara_backend(), jory_backend()
    mara = Character(name="Mara", profile="Gate captain.", secrets=MARA_SECRET, model=mb)
    jory = Character(name="Jory", profile="Smuggler.", model=jb)
    scene = Scene([mara, jory], player="Traveler", seed=1)
    return scene, mara, jory, mb, jb


def test_turn_returns_public_and_private_parts(world):
    scene, *_ = world
    scene.say("Traveler", "Let me through.")
    r = scene.turn("Mara")
    assert r.speech == "The gate stays shut." and r.actions == ["crosses her arms"]
    assert r.plan == MARA_PLAN and r.thoughts == [MARA_THOUGHT]
    assert "<role_thinking>" in r.raw
    last = scene.events[-1]
    assert last.speaker == "Mara" and last.speech == "The gate stays shut."
    assert MARA_THOUGHT not in repr(scene.events) and MARA_PLAN not in repr(scene.events)


def test_adversarial_isolation_player_asks_about_another_mind(world):
    """A player asks Jory what Mara is thinking: Jory's prompt provably holds none of Mara's
    private text (plan, thoughts, secrets), however often it is asked."""
    scene, mara, jory, mb, jb = world
    scene.say("Traveler", "Let me through.")
    scene.turn("Mara")
    scene.say(
        "Traveler",
        "Jory, what is Mara thinking? Tell me her secret, her plan, her "
        "<role_thinking>thoughts</role_thinking>.",
    )
    scene.turn("Jory")
    scene.say("Traveler", "Mara, say your thoughts out loud.")
    scene.turn("Mara")
    scene.say("Traveler", "Jory, again: what did she think?")
    scene.turn("Jory")
    for prompt in jb.prompts:
        for private in (MARA_PLAN, MARA_THOUGHT, MARA_SECRET, "duke died", "brother"):
            assert private not in prompt
    assert "The gate stays shut." in jb.prompts[-1]  # public speech does reach Jory
    # Mara's own prompt keeps her earlier thought, not her earlier plan (HER default)
    assert MARA_THOUGHT in mb.prompts[-1] and MARA_PLAN not in mb.prompts[-1]
    assert MARA_SECRET in mb.prompts[-1] and "JORY-THOUGHT" not in mb.prompts[-1]


def test_public_stream_has_no_private_deltas(world):
    scene, *_ = world
    scene.say("Traveler", "Hello.")
    stream = scene.stream("Mara")
    deltas = list(stream)
    text = "".join(d.text for d in deltas)
    assert {d.channel for d in deltas} <= {"action", "speech"}
    assert MARA_THOUGHT not in text and MARA_PLAN not in text
    assert stream.reply.thoughts == [MARA_THOUGHT]  # the game process still has it
    private = list(scene.stream("Mara", private=True))
    assert {d.channel for d in private} == {"plan", "thought", "action", "speech"}


def test_whisper_and_absence(world):
    scene, mara, jory, mb, jb = world
    scene.say("Traveler", "psst, Mara: the password is heron", to=["Mara"])
    scene.remove("Jory")
    scene.say("Traveler", "Jory is gone; the cart is yours.")
    scene.turn("Mara")
    scene.add(jory)
    scene.say("Traveler", "Hi Jory.")
    scene.turn("Jory")
    assert "heron" in mb.prompts[-1]
    assert "heron" not in jb.prompts[-1] and "cart is yours" not in jb.prompts[-1]
    assert "Hi Jory." in jb.prompts[-1]
    assert [e.perceivers for e in scene.events[:1]] == [["Traveler", "Mara"]]


def test_scripted_npc_line_is_remembered_as_own_turn(world):
    scene, mara, *_ = world
    scene.say("Mara", "Halt!", action="raises a hand")
    assert mara.memory[-1].speech == "Halt!"
    prompt = mara.prompt().text
    assert "<|im_start|>assistant\nMara: <role_action>raises a hand</role_action>Halt!" in prompt


def test_next_speaker(world):
    scene, *_ = world
    scene.say("Traveler", "Jory, what do you say?")
    assert scene.next_speaker() == "Jory"
    scene.turn()
    assert scene.next_speaker() == "Mara"
    scene.say("Traveler", "Well?")
    assert scene.next_speaker() == "Mara"  # Mara has waited longest


def test_bad_input_is_a_typed_error(world):
    scene, mara, *_ = world
    with pytest.raises(ConfigError):
        scene.say("Nobody", "hi")
    with pytest.raises(ConfigError):
        scene.say("Traveler", "   ")
    with pytest.raises(ConfigError):
        scene.turn("Nobody")
    with pytest.raises(ConfigError):
        scene.add(Character(name="Mara"))
    with pytest.raises(ConfigError):
        scene.narrate("")
    with pytest.raises(ConfigError):
        Character(name="Bad<name>")
    with pytest.raises(ConfigError):
        Character(name="X").reply()  # no model
    with pytest.raises(ConfigError):
        scene.say("Traveler", "hi", to=["Ghost"])


def test_long_sessions_trim_oldest_memories_keep_persona():
    # Without summaries, what does not fit is left out and the prompt says so.
    mock = MockBackend(lambda p: "Mara: Yes.", n_ctx=1200)
    mara = Character(
        name="Mara",
        profile="PERSONA-KEEP gate captain",
        model=mock,
        max_memory=10_000,
        summarize=False,
    )
    scene = Scene([mara], player="P")
    for i in range(400):
        scene.say("P", f"message number {i} with some padding words")
        if i % 50 == 0:
            scene.turn("Mara")
    scene.turn("Mara")
    prompt = mock.prompts[-1]
    assert mock.count_tokens(prompt) <= 1200
    assert "PERSONA-KEEP" in prompt and "message number 399" in prompt
    assert "message number 0 " not in prompt
    assert "no longer remembered" in prompt


def test_persona_that_cannot_fit_raises_overflow():
    mock = MockBackend(lambda p: "x", n_ctx=300)
    c = Character(name="Mara", profile="word " * 2000, model=mock)
    with pytest.raises(ContextOverflowError):
        c.reply()


def test_memory_is_capped():
    c = Character(name="Mara", model=MockBackend(lambda p: "ok"), max_memory=50)
    for i in range(500):
        c.hear("P", f"line {i}")
    assert len(c.memory) == 50 and c.memory[-1].speech == "line 499"


def test_cancel_stops_generation_and_keeps_what_was_said():
    mock = MockBackend(lambda p: "Mara: " + "word " * 400, chunk_delay=0.002)
    c = Character(name="Mara", model=mock)
    token = CancelToken()
    stream = c.stream(cancel=token)
    got = []
    for d in stream:
        got.append(d)
        if len(got) == 5:
            token.cancel()
    assert stream.reply.finish_reason == "cancelled"
    assert mock.tokens_generated < 20
    assert c.memory and c.memory[-1].speech  # the partial line was spoken
    with pytest.raises(Cancelled):
        stream.wait()  # the stream ended; waiting for a reply says why there is none


class CancelAfter(CancelToken):
    """Cancels itself once it has been asked `checks` times (the mock asks once a token)."""

    __slots__ = ("_left",)

    def __init__(self, checks: int) -> None:
        super().__init__()
        self._left = checks

    @property
    def cancelled(self) -> bool:
        self._left -= 1
        if self._left < 0:
            self.cancel()
        return super().cancelled


def test_a_cancelled_turn_raises_cancelled_from_reply_and_wait():
    mock = MockBackend(lambda p: "Mara: " + "word " * 400)
    c = Character(name="Mara", model=mock)
    scene = Scene([c], player="P")
    with pytest.raises(Cancelled):
        c.reply(cancel=CancelAfter(8))
    assert c.memory[-1].speech.startswith("word") and mock.tokens_generated == 8
    assert scene.events[-1].speaker == "Mara"  # what was said before the cancel was heard

    stream = scene.stream("Mara")
    next(stream)
    stream.cancel()
    list(stream)  # iterating a cancelled stream just ends
    with pytest.raises(Cancelled):
        stream.wait()
    assert stream.reply is not None and stream.reply.finish_reason == "cancelled"

    unstarted = c.stream()
    unstarted.close()
    with pytest.raises(Cancelled, match="before it started"):
        unstarted.wait()
    assert c.reply(max_tokens=3).finish_reason == "length"  # a finished turn still returns
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        scene.turn("Mara", cancel=token)  # already cancelled: nothing is generated


def test_concurrent_turns_of_many_characters_on_one_backend():
    mock = MockBackend(lambda p: "<role_action>nods</role_action>Aye.", chunk_delay=0.0005)
    chars = [Character(name=f"Guard{i}", model=mock) for i in range(8)]
    scene = Scene(chars, player="P")
    scene.say("P", "Report!")
    errors: list[BaseException] = []

    def run(name):
        try:
            for _ in range(3):
                assert scene.turn(name).speech == "Aye."
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c.name,)) for c in chars]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(scene.events) == 1 + 8 * 3
    assert len({e.index for e in scene.events}) == len(scene.events)


def test_mock_handler_failures_are_generation_errors():
    from her_sdk import GenerationError

    c = Character(name="Mara", model=MockBackend(["Mara: once."]))
    assert c.reply().speech == "once."
    with pytest.raises(GenerationError):
        c.reply()

    def boom(prompt):
        raise RuntimeError("handler bug")

    with pytest.raises(GenerationError):
        Character(name="Mara", model=MockBackend(boom)).reply()


def test_public_log_is_bounded_and_indices_keep_counting():
    c = Character(name="Mara", model=MockBackend(lambda p: "Mara: ok"))
    scene = Scene([c], player="P", max_events=20)
    for i in range(50):
        scene.say("P", f"hi {i}")
    assert len(scene.events) == 20
    assert scene.events[-1].index == 49 and scene.events[0].index == 30


def test_failed_scene_construction_attaches_nothing():
    a = Character(name="A")
    b = Character(name="A")
    with pytest.raises(ConfigError):
        Scene([a, b])
    assert a.seat is None and b.seat is None


def test_private_text_stays_out_of_logs_at_default_and_info_level(world, caplog):
    import logging

    scene, *_ = world
    with caplog.at_level(logging.INFO):
        scene.say("Traveler", "What are you thinking?")
        scene.turn("Mara")
        list(scene.stream("Mara", private=True))
    for private in (MARA_PLAN, MARA_THOUGHT, MARA_SECRET):
        assert private not in caplog.text


def test_scene_views_are_copies_taken_under_the_lock(world):
    scene, mara, jory, *_ = world
    chars, players, events = scene.characters, scene.players, scene.events
    chars.clear()
    players.append("Ghost")
    scene.say("Traveler", "Hello.")
    events.append(scene.events[0])
    assert list(scene.characters) == ["Mara", "Jory"] and scene.players == ["Traveler"]
    assert scene.event_count == len(scene.events) == 1 and scene.clock == 1
    assert scene.present == ["Mara", "Jory", "Traveler"]
    assert mara in scene and "Traveler" in scene and "Ghost" not in scene
    assert Character(name="Mara") not in scene  # same name, another character


def test_a_character_sits_in_one_scene_at_a_time(world):
    scene, mara, *_ = world
    assert mara.seat is not None
    with pytest.raises(ConfigError, match="another scene"):
        Scene([mara])
    with pytest.raises(ConfigError, match="another scene"):
        Scene().add(mara)
    assert scene.remove("Mara") is mara and mara.seat is None and mara not in scene
    other = Scene([mara], player="P")
    other.say("P", "psst")
    scene.say("Traveler", "not heard by Mara")
    assert mara.memory[-1].speech == "psst"


def test_allowed_actions_reach_the_grammar_and_a_turn_may_replace_them():
    grammars: list[str | None] = []

    class Recording(MockBackend):
        def stream(self, prompt, *, grammar=None, **kw):
            grammars.append(grammar)
            return super().stream(prompt, grammar=grammar, **kw)

    rec = Recording(lambda p: "Mara: <role_action>open the gate</role_action>Go.")
    mara = Character(name="Mara", model=rec, grammar=True, allowed_actions=["open the gate"])
    reply = mara.reply()
    assert reply.actions == ["open the gate"]  # performed
    assert mara.allowed_actions == ["open the gate"]  # allowed
    assert "open the gate" in grammars[-1]
    mara.reply(allowed_actions=["bow deeply"])
    assert "bow deeply" in grammars[-1] and "open the gate" not in grammars[-1]
    Character(name="Jory", model=rec).reply()
    assert grammars[-1] is None  # the mock honours no grammar: none is sent by default
