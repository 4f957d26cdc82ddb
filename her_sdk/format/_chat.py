"""Chat formats: ChatML (the renderer, its inverse for chat-only servers, its stop strings and the
Jinja template that training gives a tokenizer), a model's own Jinja chat template, and the rule
that picks a prompt style for a model (`detect_prompt_style`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from .._errors import ConfigError, MissingDependencyError
from ._contract import PROMPT_STYLES, Message, PromptStyle, PromptText
from ._quote import _CLOSE, _OPEN, _remark, _unmark

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


def detect_prompt_style(
    chat_template: str | None, *, her_model: bool = False, declared: object = None
) -> PromptStyle:
    """How to render prompts for a model, from its metadata.

    A HER model (one whose metadata carries a HER format version) gets the style it declares
    (`declared`, its `her.prompt_style`: "her" for a released HER model exported so), else
    "chatml"; any model whose template is ChatML gets "chatml"; another chat template is used as
    it is ("template"); a model without one is a base model, prompted with a few-shot script
    ("fewshot").
    """
    if her_model:
        return "her" if declared == "her" else "chatml"
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


class ChatModel(Protocol):
    """What `render_messages` reads of a model: a `Backend` is one."""

    prompt_style: PromptStyle
    chat_template: str | None
    bos_token: str
    eos_token: str


class Rendered(NamedTuple):
    """A prompt rendered for a model, and the strings that end the model's answer."""

    text: PromptText
    stop: list[str]


def _render_chatml(
    messages: list[Message], prefill: str, model: _Model, label: str, one_line: bool
) -> tuple[str, list[str]]:
    return render_chatml(messages, prefill), list(CHATML_STOP)


def _render_template(
    messages: list[Message], prefill: str, model: _Model, label: str, one_line: bool
) -> tuple[str, list[str]]:
    template, bos, eos = model
    text = render_template(messages, template or "", prefill, bos_token=bos, eos_token=eos)
    return text, [eos] if eos else []


def _render_script(
    messages: list[Message], prefill: str, model: _Model, label: str, one_line: bool
) -> tuple[str, list[str]]:
    """A base model's plain-text script: the system text, a blank line, the messages (the
    model's own ones after `label:`), then `label:` for the answer. A one-line answer ends at
    the line's end; a longer one ends at a blank line, which then also separates messages."""
    sep = "\n" if one_line else "\n\n"
    head = ""
    if messages and messages[0].role == "system":
        head = messages[0].content.strip("\n") + "\n\n"
        messages = messages[1:]
    lines = []
    for m in messages:
        content = m.content.strip("\n")
        if m.role == "assistant" and not content.startswith(f"{label}:"):
            content = f"{label}: {content}"
        lines.append(content + sep)
    opener = f"{label}:" if one_line else f"{label}:\n"
    return head + "".join(lines) + opener + prefill, [sep]


class _Marked(str):
    """Content rendered while marking (`_quote._marking`): it carries its literal ranges as
    marks already (`render_prompt`'s messages), so they are kept as they are."""


def _quoted(content: str) -> str:
    """Message content with its literal ranges as marks: a `PromptText`'s own, marked content's
    own, else the whole of it (marks it holds are text, not marks: dropped)."""
    if isinstance(content, _Marked):
        return str(content)
    if isinstance(content, PromptText):
        return _remark(content)
    content = content.replace(_OPEN, "").replace(_CLOSE, "")
    return f"{_OPEN}{content}{_CLOSE}" if content else content


_Model = tuple[str | None, str, str]  # (chat template, BOS text, EOS text)
_RENDERERS: dict[
    PromptStyle, Callable[[list[Message], str, _Model, str, bool], tuple[str, list[str]]]
] = {
    "chatml": _render_chatml,
    "template": _render_template,
    "fewshot": _render_script,
    "her": _render_chatml,  # HER's messages (`_her`), in ChatML as HER's Qwen3 models read it
}


def render_messages(
    messages: Sequence[Message],
    style: PromptStyle | ChatModel,
    *,
    prefill: str = "",
    chat_template: str | None = None,
    bos_token: str = "",
    eos_token: str = "",
    label: str = "Answer",
    one_line: bool = False,
) -> Rendered:
    """Chat messages as the prompt text of one model, with the stop strings that end its answer.

    `style` is a prompt style, or a model (any `Backend`): then its style, chat template and
    BOS/EOS texts are used and the keywords of the same names are ignored. The open answer
    begins with `prefill`. By style:

    - "chatml" and "her": ChatML, stopped by ChatML's end markers;
    - "template": the model's own Jinja chat template, stopped by its EOS text;
    - "fewshot" (a base model without a template): a plain-text script that ends with
      `label:`; with `one_line` the answer ends at the line's end, otherwise at a blank line.

    Content is quoted text unless it says otherwise: a plain `str` is literal as a whole (an
    engine tokenizes it without special tokens, so no text a judge, a teacher or an agent is
    shown can become a control token), while a `PromptText` (what `render_prompt`, `literal`
    and the upkeep prompts make) keeps exactly its own literal ranges. The scaffolding is the
    chat format itself and `prefill`. This is the one path every prompt takes: an auxiliary
    prompt cannot forget it.
    """
    if not isinstance(style, str):
        chat_template, bos_token, eos_token = style.chat_template, style.bos_token, style.eos_token
        style = style.prompt_style
    render = _RENDERERS[check_prompt_style(style, chat_template)]
    msgs = [Message(m.role, _quoted(m.content)) for m in messages]
    text, stop = render(msgs, prefill, (chat_template, bos_token, eos_token), label, one_line)
    return Rendered(_unmark(text), stop)
