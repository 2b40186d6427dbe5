"""The per-session TLS interception CA.

Contract:
- a fresh CA per gateway (per session); the certificate (:attr:`SessionCA.cert_pem`) may go
  to the guest, the private key never does;
- the key is written only into a private directory (mode 0700, file 0600) that the gateway
  process reads, under the session's runtime directory on the host (never a shared folder),
  and the directory is removed when the gateway stops;
- the CA is constrained: ``pathlen=0``, ``keyCertSign`` only, valid for a few days.
"""

from __future__ import annotations

import datetime
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

#: mitmproxy reads ``<confdir>/mitmproxy-ca.pem`` (key + certificate).
ENGINE_CA_FILE = "mitmproxy-ca.pem"
CA_VALIDITY = datetime.timedelta(days=7)


@dataclass(frozen=True, repr=False)
class SessionCA:
    cert_pem: bytes
    key_pem: bytes  # never leaves the host; never logged (repr hides it)

    def __repr__(self) -> str:
        return "SessionCA(<certificate>, <private key hidden>)"

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def generate_ca(common_name: str = "cowork session CA") -> SessionCA:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cowork"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return SessionCA(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def write_engine_confdir(ca: SessionCA, directory: Path) -> Path:
    """Create ``directory`` (0700) holding the engine's CA file (0600); returns it."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=False)
    os.chmod(directory, 0o700)
    path = directory / ENGINE_CA_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, ca.key_pem + ca.cert_pem)
    finally:
        os.close(fd)
    return directory


def remove_engine_confdir(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
