"""Bearer-token authentication shared by both transports (gRPC metadata, Connect headers).

The interceptors themselves live beside their servers (`_app`, `_connect`); this module holds
only what they must agree on, so neither transport imports the other.
"""

from __future__ import annotations

__all__ = ["bearer_token"]


def bearer_token(header: str) -> str | None:
    """The token of an `authorization` header value "Bearer TOKEN" (the scheme is
    case-insensitive, RFC 6750/7235), or None for any other header."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
