"""The her_sdk exception hierarchy.

Every error the SDK raises on purpose is a `HerError`; game code can catch that one class.
The subclasses say what went wrong, and the gRPC service maps each to one status code.

    HerError
    ├── ConfigError              bad argument or setting (unknown character name, bad option)
    ├── MissingDependencyError   an optional extra is not installed
    ├── ModelError               anything about a model file or engine
    │   ├── ModelNotFoundError   the path does not exist
    │   ├── InvalidModelError    unreadable, corrupt, truncated, or not a model at all
    │   └── ContextOverflowError the prompt cannot fit the context window even when trimmed
    ├── GenerationError          the engine failed while generating
    │   └── Cancelled            generation was cancelled by the caller
    └── StateError               a save file is missing, corrupt, or from an unknown version
"""

from __future__ import annotations

__all__ = [
    "Cancelled",
    "ConfigError",
    "ContextOverflowError",
    "GenerationError",
    "HerError",
    "InvalidModelError",
    "MissingDependencyError",
    "ModelError",
    "ModelNotFoundError",
    "StateError",
]


class HerError(Exception):
    """Base class of every error raised by her_sdk."""


class ConfigError(HerError, ValueError):
    """An argument or setting is invalid (unknown name, empty field, value out of range)."""


class MissingDependencyError(HerError, ImportError):
    """An optional dependency is missing; the message names the pip extra that provides it."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(f"{package} is required for this feature: pip install 'her-sdk[{extra}]'")


class ModelError(HerError):
    """A model file or engine problem. `path` names the file where one is involved."""

    def __init__(self, message: str, path: str | None = None) -> None:
        self.path = path
        super().__init__(message)


class ModelNotFoundError(ModelError, FileNotFoundError):
    """The model path does not exist."""


class InvalidModelError(ModelError):
    """The file exists but is not a loadable model (corrupt, truncated, wrong kind of file)."""


class ContextOverflowError(ModelError):
    """Even with all droppable history removed, the prompt does not fit the context window."""


class GenerationError(HerError):
    """The engine failed during generation."""


class Cancelled(GenerationError):
    """Generation was stopped by the caller before it finished."""


class StateError(HerError):
    """A saved Character or Scene cannot be read back (missing, corrupt, unknown version)."""
