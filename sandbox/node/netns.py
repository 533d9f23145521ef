"""Named network namespaces as ``ip netns`` keeps them: a bind-mounted nsfs file in /run/netns.

Creating one must happen in the host's mount namespace, or the mount stays private to the
caller and no other tool sees it (see ``kubelet.ensure_host_mount_namespace``).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from sandbox.node.errors import NetnsError

NETNS_DIR = Path("/run/netns")


def path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    """True when ``name`` is a live, mounted namespace (not a stale empty file)."""
    try:
        return _ns_id(path(name)) is not None
    except OSError:
        return False


def list_names(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def add(name: str) -> None:
    """Create ``name`` with its loopback up; an existing namespace of that name is reused."""
    if not exists(name):
        run(["ip", "netns", "add", name], what=f"create network namespace {name}")
    run(["ip", "-n", name, "link", "set", "lo", "up"], what=f"bring up lo in {name}")


def delete(name: str) -> bool:
    """Delete ``name``; False when it did not exist. Links inside it die with it."""
    if not path(name).exists():
        return False
    run(["ip", "netns", "delete", name], what=f"delete network namespace {name}")
    return True


def exec_argv(name: str) -> list[str]:
    """The argv prefix that runs a command inside ``name``."""
    return ["ip", "netns", "exec", name]


def pids(name: str) -> list[int]:
    """Every process whose network namespace is ``name`` (what ``ip netns pids`` prints)."""
    try:
        target = _ns_id(path(name))
    except OSError:
        return []
    if target is None:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == target:
            found.append(int(entry))
    return sorted(found)


def kill_all(name: str, *, grace: float = 2.0) -> list[int]:
    """SIGTERM every process in ``name``, SIGKILL what is left after ``grace``; returns the pids seen."""
    return kill_many([name], grace=grace)[name]


def kill_many(names: list[str], *, grace: float = 2.0) -> dict[str, list[int]]:
    """``kill_all`` over several namespaces at once, so one grace period covers them all."""
    me = os.getpid()
    seen: dict[str, set[int]] = {n: set() for n in names}

    def sweep() -> list[int]:
        left = []
        for n in names:
            found = [p for p in pids(n) if p != me and _alive(p)]
            seen[n].update(found)
            left.extend(found)
        return left

    _signal_all(sweep(), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and sweep():
        time.sleep(0.05)
    # processes may fork (or be restarted) while dying: sweep until every namespace is empty
    for _ in range(100):
        left = sweep()
        if not left:
            break
        _signal_all(left, signal.SIGKILL)
        time.sleep(0.02)
    return {n: sorted(p) for n, p in seen.items()}


def run(argv: list[str], *, what: str, timeout: float = 30.0) -> str:
    """Run a command; a failure becomes a NetnsError naming ``what`` and the command's own words."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise NetnsError(f"cannot {what}: {argv[0]} is not installed; install iproute2") from exc
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"cannot {what}: {' '.join(argv)} timed out after {timeout:.0f}s") from exc
    if proc.returncode != 0:
        raise NetnsError(f"cannot {what}: {' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _ns_id(p: Path) -> tuple[int, int] | None:
    """(dev, inode) of the namespace mounted at ``p``; None for an unmounted placeholder file."""
    st = os.stat(p)
    # an nsfs inode lives on the nsfs device; a placeholder file lives on /run's filesystem
    parent = os.stat(p.parent)
    if st.st_dev == parent.st_dev:
        return None
    return (st.st_dev, st.st_ino)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _signal_all(targets: list[int], sig: signal.Signals) -> None:
    for pid in targets:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
