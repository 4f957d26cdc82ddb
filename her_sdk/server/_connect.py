"""HerService over the Connect protocol: JSON (or binary protobuf) on HTTP/1.1, beside gRPC.

    her serve --http-port 8080     # POST http://127.0.0.1:8080/her.v1.HerService/CreateCharacter

For engines without gRPC (Godot's GDScript, Unity WebGL, a browser, curl). The protocol
(connectrpc.com/docs/protocol) is implemented by `connectrpc`, the Connect project's own Python
library (checked against the Connect conformance suite); the HTTP/1.1 server is `cheroot`
(CherryPy's pure-Python server: keep-alive, chunked streaming, TLS, a thread per running call,
Windows/macOS/Linux). Both come with the `http` extra.

This module holds no service logic. Each rpc goes to the same `HerServicer` method gRPC calls,
with a context object that stands in for grpc's, behind the same checks in the same order: the
bearer token (`Authorization: Bearer T`), then the concurrency bound (one `_ConcurrencyLimit`
counts the calls of both transports), then the servicer's own readiness, limits, private-data
rule and error mapping (`_status`; a status becomes the Connect code of the same name, and
connectrpc answers a unary error with that code's HTTP status). A request body is at most
--max-message-bytes. `Connect-Timeout-Ms` is a deadline: a turn past it stops before its next
token and ends with deadline_exceeded. A client that disconnects stops its turn at the next
token written to it (HTTP/1.1 tells a server of a disconnect only when it writes). CORS headers
are sent only for the origins in --cors-origins. `GET /healthz` answers 200 when ready and 503
while the model loads or the server drains (no token needed, like gRPC health).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf import json_format, message_factory

from .._errors import AuthenticationError, LimitExceededError, MissingDependencyError
from ._auth import bearer_token
from ._pb import pb
from ._status import connect_code, status_for

try:
    from cheroot import wsgi
    from connectrpc.code import Code
    from connectrpc.compat import google_protobuf_binary_codec
    from connectrpc.errors import ConnectError
    from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
    from connectrpc.server import ConnectWSGIApplication, EndpointSync
except ImportError as exc:  # pragma: no cover - exercised only without the http extra
    raise MissingDependencyError(f"{exc.name} (JSON over HTTP)", "http") from None

__all__ = ["JSON_CODEC", "ConnectServer"]

log = logging.getLogger("her_sdk.server")

SERVICE = pb.DESCRIPTOR.services_by_name["HerService"]
PREFIX = f"/{SERVICE.full_name}/"
HEALTH_PATH = "/healthz"
_CORS_HEADERS = (
    "Content-Type, Connect-Protocol-Version, Connect-Timeout-Ms, Authorization, "
    "Accept-Encoding, Content-Encoding, Connect-Accept-Encoding, Connect-Content-Encoding, "
    "X-User-Agent"
)


class _JsonCodec:
    """Protobuf's canonical JSON mapping, compact, in UTF-8, with every field present.

    Fields at their default value are written too (proto3 JSON allows either way) so that an
    engine script can read `summary["speech"]` without a default; unknown fields in requests
    are ignored, as protobuf's binary format ignores them (a newer client, an older server).
    """

    def name(self) -> str:
        return "json"

    def encode(self, message) -> bytes:
        return json_format.MessageToJson(
            message,
            indent=None,
            ensure_ascii=False,
            always_print_fields_with_no_presence=True,
        ).encode("utf-8")

    def decode(self, data: bytes | bytearray, message_class):
        message = message_class()
        try:
            json_format.Parse(bytes(data), message, ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError, RecursionError) as exc:
            raise ConnectError(
                Code.INVALID_ARGUMENT,
                f"the request is not a valid {SERVICE.full_name} JSON message: {str(exc)[:200]}",
            ) from None
        return message


JSON_CODEC = _JsonCodec()


class _Context:
    """The part of grpc.ServicerContext that HerServicer uses, for one Connect call."""

    def __init__(self, timeout_ms: float | None) -> None:
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._ended = False
        self.expired = False
        self._timer: threading.Timer | None = None
        if timeout_ms is not None:
            self._timer = threading.Timer(max(timeout_ms, 0) / 1000.0, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        self.end()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if not self._ended:
                self._callbacks.append(callback)
                return True
        return False

    def end(self) -> None:
        """The call is over (finished, failed, client gone or deadline): run the callbacks."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            callbacks, self._callbacks = self._callbacks, []
        if self._timer is not None:
            self._timer.cancel()
        for callback in callbacks:
            callback()

    def abort(self, code, message: str):
        if self.expired:
            raise ConnectError(Code.DEADLINE_EXCEEDED, "the call's deadline passed")
        raise ConnectError(Code(connect_code(code)), message)


def _raise(exc: BaseException):
    code, message = status_for(exc)
    raise ConnectError(Code(connect_code(code)), message)


class _App(ConnectWSGIApplication):
    @property
    def path(self) -> str:
        return f"/{SERVICE.full_name}"


class ConnectServer:
    """The Connect/HTTP listener of a `HerServer`: its servicer, token and concurrency bound."""

    def __init__(self, servicer, settings, limit, token: str | None) -> None:
        self.servicer = servicer
        self.settings = settings
        self.limit = limit
        self._expected = token.encode() if token else None
        self._origins = settings.origins
        self.draining = False
        self._running = 0
        self._idle = threading.Condition()
        endpoints: dict[str, Any] = {}
        for method in SERVICE.methods:
            info = MethodInfo(
                name=method.name,
                service_name=SERVICE.full_name,
                input=message_factory.GetMessageClass(method.input_type),
                output=message_factory.GetMessageClass(method.output_type),
                idempotency_level=IdempotencyLevel.UNKNOWN,
                stream_type=StreamType.SERVER_STREAM
                if method.server_streaming
                else StreamType.UNARY,
            )
            handler = getattr(servicer, method.name)
            if method.server_streaming:
                endpoints[PREFIX + method.name] = EndpointSync.server_stream(
                    method=info, function=self._streaming(handler)
                )
            else:
                endpoints[PREFIX + method.name] = EndpointSync.unary(
                    method=info, function=self._unary(handler)
                )
        self.app = _App(
            endpoints=endpoints,
            read_max_bytes=settings.max_message_bytes,
            codecs=[JSON_CODEC, google_protobuf_binary_codec()],
        )
        host, port = settings.http_address
        threads = min(settings.max_workers, settings.max_concurrent_rpcs + 8)
        self._server = wsgi.Server(
            (host, port),
            self._wsgi,
            numthreads=threads,
            max=threads,
            server_name="her_sdk",
            shutdown_timeout=1,
        )
        if settings.tls_cert is not None and settings.tls_key is not None:
            from cheroot.ssl.builtin import BuiltinSSLAdapter

            self._server.ssl_adapter = BuiltinSSLAdapter(
                str(settings.tls_cert), str(settings.tls_key)
            )
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # -- the checks every call goes through, in gRPC's order ---------------------------------

    def _admit(self, ctx) -> None:
        if self.draining:
            raise ConnectError(Code.UNAVAILABLE, "the server is shutting down")
        if self._expected is not None:
            header = ctx.request_headers.get("authorization", "")
            got = bearer_token(header) if isinstance(header, str) else None
            if not (hmac.compare_digest((got or "").encode(), self._expected) and got):
                _raise(AuthenticationError("missing or invalid bearer token"))
        if not self.limit._enter():
            _raise(LimitExceededError(f"the server runs {self.limit.limit} calls already"))
        with self._idle:
            self._running += 1

    def _leave(self) -> None:
        self.limit._leaver()()
        with self._idle:
            self._running -= 1
            self._idle.notify_all()

    def _unary(self, handler):
        def call(request, ctx):
            self._admit(ctx)
            context = _Context(ctx.timeout_ms)
            try:
                return handler(request, context)
            except ConnectError:
                raise
            except Exception as exc:  # a bug: INTERNAL, logged, never its text (_status)
                _raise(exc)
            finally:
                context.end()
                self._leave()

        return call

    def _streaming(self, handler):
        def call(request, ctx) -> Iterator:
            self._admit(ctx)
            context = _Context(ctx.timeout_ms)
            try:
                for message in handler(request, context):
                    if context.expired:  # gRPC ends such a call itself; so must we
                        raise ConnectError(Code.DEADLINE_EXCEEDED, "the call's deadline passed")
                    yield message
            finally:
                # Also when the client went away: the next write failed and closed us.
                context.end()
                self._leave()

        return call

    # -- HTTP ------------------------------------------------------------------------------------

    def _cors(self, environ) -> list[tuple[str, str]]:
        origin = environ.get("HTTP_ORIGIN", "")
        if not origin or not self._origins:
            return []
        if "*" in self._origins:
            allowed = "*"
        elif origin.rstrip("/") in self._origins:
            allowed = origin
        else:
            return []
        headers = [("Access-Control-Allow-Origin", allowed), ("Vary", "Origin")]
        expose = "Content-Encoding, Connect-Content-Encoding"
        headers.append(("Access-Control-Expose-Headers", expose))
        return headers

    def _wsgi(self, environ, start_response):
        cors = self._cors(environ)
        method = environ.get("REQUEST_METHOD", "")
        path = environ.get("PATH_INFO", "")
        if method == "OPTIONS" and cors:  # a browser's preflight
            start_response(
                "204 No Content",
                [
                    *cors,
                    ("Access-Control-Allow-Methods", "POST, GET"),
                    ("Access-Control-Allow-Headers", _CORS_HEADERS),
                    ("Access-Control-Max-Age", "7200"),
                ],
            )
            return [b""]
        if path == HEALTH_PATH and method == "GET":
            ok = self.servicer.ready and not self.draining
            body = json.dumps({"status": "SERVING" if ok else "NOT_SERVING"}).encode()
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [*cors, ("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        if not cors:
            return self.app(environ, start_response)

        def with_cors(status, headers, exc_info=None):
            return start_response(status, [*headers, *cors], exc_info)

        return self.app(environ, with_cors)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> int:
        """Bind, listen and serve on a thread; returns the bound port."""
        from .._errors import ConfigError

        try:
            self._server.prepare()
        except OSError as exc:
            port = self.settings.http_port
            raise ConfigError(f"cannot listen on HTTP port {port}: {exc}") from None
        self.port = int(self._server.bind_addr[1])
        self._thread = threading.Thread(target=self._server.serve, name="her-http", daemon=True)
        self._thread.start()
        log.info("her_sdk Connect (JSON over HTTP/1.1) server on port %s", self.port)
        return self.port

    def stop(self, grace: float) -> None:
        """Refuse new calls, wait up to `grace` seconds for running ones, then close."""
        self.draining = True
        deadline = time.monotonic() + grace
        with self._idle:
            while self._running and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
        self._server.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
