"""Long games: the SDK's own cost per turn as a scene's history grows, on the mock backend.

    .venv/bin/python benchmarks/long_session.py [--events 10,1000,10000] [--window 50]
                                                [--profile OUT.prof] [--json OUT.json]

A two-NPC scene (Mara and Jory) and a player play the same loop for thousands of steps: one
player line, then one NPC turn (the two NPCs take turns). Every NPC hears everything, so at
10,000 events in the scene each character holds 10,000 memories (`max_long_term` is raised to
hold them all). The backend is `MockBackend`, answering with generated lines at once, so what is
timed is her_sdk's Python only: perception, memory, recall, prompt rendering, parsing.

Lines are generated, not cycled from a short list: content words come from a Zipf
distribution over a vocabulary of a few hundred game words and a long tail of made-up words, so
a few terms ("gate", "captain") recur in a large share of all memories, as in a long game, and
recall meets both common and rare terms.

Prints, at each checkpoint (--events: the number of events in the scene when measured):
- median and p90 wall milliseconds per step (player line + NPC turn) over --window steps;
- recall work per turn, counted in operations (`MemoryStore.recall_cost`: postings scored,
  memories walked in the recency and importance files, memories scored; and postings counted in
  C): what tests/test_long_session.py bounds, free of the machine's load;
- how often the recall of a turn returned exactly what scoring the whole store would (checked
  before each measured turn, untimed);
- the process's RSS.
The header names the CPU and its vector extensions (from /proc/cpuinfo), since figures from
different machines are not comparable.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import statistics
import time

from _machine import cpu_header

from her_sdk import Character, MockBackend, Scene

PLAYER = "Traveler"
NPCS = ("Mara", "Jory")


def words(text: str) -> list[str]:
    return text.split()


# The game's own words, most frequent first (Zipf ranks).
CORE = words(
    """gate captain north road night guard duke cart wine rain town river key letter papers
brother smuggler barrel coin sword horse market bridge tower wall lantern inn bread fire
mill dragon crown king queen lord daughter son mother father sister husband wife child
ferry boat harbor ship storm winter summer dawn dusk moon star forest hill mountain cave
village castle church bell priest witch healer herb poison blood wound death secret promise
debt gold silver chalice ring map scroll book candle door window stair cellar roof yard
well stone oak pine wolf bear fox crow raven owl hound cat rat snake bee honey apple pear
plum cheese meat fish salt ale mead soup stew pie cake feast song dance drum flute harp
story rumour news war peace treaty army soldier archer knight squire thief beggar merchant
farmer miller baker smith tailor weaver potter mason carpenter hunter trapper shepherd
rebel rifle powder musket arrow bow shield helmet armour cloak boot glove hat belt purse
bag chest box crate sack rope chain lock hinge nail hammer axe saw knife spoon cup bowl
plate jug bottle flask cask keg tavern stable barn field orchard garden meadow marsh
swamp lake pond stream spring fountain statue shrine tomb grave ghost spirit curse spell
charm omen dream vision prophecy oath vow betrayal escape prison cell jailer judge law
tax toll fee price bargain trade deal contract seal stamp ink quill parchment"""
)

FRAMES = [
    "Have you seen the {0} near the {1}?",
    "The {0} was taken from the {1} last {2}.",
    "I heard a {0} about the {1} and the {2}.",
    "Tell me where the {0} is, or the {1} will know.",
    "We need a {0} before the {1} closes.",
    "My {0} swore the {1} was safe.",
    "Why is the {0} guarded tonight?",
    "Someone left a {0} by the {1}, wrapped in a {2}.",
    "The {0} and the {1} are not what they seem.",
    "Bring the {0} to the {1} at {2}.",
    "Is it true the {0} burned the {1}?",
    "I will pay for the {0} with {1}.",
]
ACTIONS = [
    "looks at the {0}",
    "points toward the {0}",
    "sets the {0} on the {1}",
    "steps closer to the {0}",
    "glances at the {0} and the {1}",
]
THOUGHTS = [
    "The {0} worries me more than the {1}.",
    "If the {0} is here, the {1} cannot be far.",
    "I should not trust talk of the {0}.",
]


def made_up_words(n: int, rng: random.Random) -> list[str]:
    """`n` distinct pronounceable words that are in no dictionary: the long tail."""
    onsets = words("b br c ch d dr f g gr h k l m n p pr r s st t th tr v w z")
    vowels = words("a e i o u ae ai ea ie ou")
    codas = ["", "n", "r", "l", "st", "th", "m", "nd", "rk", "x"]
    out: dict[str, None] = {}
    while len(out) < n:
        w = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.randint(1, 3)))
        out[w + rng.choice(codas)] = None
    return list(out)


class Lines:
    """Generated game lines; content words Zipf-distributed over CORE and a made-up tail."""

    def __init__(self, seed: int = 0, tail: int = 5000) -> None:
        self.rng = random.Random(seed)
        self.words = CORE + made_up_words(tail, random.Random(seed + 1))
        weights = [1.0 / (r + 1) for r in range(len(self.words))]
        total = 0.0
        self._cum = []
        for w in weights:
            total += w
            self._cum.append(total)

    def word(self) -> str:
        return self.rng.choices(self.words, cum_weights=self._cum)[0]

    def fill(self, frame: str) -> str:
        return frame.format(*(self.word() for _ in range(frame.count("{"))))

    def player(self) -> str:
        return " ".join(self.fill(self.rng.choice(FRAMES)) for _ in range(self.rng.randint(1, 2)))

    def turn(self, name: str) -> str:
        """A whole HER turn as a model writes it: plan, thought, action, speech."""
        plan = self.fill("{0} matters here; answer about the {1} and keep the {2} hidden.")
        thought = self.fill(self.rng.choice(THOUGHTS))
        action = self.fill(self.rng.choice(ACTIONS))
        speech = self.fill(self.rng.choice(FRAMES))
        return (
            f"<system_thinking>{plan}</system_thinking>{name}: "
            f"<role_thinking>{thought}</role_thinking><role_action>{action}</role_action>{speech}"
        )


def npc_backend(name: str, lines: Lines) -> MockBackend:
    def handler(prompt: str) -> str:
        if "What happened after that:" in prompt:  # a summary fold
            return lines.fill("I remember the {0}, the {1} and the {2}; nothing else matters.")
        return lines.turn(name)

    backend = MockBackend(handler)
    return backend


class Session:
    """The scene of the benchmark, played one step (player line + NPC turn) at a time."""

    def __init__(self, seed: int = 0, max_long_term: int = 20_000) -> None:
        self.lines = Lines(seed)
        self.backends = {n: npc_backend(n, self.lines) for n in NPCS}
        self.characters = [
            Character(
                name=n,
                source="the border town of Vell",
                profile=f"{n} lives in Vell and knows everyone at the north gate.",
                model=self.backends[n],
                max_long_term=max_long_term,
            )
            for n in NPCS
        ]
        self.scene = Scene(self.characters, player=PLAYER, seed=seed)
        self.steps = 0

    @property
    def events(self) -> int:
        return self.scene.clock

    @property
    def speaker(self) -> Character:
        """The NPC whose turn comes next."""
        return self.characters[self.steps % len(self.characters)]

    def say(self) -> None:
        self.scene.say(PLAYER, self.lines.player())

    def turn(self) -> None:
        self.scene.turn(self.speaker.name)
        self.steps += 1
        for b in self.backends.values():
            b.prompts.clear()  # the mock's record of prompts is the test double's, not the SDK's

    def step(self) -> None:
        self.say()
        self.turn()

    def fill(self, events: int) -> None:
        """History without generated turns, to reach a long game fast: player lines and the
        NPCs' scripted lines (an action and speech, heard by everyone, the NPC included)."""
        while self.events < events:
            self.say()
            if self.events < events:
                name = self.characters[self.events % len(self.characters)].name
                action = self.lines.fill(self.lines.rng.choice(ACTIONS))
                self.scene.say(name, self.lines.fill(self.lines.rng.choice(FRAMES)), action)


def same_recall(c: Character) -> bool:
    """Whether `c`'s prompt for its next turn, made with the bounded recall, is the prompt that
    scoring every memory would make (a look at the prompt recalls without marking)."""
    store = c.long_term
    budget = store.candidates
    got = c.prompt().text
    store.candidates = None
    try:
        want = c.prompt().text
    finally:
        store.candidates = budget
    return got == want


def rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(session: Session, window: int, check: bool = True) -> dict:
    """Time `window` steps; count the recall work of each turn; check recall against the
    exact scorer before each turn (untimed)."""
    times, work, counted, same = [], [], [], 0
    events, memories = session.events, min(len(c.long_term) for c in session.characters)
    for _ in range(window):
        t0 = time.perf_counter()
        session.say()
        t1 = time.perf_counter()
        if check:
            same += same_recall(session.speaker)
        t2 = time.perf_counter()
        speaker = session.speaker
        session.turn()
        times.append(t1 - t0 + time.perf_counter() - t2)
        cost = speaker.long_term.recall_cost
        work.append(cost["postings"] + cost["walked"] + cost["scored"])
        counted.append(cost["counted"])
    times.sort()
    return {
        "events": events,
        "memories_per_npc": memories,
        "median_ms": 1000 * statistics.median(times),
        "p90_ms": 1000 * times[int(0.9 * (len(times) - 1))],
        "recall_work": statistics.median(work),
        "recall_counted": statistics.median(counted),
        "same_recall": same / window if check else None,
        "rss_mb": rss_mb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", default="10,1000,10000", help="checkpoints (events in the scene)")
    ap.add_argument("--window", type=int, default=50, help="steps measured at each checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-check", action="store_true", help="skip the exact-recall comparison")
    ap.add_argument("--profile", default=None, help="cProfile the last window into this file")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    checkpoints = [int(x) for x in args.events.split(",")]
    print(cpu_header(), flush=True)
    print(
        f"Python {platform.python_version()}; MockBackend; {len(NPCS)} NPCs + player, "
        f"one player line + one NPC turn per step; {args.window} steps per checkpoint",
        flush=True,
    )
    session = Session(args.seed)
    rows = []
    t_start = time.perf_counter()
    for i, target in enumerate(checkpoints):
        while session.events < target:
            session.step()
        prof = None
        if args.profile and i == len(checkpoints) - 1:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        row = measure(session, args.window, check=not args.no_check)
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
        rows.append(row)
        same = "" if row["same_recall"] is None else f"; same as exact {row['same_recall']:.0%}"
        print(
            f"at {row['events']:>6} events ({row['memories_per_npc']:>5} memories per NPC): "
            f"{row['median_ms']:6.2f} ms per step median, {row['p90_ms']:6.2f} p90; recall "
            f"work {row['recall_work']:.0f} (+{row['recall_counted']:.0f} postings counted)"
            f"{same}; RSS {row['rss_mb']:.0f} MB",
            flush=True,
        )
    print(
        f"last / first checkpoint: {rows[-1]['median_ms'] / rows[0]['median_ms']:.2f}x per step "
        f"({session.steps} steps played in {time.perf_counter() - t_start:.0f} s)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_header(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
