"""A CNI runtime as container runtimes drive it (CNI spec 1.0.0, libcni semantics).

- config: the lexically first ``*.conf``/``*.conflist``/``*.json`` in the node's config dir,
  re-read on every ADD (Ambit's installer appends itself to the conflist at any time); a single
  ``.conf`` is wrapped into a one-plugin list;
- ADD runs the plugins in order; each gets its config with ``name`` and ``cniVersion`` of the
  list injected, ``runtimeConfig`` for the capabilities it declares, and the previous plugin's
  result as ``prevResult`` (absent for the first); the last result is the list's result;
- the result and the exact config used are cached per (network, container, interface) in
  libcni's ``cniCacheV1`` format, so DEL and CHECK use the same config and the cached result
  as ``prevResult`` even after the conflist changed;
- DEL runs the plugins in reverse order; CHECK in order (skipped when ``disableCheck``);
- a plugin's failure (exit status, CNI error JSON ``code``/``msg``/``details``) is a ``CniError``;
- on a sandbox node (``for_node``) every plugin runs in the node's filesystem (``nodefs``:
  ``nsenter --mount``), where /etc/cni/net.d, /opt/cni/bin and /var/run/ambit are the node's.

The pure parts (config loading, env, stdin, result and error parsing) take no I/O beyond reading
the config files; ``CniRuntime`` executes plugins.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from sandbox.config import SandboxConfig
from sandbox.node import layout, netns
from sandbox.node.errors import CniError, NodeFsError
from sandbox.node.nodefs import NodeFs

log = logging.getLogger(__name__)

SPEC_VERSION = "1.0.0"
NODE_PLUGIN_DIRS = (Path("/opt/cni/bin"), Path("/usr/lib/cni"))
"""CNI_PATH on a sandbox node, in its filesystem: its own /opt/cni/bin (``nodes/<node>/cni/bin``,
where ambit-cni is installed), then Debian's reference plugins"""
CONFIG_EXTENSIONS = (".conf", ".conflist", ".json")
CACHE_KIND = "cniCacheV1"

# CNI spec 1.0.0, "Error": well-known error codes
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_NETWORK_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11


# ---- configuration --------------------------------------------------------------------------
@dataclass(frozen=True)
class NetworkList:
    """A parsed network configuration list; ``raw`` is the exact bytes, cached for DEL."""

    name: str
    cni_version: str
    plugins: tuple[dict, ...]
    raw: bytes
    disable_check: bool = False
    source: str = ""


def parse_network_list(data: bytes, *, source: str = "", single: bool = False) -> NetworkList:
    """Parse a ``.conflist`` (or, with ``single``, a ``.conf`` wrapped into a list as libcni does)."""
    where = source or "network config"
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise CniError(f"{where} is not valid JSON: {exc}", code=ERR_DECODE) from exc
    if not isinstance(doc, dict):
        raise CniError(f"{where} must be a JSON object", code=ERR_INVALID_NETWORK_CONFIG)
    if single:
        if "type" not in doc:
            raise CniError(f"{where} has no \"type\"; a .conf holds one plugin (use .conflist for a list)",
                           code=ERR_INVALID_NETWORK_CONFIG)
        plugin = dict(doc)
        doc = {"cniVersion": plugin.get("cniVersion"), "name": plugin.get("name"),
               "disableCheck": plugin.get("disableCheck", False), "plugins": [plugin]}
        data = json.dumps(doc, separators=(",", ":")).encode()
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(f"{where} has no \"name\"", code=ERR_INVALID_NETWORK_CONFIG)
    version = doc.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(f"{where} has no \"cniVersion\"; add \"cniVersion\": \"{SPEC_VERSION}\"",
                       code=ERR_INVALID_NETWORK_CONFIG)
    plugins = doc.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise CniError(f"{where} has no \"plugins\"", code=ERR_INVALID_NETWORK_CONFIG)
    for n, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str) or not plugin["type"]:
            raise CniError(f"{where}: plugin #{n} has no \"type\"", code=ERR_INVALID_NETWORK_CONFIG)
    return NetworkList(name=name, cni_version=version, plugins=tuple(plugins), raw=bytes(data),
                       disable_check=bool(doc.get("disableCheck", False)), source=source)


def load_network_list(conf_dir: Path) -> NetworkList:
    """The lexically first config file in ``conf_dir`` (containerd's and CRI-O's rule)."""
    try:
        files = sorted(p for p in conf_dir.iterdir() if p.suffix in CONFIG_EXTENSIONS and p.is_file())
    except FileNotFoundError:
        files = []
    if not files:
        raise CniError(f"no network config found in {conf_dir}; "
                       "write one with sandbox.node.cni.default_conflist", code=ERR_INVALID_NETWORK_CONFIG)
    first = files[0]
    return parse_network_list(first.read_bytes(), source=str(first), single=first.suffix != ".conflist")


# ---- what a plugin sees -----------------------------------------------------------------------
@dataclass(frozen=True)
class RuntimeConf:
    """One attachment: which container, which netns, which interface, with which arguments."""

    container_id: str
    netns: str
    """path of the network namespace, e.g. /run/netns/<name> (may be empty for DEL)"""
    ifname: str = "eth0"
    args: tuple[tuple[str, str], ...] = ()
    """CNI_ARGS pairs, in order"""
    capability_args: Mapping[str, Any] = field(default_factory=dict)
    """runtimeConfig values offered to plugins that declare the capability, e.g. portMappings"""


def pod_runtime_conf(*, container_id: str, netns: str, namespace: str, name: str, uid: str,
                     ifname: str = "eth0", port_mappings: Sequence[dict] = ()) -> RuntimeConf:
    """The RuntimeConf the kubelet's CRI runtime builds for a pod sandbox."""
    args = (("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", namespace), ("K8S_POD_NAME", name),
            ("K8S_POD_INFRA_CONTAINER_ID", container_id), ("K8S_POD_UID", uid))
    caps: dict[str, Any] = {}
    if port_mappings:
        caps["portMappings"] = list(port_mappings)
    return RuntimeConf(container_id=container_id, netns=netns, ifname=ifname, args=args, capability_args=caps)


def port_mappings(pod: dict) -> list[dict]:
    """``hostPort`` entries of a pod's containers in the portMappings capability's shape."""
    found = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                m = {"hostPort": int(p["hostPort"]), "containerPort": int(p["containerPort"]),
                     "protocol": (p.get("protocol") or "TCP").lower()}
                if p.get("hostIP"):
                    m["hostIP"] = p["hostIP"]
                found.append(m)
    return found


def plugin_env(command: str, rt: RuntimeConf, *, cni_path: Sequence[Path],
               base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of one plugin invocation: the runtime's own env plus the CNI variables."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("CNI_")}
    env.update(
        CNI_COMMAND=command,
        CNI_CONTAINERID=rt.container_id,
        CNI_NETNS=rt.netns,
        CNI_IFNAME=rt.ifname,
        CNI_PATH=os.pathsep.join(str(p) for p in cni_path),
    )
    if rt.args:
        env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in rt.args)
    return env


def plugin_stdin(net: NetworkList, plugin: dict, *, rt: RuntimeConf, prev_result: dict | None) -> bytes:
    """The plugin's config with the list's name and version, runtimeConfig and prevResult injected."""
    conf = dict(plugin)
    conf["name"] = net.name
    conf["cniVersion"] = net.cni_version
    runtime_config = {}
    for cap, enabled in (plugin.get("capabilities") or {}).items():
        if enabled and cap in rt.capability_args:
            runtime_config[cap] = rt.capability_args[cap]
    if runtime_config:
        conf["runtimeConfig"] = runtime_config
    else:
        conf.pop("runtimeConfig", None)
    if prev_result is not None:
        conf["prevResult"] = prev_result
    else:
        conf.pop("prevResult", None)
    return json.dumps(conf, separators=(",", ":")).encode()


def parse_result(stdout: bytes, *, plugin: str, command: str) -> dict:
    """A successful ADD/CHECK's JSON result (CHECK may print nothing)."""
    text = stdout.strip()
    if not text:
        return {}
    try:
        result = json.loads(text)
    except ValueError as exc:
        raise CniError(f"printed invalid JSON: {text[:200]!r}", code=ERR_DECODE,
                       plugin=plugin, command=command) from exc
    if not isinstance(result, dict):
        raise CniError(f"printed a JSON {type(result).__name__}, expected a result object", code=ERR_DECODE,
                       plugin=plugin, command=command)
    return result


def parse_error(stdout: bytes, stderr: bytes, returncode: int, *, plugin: str, command: str) -> CniError:
    """The CniError for a failed plugin: its error JSON if it printed one, else its stderr."""
    doc = None
    for stream in (stdout, stderr):
        try:
            doc = json.loads(stream.strip() or b"null")
        except ValueError:
            doc = None
        if isinstance(doc, dict) and ("msg" in doc or "code" in doc):
            break
        doc = None
    if doc is not None:
        code = doc.get("code")
        return CniError(str(doc.get("msg") or "failed without a message"),
                        code=code if isinstance(code, int) else None,
                        details=str(doc.get("details") or ""), plugin=plugin, command=command)
    text = (stderr.decode(errors="replace").strip() or stdout.decode(errors="replace").strip()
            or "no output")
    return CniError(f"exited with status {returncode}: {text[-500:]}", plugin=plugin, command=command)


def result_ips(result: dict, *, ifname: str = "eth0") -> list[str]:
    """The addresses (without prefix length) the result assigns to the container's ``ifname``."""
    if "ips" not in result and isinstance(result.get("ip4"), dict):  # 0.1.0/0.2.0 results
        return [ip["ip"].split("/")[0] for ip in (result.get("ip4"), result.get("ip6"))
                if isinstance(ip, dict) and ip.get("ip")]
    interfaces = result.get("interfaces") or []
    chosen, loose = [], []
    for ip in result.get("ips") or []:
        address = str(ip.get("address") or "").split("/")[0]
        if not address:
            continue
        idx = ip.get("interface")
        if isinstance(idx, int) and 0 <= idx < len(interfaces):
            iface = interfaces[idx]
            if iface.get("sandbox") and iface.get("name") == ifname:
                chosen.append(address)
        else:
            loose.append(address)
    return chosen or loose


# ---- the result cache ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheEntry:
    network: NetworkList
    rt: RuntimeConf
    result: dict


def cache_path(cache_dir: Path, *, network: str, container_id: str, ifname: str) -> Path:
    return cache_dir / "results" / f"{network}-{container_id}-{ifname}"


def encode_cache(net: NetworkList, rt: RuntimeConf, result: dict) -> bytes:
    doc = {
        "kind": CACHE_KIND,
        "containerId": rt.container_id,
        "config": base64.b64encode(net.raw).decode(),
        "ifName": rt.ifname,
        "networkName": net.name,
        "netns": rt.netns,
        "cniArgs": [list(kv) for kv in rt.args],
        "capabilityArgs": dict(rt.capability_args),
        "result": result,
    }
    return json.dumps(doc, indent=1).encode()


def decode_cache(data: bytes, *, source: str = "") -> CacheEntry:
    try:
        doc = json.loads(data)
        if doc.get("kind") != CACHE_KIND:
            raise ValueError(f"kind {doc.get('kind')!r}")
        net = parse_network_list(base64.b64decode(doc["config"]), source=f"cached config {source}")
        rt = RuntimeConf(container_id=doc["containerId"], netns=doc.get("netns") or "",
                         ifname=doc["ifName"], args=tuple(tuple(kv) for kv in doc.get("cniArgs") or []),
                         capability_args=doc.get("capabilityArgs") or {})
    except (ValueError, KeyError, TypeError) as exc:
        raise CniError(f"cache file {source} is unreadable ({exc}); delete it to proceed",
                       code=ERR_DECODE) from exc
    return CacheEntry(network=net, rt=rt, result=doc.get("result") or {})


# ---- execution ------------------------------------------------------------------------------------
class NodeView(Protocol):
    """A node's filesystem as the runtime uses it (``nodefs.NodeFs``)."""

    def mntns(self) -> str:
        """the path of its mount namespace (``/proc/<pid>/ns/mnt``)"""
        ...

    def path(self, node_path: str) -> str:
        """where this process reaches ``node_path`` of the node's filesystem"""
        ...


class CniRuntime:
    """Runs a node's CNI chain. With ``node_fs``, plugins run in that node's filesystem
    (``nsenter --mount``) and ``plugin_dirs`` are paths in it. ``exec_netns`` runs plugins inside
    that named network namespace (for callers outside the node; the kubelet already runs in it).
    The config and cache dirs are read and written from here."""

    def __init__(self, *, conf_dir: Path, cache_dir: Path, plugin_dirs: Sequence[Path],
                 node_fs: NodeView | None = None, exec_netns: str | None = None, timeout: float = 60.0) -> None:
        self.conf_dir = conf_dir
        self.cache_dir = cache_dir
        self.plugin_dirs = tuple(plugin_dirs)
        self.node_fs = node_fs
        self.exec_netns = exec_netns
        self.timeout = timeout

    @classmethod
    def for_node(cls, cfg: SandboxConfig, node: str, *, node_fs: NodeView | None = None,
                 exec_netns: str | None = None, timeout: float = 60.0) -> "CniRuntime":
        """The node's runtime: its conflist (``nodes/<node>/cni/net.d``, the node's /etc/cni/net.d),
        plugins run in its filesystem (``nodefs``; ``node_fs`` shares one ``NodeFs``)."""
        return cls(conf_dir=cfg.cni_conf_dir(node), cache_dir=layout.cni_cache_dir(cfg, node),
                   plugin_dirs=NODE_PLUGIN_DIRS, node_fs=node_fs or NodeFs(cfg, node),
                   exec_netns=exec_netns, timeout=timeout)

    # ---- the three operations ----
    def add(self, rt: RuntimeConf) -> dict:
        """ADD through the current config; caches and returns the final result."""
        net = load_network_list(self.conf_dir)
        prev: dict | None = None
        for plugin in net.plugins:
            prev = self._exec("ADD", net, plugin, rt=rt, prev_result=prev)
        result = prev or {}
        self._write_cache(net, rt, result)
        return result

    def check(self, rt: RuntimeConf) -> None:
        """CHECK with the cached config and result; raises CniError if any plugin objects."""
        entry = self.cached(rt.container_id, ifname=rt.ifname)
        if entry is None:
            raise CniError(f"no cached ADD result for container {rt.container_id}; was ADD run?",
                           code=ERR_UNKNOWN_CONTAINER, command="CHECK")
        if entry.network.disable_check:
            return
        for plugin in entry.network.plugins:
            self._exec("CHECK", entry.network, plugin, rt=_with_netns(entry.rt, rt.netns), prev_result=entry.result)

    def delete(self, rt: RuntimeConf) -> None:
        """DEL in reverse order, with the cached config and result when there is one; then drop
        the cache. Without a cache (ADD failed half-way) the current config is used, no prevResult."""
        entry = self.cached(rt.container_id, ifname=rt.ifname)
        if entry is not None:
            net, prev, run_rt = entry.network, entry.result or None, _with_netns(entry.rt, rt.netns)
        else:
            net, prev, run_rt = load_network_list(self.conf_dir), None, rt
        for plugin in reversed(net.plugins):
            self._exec("DEL", net, plugin, rt=run_rt, prev_result=prev)
        if entry is not None:
            cache_path(self.cache_dir, network=net.name, container_id=rt.container_id,
                       ifname=rt.ifname).unlink(missing_ok=True)

    def cached(self, container_id: str, *, ifname: str = "eth0") -> CacheEntry | None:
        """The cached ADD for a container, whatever network it was made with."""
        results = self.cache_dir / "results"
        suffix = f"-{container_id}-{ifname}"
        try:
            names = sorted(p for p in results.iterdir() if p.name.endswith(suffix))
        except FileNotFoundError:
            return None
        if not names:
            return None
        return decode_cache(names[0].read_bytes(), source=str(names[0]))

    # ---- plumbing ----
    def find_plugin(self, kind: str) -> Path:
        if "/" in kind or kind in ("", ".", ".."):
            raise CniError(f"invalid plugin type {kind!r}", code=ERR_INVALID_NETWORK_CONFIG)
        for d in self.plugin_dirs:
            candidate = d / kind
            here = Path(self._node_path(str(candidate), kind=kind)) if self.node_fs else candidate
            if here.is_file() and os.access(here, os.X_OK):
                return candidate
        raise CniError(f"failed to find plugin {kind!r} in path {[str(d) for d in self.plugin_dirs]}",
                       plugin=kind)

    def _node_path(self, path: str, *, kind: str) -> str:
        try:
            return self.node_fs.path(path)
        except NodeFsError as exc:
            raise CniError(str(exc), plugin=kind) from exc

    def _exec(self, command: str, net: NetworkList, plugin: dict, *, rt: RuntimeConf,
              prev_result: dict | None) -> dict:
        kind = plugin["type"]
        binary = self.find_plugin(kind)
        stdin = plugin_stdin(net, plugin, rt=rt, prev_result=prev_result)
        env = plugin_env(command, rt, cni_path=self.plugin_dirs)
        argv = [str(binary)]
        if self.node_fs is not None:
            try:
                mntns = self.node_fs.mntns()
            except NodeFsError as exc:
                raise CniError(str(exc), plugin=kind, command=command) from exc
            net = [f"--net={netns.path(self.exec_netns)}"] if self.exec_netns else []
            argv = ["nsenter", *net, f"--mount={mntns}", "--", *argv]
        elif self.exec_netns:
            argv = ["ip", "netns", "exec", self.exec_netns, *argv]
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, start_new_session=True, close_fds=True)
        try:
            out, err = proc.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise CniError(f"did not finish within {self.timeout:.0f}s", code=ERR_TRY_AGAIN_LATER,
                           plugin=kind, command=command) from None
        log.debug("cni %s %s for %s: exit %s in %.0fms", command, kind, rt.container_id[:12],
                  proc.returncode, (time.monotonic() - started) * 1000)
        if proc.returncode != 0:
            raise parse_error(out, err, proc.returncode, plugin=kind, command=command)
        if command == "DEL":
            return {}
        return parse_result(out, plugin=kind, command=command)

    def _write_cache(self, net: NetworkList, rt: RuntimeConf, result: dict) -> None:
        path = cache_path(self.cache_dir, network=net.name, container_id=rt.container_id, ifname=rt.ifname)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(encode_cache(net, rt, result))
        os.replace(tmp, path)


def _with_netns(rt: RuntimeConf, netns: str) -> RuntimeConf:
    if not netns or netns == rt.netns:
        return rt
    return RuntimeConf(container_id=rt.container_id, netns=netns, ifname=rt.ifname, args=rt.args,
                       capability_args=rt.capability_args)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# ---- the sandbox's default network -----------------------------------------------------------
BASE_PLUGIN_TYPES = ("ptp", "portmap")


def default_network(cfg: SandboxConfig, i: int) -> dict:
    """ptp veths + host-local IPAM over node ``i``'s pod CIDR + hostPort mappings."""
    node = cfg.node_name(i)
    cidr = cfg.pod_cidr(i)
    return {
        "cniVersion": SPEC_VERSION,
        "name": f"{cfg.name}-pods",
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": False,
                "mtu": 1500,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(cidr), "gateway": str(cidr.network_address + 1)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.cni_ipam_dir(cfg, node)),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def conflist_path(cfg: SandboxConfig, node: str) -> Path:
    return cfg.cni_conf_dir(node) / f"10-{cfg.name}.conflist"


def default_conflist(cfg: SandboxConfig, i: int) -> Path:
    """Write node ``i``'s ``10-<name>.conflist``; plugins appended by others (Ambit's CNI plugin)
    are kept after the base ones. Atomic; returns the path."""
    node = cfg.node_name(i)
    path = conflist_path(cfg, node)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg.cni_bin_dir(node).mkdir(parents=True, exist_ok=True)
    layout.cni_ipam_dir(cfg, node).mkdir(parents=True, exist_ok=True)
    doc = default_network(cfg, i)
    try:
        existing = json.loads(path.read_bytes())
        extra = [p for p in existing.get("plugins") or [] if isinstance(p, dict)
                 and p.get("type") not in BASE_PLUGIN_TYPES]
    except (OSError, ValueError, AttributeError):
        extra = []
    doc["plugins"].extend(extra)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path
