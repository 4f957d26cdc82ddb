"""The secrets guard: a character's secrets never reach its public speech and actions verbatim.

A persona's `secrets` belong in its own prompt, plan and thoughts. What it says and does in
public is checked, while it streams, against them: any run of `min_chars` (12) or more
characters of a secret, compared case-insensitively with whitespace runs as one space, is a
reveal. The guard holds back the tail of the public stream for as long as it could still be the
start of such a run (at most `min_chars - 1` characters, and only while they match a piece of a
secret), so nothing it lets through can later turn out to be one. On a reveal it cuts the public
text where the reveal starts and says so; the character then ends the turn there and reports a
`BlockedReveal` to the game.

The game lifts the guard for one secret, or part of one, with `Scene.allow_reveal` /
`Character.allow_reveal` (the captain may confess once the player has earned it).

This module only matches text; it knows nothing of models or scenes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from ._errors import ConfigError
from .format import PRIVATE_CHANNELS, Channel, Delta

__all__ = ["BlockedReveal", "SecretsGuard", "normalize", "reveals"]

MIN_CHARS = 12


class BlockedReveal(msgspec.Struct, frozen=True, kw_only=True):
    """A public reveal of a secret that the guard stopped.

    `secret` is the secret (as the persona has it); `text` the public text that began to reveal
    it (private to the game: never show it to players); `channel` where it happened.
    """

    character: str
    secret: str
    text: str
    channel: Channel


def normalize(text: str) -> str:
    """Lower-cased, with every whitespace run one space and no space at either end."""
    return " ".join(text.lower().split())


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
            for i in range(len(ns) - min_chars + 1):
                if not any(a <= i and i + min_chars <= b for a, b in free):
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
        self._last_segment: int | None = None
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
        if self._last_segment is not None and delta.segment != self._last_segment:
            self._push(" ", self._raw)  # a new section is a word boundary
        self._last_segment = delta.segment
        for ch in delta.text:
            self._push(ch, self._raw)
            self._raw += 1
        return self._scan()

    def close(self) -> list[Delta]:
        """Whatever is still held back once the turn has ended (it cannot grow into a secret)."""
        if self.blocked is not None:
            return []
        return self._release(self._raw)

    def _push(self, ch: str, where: int) -> None:
        if ch.isspace():
            if self._norm and self._norm[-1] != " ":
                self._norm.append(" ")
                self._where.append(where)
            return
        for c in ch.lower():
            self._norm.append(c)
            self._where.append(where)

    def _scan(self) -> list[Delta]:
        n = self.min_chars
        norm = self._norm
        end = len(norm)
        for i in range(self._checked, end - n + 1):
            secret = self._grams.get("".join(norm[i : i + n]))
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
        for k in range(min(n - 1, end), 0, -1):
            tail = "".join(norm[end - k :])
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
