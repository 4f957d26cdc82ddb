"""The secrets guard: a character's secrets never reach its public speech and actions verbatim.

A persona's `secrets` belong in its own prompt, plan and thoughts. What it says and does in
public is checked, while it streams, against them: any run of `min_chars` (12) or more letters
and digits of a secret is a reveal. Both sides are compared in a folded space, so spelling
tricks do not hide a secret: Unicode compatibility forms are folded (fullwidth letters,
ligatures), accents dropped, look-alike letters of other scripts read as Latin (Cyrillic "а",
Greek "ο"), case ignored, and everything but letters and digits ignored (spaces, hyphens, dots,
zero-width characters, the boundary between an action and a speech), so "I-l.e t my brother"
and "I let my brother" are the same run. The guard holds back the tail of the public stream
for as long as it could still be the start of such a run (at most `min_chars - 1` letters and
digits, with whatever separates them, and only while they match a piece of a secret), so
nothing it lets through can later turn out to be one. On a reveal it cuts the public text where
the reveal starts and says so; the character then ends the turn there and reports a
`BlockedReveal` to the game.

What no literal guard can catch: a secret translated, paraphrased, abbreviated or hinted at.
A game that must keep a secret from a determined player keeps it out of the persona until the
character may tell it.

The game lifts the guard for one secret, or part of one, with `Scene.allow_reveal` /
`Character.allow_reveal` (the captain may confess once the player has earned it).

This module only matches text; it knows nothing of models or scenes.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

import msgspec

from ._errors import ConfigError
from .format import PRIVATE_CHANNELS, Channel, Delta

__all__ = ["BlockedReveal", "SecretsGuard", "normalize", "reveals"]

MIN_CHARS = 12
_NEW_LETTERS = 4  # letters of a run beyond the allowed pieces that make it a reveal


class BlockedReveal(msgspec.Struct, frozen=True, kw_only=True):
    """A public reveal of a secret that the guard stopped.

    `secret` is the secret (as the persona has it); `text` the public text that began to reveal
    it (private to the game: never show it to players); `channel` where it happened.
    """

    character: str
    secret: str
    text: str
    channel: Channel


# Letters of other scripts that read as Latin ones (after lower-casing), the common confusables.
_LOOKALIKE = str.maketrans(
    "аеорсухіјѕԁɡһԛԝοαεικνρτυχβмтвнкյոսɑɩ",
    "aeopcyxijsdghqwoaeiknptuxbmtbhkjnuai",
)


def _fold(ch: str) -> str:
    """What one character counts as in the guard's space: its letters and digits, folded."""
    if ch.isascii():
        return ch.lower() if ch.isalnum() else ""
    out = []
    for c in unicodedata.normalize("NFKD", ch).lower().translate(_LOOKALIKE):
        if c.isalnum() and not unicodedata.combining(c):
            out.append(c)
    return "".join(out)


def normalize(text: str) -> str:
    """`text` in the guard's space: letters and digits only, folded (see the module doc)."""
    return "".join(_fold(c) for c in text)


def _windows(secret: str, n: int) -> set[str]:
    return {secret[i : i + n] for i in range(len(secret) - n + 1)}


def reveals(text: str, secrets: Iterable[str], *, min_chars: int = MIN_CHARS) -> str | None:
    """The first secret that `text` reveals (a run of `min_chars`+ of it), or None."""
    norm = normalize(text)
    for s in secrets:
        ns = normalize(s)
        if len(ns) >= min_chars and any(w in norm for w in _windows(ns, min_chars)):
            return s
    return None


class SecretsGuard:
    """Filters one turn's deltas: private ones pass, public ones are held back while they could
    begin a secret, and a reveal is cut off.

        guard = SecretsGuard(["the duke died at noon"], allowed=[])
        for delta in deltas:
            out.extend(guard.feed(delta))
            if guard.blocked: break
        out.extend(guard.close())

    `allowed` lists secrets, or pieces of them, that may be revealed: runs inside them pass.
    """

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        allowed: Sequence[str] = (),
        min_chars: int = MIN_CHARS,
    ) -> None:
        if min_chars < 2:
            raise ConfigError("min_chars must be >= 2")
        self.min_chars = min_chars
        self._secrets: list[tuple[str, str]] = []  # (as given, normalized)
        self._grams: dict[str, str] = {}  # forbidden window -> secret
        for s in secrets:
            ns = normalize(s)
            if len(ns) < min_chars:
                continue
            self._secrets.append((s, ns))
            free = _allowed_spans(ns, [normalize(a) for a in allowed])
            covered = [any(a <= j < b for a, b in free) for j in range(len(ns))]
            for i in range(len(ns) - min_chars + 1):
                # A run is a reveal when it says something the allowed pieces do not: a few
                # letters past their end may just be the next word ("through th|at").
                if covered[i : i + min_chars].count(False) >= min(_NEW_LETTERS, min_chars):
                    self._grams.setdefault(ns[i : i + min_chars], s)
        self.blocked: BlockedReveal | None = None
        self.character = ""
        # The public stream so far: its normalized text, and for each normalized character the
        # position in the raw public text of the character it came from.
        self._norm: list[str] = []
        self._where: list[int] = []
        self._pending: list[Delta] = []  # public deltas (or their tails) not yet let through
        self._released = 0  # raw public characters let through so far
        self._raw = 0  # raw public characters seen so far
        self._checked = 0  # windows starting before this normalized index are checked

    @property
    def active(self) -> bool:
        """Whether there is anything to guard."""
        return bool(self._grams)

    def feed(self, delta: Delta) -> list[Delta]:
        """The deltas that are safe to show now (private ones always pass)."""
        if delta.channel in PRIVATE_CHANNELS:
            return [delta]
        if self.blocked is not None:
            return []
        if not self._grams:
            return [delta]
        self._pending.append(delta)
        text, base = delta.text, self._raw
        if text.isascii():  # the common case, without a call per character
            norm, where = self._norm, self._where
            for i, c in enumerate(text):
                if c.isalnum():
                    norm.append(c.lower())
                    where.append(base + i)
        else:
            for i, ch in enumerate(text):
                self._push(ch, base + i)
        self._raw += len(text)
        return self._scan()

    def close(self) -> list[Delta]:
        """Whatever is still held back once the turn has ended (it cannot grow into a secret)."""
        if self.blocked is not None:
            return []
        return self._release(self._raw)

    def _push(self, ch: str, where: int) -> None:
        for c in _fold(ch):
            self._norm.append(c)
            self._where.append(where)

    def _scan(self) -> list[Delta]:
        n = self.min_chars
        norm = self._norm
        end = len(norm)
        start = self._checked
        recent = "".join(norm[start:end])  # the windows not checked yet, as one string
        for i in range(start, end - n + 1):
            secret = self._grams.get(recent[i - start : i - start + n])
            if secret is not None:
                out = self._release(self._where[i])
                self.blocked = BlockedReveal(
                    character=self.character,
                    secret=secret,
                    text="".join(d.text for d in self._pending).strip(),
                    channel=self._pending[0].channel if self._pending else "speech",
                )
                self._pending = []
                return out
        self._checked = max(end - n + 1, self._checked)
        # Hold back the longest tail that is a piece of some secret: it may grow into a reveal.
        hold = 0
        last = "".join(norm[max(end - n + 1, 0) :])
        for k in range(min(n - 1, end), 0, -1):
            tail = last[len(last) - k :]
            if any(tail in ns for _, ns in self._secrets):
                hold = k
                break
        return self._release(self._where[end - hold] if hold else self._raw)

    def _release(self, upto: int) -> list[Delta]:
        """Let through the public text before raw position `upto`."""
        out: list[Delta] = []
        while self._pending and self._released < upto:
            d = self._pending[0]
            take = upto - self._released
            if take >= len(d.text):
                out.append(self._pending.pop(0))
                self._released += len(d.text)
            else:
                out.append(Delta(d.channel, d.text[:take], d.segment))
                self._pending[0] = Delta(d.channel, d.text[take:], d.segment)
                self._released += take
        return out


def _allowed_spans(secret: str, allowed: Sequence[str]) -> list[tuple[int, int]]:
    spans = []
    for a in allowed:
        if not a:
            continue
        start = secret.find(a)
        while start != -1:
            spans.append((start, start + len(a)))
            start = secret.find(a, start + 1)
    return spans
