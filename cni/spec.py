"""The CNI side of the plugin, pure: stdin config, ``CNI_*`` environment, results, error codes.

CNI spec 1.0.0 (https://www.cni.dev/docs/spec/). The runtime runs the plugin once per
operation with the operation in ``CNI_COMMAND``, the container in ``CNI_CONTAINERID``,
``CNI_NETNS`` and ``CNI_IFNAME``, Kubernetes' pod identity in ``CNI_ARGS``, and the network
configuration as JSON on stdin. In a chain the runtime adds ``name``, ``cniVersion`` and the
previous plugin's result (``prevResult``) to our entry of the conflist.

Only the standard library, and only modules ``json`` pulls in anyway: this runs per pod.
"""
from __future__ import annotations

import json
from collections import namedtuple

from cni.errors import CniError

PLUGIN_TYPE = "ambit-cni"
CURRENT_VERSION = "1.0.0"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
_CHECK_SINCE = (0, 4, 0)  # CHECK exists from cniVersion 0.4.0 on

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")

# Error codes, CNI spec 1.0.0 "Error codes" (1-99 reserved by the spec).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
# Plugin-specific codes (>= 100).
AGENT_FAILED = 100
"""the node agent answered ``error``: it could not set the pod up (details carry its message)"""
AGENT_PROTOCOL = 101
"""the node agent's answer was not understood (version skew between plugin and agent?)"""

# Plugin config keys and their defaults (documented in docs/cni.md).
DEFAULT_AGENT_SOCKET = "/var/run/ambit/cni.sock"
DEFAULT_AGENT_TIMEOUT = 10.0
MAX_AGENT_TIMEOUT = 300.0
DEFAULT_FAIL_CLOSED = True
DEFAULT_EXCLUDE_NAMESPACES = ("kube-system",)

_CONTAINER_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class PluginConfig(
    namedtuple(
        "PluginConfig",
        "cni_version name agent_socket agent_timeout fail_closed exclude_namespaces prev_result",
    )
):
    """Our entry of the conflist, as the runtime hands it to us on stdin."""

    __slots__ = ()


class Invocation(namedtuple("Invocation", "command container_id netns ifname args")):
    """The ``CNI_*`` environment of one run; ``args`` is ``CNI_ARGS`` as a dict."""

    __slots__ = ()


class PodRef(namedtuple("PodRef", "namespace name uid")):
    """The Kubernetes pod a sandbox belongs to (from ``CNI_ARGS``); ``uid`` may be empty."""

    __slots__ = ()


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


# ---- environment ---------------------------------------------------------------------------
def parse_env(env) -> Invocation:
    """Read and check the ``CNI_*`` variables for the command named in ``CNI_COMMAND``.

    ``CNI_PATH`` is not required: this plugin never executes other plugins.
    """
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(INVALID_ENV, "CNI_COMMAND is not set", details="the runtime must set CNI_COMMAND to ADD, DEL, CHECK or VERSION")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"unknown CNI_COMMAND {command!r}", details="expected one of ADD, DEL, CHECK, VERSION")
    if command == "VERSION":
        return Invocation(command, "", "", "", {})
    container_id = env.get("CNI_CONTAINERID", "")
    if not container_id:
        raise CniError(INVALID_ENV, f"CNI_CONTAINERID is not set for {command}", details="the runtime must name the container")
    bad = sorted(set(container_id) - _CONTAINER_ID_CHARS)
    if bad:
        raise CniError(
            INVALID_ENV,
            f"CNI_CONTAINERID {container_id!r} contains invalid characters {''.join(bad)!r}",
            details="a container id may contain only letters, digits, '_', '.' and '-'",
        )
    netns = env.get("CNI_NETNS", "")
    if command != "DEL" and not netns:  # DEL may come after the netns is gone
        raise CniError(INVALID_ENV, f"CNI_NETNS is not set for {command}", details="the runtime must pass the pod's netns path")
    ifname = env.get("CNI_IFNAME", "")
    if not ifname:
        raise CniError(INVALID_ENV, f"CNI_IFNAME is not set for {command}", details="the runtime must name the pod's interface")
    return Invocation(command, container_id, netns, ifname, parse_cni_args(env.get("CNI_ARGS", "")))


def parse_cni_args(raw: str) -> dict[str, str]:
    """``CNI_ARGS`` is ``K=V;K=V``; Kubernetes puts ``K8S_POD_NAMESPACE``/``NAME``/``UID`` there."""
    args: dict[str, str] = {}
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS has an invalid pair {pair!r}", details="CNI_ARGS must be 'KEY=VALUE;KEY=VALUE'")
        args[key] = value
    return args


def pod_ref(args: dict[str, str]) -> PodRef | None:
    """The pod the sandbox belongs to, or None when the runtime is not Kubernetes."""
    namespace = args.get("K8S_POD_NAMESPACE", "")
    name = args.get("K8S_POD_NAME", "")
    if not namespace or not name:
        return None
    return PodRef(namespace, name, args.get("K8S_POD_UID", ""))


# ---- config on stdin -----------------------------------------------------------------------
def peek_version(stdin: bytes) -> str:
    """The config's cniVersion if it is readable and supported, else ours: for error results."""
    try:
        doc = json.loads(stdin)
    except (ValueError, RecursionError):
        return CURRENT_VERSION
    version = doc.get("cniVersion") if isinstance(doc, dict) else None
    return version if version in SUPPORTED_VERSIONS else CURRENT_VERSION


def parse_config(stdin: bytes, *, command: str) -> PluginConfig:
    """Decode and check the network configuration the runtime passed on stdin."""
    try:
        doc = json.loads(stdin)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CniError(DECODING_FAILURE, "the network configuration on stdin is not valid JSON", details=str(exc)) from None
    if not isinstance(doc, dict):
        raise CniError(DECODING_FAILURE, "the network configuration on stdin is not a JSON object", details=f"got {type(doc).__name__}")
    for key in ("cniVersion", "name", "type"):
        if key not in doc:
            raise CniError(INVALID_CONFIG, f"the network configuration has no {key!r}", details="the runtime must pass cniVersion, name and type")
        if not isinstance(doc[key], str) or not doc[key]:
            raise CniError(INVALID_CONFIG, f"{key!r} must be a non-empty string", details=f"got {doc[key]!r}")
    version = doc["cniVersion"]
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"cniVersion {version!r} is not supported by ambit-cni",
            details=f"supported versions: {', '.join(SUPPORTED_VERSIONS)}",
        )
    if command == "CHECK" and version_tuple(version) < _CHECK_SINCE:
        raise CniError(INCOMPATIBLE_VERSION, f"CHECK is not defined for cniVersion {version}", details="use cniVersion 0.4.0 or later")

    socket_path = doc.get("agentSocket", DEFAULT_AGENT_SOCKET)
    if not isinstance(socket_path, str) or not socket_path.startswith("/"):
        raise CniError(INVALID_CONFIG, "'agentSocket' must be an absolute path", details=f"got {socket_path!r}")
    timeout = doc.get("agentTimeoutSeconds", DEFAULT_AGENT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_AGENT_TIMEOUT:
        raise CniError(
            INVALID_CONFIG,
            "'agentTimeoutSeconds' must be a number of seconds in (0, 300]",
            details=f"got {timeout!r}",
        )
    fail_closed = doc.get("failClosed", DEFAULT_FAIL_CLOSED)
    if not isinstance(fail_closed, bool):
        raise CniError(INVALID_CONFIG, "'failClosed' must be true or false", details=f"got {fail_closed!r}")
    exclude = doc.get("excludeNamespaces", list(DEFAULT_EXCLUDE_NAMESPACES))
    if not isinstance(exclude, list) or not all(isinstance(ns, str) and ns for ns in exclude):
        raise CniError(INVALID_CONFIG, "'excludeNamespaces' must be a list of namespace names", details=f"got {exclude!r}")

    prev = doc.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "'prevResult' must be a JSON object", details=f"got {type(prev).__name__}")
    if prev is None and command in ("ADD", "CHECK"):
        raise CniError(
            INVALID_CONFIG,
            f"ambit-cni must be chained after a primary plugin: {command} got no prevResult",
            details="add ambit-cni as the last entry of the primary CNI's .conflist",
        )
    return PluginConfig(version, doc["name"], socket_path, float(timeout), fail_closed, frozenset(exclude), prev)


def sandbox_ips(prev_result: dict | None) -> list[str]:
    """The pod's addresses from ``prevResult.ips`` (without prefix length), skipping host-side
    interfaces; ``[]`` when there is no prevResult."""
    if not prev_result:
        return []
    ips = prev_result.get("ips", [])
    interfaces = prev_result.get("interfaces", [])
    if not isinstance(ips, list) or not isinstance(interfaces, list):
        raise CniError(INVALID_CONFIG, "prevResult 'ips' and 'interfaces' must be lists", details="the previous plugin's result is malformed")
    found: list[str] = []
    for i, entry in enumerate(ips):
        address = entry.get("address") if isinstance(entry, dict) else None
        if not isinstance(address, str) or "/" not in address:
            raise CniError(INVALID_CONFIG, f"prevResult.ips[{i}].address is not an address with a prefix length", details=f"got {entry!r}")
        index = entry.get("interface")
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(interfaces):
            iface = interfaces[index]
            if isinstance(iface, dict) and not iface.get("sandbox"):
                continue  # an address on the host side of the link, not the pod's
        found.append(address.partition("/")[0])
    return found


# ---- output --------------------------------------------------------------------------------
def render_result(prev_result: dict, *, cni_version: str) -> bytes:
    """The chained plugin's result: the previous result unchanged, in the config's cniVersion."""
    result = dict(prev_result)
    result["cniVersion"] = cni_version
    return json.dumps(result).encode() + b"\n"


def render_error(err: CniError, *, cni_version: str) -> bytes:
    doc = {"cniVersion": cni_version, "code": err.code, "msg": err.msg, "details": err.details}
    return json.dumps(doc).encode() + b"\n"


def render_version() -> bytes:
    doc = {"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}
    return json.dumps(doc).encode() + b"\n"
