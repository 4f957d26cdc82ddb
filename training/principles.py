"""The HER reward model's principles: loaded from `principles.yaml` and validated.

    from her_sdk.training.principles import load_principles
    ps = load_principles()                      # the packaged set (24 principles, 12 dimensions)
    ps = load_principles("my_principles.yaml")  # your own set, same schema
    ps["DI2"].polarity                          # "negative"
    ps.for_corruption("thought_leak")           # principles an automatic corruption violates

A principle is one explicit criterion the generative judge names and compares candidates on
(`training/judge.py`). This module only holds and checks the data; it does not judge.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from her_sdk import ConfigError

__all__ = ["DIMENSIONS", "LEVELS", "POLARITIES", "Principle", "PrincipleSet", "load_principles"]

# The 12 dimensions of the HER paper.
DIMENSIONS: tuple[str, ...] = (
    "character development",
    "relationship development",
    "emotional expression",
    "action description",
    "atmosphere and environment",
    "dialogue and interaction",
    "narrative and plot",
    "conflict and tension",
    "details and description",
    "overall quality",
    "safety and boundaries",
    "worldview consistency",
)
LEVELS = ("sentence", "session")
POLARITIES = ("positive", "negative")
DEFAULT_PATH = Path(__file__).with_name("principles.yaml")
_Text = Annotated[str, msgspec.Meta(min_length=1)]


class Principle(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One principle; its fields are the keys of an entry in the YAML file (all checked)."""

    id: _Text
    name: _Text
    dimension: Literal[DIMENSIONS]  # type: ignore[valid-type]
    level: Literal[LEVELS]  # type: ignore[valid-type]
    polarity: Literal[POLARITIES]  # type: ignore[valid-type]
    definition: _Text
    violation: _Text
    auto: str | None = None  # automatic corruption (training/pairs.py) that violates it

    @property
    def negative(self) -> bool:
        return self.polarity == "negative"

    def brief(self) -> str:
        """One line for compact judge prompts: `DI2 (-) Thoughts stay private`."""
        return f"{self.id} ({'-' if self.negative else '+'}) {self.name}"

    def full(self) -> str:
        return (
            f"{self.id} [{self.dimension}; {self.level}; {self.polarity}] {self.name}: "
            f"{self.definition} Violation example: {self.violation}"
        )


class PrincipleSet:
    """An ordered, id-indexed collection of principles."""

    def __init__(self, principles: list[Principle]) -> None:
        self._items = list(principles)
        self._by_id = {p.id: p for p in self._items}

    def __iter__(self) -> Iterator[Principle]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, pid: str) -> Principle:
        return self._by_id[pid]

    def __contains__(self, pid: object) -> bool:
        return pid in self._by_id

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self._items]

    def negative_ids(self) -> set[str]:
        return {p.id for p in self._items if p.negative}

    def for_corruption(self, kind: str) -> list[Principle]:
        return [p for p in self._items if p.auto == kind]

    def subset(self, ids: list[str] | None) -> PrincipleSet:
        if not ids:
            return self
        missing = [i for i in ids if i not in self._by_id]
        if missing:
            raise ConfigError(f"unknown principle id(s): {', '.join(missing)}")
        return PrincipleSet([self._by_id[i] for i in ids])


class _PrincipleFile(msgspec.Struct, forbid_unknown_fields=True):
    principles: list[Principle]
    version: int = 1


def _validate(raw: object, where: str) -> list[Principle]:
    """Typed check of the whole file (msgspec names the entry and key that is wrong), then the
    rules that span fields: unique ids, and `auto` only on a negative principle."""
    try:
        items = msgspec.convert(raw, _PrincipleFile).principles
    except msgspec.ValidationError as exc:  # "... - at `$.principles[3].level`"
        raise ConfigError(f"{where}: {exc}") from None
    seen: set[str] = set()
    for i, p in enumerate(items):
        at = f"{where}: principle #{i + 1} ({p.id})"
        if p.id in seen:
            raise ConfigError(f"{at}: duplicate id {p.id!r}")
        if p.auto and p.polarity != "negative":
            raise ConfigError(f"{at}: only a negative principle can name a corruption")
        seen.add(p.id)
    if not items:
        raise ConfigError(f"{where}: no principles")
    return items


def load_principles(
    path: str | Path | None = None, *, require_all_dimensions: bool = True
) -> PrincipleSet:
    """Load and validate a principle file (default: the packaged `principles.yaml`)."""
    import yaml

    p = Path(path) if path else DEFAULT_PATH
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read principles {p}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    items = _validate(raw, str(p))
    if require_all_dimensions:
        absent = [d for d in DIMENSIONS if not any(x.dimension == d for x in items)]
        if absent:
            raise ConfigError(f"{p}: no principle for dimension(s): {', '.join(absent)}")
    return PrincipleSet(items)
