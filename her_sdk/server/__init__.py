"""her_sdk.server: the gRPC service game engines call (`her serve`), over Character and Scene.

    from her_sdk.server import HerServer, ServerSettings, serve

The API is `protos/her/v1/her.proto`; `her_sdk.client` is the Python client. Everything here
needs the `grpc` extra (grpcio, protobuf, grpcio-health-checking, grpcio-reflection, pydantic),
imported on first use so that `import her_sdk` stays light.
"""

from __future__ import annotations

__all__ = ["HerServer", "ServerSettings", "serve"]


def __getattr__(name: str):
    if name in __all__:
        from .._errors import MissingDependencyError

        try:
            from . import _app, _settings
        except ImportError as exc:
            if isinstance(exc, MissingDependencyError) or (exc.name or "").startswith("her_sdk"):
                raise  # not a missing extra: a bug to see as it is
            raise MissingDependencyError(str(exc.name or exc), "grpc") from None
        return getattr(_settings if name == "ServerSettings" else _app, name)
    raise AttributeError(f"module 'her_sdk.server' has no attribute {name!r}")
