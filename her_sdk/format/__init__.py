"""The HER dual-layer format: the one contract that runtime, training, export and evaluation share.

A HER turn has four channels:

    plan     <system_thinking>…</system_thinking>  third person: how to play the character  PRIVATE
    thought  <role_thinking>…</role_thinking>      first person: the inner voice            PRIVATE
    action   <role_action>…</role_action>          visible behaviour                        public
    speech   untagged text                         spoken words                             public

Shape of one turn: `<system_thinking>PLAN</system_thinking>NAME: ` then any interleaving of
thought, action and speech segments. An action segment may hold a *call* of a typed action the
game declared, written `[NAME]` or `[NAME KEY=VALUE, KEY=VALUE]` and nothing else
(`<role_action>[give item=key, to=Traveler]</role_action>`; values hold no `, = [ ] < >` or
newline): `render_call` / `parse_call` write and read it, and the grammar admits only declared
calls with legal values. Any other action text is free text.

This package owns, and is the only place that knows (one module each; every name is re-exported
here, so import them from `her_sdk.format`):

- `_contract`: the vocabulary: channels, tags, caps, the types the others speak (`Turn`,
  `Heard`, `Message`, `Prompt`, ...), and the version of this contract (`HER_FORMAT_VERSION`),
  which export writes into a model's metadata (`her.format_version`) and the runtime checks when
  it loads one;
- `_parse`: `parse_turn(text)` and the incremental `TurnParser`, tolerant of what real models emit
  (missing/unclosed tags, legacy tags, a reasoning model's leading `<think>` block, the CoSER
  `[thought]`/`(action)` style). The safety rule is absolute: text inside a private section never
  comes out on a public channel, and an unclosed private section stays private to the end of the
  turn;
- `_calls`: typed-action calls, written and read;
- `_quote`: how quoted text (players' lines, persona fields, memories) is neutralised and marked;
- `_prompts`: the system prompt from a `Persona`, perceptions as user messages, a character's own
  earlier turns (thoughts kept, plans dropped unless asked), as messages for ChatML or the model's
  own chat template and as a few-shot script for base models; the prompt
  sections of a character's long-term memory (the running summary `===What Happened Before===`
  in the system prompt; the memories recalled for this turn, `===Your Memories===`, at the end of
  the prompt so that an engine's prompt cache stays valid before them) and of its typed actions
  (`===Actions You Can Take===`);
- `_her`: the prompt style "her": HER's own training prompt, byte for byte, for the released
  HER models (no prefill; its differences from HER's data are listed there);
- `_render`: `render_prompt`, a character's whole next-turn prompt in any style;
- `_chat`: ChatML (the renderer, its inverse for chat-only servers, its stop strings and the
  Jinja template `CHATML_TEMPLATE` that training gives a tokenizer), a model's own chat template,
  and the rule that picks a prompt style for a model (`detect_prompt_style`);
- `_grammar`: the GBNF grammar of a turn for constrained decoding, typed-action calls included;
- `_shape`: `TurnShape`, the most sections and the longest text a turn may have (the grammar
  writes within it; `ShapeGuard` stops a streamed turn at its edge on engines without one), and
  the metadata keys where a model declares the section lengths it was trained with.

It does not generate, hold state, or know about scenes; see `her_sdk.Character` for that.
Bad arguments raise `her_sdk.ConfigError`.
"""

from __future__ import annotations

from ._calls import (
    CallSpec,
    ParamSpec,
    parse_call,
    render_actions,
    render_call,
)
from ._chat import (
    CHATML_STOP,
    CHATML_TEMPLATE,
    ChatModel,
    Rendered,
    chatml_to_messages,
    check_prompt_style,
    detect_prompt_style,
    render_chatml,
    render_messages,
    render_template,
)
from ._contract import (
    CHANNELS,
    CONVERSATION_START,
    ENVIRONMENT,
    FORMAT_VERSION_KEY,
    HER_FORMAT_VERSION,
    MAX_PLAN_CHARS,
    MAX_THOUGHT_CHARS,
    MEMORIES_HEAD,
    PRIVATE_CHANNELS,
    PROMPT_STYLES,
    PUBLIC_CHANNELS,
    TAG,
    Channel,
    Delta,
    Heard,
    HistoryItem,
    Message,
    Prompt,
    PromptStyle,
    PromptText,
    Segment,
    Turn,
    format_version_problem,
)
from ._grammar import (
    build_grammar,
)
from ._her import (
    HER_OUTPUT_FORMAT,
    build_her_messages,
    render_her_system_prompt,
)
from ._parse import (
    TurnParser,
    parse_turn,
)
from ._prompts import (
    FEWSHOT_PREAMBLE,
    build_messages,
    render_fewshot,
    render_memories,
    render_perception,
    render_system_prompt,
    render_turn,
    requirements,
)
from ._render import render_prompt
from ._shape import QUOTE_MARKS, SHAPE_METADATA, ShapeGuard, TurnShape

__all__ = [
    "CHANNELS",
    "CHATML_STOP",
    "CHATML_TEMPLATE",
    "CONVERSATION_START",
    "ENVIRONMENT",
    "FEWSHOT_PREAMBLE",
    "FORMAT_VERSION_KEY",
    "HER_FORMAT_VERSION",
    "HER_OUTPUT_FORMAT",
    "MAX_PLAN_CHARS",
    "MAX_THOUGHT_CHARS",
    "MEMORIES_HEAD",
    "PRIVATE_CHANNELS",
    "PROMPT_STYLES",
    "PUBLIC_CHANNELS",
    "QUOTE_MARKS",
    "SHAPE_METADATA",
    "TAG",
    "CallSpec",
    "Channel",
    "ChatModel",
    "Delta",
    "Heard",
    "HistoryItem",
    "Message",
    "ParamSpec",
    "Prompt",
    "PromptStyle",
    "PromptText",
    "Rendered",
    "Segment",
    "ShapeGuard",
    "Turn",
    "TurnParser",
    "TurnShape",
    "build_grammar",
    "build_her_messages",
    "build_messages",
    "chatml_to_messages",
    "check_prompt_style",
    "detect_prompt_style",
    "format_version_problem",
    "parse_call",
    "parse_turn",
    "render_actions",
    "render_call",
    "render_chatml",
    "render_fewshot",
    "render_her_system_prompt",
    "render_memories",
    "render_messages",
    "render_perception",
    "render_prompt",
    "render_system_prompt",
    "render_template",
    "render_turn",
    "requirements",
]
