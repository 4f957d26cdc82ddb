"""The game-line heuristics (`her_sdk.evaluation.lines`) on hand-written turns, both ways."""

from __future__ import annotations

import pytest
from her_sdk.evaluation.lines import (
    GAME_LINE,
    LineLimits,
    answer_overlap,
    copies,
    forges_speaker,
    narrates,
    nested_quotes,
    ngram_overlap,
    reveals_secret,
    sentences,
    shape_score,
    strict_valid,
    turn_segments,
    within_shape,
)

from her_sdk import ConfigError, parse_turn

OTHERS = ["Jory", "Traveler"]


@pytest.mark.parametrize(
    "speech",
    [
        "Go home, she said.",
        "Go home, she said softly.",
        "The duke wants your papers. He asked her, his voice strained with emotion.",
        "We must leave, said Jory.",
        '"We must send our goods into the river," he whispered to her.',
        "She smiled and opened the door for him.",
        "The rain kept on. He nodded, slowly.",
        "Jory grinned at the guards.",
        "Mara turned away from the gate.",  # the speaker narrated by her own name
        "Mara stood and opened the gate.",
        "I will not, and his voice trembled as he spoke.",
        "Enough. Her eyes narrowed.",
        "No, they replied.",
    ],
)
def test_narration_is_detected(speech):
    assert narrates(speech, "Mara", OTHERS)


@pytest.mark.parametrize(
    "speech",
    [
        "I said no, and I meant it.",
        "She said the road is closed. Ask her yourself.",
        "He was here yesterday; I saw him.",
        "My brother told me the duke is dead.",
        "Tell Jory I said hello.",
        "He told me, wait here. So I waited.",  # reported to the speaker, not narrated
        "They asked for you at the inn.",
        "That's what they said.",
        "They took my horse at the ford, captain.",
        "I turned back when I saw the smoke.",
        "Did she say that? Did he?",
        "Papers first, traveler. The gate stays shut until dawn.",
        "mara turned into a word, not a name.",  # a lower-case word is no name
        "So long has Mara wanted to meet you, sir.",  # speaking of oneself by name
        "Do like she says, and leave us be.",
        "So she says.",
        "Yes, sir. Then he asked... he asked Professor Hale about it.",
        "",
    ],
)
def test_ordinary_speech_is_not_narration(speech):
    assert not narrates(speech, "Mara", OTHERS)


def test_narration_without_names_uses_pronouns_only():
    assert narrates("Stay, he said.")
    assert not narrates("Jory turned away.")  # no names given: a name is not a subject
    assert narrates("Jory turned away.", "Jory")


@pytest.mark.parametrize(
    "text",
    [
        'Mara: He told me, "wait here." So I waited.',
        "Mara: “We must send our goods into the river.” She said so.“The duke wants it.”",
        "Mara: They call it ‘the Pit’ in the north.",
        "Mara: They call it 'the Pit' in the north.",
        'Mara: <role_action>nods</role_action>"Go," I said, "go now."',
        'Mara: "Please." "Come on!"',  # two quoted runs in one speech
    ],
)
def test_nested_quotes_are_detected(text):
    assert nested_quotes(parse_turn(text, "Mara"))


@pytest.mark.parametrize(
    "text",
    [
        "Mara: Don't go, it's late. The captain's orders stand.",
        "Mara: “Please let me in.”",  # one pair around the whole speech is how novels print it
        'Mara: "Let me in." <role_action>smiles</role_action>"Come on!"',  # two runs, each wrapped
        "Mara: We were fishin' all night, the lads' boats too.",
        "Mara: <role_action>points at the 'closed' sign</role_action>Closed.",  # quotes in actions
    ],
)
def test_plain_speech_has_no_nested_quotes(text):
    assert not nested_quotes(parse_turn(text, "Mara"))


def test_sentences():
    assert sentences("Go. Now!") == ["Go.", "Now!"]
    assert len(sentences("Wait... what? Mr. Hale is here.")) == 2
    assert len(sentences("No")) == 1
    assert sentences("  ") == []
    assert len(sentences('"Go home." She left.')) == 2


def test_turn_shape_scores():
    short = parse_turn(
        "Mara: <role_thinking>Liar.</role_thinking><role_action>crosses her arms</role_action>"
        "Papers first. Then we talk.",
        "Mara",
    )
    assert turn_segments(short) == 3
    assert within_shape(short) and shape_score(short) == 1.0
    stacked = parse_turn(
        "Mara: (smiles nervously) (looks confused) (cries and laughs) Come in. Sit. Eat. Drink.",
        "Mara",
    )
    assert len(stacked.actions) == 3
    assert not within_shape(stacked)
    assert 0 < shape_score(stacked) < 1
    long = parse_turn("Mara: " + "word " * 200, "Mara")
    assert shape_score(long) < shape_score(short)
    assert shape_score(long, LineLimits(max_speech_words=500)) == 1.0
    assert GAME_LINE.max_actions == 1
    with pytest.raises(ConfigError, match="max_actions"):
        LineLimits(max_actions=-1)


def test_forged_speakers():
    assert forges_speaker("Fine. Jory: we stay.", ["Jory"])
    assert forges_speaker("Environment: the rain stops.", ["Jory", "Environment"])
    assert not forges_speaker("Fine, Jory, we stay.", ["Jory"])
    assert not forges_speaker("Listen: we stay.", ["Jory"])


def test_copies_and_overlap():
    line = "the duke wants your papers sealed by my lord before dawn"
    assert copies("Aye, the duke wants your papers sealed by my lord tonight.", [line])
    assert not copies("The duke is asleep; no papers tonight.", [line])
    assert not copies("Go.", [line])  # too short to call a copy
    assert ngram_overlap("the duke wants your papers sealed", [line], n=5) == 1.0
    assert ngram_overlap("no seal will open this gate tonight", [line], n=5) == 0.0
    assert ngram_overlap("short", [line]) == 0.0
    half = "the duke wants your papers and my horse is lame"
    assert 0 < ngram_overlap(half, [line], n=5) < 1


def test_answer_overlap():
    asked = "Let me through, captain. I carry papers sealed by the duke himself."
    assert answer_overlap("Your papers mean nothing tonight; the duke sleeps.", asked) == 1.0
    assert answer_overlap("The weather turns cold in the mountains.", asked) == 0.0
    assert 0 < answer_overlap("Papers? Show me.", asked) < 1
    assert answer_overlap("Anything.", "Oh, well, yes.") == 1.0  # nothing to answer


def test_secret_reveals():
    secret = "She let her own brother through the gate last week, against orders."
    assert reveals_secret("I let my brother through the gate last week. There.", secret)
    assert not reveals_secret("The gate stays shut tonight, against all pleading.", secret)
    assert not reveals_secret("Anything at all.", "")


def test_strict_valid():
    ok = "<system_thinking>Be calm.</system_thinking>Tomas: <role_action>yawns</role_action>Hi."
    assert strict_valid(ok, "Tomas")
    assert not strict_valid("Tomas: Hi.", "Tomas")
    assert strict_valid("Tomas: Hi.", "Tomas", plan=False)
    assert not strict_valid("Tomas: <role_action>yawns", "Tomas", plan=False)


def test_the_first_names_still_work_with_a_warning():
    """`TurnShape` here clashed with the runtime's `her_sdk.TurnShape`: it is `LineLimits` now,
    and the first names still resolve (deprecated)."""
    import her_sdk.evaluation.lines as lines

    with pytest.warns(DeprecationWarning, match="LineLimits"):
        assert lines.TurnShape is LineLimits
    with pytest.warns(DeprecationWarning, match="GAME_LINE"):
        assert lines.GAME_SHAPE is GAME_LINE
    with pytest.raises(AttributeError):
        lines.NoSuchName  # noqa: B018
