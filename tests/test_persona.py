"""Personas, and Character Card V2/V3 import (JSON and PNG text chunks)."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest

from her_sdk import Character, ConfigError, Persona

CARD_V2 = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Seraphine",
        "description": "A herbalist in {{char}}'s own shop; she distrusts {{user}}.",
        "personality": "warm, secretive",
        "scenario": "A storm traps a stranger in her shop.",
        "first_mes": "Come in, quickly.",
    },
}


def png_with_text(chunks: dict[str, bytes]) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    for key, value in chunks.items():
        out += chunk(b"tEXt", key.encode() + b"\0" + value)
    return out + chunk(b"IEND", b"")


def test_card_v2_json():
    p = Persona.from_card(CARD_V2)
    assert p.name == "Seraphine"
    assert "Seraphine's own shop" in p.profile and "warm, secretive" in p.profile
    assert "{{" not in p.profile
    assert p.scenario.startswith("A storm")
    assert Persona.from_card(json.dumps(CARD_V2)) == p


def test_card_v1_flat_and_file(tmp_path):
    flat = {"name": "Old Tom", "description": "A ferryman.", "personality": "gruff"}
    path = tmp_path / "tom.json"
    path.write_text(json.dumps(flat))
    assert Persona.from_card(path).profile == "A ferryman.\n\ngruff"


def test_card_png_prefers_v3(tmp_path):
    v3 = dict(CARD_V2, spec="chara_card_v3", data=dict(CARD_V2["data"], name="Seraphine V3"))
    png = png_with_text(
        {
            "chara": base64.b64encode(json.dumps(CARD_V2).encode()),
            "ccv3": base64.b64encode(json.dumps(v3).encode()),
        }
    )
    path = tmp_path / "card.png"
    path.write_bytes(png)
    assert Persona.from_card(path).name == "Seraphine V3"
    c = Character(persona=Persona.from_card(path))
    assert c.name == "Seraphine V3"


@pytest.mark.parametrize(
    "bad",
    [{"data": {"description": "no name"}}, "[1, 2]", "{not json"],
)
def test_bad_cards(bad):
    with pytest.raises(ConfigError):
        Persona.from_card(bad)


def test_png_without_card(tmp_path):
    path = tmp_path / "plain.png"
    path.write_bytes(png_with_text({"Comment": b"hello"}))
    with pytest.raises(ConfigError, match="no 'chara'"):
        Persona.from_card(path)


@pytest.mark.parametrize("name", ["", "  ", "A<b>", "Two\nLines", "X: Y"])
def test_invalid_names(name):
    with pytest.raises(ConfigError):
        Persona(name=name)
