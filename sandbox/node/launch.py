"""Container launcher: ``python -I -m sandbox.node.launch [options] -- CMD ARGS...``

Run by the kubelet for every container process; it prepares the process's namespaces, then
execs the container command (so the container's pid is this process's pid):

1. a private mount namespace whose mounts are slaves of the node's (``--node-mntns PATH``, joined
   first: the node's filesystem, ``nodefs``, where /etc/cni/net.d, /opt/cni/bin and /run/ambit
   are the node's own), else of the host's: new pod netns mounts under /run/netns still appear
   inside, nothing made inside leaks out;
2. ``--bind SRC DST`` / ``--bind-ro SRC DST`` (repeatable): the pod's volumes and its
   service-account credentials (at /var/run/secrets/kubernetes.io/serviceaccount), mounted
   parents first, as container runtimes order them. A mount point that does not exist is made
   without touching the host: inside another volume it is made in that volume's directory (which
   the kubelet owns); elsewhere (and inside a hostPath) the deepest existing ancestor (normally
   /run or /tmp) is shadowed by a tmpfs that re-binds every original entry of it (recursively,
   so /run/netns and its namespaces stay visible) plus the new path. ``--scratch DIR`` is where
   the original is held meanwhile.
   ``--bind-host SRC DST`` / ``--bind-host-ro SRC DST``: a hostPath volume, a file or a
   directory. Bound recursively with slave propagation (HostToContainer: what is mounted under
   SRC later, such as a new /run/netns/<ns>, appears at DST too); not bound at all when SRC and
   DST are the same place (the namespace already shows it, and keeps showing new mounts) unless
   read-only is asked for. SRC is opened before any mount is made, so it is the host's even
   when DST or another volume covers its path;
3. ``--netns PATH``: joins that network namespace and mounts a fresh /sys for it (as
   ``ip netns exec`` does);
4. ``--workdir DIR``: chdir; then exec with the environment it was given.

``--mntns PATH`` (for exec probes) joins a running container's mount namespace instead of 1-2,
so the command sees exactly the container's files. ``--ready-fd N`` is a pipe the launcher
marks close-on-exec: the kubelet sees EOF when the command has been exec'd in its namespaces (or
setup failed), so "running" means what it means with runc.

Failures print one line to stderr (the container log) and exit 127 (command not found),
126 (not executable) or 125 (namespace setup failed), as container runtimes do.
Stdlib only: it starts once per container start.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys
from collections import namedtuple

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
SHADOW_TMPFS_SIZE = "64m"
"""room for what a container writes beside the original entries of a shadowed directory"""

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MNT_DETACH = 0x2

EXIT_SETUP = 125
EXIT_NOEXEC = 126
EXIT_NOTFOUND = 127

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


class SetupError(Exception):
    pass


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
           f"mount {source or fstype} on {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def private_mount_namespace() -> None:
    _check(_libc.unshare(CLONE_NEWNS), "unshare mount namespace")
    mount(None, "/", None, MS_REC | MS_SLAVE)


def join_mount_namespace(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNS), f"join mount namespace {path}")
    finally:
        os.close(fd)


def join_netns(fd: int, path: str, *, remount_sys: bool = True) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), f"join network namespace {path}")
    if not remount_sys:
        return
    # /sys shows the network devices of the namespace that mounted it: remount it for ours
    try:
        umount("/sys", MNT_DETACH)
        mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV)
    except SetupError:
        pass  # not fatal: only tools reading /sys/class/net notice


Bind = namedtuple("Bind", "source target read_only host", defaults=(False,))
Bind.__doc__ = """One bind mount into the container: ``source`` at ``target`` (the container's path),
read-only or not. ``source`` is a directory the kubelet owns, or with ``host`` a hostPath (any
file type, never written to by the launcher)."""


def _deepest_existing(path: str) -> str:
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def _shadow_with_tmpfs(directory: str, scratch: str) -> None:
    """Replace ``directory`` (in this mount namespace only) by a tmpfs holding bind mounts of all
    its original entries, so new paths can be created under it without touching the host.

    The original is held at ``scratch`` meanwhile and reached through a descriptor: ``scratch``
    itself may lie under ``directory`` (a state dir under /tmp) and vanish beneath the tmpfs."""
    mount(directory, scratch, None, MS_BIND | MS_REC)
    held = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstat(held)
        mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV,
              f"mode={st.st_mode & 0o7777:o},size={SHADOW_TMPFS_SIZE}")
        base = f"/proc/self/fd/{held}"
        _rebind_entries(base, held, directory)
        try:
            umount(base, MNT_DETACH)
        except SetupError:
            pass  # hidden under the tmpfs, in this namespace only: harmless
    finally:
        os.close(held)


def _rebind_entries(source: str, held: int, destination: str) -> None:
    """Recreate every entry of the directory open as ``held`` (reachable at path ``source``) in
    ``destination``: symlinks copied, directories and files bind-mounted (recursively)."""
    for entry in os.scandir(held):
        src = f"{source}/{entry.name}"
        dst = os.path.join(destination, entry.name)
        try:
            if entry.is_symlink():
                os.symlink(os.readlink(entry.name, dir_fd=held), dst)
            elif entry.is_dir(follow_symlinks=False):
                os.mkdir(dst, entry.stat(follow_symlinks=False).st_mode & 0o7777)
                mount(src, dst, None, MS_BIND | MS_REC)
            else:
                with open(dst, "wb"):
                    pass
                mount(src, dst, None, MS_BIND)
        except (OSError, SetupError) as exc:
            print(f"ambit-sandbox: warning: {destination.rstrip('/')}/{entry.name} not visible in the "
                  f"container: {exc}", file=sys.stderr)


def _shadow_root(scratch: str) -> None:
    """``_shadow_with_tmpfs`` for ``/``: the new root is built on a tmpfs at ``scratch`` (bind
    mounts of every original top-level entry), moved over ``/`` and entered with chroot, as
    switch_root does. Lets a volume be mounted at a new top-level path such as /data.

    The new root stays unbindable until ``Mounter.bind_all`` is done: it sits on the old root,
    and a hostPath ``/`` (bound recursively) must show the host's root, not a copy of this one."""
    mount("tmpfs", scratch, "tmpfs", MS_NOSUID, f"mode=755,size={SHADOW_TMPFS_SIZE}")
    # unbindable: the recursive binds of the entry holding scratch (/tmp, /var) leave it out
    # instead of copying the new root into itself
    mount(None, scratch, None, MS_UNBINDABLE)
    held = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _rebind_entries("", held, scratch)
    finally:
        os.close(held)
    os.chdir(scratch)
    mount(".", "/", None, MS_MOVE)
    os.chroot(".")
    os.chdir("/")


class _HostSource:
    """A hostPath opened (O_PATH) before any mount was made in this namespace."""

    def __init__(self, b: Bind) -> None:
        try:
            self.fd = os.open(b.source, os.O_PATH | os.O_CLOEXEC)
        except OSError as exc:
            raise SetupError(f"hostPath {b.source}: {exc.strerror}") from exc
        self.is_dir = stat.S_ISDIR(os.fstat(self.fd).st_mode)
        self.same_place = os.path.realpath(b.source) == os.path.realpath(b.target)
        """the container sees the host's path at the mountPath already"""

    @property
    def path(self) -> str:
        return f"/proc/self/fd/{self.fd}"


class Mounter:
    """Bind-mounts volumes into this (private) mount namespace, making mount points that do not
    exist without writing to the host: see step 2 of the module docstring."""

    def __init__(self, scratch: str) -> None:
        self.scratch = scratch
        self.private: set[str] = set()
        """directories on a tmpfs of ours (shadows and what was made on them): free to write"""
        self.volumes: list[tuple[str, str]] = []
        """(mount point, source directory) of every kubelet-owned volume mounted so far"""
        self.host: dict[Bind, _HostSource] = {}
        """hostPaths, opened by ``bind_all`` before it mounts anything"""

    def bind_all(self, binds: list[Bind]) -> None:
        """Mount ``binds`` parents first. A new top-level directory replaces the root first, while
        no volume is mounted yet, so that no mount has to be carried over to the new root."""
        ordered = mount_order(binds)
        for b in ordered:
            if b.host and b not in self.host:
                self.host[b] = _HostSource(b)  # the host's path, before anything covers it
        if any(_deepest_existing(os.path.realpath(b.target)) == "/" for b in ordered) and "/" not in self.private:
            _shadow_root(self.scratch)
            self.private.add("/")
        for b in ordered:
            self.bind(b)
        if "/" in self.private:
            mount(None, "/", None, MS_PRIVATE)  # unbindable while the binds were made (see _shadow_root)

    def bind(self, b: Bind) -> None:
        real = os.path.realpath(b.target)
        if b.host and b not in self.host:
            self.host[b] = _HostSource(b)
        host = self.host.get(b)
        if host is not None and host.same_place and not b.read_only:
            return  # a bind would add nothing, and HostToContainer is what the namespace gives
        want_dir = host is None or host.is_dir
        if os.path.lexists(real):
            if os.path.isdir(real) != want_dir:
                what = "a directory" if want_dir else "a file"
                raise SetupError(f"cannot mount a volume at {b.target}: {real} exists and is not {what}")
        else:
            self._make_point(real, b.target, directory=want_dir)
        if host is None:
            mount(b.source, real, None, MS_BIND)
        else:
            # recursive, so the mounts below it (/run/netns/<ns>) come along; slave, so later
            # mounts below it on the host appear here too, and nothing made here reaches the host
            mount(host.path, real, None, MS_BIND | MS_REC)
            mount(None, real, None, MS_REC | MS_SLAVE)
        if b.read_only:
            kept = os.statvfs(real).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)  # ST_* == MS_* for these
            mount(None, real, None, MS_BIND | MS_REMOUNT | MS_RDONLY | kept)
        # what was made on our tmpfs at or below ``real`` is now covered by the mount
        self.private = {p for p in self.private if p != real and not p.startswith(real.rstrip("/") + "/")}
        if host is None:
            self.volumes.append((real, b.source))

    def _make_point(self, real: str, target: str, *, directory: bool) -> None:
        """Create the mount point ``real`` (a directory, or an empty file for a file to mount)."""
        anchor = _deepest_existing(real)
        if not os.path.isdir(anchor):
            raise SetupError(f"cannot create {target}: {anchor} is not a directory")
        holder = self._volume_holding(anchor)
        if holder is not None:
            point, source = holder  # made in the volume's own directory, as runtimes do
            _make_path(os.path.join(source, os.path.relpath(real, point)), directory=directory)
            return
        if anchor not in self.private:
            if anchor == "/":
                _shadow_root(self.scratch)
            else:
                _shadow_with_tmpfs(anchor, self.scratch)
            self.private.add(anchor)
        _make_path(real, directory=directory)
        path = real if directory else os.path.dirname(real)
        while path != anchor:
            self.private.add(path)
            path = os.path.dirname(path)

    def _volume_holding(self, path: str) -> tuple[str, str] | None:
        inside = [(point, source) for point, source in self.volumes
                  if path == point or path.startswith(point.rstrip("/") + "/")]
        return max(inside, key=lambda v: len(v[0]), default=None)


def _make_path(path: str, *, directory: bool) -> None:
    if directory:
        os.makedirs(path, mode=0o755, exist_ok=True)
        return
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def mount_order(binds: list[Bind]) -> list[Bind]:
    """Parents before children (fewest path elements first), as containerd sorts mounts, so a
    volume inside another is not hidden by it; otherwise the given order."""
    return sorted(binds, key=lambda b: os.path.realpath(b.target).rstrip("/").count("/"))


Options = namedtuple("Options", "netns mntns node_mntns scratch workdir ready_fd binds",
                     defaults=(None, None, None, None, None, None, ()))


USAGE = ("usage: launch [--netns P] [--node-mntns P] [--bind SRC DST]... [--bind-ro SRC DST]... "
         "[--bind-host SRC DST]... [--bind-host-ro SRC DST]... [--scratch D] [--mntns P] [--workdir D] "
         "[--ready-fd N] -- CMD ARGS")
BIND_FLAGS = {"--bind": (False, False), "--bind-ro": (True, False),
              "--bind-host": (False, True), "--bind-host-ro": (True, True)}
"""flag -> (read_only, host)"""


def parse_args(argv: list[str]) -> tuple[Options, list[str]]:
    single: dict[str, str] = {}
    binds: list[Bind] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            if "ready_fd" in single:
                if not single["ready_fd"].isdigit():
                    raise SetupError(f"--ready-fd {single['ready_fd']!r} must be a file descriptor number")
                single["ready_fd"] = int(single["ready_fd"])
            opts = Options(binds=tuple(binds), **single)
            if opts.binds and not opts.scratch:
                raise SetupError("--bind needs --scratch (where a shadowed directory is held meanwhile)")
            if opts.mntns and (opts.binds or opts.node_mntns):
                raise SetupError("--mntns and --bind or --node-mntns exclude each other: "
                                 "--mntns joins a container as it is")
            return opts, argv[i + 1:]
        if arg in ("--netns", "--mntns", "--node-mntns", "--scratch", "--workdir", "--ready-fd") and i + 1 < len(argv):
            single[arg[2:].replace("-", "_")] = argv[i + 1]
            i += 2
            continue
        if arg in BIND_FLAGS and i + 2 < len(argv):
            binds.append(Bind(argv[i + 1], argv[i + 2], *BIND_FLAGS[arg]))
            i += 3
            continue
        raise SetupError(f"unexpected launcher argument {arg!r}; {USAGE}")
    raise SetupError("no command after '--'")


def main(argv: list[str]) -> int:
    try:
        opts, command = parse_args(argv)
        if opts.ready_fd is not None:
            os.set_inheritable(opts.ready_fd, False)  # closed by exec (or exit): the kubelet's signal
        if not command:
            raise SetupError("the container has no command; set command: in the pod spec (images are not run)")
        # the network namespace first: the process counts as the pod's (ip netns pids) at once
        netns_fd = os.open(opts.netns, os.O_RDONLY | os.O_CLOEXEC) if opts.netns else None
        if opts.mntns:
            join_mount_namespace(opts.mntns)
        else:
            if opts.node_mntns:
                join_mount_namespace(opts.node_mntns)  # single-threaded, as setns(CLONE_NEWNS) needs
            private_mount_namespace()
        if netns_fd is not None:
            join_netns(netns_fd, opts.netns, remount_sys=not opts.mntns)
            os.close(netns_fd)
        if opts.binds:
            Mounter(opts.scratch).bind_all(list(opts.binds))
        os.chdir(opts.workdir or "/")
    except (SetupError, OSError) as exc:
        print(f"ambit-sandbox: container setup failed: {exc}", file=sys.stderr)
        return EXIT_SETUP
    try:
        os.execvpe(command[0], command, dict(os.environ))
    except FileNotFoundError:
        print(f"ambit-sandbox: exec {command[0]!r}: not found in PATH={os.environ.get('PATH', '')}",
              file=sys.stderr)
        return EXIT_NOTFOUND
    except OSError as exc:
        print(f"ambit-sandbox: exec {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return EXIT_NOEXEC if exc.errno in (errno.EACCES, errno.ENOEXEC, errno.EISDIR) else EXIT_SETUP
    return EXIT_SETUP  # not reached: exec replaced us


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
