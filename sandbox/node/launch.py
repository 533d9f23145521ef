"""Container launcher: ``python -I -m sandbox.node.launch [options] -- CMD ARGS...``

Run by the kubelet for every container process; it prepares the process's namespaces, then
execs the container command (so the container's pid is this process's pid):

1. a private mount namespace whose mounts are slaves of the host's (new pod netns mounts under
   /run/netns still appear inside, nothing made inside leaks out);
2. ``--secrets DIR``: DIR bind-mounted read-only at /var/run/secrets/kubernetes.io/serviceaccount.
   The mount point usually does not exist on the host, and the host must not be changed, so the
   deepest existing ancestor (normally /run) is shadowed by a tmpfs that re-binds every original
   entry of it (recursively, so /run/netns and its namespaces stay visible) plus the new path;
3. ``--netns PATH``: joins that network namespace and mounts a fresh /sys for it (as
   ``ip netns exec`` does);
4. ``--workdir DIR``: chdir; then exec with the environment it was given.

Failures print one line to stderr (the container log) and exit 127 (command not found),
126 (not executable) or 125 (namespace setup failed), as container runtimes do.
Stdlib only: it starts once per container start.
"""
from __future__ import annotations

import ctypes
import errno
import os
import sys

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
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


def join_netns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"join network namespace {path}")
    finally:
        os.close(fd)
    # /sys shows the network devices of the namespace that mounted it: remount it for ours
    try:
        umount("/sys", MNT_DETACH)
        mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV)
    except SetupError:
        pass  # not fatal: only tools reading /sys/class/net notice


def _deepest_existing(path: str) -> str:
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def _shadow_with_tmpfs(directory: str, scratch: str) -> None:
    """Replace ``directory`` (in this mount namespace only) by a tmpfs holding bind mounts of all
    its original entries, so new paths can be created under it without touching the host."""
    mount(directory, scratch, None, MS_BIND | MS_REC)
    st = os.stat(directory)
    mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={st.st_mode & 0o7777:o},size=4m")
    for entry in os.scandir(scratch):
        src = os.path.join(scratch, entry.name)
        dst = os.path.join(directory, entry.name)
        try:
            if entry.is_symlink():
                os.symlink(os.readlink(src), dst)
            elif entry.is_dir(follow_symlinks=False):
                os.mkdir(dst, entry.stat(follow_symlinks=False).st_mode & 0o7777)
                mount(src, dst, None, MS_BIND | MS_REC)
            else:
                with open(dst, "wb"):
                    pass
                mount(src, dst, None, MS_BIND)
        except (OSError, SetupError) as exc:
            print(f"ambit-sandbox: warning: {directory}/{entry.name} not visible in the container: {exc}",
                  file=sys.stderr)
    umount(scratch, MNT_DETACH)


def mount_secrets(source: str, *, scratch: str, target: str = SA_MOUNT) -> None:
    real = os.path.realpath(target)
    anchor = _deepest_existing(real)
    if anchor != real:
        if not os.path.isdir(anchor):
            raise SetupError(f"cannot create {target}: {anchor} is not a directory")
        _shadow_with_tmpfs(anchor, scratch)
        os.makedirs(real, mode=0o755, exist_ok=True)
    mount(source, real, None, MS_BIND)
    mount(None, real, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def parse_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    opts: dict[str, str] = {}
    known = ("--netns", "--secrets", "--scratch", "--workdir")
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return opts, argv[i + 1:]
        if arg in known and i + 1 < len(argv):
            opts[arg[2:]] = argv[i + 1]
            i += 2
            continue
        raise SetupError(f"unexpected launcher argument {arg!r}; usage: launch [--netns P] [--secrets D "
                         "--scratch D] [--workdir D] -- CMD ARGS")
    raise SetupError("no command after '--'")


def main(argv: list[str]) -> int:
    try:
        opts, command = parse_args(argv)
        if not command:
            raise SetupError("the container has no command; set command: in the pod spec (images are not run)")
        private_mount_namespace()
        if "secrets" in opts:
            if "scratch" not in opts:
                raise SetupError("--secrets needs --scratch")
            mount_secrets(opts["secrets"], scratch=opts["scratch"])
        if "netns" in opts:
            join_netns(opts["netns"])
        os.chdir(opts.get("workdir") or "/")
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
