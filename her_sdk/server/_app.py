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
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .._backends._base import Backend
from .._errors import ConfigError
from ._pb import pb, pb_grpc
from ._service import HerServicer
from ._settings import ServerSettings

__all__ = ["HerServer", "serve"]

log = logging.getLogger("her_sdk.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["HerService"].full_name
_OPEN_PREFIX = f"/{health.SERVICE_NAME}/"  # health checks need no token


class _BearerAuth(grpc.ServerInterceptor):
    """Rejects calls without `authorization: Bearer <token>` (constant-time compare)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, details):
        if details.method.startswith(_OPEN_PREFIX):
            return continuation(details)
        got = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(got).encode(), self._expected):
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


class HerServer:
    """One gRPC server over one model. `model=None` loads `settings.model` (or the default)."""

    def __init__(self, settings: ServerSettings | None = None, *, model: Backend | None = None):
        self.settings = settings or ServerSettings()
        if model is None:
            from .._model import load_model

            kw = {"n_threads": self.settings.n_threads} if self.settings.n_threads else {}
            model = load_model(self.settings.model, **kw)
        self.model = model
        self.servicer = HerServicer(model, self.settings)
        self.health = health.HealthServicer()
        s = self.settings
        interceptors = [_BearerAuth(s.token.get_secret_value())] if s.token else []
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=s.max_workers, thread_name_prefix="her-grpc"),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a busy port is an error, not a shared port
            ],
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
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
