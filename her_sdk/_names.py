"""What a name (of a character or a player) or an action value may hold.

A leaf: the persona, the scene and typed actions check their names here, before anything is
rendered or a grammar is built from them.
"""

from __future__ import annotations

import re

__all__ = ["unnameable"]

# What a name or an action value may not hold at all: controls and line breaks of any kind
# (a NUL made llama.cpp refuse the grammar of every turn that names it), and format characters
# that hide text (zero-width spaces and joiners, direction marks, the BOM).
_UNNAMEABLE_RE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]"
)


def unnameable(text: str) -> str | None:
    """The first character `text` may not hold as a name or an action value, or None."""
    m = _UNNAMEABLE_RE.search(text)
    return None if m is None else m.group()
