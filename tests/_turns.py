"""Shared helper of the tests that decode real turns: the HER shape, wherever a budget ends it."""

from __future__ import annotations

import re


def her_shaped(raw: str, name: str, *, complete: bool, plan_newlines: bool = True) -> bool:
    """`raw` is `<system_thinking>PLAN</system_thinking>NAME:...`, or, when not `complete` (the
    turn hit its token budget), a prefix of such a turn, wherever the budget fell: inside the
    plan, or inside `</system_thinking>NAME:`. The plan holds no tag (and no newline unless
    `plan_newlines`); what follows `NAME:` is not checked here."""
    m = re.match(r"<system_thinking>[^<]*" if plan_newlines else r"<system_thinking>[^<\n]*", raw)
    if m is None:
        return not complete and "<system_thinking>".startswith(raw)
    rest, closing = raw[m.end() :], f"</system_thinking>{name}:"
    return rest.startswith(closing) or (not complete and closing.startswith(rest))
