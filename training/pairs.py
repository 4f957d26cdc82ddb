"""Preference data for the HER reward model: automatic corrupted pairs and teacher judgments.

    from her_sdk.training.pairs import auto_pairs, judge_sft_rows
    from her_sdk.training.tiny import synthetic_samples
    pairs = auto_pairs(synthetic_samples(64), seed=0)   # gold turn vs a corrupted copy
    rows = judge_sft_rows(pairs)                         # trl prompt/completion, both orders

Without a teacher, a pair is a sample's gold turn against a copy with one verifiable fault
(`CORRUPTIONS`), each tied to the negative principle it violates (`auto:` in principles.yaml):

    thought_leak     an inner thought is also spoken aloud               DI2
    other_voice      the speech is a line another character said         CD1
    broken_tags      a role tag is left unclosed / half written          AD2
    repetition       the speech loops                                    DD2
    knowledge_leak   knowledge from outside the story world              WC1
    speak_for_other  the turn writes the other character's reply         RD2

`detect(text, ...)` finds each fault in any turn text; `corrupt` only keeps a corrupted copy in
which the fault is detected and the gold turn has none, so every automatic label is checked.
`heuristic_judge` is a rule-based judge on the same detectors (a MockBackend handler): an
in-process judge for tiny RL runs and a teacher that needs no model. `teacher_rows` asks any
her_sdk Backend to judge pairs (both orders) and keeps its position-consistent verdicts.

This module builds data; it does not train. Samples come from `training.data` (their `her`
field); all HER rendering and parsing goes through `her_sdk.format`.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Sequence

from her_sdk import Backend, MockBackend, Persona
from her_sdk.format import ENVIRONMENT, TAG, Heard, Segment, Turn, parse_turn, render_turn

from .data import decode_her
from .judge import SLOTS, Judge, judge_messages, render_verdict
from .principles import PrincipleSet, load_principles

__all__ = [
    "CORRUPTIONS",
    "auto_pairs",
    "corrupt",
    "detect",
    "heuristic_judge",
    "judge_sft_rows",
    "repetition_ratio",
    "tag_errors",
    "teacher_rows",
]

CORRUPTIONS = (
    "thought_leak",
    "other_voice",
    "broken_tags",
    "repetition",
    "knowledge_leak",
    "speak_for_other",
)

# Out-of-world knowledge for `knowledge_leak`; every line carries one of `_KNOWLEDGE_MARKERS`.
_KNOWLEDGE_LINES = [
    "I looked you up on my smartphone before you came.",
    "I read all about it on the internet last night.",
    "Send me an email with the details, {other}.",
    "My GPS says we are two miles from the river.",
    "It is just like in that movie from 1999.",
    "Wikipedia says your family lost everything, {other}.",
    "I saw the whole thing on television.",
]
_KNOWLEDGE_MARKERS = re.compile(
    r"\b(smartphone|internet|e-?mail|gps|wikipedia|television|movie from \d{4}|on my phone)\b", re.I
)
_OTHER_REPLIES = [
    "Fine. You win, have it your way.",
    "I agree to everything you said.",
    "Yes, I will do exactly as you ask.",
]
_WORD = re.compile(r"[\w']+")


# ---------------------------------------------------------------------------------------------
# Detectors (used to verify corruptions, by the heuristic judge, and by RL rewards)
# ---------------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def tag_errors(text: str) -> int:
    """How many HER tag faults `text` has: unclosed, unopened or nested role/plan tags."""
    names = {v: k for k, v in TAG.items()}  # tag name -> channel
    errors, open_tag = 0, None
    for m in re.finditer(r"<\s*(/?)\s*([A-Za-z_]+)\s*>", text):
        name = m.group(2).lower()
        if name not in names:
            continue
        closing = m.group(1) == "/"
        if not closing:
            if open_tag is not None:
                errors += 1  # nested, or the previous section was never closed
            open_tag = name
        elif open_tag == name:
            open_tag = None
        else:
            errors += 1  # closes something that is not open
    return errors + (open_tag is not None)


def repetition_ratio(text: str, n: int = 3) -> float:
    """Share of repeated word n-grams (0: none; ~1: a loop)."""
    words = _WORD.findall(text.lower())
    if len(words) < n + 1:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def _others(persona: Persona, history: Sequence[Heard | Turn]) -> list[str]:
    names = [h.speaker for h in history if isinstance(h, Heard) and h.speaker != ENVIRONMENT]
    names += [*persona.others, *persona.relationships]
    return [n for n in dict.fromkeys(names) if n and n != persona.name]


def _other_lines(history: Sequence[Heard | Turn], name: str) -> list[tuple[str, str]]:
    return [
        (h.speaker, h.speech)
        for h in history
        if isinstance(h, Heard) and h.speaker not in (ENVIRONMENT, name) and h.speech.strip()
    ]


def detect(
    text: str,
    name: str,
    *,
    others: Sequence[str] = (),
    other_lines: Sequence[str] = (),
    context: str = "",
) -> set[str]:
    """The corruption kinds present in turn `text` of character `name`.

    `others`: names of the other characters; `other_lines`: what they said; `context`: the
    text the character legitimately knows (sheet + conversation), for `knowledge_leak`.
    """
    found: set[str] = set()
    turn = parse_turn(text, name)
    speech_n = _norm(turn.speech)
    if any(len(_norm(t)) >= 12 and _norm(t) in speech_n for t in turn.thoughts):
        found.add("thought_leak")
    if any(len(_norm(line)) >= 8 and _norm(line) in speech_n for line in other_lines):
        found.add("other_voice")
    if tag_errors(text):
        found.add("broken_tags")
    if repetition_ratio(turn.speech) >= 0.5 or repetition_ratio(text) >= 0.6:
        found.add("repetition")
    known = set(m.lower() for m in _KNOWLEDGE_MARKERS.findall(context))
    if any(m.lower() not in known for m in _KNOWLEDGE_MARKERS.findall(text)):
        found.add("knowledge_leak")
    for other in others:
        o = re.escape(other)
        # the other character's own speaker label inside this turn, or an action they perform
        if re.search(rf"(^|[\n>.!?\"]\s*){o}\s*:", text) or any(
            a.strip().startswith(other + " ") for a in turn.actions
        ):
            found.add("speak_for_other")
            break
    return found


def _context_text(persona: Persona, history: Sequence[Heard | Turn]) -> str:
    parts = [persona.name, persona.profile, persona.background, persona.scenario, persona.goals]
    for h in history:
        if isinstance(h, Heard):
            parts += [h.speech, *h.actions]
        else:
            parts += [h.speech, *h.actions, *h.thoughts]
    return "\n".join(p for p in parts if p)


def detect_in_sample(text: str, persona: Persona, history: Sequence[Heard | Turn]) -> set[str]:
    return detect(
        text,
        persona.name,
        others=_others(persona, history),
        other_lines=[s for _, s in _other_lines(history, persona.name)],
        context=_context_text(persona, history),
    )


# ---------------------------------------------------------------------------------------------
# Corruptions
# ---------------------------------------------------------------------------------------------


def _public_turn(gold: Turn) -> Turn:
    return Turn.from_segments(s for s in gold.segments if s.channel != "plan")


def _with_speech(gold: Turn, speech: str) -> Turn:
    segs = [s for s in gold.segments if s.channel not in ("plan", "speech")]
    return Turn.from_segments([*segs, Segment("speech", speech)])


def _corrupt_raw(
    kind: str, persona: Persona, history: Sequence[Heard | Turn], gold: Turn, rng: random.Random
) -> str | None:
    name = persona.name
    turn = _public_turn(gold)
    others = _others(persona, history)
    other = others[0] if others else None
    if kind == "thought_leak":
        thoughts = [t for t in turn.thoughts if len(_norm(t)) >= 12]
        if not thoughts:
            return None
        leaked = rng.choice(thoughts)
        return render_turn(_with_speech(turn, f"{leaked} {turn.speech}".strip()), name)
    if kind == "other_voice":
        lines = [
            s
            for _, s in _other_lines(history, name)
            if len(_norm(s)) >= 8 and _norm(s) not in _norm(turn.speech)
        ]
        if not lines:
            return None
        return render_turn(_with_speech(turn, rng.choice(lines)), name)
    if kind == "broken_tags":
        text = render_turn(turn, name)
        closers = [f"</{TAG[c]}>" for c in ("thought", "action") if f"</{TAG[c]}>" in text]
        if closers:
            closer = rng.choice(closers)
            return text.replace(closer, "", 1)  # an unclosed section swallows what follows
        return f"{name}: <{TAG['action']}>{turn.speech}"
    if kind == "repetition":
        base = turn.speech or " ".join(turn.actions)
        if len(_WORD.findall(base)) < 2:
            return None
        return render_turn(_with_speech(turn, " ".join([base] * rng.randint(4, 6))), name)
    if kind == "knowledge_leak":
        line = rng.choice(_KNOWLEDGE_LINES).format(other=other or "friend")
        return render_turn(_with_speech(turn, f"{turn.speech} {line}".strip()), name)
    if kind == "speak_for_other":
        if not other:
            return None
        reply = rng.choice(_OTHER_REPLIES)
        return (
            render_turn(turn, name) + f"\n{other}: <{TAG['action']}>nods</{TAG['action']}>{reply}"
        )
    raise ValueError(f"unknown corruption {kind!r}; use one of {CORRUPTIONS}")


def corrupt(
    kind: str,
    persona: Persona,
    history: Sequence[Heard | Turn],
    gold: Turn,
    rng: random.Random | None = None,
) -> str | None:
    """A corrupted copy of `gold` (raw turn text, plan stripped) with fault `kind`, or None when
    the sample cannot carry it (e.g. no thought to leak). The fault is verified with `detect`,
    and a gold turn with any detectable fault gives None (the label would be wrong)."""
    rng = rng or random.Random(0)
    text = _corrupt_raw(kind, persona, history, gold, rng)
    if text is None:
        return None
    gold_text = render_turn(_public_turn(gold), persona.name)
    if kind not in detect_in_sample(text, persona, history):
        return None
    if detect_in_sample(gold_text, persona, history):
        return None  # a gold turn with a fault of its own would make the label wrong
    return text


# ---------------------------------------------------------------------------------------------
# Pairs and judge SFT rows
# ---------------------------------------------------------------------------------------------


def auto_pairs(
    samples: Iterable[dict],
    *,
    kinds: Sequence[str] = CORRUPTIONS,
    per_sample: int = 1,
    seed: int = 0,
) -> list[dict]:
    """Gold-vs-corrupted pairs from SFT samples (rows with a `her` field, see `training.data`).

    Each pair: `id`, `split` (the sample's), `kind`, `character`, `her` (the sample's structured
    inputs), `chosen` (gold turn text, plan stripped), `rejected` (corrupted text).
    Kinds rotate over samples so every corruption is represented.
    """
    for k in kinds:
        if k not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {k!r}; use one of {CORRUPTIONS}")
    rng = random.Random(seed)
    out: list[dict] = []
    turn_no = 0
    for s in samples:
        if "her" not in s:
            continue
        persona, history, gold = decode_her(s)
        made = 0
        for j in range(len(kinds)):
            if made >= per_sample:
                break
            kind = kinds[(turn_no + j) % len(kinds)]
            bad = corrupt(kind, persona, history, gold, rng)
            if bad is None:
                continue
            made += 1
            key = f"{s.get('id', turn_no)}|{kind}"
            out.append(
                {
                    "id": hashlib.sha1(key.encode()).hexdigest()[:16],
                    "split": s.get("split", "train"),
                    "kind": kind,
                    "character": persona.name,
                    "her": s["her"],
                    "chosen": render_turn(_public_turn(gold), persona.name),
                    "rejected": bad,
                }
            )
        turn_no += 1
    return out


def _pair_inputs(pair: dict) -> tuple[Persona, list[Heard | Turn]]:
    persona, history, _ = decode_her(pair)
    return persona, history


def _label_verdict(pair: dict, gold_slot: str, principles: PrincipleSet) -> str:
    bad_slot = "cand_2" if gold_slot == "cand_1" else "cand_1"
    violated = [p.id for p in principles.for_corruption(pair["kind"])]
    applicable = [*violated, *[i for i in ("DI1", "OQ1") if i in principles]]
    return render_verdict(gold_slot, applicable, {bad_slot: violated, gold_slot: []})


def judge_sft_rows(
    pairs: Iterable[dict],
    *,
    principles: PrincipleSet | None = None,
    detail: str = "brief",
    both_orders: bool = True,
    max_history: int | None = 12,
    seed: int = 0,
) -> list[dict]:
    """trl prompt/completion rows teaching the judge the labelled verdict of each pair.

    `both_orders`: each pair appears with the gold turn as cand_1 and as cand_2 (balanced
    labels, no position shortcut); otherwise the gold slot is random. Rows carry `label`
    (the gold slot) for accuracy and for the judge's verifiable RL reward.
    """
    ps = principles if principles is not None else load_principles()
    rng = random.Random(seed)
    rows = []
    for pair in pairs:
        persona, history = _pair_inputs(pair)
        slots = list(SLOTS) if both_orders else [rng.choice(SLOTS)]
        for gold_slot in slots:
            if "completion_text" in pair:  # a teacher's verdict, already for this order
                if pair.get("label") != gold_slot:
                    continue
                verdict = pair["completion_text"]
            else:
                verdict = _label_verdict(pair, gold_slot, ps)
            c1, c2 = (
                (pair["chosen"], pair["rejected"])
                if gold_slot == "cand_1"
                else (pair["rejected"], pair["chosen"])
            )
            rows.append(
                {
                    "id": f"{pair['id']}:{gold_slot}",
                    "split": pair.get("split", "train"),
                    "kind": pair.get("kind", ""),
                    "label": gold_slot,
                    "prompt": judge_messages(
                        persona,
                        history,
                        c1,
                        c2,
                        principles=ps,
                        detail=detail,
                        max_history=max_history,
                    ),
                    "completion": [{"role": "assistant", "content": verdict}],
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------
# Rule-based judge and teacher judgments
# ---------------------------------------------------------------------------------------------

_SECTION = re.compile(r"^=== (.+?) ===\n(.*?)(?=\n\n=== |\n\nWhich is the better)", re.S | re.M)
_FOR = re.compile(r"Which is the better next turn for (.+?)\?")


def heuristic_judge(prompt: str) -> str:
    """A rule-based judge answering a judge prompt (use as `MockBackend(heuristic_judge)`).

    Flags each candidate's detectable faults (the corruptions above), maps them to the
    principles they violate, and prefers the candidate with fewer faults (tie when equal).
    It judges structure and consistency, not literary quality.
    """
    ps = load_principles()
    sections = {k: v for k, v in _SECTION.findall(prompt)}
    m = _FOR.search(prompt)
    name = m.group(1) if m else ""
    conv = sections.get("Conversation so far", "")
    others, lines = [], []
    for line in conv.splitlines():
        speaker, sep, rest = line.partition(": ")
        if sep and speaker not in (ENVIRONMENT, name):
            others.append(speaker)
            lines.append(parse_turn(rest).speech)
    context = sections.get("Character sheet", "") + "\n" + conv
    faults = {}
    for slot in SLOTS:
        text = sections.get(slot, "")
        found = detect(
            text, name, others=list(dict.fromkeys(others)), other_lines=lines, context=context
        )
        if not parse_turn(text, name).speech and not parse_turn(text, name).actions:
            found.add("broken_tags")  # nothing visible: not a well-formed turn
        faults[slot] = sorted({p.id for k in found for p in ps.for_corruption(k)})
    n1, n2 = len(faults["cand_1"]), len(faults["cand_2"])
    better = "tie" if n1 == n2 else ("cand_1" if n1 < n2 else "cand_2")
    applicable = sorted(set(faults["cand_1"]) | set(faults["cand_2"])) or ["OQ1"]
    return render_verdict(better, applicable, faults)


def heuristic_backend() -> MockBackend:
    return MockBackend(heuristic_judge)


def teacher_rows(
    pairs: Iterable[dict],
    teacher: Backend,
    *,
    principles: PrincipleSet | None = None,
    detail: str = "brief",
    retries: int = 1,
    concurrency: int = 4,
    keep_inconsistent: bool = False,
) -> tuple[list[dict], dict[str, int]]:
    """Ask a teacher backend to judge each pair in both orders; keep its verdicts as SFT rows.

    Pairs here need `chosen`/`rejected` only as two candidates (`kind` may be empty, e.g. two
    policy samples); the label is the teacher's own combined verdict. Position-inconsistent or
    unreadable judgments are dropped unless `keep_inconsistent`. Returns (pair records with
    `completion_text` + `label`, counts).
    """
    ps = principles if principles is not None else load_principles()
    judge = Judge(teacher, principles=ps, detail=detail, retries=retries, concurrency=concurrency)
    pairs = list(pairs)
    items = []
    for pair in pairs:
        persona, history = _pair_inputs(pair)
        items.append((persona, history, pair["chosen"], pair["rejected"]))
    comps = judge.compare_many(items, both_orders=True)
    kept: list[dict] = []
    counts = {"pairs": len(pairs), "kept": 0, "inconsistent": 0, "abstained": 0}
    for pair, comp in zip(pairs, comps, strict=True):
        if any(v is None for v in comp.verdicts):
            counts["abstained"] += 1
            continue
        if not comp.consistent and not keep_inconsistent:
            counts["inconsistent"] += 1
            continue
        for v, gold_slot_if_a_wins in zip(comp.verdicts, SLOTS, strict=True):
            # v judged (a, b) when gold_slot_if_a_wins == cand_1, else (b, a)
            label = v.better
            if label == "tie":
                continue
            a_won = label == gold_slot_if_a_wins
            rec = dict(pair, completion_text=v.raw.strip(), label=gold_slot_if_a_wins)
            if not a_won:  # the teacher preferred `rejected`: swap so `chosen` is its winner
                rec = dict(
                    pair,
                    chosen=pair["rejected"],
                    rejected=pair["chosen"],
                    completion_text=v.raw.strip(),
                    label=label,
                )
            kept.append(rec)
            counts["kept"] += 1
    return kept, counts
