"""A character's whole next-turn prompt in any of the prompt styles (`render_prompt`): the
messages of its style (`_prompts` for "chatml" and "template", `_her` for "her", a script for
"fewshot"), rendered for the model, with the start of the reply when the style prefills one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .._persona import Persona
from ._calls import CallSpec
from ._chat import _Marked, check_prompt_style, render_messages
from ._contract import Channel, HistoryItem, Message, Prompt, PromptStyle
from ._her import build_her_messages
from ._prompts import build_messages, render_fewshot
from ._quote import _marking, _unmark


def _prefill(name: str, plan: bool, prefill: bool = True) -> tuple[str, Channel | None]:
    if not prefill:
        return "", None
    # "NAME:" without the space: tokenizers attach a space to the word after it (" Shut",
    # " <role_action>"), so a prompt ending in a bare space token is one no model saw in
    # training (a tuned 270M model answered it with stray numbers).
    return ("<system_thinking>", "plan") if plan else (f"{name}:", "speech")


def render_prompt(
    persona: Persona,
    history: Sequence[HistoryItem],
    *,
    style: PromptStyle = "chatml",
    plan: bool = True,
    keep_plans: bool = False,
    chat_template: str | None = None,
    bos_token: str = "",
    eos_token: str = "",
    prefill: bool = True,
    memories: Sequence[str] = (),
    summary: str = "",
    calls: Sequence[CallSpec] = (),
) -> Prompt:
    """Render a character's next-turn prompt in one of the prompt styles.

    With `prefill` (the default) the prompt already begins the reply (`<system_thinking>`, or
    `NAME:` without a plan) so that even a base model starts in the right place; never in the
    "her" style, which is HER's own prompt (see `her_sdk.format._her`). `memories`,
    `summary` and `calls` are rendered into the system prompt (see `render_system_prompt`).
    The text is a `PromptText`: its `literal` ranges are the quoted text (persona, perceptions,
    memories, earlier turns), which engines tokenize without special tokens.
    """
    style = check_prompt_style(style, chat_template)
    # HER's models were trained, and are evaluated, without a prefill: the prompt ends
    # `<|im_start|>assistant\n` and the model writes `<system_thinking>` itself.
    prefill_text, start = _prefill(persona.name, plan, prefill and style != "her")
    render: Callable[..., str | list[Message]] = build_messages
    if style == "fewshot":
        render = render_fewshot
    elif style == "her":
        render = build_her_messages
    with _marking():  # quoted text is marked, then becomes the result's literal ranges
        rendered = render(
            persona,
            history,
            plan=plan,
            keep_plans=keep_plans,
            memories=memories,
            summary=summary,
            calls=calls,
        )
    if isinstance(rendered, str):  # few-shot: a script of HER turns, one a line
        text, stop = _unmark(rendered + prefill_text), ["\n"]
    else:
        text, stop = render_messages(
            [Message(m.role, _Marked(m.content)) for m in rendered],
            style,
            prefill=prefill_text,
            chat_template=chat_template,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    return Prompt(text=text, stop=stop, prefill=prefill_text, start=start, style=style)
