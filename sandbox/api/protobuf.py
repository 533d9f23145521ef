"""Decode the Kubernetes protobuf request bodies that kubectl's and Helm's typed clients send.

``kubectl create namespace|configmap|secret|serviceaccount|deployment|service|token`` encode their
bodies as ``application/vnd.kubernetes.protobuf`` (magic ``k8s\\0`` + ``runtime.Unknown``), and so
do client-go's typed calls that Helm makes (release Secrets, and the DeleteOptions of deletes). This
module turns those bodies into the JSON objects the rest of the API works with, for the messages
listed in :data:`SCHEMAS` (field numbers from Kubernetes' ``generated.proto``). A field it does
not know is refused with an actionable error rather than silently dropped. Responses are always
JSON, which every Kubernetes client accepts.
"""
from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import Any

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"


class ProtobufError(ValueError):
    """The body cannot be decoded; the message names the message type and field."""


# type codes: "s" string, "b" bool (dropped when false), "o" bool kept when false (an optional field),
# "i" int (kept when 0), "z" int dropped when 0, "y" bytes (base64),
# "m:s" map<string,string>, "m:y" map<string,bytes>, "m:q" map<string,Quantity>,
# "T" Time, "I" IntOrString, "Q" Quantity, or a message name. A trailing "*" means repeated.
Field = tuple[str, str]
SCHEMAS: dict[str, dict[int, Field]] = {
    "Unknown": {1: ("typeMeta", "TypeMeta"), 2: ("raw", "y"), 3: ("contentEncoding", "s"), 4: ("contentType", "s")},
    "TypeMeta": {1: ("apiVersion", "s"), 2: ("kind", "s")},
    "ObjectMeta": {
        1: ("name", "s"), 2: ("generateName", "s"), 3: ("namespace", "s"), 4: ("selfLink", "s"), 5: ("uid", "s"),
        6: ("resourceVersion", "s"), 7: ("generation", "z"), 8: ("creationTimestamp", "T"), 9: ("deletionTimestamp", "T"),
        10: ("deletionGracePeriodSeconds", "i"), 11: ("labels", "m:s"), 12: ("annotations", "m:s"),
        13: ("ownerReferences", "OwnerReference*"), 14: ("finalizers", "s*"), 17: ("managedFields", "skip"),
    },
    "OwnerReference": {1: ("kind", "s"), 3: ("name", "s"), 4: ("uid", "s"), 5: ("apiVersion", "s"), 6: ("controller", "b"), 7: ("blockOwnerDeletion", "b")},
    "ObjectReference": {1: ("kind", "s"), 2: ("namespace", "s"), 3: ("name", "s"), 4: ("uid", "s"), 5: ("apiVersion", "s"), 6: ("resourceVersion", "s"), 7: ("fieldPath", "s")},
    "LocalObjectReference": {1: ("name", "s")},
    "ConfigMap": {1: ("metadata", "ObjectMeta"), 2: ("data", "m:s"), 3: ("binaryData", "m:y"), 4: ("immutable", "b")},
    "Secret": {1: ("metadata", "ObjectMeta"), 2: ("data", "m:y"), 3: ("type", "s"), 4: ("stringData", "m:s"), 5: ("immutable", "b")},
    "Namespace": {1: ("metadata", "ObjectMeta"), 2: ("spec", "NamespaceSpec"), 3: ("status", "NamespaceStatus")},
    "NamespaceSpec": {1: ("finalizers", "s*")},
    "NamespaceStatus": {1: ("phase", "s")},
    "ServiceAccount": {1: ("metadata", "ObjectMeta"), 2: ("secrets", "ObjectReference*"), 3: ("imagePullSecrets", "LocalObjectReference*"), 4: ("automountServiceAccountToken", "b")},
    "TokenRequest": {1: ("metadata", "ObjectMeta"), 2: ("spec", "TokenRequestSpec"), 3: ("status", "skip")},
    "TokenRequestSpec": {1: ("audiences", "s*"), 3: ("boundObjectRef", "BoundObjectReference"), 4: ("expirationSeconds", "z")},
    "BoundObjectReference": {1: ("kind", "s"), 2: ("apiVersion", "s"), 3: ("name", "s"), 4: ("uid", "s")},
    "Deployment": {1: ("metadata", "ObjectMeta"), 2: ("spec", "DeploymentSpec"), 3: ("status", "skip")},
    "DeploymentSpec": {
        1: ("replicas", "i"), 2: ("selector", "LabelSelector"), 3: ("template", "PodTemplateSpec"), 4: ("strategy", "DeploymentStrategy"),
        5: ("minReadySeconds", "z"), 6: ("revisionHistoryLimit", "i"), 7: ("paused", "b"), 9: ("progressDeadlineSeconds", "i"),
    },
    "DeploymentStrategy": {1: ("type", "s"), 2: ("rollingUpdate", "RollingUpdateDeployment")},
    "RollingUpdateDeployment": {1: ("maxUnavailable", "I"), 2: ("maxSurge", "I")},
    "LabelSelector": {1: ("matchLabels", "m:s"), 2: ("matchExpressions", "LabelSelectorRequirement*")},
    "LabelSelectorRequirement": {1: ("key", "s"), 2: ("operator", "s"), 3: ("values", "s*")},
    "PodTemplateSpec": {1: ("metadata", "ObjectMeta"), 2: ("spec", "PodSpec")},
    "PodSpec": {
        2: ("containers", "Container*"), 3: ("restartPolicy", "s"), 4: ("terminationGracePeriodSeconds", "i"),
        5: ("activeDeadlineSeconds", "i"), 6: ("dnsPolicy", "s"), 12: ("hostPID", "b"), 13: ("hostIPC", "b"), 7: ("nodeSelector", "m:s"), 8: ("serviceAccountName", "s"), 9: ("serviceAccount", "s"),
        10: ("nodeName", "s"), 11: ("hostNetwork", "b"), 15: ("imagePullSecrets", "LocalObjectReference*"),
        16: ("hostname", "s"), 17: ("subdomain", "s"), 19: ("schedulerName", "s"), 20: ("initContainers", "Container*"),
        21: ("automountServiceAccountToken", "b"), 24: ("priorityClassName", "s"),
    },
    "Container": {
        1: ("name", "s"), 2: ("image", "s"), 3: ("command", "s*"), 4: ("args", "s*"), 5: ("workingDir", "s"),
        6: ("ports", "ContainerPort*"), 7: ("env", "EnvVar*"), 8: ("resources", "ResourceRequirements"),
        13: ("terminationMessagePath", "s"), 14: ("imagePullPolicy", "s"), 16: ("stdin", "b"), 17: ("stdinOnce", "b"),
        18: ("tty", "b"), 20: ("terminationMessagePolicy", "s"),
    },
    "ContainerPort": {1: ("name", "s"), 2: ("hostPort", "z"), 3: ("containerPort", "i"), 4: ("protocol", "s"), 5: ("hostIP", "s")},
    "EnvVar": {1: ("name", "s"), 2: ("value", "s")},
    "ResourceRequirements": {1: ("limits", "m:q"), 2: ("requests", "m:q")},
    "Service": {1: ("metadata", "ObjectMeta"), 2: ("spec", "ServiceSpec"), 3: ("status", "skip")},
    "ServiceSpec": {
        1: ("ports", "ServicePort*"), 2: ("selector", "m:s"), 3: ("clusterIP", "s"), 4: ("type", "s"),
        5: ("externalIPs", "s*"), 7: ("sessionAffinity", "s"), 8: ("loadBalancerIP", "s"),
        9: ("loadBalancerSourceRanges", "s*"), 10: ("externalName", "s"), 11: ("externalTrafficPolicy", "s"),
        12: ("healthCheckNodePort", "z"), 13: ("publishNotReadyAddresses", "b"), 17: ("ipFamilyPolicy", "s"),
        18: ("clusterIPs", "s*"), 19: ("ipFamilies", "s*"), 21: ("loadBalancerClass", "s"), 22: ("internalTrafficPolicy", "s"),
    },
    "ServicePort": {1: ("name", "s"), 2: ("protocol", "s"), 3: ("port", "i"), 4: ("targetPort", "I"), 5: ("nodePort", "z"), 6: ("appProtocol", "s")},
    # the body of client-go's typed deletes (Helm deletes its release Secrets so)
    "DeleteOptions": {
        1: ("gracePeriodSeconds", "i"), 2: ("preconditions", "Preconditions"), 3: ("orphanDependents", "o"),
        4: ("propagationPolicy", "s"), 5: ("dryRun", "s*"), 6: ("ignoreStoreReadErrorWithClusterBreakingPotential", "b"),
    },
    "Preconditions": {1: ("uid", "s"), 2: ("resourceVersion", "s")},
}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ProtobufError("varint too long")


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ProtobufError("truncated length-delimited field")
            value, pos = buf[pos : pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise ProtobufError("truncated fixed-width field")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ProtobufError(f"unsupported wire type {wire} for field {num}")
        out.append((num, wire, value))
    return out


def _text(value: bytes, where: str) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise ProtobufError(f"{where}: not valid UTF-8") from exc


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _scalar(typ: str, wire: int, value: Any, where: str) -> Any:
    if typ in ("s", "y", "Q", "T", "I") or typ.startswith("m:") or typ[0].isupper():
        if wire != 2:
            raise ProtobufError(f"{where}: expected a length-delimited value")
    elif wire != 0:
        raise ProtobufError(f"{where}: expected a varint")
    if typ == "s":
        return _text(value, where)
    if typ == "y":
        return base64.b64encode(value).decode()
    if typ in ("b", "o"):
        return bool(value)
    if typ in ("i", "z"):
        return _signed(value)
    if typ == "Q":
        return next((_text(v, where) for n, _, v in _fields(value) if n == 1 and isinstance(v, bytes)), "0")
    if typ == "T":
        secs = next((_signed(v) for n, w, v in _fields(value) if n == 1 and w == 0), 0)
        if not secs:
            return None
        return datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if typ == "I":
        parts = {n: v for n, _, v in _fields(value)}
        if parts.get(1, 0) == 1:
            text = parts.get(3, b"")
            return _text(text, where) if isinstance(text, bytes) else str(text)
        number = parts.get(2, 0)
        return _signed(number) if isinstance(number, int) else 0
    return decode_message(typ, value)


def decode_message(name: str, buf: bytes) -> dict[str, Any]:
    schema = SCHEMAS.get(name)
    if schema is None:
        raise ProtobufError(f"the sandbox API cannot decode protobuf message {name}")
    out: dict[str, Any] = {}
    for num, wire, value in _fields(buf):
        field = schema.get(num)
        if field is None:
            raise ProtobufError(f"the sandbox API does not know field {num} of protobuf message {name}")
        key, typ = field
        if typ == "skip":
            continue
        where = f"{name}.{key}"
        repeated = typ.endswith("*")
        base = typ.rstrip("*")
        if base.startswith("m:"):
            if wire != 2:
                raise ProtobufError(f"{where}: expected a length-delimited map entry")
            entry = {n: v for n, _, v in _fields(value)}
            mkey, mval = entry.get(1, b""), entry.get(2, b"")
            if not isinstance(mkey, bytes) or not isinstance(mval, bytes):
                raise ProtobufError(f"{where}: malformed map entry")
            out.setdefault(key, {})[_text(mkey, where)] = _scalar(base[2:].upper() if base[2:] == "q" else base[2:], 2, mval, where)
            continue
        decoded = _scalar(base, wire, value, where)
        if repeated:
            out.setdefault(key, []).append(decoded)
        else:
            out[key] = decoded
    return _prune(out, schema)


def _prune(obj: dict[str, Any], schema: dict[int, Field]) -> dict[str, Any]:
    """Drop what Go's JSON encoding would omit: empty strings, false, zero omitempty ints, empty objects."""
    types = {k: t for k, t in schema.values()}
    out = {}
    for k, v in obj.items():
        t = types.get(k, "")
        if v is None or v == "" or (v is False and t != "o") or v == {} or (t == "z" and v == 0):
            continue
        out[k] = v
    return out


def decode_object(body: bytes) -> dict[str, Any]:
    """A protobuf-encoded request body as the JSON object it stands for."""
    if not body.startswith(MAGIC):
        raise ProtobufError("a Kubernetes protobuf body must start with the k8s\\0 magic")
    unknown = decode_message("Unknown", body[len(MAGIC):])
    meta = unknown.get("typeMeta") or {}
    if not isinstance(meta, dict):
        raise ProtobufError("malformed runtime.Unknown envelope")
    kind = meta.get("kind", "")
    if kind not in SCHEMAS:
        raise ProtobufError(f"the sandbox API cannot decode {kind or 'this kind'} from protobuf")
    raw = base64.b64decode(unknown.get("raw", ""))
    obj = decode_message(kind, raw)
    return {"apiVersion": meta.get("apiVersion", ""), "kind": kind, **obj}
