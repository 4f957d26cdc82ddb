"""ServerSettings: every knob of `her serve`, validated in one pydantic model.

`her serve` has one flag per field (`--max-text-chars` for `max_text_chars`, help from the
description; see `her_sdk.cli`), so a field added here is a flag there. Embedding code builds one
directly:

    ServerSettings(port=0, token="s3cret", expose_thoughts=True)

This module holds settings only; the server itself is `her_sdk.server._app`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from .._errors import ConfigError
from .._model import parse_backend_spec

__all__ = ["ServerSettings"]


class ServerSettings(BaseModel):
    """Settings of a her_sdk gRPC server (defaults are `her serve` with no flags)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(
        default="127.0.0.1", description="Address to bind; 0.0.0.0 exposes the server."
    )
    port: int = Field(
        default=50051, ge=0, le=65535, description="gRPC TCP port; 0 picks a free one."
    )
    http_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Also serve the API as JSON over HTTP/1.1 (the Connect protocol) on this "
        "port, for engines without gRPC (Godot, Unity WebGL); 0 picks a free one.",
    )
    cors_origins: str = Field(
        default="",
        description="Comma-separated origins (https://game.example) whose web pages may call the "
        "HTTP port from a browser; '*' for any. Empty: no CORS headers (browsers refuse).",
    )
    port_file: Path | None = Field(
        default=None,
        description='Once the ports accept connections, write {"grpc": "HOST:PORT", "http": '
        '"http://HOST:PORT"} to this file (atomically), for a game that starts the server '
        "with port 0.",
    )
    exit_with_parent: bool = Field(
        default=False,
        description="Stop (draining calls for at most 2 s) when the process that started this "
        "one ends: a game's sidecar never outlives the game.",
    )
    log_file: Path | None = Field(
        default=None,
        description="Append the server's log to this file instead of stderr (a game's sidecar: "
        "stderr then carries only the one error line of a failed start).",
    )
    model: str | None = Field(
        default=None,
        description="The model: a GGUF file, an ONNX folder, an OpenAI-compatible server "
        "(http://HOST/v1#MODEL), ... (a backend spec; default: the embedded model).",
    )
    adapter: str | None = Field(
        default=None,
        description="GGUF LoRA adapter to apply (default: the shipped adapter with the embedded "
        "model, none with another model; 'none': no adapter).",
    )
    n_ctx: int | None = Field(
        default=None, ge=64, description="Context size in tokens of each turn (default: 4096)."
    )
    n_gpu_layers: int | None = Field(
        default=None,
        ge=-1,
        description="Model layers to offload to the GPU (-1: all; default 0; needs a GPU build "
        "of llama-cpp-python).",
    )
    prompt_style: str | None = Field(
        default=None,
        description="How prompts are rendered: chatml, template (the model's own chat template), "
        "fewshot, or her (HER's own prompt, for a released HER model) (default: from the "
        "model's metadata).",
    )
    turn_shape: str | None = Field(
        default=None,
        description="The TurnShape of characters that set none: game (one action, one speech of "
        "at most three sentences), default (six sections, 300-character speeches) or free (long "
        "plans and paragraphs). Default: the model's own (game for the embedded model).",
    )
    dry_multiplier: float | None = Field(
        default=None,
        ge=0,
        description="llama.cpp's DRY sampler, for turns that do not set it: fewer runs repeated "
        "from the scene (0: off; default: 0.8 for the embedded model, off for others).",
    )
    remote_api_key: SecretStr | None = Field(
        default=None,
        description="With a server --model (http://HOST/v1#MODEL): its API key, sent as a "
        "Bearer token (prefer the HER_SERVER_REMOTE_API_KEY environment variable).",
    )
    n_threads: int | None = Field(
        default=None, ge=1, description="CPU threads for the model engine (default: the engine's)."
    )
    token: SecretStr | None = Field(
        default=None,
        description="If set, calls need `authorization: Bearer <token>` metadata. Prefer the "
        "HER_SERVER_TOKEN environment variable: a flag's value shows in the process list.",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="Allow a host other than loopback without a token (anyone who can reach "
        "the port can then drive and read every character).",
    )
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate chain; with tls_key the server speaks TLS only."
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert.")
    expose_thoughts: bool = Field(
        default=False,
        description="Trust clients with characters' minds: they may ask for the private channels "
        "(plan, thoughts), read secrets, and save and load scenes as bytes.",
    )
    save_dir: Path | None = Field(
        default=None,
        description="Directory where SaveScene writes named saves and LoadScene reads them "
        "(without it, and without --expose-thoughts, scenes cannot be saved).",
    )
    max_message_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        le=2**31 - 1,
        description="Largest request/response message.",
    )
    max_save_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Largest save file LoadScene reads from --save-dir (checked before reading).",
    )
    max_text_chars: int = Field(default=8000, ge=1, description="Longest text field in a request.")
    max_list_items: int = Field(
        default=256, ge=1, description="Most entries in a repeated/map field."
    )
    max_characters: int = Field(default=1000, ge=1, description="Most characters alive at once.")
    max_scenes: int = Field(default=100, ge=1, description="Most scenes alive at once.")
    max_scene_events: int = Field(
        default=10_000,
        ge=1,
        description="Most events (Say, Narrate, turns) one scene records; past it they fail "
        "with RESOURCE_EXHAUSTED.",
    )
    max_total_chars: int = Field(
        default=16_000_000,
        ge=1,
        description="Most text the server holds, every copy counted: a line heard by eight "
        "characters counts nine times (the scene's log and each one's memory). Freed by "
        "deleting scenes and characters; past it Say, Narrate, Turn and LoadScene fail with "
        "RESOURCE_EXHAUSTED. Memory: about 30 bytes of RSS per character of it.",
    )
    max_sequences: int | None = Field(
        default=8,
        ge=1,
        le=256,
        description="Turns a GGUF model decodes together (each holds n_ctx tokens of KV cache).",
    )
    cache_any_prefix: bool = Field(
        default=False,
        description="Re-use every cached prompt token of a GGUF model, not only whole 64-token "
        "chunks: each turn re-reads only what changed (many NPCs run faster), but a seeded "
        "turn is no longer bit-for-bit reproducible whatever was cached before.",
    )
    max_waiting_turns: int = Field(
        default=256,
        ge=0,
        description="Turns that may wait for the model; more fail with RESOURCE_EXHAUSTED.",
    )
    max_workers: int = Field(
        default=128,
        ge=2,
        description="Server threads; each running call (a turn stream) holds one.",
    )
    max_concurrent_rpcs: int = Field(
        default=96,
        ge=1,
        description="HerService calls running at once; more fail at once with "
        "RESOURCE_EXHAUSTED (health checks are not counted). Less than --max-workers.",
    )
    drain_seconds: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long in-flight calls may take to finish."
    )

    @model_validator(mode="after")
    def _check(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.token is not None and not self.token.get_secret_value().strip():
            raise ValueError("token must not be empty")
        if self.turn_shape is not None and self.turn_shape not in _TURN_SHAPES:
            raise ValueError(f"turn_shape must be one of {', '.join(_TURN_SHAPES)}")
        if self.prompt_style is not None and self.prompt_style not in _PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {', '.join(_PROMPT_STYLES)}")
        if self.http_port is not None and self.http_port == self.port != 0:
            raise ValueError("http_port must differ from port")
        try:
            spec = parse_backend_spec(self.model)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        remote = spec.kind == "url"
        folder = Path(spec.target).expanduser() if spec.kind == "path" else None
        if folder is not None and (folder / "genai_config.json").is_file():
            given = [
                name
                for name, value in (
                    ("adapter", self.adapter),
                    ("n_gpu_layers", self.n_gpu_layers),
                    ("dry_multiplier", self.dry_multiplier),
                    ("cache_any_prefix", self.cache_any_prefix or None),
                )
                if value is not None
            ]
            if given:
                raise ValueError(
                    f"{', '.join(given)} apply to GGUF models (llama.cpp), not an ONNX model folder"
                )
        if not remote and self.remote_api_key is not None:
            raise ValueError("remote_api_key needs a server model (http(s)://HOST/v1#MODEL)")
        if remote and (
            self.adapter is not None or self.n_gpu_layers is not None or self.cache_any_prefix
        ):
            raise ValueError(
                "adapter, n_gpu_layers and cache_any_prefix apply to local models, not a URL"
            )
        if self.max_concurrent_rpcs >= self.max_workers:
            # Health checks and the auth refusals need a free thread when the bound is reached.
            raise ValueError("max_concurrent_rpcs must be less than max_workers")
        if self.token is None and not self.allow_unauthenticated and not _is_loopback(self.host):
            raise ValueError(
                f"host {self.host} is reachable from other machines and no token is set: set "
                "token (e.g. in HER_SERVER_TOKEN), or pass allow_unauthenticated"
            )
        return self

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def http_address(self) -> tuple[str, int] | None:
        return None if self.http_port is None else (self.host, self.http_port)

    @property
    def origins(self) -> list[str]:
        """The CORS origins, parsed."""
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]


_PROMPT_STYLES = ("chatml", "template", "fewshot", "her")
_TURN_SHAPES = ("game", "default", "free")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
