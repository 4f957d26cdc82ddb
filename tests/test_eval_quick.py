"""her eval quick (CPU metrics) and her eval compare, on scripted backends and the real model."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

pytest.importorskip("nltk")
pytest.importorskip("typer")

from her_sdk.evaluation import QuickSettings, compare_runs, run_quick
from her_sdk.evaluation._backends import BackendPool
from her_sdk.evaluation.quick import strict_valid
from typer.testing import CliRunner

from her_sdk import MockBackend
from her_sdk._errors import ConfigError
from her_sdk.cli import app

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
TEST_SET = FIXTURES / "salt_road_records.json"


def _pool_with(backend) -> BackendPool:
    class _Pool(BackendPool):  # every role, default model included, is the scripted backend
        def get(self, *args, **kwargs):
            return backend

    return _Pool()


def test_strict_validity():
    ok = "<system_thinking>Be calm.</system_thinking>Tomas: <role_action>yawns</role_action>Hi."
    assert strict_valid(ok, "Tomas")
    assert strict_valid(
        "<system_thinking>p</system_thinking><role_thinking>t</role_thinking>"
        "<role_action>nods</role_action>",
        "Tomas",
    )
    assert not strict_valid("Tomas: Hi.", "Tomas")  # no plan
    assert strict_valid("Tomas: Hi.", "Tomas", plan=False)
    assert not strict_valid(
        "<system_thinking>p</system_thinking>Tomas: <role_action>yawns", "Tomas"
    )  # unclosed
    assert not strict_valid("<system_thinking>p</system_thinking><think>x</think>Hi", "Tomas")
    assert not strict_valid(
        "<system_thinking>p</system_thinking><role_thinking>x</role_thinking>", "Tomas"
    )  # nothing public


def _turn_for(prompt: str, forge: bool = False, leak: bool = False) -> str:
    name = re.findall(r"You are (.+?) from", prompt)[0]
    speech = "Every night is wet on this rock."
    if forge:
        speech += " Wren: fine, we stay."
    if leak:
        speech += " The barrels are under the stairs, I tell myself."
    return (
        f"<system_thinking>{name} keeps calm.</system_thinking>{name}: "
        f"<role_thinking>The barrels are under the stairs, I tell myself.</role_thinking>"
        f"<role_action>yawns</role_action>{speech}"
    )


def test_quick_metrics_on_a_scripted_model(tmp_path):
    good = MockBackend(_turn_for)
    res = run_quick(TEST_SET, tmp_path / "q", QuickSettings(), pool=_pool_with(good))
    s = res["scores"]
    lines = sum(
        1
        for r in json.loads(TEST_SET.read_text())
        for m in r["dialogues"]
        if m["character"] != "Environment"
    )
    assert res["turns_generated"] == lines
    assert s["format_validity"] == 1.0 and s["leak_rate"] == 0.0
    assert s["forged_speaker_rate"] == 0.0
    assert s["nll_per_token"] is None  # not a llama.cpp model
    assert s["speech_words"] == 7 and s["action_words"] == 1
    assert s["plan_words"] == pytest.approx(19 / 6)  # "Officer Hale keeps calm." is 4 words
    assert s["copy_rate"] == 0.0  # its own gold line is no one else's
    assert 0 < s["distinct_1"] < 1 and 0 < s["distinct_2"] <= 1
    assert s["first_speech_s"] is not None
    report = (tmp_path / "q" / "report.md").read_text()
    for label in (
        "held-out NLL",
        "HER-format validity",
        "private-text leak rate",
        "forged-speaker rate",
        "copy rate",
        "self-repetition",
        "distinct-1",
        "time to first speech",
    ):
        assert label in report
    assert (tmp_path / "q" / "metrics.png").is_file()

    bad = MockBackend(lambda p: _turn_for(p, forge=True, leak=True))
    res_bad = run_quick(TEST_SET, tmp_path / "q2", QuickSettings(), pool=_pool_with(bad))
    sb = res_bad["scores"]
    assert sb["leak_rate"] == 1.0
    # Tomas' turns forge Wren's voice; Wren's own turns speaking "Wren:" do not count.
    assert 0 < sb["forged_speaker_rate"] < 1

    # Echoing what another character just said, or the prompt's few-shot example, is copying.
    echo = MockBackend(
        lambda p: _turn_for(p).replace(
            "Every night is wet on this rock.", "We go now, Tomas, or we hang."
        )
    )
    res_echo = run_quick(TEST_SET, tmp_path / "q3", QuickSettings(), pool=_pool_with(echo))
    assert res_echo["scores"]["copy_rate"] == pytest.approx(2 / 6)  # Tomas after Wren, twice
    fewshot = MockBackend(
        lambda p: _turn_for(p).replace(
            "Every night is wet on this rock.", "Forty? Sit, have a drink first."
        )
    )
    res_fs = run_quick(TEST_SET, tmp_path / "q4", QuickSettings(), pool=_pool_with(fewshot))
    assert res_fs["scores"]["copy_rate"] == 1.0

    cmp = compare_runs(tmp_path / "q", tmp_path / "q2")
    rows = {r["key"]: r for r in cmp["rows"]}
    assert rows["leak_rate"]["mark"] == "worse" and rows["leak_rate"]["delta"] == 1.0
    assert rows["format_validity"]["mark"] == "same"


def test_cli_coser_then_compare(tmp_path):
    actor = {
        f"You are {n} from": _turn_for(f"You are {n} from")
        for n in ("Wren", "Tomas", "Officer Hale")
    }
    agents = {"predict the next speaker": "Next Speaker: <END CHAT>", "*": "Wind."}
    (tmp_path / "actor.json").write_text(json.dumps(actor))
    (tmp_path / "agents.json").write_text(json.dumps(agents))
    base = [
        "eval",
        "coser",
        str(TEST_SET),
        "--actor",
        f"mock:{tmp_path / 'actor.json'}",
        "--env",
        f"mock:{tmp_path / 'agents.json'}",
        "--judge",
        f"mock:{FIXTURES / 'judge_script.json'}",
        "--records",
        "1",
    ]
    runner = CliRunner()
    r1 = runner.invoke(app, [*base, "--out", str(tmp_path / "a")])
    assert r1.exit_code == 0, r1.output
    assert "Storyline Consistency" in r1.output
    r2 = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--preset", "her"])
    assert r2.exit_code == 0, r2.output
    out = runner.invoke(app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert out.exit_code == 0, out.output
    assert "Average" in out.output and "setting preset: 'coser' → 'her'" in out.output
    md = runner.invoke(
        app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--markdown"]
    )
    assert "| metric |" in md.output and "Δ (B − A)" in md.output
    table = md.output.split("\n\n")[0].splitlines()
    assert len(table) > 3 and all(r.startswith("|") and r.endswith("|") for r in table)  # unwrapped
    # A judge is required; the error is one clean line, not a traceback.
    bad = runner.invoke(app, ["eval", "coser", str(TEST_SET), "--out", str(tmp_path / "c")])
    assert bad.exit_code == 1 and "needs a judge" in bad.output


def test_compare_refuses_different_kinds(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps({"kind": "coser", "scores": {}}))
    (tmp_path / "b" / "results.json").write_text(json.dumps({"kind": "quick", "scores": {}}))
    with pytest.raises(ConfigError, match="cannot compare"):
        compare_runs(tmp_path / "a", tmp_path / "b")
    with pytest.raises(ConfigError, match=r"no results\.json"):
        compare_runs(tmp_path / "a", tmp_path / "missing")


@pytest.mark.slow
def test_quick_on_the_embedded_model(tmp_path):
    pytest.importorskip("llama_cpp")
    res = run_quick(TEST_SET, tmp_path / "q", QuickSettings(max_lines=2, max_tokens=96), records=1)
    s = res["scores"]
    assert res["turns_generated"] == 2 and res["nll_tokens"] > 10
    assert math.isfinite(s["nll_per_token"]) and 0 < s["nll_per_token"] < 20
    assert s["leak_rate"] == 0.0  # the grammar keeps private text in private sections
    assert 0 <= s["format_validity"] <= 1
