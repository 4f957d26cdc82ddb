"""HER's recipe end to end on a CPU, through the commands a user runs, with scripted teachers
and tiny models: convert, role thinking, two-phase plans, settings, the five portions, reward
pairs in HER's protocol, RL references, the judge on HER-RM's prompt, RL against it.

Nothing here measures quality: it checks that every step's output is what the next one reads,
so the recipe of `training/recipes/qwen3_32b.md` cannot break between its steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

from her_sdk.training.data import decode_her, read_jsonl

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "train" / "coser_test.json"


def _her(*args: str) -> str:
    from typer.testing import CliRunner

    from her_sdk.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, (args[:2], res.output)
    return res.output


def _her_teacher_script(path: Path) -> str:
    """A teacher answering HER's teacher and HER-RM prompts alike: cand_1, three principles."""
    principles = {
        f"Principle {i}": {
            "principle_name": name,
            "dimension_name": "Character Consistency",
            "principle_level": "sentence",
            "main_content": name,
            "reason_for_choosing": "It separates the two.",
        }
        for i, name in enumerate(("In character", "Answers the moment", "No mind-reading"), 1)
    }
    comparisons = [
        {"principle_name": p["principle_name"], "winner": w}
        for p, w in zip(principles.values(), ("cand_1", "cand_1", "cand_2"), strict=True)
    ]
    result = {
        "principle": principles,
        "analysis": {"principle_comparisons": comparisons, "overall_analysis": "cand_1 leads."},
        "better_response": "cand_1",
    }
    teacher = "```json\n" + json.dumps({"result": [result]}, indent=2) + "\n```"
    path.write_text(json.dumps({"##prompt info": teacher}))
    return f"mock:{path}"


def test_the_her_recipe_runs_end_to_end_on_a_cpu(tmp_path):
    from her_sdk.training.data import write_jsonl
    from her_sdk.training.tiny import synthetic_samples

    d = tmp_path
    _her("data", "convert", "coser", FIXTURE, "--out", d / "book.jsonl", "--her-profile")
    # the book's two scenes and synthetic ones: enough scenes for every portion
    write_jsonl(d / "all.jsonl", read_jsonl(d / "book.jsonl") + synthetic_samples(40, seed=7))
    _her(
        "data", "enrich-thoughts", d / "all.jsonl", "--out", d / "enriched.jsonl",
        "--teacher", "mock",
    )  # fmt: skip
    _her(
        "data", "synth-plans", d / "enriched.jsonl", "--out", d / "planned.jsonl",
        "--mode", "her", "--teacher", "mock",
    )  # fmt: skip
    _her(
        "data", "complete-settings", d / "planned.jsonl", "--out", d / "settings.jsonl",
        "--teacher", "mock",
    )  # fmt: skip
    planned = read_jsonl(d / "settings.jsonl")
    assert planned and all(len(decode_her(r)[2].plan) >= 400 for r in planned)
    assert all(r.get("scenario_reasoning") for r in planned)  # every scene's scenario completed
    book = [decode_her(r)[0].profile for r in planned if r.get("description")]
    assert book and all(p.startswith("description: ") for p in book)  # HER's profile lines
    _her(
        "data", "split", d / "settings.jsonl", "--out", d / "parts", "--test", "0",
        "--sft", "1", "--rl", "1", "--rm-sft", "1", "--rm-rl", "1",
    )  # fmt: skip
    parts = {n: read_jsonl(d / "parts" / f"{n}.jsonl") for n in ("sft", "rl", "rm_sft", "rm_rl")}
    assert all(parts.values()), {n: len(p) for n, p in parts.items()}

    # `her data rm-pairs --protocol her`, by its function: the teacher here must judge by content
    # (a scripted file answers the same whatever the order, and pairs judged differently in
    # the two orders are dropped)
    from her_sdk.training.pairs import mock_policy, rm_pairs

    from her_sdk import MockBackend

    teacher = _her_teacher_script(d / "teacher.json")
    fixed = json.loads((d / "teacher.json").read_text())["##prompt info"]

    def by_length(prompt: str) -> str:  # prefers the longer candidate, in either order
        c1 = prompt.split("**Response Candidate 1**")[1].split("**Response Candidate 2**")[0]
        c2 = prompt.split("**Response Candidate 2**")[1]
        return (
            fixed
            if len(c1.strip()) >= len(c2.strip())
            else fixed.replace("cand_1", "cand_X")
            .replace("cand_2", "cand_1")
            .replace("cand_X", "cand_2")
        )

    for portion, out in (("rm_sft", "rm_pairs"), ("rl", "rl_pairs")):
        rm_pairs(
            d / "parts" / f"{portion}.jsonl",
            d / f"{out}.jsonl",
            MockBackend(mock_policy()),
            MockBackend(by_length),
            samples=4,
            protocol="her",
        )
    pairs = read_jsonl(d / "rm_pairs.jsonl")
    assert pairs and all(p["protocol"] == "her" and p["winner_pattern"] for p in pairs)
    _her("data", "rl-refs", d / "rl_pairs.jsonl", "--out", d / "rl_ref.jsonl")
    refs = read_jsonl(d / "rl_ref.jsonl")
    assert refs and all(r["reference"] == "policy" for r in refs)

    rm_yaml = ROOT / "training" / "configs" / "rm_tiny_cpu.yaml"
    _her(
        "train", "rm", "--config", rm_yaml, "--output_dir", d / "rm",
        f"pairs_file={d / 'rm_pairs.jsonl'}", "judge_prompt=her_rm", "train.max_steps=1",
        # HER-RM's prompt is long (its instructions alone are ~7,400 characters)
        "train.max_length=8192", "train.per_device_train_batch_size=1",
        "train.tiny={vocab_size: 1024, hidden_size: 64, num_layers: 2, num_heads: 4, "
        "num_kv_heads: 2, intermediate_size: 128, max_position_embeddings: 8192}",
    )  # fmt: skip
    rows = read_jsonl(d / "rm" / "judge_data.jsonl")
    assert rows and all(r["prompt"][0]["content"].startswith("##prompt info") for r in rows)
    assert all(r["completion"][0]["content"].startswith("```json") for r in rows)

    rl_yaml = ROOT / "training" / "configs" / "rl_tiny_cpu.yaml"
    _her(
        "train", "rl", "--config", rl_yaml, "--output_dir", d / "rl", "max_steps=1",
        f"train_file={d / 'rl_ref.jsonl'}", f"judge_model={teacher}", "judge_prompt=her_rm",
    )  # fmt: skip
    report = json.loads((d / "rl" / "her_rl.json").read_text())["result"]
    assert report["steps"] == 1 and report["judge_abstain_rate"] == 0.0
