"""Containers as processes: command, environment, and the launcher that starts them.

Images are not pulled or run: a container is its ``command`` + ``args`` executed on this
machine, in the pod's network namespace and a private mount namespace made from the node's
(see ``launch`` and ``nodefs``), with
``PATH`` led by the kubelet interpreter's bin dir so ``python3`` is the sandbox's venv.
"""
from __future__ import annotations

import os
import re
import select
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from sandbox.node.errors import ContainerError
from sandbox.node.launch import Bind

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT = 10.0
"""seconds ``spawn`` waits for the launcher to exec the command before reporting it started anyway"""
_FIELD_KEY_RE = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")
_VAR_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables are substituted, undefined references
    stay as written, ``$$`` is a literal ``$``."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_RE.sub(sub, text)


def field_ref(pod: dict, path: str, *, pod_ip: str, host_ip: str) -> str:
    """The value of a ``valueFrom.fieldRef.fieldPath`` (the downward API)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name") or "",
        "metadata.namespace": meta.get("namespace") or "default",
        "metadata.uid": meta.get("uid") or "",
        "spec.nodeName": spec.get("nodeName") or "",
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return simple[path]
    m = _FIELD_KEY_RE.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ContainerError(f"fieldRef {path!r} is not supported; use metadata.name/namespace/uid/labels['k']/"
                         "annotations['k'], spec.nodeName, spec.serviceAccountName, status.podIP or status.hostIP")


def container_env(pod: dict, container: dict, *, pod_ip: str, host_ip: str, api_host: str,
                  api_port: int, python_bin: Path | None = None) -> dict[str, str]:
    """The process environment of a container: the runtime's defaults, then the spec's ``env``
    in order (later entries may reference earlier ones with ``$(VAR)``)."""
    bin_dir = python_bin if python_bin is not None else Path(sys.executable).parent
    meta = pod.get("metadata") or {}
    env: dict[str, str] = {
        "PATH": f"{bin_dir}:{DEFAULT_PATH}",
        "HOSTNAME": meta.get("name") or "",
        "HOME": "/root",
        "PYTHONUNBUFFERED": "1",
        "KUBERNETES_SERVICE_HOST": api_host,
        "KUBERNETES_SERVICE_PORT": str(api_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port),
    }
    for item in container.get("env") or []:
        name = item.get("name")
        if not name:
            raise ContainerError(f"container {container.get('name')!r} has an env entry without a name")
        if "valueFrom" in item and item["valueFrom"] is not None:
            source = item["valueFrom"]
            ref = source.get("fieldRef")
            if not ref:
                kinds = ", ".join(sorted(source)) or "nothing"
                raise ContainerError(f"env {name}: valueFrom {kinds} is not supported by the sandbox kubelet; "
                                     "only fieldRef is (use a literal value)")
            env[name] = field_ref(pod, ref.get("fieldPath") or "", pod_ip=pod_ip, host_ip=host_ip)
        else:
            env[name] = expand(str(item.get("value") or ""), env)
    return env


def container_argv(container: dict, env: Mapping[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded; images are not run, so a command is required."""
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    if not command:
        raise ContainerError(f"container {container.get('name')!r} has no command; the sandbox ignores images, "
                             "so give it command: (e.g. [python3, -m, sandbox.demo.web])")
    return [expand(part, env) for part in command + args]


def launcher_argv(command: list[str], *, netns_path: str | None, binds: Sequence[Bind] = (),
                  scratch_dir: Path | None = None, node_mntns: str | None = None,
                  mntns_path: str | None = None, workdir: str | None = None,
                  ready_fd: int | None = None) -> list[str]:
    """The launcher command line: the container's mount namespace is made from ``node_mntns``
    (the node's filesystem, ``nodefs``); ``binds`` (volumes, credentials) need ``scratch_dir``;
    ``mntns_path`` joins a running container's mount namespace instead (exec probes)."""
    argv = [sys.executable, "-I", "-m", "sandbox.node.launch"]
    if netns_path:
        argv += ["--netns", netns_path]
    if node_mntns:
        argv += ["--node-mntns", node_mntns]
    if mntns_path:
        argv += ["--mntns", mntns_path]
    for b in binds:
        flag = "--bind-host" if b.host else "--bind"
        argv += [flag + "-ro" if b.read_only else flag, b.source, b.target]
    if binds:
        if scratch_dir is None:
            raise ValueError("BUG: bind mounts need a scratch dir")
        argv += ["--scratch", str(scratch_dir)]
    if workdir:
        argv += ["--workdir", workdir]
    if ready_fd is not None:
        argv += ["--ready-fd", str(ready_fd)]
    return [*argv, "--", *command]


def spawn(command: list[str], *, env: Mapping[str, str], log_path: Path, netns_path: str | None,
          node_mntns: str | None = None, binds: Sequence[Bind] = (), scratch_dir: Path | None = None,
          workdir: str | None = None) -> subprocess.Popen:
    """Start one container process (its own session, so its whole process group can be signalled).

    Returns once the launcher has exec'd the command in its namespaces with its mounts (or
    failed), as a container runtime's start does: its pid is then in the pod's netns."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if binds and scratch_dir is not None:
        scratch_dir.mkdir(parents=True, exist_ok=True)
    ready_r, ready_w = os.pipe()
    try:
        argv = launcher_argv(command, netns_path=netns_path, binds=binds, scratch_dir=scratch_dir,
                             node_mntns=node_mntns, workdir=workdir, ready_fd=ready_w)
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                    env=dict(env), start_new_session=True, close_fds=True, pass_fds=(ready_w,))
        os.close(ready_w)
        ready_w = -1
        select.select([ready_r], [], [], START_TIMEOUT)  # EOF at exec; a stuck setup is not waited for
    finally:
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)
    return proc


def start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (tells a pid from a reused one)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def exit_reason(code: int) -> str:
    """The containerStatuses reason for an exit code."""
    return "Completed" if code == 0 else "Error"


def returncode_to_exit(returncode: int) -> int:
    """Popen reports death by signal N as -N; container runtimes report 128+N."""
    return 128 - returncode if returncode < 0 else returncode
