"""Each sandbox node's filesystem: a mount namespace of its own, as separate machines have.

Sandbox nodes share the host's filesystem, yet some paths are per machine on a real node
(``layout.NODE_LOCAL_PATHS``: /etc/cni/net.d, /opt/cni/bin, /var/run/ambit). So each node has:

- a mount namespace, a *slave* of the host's: the pod network namespaces the kubelet mounts under
  /run/netns (in the host's namespace) appear in it, and nothing mounted in it reaches the host or
  another node. In it, each node-local path is a bind mount of the node's directory under
  ``<state>/nodes/<node>/``; a mount point the host lacks is made without touching the host (the
  deepest existing ancestor, /run for /run/ambit, is shadowed by a tmpfs holding binds of its
  original entries: ``launch.Mounter``, as for container volumes);
- held by one long-lived process (``python -m sandbox.node.nodefs``), started by ``NodeFs.ensure``
  (the kubelet calls it at start; the pod runtime whenever it needs the namespace), found again
  through ``nodes/<node>/fs/holder.pid`` (pid and start time) after a kubelet restart. It runs in
  the node's network namespace and carries the sandbox's member marker, so ``ambit down`` and
  ``underlay.teardown`` kill it with the rest; the namespace goes with it;
- used by the pod runtime: every container's mount namespace is made as a slave of it
  (``launch --node-mntns``), every CNI plugin runs in it (``nsenter --mount``), and hostPath type
  checks look at the node's paths through ``/proc/<holder>/root`` (``NodeFs.path``).

The kubelet itself stays in the host's mount namespace: the pod network namespaces it creates
must be seen by every node.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sandbox.config import SandboxConfig
from sandbox.node import layout, netns
from sandbox.node.errors import NodeFsError
from sandbox.procs import MEMBER_ENV

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
"""seconds to wait for a new holder to have made its mounts"""
_MAX_LINKS = 40


def resolve_in(root: str, path: str) -> str:
    """``path`` of the filesystem whose root is ``root``, as a path usable from here: symlinks are
    followed inside that root (an absolute target starts again at ``root``, as in a chroot), so
    ``/var/run/ambit`` under ``/proc/<pid>/root`` is that process's ``/run/ambit``, not ours.
    What does not exist is kept as written."""
    pending = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while pending:
        name = pending.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        try:
            target = os.readlink("/".join([root, *done, name]))
        except OSError:  # not a symlink, or not there
            done.append(name)
            continue
        links += 1
        if links > _MAX_LINKS:
            raise OSError(errno.ELOOP, f"too many symbolic links resolving {path} in {root}")
        if target.startswith("/"):
            done = []
        pending[:0] = [p for p in target.split("/") if p not in ("", ".")]
    return "/".join([root, *done]) if done else root


def _start_ticks(pid: int) -> int | None:
    """A live process's start time since boot (tells it from a reused pid); None when it is gone or a zombie."""
    try:
        after = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    if after[0] == "Z":
        return None
    return int(after[19])


class NodeFs:
    """One node's filesystem, from the host: its holder process, started when missing.

    Thread-safe; several processes (``ambit up``'s kubelet, tests, benchmarks) may use the same
    node: ``ensure`` serialises on a lock file."""

    def __init__(self, cfg: SandboxConfig, node: str) -> None:
        self.cfg = cfg
        self.node = node
        self.dir = layout.nodefs_dir(cfg, node)
        self.pid_file = self.dir / "holder.pid"
        self._lock = threading.Lock()
        self._known: tuple[int, int] | None = None
        """(pid, start ticks) of the holder last seen"""
        self._child: subprocess.Popen | None = None
        """the holder, when this process started it (reaped here if it dies)"""

    # ---- what the pod runtime uses ----
    def ensure(self) -> int:
        """The holder's pid; starts it (and waits for its mounts) when there is none."""
        known = self._known
        if known is not None and _start_ticks(known[0]) == known[1]:
            return known[0]
        with self._lock:
            if self._child is not None and self._child.poll() is not None:
                self._child = None  # reaped
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.dir / "lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                found = self._read_pid_file()
                if found is None:
                    found = self._start()
                self._known = found
                return found[0]

    def mntns(self) -> str:
        """The node's mount namespace, for ``setns``/``nsenter --mount``."""
        return f"/proc/{self.ensure()}/ns/mnt"

    def path(self, node_path: str) -> str:
        """Where this process reaches ``node_path`` of the node's filesystem: through the holder's
        root (``/proc/<pid>/root/...``), with symlinks resolved in the node's filesystem."""
        return resolve_in(f"/proc/{self.ensure()}/root", node_path)

    # ---- the holder ----
    def holder_argv(self) -> list[str]:
        argv = ["nsenter", f"--net={netns.path(self.cfg.node_netns(self.node))}", "--",
                sys.executable, "-I", "-m", "sandbox.node.nodefs", "--pid-file", str(self.pid_file),
                "--scratch", str(self.dir / "scratch")]
        for host_dir, node_path in layout.node_local_mounts(self.cfg, self.node):
            argv += ["--bind", str(host_dir), node_path]
        return argv

    def _read_pid_file(self) -> tuple[int, int] | None:
        try:
            pid, ticks = (int(f) for f in self.pid_file.read_text().split())
        except (OSError, ValueError):
            return None
        return (pid, ticks) if _start_ticks(pid) == ticks else None

    def _start(self) -> tuple[int, int]:
        if not netns.exists(self.cfg.node_netns(self.node)):
            raise NodeFsError(f"cannot make {self.node}'s filesystem: its network namespace "
                              f"{self.cfg.node_netns(self.node)} does not exist; create the node first "
                              "(underlay.create_node, or ambit up)")
        self.pid_file.unlink(missing_ok=True)
        (self.dir / "scratch").mkdir(exist_ok=True)
        for host_dir, _ in layout.node_local_mounts(self.cfg, self.node):
            host_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.cfg.log_dir / f"nodefs-{self.node}.log"
        env = {**os.environ, MEMBER_ENV: self.cfg.name}
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(self.holder_argv(), stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True, close_fds=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = self._read_pid_file()
            if found is not None and found[0] == proc.pid:
                self._child = proc
                log.info("%s's filesystem is held by pid %d", self.node, proc.pid)
                return found
            if proc.poll() is not None:
                break
            time.sleep(0.01)
        else:
            proc.kill()
        proc.wait()
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise NodeFsError(f"cannot make {self.node}'s filesystem: its holder exited with {proc.returncode}"
                          f" ({' / '.join(tail) or 'no output'}); see {log_path}")


# ---- the holder process ---------------------------------------------------------------------------
def hold(binds: list[tuple[str, str]], *, scratch: str, pid_file: str) -> None:
    """Make this process's mount namespace the node's filesystem, announce it, and keep it."""
    from sandbox.node import launch

    launch.private_mount_namespace()
    launch.Mounter(scratch).bind_all([launch.Bind(src, dst, False, True) for src, dst in binds])
    os.chdir("/")
    for src, dst in binds:
        print(f"{dst} is {src}", flush=True)
    tmp = f"{pid_file}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {_start_ticks(os.getpid())}\n")
    os.replace(tmp, pid_file)  # the starter waits for this: the mounts are made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.node.nodefs",
                                     description="hold a sandbox node's filesystem (started by NodeFs.ensure)")
    parser.add_argument("--pid-file", required=True, help="written once the mounts are made")
    parser.add_argument("--scratch", required=True, help="an empty directory for shadowing (launch.Mounter)")
    parser.add_argument("--bind", nargs=2, action="append", default=[], metavar=("HOST_DIR", "NODE_PATH"),
                        help="bind HOST_DIR at NODE_PATH in the node's filesystem (repeatable)")
    args = parser.parse_args(argv)
    from sandbox.node.launch import SetupError

    try:
        hold([tuple(b) for b in args.bind], scratch=args.scratch, pid_file=args.pid_file)
    except (SetupError, OSError) as exc:
        print(f"ambit-sandbox: cannot make the node's filesystem: {exc}", file=sys.stderr)
        return 1
    while True:  # until SIGTERM or SIGKILL (ambit down); the namespace goes with the last process in it
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
