"""HerServer: a grpc server hosting HerService, health, reflection, auth and TLS; `serve()`.

    from her_sdk.server import HerServer, ServerSettings
    with HerServer(ServerSettings(port=0), model=MockBackend([...])) as server:
        print(server.target)          # "127.0.0.1:<port>"

`serve(settings)` is what `her serve` runs: start, then block until SIGTERM/SIGINT, then drain
(refuse new calls, let in-flight turn streams finish for up to `drain_seconds`) and return.
"""

from __future__ import annotations

import hmac
import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .._backends._base import Backend
from .._errors import AuthenticationError, ConfigError, LimitExceededError
from ._pb import pb, pb_grpc
from ._service import HerServicer
from ._settings import ServerSettings
from ._status import abort

__all__ = ["HerServer", "serve"]

log = logging.getLogger("her_sdk.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["HerService"].full_name
_OPEN_PREFIX = f"/{health.SERVICE_NAME}/"  # health checks need no token


def _refusal(handler: grpc.RpcMethodHandler, behaviour) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that runs `behaviour` (which aborts)."""
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behaviour)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behaviour)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behaviour)
    return grpc.unary_unary_rpc_method_handler(behaviour)


def bearer_token(header: str) -> str | None:
    """The token of an `authorization` header value "Bearer TOKEN" (the scheme is
    case-insensitive, RFC 6750/7235), or None for any other header."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class _BearerAuth(grpc.ServerInterceptor):
    """Rejects calls without `authorization: Bearer <token>` (constant-time compare)."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def intercept_service(self, continuation, details):
        if details.method.startswith(_OPEN_PREFIX):
            return continuation(details)
        header = dict(details.invocation_metadata or ()).get("authorization", "")
        got = bearer_token(header) if isinstance(header, str) else None
        # compare_digest of unequal lengths still takes time independent of the content.
        if hmac.compare_digest((got or "").encode(), self._expected) and got:
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None

        def deny(request, context):
            abort(context, AuthenticationError("missing or invalid bearer token"))

        return _refusal(handler, deny)


class _ConcurrencyLimit(grpc.ServerInterceptor):
    """At most `limit` HerService calls run at once; more fail at once with RESOURCE_EXHAUSTED.

    Unlike grpc's own `maximum_concurrent_rpcs`, health checks are not counted and never
    refused, so an orchestrator still sees a busy server as alive. A call's place is freed when
    its handler returns (unary) or its stream ends, or when the call terminates otherwise.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self._lock = threading.Lock()

    def _enter(self) -> bool:
        with self._lock:
            if self.running >= self.limit:
                return False
            self.running += 1
            return True

    def _leaver(self) -> Callable[[], None]:
        done = threading.Event()

        def leave() -> None:
            with self._lock:
                if not done.is_set():
                    done.set()
                    self.running -= 1

        return leave

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method.startswith(_OPEN_PREFIX):
            return handler

        def busy(request, context):
            abort(context, LimitExceededError(f"the server runs {self.limit} calls already"))

        if handler.request_streaming:  # HerService has no client-streaming calls
            return handler
        if handler.response_streaming:
            inner = handler.unary_stream

            def unary_stream(request, context):
                if not self._enter():
                    busy(request, context)
                leave = self._leaver()
                if not context.add_callback(leave):
                    leave()
                try:
                    yield from inner(request, context)
                finally:
                    leave()

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        unary = handler.unary_unary

        def unary_unary(request, context):
            if not self._enter():
                busy(request, context)
            try:
                return unary(request, context)
            finally:
                self._leaver()()

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )


class HerServer:
    """One gRPC server over one model. `model=None` loads `settings.model` (or the default)."""

    def __init__(self, settings: ServerSettings | None = None, *, model: Backend | None = None):
        self.settings = settings or ServerSettings()
        if model is None:
            from .._model import backend_from_spec

            s = self.settings  # llama.cpp decodes concurrent turns together, within these bounds
            model = backend_from_spec(
                s.model,
                n_threads=s.n_threads,
                max_sequences=s.max_sequences,
                max_waiting=s.max_waiting_turns,
            )
        self.model = model
        self.servicer = HerServicer(model, self.settings)
        self.health = health.HealthServicer()
        s = self.settings
        self.limit = _ConcurrencyLimit(s.max_concurrent_rpcs)
        interceptors: list[grpc.ServerInterceptor] = [self.limit]
        if s.token:
            interceptors.insert(0, _BearerAuth(s.token.get_secret_value()))
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=s.max_workers, thread_name_prefix="her-grpc"),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a busy port is an error, not a shared port
            ],
        )
        pb_grpc.add_HerServiceServicer_to_server(self.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port: int | None = None

    @property
    def target(self) -> str:
        """host:port to connect to (valid after start)."""
        host = self.settings.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.port}"

    def start(self) -> int:
        """Bind and start serving; returns the bound port."""
        s = self.settings
        address = s.address
        try:
            if s.tls_cert is not None and s.tls_key is not None:
                creds = grpc.ssl_server_credentials(
                    [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())]
                )
                port = self._server.add_secure_port(address, creds)
            else:
                port = self._server.add_insecure_port(address)
        except OSError as exc:
            raise ConfigError(f"cannot read TLS files: {exc}") from None
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {address}: {exc}") from None
        if port == 0:
            raise ConfigError(f"cannot listen on {address} (in use or not allowed)")
        self.port = port
        self._server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("her_sdk gRPC server on %s (tls=%s)", self.target, s.tls_cert is not None)
        if s.token is None and s.allow_unauthenticated:
            log.warning(
                "NO AUTHENTICATION on %s: anyone who can reach this port drives every character",
                address,
            )
        return port

    def stop(self, grace: float | None = None) -> threading.Event:
        """Refuse new calls, give in-flight ones `grace` seconds (default drain_seconds)."""
        self.health.enter_graceful_shutdown()
        return self._server.stop(self.settings.drain_seconds if grace is None else grace)

    def wait(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)

    def __enter__(self) -> HerServer:
        self.start()
        return self

    def close(self, grace: float | None = 0) -> None:
        """Stop (after `grace` seconds for in-flight calls) and release the worker threads."""
        self.stop(grace).wait()
        self.servicer.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(settings: ServerSettings, *, model: Backend | None = None, ready=None) -> None:
    """Run a server until SIGTERM or SIGINT, then drain in-flight calls and return.

    `ready(server)` is called once it listens (the CLI prints the address).
    """
    server = HerServer(settings, model=model)
    stop = threading.Event()
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
        if ready is not None:
            ready(server)
        while not stop.wait(0.5):
            pass
        log.info("shutting down: draining in-flight calls (up to %ss)", settings.drain_seconds)
        server.close(settings.drain_seconds)
        log.info("stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
