"""The one place where errors become gRPC status codes (see the table in her.proto).

Handlers raise her_sdk errors (`her_sdk._errors`); `status_for` turns any exception into
(code, message), first match in `STATUS` wins:

    Loading                  UNAVAILABLE         the model is still loading
    NotFoundError            NOT_FOUND           unknown id, or no character of that name in a scene
    LimitExceededError       RESOURCE_EXHAUSTED  a text/list/count limit of the server
    AuthenticationError      UNAUTHENTICATED     no valid bearer token
    PermissionDeniedError    PERMISSION_DENIED   save bytes without --expose-thoughts
    ContextOverflowError     RESOURCE_EXHAUSTED  the persona does not fit the context window
    Cancelled                CANCELLED
    ConfigError, DataError   INVALID_ARGUMENT    a bad field or a request the scene contradicts
    StateError               INVALID_ARGUMENT    corrupt or unsupported save bytes
    MissingDependencyError   FAILED_PRECONDITION
    ModelError (+ VerificationError)  FAILED_PRECONDITION  the server's model is not usable
    BackendUnavailableError  UNAVAILABLE         the model server behind this one cannot be reached
    BackendHTTPError         by the model server's HTTP status: 429 RESOURCE_EXHAUSTED; 408 and
                             5xx UNAVAILABLE (worth a retry); any other INTERNAL (this server sent
                             a request its model server refused: a configuration problem)
    GenerationError, HerError  INTERNAL

The message of a model-server error names only its HTTP status: the body it answered may quote
the prompt, which holds the character's private thoughts. Anything that is not a HerError is a
server bug: it is logged with its traceback and reaches the client as INTERNAL with a generic
message, never UNKNOWN and never with internals (which could hold a character's private text).

The Connect transport (`_connect`) carries the same codes under their Connect names
(`connect_code`: CANCELLED is "canceled", the others lower-case); connectrpc turns each into its
HTTP status.
"""

from __future__ import annotations

import logging

import grpc

from .._errors import (
    AuthenticationError,
    BackendHTTPError,
    BackendUnavailableError,
    Cancelled,
    ConfigError,
    ContextOverflowError,
    GenerationError,
    HerError,
    LimitExceededError,
    MissingDependencyError,
    ModelError,
    NotFoundError,
    PermissionDeniedError,
    StateError,
)

__all__ = ["STATUS", "Loading", "abort", "connect_code", "status_for"]

log = logging.getLogger("her_sdk.server")


class Loading(HerError):
    """The server has not loaded its model yet (retry shortly)."""


# First match wins, so subclasses come before their bases.
STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (Loading, grpc.StatusCode.UNAVAILABLE),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (LimitExceededError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (ContextOverflowError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (StateError, grpc.StatusCode.INVALID_ARGUMENT),
    (MissingDependencyError, grpc.StatusCode.FAILED_PRECONDITION),
    (ModelError, grpc.StatusCode.FAILED_PRECONDITION),
    (BackendUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (BackendHTTPError, grpc.StatusCode.INTERNAL),  # refined by HTTP status in status_for
    (GenerationError, grpc.StatusCode.INTERNAL),
    (HerError, grpc.StatusCode.INTERNAL),
)


def _http_status_code(status: int) -> grpc.StatusCode:
    if status == 429:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if status == 408 or status >= 500:
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, BackendHTTPError):
        log.warning("the model server answered HTTP %s (%s)", exc.status or "error", exc.url)
        log.debug("model server error: %s", exc)  # may quote the prompt: not at default level
        what = f"HTTP {exc.status}" if exc.status else "an error"
        return _http_status_code(exc.status), f"the model server answered {what}"
    for kind, code in STATUS:
        if isinstance(exc, kind):
            return code, str(exc) or kind.__name__
    log.error("unexpected error in a her_sdk server handler", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal server error (see the server log)"


def abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    """End the call with the status of `exc` (raises, as grpc's context.abort does)."""
    code, message = status_for(exc)
    context.abort(code, message)


def connect_code(code: grpc.StatusCode) -> str:
    """The Connect protocol's name of a gRPC status code ("not_found", "canceled", ...)."""
    return "canceled" if code == grpc.StatusCode.CANCELLED else code.name.lower()
