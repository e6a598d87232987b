"""Certificates and keys for a test control plane: a CA, the apiserver's serving cert, client
certs (admin, controller-manager, kubelet) and the service-account signing key pair.

What ``kubeadm init`` writes to /etc/kubernetes/pki, made with ``cryptography`` in well under a
second (EC P-256 keys), so every cluster of a test session has its own trust root.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


@dataclass(frozen=True)
class Pair:
    """A certificate and its key as files."""
    cert: Path
    key: Path


class Pki:
    """One cluster's PKI in ``folder``."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        self._valid = (now - dt.timedelta(hours=1), now + dt.timedelta(days=2))
        self._ca_key = _key()
        self._ca = (x509.CertificateBuilder()
                    .subject_name(_name("fedma-test-ca")).issuer_name(_name("fedma-test-ca"))
                    .public_key(self._ca_key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(self._valid[0]).not_valid_after(self._valid[1])
                    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                    .add_extension(x509.KeyUsage(True, False, False, False, False, True, True,
                                                 False, False), critical=True)
                    .sign(self._ca_key, hashes.SHA256()))
        self.ca = folder / "ca.crt"
        self.ca.write_bytes(self._ca.public_bytes(serialization.Encoding.PEM))
        (folder / "ca.key").write_bytes(_pem_key(self._ca_key))
        self.ca_key = folder / "ca.key"
        sa = _key()
        self.sa_key = folder / "sa.key"
        self.sa_pub = folder / "sa.pub"
        self.sa_key.write_bytes(_pem_key(sa))
        self.sa_pub.write_bytes(sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def issue(self, name: str, cn: str, org: str | None = None, server: bool = False) -> Pair:
        key = _key()
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = (x509.CertificateBuilder().subject_name(_name(cn, org)).issuer_name(self._ca.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(self._valid[0]).not_valid_after(self._valid[1])
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.DNSName("kubernetes"),
                x509.DNSName("kubernetes.default"), x509.DNSName("kubernetes.default.svc"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("10.96.0.1"))]), critical=False)
        cert = b.sign(self._ca_key, hashes.SHA256())
        pair = Pair(self.folder / f"{name}.crt", self.folder / f"{name}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pair.key.write_bytes(_pem_key(key))
        return pair
