"""Automatic preference pairs (each corruption really present), judge SFT rows, teacher rows."""

from __future__ import annotations

import random
from collections import Counter

import pytest

pytest.importorskip("yaml")

from her_sdk.training.data import decode_her
from her_sdk.training.judge import Judge, parse_verdict, render_verdict
from her_sdk.training.pairs import (
    CORRUPTIONS,
    auto_pairs,
    corrupt,
    detect_in_sample,
    heuristic_backend,
    judge_sft_rows,
    repetition_ratio,
    tag_errors,
    teacher_rows,
)
from her_sdk.training.principles import load_principles
from her_sdk.training.tiny import synthetic_samples

from her_sdk import MockBackend, Persona
from her_sdk.format import Heard, Segment, Turn, parse_turn

MARA = Persona(name="Mara", profile="Mara keeps the gate of Vell.", scenario="Night at the gate.")
HIST = [
    Heard(speaker="Environment", speech="Rain falls."),
    Heard(speaker="Brannoc", speech="I have nothing to hide.", actions=["steps closer"]),
]
GOLD = Turn.from_segments(
    [
        Segment("plan", "Mara should stall him."),
        Segment("thought", "If he finds the letter, I am finished."),
        Segment("action", "crosses her arms"),
        Segment("speech", "Then show me your papers."),
    ]
)


@pytest.fixture(scope="module")
def pairs():
    return auto_pairs(synthetic_samples(90, seed=3), seed=1)


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_each_corruption_is_really_present(kind):
    bad = corrupt(kind, MARA, HIST, GOLD, random.Random(0))
    assert bad is not None
    turn = parse_turn(bad, "Mara")
    assert "Mara should stall him" not in bad  # plans never reach the judge
    # checked independently of the detector, by what each fault means
    if kind == "thought_leak":
        assert "If he finds the letter, I am finished." in turn.speech
        assert "If he finds the letter, I am finished." in turn.thoughts
    elif kind == "other_voice":
        assert "I have nothing to hide." in turn.speech and "show me your papers" not in turn.speech
    elif kind == "broken_tags":
        assert tag_errors(bad) > 0
    elif kind == "repetition":
        assert turn.speech.count("Then show me your papers.") >= 4
    elif kind == "knowledge_leak":
        assert any(
            w in bad.lower()
            for w in (
                "smartphone",
                "internet",
                "email",
                "gps",
                "wikipedia",
                "movie from",
                "television",
            )
        )
    elif kind == "speak_for_other":
        assert "\nBrannoc: " in bad
    assert detect_in_sample(bad, MARA, HIST) >= {kind}


def test_gold_turn_has_no_fault():
    from her_sdk.format import render_turn

    assert detect_in_sample(render_turn(GOLD, "Mara"), MARA, HIST) == set()


def test_impossible_corruptions_are_skipped():
    plain = Turn.from_segments([Segment("speech", "Go.")])
    assert corrupt("thought_leak", MARA, [], plain) is None  # no thought to leak
    assert corrupt("other_voice", MARA, [], plain) is None  # nobody else spoke
    assert corrupt("speak_for_other", MARA, [], plain) is None  # nobody else present


def test_auto_pairs_cover_every_kind_and_are_verified(pairs):
    kinds = Counter(p["kind"] for p in pairs)
    assert set(kinds) == set(CORRUPTIONS)
    for p in pairs:
        persona, history, _ = decode_her(p)
        assert p["kind"] in detect_in_sample(p["rejected"], persona, history)
        assert detect_in_sample(p["chosen"], persona, history) == set()
        assert "<system_thinking>" not in p["chosen"] + p["rejected"]
    assert {p["split"] for p in pairs} == {"train", "eval"}


def test_judge_sft_rows_are_balanced_and_labelled(pairs):
    ps = load_principles()
    rows = judge_sft_rows(pairs[:20], principles=ps)
    assert len(rows) == 40
    assert Counter(r["label"] for r in rows) == {"cand_1": 20, "cand_2": 20}
    for r in rows:
        v = parse_verdict(r["completion"][0]["content"], ps)
        assert v.better == r["label"]
        loser = "cand_2" if r["label"] == "cand_1" else "cand_1"
        assert v.violations[loser] and not v.violations[r["label"]]
        assert [m["role"] for m in r["prompt"]] == ["system", "user"]


def test_heuristic_judge_prefers_gold_in_both_orders(pairs):
    judge = Judge(heuristic_backend())
    wins = 0
    for p in pairs[:30]:
        persona, history, _ = decode_her(p)
        wins += judge.compare(persona, history, p["chosen"], p["rejected"]).score == 1.0
    assert wins == 30 and judge.abstained == 0


def test_teacher_rows_keep_consistent_verdicts_only(pairs):
    # The teacher prefers the shorter candidate; a position-biased teacher is dropped.
    def shorter(prompt: str) -> str:
        c1 = prompt.split("=== cand_1 ===")[1].split("=== cand_2 ===")[0]
        c2 = prompt.split("=== cand_2 ===")[1].split("Which is the better")[0]
        return render_verdict("cand_1" if len(c1) <= len(c2) else "cand_2", [], {})

    kept, counts = teacher_rows(pairs[:8], MockBackend(shorter), concurrency=2)
    assert counts["kept"] == len(kept) > 0 and counts["abstained"] == 0
    for rec in kept:
        assert len(rec["chosen"]) <= len(rec["rejected"])
    rows = judge_sft_rows(kept)
    assert len(rows) == len(kept)
    for r in rows:
        assert parse_verdict(r["completion"][0]["content"]).better == r["label"]

    first = render_verdict("cand_1", [], {})
    kept, counts = teacher_rows(pairs[:4], MockBackend(lambda p: first))
    assert kept == [] and counts["inconsistent"] == 4


def test_repetition_ratio():
    assert repetition_ratio("one two three four five") == 0.0
    assert repetition_ratio("keep it down " * 6) > 0.7
