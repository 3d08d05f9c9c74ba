"""TLS between parts, clients and the broker: a development CA and certificates (``orchestrator certs``).

Production robots use certificates from their own CA; the files are the same either way, in the
robot's credentials directory: ``ca.crt`` (every part and client verifies the broker with it),
``broker.crt`` / ``broker.key`` (the broker's; the key owner-only), ``ca.key`` (only to issue more:
keep it off the robot once the certificates are made).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from orchestrator.transport.client import TlsSettings

__all__ = ["BROKER_CERT", "BROKER_KEY", "CA_CERT", "WEB_CERT", "WEB_KEY", "TlsSettings", "make_dev_certs"]

CA_CERT, CA_KEY = "ca.crt", "ca.key"
BROKER_CERT, BROKER_KEY = "broker.crt", "broker.key"
# the web panel's own pair, for a server that may not hold the broker's key (the compose file's `web` service
# runs as another user than mosquitto): same CA, same names
WEB_CERT, WEB_KEY = "web.crt", "web.key"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def make_dev_certs(directory: Path, hosts: Iterable[str], *, days: int = 825, robot: str = "robot") -> list[Path]:
    """A development CA (kept if it exists), a broker certificate and a web panel certificate for ``hosts``
    (DNS names or IPs), each with its own key."""
    from orchestrator.security.credentials import _write_private

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.datetime.now(datetime.UTC)
    ca_crt, ca_key = directory / CA_CERT, directory / CA_KEY
    made: list[Path] = []
    if ca_crt.exists() and ca_key.exists():
        ca_private = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
        assert isinstance(ca_private, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    else:
        ca_private = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"orchestrator development CA ({robot})")])
        ca_cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_private.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(ca_private, hashes.SHA256())
        )
        _write_private(ca_key, _key_pem(ca_private))
        ca_crt.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        made += [ca_crt, ca_key]
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    out = [*made]
    for cert_name, key_name, what in ((BROKER_CERT, BROKER_KEY, "broker"), (WEB_CERT, WEB_KEY, "web panel")):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{robot} {what}")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_private, hashes.SHA256())
        )
        _write_private(directory / key_name, _key_pem(key))
        (directory / cert_name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out += [directory / cert_name, directory / key_name]
    return out
