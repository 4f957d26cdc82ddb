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


# ---------------------------------------------------------------------------------------------
# Teacher-judged policy samples (`her data rm-pairs`)
# ---------------------------------------------------------------------------------------------


def _cands(prompt: str) -> tuple[str, str]:
    c1 = prompt.split("=== cand_1 ===\n")[1].split("\n\n=== cand_2 ===")[0]
    c2 = prompt.split("=== cand_2 ===\n")[1].split("\n\nWhich is the better")[0]
    return c1, c2


def scripted_teacher(prompt: str) -> str:
    """A position-consistent teacher blind to length: the candidate whose text hashes lower
    wins, every third pair is a tie; it writes its reasoning before the verdict."""
    import hashlib

    c1, c2 = _cands(prompt)
    h1, h2 = (int(hashlib.sha1(c.encode()).hexdigest(), 16) for c in (c1, c2))
    better = "tie" if (h1 + h2) % 3 == 0 else ("cand_1" if h1 < h2 else "cand_2")
    notes = {"cand_1": "Reasoning: weighs the mood of the scene.", "cand_2": "Reasoning: ditto."}
    return render_verdict(better, ["OQ1"], {}, notes)


def test_teacher_rows_keep_ties_and_reasoning(pairs):
    kept, counts = teacher_rows(pairs[:12], MockBackend(scripted_teacher), concurrency=2)
    assert counts["kept"] == len(kept) == 24 and counts["inconsistent"] == 0
    assert counts["ties"] > 0 and counts["ties"] < len(kept)
    by_id = {}
    for rec in kept:
        assert "Reasoning: weighs the mood" in rec["completion_text"]
        by_id.setdefault(rec["id"], []).append(rec)
    for a, b in by_id.values():  # both orders of one pair: same candidates, swapped
        assert {a["order"], b["order"]} == {"ab", "ba"}
        assert (a["cand_1"], a["cand_2"]) == (b["cand_2"], b["cand_1"])
    rows = judge_sft_rows(kept)
    assert len(rows) == len(kept) and len({r["id"] for r in rows}) == len(rows)
    assert {r["label"] for r in rows} == {"cand_1", "cand_2", "tie"}
    for r, rec in zip(rows, kept, strict=True):
        assert r["completion"][0]["content"] == rec["completion_text"]  # the teacher's own words
        user = r["prompt"][1]["content"]
        assert _cands(user) == (rec["cand_1"], rec["cand_2"])
        if r["label"] != "tie":
            assert _cands(user)[SLOTS_INDEX[r["label"]]] == rec["chosen"]


SLOTS_INDEX = {"cand_1": 0, "cand_2": 1}


@pytest.fixture
def rm_data(tmp_path):
    from her_sdk.training.data import write_jsonl

    path = tmp_path / "rm.jsonl"
    write_jsonl(path, synthetic_samples(12, seed=5))
    return path


def test_rm_pairs_mock_policy_is_resumable_and_corruptions_optional(rm_data, tmp_path):
    from her_sdk.training.data import read_jsonl
    from her_sdk.training.pairs import mock_policy, rm_pairs

    out = tmp_path / "pairs.jsonl"
    teacher = MockBackend(scripted_teacher)
    rep = rm_pairs(rm_data, out, MockBackend(mock_policy()), teacher, samples=4, limit=5)
    recs = read_jsonl(out)
    assert rep.kept == 5 and rep.stats["pairs"] == 10 and len(recs) == 20
    assert {r["kind"] for r in recs} == {"policy"}  # no corruption unless asked
    for r in recs:
        assert "<system_thinking>" not in r["cand_1"] + r["cand_2"]  # the judge never sees plans
    n_prompts = len(teacher.prompts)
    rep = rm_pairs(
        rm_data,
        out,
        MockBackend(mock_policy()),
        teacher,
        samples=2,
        corruptions=["repetition", "knowledge_leak"],
    )
    assert rep.resumed == 5 and rep.kept == 7
    recs = read_jsonl(out)
    assert len({r["source_id"] for r in recs}) == 12  # every sample once, none twice
    kinds = Counter(r["kind"] for r in recs)
    assert kinds["policy"] == 20 + 7 * 2 and kinds["repetition"] > 0
    assert len(teacher.prompts) == n_prompts + 7 * 2
    rows = judge_sft_rows(recs)  # policy records: 1 row each; corrupted pairs: both orders
    assert len(rows) == kinds["policy"] + 2 * (len(recs) - kinds["policy"])
    assert rep.stats["length"]["by_kind"]["repetition"] == 0.0  # gold is always the shorter


def test_rm_pairs_drops_unreadable_teachers_and_dead_policies(rm_data, tmp_path):
    from her_sdk.training.pairs import mock_policy, rm_pairs

    out = tmp_path / "p.jsonl"
    rep = rm_pairs(
        rm_data,
        out,
        MockBackend(mock_policy()),
        MockBackend(lambda p: "no idea"),
        limit=3,
        retries=1,
    )
    assert rep.kept == 0 and rep.dropped == {"abstained": 3}
    # prompts x pairs (8 samples by default, as HER) x orders x tries
    assert rep.rejections["unreadable verdict"] == 3 * 4 * 2 * 2

    def dead(prompt: str) -> str:
        raise ConnectionError("policy server is down")

    rep = rm_pairs(rm_data, tmp_path / "q.jsonl", MockBackend(dead), MockBackend(scripted_teacher))
    assert rep.kept == 0 and rep.dropped == {"fewer than 2 candidates": 12}
    assert rep.rejections == {"policy error: GenerationError": 12 * (8 + 2)}  # n + retries


@pytest.mark.slow
def test_rm_pairs_on_the_tiny_model_hold_reasoning_ties_and_unordered_lengths(rm_data, tmp_path):
    """The issue's check: policy samples of the tiny model, judged by a scripted teacher."""
    pytest.importorskip("torch")
    from her_sdk.training.data import read_jsonl
    from her_sdk.training.pairs import length_balance, rm_pairs
    from her_sdk.training.tiny import build_tiny_model
    from transformers import set_seed

    from her_sdk import backend_from_spec

    model = build_tiny_model(tmp_path / "tiny")
    set_seed(0)
    policy = backend_from_spec(model)  # a checkpoint folder: transformers, in-process
    out = tmp_path / "pairs.jsonl"
    rep = rm_pairs(  # a random model never closes a plan: ask for the turn itself
        rm_data,
        out,
        policy,
        MockBackend(scripted_teacher),
        samples=4,
        plan=False,
        max_tokens=16,
        concurrency=1,
    )
    recs = read_jsonl(out)
    assert rep.kept >= 8 and rep.stats["pairs"] >= 12
    assert all("Reasoning:" in r["completion_text"] for r in recs)  # the teacher's words kept
    assert any(r["label"] == "tie" for r in recs) and any(r["label"] != "tie" for r in recs)
    bal = length_balance(recs)
    assert bal == rep.stats["length"] and bal["decisive"] >= 6
    assert 0.2 <= bal["chosen_longer"] <= 0.8  # length does not predict the label
    rows = judge_sft_rows(recs)
    assert all("Reasoning:" in r["completion"][0]["content"] for r in rows)


def test_rl_references_are_the_preferred_policy_samples(rm_data, tmp_path):
    """HER's policy RL data (step4_roleplay_rl/main.py, process_roleplay_rl_data): one row per
    judged pair, its reference the candidate the teacher preferred; ties are skipped."""
    from her_sdk.training.data import read_jsonl
    from her_sdk.training.pairs import mock_policy, rl_references, rm_pairs
    from her_sdk.training.rl import policy_rows
    from typer.testing import CliRunner

    from her_sdk.cli import app

    pairs = tmp_path / "rl_pairs.jsonl"
    rm_pairs(rm_data, pairs, MockBackend(mock_policy()), MockBackend(scripted_teacher), limit=4)
    recs = read_jsonl(pairs)
    by_pair: dict[str, list[dict]] = {}
    for r in recs:
        by_pair.setdefault(r["id"], []).append(r)
    decided = {pid: rs[0] for pid, rs in by_pair.items() if rs[0]["label"] != "tie"}
    assert decided and len(decided) < len(by_pair)  # the scripted teacher ties some pairs
    out = tmp_path / "rl_ref.jsonl"
    counts = rl_references(pairs, out)
    rows = read_jsonl(out)
    assert counts["pairs"] == len(by_pair) and counts["rows"] == len(rows) == len(decided)
    assert counts["ties"] == len(by_pair) - len(decided)
    for row in rows:
        pid = row["id"].rsplit(":", 1)[1]
        persona, history, target = decode_her(row)
        gold_persona, gold_history, _ = decode_her(decided[pid])
        assert (persona, history) == (gold_persona, gold_history)  # the same prompt
        assert target == parse_turn(decided[pid]["chosen"], persona.name)  # the preferred one
        assert row["reference"] == "policy"
    assert len(policy_rows(rows)) == len(rows)  # RL reads them as it reads samples
    res = CliRunner().invoke(app, ["data", "rl-refs", str(pairs), "--out", str(tmp_path / "c")])
    assert res.exit_code == 0 and f"{len(rows)} rows" in res.output, res.output
