"""TLS 1.3 contexts for the tunnel, built from in-memory PEMs, and the SPIFFE checks after a handshake.

- ``CertSource`` (injected; the identity package's certificate manager) gives each service
  account's chain and key, and the mesh trust bundle.
- ``TlsContexts`` builds one client and one server ``SSLContext`` per identity and rebuilds them
  when the certificate or the bundle changes. Private keys reach OpenSSL through an anonymous
  ``memfd`` (``/proc/self/fd/N``), never through a file on disk.
- Client contexts verify the server's chain against the bundle (no hostnames: identities are
  URI SANs) and keep one resumable ``SSLSession`` per (source identity, destination) pair.
- Server contexts require a client certificate that chains to the bundle; OpenSSL checks
  validity dates and the client/server-auth purpose (EKU, key usage) of both sides.
- ``client_peer_check`` / ``server_peer_check`` then require exactly one SPIFFE URI SAN:
  the expected one on the client, one of our trust domain on the server.
"""
from __future__ import annotations

import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol

from node_agent.identity.errors import IdentityError, SpiffeIdError
from node_agent.identity.spiffe import SpiffeId
from node_agent.proxy.errors import PeerIdentityError, TlsSetupError
from node_agent.proxy.tunnel import ALPN

SESSION_CACHE_SIZE = 4096
"""Resumable sessions kept per source identity (one per destination pod), least recently used first out."""
BUNDLE_RECHECK = 1.0
"""Seconds a read of the trust bundle is reused (reading it serializes every root, ~15 us each); a
rotated bundle reaches new connections at most this late."""
PEER_ID_CACHE_SIZE = 1024
"""Verified peer certificates (DER) whose SPIFFE ID is remembered, so the certificate is not parsed
into a dict again (~15 us) on every connection from the same workload."""
SESSION_REFRESH = 60.0
"""Seconds a session is reused before the newest ticket replaces it (reading ``SSLObject.session``
costs about as much as the resumed handshake itself, so it is not done on every connection)."""


class Credentials(Protocol):
    """One identity's certificate: leaf first, then intermediates (PEM), and its private key (PEM)."""

    @property
    def chain_pem(self) -> bytes | str: ...

    @property
    def key_pem(self) -> bytes | str: ...


class CertSource(Protocol):
    """Where certificates come from (the identity package's certificate manager)."""

    def credentials(self, identity: SpiffeId) -> Credentials | None:
        """The current certificate for ``identity``; ``None`` (or an ``IdentityError``) while none is valid."""
        ...

    def trust_bundle(self) -> bytes | str:
        """PEM roots of the mesh; peers must chain to one of them."""
        ...


def _as_bytes(pem: bytes | str) -> bytes:
    return pem.encode("ascii") if isinstance(pem, str) else bytes(pem)


def load_chain_from_memory(context: ssl.SSLContext, *, chain_pem: bytes, key_pem: bytes) -> None:
    """``load_cert_chain`` without touching a disk: the PEMs live in an anonymous memfd."""
    fd = os.memfd_create("ambit-credentials", os.MFD_CLOEXEC)
    try:
        data = chain_pem.rstrip(b"\n") + b"\n" + key_pem
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _base_context(*, server: bool, bundle: bytes, chain: bytes, key: bytes, what: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    if not server:
        context.check_hostname = False  # identities are SPIFFE URI SANs, checked after the handshake
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cadata=bundle.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        raise TlsSetupError(f"the mesh trust bundle cannot be loaded ({exc}); check the identity CA's roots") from exc
    try:
        load_chain_from_memory(context, chain_pem=chain, key_pem=key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(
            f"the certificate or key of {what} cannot be loaded ({exc}); "
            "is the key the one the certificate was issued for?"
        ) from exc
    context.set_alpn_protocols([ALPN])
    return context


class ClientTls:
    """A client context for one source identity, with its resumable sessions."""

    __slots__ = ("context", "_sessions", "_limit", "_clock")

    def __init__(self, context: ssl.SSLContext, *, limit: int = SESSION_CACHE_SIZE) -> None:
        self.context = context
        self._sessions: OrderedDict[Hashable, tuple[ssl.SSLSession, float]] = OrderedDict()
        self._limit = limit
        self._clock = time.monotonic

    def session(self, destination: Hashable) -> ssl.SSLSession | None:
        entry = self._sessions.get(destination)
        if entry is None:
            return None
        self._sessions.move_to_end(destination)
        return entry[0]

    def remember(self, destination: Hashable, tls: ssl.SSLObject) -> None:
        """Keep the connection's newest session (TLS 1.3 tickets arrive after the handshake).

        After a resumed handshake the cached session is kept until ``SESSION_REFRESH`` has passed.
        """
        now = self._clock()
        entry = self._sessions.get(destination)
        if entry is not None and tls.session_reused and now - entry[1] < SESSION_REFRESH:
            return
        session = tls.session
        if session is None or not session.has_ticket:
            return
        self._sessions[destination] = (session, now)
        self._sessions.move_to_end(destination)
        while len(self._sessions) > self._limit:
            self._sessions.popitem(last=False)

    def forget(self, destination: Hashable) -> None:
        self._sessions.pop(destination, None)


class _Entry:
    __slots__ = ("chain", "key", "bundle", "source", "client", "server")

    def __init__(self, chain: bytes, key: bytes, bundle: bytes, source: Credentials) -> None:
        self.chain = chain
        self.key = key
        self.bundle = bundle
        self.source = source  # the credentials object this entry was built from (same object: same PEMs)
        self.client: ClientTls | None = None
        self.server: ssl.SSLContext | None = None


class TlsContexts:
    """Client and server contexts per identity, rebuilt when certificates or the bundle change."""

    __slots__ = ("_certs", "_entries", "_session_limit", "_bundle", "_bundle_read", "_clock")

    def __init__(self, *, certs: CertSource, session_cache_size: int = SESSION_CACHE_SIZE) -> None:
        self._certs = certs
        self._entries: dict[SpiffeId, _Entry] = {}
        self._session_limit = session_cache_size
        self._bundle = b""
        self._bundle_read = float("-inf")
        self._clock = time.monotonic

    def _trust_bundle(self) -> bytes:
        """The bundle, re-read at most every ``BUNDLE_RECHECK`` seconds; the same object while unchanged."""
        now = self._clock()
        if now - self._bundle_read >= BUNDLE_RECHECK:
            fresh = _as_bytes(self._certs.trust_bundle())
            if fresh != self._bundle:
                self._bundle = fresh
            self._bundle_read = now
        return self._bundle

    def _entry(self, identity: SpiffeId) -> _Entry:
        """Per connection: validity is asked of the source every time; PEMs are compared only when the
        source hands out a different credentials object (a renewal) or the bundle changed."""
        try:
            creds = self._certs.credentials(identity)
        except IdentityError as exc:
            raise TlsSetupError(f"no usable certificate for {identity} yet: {exc}") from exc
        if creds is None:
            raise TlsSetupError(f"no certificate for {identity} yet; is the identity CA reachable from this node?")
        bundle = self._trust_bundle()
        entry = self._entries.get(identity)
        if entry is not None and entry.source is creds and entry.bundle is bundle:
            return entry
        chain, key = _as_bytes(creds.chain_pem), _as_bytes(creds.key_pem)
        if entry is None or entry.chain != chain or entry.key != key or entry.bundle != bundle:
            entry = self._entries[identity] = _Entry(chain, key, bundle, creds)
        entry.source, entry.bundle = creds, bundle
        return entry

    def client(self, identity: SpiffeId) -> ClientTls:
        """The client side for connections made on behalf of ``identity``."""
        entry = self._entry(identity)
        if entry.client is None:
            context = _base_context(server=False, bundle=entry.bundle, chain=entry.chain, key=entry.key,
                                    what=str(identity))
            entry.client = ClientTls(context, limit=self._session_limit)
        return entry.client

    def server(self, identity: SpiffeId) -> ssl.SSLContext:
        """The server context of a local workload running as ``identity`` (its 15008 listener)."""
        entry = self._entry(identity)
        if entry.server is None:
            entry.server = _base_context(server=True, bundle=entry.bundle, chain=entry.chain, key=entry.key,
                                         what=str(identity))
        return entry.server

    def forget(self, identity: SpiffeId) -> None:
        """Drop contexts and sessions of an identity no longer on this node."""
        self._entries.pop(identity, None)


_peer_ids: OrderedDict[bytes, SpiffeId] = OrderedDict()


def peer_identity(tls: ssl.SSLObject) -> SpiffeId:
    """The SPIFFE ID in the verified peer certificate; ``PeerIdentityError`` if there is not exactly one.

    Remembered per certificate (DER; OpenSSL verified it in this handshake), so a workload's
    repeated connections do not parse the same certificate again.
    """
    der = tls.getpeercert(binary_form=True)
    if der:
        known = _peer_ids.get(der)
        if known is not None:
            return known
    identity = _parse_peer_identity(tls)
    if der:
        _peer_ids[der] = identity
        if len(_peer_ids) > PEER_ID_CACHE_SIZE:
            _peer_ids.popitem(last=False)
    return identity


def _parse_peer_identity(tls: ssl.SSLObject) -> SpiffeId:
    cert = tls.getpeercert()
    if not cert:
        raise PeerIdentityError("peer presented no verified certificate")
    uris = [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]
    if len(uris) != 1:
        raise PeerIdentityError(
            f"peer certificate has {len(uris)} URI SANs; a workload certificate carries exactly one SPIFFE ID"
        )
    try:
        return SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise PeerIdentityError(f"peer certificate's URI SAN is not a workload SPIFFE ID: {exc}") from exc


def client_peer_check(tls: ssl.SSLObject, *, expected: SpiffeId, address: str) -> SpiffeId:
    """After a client handshake: the server must be ``expected``."""
    actual = peer_identity(tls)
    if actual != expected:
        raise PeerIdentityError(
            f"{address} presented {actual}, expected {expected}; "
            "the endpoint's pod IP may have been reused by another workload, or discovery is stale"
        )
    return actual


def server_peer_check(tls: ssl.SSLObject, *, trust_domain: str) -> SpiffeId:
    """After a server handshake: the client must be a workload of ``trust_domain``."""
    actual = peer_identity(tls)
    if actual.trust_domain != trust_domain:
        raise PeerIdentityError(
            f"client identity {actual} is from trust domain {actual.trust_domain!r}, "
            f"this mesh is {trust_domain!r}"
        )
    return actual


def describe_tls_error(exc: BaseException) -> str:
    """A short lowercase reason for a failed handshake, naming the certificate problem when known."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"peer certificate refused: {exc.verify_message or exc.reason}".lower()
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).lower().replace("_", " ")
        return f"tls handshake failed: {reason}"
    return str(exc).lower() or type(exc).__name__.lower()
