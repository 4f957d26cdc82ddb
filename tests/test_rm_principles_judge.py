"""Principles (loading, validation) and the judge's prompt renderer and verdict parser."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("yaml")

from her_sdk.training.judge import (
    Judge,
    candidate_text,
    judge_messages,
    parse_verdict,
    render_verdict,
)
from her_sdk.training.principles import DIMENSIONS, load_principles

from her_sdk import ConfigError, MockBackend, Persona
from her_sdk.format import Heard, Segment, Turn

PS = load_principles()
MARA = Persona(name="Mara", profile="Mara keeps the gate.", scenario="Night at the gate.")
HIST = [Heard(speaker="Brannoc", speech="Let me through.", actions=["steps closer"])]
GOLD = Turn.from_segments(
    [
        Segment("plan", "Mara should stall him."),
        Segment("thought", "He is lying."),
        Segment("speech", "Papers first."),
    ]
)


# -- principles ----------------------------------------------------------------------------


def test_packaged_principles_cover_the_twelve_dimensions():
    assert len(PS) >= 12
    assert {p.dimension for p in PS} == set(DIMENSIONS)
    assert len(set(PS.ids)) == len(PS)
    for p in PS:
        assert p.level in ("sentence", "session") and p.polarity in ("positive", "negative")
        assert len(p.definition) > 60 and p.violation
    assert {p.auto for p in PS if p.auto} == {
        "thought_leak",
        "other_voice",
        "broken_tags",
        "repetition",
        "knowledge_leak",
        "speak_for_other",
    }


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["principles"][0].update(level="paragraph"), "level"),
        (lambda d: d["principles"][0].update(polarity="neutral"), "polarity"),
        (lambda d: d["principles"][0].update(dimension="vibes"), "dimension"),
        (lambda d: d["principles"][1].update(id=d["principles"][0]["id"]), "duplicate"),
        (lambda d: d["principles"][0].pop("definition"), "definition"),
        (lambda d: d["principles"][0].update(colour="red"), "colour"),
        (
            lambda d: d.update(
                principles=[p for p in d["principles"] if p["dimension"] != "safety and boundaries"]
            ),
            "dimension",
        ),
    ],
)
def test_invalid_principle_files_are_rejected(tmp_path, mutate, message):
    import yaml
    from her_sdk.training.principles import DEFAULT_PATH

    data = yaml.safe_load(DEFAULT_PATH.read_text())
    mutate(data)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_principles(path)


def test_subset_and_unknown_ids():
    assert PS.subset(["DI2", "OQ1"]).ids == ["DI2", "OQ1"]
    with pytest.raises(ConfigError):
        PS.subset(["NOPE"])


# -- prompt --------------------------------------------------------------------------------


def test_judge_prompt_strips_plans_keeps_thoughts_and_lists_principles():
    msgs = judge_messages(
        MARA,
        HIST,
        GOLD,
        "<system_thinking>secret plan</system_thinking>"
        "Mara: <role_thinking>Hm.</role_thinking>Go away.",
        principles=PS,
    )
    system, user = msgs[0]["content"], msgs[1]["content"]
    assert all(p.id in system for p in PS)
    assert "Mara should stall him" not in user and "secret plan" not in user
    assert "<role_thinking>He is lying.</role_thinking>" in user
    assert "=== cand_1 ===" in user and "=== cand_2 ===" in user
    assert "Brannoc: <role_action>steps closer</role_action>Let me through." in user
    # raw candidates keep their faults (the judge must see broken tags)
    assert "<role_action>unclosed" in candidate_text("Mara: <role_action>unclosed", "Mara")
    assert candidate_text("<system_thinking>only a plan", "Mara") == "(empty turn)"


# -- verdict parser ------------------------------------------------------------------------


def test_render_then_parse_roundtrip():
    text = render_verdict("cand_2", ["DI2", "OQ1"], {"cand_1": ["DI2"], "cand_2": []})
    v = parse_verdict(text, PS)
    assert v.better == "cand_2" and v.violations["cand_1"] == ["DI2"] and not v.overridden


@pytest.mark.parametrize(
    "text, better",
    [
        ('Analysis...\n```json\n{"better_response": "cand_1"}\n```', "cand_1"),
        ("{'better_response': 'Candidate 2', 'principles': ['DI1'],}", "cand_2"),
        ('{"better_response": "TIE"}', "tie"),
        ('first {"better_response": "cand_1"} then final {"better_response": "cand_2"}', "cand_2"),
        ("no json at all but better_response: cand_2", "cand_2"),
        ('{"Better Response": "B"}', "cand_2"),
        ('{"better_response": 1}', "cand_1"),
        (
            '{"principles": [], "violations": {"cand_1": {"x": 1}}, "better_response": "cand_1"}',
            "cand_1",
        ),
    ],
)
def test_parser_reads_messy_verdicts(text, better):
    v = parse_verdict(text, PS)
    assert v is not None and v.better == better


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I think the first one is nicer.",
        '{"better_response": "cand_3"}',
        '{"better_response": ',
        '{"winner": "cand_1"}',
        "{" * 5000,
        None,
        42,
        '{"better_response": "cand_1"' + "]" * 100,
    ],
)
def test_parser_abstains_on_garbage_and_never_raises(text):
    v = parse_verdict(text, PS)
    assert v is None or v.better in ("cand_1", "cand_2", "tie")
    if text in ("", "I think the first one is nicer.", '{"winner": "cand_1"}', None, 42):
        assert v is None


def test_violated_negative_principle_loses_whatever_the_stated_winner():
    text = json.dumps(
        {"violations": {"cand_1": ["DD2"], "cand_2": []}, "better_response": "cand_1"}
    )
    v = parse_verdict(text, PS)
    assert v.better == "cand_2" and v.overridden and v.stated == "cand_1"
    # a positive principle in "violations" does not trigger the rule
    text = json.dumps(
        {"violations": {"cand_1": ["OQ1"], "cand_2": []}, "better_response": "cand_1"}
    )
    assert parse_verdict(text, PS).better == "cand_1"


# -- Judge: retries, abstain, both orders --------------------------------------------------


def test_judge_retries_then_abstains():
    backend = MockBackend(["garbage", "still garbage", "nope", "no"])
    judge = Judge(backend, principles=PS, retries=1)
    cmp = judge.compare(MARA, HIST, GOLD, "Mara: Hm.")
    assert cmp.score is None and cmp.verdicts == [None, None]
    assert judge.calls == 4 and judge.abstained == 2


def test_judge_combines_both_orders_and_exposes_position_bias():
    first = render_verdict("cand_1", [], {})
    # a judge that always prefers whatever is shown first: the two orders cancel out
    cmp = Judge(MockBackend(lambda p: first), principles=PS).compare(MARA, HIST, GOLD, "Mara: Hm.")
    assert cmp.score == 0.5 and not cmp.consistent

    # a judge that recognises the gold turn wins in both orders
    def fair(prompt: str) -> str:
        c1 = prompt.split("=== cand_1 ===")[1].split("=== cand_2 ===")[0]
        return render_verdict("cand_1" if "Papers first." in c1 else "cand_2", [], {})

    cmp = Judge(MockBackend(fair), principles=PS).compare(MARA, HIST, GOLD, "Mara: Hm.")
    assert cmp.score == 1.0 and cmp.consistent
    cmp = Judge(MockBackend(fair), principles=PS).compare(MARA, HIST, "Mara: Hm.", GOLD)
    assert cmp.score == 0.0


def test_judge_survives_a_failing_backend():
    def boom(prompt: str) -> str:
        raise RuntimeError("server down")

    cmp = Judge(MockBackend(boom), principles=PS, retries=0).compare(MARA, HIST, GOLD, GOLD)
    assert cmp.score is None


def test_both_candidates_breaking_a_negative_principle_is_a_tie():
    from her_sdk.training.judge import parse_verdict, render_verdict

    text = render_verdict("cand_1", ["DI2", "WC1"], {"cand_1": ["DI2"], "cand_2": ["WC1"]})
    v = parse_verdict(text, PS)
    assert v.better == "tie" and v.stated == "cand_1" and v.overridden
    one = parse_verdict(render_verdict("cand_1", ["DI2"], {"cand_1": ["DI2"]}), PS)
    assert one.better == "cand_2"  # only one breaks it: that one loses
