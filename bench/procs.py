"""Processes the rig starts (relays, load generators, connection holders), and /proc readings.

- ``Children`` starts every process in its own session and remembers it, so ``stop_all`` (run in
  the rig's ``finally``, also on Ctrl-C) ends exactly those process groups and nothing else.
- ``cpu_seconds`` / ``rss_kb`` / ``RssSampler`` read ``/proc/<pid>/{stat,status}`` of the relay
  processes (node agents, nginx masters and workers).
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


class ToolError(RuntimeError):
    """A measuring tool failed; the message names the command and what it said."""


class Children:
    """Every process the rig started; ``stop_all`` kills their process groups (by id)."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], *, netns: str | None = None, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env: dict | None = None) -> subprocess.Popen:
        """Start ``argv`` (inside network namespace path ``netns`` if given) in a new session."""
        if netns is not None:
            argv = ["nsenter", f"--net={netns}", "--", *argv]
        proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env,
                                start_new_session=True, close_fds=True)
        self._procs.append(proc)
        return proc

    def run(self, argv: list[str], *, netns: str | None = None, timeout: float,
            input: bytes | None = None, env: dict | None = None) -> tuple[int, str, str]:
        """Run to completion; returns (exit status, stdout, stderr). A timeout kills it and raises."""
        proc = self.start(argv, netns=netns, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                          env=env)
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc, grace=0.5)
            raise ToolError(f"{argv[0]} did not finish within {timeout:.0f}s: {' '.join(argv)}") from None
        except BaseException:  # Ctrl-C / SIGTERM while waiting: the child goes too
            self.stop(proc, grace=0.5)
            raise
        self._forget(proc)
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def stop(self, proc: subprocess.Popen, *, grace: float = 3.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds."""
        if proc.poll() is None:
            _killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        else:  # the leader is gone; its group may not be (nginx workers)
            _killpg(proc.pid, signal.SIGKILL)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                f.close()
        self._forget(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self._procs)):
            try:
                self.stop(proc, grace=2.0)
            except Exception as exc:  # keep cleaning up the others
                print(f"bench: could not stop pid {proc.pid}: {exc}", flush=True)

    def _forget(self, proc: subprocess.Popen) -> None:
        if proc in self._procs:
            self._procs.remove(proc)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---- /proc -------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (nginx master -> workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(_stat_fields(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (all their threads), in seconds; vanished pids count 0."""
    total = 0
    for pid in pids:
        try:
            f = _stat_fields(pid)
        except OSError:
            continue
        total += int(f[11]) + int(f[12])  # utime, stime (fields 14, 15)
    return total / _CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status (``VmRSS``, ``VmHWM``); 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pids: list[int]) -> int:
    return sum(status_kb(p, "VmRSS") for p in pids)


class RssSampler:
    """Samples the summed VmRSS of each group of pids every ``interval`` seconds; keeps the peak."""

    def __init__(self, groups: dict[str, list[int]], *, interval: float = 0.1) -> None:
        self.groups = groups
        self.peak_kb = {name: rss_kb(pids) for name, pids in groups.items()}
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            for name, pids in self.groups.items():
                self.peak_kb[name] = max(self.peak_kb[name], rss_kb(pids))


def others_cpu(*, netns_prefix: str, member_marker: bytes) -> dict[int, float]:
    """CPU seconds so far of every process that is not ours: not in a network namespace whose name
    starts with ``netns_prefix``, not a member of our sandbox (``member_marker`` in its environment),
    not this process. The difference of two snapshots is the work others did meanwhile."""
    ours = set()
    for path in Path("/run/netns").glob(f"{netns_prefix}*"):
        try:
            ours.add(os.stat(path).st_ino)
        except OSError:
            pass
    out: dict[int, float] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        try:
            if os.stat(entry / "ns" / "net").st_ino in ours:
                continue
            if member_marker in (entry / "environ").read_bytes().split(b"\0"):
                continue
            f = _stat_fields(pid)
        except OSError:
            continue
        out[pid] = (int(f[11]) + int(f[12])) / _CLK_TCK
    return out


def wait_until(predicate, *, timeout: float, interval: float = 0.2, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ToolError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(interval)
