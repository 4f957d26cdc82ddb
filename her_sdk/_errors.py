"""The her_sdk exception hierarchy: every exception class of the project lives here.

Every error the SDK raises on purpose is a `HerError`; game code can catch that one class.
The subclasses say what went wrong, and the gRPC service maps each to one status code
(`her_sdk.server._status`, which documents the table; a BackendHTTPError's code follows its HTTP
status: 429 RESOURCE_EXHAUSTED, 408/5xx UNAVAILABLE, other INTERNAL).

    HerError
    ├── ConfigError              bad argument or setting (unknown character name, bad option)
    │   └── DataError            a data record (training or evaluation input) is malformed
    ├── MissingDependencyError   an optional extra is not installed
    ├── NotFoundError            an id or name the callee does not know (gRPC NOT_FOUND)
    ├── LimitExceededError       a request exceeds a limit (text size, queue, memory budget)
    ├── AuthenticationError      a gRPC call without a valid bearer token
    ├── PermissionDeniedError    an operation the server's settings forbid (PERMISSION_DENIED)
    ├── ModelError               anything about a model file or engine
    │   ├── ModelNotFoundError   the path does not exist
    │   ├── InvalidModelError    unreadable, corrupt, truncated, or not a model at all
    │   ├── ContextOverflowError the prompt cannot fit the context window even when trimmed
    │   └── VerificationError    an exported model disagrees with its source beyond tolerance
    ├── GenerationError          the engine failed while generating
    │   ├── Cancelled            generation was cancelled by the caller
    │   ├── BackendUnavailableError  a model server (OpenAI-compatible URL) cannot be reached
    │   └── BackendHTTPError     a model server answered with an HTTP error status
    ├── StateError               a save file is missing, corrupt, or from an unknown version
    └── ServerError              a gRPC call made by `her_sdk.client` failed (status code + details)
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BackendHTTPError",
    "BackendUnavailableError",
    "Cancelled",
    "ConfigError",
    "ContextOverflowError",
    "DataError",
    "GenerationError",
    "HerError",
    "InvalidModelError",
    "LimitExceededError",
    "MissingDependencyError",
    "ModelError",
    "ModelNotFoundError",
    "NotFoundError",
    "PermissionDeniedError",
    "ServerError",
    "StateError",
    "VerificationError",
]


class HerError(Exception):
    """Base class of every error raised by her_sdk."""


class ConfigError(HerError, ValueError):
    """An argument or setting is invalid (unknown name, empty field, value out of range)."""


class DataError(ConfigError):
    """A data record (a training or evaluation input) is malformed; the message says where."""


class MissingDependencyError(HerError, ImportError):
    """An optional dependency is missing; the message names the pip extra that provides it."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(f"{package} is required for this feature: pip install 'her-sdk[{extra}]'")


class NotFoundError(HerError, LookupError):
    """An id (or a character name in a scene) that the callee does not know."""


class LimitExceededError(HerError):
    """A request exceeds a limit: text length, list size, number of objects, a full queue."""


class AuthenticationError(HerError):
    """A call carries no valid bearer token."""


class PermissionDeniedError(HerError):
    """An authenticated caller asked for something the server's settings forbid (e.g. private
    save bytes from a server started without `--expose-thoughts`)."""


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


class VerificationError(ModelError):
    """An exported model's outputs differ from its source model's beyond the tolerance."""


class GenerationError(HerError):
    """The engine failed during generation."""


class Cancelled(GenerationError):
    """Generation was stopped by the caller (`TurnStream.cancel()`, a `CancelToken`) before it
    finished; raised by `TurnStream.wait()` and `Character.reply()` on a cancelled turn."""


class BackendUnavailableError(GenerationError):
    """A model server (an OpenAI-compatible base URL) could not be reached or dropped the
    connection. `url` is the base URL."""

    def __init__(self, message: str, url: str = "") -> None:
        self.url = url
        super().__init__(message)


class BackendHTTPError(GenerationError):
    """A model server answered with an HTTP error. `status` is the HTTP status code (0 for an
    error event inside a stream), `url` the endpoint."""

    def __init__(self, message: str, status: int = 0, url: str = "") -> None:
        self.status = status
        self.url = url
        super().__init__(message)


class StateError(HerError):
    """A saved Character or Scene cannot be read back (missing, corrupt, unknown version)."""


class ServerError(HerError):
    """A gRPC call made by `her_sdk.client` failed. `code` is the gRPC status name
    ("NOT_FOUND", ...), `details` its message."""

    def __init__(self, code: str, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code}: {details}")
