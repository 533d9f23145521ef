"""Pod volumes as the kubelet reads them: spec -> plan -> files. Pure functions, no I/O.

- ``parse_volumes(pod)``: ``spec.volumes`` -> ``{name: Volume}``. Supported: ``projected``
  (``serviceAccountToken``, ``configMap``, ``secret`` sources), ``configMap``, ``secret``,
  ``emptyDir``, ``hostPath`` (``HostPath``: its ``path`` may hold ``$(NODE_NAME)``, which
  ``HostPath.on_node`` expands, a sandbox-only extension); anything else, or a malformed field,
  is a ``VolumeError`` that names the volume, the field and what to write instead.
- ``container_mounts(container, volumes)``: a container's ``volumeMounts`` -> ``[Mount]``;
  ``subPath``, ``mountPropagation: Bidirectional``, unknown volumes and bad paths are
  ``ContainerError``s (CreateContainerConfigError).
- ``render(volume, objects=..., tokens=...)``: the files a volume holds, given the ConfigMaps and
  Secrets it names (``None`` when absent) and the tokens it asked for -> ``{relative path: File}``.
  A missing non-optional ConfigMap/Secret or key is a ``SourceError``: the kubelet retries it.

Paths, modes, defaults and messages follow the Kubernetes API and kubelet (``defaultMode`` 0644,
``expirationSeconds`` 3600 and at least 600, configMap/secret/projected always read-only, the
hostPath types). The hostPath type check itself needs the filesystem: ``podvolumes`` does it.
"""
from __future__ import annotations

import base64
import binascii
import posixpath
from dataclasses import dataclass
from typing import Mapping, Union

from sandbox.node.errors import ContainerError, NodeError

DEFAULT_MODE = 0o644
TOKEN_SECONDS_DEFAULT = 3600
TOKEN_SECONDS_MIN = 600
TOKEN_SECONDS_MAX = 2**32
SUPPORTED = "projected, configMap, secret, emptyDir, hostPath"
SUPPORTED_SOURCES = "serviceAccountToken, configMap, secret"
# volume types of the Kubernetes API this kubelet does not implement (named in the error)
_KNOWN_UNSUPPORTED = (
    "persistentVolumeClaim", "downwardAPI", "nfs", "iscsi", "csi", "ephemeral", "image",
    "gitRepo", "awsElasticBlockStore", "gcePersistentDisk", "azureDisk", "azureFile", "cephfs", "rbd",
    "cinder", "fc", "flexVolume", "flocker", "glusterfs", "photonPersistentDisk", "portworxVolume",
    "quobyte", "scaleIO", "storageos", "vsphereVolume",
)
_PLUGIN_DIRS = {"projected": "kubernetes.io~projected", "configMap": "kubernetes.io~configmap",
                "secret": "kubernetes.io~secret", "emptyDir": "kubernetes.io~empty-dir",
                "hostPath": "kubernetes.io~host-path"}
HOST_PATH_TYPES = ("", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice",
                   "BlockDevice")
NODE_NAME_REF = "$(NODE_NAME)"
"""expanded to the node's name in a hostPath's path: sandbox nodes share one filesystem"""
MOUNT_PROPAGATIONS = ("None", "HostToContainer")


class VolumeError(NodeError):
    """A volume in the pod spec cannot be set up as written (fix the spec)."""


class SourceError(VolumeError):
    """A ConfigMap, Secret or key a volume needs is missing (or unreadable) right now; retried."""


class HostPathError(VolumeError):
    """A hostPath is not (and could not be made) what its ``type`` asks for right now; retried."""


# ---- the plan -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyToPath:
    key: str
    path: str
    mode: int | None = None


@dataclass(frozen=True)
class ObjectSource:
    """Files from a ConfigMap (``kind='configmap'``) or a Secret (``kind='secret'``)."""

    kind: str
    name: str
    items: tuple[KeyToPath, ...] | None = None
    """``None``: every key, as a file named after it"""
    optional: bool = False

    @property
    def ref(self) -> tuple[str, str]:
        return (self.kind, self.name)

    def describe(self) -> str:
        return f'{self.kind} "{self.name}"'


@dataclass(frozen=True)
class TokenSource:
    """A service-account token (TokenRequest) bound to the pod."""

    audience: str
    """'' asks for the API server's own audiences"""
    expiration_seconds: int
    path: str

    @property
    def key(self) -> tuple[str, int]:
        """Tokens with the same audience and lifetime are requested once per pod."""
        return (self.audience, self.expiration_seconds)


Source = Union[ObjectSource, TokenSource]


@dataclass(frozen=True)
class HostPath:
    """A path on the node, with the check (and creation) its ``type`` asks for before mounting."""

    path: str
    """absolute, as written; may hold ``$(NODE_NAME)``"""
    type: str = ""
    """one of ``HOST_PATH_TYPES``; '' checks nothing"""

    def on_node(self, node: str) -> str:
        """The path on ``node``: ``$(NODE_NAME)`` replaced by its name (a real kubelet would not)."""
        return self.path.replace(NODE_NAME_REF, node)


@dataclass(frozen=True)
class Volume:
    name: str
    type: str
    """one of projected, configMap, secret, emptyDir, hostPath (as spelled in the pod spec)"""
    sources: tuple[Source, ...] = ()
    default_mode: int = DEFAULT_MODE
    host_path: HostPath | None = None
    """set for (only for) hostPath volumes"""

    @property
    def plugin_dir(self) -> str:
        """The kubelet's directory name for this volume type (``kubernetes.io~configmap``...)."""
        return _PLUGIN_DIRS[self.type]

    @property
    def always_read_only(self) -> bool:
        """API-data volumes are mounted read-only whatever ``readOnly`` says (since Kubernetes 1.10)."""
        return self.type not in ("emptyDir", "hostPath")

    @property
    def objects(self) -> tuple[ObjectSource, ...]:
        return tuple(s for s in self.sources if isinstance(s, ObjectSource))

    @property
    def tokens(self) -> tuple[TokenSource, ...]:
        return tuple(s for s in self.sources if isinstance(s, TokenSource))


@dataclass(frozen=True)
class Mount:
    volume: str
    path: str
    """absolute, normalised mountPath inside the container"""
    read_only: bool


@dataclass(frozen=True)
class File:
    data: bytes
    mode: int


# ---- parsing ------------------------------------------------------------------------------------
def _relative_path(value: object, *, where: str) -> str:
    """Kubernetes' validateLocalDescendingPath: relative, no '..' element, not starting with '..'."""
    if not isinstance(value, str) or not value:
        raise VolumeError(f"{where}: a path is required (a file name relative to the mount, e.g. 'token')")
    if value.startswith("/"):
        raise VolumeError(f"{where}: path {value!r} must be relative to the volume, e.g. {value.lstrip('/')!r}")
    parts = value.split("/")
    if ".." in parts or value.startswith(".."):
        raise VolumeError(f"{where}: path {value!r} must not contain '..' or start with '..'")
    if any(p in ("", ".") for p in parts):
        raise VolumeError(f"{where}: path {value!r} has an empty or '.' element; write it as a plain "
                          "relative path like 'dir/file'")
    return value


def _mode(value: object, *, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise VolumeError(f"{where}: mode {value!r} must be a number between 0 and 0777 (octal), "
                          "e.g. 420 for 0644")
    return value


def _items(raw: object, *, where: str) -> tuple[KeyToPath, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise VolumeError(f"{where}.items: must be a list of {{key, path}}")
    out = []
    for i, item in enumerate(raw):
        at = f"{where}.items[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not item["key"]:
            raise VolumeError(f"{at}: a key is required (the ConfigMap/Secret key to project)")
        out.append(KeyToPath(key=item["key"], path=_relative_path(item.get("path"), where=at),
                             mode=_mode(item.get("mode"), where=at)))
    return tuple(out)


def _object_source(kind: str, raw: object, *, where: str, name_field: str) -> ObjectSource:
    if not isinstance(raw, dict):
        raise VolumeError(f"{where}: must be an object")
    name = raw.get(name_field)
    if not isinstance(name, str) or not name:
        raise VolumeError(f"{where}: {name_field} is required (the {kind} to read)")
    return ObjectSource(kind=kind, name=name, items=_items(raw.get("items"), where=where),
                        optional=bool(raw.get("optional")))


def _token_source(raw: object, *, where: str) -> TokenSource:
    if not isinstance(raw, dict):
        raise VolumeError(f"{where}: must be an object")
    audience = raw.get("audience") or ""
    if not isinstance(audience, str):
        raise VolumeError(f"{where}.audience: must be a string")
    seconds = raw.get("expirationSeconds")
    seconds = TOKEN_SECONDS_DEFAULT if seconds is None else seconds
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise VolumeError(f"{where}.expirationSeconds: {seconds!r} must be a whole number of seconds")
    if seconds < TOKEN_SECONDS_MIN:
        raise VolumeError(f"{where}.expirationSeconds: {seconds} is less than the minimum of "
                          f"{TOKEN_SECONDS_MIN} (10 minutes)")
    if seconds > TOKEN_SECONDS_MAX:
        raise VolumeError(f"{where}.expirationSeconds: {seconds} is more than the maximum of 2^32")
    return TokenSource(audience=audience, expiration_seconds=seconds,
                       path=_relative_path(raw.get("path"), where=where))


def _projected(raw: object, *, where: str) -> tuple[tuple[Source, ...], int | None]:
    if not isinstance(raw, dict):
        raise VolumeError(f"{where}: must be an object with sources")
    sources_raw = raw.get("sources") or []
    if not isinstance(sources_raw, list):
        raise VolumeError(f"{where}.sources: must be a list")
    sources: list[Source] = []
    for i, src in enumerate(sources_raw):
        at = f"{where}.sources[{i}]"
        kinds = sorted(k for k, v in (src or {}).items() if v is not None) if isinstance(src, dict) else []
        if len(kinds) != 1:
            found = " and ".join(kinds) or "none"
            raise VolumeError(f"{at}: exactly one source type is required, found {found} "
                              f"(supported: {SUPPORTED_SOURCES})")
        kind = kinds[0]
        if kind == "serviceAccountToken":
            sources.append(_token_source(src[kind], where=f"{at}.serviceAccountToken"))
        elif kind == "configMap":
            sources.append(_object_source("configmap", src[kind], where=f"{at}.configMap", name_field="name"))
        elif kind == "secret":
            sources.append(_object_source("secret", src[kind], where=f"{at}.secret", name_field="name"))
        else:
            raise VolumeError(f"{at}: {kind} sources are not supported by the sandbox kubelet "
                              f"(supported: {SUPPORTED_SOURCES})")
    _check_static_paths(sources, where=where)
    return tuple(sources), _mode(raw.get("defaultMode"), where=where)


def _check_static_paths(sources: list[Source], *, where: str) -> None:
    """Paths known from the spec alone (token paths, items) must be distinct, as the API checks."""
    seen: set[str] = set()
    for s in sources:
        paths = [s.path] if isinstance(s, TokenSource) else [i.path for i in s.items or ()]
        for p in paths:
            if p in seen:
                raise VolumeError(f"{where}: conflicting duplicate path {p!r}; give each file its own path")
            seen.add(p)


def _host_path(raw: object, *, where: str) -> HostPath:
    if not isinstance(raw, dict):
        raise VolumeError(f"{where}: must be an object with a path, e.g. hostPath: {{path: /run/netns}}")
    path = raw.get("path")
    if not isinstance(path, str) or not path:
        raise VolumeError(f"{where}.path: a path on the node is required, e.g. /var/run/netns")
    if not path.startswith("/"):
        raise VolumeError(f"{where}.path: {path!r} must be absolute, e.g. {'/' + path!r}")
    if ".." in path.split("/"):
        raise VolumeError(f"{where}.path: {path!r} must not contain '..'")
    htype = raw.get("type") or ""
    if htype not in HOST_PATH_TYPES:
        names = ", ".join(t or '""' for t in HOST_PATH_TYPES)
        raise VolumeError(f"{where}.type: {htype!r} is not a hostPath type; use one of {names}")
    return HostPath(path=path, type=htype)


def parse_volume(raw: object, *, index: int) -> Volume:
    where = f"spec.volumes[{index}]"
    if not isinstance(raw, dict):
        raise VolumeError(f"{where}: must be an object with a name and a volume type")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise VolumeError(f"{where}: a volume needs a name")
    where = f'volume "{name}"'
    types = sorted(k for k, v in raw.items() if k != "name" and v is not None)
    if len(types) != 1:
        found = " and ".join(types) or "none"
        raise VolumeError(f"{where}: exactly one volume type is required, found {found} (supported: {SUPPORTED})")
    vtype = types[0]
    body = raw[vtype]
    if vtype == "emptyDir":
        if not isinstance(body, dict):
            raise VolumeError(f"{where}: emptyDir must be an object, e.g. emptyDir: {{}}")
        medium = body.get("medium") or ""
        if medium not in ("", "Memory"):
            raise VolumeError(f"{where}: emptyDir medium {medium!r} is not supported; use '' or 'Memory'")
        return Volume(name=name, type=vtype)
    if vtype == "configMap":
        mode = _mode((body or {}).get("defaultMode") if isinstance(body, dict) else None, where=f"{where}.configMap")
        src = _object_source("configmap", body, where=f"{where}.configMap", name_field="name")
        _check_static_paths([src], where=f"{where}.configMap")
        return Volume(name=name, type=vtype, sources=(src,), default_mode=DEFAULT_MODE if mode is None else mode)
    if vtype == "secret":
        mode = _mode((body or {}).get("defaultMode") if isinstance(body, dict) else None, where=f"{where}.secret")
        src = _object_source("secret", body, where=f"{where}.secret", name_field="secretName")
        _check_static_paths([src], where=f"{where}.secret")
        return Volume(name=name, type=vtype, sources=(src,), default_mode=DEFAULT_MODE if mode is None else mode)
    if vtype == "hostPath":
        return Volume(name=name, type=vtype, host_path=_host_path(body, where=f"{where}.hostPath"))
    if vtype == "projected":
        sources, mode = _projected(body, where=f"{where}.projected")
        return Volume(name=name, type=vtype, sources=sources, default_mode=DEFAULT_MODE if mode is None else mode)
    what = f"{vtype} volumes are" if vtype in _KNOWN_UNSUPPORTED else f"volume type {vtype!r} is"
    raise VolumeError(f"{where}: {what} not supported by the sandbox kubelet; use one of {SUPPORTED}")


def parse_volumes(pod: dict) -> dict[str, Volume]:
    """Every volume of the pod by name, in spec order."""
    raw = (pod.get("spec") or {}).get("volumes") or []
    if not isinstance(raw, list):
        raise VolumeError("spec.volumes: must be a list")
    out: dict[str, Volume] = {}
    for i, item in enumerate(raw):
        vol = parse_volume(item, index=i)
        if vol.name in out:
            raise VolumeError(f'spec.volumes[{i}]: duplicate volume name "{vol.name}"; volume names must be unique')
        out[vol.name] = vol
    return out


def container_mounts(container: dict, volumes: Mapping[str, Volume]) -> list[Mount]:
    """A container's ``volumeMounts``, checked against the pod's volumes, in spec order."""
    cname = container.get("name") or "?"
    raw = container.get("volumeMounts") or []
    if not isinstance(raw, list):
        raise ContainerError(f'container "{cname}": volumeMounts must be a list')
    mounts: list[Mount] = []
    seen: dict[str, str] = {}
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise ContainerError(f'container "{cname}": volumeMounts[{i}] must be an object')
        vname = m.get("name")
        where = f'container "{cname}": volumeMount "{vname}"'
        if vname not in volumes:
            known = ", ".join(volumes) or "none"
            raise ContainerError(f"{where} refers to no volume in spec.volumes (volumes: {known})")
        for field in ("subPath", "subPathExpr"):
            if m.get(field):
                raise ContainerError(f"{where} uses {field} {m[field]!r}, which the sandbox kubelet does not "
                                     "support; mount the whole volume and read the file inside it "
                                     "(items: can choose and rename keys)")
        path = m.get("mountPath")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ContainerError(f"{where} needs an absolute mountPath, got {path!r}")
        path = posixpath.normpath(path)
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        if path == "/":
            raise ContainerError(f"{where}: mountPath / would hide the whole filesystem; mount it in a subdirectory")
        if path in seen:
            raise ContainerError(f'{where}: mountPath {path} is already used by volumeMount "{seen[path]}"')
        propagation = m.get("mountPropagation")
        if propagation == "Bidirectional":
            raise ContainerError(f"{where}: mountPropagation Bidirectional is not supported; "
                                 "leave it unset (HostToContainer is what the sandbox gives)")
        if propagation is not None and propagation not in MOUNT_PROPAGATIONS:
            raise ContainerError(f"{where}: mountPropagation {propagation!r} is not valid; use None or "
                                 "HostToContainer (or leave it unset)")
        seen[path] = vname
        read_only = bool(m.get("readOnly")) or volumes[vname].always_read_only
        mounts.append(Mount(volume=vname, path=path, read_only=read_only))
    return mounts


# ---- rendering ------------------------------------------------------------------------------------
def object_data(kind: str, obj: dict) -> dict[str, bytes]:
    """The keys of a ConfigMap (``data`` as UTF-8, ``binaryData`` base64) or Secret (``data`` base64)."""
    name = (obj.get("metadata") or {}).get("name") or "?"
    out: dict[str, bytes] = {}
    encoded = [("binaryData", obj.get("binaryData") or {})] if kind == "configmap" else []
    if kind == "configmap":
        out.update({k: str(v).encode() for k, v in (obj.get("data") or {}).items()})
    else:
        encoded.append(("data", obj.get("data") or {}))
    for field, values in encoded:
        for k, v in values.items():
            try:
                out[k] = base64.b64decode(v or "", validate=True)
            except (binascii.Error, TypeError, ValueError) as exc:
                raise SourceError(f'{kind} "{name}": {field}[{k!r}] is not valid base64 ({exc})') from exc
    return out


def _object_files(src: ObjectSource, obj: dict, *, mode: int) -> dict[str, File]:
    data = object_data(src.kind, obj)
    if src.items is None:
        for key in data:
            _relative_path(key, where=f"{src.describe()} key")
        return {key: File(value, mode) for key, value in data.items()}
    files = {}
    for item in src.items:
        if item.key not in data:
            if src.optional:
                continue
            what = "config" if src.kind == "configmap" else "secret"
            raise SourceError(f"{src.kind} references non-existent {what} key: {item.key} "
                              f'({src.describe()} has {", ".join(sorted(data)) or "no keys"})')
        files[item.path] = File(data[item.key], mode if item.mode is None else item.mode)
    return files


def render(volume: Volume, *, objects: Mapping[tuple[str, str], dict | None],
           tokens: Mapping[tuple[str, int], str]) -> dict[str, File]:
    """The files of ``volume``. Later projected sources overwrite earlier ones on the same path,
    as the kubelet does. ``objects`` maps ``(kind, name)`` to the object or ``None`` (not found);
    ``tokens`` maps ``TokenSource.key`` to the token."""
    files: dict[str, File] = {}
    for src in volume.sources:
        if isinstance(src, TokenSource):
            token = tokens.get(src.key)
            if token is None:
                raise SourceError(f"BUG: no token was requested for audience {src.audience!r}")
            files[src.path] = File(token.encode(), volume.default_mode)
            continue
        obj = objects.get(src.ref)
        if obj is None:
            if src.optional:
                continue
            raise SourceError(f"{src.describe()} not found")
        files.update(_object_files(src, obj, mode=volume.default_mode))
    _check_tree(files, volume=volume.name)
    return files


def _check_tree(files: Mapping[str, File], *, volume: str) -> None:
    """No file may also be a directory of another ('a' and 'a/b')."""
    dirs = {posixpath.dirname(p) for p in files}
    parents = set()
    for d in dirs:
        while d:
            parents.add(d)
            d = posixpath.dirname(d)
    clash = sorted(parents & set(files))
    if clash:
        raise SourceError(f'volume "{volume}": {clash[0]!r} is both a file and a directory; '
                          "give the files distinct paths")
