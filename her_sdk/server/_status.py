"""The one place where errors become gRPC status codes (see the table in her.proto).

Handlers raise her_sdk errors (or the two server-side ones below); `status_for` turns any
exception into (code, message). Anything that is not a HerError is a server bug: it is logged
with its traceback and reaches the client as INTERNAL with a generic message, never UNKNOWN and
never with internals (which could hold a character's private text).
"""

from __future__ import annotations

import logging

import grpc

from .._errors import (
    Cancelled,
    ConfigError,
    ContextOverflowError,
    GenerationError,
    HerError,
    MissingDependencyError,
    ModelError,
    StateError,
)

__all__ = ["STATUS", "LimitExceeded", "NotFound", "Unauthenticated", "abort", "status_for"]

log = logging.getLogger("her_sdk.server")


class NotFound(HerError, LookupError):
    """An id (or a character name in a scene) the server does not know."""


class LimitExceeded(HerError):
    """A request exceeds a server limit (text length, list size, number of objects)."""


class Unauthenticated(HerError):
    """The call carries no valid bearer token."""


# First match wins, so subclasses come before their bases.
STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (ContextOverflowError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (StateError, grpc.StatusCode.INVALID_ARGUMENT),
    (MissingDependencyError, grpc.StatusCode.FAILED_PRECONDITION),
    (ModelError, grpc.StatusCode.FAILED_PRECONDITION),
    (GenerationError, grpc.StatusCode.INTERNAL),
    (HerError, grpc.StatusCode.INTERNAL),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for kind, code in STATUS:
        if isinstance(exc, kind):
            return code, str(exc) or kind.__name__
    log.error("unexpected error in a her_sdk server handler", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal server error (see the server log)"


def abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    """End the call with the status of `exc` (raises, as grpc's context.abort does)."""
    code, message = status_for(exc)
    context.abort(code, message)
