"""Chat formats: ChatML (the renderer, its inverse for chat-only servers, its stop strings and the
Jinja template that training gives a tokenizer), a model's own Jinja chat template, and the rule
that picks a prompt style for a model (`detect_prompt_style`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .._errors import ConfigError, MissingDependencyError
from ._contract import PROMPT_STYLES, Message, PromptStyle

# ChatML, the chat format of the released HER (Qwen3-based) models.
_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"
CHATML_STOP = [_IM_END, _IM_START, "<|endoftext|>"]
# The same format as a Jinja chat template, for tokenizers (training, export). Rendering a
# prompt with a generation prompt gives exactly `render_chatml(messages)`, and is a prefix of
# the prompt plus its completion, which completion-only loss needs.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_CHATML_MESSAGE = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>\n?|\Z)", re.S)


def render_chatml(messages: Sequence[Message], prefill: str = "") -> str:
    """Messages in ChatML, ending with an open assistant turn that begins with `prefill`."""
    body = "".join(f"{_IM_START}{m.role}\n{m.content}{_IM_END}\n" for m in messages)
    return f"{body}{_IM_START}assistant\n{prefill}"


def chatml_to_messages(prompt: str) -> tuple[list[Message], str]:
    """The inverse of `render_chatml`: (messages, prefill of the open assistant turn).

    For servers that only take chat messages. A prompt whose last assistant turn is closed
    has no prefill; a prompt that is not ChatML at all (few-shot) becomes one user message.
    """
    if _IM_START not in prompt:
        return [Message("user", prompt)], ""
    messages = [Message(r, c) for r, c in _CHATML_MESSAGE.findall(prompt)]
    prefill = ""
    if messages and messages[-1].role == "assistant" and not prompt.rstrip("\n").endswith(_IM_END):
        prefill = messages.pop().content
    return messages, prefill


def detect_prompt_style(chat_template: str | None, *, her_model: bool = False) -> PromptStyle:
    """How to render prompts for a model, from its metadata.

    A HER model (one whose metadata carries a HER format version) and any model whose template
    is ChatML get "chatml"; another chat template is used as it is ("template"); a model without
    one is a base model, prompted with a few-shot script ("fewshot").
    """
    if her_model:
        return "chatml"
    if not chat_template or not chat_template.strip():
        return "fewshot"
    if _IM_START in chat_template:
        return "chatml"
    return "template"


def check_prompt_style(style: object, chat_template: str | None = None) -> PromptStyle:
    """`style` as a `PromptStyle`, checked: a known name, and "template" only with a template.

    Backends call it once, when they are made; whatever renders for them then trusts the style.
    """
    known = next((s for s in PROMPT_STYLES if s == style), None)
    if known is None:
        names = ", ".join(repr(s) for s in PROMPT_STYLES)
        raise ConfigError(f"unknown prompt style {style!r}; use one of {names}")
    if known == "template" and not (chat_template and chat_template.strip()):
        raise ConfigError("prompt style 'template' needs the model's chat_template; use 'fewshot'")
    return known


def render_template(
    messages: Sequence[Message],
    template: str,
    prefill: str = "",
    *,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """Render with the model's own Jinja chat template (jinja2 comes with the llama extra)."""
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # pragma: no cover - jinja2 ships with the llama extra
        raise MissingDependencyError("jinja2", "llama") from None

    def raise_exception(msg: str) -> None:
        raise jinja2.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        text = env.from_string(template).render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except jinja2.TemplateError as exc:
        raise ConfigError(f"the chat template cannot render this prompt: {exc}") from None
    if bos_token and text.startswith(bos_token):
        text = text[len(bos_token) :]  # the engine adds BOS itself
    return text + prefill
