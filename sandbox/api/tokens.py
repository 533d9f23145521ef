"""Service-account tokens: ES256 JWTs shaped like Kubernetes' bound tokens (TokenRequest API).

Pure signing and verification; whether the service account (and bound pod) still exists is
checked by the caller (``resources``), which owns the objects.
"""
from __future__ import annotations

import base64
import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = "ES256"


class TokenInvalid(Exception):
    """A token is malformed, badly signed, expired or for another audience (message says which)."""


@dataclass(frozen=True)
class BoundPod:
    name: str
    uid: str


@dataclass(frozen=True)
class TokenClaims:
    namespace: str
    service_account: str
    service_account_uid: str
    audiences: tuple[str, ...]
    expires: int
    pod: BoundPod | None

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


class TokenIssuer:
    def __init__(self, *, key_pem: bytes, issuer: str, api_audiences: Sequence[str]) -> None:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TokenInvalid("BUG: the service-account signing key is not an ECDSA key")
        self._key = key
        self._pub = key.public_key()
        der = self._pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.key_id = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
        self.issuer = issuer
        self.api_audiences = tuple(api_audiences)

    def issue(
        self,
        *,
        namespace: str,
        service_account: str,
        service_account_uid: str,
        audiences: Sequence[str] | None = None,
        expiration_seconds: int = 3600,
        pod: BoundPod | None = None,
        now: float | None = None,
    ) -> tuple[str, int]:
        """Sign a token; returns ``(token, expiry as unix seconds)``."""
        iat = int(time.time() if now is None else now)
        exp = iat + int(expiration_seconds)
        k8s: dict[str, Any] = {
            "namespace": namespace,
            "serviceaccount": {"name": service_account, "uid": service_account_uid},
        }
        if pod is not None:
            k8s["pod"] = {"name": pod.name, "uid": pod.uid}
        claims = {
            "aud": list(audiences) if audiences else list(self.api_audiences),
            "exp": exp,
            "iat": iat,
            "nbf": iat,
            "iss": self.issuer,
            "jti": str(uuid.uuid4()),
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "kubernetes.io": k8s,
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.key_id})
        return token, exp

    def verify(self, token: str, *, audiences: Sequence[str] | None = None, now: float | None = None) -> TokenClaims:
        """Check signature, issuer, expiry and that the token's audiences meet ``audiences``
        (default: the API's own audiences)."""
        wanted = list(audiences) if audiences else list(self.api_audiences)
        try:
            claims = jwt.decode(
                token,
                self._pub,
                algorithms=[ALGORITHM],
                audience=wanted,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "aud", "iss"], "verify_exp": now is None},
                leeway=5,
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenInvalid("token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenInvalid("token audiences are invalid for this request") from exc
        except jwt.PyJWTError as exc:
            raise TokenInvalid(f"invalid bearer token: {exc}") from exc
        if now is not None and claims["exp"] + 5 < now:
            raise TokenInvalid("token has expired")
        k8s = claims.get("kubernetes.io") or {}
        sa = k8s.get("serviceaccount") or {}
        if not (k8s.get("namespace") and sa.get("name") and sa.get("uid")):
            raise TokenInvalid("token lacks the kubernetes.io service-account claims")
        pod = k8s.get("pod")
        aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        return TokenClaims(
            namespace=k8s["namespace"],
            service_account=sa["name"],
            service_account_uid=sa["uid"],
            audiences=tuple(a for a in aud if a in wanted),
            expires=int(claims["exp"]),
            pod=BoundPod(pod["name"], pod["uid"]) if isinstance(pod, dict) and pod.get("name") else None,
        )


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2
