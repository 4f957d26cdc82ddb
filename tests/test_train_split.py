"""`her data split`: samples split by scene into disjoint portions for the policy's SFT and RL,
the judge's SFT and RL, and a test set, in HER's proportions."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from her_sdk.training.data import (
    PORTIONS,
    TEST_SAMPLES,
    convert_file,
    read_jsonl,
    split_file,
    split_portions,
)
from her_sdk.training.tiny import synthetic_samples

from her_sdk import ConfigError

F = Path(__file__).parent / "fixtures" / "train"


def _scenes(rows):
    return {r["scene"] for r in rows}


def test_portions_are_disjoint_by_scene_and_follow_hers_proportions():
    rows = synthetic_samples(600, seed=3)
    parts = split_portions(rows)
    # split_by_purpose.py lines 152-161: sft_roleplay, roleplay_rl, rm_sft, rm_rl
    assert list(parts) == ["sft", "rl", "rm_sft", "rm_rl"]
    assert PORTIONS == {"sft": 0.33, "rl": 0.08, "rm_sft": 0.34, "rm_rl": 0.25}
    assert sum(len(p) for p in parts.values()) == len(rows)
    ids = Counter(r["id"] for p in parts.values() for r in p)
    assert set(ids) == {r["id"] for r in rows} and max(ids.values()) == 1  # each row exactly once
    for a in parts:
        for b in parts:
            assert a == b or not _scenes(parts[a]) & _scenes(parts[b])
    for name, share in PORTIONS.items():
        # whole scenes of ~5 samples: the share is met to within a couple of scenes
        assert abs(len(parts[name]) / len(rows) - share) < 0.03, (name, len(parts[name]))


def test_split_is_deterministic_and_seeded():
    rows = synthetic_samples(200, seed=1)
    a, b = split_portions(rows, seed=0), split_portions(list(rows), seed=0)
    assert {k: [r["id"] for r in v] for k, v in a.items()} == {
        k: [r["id"] for r in v] for k, v in b.items()
    }
    c = split_portions(rows, seed=1)
    assert _scenes(a["rl"]) != _scenes(c["rl"])


def test_a_test_portion_of_whole_scenes_comes_first():
    rows = synthetic_samples(3000, seed=4)
    parts = split_portions(rows, test=TEST_SAMPLES)
    assert list(parts) == ["sft", "rl", "rm_sft", "rm_rl", "test"]
    assert TEST_SAMPLES <= len(parts["test"]) < TEST_SAMPLES + 20  # whole scenes of a few rows
    assert sum(len(p) for p in parts.values()) == len(rows)
    for a in parts:
        for b in parts:
            assert a == b or not _scenes(parts[a]) & _scenes(parts[b])
    rest = len(rows) - len(parts["test"])
    for name, share in PORTIONS.items():
        assert abs(len(parts[name]) / rest - share) < 0.03, name
    small = split_portions(synthetic_samples(100, seed=4), test=TEST_SAMPLES)
    assert 10 <= len(small["test"]) < 20  # never more than a tenth (to a scene)
    with pytest.raises(ConfigError):
        split_portions(rows, test=-1)


def test_custom_ratios_and_bad_ratios():
    rows = synthetic_samples(100, seed=2)
    parts = split_portions(rows, {"sft": 1, "rl": 1})
    assert set(parts) == {"sft", "rl"} and parts["sft"] and parts["rl"]
    with pytest.raises(ConfigError):
        split_portions(rows, {"sft": -1, "rl": 2})
    with pytest.raises(ConfigError):
        split_portions(rows, {})


def test_cli_split_on_the_coser_sample(tmp_path):
    from typer.testing import CliRunner

    from her_sdk.cli import app

    data = tmp_path / "coser.jsonl"
    convert_file("coser", F / "coser_test.json", data)
    rows = read_jsonl(data)
    assert len(_scenes(rows)) == 2
    out = tmp_path / "parts"
    args = ["data", "split", str(data), "--out", str(out), "--sft", "1", "--rl", "1"]
    res = CliRunner().invoke(app, [*args, "--rm", "0", "--test", "0"])
    assert res.exit_code == 0, res.output
    assert not (out / "test.jsonl").exists() and not (out / "rm_sft.jsonl").exists()
    parts = {n: read_jsonl(out / f"{n}.jsonl") for n in ("sft", "rm", "rl")}
    assert sum(len(p) for p in parts.values()) == len(rows)
    assert parts["sft"] and parts["rl"] and not parts["rm"]  # two scenes, one in each
    seen: dict[str, str] = {}
    for name, part in parts.items():
        for r in part:
            assert seen.setdefault(r["scene"], name) == name  # no scene in two portions
    assert sorted(json.dumps(r, sort_keys=True) for p in parts.values() for r in p) == sorted(
        json.dumps(r, sort_keys=True) for r in rows
    )  # rows unchanged, `scene` kept


def test_split_file_reports_and_rejects_empty_input(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("")
    with pytest.raises(ConfigError):
        split_file(src, tmp_path / "out")


COSER = Path(__file__).resolve().parents[2] / "shared" / "data" / "coser"


@pytest.mark.skipif(
    not (COSER / "King_Lear.json").is_file(),
    reason="the CoSER sample (../shared/data/coser) is not beside this checkout",
)
def test_no_scene_of_the_coser_sample_lands_in_two_portions(tmp_path):
    data = tmp_path / "books.jsonl"
    rows = []
    for book in ("King_Lear.json", "Othello.json"):
        convert_file("coser", COSER / book, tmp_path / f"{book}.jsonl")
        rows += read_jsonl(tmp_path / f"{book}.jsonl")
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    split_file(data, tmp_path / "parts", test=TEST_SAMPLES)
    names = [*PORTIONS, "test"]
    parts = {name: read_jsonl(tmp_path / "parts" / f"{name}.jsonl") for name in names}
    assert sum(len(p) for p in parts.values()) == len(rows)
    assert all(parts.values())
    for a in parts:
        for b in parts:
            assert a == b or not _scenes(parts[a]) & _scenes(parts[b])
