"""The nginx-mtls peer's certificates: the same kind the mesh issues (ECDSA P-256, SPIFFE URI SAN).

One throwaway CA (ECDSA P-256, self-signed) and one leaf per relay: node-1's relay is the TLS
client, node-2's the server; both carry a SPIFFE URI SAN like workload certificates, plus a DNS
name nginx can verify (``proxy_ssl_name``), since nginx does not match URI SANs.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "relay.node-2.bench"
"""DNS SAN of node-2's relay certificate; node-1's nginx verifies it with ``proxy_ssl_name``."""


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_pki(directory: Path) -> dict[str, Path]:
    """ca.crt, node-1.{crt,key} (client), node-2.{crt,key} (server); returns their paths by name."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ambit-bench"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "ambit bench root")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    paths = {"ca.crt": directory / "ca.crt"}
    paths["ca.crt"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for node in ("node-1", "node-2"):
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(f"spiffe://cluster.local/ns/bench/sa/relay-{node}")]
        if node == "node-2":
            sans.append(x509.DNSName(SERVER_NAME))
        cert = (x509.CertificateBuilder().subject_name(x509.Name([]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                             crl_sign=False, content_commitment=False, data_encipherment=False,
                                             key_agreement=True, encipher_only=False, decipher_only=False),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        paths[f"{node}.crt"] = directory / f"{node}.crt"
        paths[f"{node}.key"] = directory / f"{node}.key"
        paths[f"{node}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{node}.key"].write_bytes(_pem_key(key))
        paths[f"{node}.key"].chmod(0o600)
    return paths
