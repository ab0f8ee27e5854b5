"""Throw-away TLS for local servers: a CA and a serving certificate it signed.

The local control plane serves its API over HTTPS with such a pair, and tests that
run an HTTPS server the API server calls (an admission webhook) make one of their
own the same way, so there is one place that knows how to build them.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def write_private_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    """``key`` as unencrypted PKCS#8 PEM."""
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@dataclass(frozen=True)
class ServingCert:
    """The files :func:`serving_cert` wrote."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.read_bytes()

    def server_context(self) -> ssl.SSLContext:
        """An SSL context that serves this certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def serving_cert(
    folder: Path,
    *,
    name: str,
    ca_name: str,
    common_name: str,
    ips: tuple[str, ...] = ("127.0.0.1",),
    dns_names: tuple[str, ...] = (),
    days: int = 7,
) -> ServingCert:
    """A self-signed CA (``ca.crt``, ``ca.key``) and ``<name>.crt``/``.key`` signed by it.

    The certificate is valid from an hour ago (clocks differ a little) for ``days``,
    for the given IP addresses and DNS names.
    """
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(issuer)
        .issuer_name(issuer)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    made = ServingCert(
        ca_cert=folder / "ca.crt",
        ca_key=folder / "ca.key",
        cert=folder / f"{name}.crt",
        key=folder / f"{name}.key",
    )
    made.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    write_private_key(made.ca_key, ca_key)
    made.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private_key(made.key, key)
    return made
