"""Python stubs generated from protos/her/v1/her.proto (committed; see her_sdk.server._codegen).

Importing this needs the `grpc` extra (grpcio, protobuf); `import her_sdk` never imports it.
"""

from __future__ import annotations

from ..._errors import MissingDependencyError

try:
    from . import her_pb2 as pb
    from . import her_pb2_grpc as pb_grpc
except ImportError as exc:  # grpcio or protobuf absent
    raise MissingDependencyError(f"grpcio and protobuf ({exc.name})", "grpc") from None

__all__ = ["pb", "pb_grpc"]
