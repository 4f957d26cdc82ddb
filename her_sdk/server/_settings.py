"""ServerSettings: every knob of `her serve`, validated in one pydantic model.

The CLI builds one from its flags; embedding code builds one directly:

    ServerSettings(port=0, token="s3cret", expose_thoughts=True)

This module holds settings only; the server itself is `her_sdk.server._app`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

__all__ = ["ServerSettings"]


class ServerSettings(BaseModel):
    """Settings of a her_sdk gRPC server (defaults are `her serve` with no flags)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 exposes the server.")
    port: int = Field(50051, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    model: Path | None = Field(None, description="GGUF model file; None = the embedded model.")
    n_threads: int | None = Field(None, ge=1, description="CPU threads for the model engine.")
    token: SecretStr | None = Field(
        None, description="If set, calls need `authorization: Bearer <token>` metadata."
    )
    tls_cert: Path | None = Field(None, description="PEM certificate chain (with tls_key).")
    tls_key: Path | None = Field(None, description="PEM private key (with tls_cert).")
    expose_thoughts: bool = Field(
        False, description="Allow clients to ask for the private channels (plan, thoughts)."
    )
    max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, le=2**31 - 1, description="Largest request/response message."
    )
    max_text_chars: int = Field(8000, ge=1, description="Longest text field in a request.")
    max_list_items: int = Field(256, ge=1, description="Most entries in a repeated/map field.")
    max_characters: int = Field(1000, ge=1, description="Most characters alive at once.")
    max_scenes: int = Field(100, ge=1, description="Most scenes alive at once.")
    max_workers: int = Field(
        128, ge=2, description="Server threads; each running call (a turn stream) holds one."
    )
    max_concurrent_rpcs: int | None = Field(
        None, ge=1, description="Calls beyond this fail with RESOURCE_EXHAUSTED (None: queue)."
    )
    drain_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight calls may take to finish."
    )

    @model_validator(mode="after")
    def _check(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.token is not None and not self.token.get_secret_value().strip():
            raise ValueError("token must not be empty")
        return self

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"
