"""Turn scheduling for many NPCs on one model: the policy (no model needed) and its plumbing.

The engine that decodes turns together is tested on the real model in test_batching_llama.py.
"""

from __future__ import annotations

import pytest

from her_sdk import Character, ConfigError, LimitExceededError, MockBackend
from her_sdk._backends._scheduler import PRIORITIES, Scheduler, priority_rank


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_priority_names():
    assert priority_rank("player") > priority_rank("normal") > priority_rank("background")
    assert set(PRIORITIES) == {"player", "normal", "background"}
    for bad in ("urgent", "", None, 1):
        with pytest.raises(ConfigError, match="priority must be one of"):
            priority_rank(bad)  # type: ignore[arg-type]


def test_admission_by_priority_then_age_of_request():
    s: Scheduler[str] = Scheduler(clock=Clock())
    for name, prio in [
        ("bg1", "background"),
        ("n1", "normal"),
        ("p1", "player"),
        ("bg2", "background"),
        ("p2", "player"),
    ]:
        s.submit(name, priority_rank(prio))
    assert s.admit(0) == []
    assert s.admit(3) == ["p1", "p2", "n1"]
    assert s.admit(5) == ["bg1", "bg2"]
    assert s.admit(1) == [] and len(s) == 0


def test_a_background_turn_never_starves_behind_player_turns():
    clock = Clock()
    s: Scheduler[str] = Scheduler(age_bound_s=2.0, clock=clock)
    s.submit("bg", priority_rank("background"))
    for i in range(5):  # a steady stream of player turns, one sequence free at a time
        clock.t += 0.5
        s.submit(f"p{i}", priority_rank("player"))
        started = s.admit(1)
        if clock.t < 2.0:
            assert started == [f"p{i}"]
        else:  # waited past the age bound: counts as top priority, and is older
            assert started == ["bg"]
            break
    else:
        pytest.fail("the background turn was never admitted")


def test_the_waiting_queue_is_bounded():
    s: Scheduler[int] = Scheduler(max_waiting=2)
    s.submit(1, 1)
    s.submit(2, 1)
    with pytest.raises(LimitExceededError, match="max_waiting=2"):
        s.submit(3, 2)
    assert s.remove(1) and not s.remove(1)
    s.submit(3, 2)  # room again
    assert s.admit(2) == [3, 2]


def test_decode_choice_favours_the_top_priority_and_never_starves_the_rest():
    s: Scheduler[int] = Scheduler(lower_every=4)
    player, bg = priority_rank("player"), priority_rank("background")
    ranks = [bg, player, bg, bg, bg]
    seen = dict.fromkeys(range(5), 0)
    for step in range(1, 9):
        chosen = s.decoders(ranks, player, step)
        assert 1 in chosen  # the player's turn decodes every step
        assert chosen == ([0, 1, 2, 3, 4] if step % 4 == 0 else [1])  # the rest in bulk
        for i in chosen:
            seen[i] += 1
    assert seen[1] == 8 and all(seen[i] == 2 for i in (0, 2, 3, 4))
    # Without a higher priority present, everyone decodes every step.
    assert s.decoders([bg, bg, bg, bg], bg, 1) == [0, 1, 2, 3]
    # A player's prompt still being read (top from that turn) already holds the others back.
    assert s.decoders([bg] * 6, player, 1) == []


def test_lower_priority_prompts_are_read_less_often():
    s: Scheduler[int] = Scheduler(lower_read_every=4)
    assert all(s.reads(2, 2, step) for step in range(8))
    assert [s.reads(0, 2, step) for step in range(1, 9)].count(True) == 2


def test_bad_settings():
    with pytest.raises(ConfigError):
        Scheduler(lower_every=0)
    with pytest.raises(ConfigError):
        Scheduler(age_bound_s=0)


class RecordingBackend(MockBackend):
    """A mock engine that says it schedules, and records the priority of each turn."""

    schedules = True

    def __init__(self) -> None:
        super().__init__(lambda prompt: "<system_thinking>Plan.</system_thinking>Mara: Halt.")
        self.priorities: list[str] = []

    def stream(self, prompt, *, priority="normal", **kw):
        self.priorities.append(priority)
        return super().stream(prompt, **kw)


def test_priority_reaches_a_scheduling_backend_from_character_and_scene():
    from her_sdk import Scene

    model = RecordingBackend()
    c = Character(name="Mara", profile="Gate captain.", model=model)
    c.hear("Player", "Open up.")
    assert c.reply(priority="player").speech == "Halt."
    scene = Scene(seed=1)
    scene.add(Character(name="Jory", model=model))
    scene.add_player("Player")
    scene.turn("Jory", priority="background")
    scene.turn("Jory")
    assert model.priorities == ["player", "background", "normal"]


def test_priority_is_checked_before_the_turn_and_ignored_by_plain_backends():
    model = MockBackend(["<system_thinking>Plan.</system_thinking>Mara: Halt."])
    assert not model.schedules
    c = Character(name="Mara", model=model)
    with pytest.raises(ConfigError, match="priority"):
        c.stream(priority="urgent")
    assert c.turns_taken == 0
    assert c.reply(priority="player").speech == "Halt."  # a plain backend just runs it
