"""The sandbox's one settings tree: names, addresses, ports and paths, derived from two knobs.

Every name the sandbox creates on the machine (network namespaces, links, files, processes)
starts with ``SandboxConfig.name`` so ``ambit down`` can find and remove all of it, even after a
crash. ``index`` picks the address block, so a test sandbox (``AMBIT_SANDBOX=ambt1``) can run
beside the demo sandbox (``ambit``) without clashing.

Addresses (index 0):
- underlay bridge ``ambit0`` on the host: 10.200.0.1/24; node i: 10.200.0.(10+i)
- pod CIDR of node i: 10.210.i.0/24 (ptp plugin, gateway = node side of each veth)
- service CIDR: 10.220.0.0/16 (ClusterIPs allocated by the API server)
- API server: https://10.200.0.1:6443 (nodes) and https://127.0.0.1:6443 (kubectl on the host)
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

_NAME_RE = re.compile(r"^[a-z][a-z0-9]{1,5}$")


class ConfigError(ValueError):
    """A setting has a value the sandbox cannot use."""


@dataclass(frozen=True)
class SandboxConfig:
    name: str = "ambit"
    """prefix of every namespace, link, file and process the sandbox makes (2-6 chars, [a-z0-9])"""
    index: int = 0
    """0-9: selects the address block and API port so two sandboxes can coexist"""
    nodes: int = 2
    """number of netns nodes `ambit up` creates"""
    base_dir: Path = Path("/var/lib/ambit-sandbox")
    """parent of the per-sandbox state directory (SQLite store, PKI, logs, pid files)"""
    trust_domain: str = "cluster.local"
    """SPIFFE trust domain and cluster DNS suffix"""

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ConfigError(
                f"AMBIT_SANDBOX={self.name!r} is not a valid sandbox name; "
                "use 2-6 lowercase letters/digits starting with a letter, e.g. 'ambit'"
            )
        if not 0 <= self.index <= 9:
            raise ConfigError(f"AMBIT_SANDBOX_INDEX={self.index!r} must be between 0 and 9")
        if not 1 <= self.nodes <= 9:
            raise ConfigError(f"--nodes {self.nodes} must be between 1 and 9")

    # ---- paths -------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.base_dir / self.name

    @property
    def db_path(self) -> Path:
        return self.state_dir / "api.db"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def values_path(self) -> Path:
        """The values Ambit's chart is installed with on this sandbox (``ambit sandbox values``)."""
        return self.state_dir / "ambit-values.yaml"

    @property
    def kubeconfig_path(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pid_dir(self) -> Path:
        return self.state_dir / "pids"

    def node_dir(self, node: str) -> Path:
        """per-node files: CNI config dir, CNI state (host-local IPAM), pod dirs"""
        return self.state_dir / "nodes" / node

    def cni_conf_dir(self, node: str) -> Path:
        return self.node_dir(node) / "cni" / "net.d"

    def cni_bin_dir(self, node: str) -> Path:
        """where ambit-cni is installed for a node; CNI_PATH is this dir, then the reference plugins"""
        return self.node_dir(node) / "cni" / "bin"

    # ---- names -------------------------------------------------------------------------
    @property
    def bridge(self) -> str:
        return f"{self.name}0"

    def node_name(self, i: int) -> str:
        return f"node-{i}"

    def node_netns(self, node: str) -> str:
        return f"{self.name}-{node}"

    def node_host_veth(self, i: int) -> str:
        return f"{self.name}-n{i}"

    def pod_netns(self, uid: str) -> str:
        return f"{self.name}-pod-{uid.replace('-', '')[:12]}"

    # ---- addresses ---------------------------------------------------------------------
    @property
    def underlay(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.{200 + self.index}.0.0/24")

    @property
    def host_ip(self) -> str:
        return f"10.{200 + self.index}.0.1"

    def node_ip(self, i: int) -> str:
        return f"10.{200 + self.index}.0.{10 + i}"

    def pod_cidr(self, i: int) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.{210 + self.index}.{i}.0/24")

    @property
    def service_cidr(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.{220 + self.index}.0.0/16")

    @property
    def api_port(self) -> int:
        return 6443 + self.index

    @property
    def api_url_host(self) -> str:
        """the API as seen from the host (kubectl, tests)"""
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def api_url_nodes(self) -> str:
        """the API as seen from inside node network namespaces (kubelets, node agents)"""
        return f"https://{self.host_ip}:{self.api_port}"

    @classmethod
    def from_env(cls, *, nodes: int | None = None) -> "SandboxConfig":
        """The one place the sandbox reads its environment."""
        name = os.environ.get("AMBIT_SANDBOX", "ambit")
        raw_index = os.environ.get("AMBIT_SANDBOX_INDEX", "0")
        try:
            index = int(raw_index)
        except ValueError:
            raise ConfigError(f"AMBIT_SANDBOX_INDEX={raw_index!r} must be an integer 0-9") from None
        base = Path(os.environ.get("AMBIT_SANDBOX_DIR", "/var/lib/ambit-sandbox"))
        kw = {"name": name, "index": index, "base_dir": base}
        if nodes is not None:
            kw["nodes"] = nodes
        return cls(**kw)
