"""HerServer: a grpc server hosting HerService, health, reflection, auth and TLS, and (with
`http_port`) the same service over the Connect protocol (`_connect`); `serve()`.

    from her_sdk.server import HerServer, ServerSettings
    with HerServer(ServerSettings(port=0), model=MockBackend([...])) as server:
        print(server.target)          # "127.0.0.1:<port>"

`serve(settings)` is what `her serve` runs, as a well-behaved sidecar of a game: it opens its
ports first (health NOT_SERVING, HTTP 503, every call but GetServerInfo UNAVAILABLE), writes the
port file once both listeners accept, loads the model, then serves (health SERVING) until
SIGTERM/SIGINT or, with `exit_with_parent`, until the process that started it ends; then it
drains (refuses new calls, lets in-flight turn streams finish for up to `drain_seconds`) and
returns.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .._backends._base import Backend
from .._errors import AuthenticationError, ConfigError, LimitExceededError
from ._auth import bearer_token
from ._backend import backend_from_settings
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
    """One server over one model: gRPC, and Connect over HTTP when `settings.http_port` is set.

    `model=None` loads `settings.model` (or the default) here, unless `load=False`: then the
    server starts not ready and `load_model()` loads it later (what a sidecar does).
    """

    def __init__(
        self,
        settings: ServerSettings | None = None,
        *,
        model: Backend | None = None,
        load: bool = True,
    ):
        self.settings = settings or ServerSettings()
        if model is None and load:
            model = backend_from_settings(self.settings)
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
        self.http = None
        if s.http_port is not None:
            from ._connect import ConnectServer

            token = s.token.get_secret_value() if s.token else None
            self.http = ConnectServer(self.servicer, s, self.limit, token)
        self.port: int | None = None

    @property
    def ready(self) -> bool:
        return self.servicer.ready

    def load_model(self) -> Backend:
        """Load the model the settings name, then serve every call (health SERVING)."""
        model = backend_from_settings(self.settings)
        self.set_model(model)
        return model

    def set_model(self, model: Backend) -> None:
        self.model = model
        self.servicer.set_model(model)
        if self.port is not None:
            self._set_health(True)

    def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    @property
    def http_url(self) -> str | None:
        """http(s)://host:port of the Connect/HTTP listener (valid after start), or None."""
        if self.http is None or self.http.port is None:
            return None
        scheme = "https" if self.settings.tls_cert is not None else "http"
        return f"{scheme}://{self._host()}:{self.http.port}"

    def _host(self) -> str:
        host = self.settings.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        host = "::1" if host == "::" else host
        return f"[{host}]" if ":" in host else host

    @property
    def target(self) -> str:
        """host:port to connect to (valid after start)."""
        return f"{self._host()}:{self.port}"

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
        self._set_health(self.ready)
        self._server.start()
        if self.http is not None:
            try:
                self.http.start()
            except BaseException:
                self._server.stop(0)
                raise
        log.info("her_sdk gRPC server on %s (tls=%s)", self.target, s.tls_cert is not None)
        if s.token is None and s.allow_unauthenticated:
            log.warning(
                "NO AUTHENTICATION on %s: anyone who can reach this port drives every character",
                address,
            )
        return port

    def stop(self, grace: float | None = None) -> threading.Event:
        """Refuse new calls, give in-flight ones `grace` seconds (default drain_seconds)."""
        grace = self.settings.drain_seconds if grace is None else grace
        self.health.enter_graceful_shutdown()
        done = self._server.stop(grace)
        if self.http is not None:
            self.http.stop(grace)  # concurrently with gRPC's own drain
        return done

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


def write_port_file(path: Path, server: HerServer) -> None:
    """Write {"grpc": "HOST:PORT", "http": "http://HOST:PORT"} to `path` atomically (a game
    polling for the file never reads half of it)."""
    data = {"grpc": server.target}
    if server.http_url is not None:
        data["http"] = server.http_url
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _watch_parent(stop: threading.Event) -> None:
    """Set `stop` when the process that started this one ends."""
    parent = os.getppid()
    if sys.platform == "win32":  # pragma: no cover - not run on these machines (untested)
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x00100000, False, parent)  # SYNCHRONIZE
        if handle:
            while not stop.is_set():
                if kernel32.WaitForSingleObject(handle, 500) == 0:  # WAIT_OBJECT_0
                    break
            kernel32.CloseHandle(handle)
        if stop.is_set():
            return
        stop.set()
        time.sleep(15)
        os._exit(1)
    # POSIX: an orphan is re-parented (to init or a subreaper), so its parent id changes.
    while not stop.wait(0.25):
        if os.getppid() != parent:
            log.info("the parent process %s ended: stopping", parent)
            stop.set()
            break
    else:
        return  # stopped for another reason
    # The main thread drains (2 s at most) and exits; if it cannot (a model still loading
    # from a stuck disk), the process must not outlive its game all the same.
    time.sleep(15)
    log.warning("still running 15 s after the parent ended: exiting now")
    os._exit(1)


def serve(
    settings: ServerSettings,
    *,
    model: Backend | None = None,
    ready=None,
    listening=None,
) -> None:
    """Run a server until SIGTERM or SIGINT (or its parent's end), then drain and return.

    The ports open first; the port file is written once they accept; then the model is loaded
    (unless given) and `ready(server)` is called (the CLI prints the addresses).
    `listening(server)` is called once the ports accept, before the model loads. A model that
    fails to load stops the server and raises its error.
    """
    server = HerServer(settings, model=model, load=False)
    stop = threading.Event()
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, lambda *_: stop.set())
    if settings.exit_with_parent:
        threading.Thread(target=_watch_parent, args=(stop,), daemon=True).start()
    started = wrote = False
    try:
        server.start()
        started = True
        if settings.port_file is not None:
            write_port_file(settings.port_file, server)
            wrote = True
        if listening is not None:
            listening(server)
        if not server.ready:
            server.load_model()
        if ready is not None:
            ready(server)
        while not stop.wait(0.5):
            pass
        grace = min(settings.drain_seconds, 2.0) if settings.exit_with_parent else None
        grace = settings.drain_seconds if grace is None else grace
        log.info("shutting down: draining in-flight calls (up to %ss)", grace)
        server.close(grace)
        started = False
        log.info("stopped")
    finally:
        if started:
            server.close(0)
        if wrote and settings.port_file is not None:
            # A port file names a live server only; the game reads a new one next start.
            Path(settings.port_file).unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
