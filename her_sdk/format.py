"""The HER dual-layer format: the one contract that runtime, training, export and evaluation share.

A HER turn has four channels:

    plan     <system_thinking>…</system_thinking>  third person: how to play the character  PRIVATE
    thought  <role_thinking>…</role_thinking>      first person: the inner voice            PRIVATE
    action   <role_action>…</role_action>          visible behaviour                        public
    speech   untagged text                         spoken words                             public

Shape of one turn: `<system_thinking>PLAN</system_thinking>NAME: ` then any interleaving of
thought, action and speech segments. This module owns, and is the only place that knows:

- parsing: `parse_turn(text)` and the incremental `TurnParser`, tolerant of what real models emit
  (missing/unclosed tags, legacy tags, the CoSER `[thought]`/`(action)` style). The safety rule is
  absolute: text inside a private section never comes out on a public channel, and an unclosed
  private section stays private to the end of the turn;
- prompt rendering: the system prompt from a `Persona`, perceptions as user messages, a
  character's own earlier turns (thoughts kept, plans dropped unless asked), and the three prompt
  styles (ChatML, the model's own chat template, few-shot for base models);
- the GBNF grammar of a turn for constrained decoding.

It does not generate, hold state, or know about scenes; see `her_sdk.Character` for that.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec

from ._persona import Persona

__all__ = [
    "CHANNELS",
    "PRIVATE_CHANNELS",
    "PUBLIC_CHANNELS",
    "Delta",
    "Heard",
    "Message",
    "Prompt",
    "PromptStyle",
    "Segment",
    "Turn",
    "TurnParser",
    "build_grammar",
    "build_messages",
    "parse_turn",
    "render_perception",
    "render_prompt",
    "render_system_prompt",
    "render_turn",
]

Channel = Literal["plan", "thought", "action", "speech"]
PromptStyle = Literal["chatml", "template", "fewshot"]

CHANNELS: tuple[str, ...] = ("plan", "thought", "action", "speech")
PRIVATE_CHANNELS = frozenset({"plan", "thought"})
PUBLIC_CHANNELS = frozenset({"action", "speech"})

# Canonical tag of each tagged channel.
TAG = {"plan": "system_thinking", "thought": "role_thinking", "action": "role_action"}

# Every tag name a parser accepts, canonical and legacy, and the channel it opens.
_TAG_CHANNEL: dict[str, str] = {
    "system_thinking": "plan",
    "system_think": "plan",
    "role_thinking": "thought",
    "role_think": "thought",
    "long_role_thinking": "thought",
    "think": "thought",
    "thought": "thought",
    "thinking": "thought",
    "role_action": "action",
    "role_speech": "speech",
}
_MAX_TAG_LEN = max(len(t) for t in _TAG_CHANNEL) + 8  # room for '<', '/', '>' and spaces
_TAG_RE = re.compile(r"<\s*(/?)\s*([A-Za-z_]+)\s*>")
_BRACKETS = {"[": ("]", "thought"), "(": (")", "action")}
_MAX_LABEL = 48  # longest "Speaker:" label recognised when the name is unknown
_LABEL_PREFIX_RE = re.compile(rf"[^\s<>\[\]():\n][^<>\[\]():\n]{{0,{_MAX_LABEL - 1}}}")
_LABEL_RE = re.compile(_LABEL_PREFIX_RE.pattern + ":")


class Segment(msgspec.Struct, frozen=True, array_like=True):
    """One contiguous piece of a turn on one channel."""

    channel: str
    text: str


class Delta(msgspec.Struct, frozen=True):
    """A piece of streamed text on one channel, as the parser recognised it.

    `segment` numbers the sections of the turn: it grows whenever a new section begins, so a UI
    can tell two actions in a row apart (deltas with the same number belong together).
    """

    channel: str
    text: str
    segment: int = 0

    @property
    def private(self) -> bool:
        return self.channel in PRIVATE_CHANNELS


class Turn(msgspec.Struct, frozen=True, kw_only=True, tag="turn"):
    """A parsed turn. `plan` and `thoughts` are private; `actions` and `speech` are public."""

    plan: str = ""
    thoughts: list[str] = msgspec.field(default_factory=list)
    actions: list[str] = msgspec.field(default_factory=list)
    speech: str = ""
    segments: list[Segment] = msgspec.field(default_factory=list)

    @classmethod
    def from_segments(cls, segments: Iterable[Segment]) -> Turn:
        segs = [Segment(s.channel, s.text.strip()) for s in segments if s.text.strip()]
        return cls(
            plan=" ".join(s.text for s in segs if s.channel == "plan"),
            thoughts=[s.text for s in segs if s.channel == "thought"],
            actions=[s.text for s in segs if s.channel == "action"],
            speech=" ".join(s.text for s in segs if s.channel == "speech"),
            segments=segs,
        )

    def public(self) -> Turn:
        """The same turn with every private segment removed: what others may perceive."""
        return Turn.from_segments(s for s in self.segments if s.channel in PUBLIC_CHANNELS)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def _classify_tag(s: str) -> tuple[str, str, bool, int] | Literal["partial"] | None:
    """Look at text starting with '<'.

    Returns ("tag", channel, closing, length) for a complete known tag, "partial" when more
    input could still make it one, and None when it is plain text.
    """
    m = _TAG_RE.match(s)
    if m:
        name = m.group(2).lower()
        if name in _TAG_CHANNEL:
            return ("tag", _TAG_CHANNEL[name], m.group(1) == "/", m.end())
        return None
    if len(s) >= _MAX_TAG_LEN:
        return None
    m = re.fullmatch(r"<\s*/?\s*([A-Za-z_]*)\s*", s)
    if m is None:
        return None
    word = m.group(1).lower()
    if s.rstrip() != s and word:  # "<role_action " may still close with '>'
        return "partial" if word in _TAG_CHANNEL else None
    return "partial" if any(t.startswith(word) for t in _TAG_CHANNEL) else None


class TurnParser:
    """Incremental parser of one turn: feed text as it streams, get typed deltas.

    `feed(chunk)` returns the deltas that are certain so far; text that could still turn out to
    be a tag or a speaker label is held back until the next chunk or `close()`. Whatever the
    chunking, the concatenated deltas are the same. The parser never raises on any input.

    - `name`: the speaking character; a leading `NAME:` is removed from speech.
    - `start`: the channel the text starts in, when the prompt already opened a section
      (e.g. "plan" when the prompt ended with `<system_thinking>`).
    - `coser`: treat `[...]` as thought and `(...)` as action. `None` (default) means: only until
      the first HER tag appears, since HER-tagged text uses brackets literally.
    """

    def __init__(
        self, name: str | None = None, *, start: str | None = None, coser: bool | None = None
    ) -> None:
        self._name = name.strip() if name else None
        self._buf = ""
        self._segments: list[list[str]] = []
        self._coser = coser
        self._seen_tag = start is not None
        self._closed = False
        # Current section: None (untagged speech) or (channel, closer), closer being the
        # bracket that ends it or "" for a tagged section.
        self._section: tuple[str, str] | None = None
        self._depth = 0
        self._expect_label = True
        if start in PRIVATE_CHANNELS or start == "action":
            self._section = (start, "")
            self._expect_label = False

    # -- public API ---------------------------------------------------------------------------

    def feed(self, chunk: str) -> list[Delta]:
        if self._closed or not chunk:
            return []
        self._buf += chunk
        return self._drain(final=False)

    def close(self) -> list[Delta]:
        if self._closed:
            return []
        out = self._drain(final=True)
        self._closed = True
        return out

    @property
    def channel(self) -> str:
        """The channel the parser is in now ("speech" outside any section)."""
        return self._section[0] if self._section else "speech"

    def turn(self) -> Turn:
        """The turn parsed so far (complete after `close()`)."""
        return Turn.from_segments(Segment(c, t) for c, t in self._segments)

    # -- machinery ------------------------------------------------------------------------------

    def _emit(self, out: list[Delta], channel: str, text: str) -> None:
        if not text:
            return
        if channel in PUBLIC_CHANNELS and self._expect_label and text.strip():
            self._expect_label = False
        if self._segments and self._segments[-1][0] == channel and not self._new_segment:
            self._segments[-1][1] += text
        else:
            self._segments.append([channel, text])
            self._new_segment = False
        index = len(self._segments) - 1
        if out and out[-1].channel == channel and out[-1].segment == index:
            out[-1] = Delta(channel, out[-1].text + text, index)
        else:
            out.append(Delta(channel, text, index))

    _new_segment = True
    _after_plan = False

    def _open(self, channel: str, closer: str) -> None:
        self._section = (channel, closer)
        self._depth = 1
        self._new_segment = True

    def _end_section(self, channel: str) -> None:
        self._section = None
        self._new_segment = True
        if channel == "plan":
            self._expect_label = True
            self._after_plan = True
        elif self._name:
            # Models sometimes repeat their own "NAME:" after an action or thought.
            self._expect_label = True

    def _use_brackets(self) -> bool:
        return self._coser if self._coser is not None else not self._seen_tag

    def _drain(self, final: bool) -> list[Delta]:
        out: list[Delta] = []
        buf = self._buf
        i = 0
        n = len(buf)
        while i < n:
            if self._section is None and self._expect_label:
                # A label can follow leading private sections, so markup does not end the wait.
                first = len(buf[i:]) - len(buf[i:].lstrip())
                if i + first >= n or buf[i + first] not in "<[(":
                    consumed = self._strip_label(buf, i, final)
                    if consumed is None:  # need more text to decide
                        break
                    if consumed != i or not self._expect_label:
                        i = consumed
                        continue
            channel = self.channel
            closer = self._section[1] if self._section else ""
            private = channel in PRIVATE_CHANNELS
            # Find the next character that may change state.
            specials = "<"
            if closer:
                specials += closer + ("[" if closer == "]" else "(")
            elif self._section is None and self._use_brackets():
                specials += "[("
            j = i
            while j < n and buf[j] not in specials:
                j += 1
            self._emit(out, channel, buf[i:j])
            i = j
            if i >= n:
                break
            c = buf[i]
            if c == "<":
                kind = _classify_tag(buf[i:])
                if kind == "partial":
                    if not final:
                        break
                    kind = None
                if kind is None:
                    self._emit(out, channel, "<")
                    i += 1
                    continue
                _, tag_channel, closing, length = kind
                i += length
                self._seen_tag = True
                self._on_tag(tag_channel, closing, private, closer)
            elif closer and c == closer:
                i += 1
                self._depth -= 1
                if self._depth == 0:
                    self._end_section(channel)
                else:
                    self._emit(out, channel, c)
            elif closer and c in "[(":
                self._depth += 1
                i += 1
                self._emit(out, channel, c)
            else:  # an opening CoSER bracket in speech
                self._open(_BRACKETS[c][1], _BRACKETS[c][0])
                i += 1
        self._buf = buf[i:]
        if final and self._buf:  # unfinished label or tag: it is text of the current channel
            self._emit(out, self.channel, self._buf)
            self._buf = ""
        return out

    def _on_tag(self, tag_channel: str, closing: bool, private: bool, closer: str) -> None:
        current = self.channel
        if private:
            # Inside a private section only its own closing tag ends it; anything else, even
            # another opening tag, is private text. When in doubt, stay private.
            if closing and tag_channel == current and not closer:
                self._end_section(current)
            elif closing and tag_channel == current and closer:
                pass  # a tag cannot close a bracket section; stay private
            return
        if closing:
            if self._section is not None and tag_channel == current and not closer:
                self._end_section(current)
            return  # stray closing tag in public text: dropped
        if tag_channel == "speech":  # <role_speech> merely marks speech
            if self._section is not None:
                self._end_section(current)
            return
        if self._section is not None:
            self._end_section(current)
        self._open(tag_channel, "")

    def _strip_label(self, buf: str, i: int, final: bool) -> int | None:
        """Skip a leading `NAME:` at the start of the public part. Returns the new index, or
        None when the buffer is too short to decide."""
        j = i
        while j < len(buf) and buf[j] in " \t\r\n":
            j += 1
        rest = buf[j:]
        if not rest:
            if final:
                self._expect_label = False
            return None if not final else len(buf)
        if self._name:
            label = self._name + ":"
            if rest[: len(label)].lower() == label.lower():
                k = j + len(label)
                while k < len(buf) and buf[k] in " \t":
                    k += 1
                if k == len(buf) and not final:
                    return None  # spaces after the label may continue in the next chunk
                self._expect_label = False
                return k
            if label.lower().startswith(rest.lower()) and not final:
                return None
            self._expect_label = False
            return i
        # Unknown name: a short label without markup, recognised only right after a plan.
        if not self._after_plan:
            self._expect_label = False
            return i
        m = _LABEL_RE.match(rest)
        if m:
            k = j + m.end()
            while k < len(buf) and buf[k] in " \t":
                k += 1
            if k == len(buf) and not final:
                return None
            self._expect_label = False
            return k
        if not final and _LABEL_PREFIX_RE.fullmatch(rest):
            return None
        self._expect_label = False
        return i


def parse_turn(text: str, name: str | None = None, *, start: str | None = None) -> Turn:
    """Parse one complete turn. Equivalent to feeding `text` to a `TurnParser` and closing it."""
    parser = TurnParser(name, start=start)
    parser.feed(text if isinstance(text, str) else str(text))
    parser.close()
    return parser.turn()


# ---------------------------------------------------------------------------------------------
# Rendering turns and perceptions
# ---------------------------------------------------------------------------------------------


_SPECIAL_RE = re.compile(r"<\|[^<>]{0,40}\|>|<\s*/?\s*[A-Za-z_]+\s*>")


def _clean(text: str) -> str:
    # Content may never carry markup of its own (HER tags, <|im_start|>, <start_of_turn>):
    # that would let one channel forge another, or a player forge the prompt's structure.
    return _SPECIAL_RE.sub("", text).replace("\n", " ").strip()


def render_turn(turn: Turn, name: str, *, keep_plan: bool = False, label: bool = True) -> str:
    """A turn as HER text: `<system_thinking>…</system_thinking>NAME: ` then its segments.

    The plan is left out unless `keep_plan`; thoughts are kept (the character remembers them).
    """
    parts: list[str] = []
    if keep_plan and turn.plan:
        parts.append(f"<system_thinking>{_clean(turn.plan)}</system_thinking>")
    if label:
        parts.append(f"{name}: ")
    for seg in turn.segments:
        if seg.channel == "plan":
            continue
        if seg.channel == "speech":
            parts.append(_clean(seg.text))
        else:
            tag = TAG[seg.channel]
            parts.append(f"<{tag}>{_clean(seg.text)}</{tag}>")
    return "".join(parts)


class Heard(msgspec.Struct, frozen=True, kw_only=True, tag="heard"):
    """Something a character perceived: another's public action/speech, or narration.

    `speaker` is "Environment" for narration. Never holds anyone's private text.
    """

    speaker: str
    speech: str = ""
    actions: list[str] = msgspec.field(default_factory=list)


ENVIRONMENT = "Environment"


def render_perception(heard: Heard) -> str:
    """One perception line: `Name: <role_action>…</role_action>speech` or `Environment: …`."""
    if heard.speaker == ENVIRONMENT:
        return f"{ENVIRONMENT}: {_clean(heard.speech)}"
    acts = "".join(f"<role_action>{_clean(a)}</role_action>" for a in heard.actions if a.strip())
    return f"{heard.speaker}: {acts}{_clean(heard.speech)}"


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


def render_system_prompt(persona: Persona, *, plan: bool = True) -> str:
    """The HER system prompt; each section is omitted when empty."""
    p = persona
    intro = f"You are {p.name} from {p.source}." if p.source else f"You are {p.name}."
    others = []
    for who in dict.fromkeys([*p.others, *p.relationships]):
        line = f"{who}: {p.others.get(who, '')}".rstrip(": ")
        if who in p.relationships:
            line += f" ({p.name}'s view: {p.relationships[who]})"
        others.append(line)
    inner = "\n".join(
        x for x in (p.goals, f"Secrets you keep: {p.secrets}" if p.secrets else "") if x
    )
    sections = [
        (f"==={p.name}'s Profile===", p.profile),
        ("===Background===", p.background),
        ("===Current Scenario===", p.scenario),
        ("===Information about other Characters===", "\n".join(others)),
        ("===Your Inner Thoughts===", inner),
        ("===Requirements===", requirements(p.name, plan=plan)),
    ]
    body = "\n\n".join(f"{head}\n{text.strip()}" for head, text in sections if text.strip())
    return f"{intro}\n\n{body}"


class Message(msgspec.Struct, frozen=True):
    role: str  # "system" | "user" | "assistant"
    content: str


CONVERSATION_START = "===Conversation Start===\n\n"
_SILENCE = Heard(speaker=ENVIRONMENT, speech="A moment passes.")

HistoryItem = Heard | Turn


def build_messages(
    persona: Persona,
    history: Sequence[HistoryItem],
    *,
    plan: bool = True,
    keep_plans: bool = False,
) -> list[Message]:
    """Chat messages for a character's next turn.

    `history` is what the character perceived (`Heard`) and its own earlier turns (`Turn`), in
    order. Consecutive perceptions become one user message; own turns become assistant messages
    with thoughts kept and plans dropped (unless `keep_plans`). The result always ends with a
    user message, ready for the assistant's reply.
    """
    messages = [Message("system", render_system_prompt(persona, plan=plan))]
    pending: list[str] = []

    def flush() -> None:
        if not pending:
            return
        first = not any(m.role == "user" for m in messages)
        body = "\n".join(pending)
        messages.append(Message("user", (CONVERSATION_START if first else "") + body))
        pending.clear()

    for item in history:
        if isinstance(item, Turn):
            if not any(m.role == "user" for m in messages) and not pending:
                pending.append(render_perception(_SILENCE))
            flush()
            if messages[-1].role == "assistant":
                messages.append(Message("user", render_perception(_SILENCE)))
            text = render_turn(item, persona.name, keep_plan=keep_plans)
            messages.append(Message("assistant", text))
        else:
            pending.append(render_perception(item))
    if not pending and messages[-1].role != "user":
        pending.append(render_perception(_SILENCE))
    flush()
    return messages


class Prompt(msgspec.Struct, frozen=True, kw_only=True):
    """A rendered prompt, ready for a backend.

    `text` ends with `prefill`, the start of the reply that the prompt already wrote (e.g.
    `<system_thinking>`); `start` is the parser channel that prefill leaves open.
    """

    text: str
    stop: list[str]
    prefill: str = ""
    start: str | None = None
    style: str = "chatml"


CHATML_STOP = ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]


def _prefill(name: str, plan: bool, prefill: bool = True) -> tuple[str, str | None]:
    if not prefill:
        return "", None
    return ("<system_thinking>", "plan") if plan else (f"{name}: ", None)


def render_chatml(messages: Sequence[Message], prefill: str = "") -> str:
    body = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
    return f"{body}<|im_start|>assistant\n{prefill}"


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
        from ._errors import MissingDependencyError

        raise MissingDependencyError("jinja2", "llama") from None

    def raise_exception(msg: str) -> None:
        raise jinja2.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    text = env.from_string(template).render(
        messages=[{"role": m.role, "content": m.content} for m in messages],
        add_generation_prompt=True,
        bos_token=bos_token,
        eos_token=eos_token,
    )
    if bos_token and text.startswith(bos_token):
        text = text[len(bos_token) :]  # the engine adds BOS itself
    return text + prefill


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
) -> str:
    """A plain-text script prompt for base models without a chat template (no prefill).

    Every turn is one line, so "\n" ends the reply.
    """
    sheet = render_system_prompt(persona, plan=plan)
    # The script is told in the third person; drop the chat-style requirements section.
    sheet = sheet.split("\n\n===Requirements===")[0]
    lines = []
    for item in history:
        if isinstance(item, Turn):
            lines.append(render_turn(item, persona.name, keep_plan=keep_plans))
        else:
            lines.append(render_perception(item))
    transcript = "\n".join(lines)
    text = f"{FEWSHOT_PREAMBLE}{sheet}\n\n{CONVERSATION_START}{transcript}"
    if transcript:
        text += "\n"
    return text


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
) -> Prompt:
    """Render a character's next-turn prompt in one of the three styles.

    With `prefill` (the default) the prompt already begins the reply (`<system_thinking>`, or
    `NAME: ` without a plan) so that even a base model starts in the right place.
    """
    prefill_text, start = _prefill(persona.name, plan, prefill)
    if style == "fewshot":
        text = render_fewshot(persona, history, plan=plan, keep_plans=keep_plans)
        return Prompt(
            text=text + prefill_text, stop=["\n"], prefill=prefill_text, start=start, style=style
        )
    messages = build_messages(persona, history, plan=plan, keep_plans=keep_plans)
    if style == "template":
        if not chat_template:
            raise ValueError("style='template' needs the model's chat_template")
        text = render_template(
            messages, chat_template, prefill_text, bos_token=bos_token, eos_token=eos_token
        )
        stop = [eos_token] if eos_token else []
        return Prompt(text=text, stop=stop, prefill=prefill_text, start=start, style=style)
    if style != "chatml":
        raise ValueError(f"unknown prompt style {style!r}")
    return Prompt(
        text=render_chatml(messages, prefill_text),
        stop=list(CHATML_STOP),
        prefill=prefill_text,
        start=start,
        style=style,
    )


# ---------------------------------------------------------------------------------------------
# Grammar
# ---------------------------------------------------------------------------------------------


def _gbnf_literal(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def build_grammar(
    name: str,
    *,
    plan: bool = True,
    prefilled: bool = True,
    max_plan_chars: int = 400,
    max_thought_chars: int = 240,
    max_action_chars: int = 120,
    max_speech_chars: int = 300,
    max_segments: int = 6,
    actions: Sequence[str] | None = None,
    end: str = "\n",
) -> str:
    """GBNF for one HER turn, with a length cap on every section.

    The grammar covers what follows the prompt: when `prefilled`, the prompt already ends with
    `<system_thinking>` (plan) or `NAME: ` (no plan). `actions`, when given, is the closed set of
    actions legal right now. Text never contains '<' or a newline, so a section can only end by
    its closing tag. Decoding cost stays small because the backend samples freely and consults
    the grammar only to verify the token it picked (see `LlamaBackend`).
    """
    for label, n in (
        ("max_plan_chars", max_plan_chars),
        ("max_thought_chars", max_thought_chars),
        ("max_action_chars", max_action_chars),
        ("max_speech_chars", max_speech_chars),
        ("max_segments", max_segments),
    ):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{label} must be a positive integer")
    label_lit = _gbnf_literal(f"{name}: ")
    rules = []
    if plan:
        head = "" if prefilled else '"<system_thinking>" '
        rules.append(f"root ::= {head}plan {label_lit} body end")
        rules.append('plan ::= ptext "</system_thinking>"')
    else:
        head = "" if prefilled else f"{label_lit} "
        rules.append(f"root ::= {head}body end")
    rules.append(f"end ::= {_gbnf_literal(end)}" if end else 'end ::= ""')
    rest = max_segments - 1
    rules.append(
        f"body ::= speech (tagged speech?){{0,{rest}}} | (tagged speech?){{1,{max_segments}}}"
    )
    rules.append("tagged ::= thought | action")
    rules.append('thought ::= "<role_thinking>" ttext "</role_thinking>"')
    if actions:
        alts = " | ".join(_gbnf_literal(_clean(a)) for a in actions if _clean(a))
        rules.append(f'action ::= "<role_action>" ({alts}) "</role_action>"')
    else:
        rules.append('action ::= "<role_action>" atext "</role_action>"')
    # Sections hold at least one character; leading spaces are allowed because most tokens of
    # SentencePiece vocabularies begin with one, and refusing them would force slow resampling.
    rules.append(f"ptext ::= [^<\\n] [^<\\n]{{0,{max_plan_chars - 1}}}")
    rules.append(f"ttext ::= [^<\\n] [^<\\n]{{0,{max_thought_chars - 1}}}")
    rules.append(f"atext ::= [^<\\n] [^<\\n]{{0,{max_action_chars - 1}}}")
    # Speech opens with a word, not stray punctuation (small models like to emit a lone ".").
    rules.append(f'speech ::= " "? [^<\\n .,;:!?] [^<\\n]{{0,{max(max_speech_chars - 2, 0)}}}')
    return "\n".join(rules) + "\n"
