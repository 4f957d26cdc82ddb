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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
_REQUIRED = ("id", "name", "dimension", "level", "polarity", "definition", "violation")


@dataclass(frozen=True)
class Principle:
    id: str
    name: str
    dimension: str
    level: str
    polarity: str
    definition: str
    violation: str
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


def _validate(raw: Any, where: str) -> list[Principle]:
    if not isinstance(raw, dict) or not isinstance(raw.get("principles"), list):
        raise ConfigError(f"{where}: expected a mapping with a 'principles' list")
    out: list[Principle] = []
    seen: set[str] = set()
    for i, item in enumerate(raw["principles"]):
        at = f"{where}: principle #{i + 1}"
        if not isinstance(item, dict):
            raise ConfigError(f"{at}: expected a mapping")
        missing = [k for k in _REQUIRED if not str(item.get(k) or "").strip()]
        if missing:
            raise ConfigError(f"{at}: missing {', '.join(missing)}")
        unknown = set(item) - {*_REQUIRED, "auto"}
        if unknown:
            raise ConfigError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
        p = Principle(**{k: (str(v).strip() if v is not None else None) for k, v in item.items()})
        if p.id in seen:
            raise ConfigError(f"{at}: duplicate id {p.id!r}")
        if p.dimension not in DIMENSIONS:
            raise ConfigError(f"{at} ({p.id}): unknown dimension {p.dimension!r}")
        if p.level not in LEVELS:
            raise ConfigError(f"{at} ({p.id}): level must be one of {LEVELS}")
        if p.polarity not in POLARITIES:
            raise ConfigError(f"{at} ({p.id}): polarity must be one of {POLARITIES}")
        if p.auto and p.polarity != "negative":
            raise ConfigError(f"{at} ({p.id}): only a negative principle can name a corruption")
        seen.add(p.id)
        out.append(p)
    if not out:
        raise ConfigError(f"{where}: no principles")
    return out


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
