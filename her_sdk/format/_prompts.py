"""The project's own prompt for a character: its system prompt from a `Persona`, what it
perceived, its own earlier turns (thoughts kept, plans dropped unless asked), its memories and
typed actions, as chat messages ("chatml", "template") or a few-shot script ("fewshot").
`_render.render_prompt` puts a whole next-turn prompt together in any style.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from .._persona import Persona
from ._calls import CallSpec, render_actions
from ._contract import (
    CONVERSATION_START,
    ENVIRONMENT,
    MEMORIES_HEAD,
    TAG,
    Heard,
    HistoryItem,
    Message,
    Segment,
    Turn,
)
from ._quote import _MARKING, _block, _clean, _name


def render_turn(
    turn: Turn, name: str, *, keep_plan: bool = False, label: bool = True, spaced: bool = False
) -> str:
    """A turn as HER text: `<system_thinking>…</system_thinking>NAME: ` then its segments.

    The plan is left out unless `keep_plan`; thoughts are kept (the character remembers them).
    `spaced`: a space between speech and a tag after it, as in CoSER's source text, which HER's
    data keeps (the "her" style); never one after a closing tag.
    """
    return _turn_text(
        turn.plan if keep_plan else "",
        tuple(turn.segments),
        name if label else None,
        spaced,
        _MARKING.get(),
    )


def render_perception(heard: Heard, *, sep: str = "") -> str:
    """One perception line: `Name: <role_action>…</role_action>speech` or `Environment: …`;
    `sep` goes between its sections (the "her" style: a space, as CoSER's source text has)."""
    return _perception_text(heard.speaker, heard.speech, tuple(heard.actions), sep, _MARKING.get())


# A prompt renders the same history lines turn after turn, and a long game's prompt holds
# hundreds of them: each line is rendered once, keyed by its content (items hold lists, so they
# are not hashable themselves) and by whether quoted text is being marked, which `_clean` reads.
@lru_cache(maxsize=8192)
def _turn_text(
    plan: str, segments: tuple[Segment, ...], name: str | None, spaced: bool, marking: bool
) -> str:
    parts: list[str] = []
    if plan:
        parts.append(f"<system_thinking>{_clean(plan)}</system_thinking>")
    if name is not None:
        parts.append(f"{_name(name)}: ")
    spoke = False
    for seg in segments:
        if seg.channel == "plan":
            continue
        if seg.channel == "speech":
            parts.append(_clean(seg.text))
        else:
            tag = TAG[seg.channel]
            parts.append(f"{' ' if spaced and spoke else ''}<{tag}>{_clean(seg.text)}</{tag}>")
        spoke = seg.channel == "speech"
    return "".join(parts)


@lru_cache(maxsize=8192)
def _perception_text(
    speaker: str, speech: str, actions: tuple[str, ...], sep: str, marking: bool
) -> str:
    if speaker == ENVIRONMENT:
        return f"{ENVIRONMENT}: {_clean(speech)}"
    parts = [f"<role_action>{_clean(a)}</role_action>" for a in actions if _clean(a)]
    if said := _clean(speech):
        parts.append(said)
    return f"{_name(speaker)}: {sep.join(parts)}"


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def requirements(name: str, *, plan: bool = True) -> str:
    """The `===Requirements===` section: the output format in words."""
    lines = []
    if plan:
        lines.append(
            "Begin your reply with a short plan inside <system_thinking></system_thinking>, "
            f"written in the third person about how to portray {name} in this moment. "
            "Nobody in the story sees the plan."
        )
    lines.append(
        f"Then write '{name}: ' followed by your turn, mixing inner thoughts in "
        "<role_thinking></role_thinking> (first person, heard by no one), visible actions in "
        "<role_action></role_action> (no pronoun for yourself), and spoken words as plain text."
    )
    lines.append(
        f"Speak and act only as {name}; never for other characters. Keep it to one short turn."
    )
    return "\n".join(lines)


def render_system_prompt(
    persona: Persona,
    *,
    plan: bool = True,
    summary: str = "",
    calls: Sequence[CallSpec] = (),
) -> str:
    """The HER system prompt; each section is omitted when empty.

    `summary` (of what the character no longer holds verbatim, in its own words) and `calls`
    (its typed actions) change rarely, so they belong here; recalled memories change every turn
    and go at the end of the prompt instead (`render_memories`), which keeps an engine's prompt
    cache valid up to there.
    """
    p = persona
    name = _name(p.name)
    others = []
    for who in dict.fromkeys([*p.others, *p.relationships]):
        known = _clean(p.others.get(who, ""))
        line = f"{_clean(who)}: {known}" if known else _clean(who)
        if who in p.relationships:
            line += f" ({name}'s view: {_clean(p.relationships[who])})"
        others.append(line)
    sections = persona_sections(
        p, "\n".join(others), summary=summary, calls=calls, rules=requirements(name, plan=plan)
    )
    body = "\n\n".join(f"{head}\n{text.strip()}" for head, text in sections if text.strip())
    return f"{introduction(p)}\n\n{body}"


def introduction(persona: Persona) -> str:
    """The system prompt's first line: "You are NAME from SOURCE." (or "You are NAME.")."""
    source = _clean(persona.source)
    name = _name(persona.name)
    return f"You are {name} from {source}." if source else f"You are {name}."


def persona_sections(
    persona: Persona, others: str, *, summary: str, calls: Sequence[CallSpec], rules: str
) -> list[tuple[str, str]]:
    """The system prompt's (head, text) sections, in order, of every prompt style that has one:
    `others` is the other characters' section as the style writes it, `rules` its
    Requirements; empty sections are left to the caller to drop."""
    p = persona
    goals, secrets = _block(p.goals), _block(p.secrets)
    inner = "\n".join(x for x in (goals, f"Secrets you keep: {secrets}" if secrets else "") if x)
    return [
        (f"==={_name(p.name)}'s Profile===", _block(p.profile)),
        ("===Background===", _block(p.background)),
        ("===Current Scenario===", _block(p.scenario)),
        ("===Information about other Characters===", others),
        ("===Your Inner Thoughts===", inner),
        ("===What Happened Before===", _clean(summary)),
        ("===Actions You Can Take===", render_actions(calls) if calls else ""),
        ("===Requirements===", rules),
    ]


_SILENCE = Heard(speaker=ENVIRONMENT, speech="A moment passes.")


def build_messages(
    persona: Persona,
    history: Sequence[HistoryItem],
    *,
    plan: bool = True,
    keep_plans: bool = False,
    memories: Sequence[str] = (),
    summary: str = "",
    calls: Sequence[CallSpec] = (),
) -> list[Message]:
    """Chat messages for a character's next turn.

    `history` is what the character perceived (`Heard`) and its own earlier turns (`Turn`), in
    order. Consecutive perceptions become one user message; own turns become assistant messages
    with thoughts kept and plans dropped (unless `keep_plans`). The result always ends with a
    user message, ready for the assistant's reply. `summary` and `calls` go into the system
    prompt (see `render_system_prompt`); `memories` close the last user message.
    """
    system = render_system_prompt(persona, plan=plan, summary=summary, calls=calls)
    messages = [Message("system", system)]
    pending: list[str] = []
    users = 0  # user messages so far (a flag, not a scan: histories run to thousands)

    def flush() -> None:
        nonlocal users
        if not pending:
            return
        body = "\n".join(pending)
        messages.append(Message("user", ("" if users else CONVERSATION_START) + body))
        users += 1
        pending.clear()

    for item in history:
        if isinstance(item, Turn):
            if not users and not pending:
                pending.append(render_perception(_SILENCE))
            flush()
            if messages[-1].role == "assistant":
                messages.append(Message("user", render_perception(_SILENCE)))
                users += 1
            text = render_turn(item, persona.name, keep_plan=keep_plans)
            messages.append(Message("assistant", text))
        else:
            pending.append(render_perception(item))
    if not pending and messages[-1].role != "user":
        pending.append(render_perception(_SILENCE))
    if memories:
        pending.append(render_memories(memories))
    flush()
    return messages


def render_memories(memories: Sequence[str]) -> str:
    """The memories recalled for this turn, as a block closing the last user message."""
    lines = "\n".join(f"- {_clean(m)}" for m in memories if _clean(m))
    return f"\n{MEMORIES_HEAD}\n{lines}" if lines else ""


# A short scene in another setting, teaching a base model the shape of a HER turn by example.
FEWSHOT_PREAMBLE = """\
A role-play script. Before each of a character's lines comes the actor's private plan inside \
<system_thinking></system_thinking>, in the third person. Then the character's name and line: \
inner thoughts inside <role_thinking></role_thinking> (heard by no one), visible actions inside \
<role_action></role_action>, spoken words as plain text. One line per turn.

### Example
Ysolde: <role_action>drops a ledger on the bar</role_action>You owe the guild forty crowns.
<system_thinking>Brannoc is afraid but hides it; he stalls and tries to learn what she \
knows.</system_thinking>Brannoc: <role_thinking>She has seen the spring accounts.\
</role_thinking><role_action>pours her a cup of cider</role_action>Forty? Sit, have a drink first.
Environment: The fire cracks.
Ysolde: I do not drink on duty.

### Scene
"""


def render_fewshot(
    persona: Persona,
    history: Sequence[HistoryItem],
    *,
    plan: bool = True,
    keep_plans: bool = False,
    memories: Sequence[str] = (),
    summary: str = "",
    calls: Sequence[CallSpec] = (),
) -> str:
    """A plain-text script prompt for base models without a chat template (no prefill).

    Every turn is one line, so "\n" ends the reply. Recalled `memories` come as a stage
    direction right before the reply: `(Mara remembers: ...; ...)`.
    """
    sheet = render_system_prompt(persona, plan=plan, summary=summary, calls=calls)
    # The script is told in the third person; drop the chat-style requirements section.
    sheet = sheet.split("\n\n===Requirements===")[0]
    lines = []
    for item in history:
        if isinstance(item, Turn):
            lines.append(render_turn(item, persona.name, keep_plan=keep_plans))
        else:
            lines.append(render_perception(item))
    recalled = [_clean(m) for m in memories if _clean(m)]
    if recalled:
        lines.append(f"({_name(persona.name)} remembers: {'; '.join(recalled)})")
    transcript = "\n".join(lines)
    text = f"{FEWSHOT_PREAMBLE}{sheet}\n\n{CONVERSATION_START}{transcript}"
    if transcript:
        text += "\n"
    return text
