"""RL's judge failures: abstentions logged, the run stopped above a threshold, a health check."""

from __future__ import annotations

import json

import pytest
from her_sdk.training.judge import Judge, render_verdict
from her_sdk.training.pairs import heuristic_judge
from her_sdk.training.rewards import JudgeReward
from her_sdk.training.rl import policy_rows
from her_sdk.training.tiny import synthetic_samples

from her_sdk import BackendUnavailableError, GenerationError, MockBackend


def _batch(n: int):
    rows = policy_rows(synthetic_samples(n, seed=4), plan=False)[:n]
    cols = {k: [r[k] for r in rows] for k in ("prefill", "character", "her_json")}
    completions = [f"{r['character']}: Fine words, friend." for r in rows]
    return [r["prompt"] for r in rows], completions, cols


def _dead(prompt: str) -> str:
    raise BackendUnavailableError("cannot reach http://judge:8001")


def test_dead_judge_stops_the_run_naming_the_backend_error():
    metrics: list[tuple[str, float]] = []
    reward = JudgeReward(Judge(MockBackend(_dead), retries=0), max_abstain_rate=0.2)
    prompts, completions, cols = _batch(8)
    with pytest.raises(GenerationError, match=r"abstained on 100%.*BackendUnavailableError"):
        reward(prompts, completions, log_metric=lambda k, v: metrics.append((k, v)), **cols)
    assert metrics == [("judge/abstain_rate", 1.0)]


def test_some_abstentions_below_the_threshold_are_logged_not_fatal():
    calls = {"n": 0}

    def flaky(prompt: str) -> str:  # one unreadable answer in four
        calls["n"] += 1
        return "no idea" if calls["n"] % 4 == 0 else heuristic_judge(prompt)

    metrics: list[tuple[str, float]] = []
    reward = JudgeReward(
        Judge(MockBackend(flaky), retries=0), both_orders=False, max_abstain_rate=0.5
    )
    prompts, completions, cols = _batch(8)
    scores = reward(prompts, completions, log_metric=lambda k, v: metrics.append((k, v)), **cols)
    assert len(scores) == 8 and scores.count(0.5) >= 2  # abstentions score judge_abstain
    assert metrics and metrics[0][0] == "judge/abstain_rate" and 0 < metrics[0][1] <= 0.5
    assert reward.abstain_rate == pytest.approx(0.25)


def test_health_check_raises_the_backend_error_or_an_unreadable_answer():
    prompts, completions, cols = _batch(1)
    from her_sdk.training.data import decode_her

    persona, history, ref = decode_her({"her": json.loads(cols["her_json"][0])})
    with pytest.raises(BackendUnavailableError):
        Judge(MockBackend(_dead)).health_check(persona, history, ref)
    with pytest.raises(GenerationError, match="without a readable verdict"):
        Judge(MockBackend(lambda p: "I like both.")).health_check(persona, history, ref)
    ok = Judge(MockBackend(lambda p: render_verdict("tie", [], {}))).health_check(
        persona, history, ref
    )
    assert ok.better == "tie"


def test_run_rl_fails_fast_on_a_dead_judge(tmp_path):
    pytest.importorskip("trl")
    from her_sdk.training.launch import parse_stage
    from her_sdk.training.rl import run_rl

    configs = parse_stage(
        "rl", "rl_tiny_cpu.yaml", [f"output_dir={tmp_path}", "train_file=synthetic:8"]
    )
    with pytest.raises(BackendUnavailableError):
        run_rl(*configs, judge_backend=MockBackend(_dead))
    assert not list(tmp_path.glob("checkpoint-*")) and not (tmp_path / "her_rl.json").exists()
