"""An independent Connect client for the tests, written from the protocol's text
(connectrpc.com/docs/protocol), on plain http.client: no connectrpc, no server code.

    unary(url, "CreateCharacter", {"persona": {"name": "Mara"}})  -> (http status, JSON object)
    stream(url, "Turn", {"sceneId": ...})  -> (http status, content type, [messages], end)

Requests are JSON in protobuf's canonical mapping; `end` is the end-of-stream object.
"""

from __future__ import annotations

import http.client
import json
import struct
import urllib.parse

SERVICE = "her.v1.HerService"

# The protocol's table "Error Codes" (code -> HTTP status), copied from the spec.
HTTP_STATUS = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    u = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    return cls(u.hostname, u.port, timeout=timeout), u.path.rstrip("/")


def _headers(content_type: str, token: str | None, timeout_ms: int | None, extra=None) -> dict:
    h = {"Content-Type": content_type, "Connect-Protocol-Version": "1"}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if timeout_ms is not None:
        h["Connect-Timeout-Ms"] = str(timeout_ms)
    h.update(extra or {})
    return h


def unary(
    url: str,
    method: str,
    message: dict | bytes,
    *,
    token: str | None = None,
    timeout_ms: int | None = None,
    headers: dict | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict]:
    conn, prefix = _connection(url, timeout)
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    try:
        conn.request(
            "POST",
            f"{prefix}/{SERVICE}/{method}",
            body=body,
            headers=_headers("application/json", token, timeout_ms, headers),
        )
        r = conn.getresponse()
        data = r.read()
        assert r.getheader("Content-Type", "").startswith("application/json"), r.getheaders()
        return r.status, json.loads(data) if data else {}
    finally:
        conn.close()


def envelope(message: dict, flags: int = 0) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack(">BI", flags, len(payload)) + payload


def read_envelopes(data: bytes) -> list[tuple[int, dict]]:
    out, i = [], 0
    while i < len(data):
        flags, size = struct.unpack(">BI", data[i : i + 5])
        out.append((flags, json.loads(data[i + 5 : i + 5 + size])))
        i += 5 + size
    assert i == len(data), "a truncated envelope"
    return out


def stream(
    url: str,
    method: str,
    message: dict,
    *,
    token: str | None = None,
    timeout_ms: int | None = None,
    timeout: float = 60.0,
) -> tuple[int, str, list[dict], dict]:
    """A server-streaming call: (status, content type, messages, end-of-stream object)."""
    conn, prefix = _connection(url, timeout)
    try:
        conn.request(
            "POST",
            f"{prefix}/{SERVICE}/{method}",
            body=envelope(message),
            headers=_headers("application/connect+json", token, timeout_ms),
        )
        r = conn.getresponse()
        frames = read_envelopes(r.read())
        ctype = r.getheader("Content-Type", "")
    finally:
        conn.close()
    assert frames, "a stream ends with an end-of-stream message"
    *messages, (last_flags, end) = frames
    assert last_flags & 2, "the last message is the end-of-stream one"
    assert all(not f & 2 for f, _ in messages), "only the last message ends the stream"
    return r.status, ctype, [m for _, m in messages], end


def error_code(status: int, body: dict) -> str:
    """The Connect code of a unary answer ("ok" for 200), checked against its HTTP status."""
    if status == 200:
        return "ok"
    code = body.get("code")
    assert code in HTTP_STATUS and HTTP_STATUS[code] == status, (status, body)
    return code
