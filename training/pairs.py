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

HER's own reward data (`her data rm-pairs`, `rm_pairs`): several samples of the SFT policy per
prompt, paired with each other, each pair judged by a strong teacher in both orders. The
teacher's whole answer (its reasoning, the principles it applied) is the judge's training
target, ties included, so the reward model sees what it faces in RL: two clean candidates.
Corrupted pairs are an optional addition (`corruptions`). `length_balance` reports how often
the preferred candidate is the longer one, so a "longer/shorter wins" shortcut is visible.

This module builds data; it does not train. Samples come from `training.data` (their `her`
field); all HER rendering and parsing goes through `her_sdk.format`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from her_sdk import Backend, ConfigError, MockBackend, Persona, Sampling
from her_sdk.format import (
    ENVIRONMENT,
    TAG,
    Heard,
    Segment,
    Turn,
    parse_turn,
    render_prompt,
    render_turn,
)

from .data import decode_her, encode_her, read_jsonl, write_jsonl
from .judge import (
    DEFAULT_MAX_TOKENS,
    SLOTS,
    Judge,
    Verdict,
    candidate_text,
    her_result,
    her_rm_messages,
    judge_messages,
    parse_verdict,
    render_verdict,
    winner_pattern,
)
from .plans import JobReport, Outcome, ask_teacher, generate_text, run_jobs, seed_for
from .principles import PrincipleSet, load_principles

__all__ = [
    "CORRUPTIONS",
    "auto_pairs",
    "corrupt",
    "detect",
    "heuristic_judge",
    "judge_sft_rows",
    "length_balance",
    "mock_policy",
    "repetition_ratio",
    "rl_references",
    "rm_pairs",
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
    raise ConfigError(f"unknown corruption {kind!r}; use one of {CORRUPTIONS}")


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
            raise ConfigError(f"unknown corruption {k!r}; use one of {CORRUPTIONS}")
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


def _teacher_order(pair: dict) -> tuple[str, str]:
    """(cand_1, cand_2) as the teacher saw them."""
    if "cand_1" in pair:
        return pair["cand_1"], pair["cand_2"]
    # older records: `chosen` sits in the slot named by `label`
    if pair.get("label") == "cand_2":
        return pair["rejected"], pair["chosen"]
    return pair["chosen"], pair["rejected"]


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
    prompt_format: str = "sdk",
) -> list[dict]:
    """trl prompt/completion rows teaching the judge the labelled verdict of each pair.

    `prompt_format="her_rm"` builds HER-RM's rows (construct_rm_training_data.py lines
    250-285): HER-RM's prompt without a principle list, and as target the teacher's JSON
    `result` in a ```json fence; only teacher records of `rm_pairs(protocol="her")` have one.

    `both_orders`: each pair appears with the gold turn as cand_1 and as cand_2 (balanced
    labels, no position shortcut); otherwise the gold slot is random. Rows carry `label`
    (the gold slot, or "tie") for accuracy and for the judge's verifiable RL reward. A teacher
    record (`teacher_rows`, `rm_pairs`: it has `completion_text`) is one judged order already
    and becomes one row whose target is the teacher's own answer, reasoning and ties included.
    """
    ps = principles if principles is not None else load_principles()
    if prompt_format not in ("sdk", "her_rm"):
        raise ConfigError("prompt_format must be sdk or her_rm")
    rng = random.Random(seed)
    rows = []
    for pair in pairs:
        persona, history = _pair_inputs(pair)
        if prompt_format == "her_rm":
            result = (
                her_result(pair.get("completion_text", "")) if "completion_text" in pair else None
            )
            if result is None:
                raise ConfigError(
                    "judge_prompt her_rm trains on HER's teacher answers: build the pairs with "
                    "`her data rm-pairs --protocol her`"
                )
            c1, c2 = _teacher_order(pair)
            answer = json.dumps(result, ensure_ascii=False, indent=2)
            rows.append(
                {
                    "id": f"{pair['id']}:{pair.get('order') or pair['label']}",
                    "split": pair.get("split", "train"),
                    "kind": pair.get("kind", ""),
                    "label": pair["label"],
                    "prompt": her_rm_messages(persona, history, c1, c2),
                    "completion": [{"role": "assistant", "content": f"```json\n{answer}\n```"}],
                }
            )
            continue
        if "completion_text" in pair:  # a teacher's verdict of one order: its own row
            c1, c2 = _teacher_order(pair)
            rows.append(
                {
                    "id": f"{pair['id']}:{pair.get('order') or pair['label']}",
                    "split": pair.get("split", "train"),
                    "kind": pair.get("kind", ""),
                    "label": pair["label"],
                    "prompt": judge_messages(
                        persona,
                        history,
                        c1,
                        c2,
                        principles=ps,
                        detail=detail,
                        max_history=max_history,
                    ),
                    "completion": [{"role": "assistant", "content": pair["completion_text"]}],
                }
            )
            continue
        slots = list(SLOTS) if both_orders else [rng.choice(SLOTS)]
        for gold_slot in slots:
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


def _order_records(
    base: dict, a: str, b: str, verdicts: Sequence[Verdict | None], *, keep_inconsistent: bool
) -> tuple[list[dict], str | None]:
    """Records of candidates a, b judged as (a, b) and (b, a): one per order, holding the
    teacher's answer (`completion_text`) and verdict (`label`: cand_1 | cand_2 | tie). `chosen`
    is the winner (for a tie, cand_1 of that order). Returns (records, why none)."""
    if any(v is None for v in verdicts):
        return [], "abstained"
    v_ab, v_ba = verdicts
    a_ab = 0.5 if v_ab.better == "tie" else float(v_ab.better == "cand_1")
    a_ba = 0.5 if v_ba.better == "tie" else float(v_ba.better == "cand_2")
    if a_ab != a_ba and not keep_inconsistent:
        return [], "inconsistent"
    out = []
    for order, (c1, c2), v in (("ab", (a, b), v_ab), ("ba", (b, a), v_ba)):
        win, lose = (c2, c1) if v.better == "cand_2" else (c1, c2)
        out.append(
            {
                **base,
                "order": order,
                "cand_1": c1,
                "cand_2": c2,
                "label": v.better,
                "completion_text": v.raw.strip(),
                "chosen": win,
                "rejected": lose,
            }
        )
    return out, None


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
    """Ask a teacher backend to judge each pair in both orders; keep its answers as records.

    Pairs here need `chosen`/`rejected` only as two candidates (`kind` may be empty, e.g. two
    policy samples). Each judged order becomes a record with the teacher's answer
    (`completion_text`, reasoning kept) and its verdict (`label`, ties kept); `judge_sft_rows`
    turns each into one judge SFT row. Pairs judged differently in the two orders
    (position bias) or unreadably are dropped unless `keep_inconsistent`. Returns (records,
    counts).
    """
    ps = principles if principles is not None else load_principles()
    judge = Judge(teacher, principles=ps, detail=detail, retries=retries, concurrency=concurrency)
    pairs = list(pairs)
    items = []
    for pair in pairs:
        persona, history = _pair_inputs(pair)
        items.append((persona, history, pair["chosen"], pair["rejected"]))
    comps = judge.compare_turns_many(items, both_orders=True)
    kept: list[dict] = []
    counts = {"pairs": len(pairs), "kept": 0, "inconsistent": 0, "abstained": 0, "ties": 0}
    for pair, comp in zip(pairs, comps, strict=True):
        base = {k: v for k, v in pair.items() if k not in ("chosen", "rejected")}
        recs, why = _order_records(
            base,
            pair["chosen"],
            pair["rejected"],
            comp.verdicts,
            keep_inconsistent=keep_inconsistent,
        )
        if why is not None:
            counts[why] += 1
            continue
        kept.extend(recs)
        counts["kept"] += len(recs)
        counts["ties"] += sum(r["label"] == "tie" for r in recs)
    return kept, counts


# ---------------------------------------------------------------------------------------------
# `her data rm-pairs`: policy samples judged by a teacher
# ---------------------------------------------------------------------------------------------

_MOCK_SHAPES = (
    "{name}: {speech}",
    "{name}: <role_action>{action}</role_action>{speech}",
    "{name}: <role_thinking>{thought}</role_thinking>{speech}",
    "{name}: <role_action>{action}</role_action><role_thinking>{thought}</role_thinking>{speech}",
    "{name}: {speech}<role_action>{action}</role_action>",
)
_MOCK_SPEECH = (
    "No.",
    "Not tonight.",
    "Say that again, slowly, and look at me while you do.",
    "I have heard that promise before, and it was worth nothing then either.",
    "Fine. Come in, sit by the fire, and tell me everything from the beginning.",
)
_MOCK_ACTIONS = ("folds both arms", "glances at the door", "sets the cup down hard")
_MOCK_THOUGHTS = ("He is hiding something", "I cannot show how tired I am", "Not yet")
_YOU_ARE = re.compile(r"You are (.+?)(?: from .+?)?\.\s*$", re.M)


def mock_policy() -> Callable[[str], str]:
    """A scripted stand-in policy (`--policy mock`): each call gives the next of a cycle of
    well-formed turns of varied shape and length for the character the prompt names. Each
    prompt has its own cycle, starting where its text says, so what a prompt gets does not
    depend on which thread asked first."""
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def handler(prompt: str) -> str:
        with lock:
            n = calls[prompt]
            calls[prompt] += 1
        i = int(hashlib.sha1(prompt.encode()).hexdigest()[:8], 16) + n
        m = _YOU_ARE.search(prompt)
        name = m.group(1) if m else "Character"
        shape = _MOCK_SHAPES[i % len(_MOCK_SHAPES)]
        return f"<system_thinking>{name} answers in character.</system_thinking>" + shape.format(
            name=name,
            speech=_MOCK_SPEECH[(i * 3) % len(_MOCK_SPEECH)],
            action=_MOCK_ACTIONS[i % len(_MOCK_ACTIONS)],
            thought=_MOCK_THOUGHTS[i % len(_MOCK_THOUGHTS)],
        )

    return handler


def _policy_candidates(
    policy: Backend,
    persona: Persona,
    history: Sequence[Heard | Turn],
    *,
    n: int,
    key: Any,
    temperature: float,
    max_tokens: int,
    timeout: float | None,
    retries: int,
    plan: bool = True,
) -> tuple[list[str], list[str]]:
    """Up to `n` distinct candidates (as the judge sees them) sampled from `policy`, and the
    reasons of failed attempts. A candidate needs something visible (speech or an action)."""
    prompt = render_prompt(
        persona,
        history,
        style=policy.prompt_style,
        plan=plan,
        chat_template=policy.chat_template,
        bos_token=policy.bos_token,
        eos_token=policy.eos_token,
        prefill=policy.prefills,
    )
    found: dict[str, None] = {}
    failures: list[str] = []
    for i in range(n + retries):
        if len(found) >= n:
            break
        sampling = Sampling(
            max_tokens=max_tokens, temperature=temperature, seed=seed_for(key, 1000 + i)
        )
        try:
            text = generate_text(policy, prompt.text, sampling, timeout, prompt.stop)
        except TimeoutError:
            failures.append("policy timeout")
            continue
        except Exception as exc:
            failures.append(f"policy error: {type(exc).__name__}")
            continue
        full = (prompt.prefill if policy.prefills else "") + text
        turn = parse_turn(full, persona.name)
        if not turn.speech.strip() and not turn.actions:
            failures.append("policy: nothing visible")
            continue
        cand = candidate_text(full, persona.name)
        if cand in found:
            failures.append("policy: duplicate")
            continue
        found[cand] = None
    return list(found), failures


def length_balance(records: Iterable[dict]) -> dict[str, Any]:
    """How often the preferred candidate is the longer one, once per pair (the two judged
    orders of a pair share its `id`); ties and equal lengths are left out. `chosen_longer`
    near 0.5 means length does not predict the label; `by_kind` splits teacher pairs
    ("policy") from each corruption kind."""
    pairs: dict[str, dict] = {}
    for r in records:
        pairs.setdefault(str(r.get("id")), r)
    ties = 0
    by_kind: dict[str, list[int]] = {}  # kind -> [chosen longer, decisive]
    for r in pairs.values():
        if r.get("label") == "tie":
            ties += 1
            continue
        chosen, rejected = str(r.get("chosen", "")), str(r.get("rejected", ""))
        if len(chosen) == len(rejected):
            continue
        k = by_kind.setdefault(str(r.get("kind") or "teacher"), [0, 0])
        k[0] += len(chosen) > len(rejected)
        k[1] += 1
    decisive = sum(v[1] for v in by_kind.values())
    longer = sum(v[0] for v in by_kind.values())
    return {
        "pairs": len(pairs),
        "ties": ties,
        "decisive": decisive,
        "chosen_longer": round(longer / decisive, 3) if decisive else None,
        "by_kind": {k: round(v[0] / v[1], 3) for k, v in sorted(by_kind.items())},
    }


def rm_pairs(
    input_path: str | Path,
    out_path: str | Path,
    policy: Backend,
    teacher: Backend,
    *,
    samples: int = 8,
    plan: bool = True,
    corruptions: Sequence[str] = (),
    principles: PrincipleSet | None = None,
    detail: str = "full",
    keep_inconsistent: bool = False,
    concurrency: int = 4,
    retries: int = 2,
    timeout: float | None = 300.0,
    temperature: float = 1.0,
    max_tokens: int = 1024,
    judge_max_tokens: int = 1024,
    protocol: str = "sdk",
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> JobReport:
    """HER's reward-model data from the samples of `input_path` (the `rm_sft` or `rm_rl`
    portion of `her data split`), written to `out_path` (resumable, see `plans.run_jobs`).
    The defaults are HER's: 8 samples (4 pairs) per prompt, each up to the RL rollouts'
    length (1,024 tokens), so the judge learns on turns like those it will judge.

    Per sample: `samples` distinct candidates from `policy` (the SFT model) for the sample's
    prompt (rendered as the runtime does; asking for a plan when `plan`), paired off (1-2,
    3-4, ...); `teacher` judges each pair in both orders with the judge prompt (`detail`
    "full": principle definitions too) and its answers are kept whole (one record per order,
    see `teacher_rows`), ties included; position-inconsistent pairs are dropped unless
    `keep_inconsistent`. `corruptions` (names from `CORRUPTIONS`) adds gold-vs-corrupted
    pairs of the same sample. A sample with no usable pair is dropped with
    its reason. Returns the run's `JobReport`; `stats` counts candidates, pairs, ties and
    drops, and `stats["length"]` is `length_balance` over the whole output file.

    `protocol="her"` asks the teacher as HER did (`judge.her_teacher_messages`: HER's prompt,
    the principle set to select from and add to, a JSON analysis per principle; 4,096 answer
    tokens at least) and keeps a judged order only when its answer uses at least 3 principles
    (filter_high_quality_sft.py); each record notes its `winner_pattern` (HER balances its
    judge's data by it) and its answer is what `judge_sft_rows(prompt_format="her_rm")` trains
    the judge to write on HER-RM's list-free prompt.
    """
    if protocol not in ("sdk", "her"):
        raise ConfigError("protocol must be sdk or her")
    if samples < 2 and not corruptions:
        raise ConfigError("rm_pairs needs samples >= 2 (or corruptions)")
    for k in corruptions:
        if k not in CORRUPTIONS:
            raise ConfigError(f"unknown corruption {k!r}; use one of {CORRUPTIONS}")
    ps = principles if principles is not None else load_principles()
    her = protocol == "her"
    judge = Judge(
        teacher, principles=ps, detail=detail, prompt_format="her_teacher" if her else "sdk"
    )
    if her:
        judge_max_tokens = max(judge_max_tokens, DEFAULT_MAX_TOKENS["her_teacher"])
    rows = read_jsonl(input_path)
    teacher_name = getattr(teacher, "name", "teacher")

    def read(text: str) -> tuple[Verdict | None, str | None]:
        v = parse_verdict(text, ps)
        if v is None:
            return None, "unreadable verdict"
        if her:
            result = her_result(text)
            if result is None or len(result.get("principle") or {}) < 3:
                return None, "fewer than 3 principles"
        return v, None

    def verdict(persona: Persona, history: list, c1: str, c2: str, key: str):
        prompt = judge.prompt(persona, history, c1, c2)
        return ask_teacher(
            teacher,
            prompt,
            read,
            key=key,
            retries=retries,
            timeout=timeout,
            temperature=0.0,
            max_tokens=judge_max_tokens,
        )

    def work(row: dict) -> Outcome:
        persona, history, gold = decode_her(row)
        sid = str(row.get("id"))
        cands, failures = _policy_candidates(
            policy,
            persona,
            history,
            n=samples,
            key=sid,
            temperature=temperature,
            max_tokens=max_tokens,
            timeout=timeout,
            retries=retries,
            plan=plan,
        )
        out = Outcome([], None, tries=0, rejections=failures)
        out.stats = {"candidates": len(cands), "pairs": 0, "ties": 0}
        base = {
            "split": row.get("split", "train"),
            "kind": "policy",
            "character": persona.name,
            "her": row["her"],
            "scene": row.get("scene", ""),
            "teacher": teacher_name,
            **({"protocol": "her"} if her else {}),
        }
        why = "fewer than 2 candidates" if len(cands) < 2 else None
        for j in range(0, len(cands) - 1, 2):
            a, b = cands[j], cands[j + 1]
            pid = hashlib.sha1(f"{sid}|{a}|{b}".encode()).hexdigest()[:16]
            verdicts = []
            for c1, c2, tag in ((a, b, "ab"), (b, a, "ba")):
                res = verdict(persona, history, c1, c2, f"{pid}:{tag}")
                out.tries += res.tries
                out.rejections += res.rejections
                verdicts.append(res.records[0] if res.records else None)
            recs, why = _order_records(
                {**base, "id": pid}, a, b, verdicts, keep_inconsistent=keep_inconsistent
            )
            if why is not None:
                out.stats[why] = out.stats.get(why, 0) + 1
                continue
            if her:
                for rec in recs:
                    result = her_result(rec["completion_text"]) or {}
                    rec["winner_pattern"] = winner_pattern(result)
            out.records.extend(recs)
            out.stats["pairs"] += 1
            out.stats["ties"] += recs[0]["label"] == "tie"
        if corruptions:
            extra = auto_pairs([row], kinds=corruptions, per_sample=len(corruptions))
            for p in extra:
                p["scene"] = row.get("scene", "")
            out.records.extend(extra)
            out.stats["corrupted"] = len(extra)
        if not out.records:
            out.records, out.reason = None, why or "no pair"
        out.tries = max(out.tries, 1)  # a sample is never a pass-through here
        return out

    report = run_jobs(rows, out_path, work, concurrency=concurrency, limit=limit, progress=progress)
    report.stats["length"] = length_balance(read_jsonl(out_path))
    return report


def rl_references(pairs_path: str | Path, out_path: str | Path) -> dict[str, int]:
    """RL rows whose reference answer is the teacher-preferred policy sample, as HER builds its
    policy's RL data (training_code/step4_roleplay_rl/main.py, `process_roleplay_rl_data`: one
    row per judged pair of SFT-policy samples, `ref_answer` the candidate its `better_response`
    names; a pair without one is skipped).

    `pairs_path` is `her data rm-pairs` output on the `rl` portion: every policy pair whose two
    orders agree on a winner gives one row, the sample's prompt with that winner as its target
    (what `JudgeReward` compares rollouts against); ties, gold-vs-corrupted pairs and winners
    that do not parse as a turn are skipped and counted. Returns the counts."""
    counts = {"pairs": 0, "rows": 0, "ties": 0, "not_policy": 0, "unparsable": 0}
    rows: list[dict] = []
    seen: set[str] = set()
    for rec in read_jsonl(pairs_path):
        if rec.get("kind") != "policy":
            counts["not_policy"] += 1
            continue
        pid = str(rec.get("id"))
        if pid in seen:  # the other order of a pair already taken
            continue
        seen.add(pid)
        counts["pairs"] += 1
        if rec.get("label") == "tie":
            counts["ties"] += 1
            continue
        persona, history, _gold = decode_her(rec)
        try:
            target = parse_turn(str(rec["chosen"]), persona.name)
        except Exception:
            target = None
        if target is None or not (target.speech or target.actions):
            counts["unparsable"] += 1
            continue
        rows.append(
            {
                "id": f"{rec.get('source_id', pid)}:{pid}",
                "scene": rec.get("scene", ""),
                "split": rec.get("split", "train"),
                "character": persona.name,
                "reference": "policy",
                "her": encode_her(persona, history, target),
            }
        )
    counts["rows"] = write_jsonl(out_path, rows)
    return counts
