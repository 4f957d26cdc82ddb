"""HER's data steps 2 and 4 with a teacher: role-thinking enrichment and setting completion.

    her data enrich-thoughts  data/train.jsonl --out data/thoughts.jsonl --teacher http://HOST/v1#MODEL
    her data complete-settings data/thoughts.jsonl --out data/settings.jsonl --teacher M.gguf

`enrich_thoughts` (HER step 2, "role thinking enhancement"): scene by scene, turn by turn, the
teacher sees the character sheet, the scene as the character perceived it (its own earlier
turns already enriched) and the character's next turn, and rewrites that turn with the inner
thoughts (`<role_thinking>`, first person) made explicit where they add depth. Everything the
other characters perceive stays as written: speech must come back word for word, in order
(`validate_thoughts`); actions too, but for the repairs HER's step 2 asks of them
(role_thinking_enhance_prompt.py lines 85-131): no self-pronouns ("I lean forward" becomes
"leans forward"), consecutive actions merged into one, and narration taken out of speech
('He turns to face her and says "Hello"' becomes <role_action>turns to face her</role_action>
Hello). An action is accepted as repaired when its words are the original's, in the same order,
less the pronouns I/me/my/myself/his/her/their and with a verb's -s/-es added or dropped
(`same_action_words`); narration may move into actions only from a speech that quotes its
spoken words (what is outside the quote marks), less its subject and the verb that introduced
the quote, and spoken words never change (`validate_thoughts`). Every sample of the scene then
perceives the repaired turn. Shapes are
meant to vary (speech only, thought then speech, action-thought-speech, ...): the teacher is told
the shapes of the character's last turns and a turn may keep no thought at all. A turn whose
answers all fail validation keeps its original text (counted in the report). Every sample of
the scene is then re-rendered with the enriched turns (its own earlier turns in its history too).

`complete_settings` (HER step 4, "setting completion"), in two passes. First, per scene, the
teacher sees the scene's scenario and what each of its characters says and does, and completes
the scenario (the situation before the first line, shared by every character of the scene, as
HER's "scenario_enriched"; HER's teacher also sees their thoughts, but a scenario every
character reads must not carry one character's private thoughts to the others); then, per
character and scene, it sees the character sheet (with that scenario) and what the character
says, does, thinks and plans, and completes the profile, background and motivation, and the
one-line description and the "experience" (what the character is about to do) where the
samples carry them (CoSER's `plot.key_characters`, kept by `her data convert coser`), so that
the sheet explains that behaviour, keeping what it said (`validate_setting`: original content
kept, no dialogue copied, no markup, bounded growth). A
profile converted with HER's profile lines (`--her-profile`: description, profile,
experience, one a line, as step4_3_rebuild_system_prompt.py builds it) is rebuilt from the
completed parts. Where the samples carry the book's text of their part of the story
(`source_text`, kept by `her data convert coser` from CoSER's `plot.text`), the teacher may only
add what that text supports, as HER's step 4 (step4_1_construct_setting_data.py: "SUPPLEMENT FROM
original_text ONLY", "Every addition needs TEXT source quote"): each completed field must come
with quotes from the text, and each quote must be found there (`grounded`); they are kept in
`setting_quotes`. Its reasoning is kept in `setting_reasoning` (the scenario's in
`scenario_reasoning`), the original sheet in `persona_original`.

Both run on any her_sdk Backend with the machinery of `her data synth-plans`
(`plans.run_jobs`: threads, retries, timeout, resume by key, kept/dropped report); prompts are
this project's own. This module writes data; it does not train.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from her_sdk import Backend, Persona
from her_sdk.format import (
    MAX_THOUGHT_CHARS,
    ChatModel,
    Heard,
    Message,
    Rendered,
    Segment,
    Turn,
    parse_turn,
    render_messages,
    render_system_prompt,
    render_turn,
)

from .data import (
    HER_PROFILE_FIELDS,
    decode_her,
    encode_her,
    her_profile,
    read_jsonl,
    render_sample,
    split_her_profile,
)
from .plans import (
    JobReport,
    Outcome,
    _history_text,
    _shingles,
    ask_teacher,
    rejected_path,
    run_jobs,
)

__all__ = [
    "complete_settings",
    "enrich_thoughts",
    "grounded",
    "mock_setting_teacher",
    "mock_thought_teacher",
    "same_action_words",
    "scenarios_path",
    "turn_shape",
    "validate_setting",
    "validate_thoughts",
]

_USER = re.compile(r"\b(the user|user's|as an ai|language model|the assistant|roleplay)\b", re.I)
_WORDS = re.compile(r"[\w']+")


def _norm_words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def _sheet(persona: Persona) -> str:
    return render_system_prompt(persona, plan=False).split("\n\n===Requirements===")[0]


def _by_scene(rows: Sequence[dict]) -> list[dict]:
    """Rows grouped by scene (in first-seen order), each group sorted by turn."""
    scenes: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        scenes[str(r.get("scene") or r.get("id"))].append(r)
    return [
        {"id": k, "samples": sorted(v, key=lambda r: int(r.get("turn", 0)))}
        for k, v in scenes.items()
    ]


# ---------------------------------------------------------------------------------------------
# Step 2: role-thinking enrichment
# ---------------------------------------------------------------------------------------------

THOUGHTS_SYSTEM = f"""\
You enrich the inner life of characters in a role-play dataset. You are shown a character \
sheet, the scene so far as the character perceived it, and the character's next turn. Rewrite \
that turn with the character's private thoughts made explicit where they add depth: what the \
character feels, suspects, remembers or decides right then.

Format: <role_thinking>...</role_thinking> holds a private thought, in the first person (I, \
me, my). <role_action>...</role_action> is a visible action and plain text is speech.
Rules:
- Keep every spoken word exactly as given, in the same order, and every action's words in the \
same order. Repair actions only this way: an action has no pronoun for the character itself \
("leans forward", not "I lean forward" or "leans forward, his voice lowering"), and two \
actions in a row become one. Narration inside speech (what stands outside the quote marks \
of a speech that quotes its words, as in He turns to face her and says "Hello") becomes an \
action, without its subject and the verb that introduces the words: <role_action>turns to \
face her</role_action>Hello. Otherwise you may only add, rewrite or remove <role_thinking> \
sections, before, between or after them.
- A thought uses only what the character can know: what the others said and did, never what \
they think.
- A thought is one or two short sentences (at most {MAX_THOUGHT_CHARS} characters); it never \
repeats the speech, never mentions a user, an AI or the story as a story.
- Vary the shape of turns across the scene: speech only; thought then speech; action, thought, \
speech; speech then a thought; ... Not every turn needs a thought. Avoid the shapes listed as \
the character's last ones.
Answer with the turn only, on one line, starting with the character's name and a colon."""


def turn_shape(turn: Turn) -> str:
    """The segment pattern of a turn, e.g. "action->thought->speech" (plans left out)."""
    shape: list[str] = []
    for s in turn.segments:
        if s.channel != "plan" and (not shape or shape[-1] != s.channel):
            shape.append(s.channel)
    return "->".join(shape) or "empty"


# Words an action may lose in repair (HER: an action names no pronoun for its character).
_SELF_WORDS = frozenset({"i", "me", "my", "myself", "his", "her", "their"})
# What narration in speech may lose when it becomes an action ("He turns to face her and says
# "Hello"" -> <role_action>turns to face her</role_action>Hello): its subject and the verb that
# introduced the quote.
_NARRATION_WORDS = _SELF_WORDS | {
    "he", "she", "they", "and", "then", "says", "said", "say", "asks", "asked", "ask",
    "replies", "replied", "reply", "answers", "answered", "adds", "added", "continues",
    "continued", "tells", "told",
}  # fmt: skip
_QUOTED = re.compile(r'"[^"]*"|\u201c[^\u201d]*\u201d')


def _verb_match(a: str, b: str) -> bool:
    return a == b or any(a + e == b or b + e == a for e in ("s", "es"))


def same_action_words(new: str, original: str) -> bool:
    """Whether `new` is `original` with only HER's repairs: the same words in the same order,
    less pronouns for the character, a verb's -s/-es added or dropped ("I lean" -> "leans")."""

    def action(text: str) -> Turn:
        return Turn.from_segments([Segment("action", text)])

    return _same_public(action(new), action(original))


def _public_words(turn: Turn, *, original: bool = False) -> list[tuple[str, str]]:
    """What others perceive, word by word, as (word, kind): "action" or "speech"; for the
    `original` turn, speech is "quoted" (inside quote marks, or all of it when it has none) or
    "narration" (outside the quote marks of a speech that has some)."""
    out: list[tuple[str, str]] = []
    for s in turn.segments:
        if s.channel == "action":
            out += [(w, "action") for w in _norm_words(s.text)]
        elif s.channel == "speech" and original and _QUOTED.search(s.text):
            pos = 0
            for m in _QUOTED.finditer(s.text):
                out += [(w, "narration") for w in _norm_words(s.text[pos : m.start()])]
                out += [(w, "quoted") for w in _norm_words(m.group())]
                pos = m.end()
            out += [(w, "narration") for w in _norm_words(s.text[pos:])]
        elif s.channel == "speech":
            out += [(w, "quoted" if original else "speech") for w in _norm_words(s.text)]
    return out


def _same_public(new: Turn, original: Turn, name: str = "") -> bool:
    """Whether `new` shows others what `original` did, but for HER's repairs: spoken words
    unchanged and in order; actions with the same words in the same order (less pronouns for
    the character, a verb's -s/-es; two in a row merged); narration in the speech (outside the
    quote marks of a speech that has them) moved into actions, less its subject and the verb
    that introduced the quote. Nothing moves the other way: no action becomes speech."""
    a = _public_words(original, original=True)
    b = _public_words(new)
    own_name = set(_norm_words(name))

    def kept(word: str, kind: str, new_word: str, channel: str) -> bool:
        if channel == "action":
            return kind in ("action", "narration") and _verb_match(new_word, word)
        return kind in ("quoted", "narration") and new_word == word

    def dropped(word: str, kind: str) -> bool:
        if kind == "action":
            return word in _SELF_WORDS
        return kind == "narration" and (word in _NARRATION_WORDS or word in own_name)

    i = j = 0
    while i < len(a) or j < len(b):
        word, kind = a[i] if i < len(a) else ("", "")
        new_word, channel = b[j] if j < len(b) else ("", "")
        if i < len(a) and j < len(b) and kept(word, kind, new_word, channel):
            i, j = i + 1, j + 1
        elif dropped(word, kind):
            i += 1
        elif channel == "action" and new_word in _SELF_WORDS:
            j += 1
        else:
            return False
    return True


def validate_thoughts(
    new: Turn,
    original: Turn,
    name: str,
    *,
    known: str = "",
    future: str = "",
    max_thought_chars: int = MAX_THOUGHT_CHARS,
    ngram: int = 5,
) -> str | None:
    """Why the enriched turn `new` of `original` is unusable, or None when it passes."""
    if not _same_public(new, original, name):
        return "changed actions or speech"
    speech = " ".join(_norm_words(new.speech))
    first = name.split()[0].lower()
    for t in new.thoughts:
        if "<" in t or ">" in t:
            return "markup"
        if len(t) > max_thought_chars:
            return "thought too long"
        if _USER.search(t):
            return "mentions the user"
        words = _norm_words(t)
        if len(words) >= 4 and " ".join(words) in speech:
            return "thought spoken aloud"
        if words and words[0] == first:
            return "not first person"  # "Mara thinks ..." is a narrator, not Mara
    if future and new.thoughts:
        text = " ".join(new.thoughts)
        if _shingles(text, ngram) & (_shingles(future, ngram) - _shingles(known, ngram)):
            return "knows later turns"
    return None


def _thoughts_prompt(
    persona: Persona,
    history: Sequence[Heard | Turn],
    turn: Turn,
    shapes: Sequence[str],
    teacher: ChatModel,
) -> Rendered:
    public_turn = Turn.from_segments(s for s in turn.segments if s.channel != "plan")
    user = (
        f"=== Character sheet ===\n{_sheet(persona)}\n\n"
        f"=== The scene so far, as {persona.name} perceived it ===\n"
        f"{_history_text(persona, history)}\n\n"
        f"=== {persona.name}'s next turn ===\n{render_turn(public_turn, persona.name)}\n\n"
        f"Shapes of {persona.name}'s last turns: {', '.join(shapes) or 'none yet'}.\n"
        f"Rewrite this turn with {persona.name}'s inner thoughts."
    )
    messages = [Message("system", THOUGHTS_SYSTEM), Message("user", user)]
    return render_messages(messages, teacher, prefill=f"{persona.name}: ", one_line=True)


def mock_thought_teacher(prompt: str) -> str:
    """A deterministic stand-in teacher: the turn with one first-person thought in front
    (or unchanged for a turn that already has one, so shapes vary)."""
    m = re.search(r"^=== (.+?)'s next turn ===\n(.*)$", prompt, re.M)
    if not m:
        return ""
    name, line = m.group(1), m.group(2)
    body = line.split(": ", 1)[1] if line.startswith(f"{name}: ") else line
    if "<role_thinking>" in body:
        return body
    return f"<role_thinking>I have to keep my voice steady here</role_thinking>{body}"


def _replace_own_turns(
    history: Sequence[Heard | Turn], name: str, done: dict[str, Turn]
) -> list[Heard | Turn]:
    """History with the character's own earlier turns swapped for their enriched versions."""
    return [done.get(render_turn(h, name), h) if isinstance(h, Turn) else h for h in history]


def _heard_key(speaker: str, actions: Sequence[str], speech: str) -> tuple:
    return (
        speaker,
        tuple(" ".join(_norm_words(a)) for a in actions),
        " ".join(_norm_words(speech)),
    )


def _replace_perceived(
    history: Sequence[Heard | Turn], repaired: dict[tuple, Turn]
) -> list[Heard | Turn]:
    """History with others' perceived turns as repaired (their actions, and their speech when
    narration moved out of it)."""
    out: list[Heard | Turn] = []
    for h in history:
        if isinstance(h, Heard) and (
            new := repaired.get(_heard_key(h.speaker, h.actions, h.speech))
        ):
            h = msgspec.structs.replace(h, actions=list(new.actions), speech=new.speech)
        out.append(h)
    return out


def enrich_thoughts(
    input_path: str | Path,
    out_path: str | Path,
    teacher: Backend,
    *,
    concurrency: int = 4,
    retries: int = 2,
    timeout: float | None = 120.0,
    temperature: float = 0.7,
    max_tokens: int = 512,
    max_thought_chars: int = MAX_THOUGHT_CHARS,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> JobReport:
    """Enrich the inner thoughts of every sample of `input_path`, scene by scene; see the
    module docstring. Resumable by scene; `limit` counts scenes. Report stats: turns
    `enriched` (changed), `unchanged` (the teacher kept them), `kept_original` (failed)."""
    scenes = _by_scene(read_jsonl(input_path))

    def work(scene: dict) -> Outcome:
        samples = scene["samples"]
        decoded = [decode_her(r) for r in samples]
        future_of = {
            int(r.get("turn", 0)): render_turn(d[2], d[0].name)
            for r, d in zip(samples, decoded, strict=True)
        }
        done: dict[str, dict[str, Turn]] = defaultdict(dict)  # character -> original -> new
        shapes: dict[str, list[str]] = defaultdict(list)
        out = Outcome([], None)
        out.stats = {"enriched": 0, "unchanged": 0, "kept_original": 0, "actions_repaired": 0}
        repaired: dict[tuple, Turn] = {}  # (speaker, actions, speech) -> the repaired turn
        new_targets: list[Turn] = []
        for row, (persona, history, target) in zip(samples, decoded, strict=True):
            name = persona.name
            history = _replace_perceived(_replace_own_turns(history, name, done[name]), repaired)
            turn_no = int(row.get("turn", 0))
            original = Turn.from_segments(s for s in target.segments if s.channel != "plan")
            known = "\n".join(
                [_sheet(persona), _history_text(persona, history), render_turn(original, name)]
            )
            future = "\n".join(t for k, t in future_of.items() if k > turn_no)

            def check(text: str, name=name, original=original, known=known, future=future):
                text = text.strip()
                if text.startswith(f"{name}:"):  # the answer repeated the prefilled label
                    text = text[len(name) + 1 :]
                turn = parse_turn(f"{name}: {text.strip()}", name)
                bad = validate_thoughts(
                    turn,
                    original,
                    name,
                    known=known,
                    future=future,
                    max_thought_chars=max_thought_chars,
                )
                return (turn, None) if bad is None else (None, bad)

            res = ask_teacher(
                teacher,
                _thoughts_prompt(persona, history, original, shapes[name][-3:], teacher),
                check,
                key=row.get("id"),
                retries=retries,
                timeout=timeout,
                temperature=temperature,
                max_tokens=max_tokens,
                stop=("\n",),
            )
            out.tries += res.tries
            out.rejections += res.rejections
            if res.records:
                new = res.records[0]
                changed = render_turn(new, name) != render_turn(original, name)
                out.stats["enriched" if changed else "unchanged"] += 1
            else:
                new = original
                out.stats["kept_original"] += 1
                out.reason = res.reason
            plans = [s for s in target.segments if s.channel == "plan"]
            new_target = Turn.from_segments([*plans, *new.segments])
            done[name][render_turn(target, name)] = new_target
            if new.actions != original.actions or new.speech != original.speech:
                # what the others perceive is what it did, as repaired
                repaired[_heard_key(name, original.actions, original.speech)] = new
            if new.actions != original.actions or _norm_words(new.speech) != _norm_words(
                original.speech
            ):  # actions repaired, or narration moved out of the speech
                out.stats["actions_repaired"] += 1
            shapes[name].append(turn_shape(new))
            new_targets.append(new_target)
        if out.stats["kept_original"] == len(samples):
            out.records = None  # the teacher failed on every turn: nothing was enriched
            return out
        for row, (persona, history, _), target in zip(samples, decoded, new_targets, strict=True):
            history = _replace_own_turns(history, persona.name, done[persona.name])
            history = _replace_perceived(history, repaired)
            prompt, completion = render_sample(persona, history, target)
            out.records.append(
                {
                    **row,
                    "thoughts": "enriched",
                    "thoughts_source": getattr(teacher, "name", "teacher"),
                    "prompt": prompt,
                    "completion": completion,
                    "her": encode_her(persona, history, target),
                }
            )
        out.reason = None
        return out

    return run_jobs(scenes, out_path, work, concurrency=concurrency, limit=limit, progress=progress)


# ---------------------------------------------------------------------------------------------
# Step 4: setting completion
# ---------------------------------------------------------------------------------------------

# A sheet's fields; HER's description and experience (`HER_PROFILE_FIELDS`, kept on CoSER
# samples by `her data convert coser`) are completed too where a sample carries them.
SETTING_FIELDS = ("profile", "background", "goals")
_FIELD_HELP = {
    "profile": "who they are, temperament, manner of speech",
    "background": "history that shapes them, before this scene",
    "goals": "the motivation: what they want as the scene begins",
    "description": "one sentence: who they are in the story",
    "experience": "what they are about to do in this part of the story",
}

SETTING_SYSTEM = """\
You complete character sheets of a role-play dataset. You are shown a character's sheet and \
what the character says, does, thinks and plans in one scene. Some of that behaviour may have \
no explanation in the sheet: a fear, a habit, a loyalty, an old wound, a goal. Complete the \
sheet so that it explains that behaviour, and only that: add what the behaviour needs, keep \
everything the sheet already says, invent nothing the scene does not support, and never copy \
lines of the scene or tell what happens in it.

Answer with one JSON object and nothing else:
{"reasoning": "which behaviour needed explaining, and what you added for it",
FIELDS}
A field that needs nothing new is repeated unchanged."""

# With the book's text (HER step 4): additions only from it, each with its source quoted.
SETTING_SOURCE_RULES = (
    "\n\nYou are also shown the book's text of this part of the story. Add only what that text "
    "supports: for every field you complete, quote the sentences of the text each addition "
    'rests on, word for word, in "quotes" (a field you repeat unchanged needs none). What the '
    "behaviour needs but the text does not say is left out. The answer then also holds:\n"
    ' "quotes": {QUOTES}'
)

# HER's step 4 completes the scene's scenario once, for all its characters ("scenario: Scene
# description (shared)", step4_1_construct_setting_data.py): a pass of its own, per scene.
SCENARIO_SYSTEM = """\
You complete the scenarios of a role-play dataset. You are shown a scene's scenario (the \
situation as the scene begins: where, when, who is there, what is at stake) and what each \
character says and does in the scene. Some of that behaviour may need the situation to explain \
it. Complete the scenario so that it does, and only that: keep everything it already says, \
invent nothing the scene does not support, and never copy lines of the scene or tell what \
happens in it: the scenario is the state before the first line, and every character knows it.

Answer with one JSON object and nothing else:
{"reasoning": "which behaviour needed the situation explained, and what you added for it",
 "scenario": "the completed scenario"}
A scenario that needs nothing new is repeated unchanged."""


def _setting_system(fields: Sequence[str], source: bool) -> str:
    lines = ",\n".join(f' "{f}": "the completed {f} ({_FIELD_HELP[f]})"' for f in fields)
    system = SETTING_SYSTEM.replace("FIELDS", lines + "}")
    if not source:
        return system
    quotes = "{" + ", ".join(f'"{f}": ["a sentence of the text", ...]' for f in fields) + "}"
    return system + SETTING_SOURCE_RULES.replace("{QUOTES}", quotes)


def _scene_behaviour(persona: Persona, turns: Sequence[Turn], max_turns: int) -> str:
    lines = []
    for t in turns[:max_turns]:
        line = render_turn(t, persona.name)
        if t.plan:
            line = f"(plan: {t.plan}) {line}"
        lines.append(line)
    return "\n".join(lines)


def _setting_prompt(
    persona: Persona,
    current: dict[str, str],
    behaviour: str,
    teacher: ChatModel,
    source_text: str = "",
) -> Rendered:
    fields = "\n".join(f"{f}: {v or '(empty)'}" for f, v in current.items())
    book = f"=== The book's text of this part of the story ===\n{source_text}\n\n"
    user = (
        f"=== {persona.name}'s sheet ===\n{_sheet(persona)}\n\n"
        f"=== Fields to complete ===\n{fields}\n\n"
        f"=== What {persona.name} says, does, thinks and plans in the scene ===\n{behaviour}\n\n"
        + (book if source_text else "")
        + f"Complete {persona.name}'s sheet."
    )
    system = _setting_system(list(current), bool(source_text))
    messages = [Message("system", system), Message("user", user)]
    return render_messages(messages, teacher, prefill="{")


def _scenario_prompt(
    scenario: str, behaviours: dict[str, str], teacher: ChatModel, source_text: str = ""
) -> Rendered:
    parts = [f"=== The scenario ===\n{scenario or '(empty)'}"]
    parts += [
        f"=== What {name} says and does in the scene ===\n{text}"
        for name, text in behaviours.items()
    ]
    if source_text:
        parts.append(f"=== The book's text of this part of the story ===\n{source_text}")
    system = SCENARIO_SYSTEM
    if source_text:
        system += SETTING_SOURCE_RULES.replace("{QUOTES}", '["a sentence of the text", ...]')
    user = "\n\n".join([*parts, "Complete the scenario."])
    return render_messages([Message("system", system), Message("user", user)], teacher, prefill="{")


def _squeeze(text: str) -> str:
    return " ".join(re.sub(r"[\u2018\u2019]", "'", re.sub(r"[\u201c\u201d]", '"', text)).split())


def grounded(quotes: Any, source_text: str, *, min_chars: int = 12) -> str | None:
    """Why the `quotes` of a completed field do not ground it in `source_text`, or None when
    they do: at least one quote, each of at least `min_chars` characters and found in the text
    word for word (spacing and curly quotes aside)."""
    if isinstance(quotes, str):
        quotes = [quotes]
    if not isinstance(quotes, list) or not quotes:
        return "no quote from the book's text"
    text = _squeeze(source_text)
    for q in quotes:
        if not isinstance(q, str) or len(_squeeze(q)) < min_chars:
            return "a quote too short to ground anything"
        if _squeeze(q).strip("\"' .") not in text:
            return "a quote not in the book's text"
    return None


def mock_setting_teacher(prompt: str) -> str:
    """A deterministic stand-in teacher: each field (or the scenario) kept, with one sentence
    added (from the book's text, quoted, when the prompt shows it)."""
    book = re.search(
        r"=== The book's text of this part of the story ===\n(.+?)(?:\n\n|$)", prompt, re.S
    )
    first = re.split(r"(?<=[.!?])\s+", book.group(1).strip())[0] if book else ""
    if "=== The scenario ===" in prompt:
        old = prompt.split("=== The scenario ===\n", 1)[1].split("\n\n", 1)[0]
        old = "" if old == "(empty)" else old
        added = f"In the story: {first}" if book else "Everyone in the room is on edge."
        scene: dict[str, Any] = {
            "reasoning": "The characters are wary; the scenario did not say why.",
            "scenario": f"{old} {added}".strip(),
        }
        if book:
            scene["quotes"] = [first]
        return json.dumps(scene)[1:]  # the prompt already opened the object
    m = re.search(r"^=== (.+?)'s sheet ===", prompt, re.M)
    name = m.group(1) if m else "The character"
    listed = prompt.split("=== Fields to complete ===\n", 1)[-1].split("\n\n", 1)[0]
    fields = dict(re.findall(r"^(\w+): (.*)$", listed, re.M))
    keep = {f: "" if v == "(empty)" else v for f, v in fields.items()}
    added = f"In the story: {first}" if book else f"{name} is slow to trust strangers."
    answer: dict[str, Any] = {
        "reasoning": f"{name} acts guarded in the scene; the sheet did not say why.",
        **keep,
        "profile": f"{keep.get('profile', '')} {added}".strip(),
    }
    if book:
        answer["quotes"] = {"profile": [first]}
    return json.dumps(answer)[1:]


def _json_answer(text: str) -> dict | None:
    text = "{" + text if not text.lstrip().startswith("{") else text
    end = text.rfind("}")
    if end < 0:
        return None
    try:
        obj = json.loads(text[: end + 1])
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def validate_setting(
    new: str,
    original: str,
    *,
    scene_text: str = "",
    max_added_chars: int = 800,
    keep_share: float = 0.7,
    ngram: int = 8,
) -> str | None:
    """Why a completed field `new` of `original` is unusable, or None when it passes."""
    if "<" in new or ">" in new:
        return "markup"
    if _USER.search(new) and not _USER.search(original):
        return "mentions the user"
    if len(new) > len(original) + max_added_chars:
        return "too long"
    old_words = {w for w in _norm_words(original) if len(w) > 3}
    if old_words:
        kept = old_words & set(_norm_words(new))
        if len(kept) < keep_share * len(old_words):
            return "drops the original"
    if scene_text:
        copied = _shingles(new, ngram) & (_shingles(scene_text, ngram) - _shingles(original, ngram))
        if copied:
            return "copies the scene"
    return None


def scenarios_path(out_path: str | Path) -> Path:
    """Where `complete_settings` keeps its scenario pass (one record per scene, resumable)."""
    out = Path(out_path)
    return out.with_name(f"{out.stem}.scenarios.jsonl")


def _scene_setting(samples: Sequence[dict], max_turns: int) -> tuple[dict[str, str], str]:
    """(what each character says and does in the scene, all that happens in it as text).

    Only public behaviour: the scenario is every character's, so what one of them thinks or
    plans must not reach it (and through it the others' prompts)."""
    turns: dict[str, list[Turn]] = defaultdict(list)
    personas: dict[str, Persona] = {}
    last: tuple[Persona, list] | None = None
    for row in samples:
        persona, history, target = decode_her(row)
        personas.setdefault(persona.name, persona)
        turns[persona.name].append(target)
        last = (persona, history)
    behaviours = {
        n: "\n".join(render_turn(x.public(), n) for x in t[:max_turns]) for n, t in turns.items()
    }
    happened = [*behaviours.values(), *([_history_text(*last)] if last else [])]
    return behaviours, "\n".join(happened)


def complete_settings(
    input_path: str | Path,
    out_path: str | Path,
    teacher: Backend,
    *,
    scenario: bool = True,
    concurrency: int = 4,
    retries: int = 2,
    timeout: float | None = 180.0,
    temperature: float = 0.3,
    max_tokens: int = 1024,
    max_turns: int = 8,
    max_added_chars: int = 800,
    max_source_chars: int = 16000,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> JobReport:
    """Complete the scenario of each scene and the sheet of each of its characters in
    `input_path`; see the module docstring.

    Two passes, both resumable. With `scenario`, one teacher call per scene completes the
    scene's scenario (kept in `scenarios_path(out_path)`: a scene the teacher finds nothing to
    add to is kept unchanged, one it fails on keeps its scenario); then one call per (scene,
    character) completes the character's profile, background and motivation, and its
    description and experience where the samples carry them, with the completed scenario in
    its sheet. A character's samples are written only once its scene's scenario pass is done,
    so a scene never mixes scenarios. `limit` counts scenes in the first pass and groups in the
    second. The book's text is shown up to `max_source_chars` (a CoSER plot's runs to about
    15,000). The report is the second pass's, with the first's figures in `stats`.
    """
    ask = partial(
        ask_teacher,
        teacher,
        retries=retries,
        timeout=timeout,
        temperature=temperature,
        max_tokens=max_tokens,
    )
    rows = read_jsonl(input_path)
    scenes = _by_scene(rows)
    scenarios: dict[str, dict] = {}
    first_pass: JobReport | None = None
    if scenario:
        side = scenarios_path(out_path)

        def scenario_work(job: dict) -> Outcome:
            samples = job["samples"]
            old = decode_her(samples[0])[0].scenario
            source = str(samples[0].get("source_text") or "")[:max_source_chars]
            behaviours, scene_text = _scene_setting(samples, max_turns)

            def check(text: str) -> tuple[Any, str | None]:
                obj = _json_answer(text)
                if obj is None:
                    return None, "unreadable answer"
                value = obj.get("scenario")
                if not isinstance(value, str) or not value.strip():
                    value = old
                value = " ".join(value.split())
                changed = value != " ".join(old.split())
                bad = validate_setting(
                    value, old, scene_text=scene_text, max_added_chars=max_added_chars
                )
                quotes = obj.get("quotes")
                if bad is None and source and changed:
                    bad = grounded(quotes, source)
                if bad is not None:
                    return None, f"scenario: {bad}"
                done = {
                    "id": job["id"],
                    "original": old,
                    "scenario": value,
                    "changed": changed,
                    "reasoning": str(obj.get("reasoning") or "").strip(),
                }
                if source and changed:
                    done["quotes"] = [quotes] if isinstance(quotes, str) else list(quotes)
                return done, None

            return ask(_scenario_prompt(old, behaviours, teacher, source), check, key=job["id"])

        first_pass = run_jobs(
            scenes, side, scenario_work, concurrency=concurrency, limit=limit, progress=progress
        )
        finished = {str(r.get("id")) for r in read_jsonl(rejected_path(side))}
        scenarios = {str(r["id"]): r for r in read_jsonl(side)}
        finished |= set(scenarios)
        rows = [r for r in rows if str(r.get("scene") or r.get("id")) in finished]

    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        key = f"{r.get('scene') or r.get('id')}|{r.get('character', '')}"
        groups[key].append(r)
    jobs = [
        {"id": k, "samples": sorted(v, key=lambda r: int(r.get("turn", 0)))}
        for k, v in groups.items()
    ]

    def work(job: dict) -> Outcome:
        samples = job["samples"]
        decoded = [decode_her(r) for r in samples]
        persona = decoded[0][0]
        scene = scenarios.get(str(samples[0].get("scene") or samples[0].get("id")))
        new_scenario = bool(
            scene
            and scene["changed"]
            and " ".join(persona.scenario.split()) == " ".join(scene["original"].split())
        )
        if new_scenario:
            assert scene is not None
            persona = msgspec.structs.replace(persona, scenario=scene["scenario"])
        base, description, experience = split_her_profile(persona.profile)
        composed = bool(description or experience)  # converted with HER's profile lines
        current = {f: getattr(persona, f) for f in SETTING_FIELDS} | {"profile": base}
        own = {"description": description, "experience": experience}
        for f in HER_PROFILE_FIELDS:
            if f in samples[0] or own[f]:
                current[f] = str(samples[0].get(f) or own[f])
        turns = [d[2] for d in decoded]
        behaviour = _scene_behaviour(persona, turns, max_turns)
        source = str(samples[0].get("source_text") or "")[:max_source_chars]
        scene_text = "\n".join([behaviour, *(_history_text(p, h) for p, h, _ in decoded[-1:])])

        def check(text: str) -> tuple[Any, str | None]:
            obj = _json_answer(text)
            if obj is None:
                return None, "unreadable answer"
            fields: dict[str, str] = {}
            quotes = obj.get("quotes") if isinstance(obj.get("quotes"), dict) else {}
            kept_quotes: dict[str, list[str]] = {}
            for f, old in current.items():
                value = obj.get(f)
                if value is None or not isinstance(value, str) or not value.strip():
                    value = old  # nothing to add
                value = " ".join(value.split())
                bad = validate_setting(
                    value, old, scene_text=scene_text, max_added_chars=max_added_chars
                )
                if bad is None and source and value != " ".join(old.split()):
                    given = quotes.get(f)
                    bad = grounded(given, source)
                    kept_quotes[f] = [given] if isinstance(given, str) else list(given or [])
                if bad is not None:
                    return None, f"{f}: {bad}"
                fields[f] = value
            same = all(fields[f] == " ".join(old.split()) for f, old in current.items())
            if same and not new_scenario:
                return None, "nothing completed"
            reasoning = obj.get("reasoning")
            done: dict[str, Any] = {"fields": fields, "reasoning": str(reasoning or "").strip()}
            if source:
                done["quotes"] = kept_quotes
            return done, None

        res = ask(
            _setting_prompt(persona, current, behaviour, teacher, source), check, key=job["id"]
        )
        if not res.records:
            return res
        done = res.records[0]
        fields = done["fields"]
        profile = fields["profile"]
        if composed:  # HER's step 4.3 rebuilds the profile from its completed parts
            extra = {f: fields.get(f, "") for f in HER_PROFILE_FIELDS}
            profile = her_profile(profile, **extra)
        completed = msgspec.structs.replace(
            persona, profile=profile, background=fields["background"], goals=fields["goals"]
        )
        quotes = dict(done.get("quotes", {}))
        extra_fields = {f: fields[f] for f in HER_PROFILE_FIELDS if f in fields}
        if new_scenario:
            assert scene is not None
            extra_fields["scenario_reasoning"] = scene["reasoning"]
            if "quotes" in scene:
                quotes["scenario"] = scene["quotes"]
        original = decoded[0][0]
        res.records = []
        for row, (_, history, target) in zip(samples, decoded, strict=True):
            prompt, completion = render_sample(completed, history, target)
            res.records.append(
                {
                    **row,
                    **extra_fields,
                    "setting": "completed",
                    "setting_source": getattr(teacher, "name", "teacher"),
                    "setting_reasoning": done["reasoning"],
                    **({"setting_quotes": quotes} if source else {}),
                    "persona_original": msgspec.to_builtins(original),
                    "prompt": prompt,
                    "completion": completion,
                    "her": encode_her(completed, history, target),
                }
            )
        return res

    report = run_jobs(jobs, out_path, work, concurrency=concurrency, limit=limit, progress=progress)
    if first_pass is not None:
        changed = sum(1 for r in scenarios.values() if r.get("changed"))
        report.stats.update(
            scenarios_completed=changed,
            scenarios_unchanged=len(scenarios) - changed,
            scenarios_failed=sum(first_pass.dropped.values()),
        )
    return report
