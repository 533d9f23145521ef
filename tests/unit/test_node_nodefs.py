"""A node's filesystem, pure parts: resolving node paths through the holder's root, the per-node paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.config import SandboxConfig
from sandbox.node import layout, nodefs


@pytest.fixture
def root(tmp_path: Path) -> str:
    """A node's root as /proc/<holder>/root shows it: Debian's absolute /var/run -> /run, and more."""
    for d in ("run/ambit", "etc/cni/net.d", "usr/lib/cni", "var"):
        (tmp_path / d).mkdir(parents=True)
    os.symlink("/run", tmp_path / "var" / "run")  # absolute: must stay inside the node's root
    os.symlink("../usr/lib", tmp_path / "lib")
    os.symlink("/loop-b", tmp_path / "loop-a")
    os.symlink("/loop-a", tmp_path / "loop-b")
    return str(tmp_path)


@pytest.mark.parametrize("path, expected", [
    ("/var/run/ambit", "/run/ambit"),
    ("/var/run/ambit/cni.sock", "/run/ambit/cni.sock"),
    ("/etc/cni/net.d/", "/etc/cni/net.d"),
    ("/lib/cni", "/usr/lib/cni"),
    ("/var/run/../etc/./cni", "/etc/cni"),
    ("/../../etc", "/etc"),
    ("/opt/cni/bin", "/opt/cni/bin"),
    ("/var/run/missing/deeper", "/run/missing/deeper"),
    ("/", ""),
], ids=["absolute-link", "below-link", "trailing-slash", "relative-link", "dotdot-after-link",
        "dotdot-above-root", "missing", "missing-below-link", "root"])
def test_node_paths_resolve_inside_the_node_root(root: str, path: str, expected: str):
    assert nodefs.resolve_in(root, path) == root + expected


def test_a_symlink_loop_is_an_error(root: str):
    with pytest.raises(OSError, match="too many symbolic links"):
        nodefs.resolve_in(root, "/loop-a/x")


def test_node_local_paths_are_the_dirs_the_sandbox_already_uses():
    cfg = SandboxConfig(name="nfst", index=1, base_dir=Path("/s"))
    assert dict((path, host) for host, path in layout.node_local_mounts(cfg, "node-2")) == {
        "/etc/cni/net.d": cfg.cni_conf_dir("node-2"),
        "/opt/cni/bin": cfg.cni_bin_dir("node-2"),
        "/run/ambit": layout.agent_run_dir(cfg, "node-2"),
    }


def test_the_holder_runs_in_the_node_netns_with_one_bind_per_node_local_path():
    cfg = SandboxConfig(name="nfst", index=1, base_dir=Path("/s"))
    argv = nodefs.NodeFs(cfg, "node-1").holder_argv()
    assert argv[:3] == ["nsenter", "--net=/run/netns/nfst-node-1", "--"]
    assert argv[argv.index("-m") + 1] == "sandbox.node.nodefs"
    binds = [tuple(argv[i + 1:i + 3]) for i, a in enumerate(argv) if a == "--bind"]
    assert binds == [("/s/nfst/nodes/node-1/cni/net.d", "/etc/cni/net.d"),
                     ("/s/nfst/nodes/node-1/cni/bin", "/opt/cni/bin"),
                     ("/s/nfst/nodes/node-1/ambit", "/run/ambit")]
