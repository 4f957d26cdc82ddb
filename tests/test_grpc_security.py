"""Bearer-token auth and TLS of the gRPC server, with a certificate made in the test."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest
from _grpc_util import connected, running
from grpc_health.v1 import health_pb2, health_pb2_grpc

from her_sdk.client import Client, ServerError

TOKEN = "s3cret-token"


def test_auth_off_accepts_calls_without_token():
    with connected() as (_, c):
        assert c.create_character("Mara")


def test_auth_on_rejects_missing_or_wrong_token_and_accepts_the_right_one():
    with running(token=TOKEN) as server:
        for token in (None, "wrong", TOKEN + "x"):
            with Client(server.target, token=token) as c, pytest.raises(ServerError) as e:
                c.create_character("Mara")
            assert e.value.code == "UNAUTHENTICATED"
        # Streaming rpcs are guarded too.
        with Client(server.target, token=TOKEN) as good:
            mara = good.create_character("Mara")
            scene = good.create_scene([mara], players="T")
            scene.say("T", "Hello.")
            assert good.get_character(mara).persona.name == "Mara"
        with Client(server.target, token="wrong") as bad, pytest.raises(ServerError) as e:
            bad.scene(scene.id).turn("Mara")
        assert e.value.code == "UNAUTHENTICATED"
        with Client(server.target, token=TOKEN) as good:
            assert good.scene(scene.id).turn("Mara").speech
        # Health checks stay open (for orchestrators), and say nothing about characters.
        channel = grpc.insecure_channel(server.target)
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        channel.close()


def _make_cert(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    try:  # prefer the cryptography package when installed
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("needs the cryptography package or the openssl command")
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )
        return key, cert
    pk = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    c = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pk.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(pk, hashes.SHA256())
    )
    key.write_bytes(
        pk.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    return key, cert


def test_tls_with_token(tmp_path):
    key, cert = _make_cert(tmp_path)
    with running(tls_cert=cert, tls_key=key, token=TOKEN) as server:
        with Client(server.target, token=TOKEN, root_certificates=cert) as c:
            mara = c.create_character("Mara")
            scene = c.create_scene([mara], players="T")
            scene.say("T", "Over TLS?")
            assert scene.turn("Mara").speech
        # A plaintext client cannot talk to the TLS port.
        with Client(server.target, token=TOKEN, timeout=3) as plain:
            with pytest.raises(ServerError) as e:
                plain.create_character("Mara")
            assert e.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        # A client that does not trust the certificate is refused.
        (tmp_path / "other").mkdir()
        _, other_cert = _make_cert(tmp_path / "other")
        with Client(server.target, token=TOKEN, root_certificates=other_cert, timeout=3) as c2:
            with pytest.raises(ServerError) as e:
                c2.create_character("Mara")
            assert e.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
