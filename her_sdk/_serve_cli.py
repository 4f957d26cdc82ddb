"""`her serve` as a typer command: one flag per `ServerSettings` field, then `server.serve()`.

Two programs run this one command: `her serve` (registered by `her_sdk.cli`) and the executable
of a bundle (`her_sdk._bundle_main`, frozen without the rest of the CLI, so it carries no
training or export code). Both take the same flags and exit with the same codes:

    0  stopped (SIGTERM, SIGINT, or the end of the parent with --exit-with-parent)
    1  could not start: a bad setting, a port in use, unreadable TLS files, an unwritable file
    2  a bad command line (unknown flag, a value of the wrong type)
    3  the model or adapter file is missing, or is not a model llama.cpp can load
    4  (bundles only) this CPU lacks an instruction set the bundled llama.cpp needs

A failed start prints exactly one line, `error: ...`, to stderr (and to --log-file). This module
holds flag plumbing only; the server is `her_sdk.server._app`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

try:
    import typer
    from rich.console import Console
except ImportError:  # pragma: no cover - exercised only without the cli extra
    from ._errors import MissingDependencyError

    raise MissingDependencyError("typer and rich", "cli") from None

from ._errors import ConfigError, HerError, InvalidModelError, ModelNotFoundError

__all__ = [
    "EXIT_CPU",
    "EXIT_ERROR",
    "EXIT_MODEL",
    "SERVE_ENV_PREFIX",
    "SERVE_HELP",
    "fail",
    "serve",
    "serve_command",
    "serve_parameters",
]

EXIT_ERROR = 1
EXIT_MODEL = 3
EXIT_CPU = 4
SERVE_ENV_PREFIX = "HER_SERVER_"  # each flag also reads $HER_SERVER_<FIELD>, e.g. HER_SERVER_TOKEN

err_console = Console(stderr=True, highlight=False)
log = logging.getLogger("her_sdk.server")


def fail(exc: BaseException, code: int = EXIT_ERROR) -> None:
    """End the command with `code` and one `error:` line on stderr (never wrapped: a game
    reading the sidecar's stderr gets the message whole)."""
    from rich.markup import escape  # a message may hold [brackets]: pip install 'x[llama]'

    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(code=code)


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _option_type(name: str, annotation: object) -> type:
    """The command-line type of a settings field (Optional[X] is X; a secret is a str)."""
    import types
    from typing import Union, get_args, get_origin

    from pydantic import SecretStr

    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    if annotation is SecretStr:
        return str
    if annotation in (bool, int, float, str, Path):
        return annotation
    raise TypeError(f"ServerSettings.{name}: no command-line type for {annotation!r}")


def serve_parameters() -> list[inspect.Parameter]:
    """`her serve`'s options as typer parameters, one per ServerSettings field, in field order."""
    try:
        from .server._settings import ServerSettings
    except ImportError:  # no grpc extra: `her serve` then says which extra to install
        return []
    params = []
    for name, field in ServerSettings.model_fields.items():
        kind = _option_type(name, field.annotation)
        default = field.get_default(call_default_factory=True)
        decl = _flag(name)
        if kind is bool and default:
            decl = f"{decl}/--no-{decl[2:]}"
        option = typer.Option(
            decl,
            help=field.description,
            envvar=SERVE_ENV_PREFIX + name.upper(),
            show_envvar=True,
        )
        annotation = kind if default is not None else kind | None
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[annotation, option],
            )
        )
    return params


def _settings_error(exc, fields: Iterable[str]) -> ConfigError:
    """A pydantic ValidationError as one line that names each bad flag."""
    import re

    parts = []
    for e in exc.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["loc"]:
            parts.append(f"{_flag(str(e['loc'][0]))}: {msg}")
        else:  # a check across fields: its message names fields; say flags instead
            names = "|".join(sorted(fields, key=len, reverse=True))
            parts.append(re.sub(rf"\b({names})\b", lambda m: _flag(m.group(1)), msg))
    return ConfigError("; ".join(parts))


def _setup_logging(log_file: Path | None) -> None:
    fmt = "%(asctime)s %(name)s: %(message)s"
    if log_file is None:
        logging.basicConfig(level=logging.INFO, format=fmt)
        return
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
    except OSError as exc:
        fail(ConfigError(f"--log-file: cannot write {log_file}: {exc.strerror or exc}"))
    handler.setFormatter(logging.Formatter(fmt))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def serve(*, defaults: Callable[[Any], Any] | None = None, **options: Any) -> None:
    """Run the server with `options` (field -> value) until it is stopped; see the exit codes
    in the module doc. `defaults(settings)` may fill in what the command line left unset (a
    bundle's own model)."""
    try:
        from .server import ServerSettings
        from .server import serve as run_server
    except HerError as exc:  # MissingDependencyError naming the grpc extra
        fail(exc)
        return
    from pydantic import ValidationError

    try:
        settings = ServerSettings(**options)
        if defaults is not None:
            settings = defaults(settings)
    except ValidationError as exc:
        fail(_settings_error(exc, ServerSettings.model_fields))
        return
    _setup_logging(settings.log_file)
    # With a log file the game may never read stderr (a full pipe would block the server):
    # everything but the last error line goes to the file. Without one, a person reads stderr.
    to_file = settings.log_file is not None

    def listening(server) -> None:
        http = f" and {server.http_url} (JSON)" if server.http_url else ""
        if to_file:
            log.info("listening on %s (gRPC)%s; loading the model", server.target, http)
        else:
            err_console.print(f"[dim]Listening on {server.target} (gRPC){http}; loading…[/]")

    def ready(server) -> None:
        scheme = "TLS" if settings.tls_cert else "plaintext"
        auth = "bearer token" if settings.token else "no auth"
        thoughts = "exposed on request" if settings.expose_thoughts else "never sent"
        http = f" and {server.http_url} (Connect JSON)" if server.http_url else ""
        if to_file:
            log.info("ready on %s (gRPC)%s (%s, %s)", server.target, http, scheme, auth)
        else:
            err_console.print(
                f"[bold green]her serve[/] ready on {server.target} (gRPC){http} ({scheme}, "
                f"{auth}; private thoughts {thoughts}). Ctrl-C or SIGTERM drains and stops."
            )

    def stop(exc: BaseException, code: int = EXIT_ERROR) -> None:
        if to_file:
            log.error("%s", exc)  # the game's log has it too
        fail(exc, code)

    try:
        run_server(settings, ready=ready, listening=listening)
    except (ModelNotFoundError, InvalidModelError) as exc:
        stop(exc, EXIT_MODEL)
    except HerError as exc:
        stop(exc)
    except OSError as exc:  # e.g. a port file in a folder it cannot write
        stop(ConfigError(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")))


SERVE_HELP = """Serve characters and scenes to game engines over gRPC and, with --http-port, JSON
over HTTP (the Connect protocol); the API is protos/her/v1/her.proto.

Every option can also be set in the environment as HER_SERVER_<OPTION>.

Exit codes: 0 stopped, 1 could not start, 2 bad command line, 3 model or adapter not loadable.
"""


def serve_command(
    *, defaults: Callable[[Any], Any] | None = None, doc: str = SERVE_HELP
) -> Callable[..., None]:
    """A function typer turns into the serve command (its signature: one option per field)."""

    def command(**options: Any) -> None:
        serve(defaults=defaults, **options)

    command.__doc__ = doc
    command.__name__ = "serve"
    command.__signature__ = inspect.Signature(serve_parameters())  # type: ignore[attr-defined]
    return command
