"""Calls of typed actions as a turn writes them: `[NAME]` or `[NAME KEY=VALUE, KEY=VALUE]` inside
`<role_action>`. `render_call` / `parse_call` write and read one; `render_actions` is the prompt
section that lists them. The grammar that admits only declared calls is in `_grammar`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .._errors import ConfigError

# One argument of a typed action as the grammar and the prompt see it: its legal values, or the
# longest free text (in characters) it takes.
ParamSpec = list[str] | int
# A typed action: (name, [(argument, ParamSpec), ...]); arguments in the order they are written.
CallSpec = tuple[str, list[tuple[str, ParamSpec]]]

_CALL_RE = re.compile(r"\[\s*([^\s\[\]]*)\s*(.*?)\s*\]", re.S)
_IDENT_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
_CALL_FORBIDDEN = frozenset(",=[]<>\n")


def render_call(name: str, args: dict[str, str] | None = None) -> str:
    """A call as written in a turn: `[open_gate]`, `[give item=key, to=Mara]`."""
    if not _IDENT_RE.fullmatch(name):
        raise ConfigError(f"call name {name!r} is not a lower-case identifier")
    parts = []
    for key, value in (args or {}).items():
        value = " ".join(str(value).split())
        if not _IDENT_RE.fullmatch(key) or not value or set(value) & _CALL_FORBIDDEN:
            raise ConfigError(f"cannot write argument {key}={value!r} of {name!r} in a call")
        parts.append(f"{key}={value}")
    return f"[{name} {', '.join(parts)}]" if parts else f"[{name}]"


def parse_call(text: str) -> tuple[str, dict[str, str]] | None:
    """(name, arguments) of an action text written as a call; None for free text.

    Text in square brackets that is not a well-formed call raises `ConfigError` saying why.
    """
    m = _CALL_RE.fullmatch(text.strip())
    if m is None:
        return None
    name, body = m.group(1), m.group(2)
    if not _IDENT_RE.fullmatch(name):
        raise ConfigError(f"{text.strip()!r}: {name!r} is not an action name")
    args: dict[str, str] = {}
    for part in body.split(",") if body else []:
        key, eq, value = part.partition("=")
        key, value = key.strip(), " ".join(value.split())
        if not eq or not _IDENT_RE.fullmatch(key) or not value:
            raise ConfigError(f"{text.strip()!r}: write arguments as key=value, key=value")
        if key in args:
            raise ConfigError(f"{text.strip()!r}: argument {key!r} given twice")
        args[key] = value
    return name, args


def render_actions(calls: Sequence[CallSpec]) -> str:
    """The `===Actions You Can Take===` section: each call's form and legal values."""
    lines = []
    for name, params in calls:
        args = []
        for key, spec in params:
            shown = "|".join(spec) if isinstance(spec, list) else "TEXT"
            args.append(f"{key}={shown}")
        lines.append("- " + (f"[{name} {', '.join(args)}]" if args else f"[{name}]"))
    example = calls[0][0] + (" ..." if calls[0][1] else "") if calls else "name"
    lines.append(
        "To take one, write it alone inside <role_action></role_action>, exactly in this form "
        f"with one of the values, e.g. <role_action>[{example}]</role_action>. Other actions "
        "are plain text."
    )
    return "\n".join(lines)
