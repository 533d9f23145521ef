"""The sandbox cluster's PKI: CA, API serving certificate, service-account signing key, admin token.

:func:`ensure_pki` creates whatever is missing in ``cfg.pki_dir`` (mode 0700) and renews the
serving certificate when it is near expiry or lacks a SAN; running it twice changes nothing.
:func:`write_kubeconfig` writes a kubeconfig for the admin user.
"""
from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sandbox.config import SandboxConfig

CONTEXT_NAME = "ambit-sandbox"
CA_LIFETIME = dt.timedelta(days=3650)
SERVING_LIFETIME = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)


class PkiError(Exception):
    """The PKI directory holds something unusable."""


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    """ES256 private key that signs service-account tokens"""
    sa_pub: Path
    admin_token_file: Path

    @property
    def admin_token(self) -> str:
        return self.admin_token_file.read_text().strip()

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.read_bytes()


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} is not an ECDSA private key; remove it and restart to regenerate")
    return key


def _serving_sans(cfg: SandboxConfig) -> list[x509.GeneralName]:
    dns = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", f"kubernetes.default.svc.{cfg.trust_domain}"]
    ips = ["127.0.0.1", cfg.host_ip, str(cfg.service_cidr.network_address + 1)]
    return [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]


def _ensure_ca(pki: Pki, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if pki.ca_cert.exists() and pki.ca_key.exists():
        cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        return cert, _load_key(pki.ca_key)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ambit-sandbox-ca")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(pki.ca_key, _key_pem(key))
    pki.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for stale in (pki.serving_cert, pki.serving_key):
        stale.unlink(missing_ok=True)
    return cert, key


def _serving_ok(pki: Pki, cfg: SandboxConfig, ca: x509.Certificate, now: dt.datetime) -> bool:
    if not (pki.serving_cert.exists() and pki.serving_key.exists()):
        return False
    cert = x509.load_pem_x509_certificate(pki.serving_cert.read_bytes())
    if cert.issuer != ca.subject or cert.not_valid_after_utc - now < RENEW_BEFORE:
        return False
    try:
        have = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return False
    return set(_serving_sans(cfg)) <= have


def _issue_serving(pki: Pki, cfg: SandboxConfig, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> None:
    key = _new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + SERVING_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_serving_sans(cfg)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(pki.serving_key, _key_pem(key))
    pki.serving_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + pki.ca_cert.read_bytes())


def ensure_pki(cfg: SandboxConfig) -> Pki:
    """Create (or complete) the sandbox PKI in ``cfg.pki_dir`` and return its paths."""
    d = cfg.pki_dir
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    pki = Pki(
        dir=d,
        ca_cert=d / "ca.crt",
        ca_key=d / "ca.key",
        serving_cert=d / "apiserver.crt",
        serving_key=d / "apiserver.key",
        sa_key=d / "sa.key",
        sa_pub=d / "sa.pub",
        admin_token_file=d / "admin.token",
    )
    now = dt.datetime.now(dt.timezone.utc)
    ca, ca_key = _ensure_ca(pki, now)
    if not _serving_ok(pki, cfg, ca, now):
        _issue_serving(pki, cfg, ca, ca_key, now)
    if not pki.sa_key.exists():
        _write_private(pki.sa_key, _key_pem(_new_key()))
        pki.sa_pub.unlink(missing_ok=True)
    if not pki.sa_pub.exists():
        pub = _load_key(pki.sa_key).public_key()
        pki.sa_pub.write_bytes(pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    if not pki.admin_token_file.exists() or not pki.admin_token_file.read_text().strip():
        _write_private(pki.admin_token_file, (secrets.token_urlsafe(32) + "\n").encode())
    return pki


def kubeconfig_dict(cfg: SandboxConfig, *, server: str, ca_pem: bytes, token: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": CONTEXT_NAME,
            "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()},
        }],
        "users": [{"name": f"{CONTEXT_NAME}-admin", "user": {"token": token}}],
        "contexts": [{
            "name": CONTEXT_NAME,
            "context": {"cluster": CONTEXT_NAME, "user": f"{CONTEXT_NAME}-admin", "namespace": "default"},
        }],
        "current-context": CONTEXT_NAME,
        "preferences": {},
    }


def write_kubeconfig(cfg: SandboxConfig, *, server: str | None = None, path: Path | None = None) -> Path:
    """Write an admin kubeconfig (mode 0600); defaults: ``cfg.kubeconfig_path``, ``cfg.api_url_host``."""
    pki = ensure_pki(cfg)
    target = Path(path) if path is not None else cfg.kubeconfig_path
    target.parent.mkdir(parents=True, exist_ok=True)
    doc = kubeconfig_dict(cfg, server=server or cfg.api_url_host, ca_pem=pki.ca_pem, token=pki.admin_token)
    _write_private(target, yaml.safe_dump(doc, sort_keys=False).encode())
    return target
