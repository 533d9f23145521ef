"""A pod's volumes on disk: read from the API, written atomically, kept in sync.

One ``PodVolumes`` per pod, used only by its worker thread:

- built from the pod spec (``volumes.parse_volumes``: a bad spec raises ``VolumeError`` at once);
- ``setup()`` creates ``<pod dir>/volumes/<plugin>/<volume>`` for every volume, reads the
  ConfigMaps and Secrets they name, requests their tokens (TokenRequest bound to the pod) and
  writes each volume that can be written; for a hostPath it runs the kubelet's type check
  (``check_host_path``, which makes what ``DirectoryOrCreate``/``FileOrCreate`` ask for) on the
  path with ``$(NODE_NAME)`` expanded, in the node's filesystem (``locate``). It returns one
  ``MountVolume.SetUp failed`` message per volume that cannot be set up (a missing non-optional
  ConfigMap/Secret or key, a failed type check), and is called again until there are none:
  containers start only then;
- ``sync()``, whenever ``next_due`` has passed, refreshes each token at 80% of its life and
  re-reads ConfigMaps and Secrets every ``resync`` seconds, rewriting a volume only when its files
  changed (``atomicwriter``: readers see the old or the new files, never a mix). A source that
  disappears keeps its volume's last content, as the kubelet does;
- ``binds(container)``: the read-only/read-write bind mounts the launcher makes for a container
  (a hostPath that does not exist at that moment is a ``CreateContainerError``).
"""
from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from sandbox.node import atomicwriter, serviceaccount
from sandbox.node.errors import ContainerError
from sandbox.node.launch import Bind
from sandbox.node.volumes import (File, HostPathError, SourceError, Volume, container_mounts, parse_volumes,
                                  render)

log = logging.getLogger(__name__)

TOKEN_RETRY_SECONDS = 10.0
# hostPath type -> (file type it must have, what the kubelet calls it in "is not a ...")
_HOST_PATH_KINDS = {
    "DirectoryOrCreate": (stat.S_ISDIR, "a directory"), "Directory": (stat.S_ISDIR, "a directory"),
    "FileOrCreate": (stat.S_ISREG, "a file"), "File": (stat.S_ISREG, "a file"),
    "Socket": (stat.S_ISSOCK, "a socket file"), "CharDevice": (stat.S_ISCHR, "a character device"),
    "BlockDevice": (stat.S_ISBLK, "a block device"),
}


def check_host_path(path: str, htype: str, *, at: str | None = None) -> None:
    """The kubelet's hostPath type check: ``DirectoryOrCreate`` makes a missing directory (0755, and
    its parents), ``FileOrCreate`` a missing empty file (0644, not its parent directory); then the
    path (symlinks followed) must be of the type's kind. '' checks nothing. ``at`` is where this
    process reaches ``path`` (the node's filesystem seen from the kubelet); messages name ``path``."""
    if not htype:
        return
    here = path if at is None else at
    if htype.endswith("OrCreate") and not os.path.exists(here):
        try:
            if htype == "DirectoryOrCreate":
                os.makedirs(here, mode=0o755, exist_ok=True)
                os.chmod(here, 0o755)  # whatever the umask, as Kubernetes documents it
            else:
                os.close(os.open(here, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
                os.chmod(here, 0o644)
        except OSError as exc:
            hint = "; FileOrCreate does not create the parent directory" if htype == "FileOrCreate" else ""
            raise HostPathError(f"hostPath type check failed: cannot create {path}: "
                                f"{(exc.strerror or str(exc)).lower()}{hint}") from exc
    is_kind, kind = _HOST_PATH_KINDS[htype]
    try:
        ok = is_kind(os.stat(here).st_mode)
    except OSError:
        ok = False
    if not ok:
        raise HostPathError(f"hostPath type check failed: {path} is not {kind}")


class VolumeSources(Protocol):
    """The API as one pod's volumes see it (the pod worker adapts its ``PodApi``)."""

    def read_object(self, kind: str, name: str) -> dict | None:
        """The ConfigMap (``kind='configmap'``) or Secret in the pod's namespace; None if absent."""
        ...

    def request_token(self, *, audience: str, expiration_seconds: int) -> tuple[str, float]:
        """A token for the pod's service account bound to the pod, and its expiry (epoch seconds)."""
        ...


@dataclass
class _Token:
    value: str
    refresh_at: float
    """monotonic time of the next TokenRequest"""


class PodVolumes:
    def __init__(self, *, pod: dict, node: str, root: Path, sources: VolumeSources, resync: float,
                 label: str = "", locate: Callable[[str], str] = str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.volumes: dict[str, Volume] = parse_volumes(pod)
        self.node = node
        """this node's name, for ``$(NODE_NAME)`` in hostPaths"""
        self.locate = locate
        """where this process reaches a path of the node's filesystem (``NodeFs.path``; the same
        path when the node's filesystem is this process's)"""
        self.label = label
        """the pod, for log lines"""
        self.root = root
        self.sources = sources
        self.resync = resync
        self._clock = clock
        self._objects: dict[tuple[str, str], dict | None] = {}
        self._tokens: dict[tuple[str, int], _Token] = {}
        self._written: dict[str, dict[str, File]] = {}
        self._next_resync = 0.0

    def dir(self, volume: Volume) -> Path:
        return self.root / volume.plugin_dir / volume.name

    def host_path(self, volume: Volume) -> str:
        """A hostPath volume's path on this node."""
        if volume.host_path is None:
            raise ValueError(f"BUG: volume {volume.name!r} is not a hostPath")
        return volume.host_path.on_node(self.node)

    @property
    def ready(self) -> bool:
        """Every volume has been written (or created, for emptyDir) at least once."""
        return all(v.name in self._written for v in self.volumes.values())

    @property
    def next_due(self) -> float:
        """Monotonic time at which ``sync`` has work to do."""
        if not any(v.sources for v in self.volumes.values()):
            return float("inf")
        due = self._next_resync if any(v.objects for v in self.volumes.values()) else float("inf")
        return min([due, *(t.refresh_at for t in self._tokens.values())])

    # ---- setup and sync -------------------------------------------------------------------------
    def setup(self) -> list[str]:
        """Write every volume that can be written; one message per volume that cannot (retry)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)  # secrets and tokens live below; containers reach them through mounts
        problems = []
        fetch_error = self._fetch_objects()
        for vol in self.volumes.values():
            if vol.name in self._written:
                continue
            if vol.type == "emptyDir":
                self.dir(vol).mkdir(parents=True, exist_ok=True)
                self._written[vol.name] = {}
                continue
            try:
                if vol.host_path is not None:
                    path = self.host_path(vol)
                    check_host_path(path, vol.host_path.type, at=self.locate(path))
                    self._written[vol.name] = {}
                    log.info("pod %s: volume %s is hostPath %s (type %r)", self.label, vol.name,
                             self.host_path(vol), vol.host_path.type)
                    continue
                for src in vol.tokens:
                    if src.key not in self._tokens:
                        self._request_token(src.key)
                if fetch_error and vol.objects:
                    raise SourceError(fetch_error)
                self._write(vol)
            except Exception as exc:  # API and network errors are retried like missing objects
                problems.append(f'MountVolume.SetUp failed for volume "{vol.name}" : {exc}')
        self._next_resync = self._clock() + self.resync
        return problems

    def sync(self) -> list[str]:
        """Refresh due tokens, re-read objects when the resync period has passed; warnings to record."""
        now = self._clock()
        refreshed = False
        for key, tok in list(self._tokens.items()):
            if now >= tok.refresh_at:
                try:
                    self._request_token(key)
                    refreshed = True
                except Exception as exc:
                    tok.refresh_at = now + TOKEN_RETRY_SECONDS
                    log.warning("pod %s: token refresh for audience %r failed (%s); retrying in %.0fs",
                                self.label, key[0] or "(default)", exc, TOKEN_RETRY_SECONDS)
        resync = now >= self._next_resync and any(v.objects for v in self.volumes.values())
        if resync:
            self._next_resync = now + self.resync
            fetch_error = self._fetch_objects()
            if fetch_error:
                log.warning("pod %s: volume resync: %s; keeping the current files", self.label, fetch_error)
                resync = False
        warnings: list[str] = []
        for vol in self.volumes.values():
            if not ((resync and vol.objects) or (refreshed and vol.tokens)):
                continue
            try:
                self._write(vol)
            except Exception as exc:  # the last good files stay in place
                warnings.append(f'MountVolume.SetUp failed for volume "{vol.name}" : {exc}')
        return warnings

    # ---- mounts -----------------------------------------------------------------------------------
    def binds(self, container: dict) -> list[Bind]:
        """The container's volume mounts as the launcher takes them (ContainerError if invalid)."""
        binds = []
        for m in container_mounts(container, self.volumes):
            vol = self.volumes[m.volume]
            if vol.host_path is None:
                binds.append(Bind(str(self.dir(vol)), m.path, m.read_only))
                continue
            source = self.host_path(vol)
            if not os.path.exists(self.locate(source)):  # a container runtime would create it; the sandbox does not
                raise ContainerError(f'volume "{vol.name}": hostPath {source} does not exist; create it, or '
                                     "give the volume type DirectoryOrCreate or FileOrCreate",
                                     reason="CreateContainerError")
            binds.append(Bind(source, m.path, m.read_only, host=True))
        return binds

    def mount_paths(self, container: dict) -> set[str]:
        return {m.path for m in container_mounts(container, self.volumes)}

    # ---- internals ----------------------------------------------------------------------------------
    def _fetch_objects(self) -> str:
        """Re-read every referenced ConfigMap/Secret; on an API error keep the last copies and say why."""
        refs = {src.ref for vol in self.volumes.values() for src in vol.objects}
        for kind, name in sorted(refs):
            try:
                self._objects[(kind, name)] = self.sources.read_object(kind, name)
            except Exception as exc:
                return f'cannot read {kind} "{name}": {exc}'
        return ""

    def _request_token(self, key: tuple[str, int]) -> None:
        audience, seconds = key
        issued = time.time()
        token, expires = self.sources.request_token(audience=audience, expiration_seconds=seconds)
        delay = serviceaccount.refresh_after(issued, expires) - issued
        self._tokens[key] = _Token(token, self._clock() + delay)

    def _write(self, vol: Volume) -> None:
        files = render(vol, objects=self._objects, tokens={k: t.value for k, t in self._tokens.items()})
        if self._written.get(vol.name) == files:
            return
        atomicwriter.write(self.dir(vol), files)
        first = vol.name not in self._written
        self._written[vol.name] = files
        log.info("pod %s: volume %s %s (%d files)", self.label, vol.name, "written" if first else "updated",
                 len(files))
