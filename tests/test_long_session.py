"""A long game on the mock backend: the SDK's work per turn does not grow with the game.

Plays benchmarks/long_session.py's scene (two NPCs, a player, generated lines with a Zipf
vocabulary) to 100 events, then to 10,000 events and 10,000 memories per NPC, and compares the
recall work of a turn, counted in operations (`MemoryStore.recall_cost`), never in seconds. Scoring
every memory sharing a term with the moment, as recall did before the index, does ~100x the work
at 10,000 memories as at 100.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "long_session.py"


def load_benchmark():
    # As `python benchmarks/long_session.py` runs it: its folder first on the path.
    if str(BENCH.parent) not in sys.path:
        sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("long_session", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def turn_work(session, turns: int) -> tuple[float, float]:
    """Median (work, postings counted) of the recalls of `turns` steps."""
    work, counted = [], []
    for _ in range(turns):
        speaker = session.speaker
        session.step()
        cost = speaker.long_term.recall_cost
        work.append(cost["postings"] + cost["walked"] + cost["scored"])
        counted.append(cost["counted"])
    return statistics.median(work), statistics.median(counted)


def test_recall_work_per_turn_does_not_grow_with_the_game():
    bench = load_benchmark()
    session = bench.Session(seed=1)
    while session.events < 100:
        session.step()
    early, _ = turn_work(session, 15)
    session.fill(10_000)
    turn_work(session, 10)  # the first turns after the fill fold the working memory
    late, counted = turn_work(session, 15)
    assert session.events >= 10_000
    assert all(len(c.long_term) >= 10_000 for c in session.characters)
    budget = session.characters[0].long_term.candidates
    assert early > 0 and late > 0
    assert late <= 8 * early, (early, late)
    assert late <= 8 * budget and counted <= 32 * budget


def reference_next_speaker(scene) -> str:
    """`Scene.next_speaker` as it was: a scan of the whole log."""
    import re

    names = list(scene.characters)
    events = scene.events
    last = events[-1] if events else None
    candidates = [n for n in names if last is None or n != last.speaker]
    if not candidates:
        return names[0]
    if last is not None:
        text = f"{last.speech} {' '.join(last.actions)}"
        for n in candidates:
            if re.search(rf"\b{re.escape(n)}\b", text, re.IGNORECASE):
                return n
    last_spoke = {n: -1 for n in candidates}
    for e in events:
        if e.speaker in last_spoke:
            last_spoke[e.speaker] = e.index
    return min(candidates, key=lambda n: last_spoke[n])


def test_next_speaker_without_a_scan_of_the_log_agrees_with_the_scan():
    import random

    from her_sdk import Character, MockBackend, Scene

    rng = random.Random(4)
    names = ["Ana", "Bo", "Cy", "Di"]
    for max_events in (1, 3, 50):
        chars = [Character(name=n, model=MockBackend(lambda p: "x")) for n in names]
        scene = Scene(chars, player="P", max_events=max_events)
        for _ in range(300):
            who = rng.choice([*names, "P", "P"])
            scene.say(who, rng.choice(["hello", "well", "Bo, come here"]))
            if rng.random() < 0.05:
                scene = Scene.loads(scene.dumps(), model=MockBackend(lambda p: "x"))
            assert scene.next_speaker() == reference_next_speaker(scene)
