"""Loading a certificate chain and private key into an ``ssl.SSLContext`` without touching the disk.

``SSLContext.load_cert_chain`` only reads files; the key is handed to it through anonymous memory
files (``memfd_create``), which live in RAM and vanish with their descriptors. Calling it again on a
context in use rotates the certificate for handshakes that start afterwards.
"""
from __future__ import annotations

import os
import ssl

from node_agent.identity.errors import IdentityError


def load_cert_chain_in_memory(context: ssl.SSLContext, *, chain_pem: str | bytes, key_pem: bytes) -> None:
    """``context.load_cert_chain`` from PEM held in memory (leaf first, then intermediates)."""
    chain = chain_pem.encode("ascii") if isinstance(chain_pem, str) else chain_pem
    chain_fd = _memfd("ambit-chain", chain)
    try:
        key_fd = _memfd("ambit-key", key_pem)
        try:
            context.load_cert_chain(f"/proc/self/fd/{chain_fd}", f"/proc/self/fd/{key_fd}")
        except ssl.SSLError as exc:
            raise IdentityError(f"the certificate and key do not load into TLS (do they match?): {exc}") from exc
        finally:
            os.close(key_fd)
    finally:
        os.close(chain_fd)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    return fd
