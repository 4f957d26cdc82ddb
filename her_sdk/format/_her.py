"""The prompt style "her": a character's prompt exactly as HER's data pipeline built the training
prompts of the released HER models (github.com/cydu24/HER), for running those models as trained.

What it reproduces, byte for byte, for a persona without her_sdk's extras:
- the system prompt of step 4.3 (`data_process_code/step4_setting_completion/
  step4_3_rebuild_system_prompt.py`, `build_system_prompt`) with the output format of step 1
  (`data_process_code/step1_data_process/convert_to_sft_format.py`, `get_output_format`);
  persona fields map to HER's: profile -> profile, background -> background, scenario ->
  scenario, others -> other characters (`**Name**: profile` paragraphs), goals -> motivation;
- the conversation as step 1's `build_training_samples_sharegpt` wrote it: others' turns as
  `Name: text` joined by blank lines, the first user message opened by
  `===Conversation Start===`, the character's own earlier turns as assistant messages `Name: …`
  with their thoughts and without their plan; a character who opens the scene answers right
  after the system prompt (HER has no filler line);
- no prefill: the model writes `<system_thinking>` itself, as in training and in HER's eval code.

What differs, always visibly: her_sdk's extras have no place in HER's prompt, so they are added
as sections of the same form only when used (secrets and relationships, a running summary,
typed actions, recalled memories); a character without a `source` is "You are X." where HER
would write "You are X from ."; quoted text is neutralised as in every style (no tags, chat
markers or `===` heads, one line per turn); a character's turns in a row are separate assistant
messages (HER merged them into one). This module is not the "chatml" style: that one is the
project's own prompt, for the project's own models.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._persona import Persona
from ._calls import CallSpec
from ._contract import (
    CONVERSATION_START,
    HistoryItem,
    Message,
    Turn,
)
from ._prompts import (
    introduction,
    persona_sections,
    render_memories,
    render_perception,
    render_turn,
)
from ._quote import _block, _clean, _name

# convert_to_sft_format.py, get_output_format() (lines 247-250): the Requirements of every HER
# training prompt.
HER_OUTPUT_FORMAT = """Your output should follow this two-part structure in strict order:
1. System Thinking: A single block at the very beginning, wrapped in <system_thinking> and </system_thinking>. This is the third-person analysis of how to portray the role.
2. Role-play Response: The response include the role's thought, speech and action. Use <role_thinking> your thought </role_thinking> for thoughts (invisible to others) and <role_action> your action </role_action> for actions (visible to others). These three elements (thought, speech and action) can appear multiple times and be freely interleaved.
(all thinking is invisible to others)"""  # noqa: E501

# eval_code/benchmarks/multi_turn/coser/prompts.py, the "her_without_systhink" Requirements
# (lines 53-55): HER's format for turns without a plan.
HER_OUTPUT_FORMAT_NO_PLAN = """Your output should be a Role-play Response that includes the role's thought, speech and action. Use <role_thinking> your thought </role_thinking> for thoughts (invisible to others) and <role_action> your action </role_action> for actions (visible to others). These three elements (thought, speech and action) can appear multiple times and be freely interleaved.
(all thinking is invisible to others)"""  # noqa: E501


def render_her_system_prompt(
    persona: Persona,
    *,
    plan: bool = True,
    summary: str = "",
    calls: Sequence[CallSpec] = (),
) -> str:
    """HER's system prompt (step 4.3's `build_system_prompt`) for `persona`.

    Sections are joined as HER joins them (a blank line before each head, no trailing one);
    her_sdk's extras come after HER's sections, before the Requirements, and only when set.
    """
    p = persona
    name = _name(p.name)
    parts = [introduction(p)]
    others = []
    for who in dict.fromkeys([*p.others, *p.relationships]):
        if who == p.name:
            continue
        known = _block(p.others.get(who, ""))
        text = f"**{_clean(who)}**: {known}" if known else f"**{_clean(who)}**"
        if who in p.relationships:
            text += f" ({name}'s view: {_clean(p.relationships[who])})"
        others.append(text)
    rules = HER_OUTPUT_FORMAT if plan else HER_OUTPUT_FORMAT_NO_PLAN
    sections = persona_sections(p, "\n\n".join(others), summary=summary, calls=calls, rules=rules)
    parts += [f"\n\n{head}\n{text}" for head, text in sections if text.strip()]
    return "".join(parts)


def build_her_messages(
    persona: Persona,
    history: Sequence[HistoryItem],
    *,
    plan: bool = True,
    keep_plans: bool = False,
    memories: Sequence[str] = (),
    summary: str = "",
    calls: Sequence[CallSpec] = (),
) -> list[Message]:
    """Chat messages for a character's next turn, as HER's training samples hold them.

    Perceptions between two of the character's turns become one user message, `Name: text`
    lines joined by blank lines; the first user message opens with `===Conversation Start===`
    (wherever it comes, as in HER's data). Own turns are assistant messages `Name: …` (thoughts
    kept, plans dropped unless `keep_plans`). Recalled `memories` close the last user message,
    or make one when the character speaks next without having heard anything.
    """
    system = render_her_system_prompt(persona, plan=plan, summary=summary, calls=calls)
    messages = [Message("system", system)]
    pending: list[str] = []
    opened = False  # whether a user message opened the conversation yet

    def flush() -> None:
        nonlocal opened
        if pending:
            body = "\n\n".join(pending)
            messages.append(Message("user", body if opened else CONVERSATION_START + body))
            opened = True
            pending.clear()

    for item in history:
        if isinstance(item, Turn):
            flush()
            # HER's `standard_format`: a space kept before a tag that follows speech
            text = render_turn(item, persona.name, keep_plan=keep_plans, spaced=True)
            messages.append(Message("assistant", text))
        else:
            # HER's `without_think`: the source's space between an action and the speech
            pending.append(render_perception(item, sep=" "))
    if block := render_memories(memories):  # as in the "chatml" style
        pending.append(block.lstrip("\n"))
    flush()
    return messages
