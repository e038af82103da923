"""TLS identity of a host and the contexts for its two listeners and its clients.

Each host has a self-signed certificate made at ``setup``. Peers and consoles do not
trust a CA: they pin the SHA-256 fingerprint of the certificate (shown at setup and at
login), which is how SSH works and what an operator can check out of band.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

from twinvault.ops.errors import FINGERPRINT_MISMATCH, TwinvaultError


def create_identity(
    cert_path: Path, key_path: Path, common_name: str, *, ip_addresses: Sequence[str] = ()
) -> None:
    """Write a new P-256 key (0600) and a ten-year self-signed certificate for `common_name`
    (and `ip_addresses`, for a client that checks the name, such as an SMTP client)."""
    # cryptography is imported where it is used: it is a good part of a console's start.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(common_name), *(x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses)]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def fingerprint_of_der(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def fingerprint_of_cert_file(cert_path: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


def client_context() -> ssl.SSLContext:
    """A client context that does no CA validation: the caller pins the fingerprint."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def check_pinned(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, expected: str) -> str:
    """Compare the peer certificate's fingerprint with the pinned one; return it."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise TwinvaultError(FINGERPRINT_MISMATCH, "peer presented no certificate")
    actual = fingerprint_of_der(der)
    if expected and actual != expected.lower().replace(":", ""):
        raise TwinvaultError(FINGERPRINT_MISMATCH, f"expected {expected}, got {actual}")
    return actual
