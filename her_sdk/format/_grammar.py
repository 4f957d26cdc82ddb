"""The GBNF grammar of one HER turn, for constrained decoding, typed-action calls included."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

from .._errors import ConfigError
from ._calls import _CALL_FORBIDDEN, CallSpec
from ._contract import MAX_PLAN_CHARS, MAX_THOUGHT_CHARS
from ._quote import _clean
from ._shape import QUOTE_MARKS, SENTENCE_END, TurnShape


def _gbnf_literal(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def build_grammar(
    name: str,
    *,
    plan: bool = True,
    prefilled: bool = True,
    max_plan_chars: int = MAX_PLAN_CHARS,
    max_thought_chars: int = MAX_THOUGHT_CHARS,
    max_action_chars: int = 120,
    max_speech_chars: int = 300,
    max_segments: int = 6,
    allowed_actions: Sequence[str] | None = None,
    calls: Sequence[CallSpec] | None = None,
    end: str = "\n",
    actions: Sequence[str] | None = None,
    shape: TurnShape | None = None,
) -> str:
    """GBNF for one HER turn, with a length cap on every section.

    The grammar covers what follows the prompt: when `prefilled`, the prompt already ends with
    `<system_thinking>` (plan) or `NAME:` (no plan; the turn then begins with a space).
    `allowed_actions`, when given, is the closed set of action texts legal right now (`actions=`,
    its first name, is deprecated). `calls`, when given,
    are the typed actions that may be called in an action segment, each only with legal values
    (see `render_call`); free action text then may not begin with '[', so it can never be taken
    for a call. Text never contains '<', so a section can only end by its closing tag, nor a
    newline unless the shape allows line breaks (and `end` is not one). Decoding cost stays
    small because the backend samples freely and consults the grammar only to verify the token
    it picked (see `LlamaBackend`).

    `shape`, when given, sets every cap (its counts of sections of each kind, sentences per
    speech, quotation marks; see `TurnShape`) and the `max_*` arguments are ignored.
    """
    if actions is not None:
        warnings.warn(
            "build_grammar(actions=) is deprecated; use allowed_actions=", DeprecationWarning, 2
        )
        allowed_actions = allowed_actions if allowed_actions is not None else actions
    if shape is not None:
        max_plan_chars, max_thought_chars = shape.max_plan_chars, shape.max_thought_chars
        max_action_chars, max_speech_chars = shape.max_action_chars, shape.max_speech_chars
        max_segments = shape.max_segments
    for label, n in (
        ("max_plan_chars", max_plan_chars),
        ("max_thought_chars", max_thought_chars),
        ("max_action_chars", max_action_chars),
        ("max_speech_chars", max_speech_chars),
        ("max_segments", max_segments),
    ):
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"{label} must be a positive integer")
    # What section text may not hold: '<' (only a tag may follow) and, unless the shape allows
    # line breaks, a newline. A section opens with a visible character either way.
    no = "<" if shape is not None and shape.line_breaks and end != "\n" else "<\\n"
    label_lit = _gbnf_literal(f"{name}: ")
    rules = []
    if plan:
        head = "" if prefilled else '"<system_thinking>" '
        rules.append(f"root ::= {head}plan {label_lit} body end")
        rules.append('plan ::= ptext "</system_thinking>"')
    else:
        head = '" "? ' if prefilled else f"{label_lit} "  # prefilled: the prompt ends "NAME:"
        rules.append(f"root ::= {head}body end")
    rules.append(f"end ::= {_gbnf_literal(end)}" if end else 'end ::= ""')
    rules += _body_rules(shape or TurnShape(max_segments=max_segments))
    rules.append('thought ::= "<role_thinking>" ttext "</role_thinking>"')
    forms = []
    if allowed_actions:
        forms += [_gbnf_literal(_clean(a)) for a in allowed_actions if _clean(a)]
    elif not calls:
        forms.append("atext")
    else:
        forms.append("ftext")
        rules.append(f'ftext ::= " "? [^<\\n\\[ ] [^<\\n]{{0,{max_action_chars - 2}}}')
    for k, (call_name, params) in enumerate(calls or []):
        parts = []
        for j, (key, spec) in enumerate(params):
            sep = " " if j == 0 else ", "
            parts.append(_gbnf_literal(f"{sep}{key}="))
            if isinstance(spec, list):
                values = [v for v in spec if v and not set(v) & _CALL_FORBIDDEN]
                if not values:
                    raise ConfigError(f"argument {key!r} of call {call_name!r} has no legal value")
                parts.append("(" + " | ".join(_gbnf_literal(v) for v in values) + ")")
            else:
                if not isinstance(spec, int) or spec < 1:
                    raise ConfigError(f"argument {key!r} of call {call_name!r}: bad text length")
                parts.append(f"[^,=<>\\[\\]\\n ] [^,=<>\\[\\]\\n]{{0,{spec - 1}}}")
        body = " ".join([_gbnf_literal(f"[{call_name}"), *parts, '"]"'])
        rules.append(f"call{k} ::= {body}")
        forms.append(f"call{k}")
    rules.append(f'action ::= "<role_action>" ({" | ".join(forms)}) "</role_action>"')
    # Sections hold at least one character; leading spaces are allowed because most tokens of
    # SentencePiece vocabularies begin with one, and refusing them would force slow resampling.
    rules.append(f"ptext ::= [^<\\n] [^{no}]{{0,{max_plan_chars - 1}}}")
    rules.append(f"ttext ::= [^<\\n] [^{no}]{{0,{max_thought_chars - 1}}}")
    rules.append(f"atext ::= [^<\\n] [^{no}]{{0,{max_action_chars - 1}}}")
    rules += _speech_rules(max_speech_chars, shape, no)
    return "\n".join(rules) + "\n"


def _body_rules(shape: TurnShape) -> list[str]:
    """The sections after the plan: at least one, at most `max_segments` (every kind counted,
    as `ShapeGuard` counts them), at most the shape's count of each kind, never two speeches
    in a row. One rule per state (sections left of each kind and in all, whether a speech came
    last); a count larger than the sections left cannot bind and is folded into it, so a shape
    without binding counts needs only two rules per section."""
    rules: dict[str, str] = {}

    def state(a: int, t: int, p: int, n: int, spoke: bool) -> str:
        a, t, p = min(a, n), min(t, n), min(p, n)
        key = f"s{a}-{t}-{p}-{n}{'-x' if spoke else ''}"
        if key in rules:
            return key
        rules[key] = ""  # reserved before recursing; the states form a DAG
        rules[key] = " | ".join([*_steps(a, t, p, n, spoke, state), '""'])
        return key

    n = shape.max_segments
    first = _steps(shape.max_actions, shape.max_thoughts, shape.max_speeches, n, False, state)
    return [f"body ::= {' | '.join(first)}"] + [f"{k} ::= {v}" for k, v in rules.items()]


def _steps(a: int, t: int, p: int, n: int, spoke: bool, state: Callable[..., str]) -> list[str]:
    """The sections that may come next, each followed by the state it leads to."""
    if not n:
        return []
    steps = []
    if p and not spoke:
        steps.append(f"speech {state(a, t, p - 1, n - 1, True)}")
    if a:
        steps.append(f"action {state(a - 1, t, p, n - 1, False)}")
    if t:
        steps.append(f"thought {state(a, t - 1, p, n - 1, False)}")
    return steps


def _speech_rules(max_chars: int, shape: TurnShape | None, no: str = "<\\n") -> list[str]:
    """Speech opens with a word, not stray punctuation (small models like to emit a lone ".");
    with a sentence limit, each sentence ends at '.', '!' or '?' and the last may stay open."""
    quotes = "" if shape is None or shape.quotes else QUOTE_MARKS
    word = f"[^<\\n .,;:!?{quotes}]"
    # Without quotes a speech may still open with one (small models like to; refusing it
    # pushes them to odd tokens) but holds none after it; the guard drops the one it opens with.
    opening = f"[{QUOTE_MARKS}]? " if quotes else ""
    if shape is None or shape.max_sentences is None:
        return [f'speech ::= " "? {opening}{word} [^{no}{quotes}]{{0,{max(max_chars - 2, 0)}}}']
    k = shape.max_sentences
    # Per sentence: a word, its text, up to three end marks and a space; k of them fit, with
    # the speech's leading space.
    per = max_chars // k - 6
    text = f"[^{no}{SENTENCE_END}{quotes}]{{0,{per}}}"
    rules = [f'speech ::= " "? {opening}sent1']
    for i in range(1, k + 1):
        more = f' (" "? sent{i + 1})?' if i < k else ""
        rules.append(f"sent{i} ::= {word} {text} ([{SENTENCE_END}]{{1,3}}{more})?")
    return rules
