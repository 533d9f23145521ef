"""The DaemonSet's installer: puts ``ambit-cni`` on the node and chains it after the primary CNI.

- ``install()`` writes the plugin into the CNI bin dir and appends
  ``{"type": "ambit-cni", ...}`` to the primary CNI's config: the lexically first
  ``.conflist``/``.conf``/``.json`` in the conf dir, as container runtimes choose it. A single
  ``.conf`` becomes a ``.conflist``. Idempotent: our entry is always exactly once, and last.
- ``run()`` repeats that every ``interval`` seconds, so a primary CNI that rewrites its config
  (dropping our entry) is re-patched within a second.
- ``uninstall()`` removes exactly our entries and the plugin's two files.
- ``main(argv)`` is ``ambit cni-install``.

The plugin is two files: ``ambit-cni``, a five-line launcher script starting with
``#!<python> -IS``, and ``ambit-cni.pyz`` beside it, a zip of the plugin's modules (sources
plus checked-hash bytecode; without bytecode every pod would pay ~35 ms of compiling). It
needs no site-packages and no environment variables, so it runs from a runtime's minimal
environment and keeps working when the installing virtualenv changes; the launcher finds the
library next to its own real path, so the DaemonSet may write through a host mount. ``-I``
ignores ``PYTHON*`` variables and the working directory; ``-S`` skips ``site`` (~20 ms).
A launcher rather than a self-running zipapp: running a zip goes through ``runpy`` (~5 ms).

Every file is written to a hidden temporary name in the same directory, synced and renamed
over the target, so a runtime never reads half a file. The order is binary first, then
config on install; config first, then binary on uninstall.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import logging
import marshal
import os
import signal
import sys
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cni import spec
from cni.errors import CniError, InstallError, InvalidConfigFile, NoPrimaryConfig

log = logging.getLogger(__name__)

EXECUTABLE_NAME = spec.PLUGIN_TYPE
CONFIG_SUFFIXES = (".conf", ".conflist", ".json")
PLUGIN_CONFIG_KEYS = ("agentSocket", "agentTimeoutSeconds", "failClosed", "excludeNamespaces")
_PLUGIN_MODULES = ("__init__", "errors", "spec", "protocol", "agent_client", "plugin")
"""the modules ``cni.plugin`` imports, transitively: what the library carries"""
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same sources build the same bytes
LIBRARY_NAME = f"{EXECUTABLE_NAME}.pyz"
_LAUNCHER = """\
#!{interpreter} -IS
# ambit-cni, the Ambit CNI plugin, written by `ambit cni-install`. Its code is {library}
# beside this file: the standard-library-only `cni` package, with bytecode.
import os, sys
sys.path.insert(0, os.path.realpath(__file__) + ".pyz")
from cni.plugin import main
sys.exit(main())
"""


@dataclass(frozen=True)
class InstallResult:
    config_path: Path
    """the primary CNI's config file that now carries our entry"""
    config_changed: bool
    plugin_changed: bool
    """the launcher or the library was (re)written"""


# ---- the executable ------------------------------------------------------------------------
@dataclass(frozen=True)
class PluginFiles:
    """What goes into the CNI bin dir: the launcher ``ambit-cni`` and its library beside it."""

    launcher: bytes
    library: bytes


def build_plugin(*, interpreter: str | os.PathLike) -> PluginFiles:
    """The plugin's files, run by ``interpreter`` (an absolute path on the node)."""
    interpreter = os.fspath(interpreter)
    if not os.path.isabs(interpreter):
        raise InstallError(f"the plugin's interpreter {interpreter!r} must be an absolute path")
    if any(ch.isspace() for ch in interpreter) or len(interpreter) > 200:
        raise InstallError(f"the plugin's interpreter path {interpreter!r} cannot go in a #! line; use a path without spaces")
    if not os.access(interpreter, os.X_OK):  # may still exist on the node, outside this container
        log.warning("the plugin's interpreter %s is not executable here; the node must have it", interpreter)
    launcher = _LAUNCHER.format(interpreter=interpreter, library=LIBRARY_NAME).encode()
    package_dir = Path(__file__).resolve().parent
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for module in _PLUGIN_MODULES:
            source = (package_dir / f"{module}.py").read_bytes()
            _add_entry(archive, f"cni/{module}.py", source)
            _add_entry(archive, f"cni/{module}.pyc", _hash_pyc(source, f"{LIBRARY_NAME}/cni/{module}.py"))
    return PluginFiles(launcher=launcher, library=buffer.getvalue())


def _add_entry(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def _hash_pyc(source: bytes, filename: str) -> bytes:
    """PEP 552 checked-hash bytecode: valid while the source beside it is unchanged; ignored by
    an interpreter of another version (bad magic), which then compiles the source."""
    code = compile(source, filename, "exec", dont_inherit=True)
    flags = 0b11  # hash-based, check the source
    return importlib.util.MAGIC_NUMBER + flags.to_bytes(4, "little") + importlib.util.source_hash(source) + marshal.dumps(code)


# ---- config patching (pure) ----------------------------------------------------------------
def plugin_entry(plugin_config: dict) -> dict:
    """Our conflist entry, checked the way the plugin will check it at pod creation."""
    unknown = sorted(set(plugin_config) - set(PLUGIN_CONFIG_KEYS))
    if unknown:
        raise InstallError(f"unknown ambit-cni config keys {unknown}; known keys: {', '.join(PLUGIN_CONFIG_KEYS)}")
    probe = {"cniVersion": spec.CURRENT_VERSION, "name": "probe", "type": spec.PLUGIN_TYPE, **plugin_config}
    try:
        spec.parse_config(json.dumps(probe).encode(), command="DEL")
    except CniError as err:
        raise InstallError(f"invalid ambit-cni config: {err.msg} ({err.details})") from None
    return {"type": spec.PLUGIN_TYPE, **plugin_config}


def is_ours(plugin: object) -> bool:
    return isinstance(plugin, dict) and plugin.get("type") == spec.PLUGIN_TYPE


def with_entry(conflist: dict, entry: dict) -> dict:
    """``conflist`` with our entry exactly once, at the end (other entries untouched)."""
    plugins = [p for p in conflist["plugins"] if not is_ours(p)]
    return {**conflist, "plugins": [*plugins, entry]}


def without_entry(conflist: dict) -> dict:
    return {**conflist, "plugins": [p for p in conflist["plugins"] if not is_ours(p)]}


def as_conflist(doc: dict, *, path: Path) -> dict:
    """A conflist for a config file's content: itself, or a single plugin config wrapped."""
    if "plugins" in doc:
        return doc
    for key in ("cniVersion", "name"):
        if not isinstance(doc.get(key), str):
            raise InvalidConfigFile(f"{path}: a single plugin config needs a string {key!r} to become a .conflist")
    return {"cniVersion": doc["cniVersion"], "name": doc["name"], "plugins": [doc]}


def load_config(path: Path, data: bytes) -> dict:
    """Parse and check one CNI config file's bytes (``path`` only names it in errors)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidConfigFile(f"{path}: not valid JSON ({exc}); fix or remove the file") from None
    if not isinstance(doc, dict):
        raise InvalidConfigFile(f"{path}: expected a JSON object, got a {type(doc).__name__}; fix or remove the file")
    if "plugins" in doc:
        plugins = doc["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise InvalidConfigFile(f"{path}: 'plugins' must be a non-empty list; fix or remove the file")
        for i, plugin in enumerate(plugins):
            if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
                raise InvalidConfigFile(f"{path}: plugins[{i}] has no string 'type'; fix or remove the file")
    elif not isinstance(doc.get("type"), str):
        raise InvalidConfigFile(f"{path}: neither a .conflist ('plugins') nor a plugin config ('type'); fix or remove the file")
    return doc


def render_config(doc: dict) -> bytes:
    return json.dumps(doc, indent=2).encode() + b"\n"


# ---- files ---------------------------------------------------------------------------------
def config_files(conf_dir: Path) -> list[Path]:
    """The files a runtime considers, in the order it considers them."""
    try:
        names = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        return []
    return [conf_dir / n for n in names if n.endswith(CONFIG_SUFFIXES) and not n.startswith(".") and (conf_dir / n).is_file()]


def find_primary(conf_dir: Path) -> tuple[Path, dict]:
    """The primary CNI's config: the lexically first config file that is not only ours."""
    for path in config_files(conf_dir):
        doc = load_config(path, path.read_bytes())
        plugins = doc.get("plugins", [doc])
        if all(is_ours(p) for p in plugins):
            continue
        return path, doc
    raise NoPrimaryConfig(f"no primary CNI config in {conf_dir} yet; is the primary CNI (e.g. ptp, flannel, calico) installed?")


def check(*, conf_dir: str | os.PathLike, bin_dir: str | os.PathLike) -> str | None:
    """Why this node is not protected by ambit-cni right now, or None when it is: our entry last
    in the primary config, and the plugin's two files in the bin dir (the installer container's
    readiness: an agent pod is ready only where new pods go through the plugin)."""
    try:
        path, doc = find_primary(Path(conf_dir))
    except (InstallError, OSError) as exc:
        return str(exc)
    plugins = doc.get("plugins", [doc])
    if not plugins or not is_ours(plugins[-1]):
        return f"ambit-cni is not chained last in {path}"
    missing = [name for name in (EXECUTABLE_NAME, LIBRARY_NAME) if not (Path(bin_dir) / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing from {bin_dir}"
    return None


def write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.ambit-tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


# ---- install / uninstall -------------------------------------------------------------------
def install(
    *,
    conf_dir: str | os.PathLike,
    bin_dir: str | os.PathLike,
    plugin_config: dict,
    source_executable: str | os.PathLike,
) -> InstallResult:
    """Install once. ``source_executable`` is the Python interpreter (absolute path, as seen on
    the node) that runs the plugin; ``plugin_config`` holds our entry's keys besides ``type``.

    Raises ``NoPrimaryConfig`` when there is nothing to chain after yet, ``InvalidConfigFile``
    naming the file when the primary's config cannot be patched.
    """
    return _install(
        conf_dir=Path(conf_dir),
        bin_dir=Path(bin_dir),
        entry=plugin_entry(plugin_config),
        plugin=build_plugin(interpreter=source_executable),
    )


def _install(*, conf_dir: Path, bin_dir: Path, entry: dict, plugin: PluginFiles) -> InstallResult:
    plugin_changed = False
    # the library first: a new launcher must never start without its library
    for name, data, mode in ((LIBRARY_NAME, plugin.library, 0o644), (EXECUTABLE_NAME, plugin.launcher, 0o755)):
        path = bin_dir / name
        if _read_or_none(path) != data or path.stat().st_mode & 0o777 != mode:
            bin_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, mode=mode)
            plugin_changed = True
            log.info("wrote %s", path)

    path, doc = find_primary(conf_dir)
    conflist = with_entry(as_conflist(doc, path=path), entry)
    target = path if path.suffix == ".conflist" else path.with_suffix(".conflist")
    data = render_config(conflist)
    if target == path and doc == conflist:
        return InstallResult(config_path=path, config_changed=False, plugin_changed=plugin_changed)
    mode = path.stat().st_mode & 0o777
    if target != path:
        if target.exists():
            raise InvalidConfigFile(f"{path}: cannot turn it into {target.name}, which exists already; remove one of them")
        write_atomic(target, data, mode=mode)
        path.unlink()  # the runtime prefers the lexically smaller .conf while both exist
        log.info("chained ambit-cni after %s, now %s", path.name, target)
    else:
        write_atomic(target, data, mode=mode)
        log.info("chained ambit-cni in %s", target)
    return InstallResult(config_path=target, config_changed=True, plugin_changed=plugin_changed)


def uninstall(*, conf_dir: str | os.PathLike, bin_dir: str | os.PathLike) -> list[Path]:
    """Remove our entry from every conflist in ``conf_dir``, then the plugin; returns the
    config files changed. A conflist left with no plugin (it held only ours) is removed.
    Files that are not valid CNI configs are left alone (they cannot hold our entry)."""
    conf_dir, bin_dir = Path(conf_dir), Path(bin_dir)
    changed: list[Path] = []
    for path in config_files(conf_dir):
        try:
            doc = load_config(path, path.read_bytes())
        except InvalidConfigFile as exc:
            log.warning("leaving %s alone: %s", path, exc)
            continue
        if "plugins" not in doc or not any(is_ours(p) for p in doc["plugins"]):
            continue
        stripped = without_entry(doc)
        if stripped["plugins"]:
            write_atomic(path, render_config(stripped), mode=path.stat().st_mode & 0o777)
        else:
            path.unlink()
        changed.append(path)
        log.info("removed ambit-cni from %s", path)
    for name in (EXECUTABLE_NAME, LIBRARY_NAME):
        path = bin_dir / name
        if path.exists():
            path.unlink()
            log.info("removed %s", path)
    return changed


def run(
    *,
    conf_dir: str | os.PathLike,
    bin_dir: str | os.PathLike,
    plugin_config: dict,
    source_executable: str | os.PathLike,
    stop: threading.Event,
    interval: float = 1.0,
) -> None:
    """Keep ambit-cni installed until ``stop`` is set: re-check every ``interval`` seconds.

    Bad arguments raise at once; trouble with the node's files is logged and retried (the
    primary CNI may not have written its config yet, or may be rewriting it).
    """
    conf, bins = Path(conf_dir), Path(bin_dir)
    entry = plugin_entry(plugin_config)
    plugin = build_plugin(interpreter=source_executable)
    last_problem = ""
    while not stop.is_set():
        try:
            _install(conf_dir=conf, bin_dir=bins, entry=entry, plugin=plugin)
            problem = ""
        except (InstallError, OSError) as exc:
            problem = str(exc)
        if problem != last_problem:  # log transitions, not every second
            if problem:
                log.warning("%s; retrying every %gs", problem, interval)
            else:
                log.info("ambit-cni is installed in %s and %s", conf, bins)
            last_problem = problem
        stop.wait(interval)


# ---- uninstall or upgrade? -----------------------------------------------------------------
def daemonset_gone(*, namespace: str, name: str, read=None) -> bool:
    """Is the agents' DaemonSet gone or being deleted (so this exit is an uninstall)?

    As istio-cni decides it: the DaemonSet still there and not deleting means a rolling update or
    a restart, and ambit-cni must stay chained (enrolled pods wait for the new agent instead of
    starting unprotected). 404 means uninstalled; so do 401/403, since an uninstall removes the
    agent's service account and RBAC, possibly before this pod stops. Any other failure (the API
    unreachable) keeps the plugin: failing closed is the safe side. ``read(namespace, name)``
    returns the DaemonSet's JSON (default: the in-cluster API).
    """
    from kubernetes.client.exceptions import ApiException

    if read is None:
        read = _read_daemonset
    try:
        ds = read(namespace, name)
    except ApiException as exc:
        if exc.status in (401, 403, 404):
            log.info("DaemonSet %s/%s: HTTP %s; Ambit is being uninstalled", namespace, name, exc.status)
            return True
        log.warning("cannot read DaemonSet %s/%s (HTTP %s); keeping ambit-cni chained", namespace, name, exc.status)
        return False
    except Exception as exc:  # the API is unreachable: keep the plugin (fail closed)
        log.warning("cannot read DaemonSet %s/%s (%s); keeping ambit-cni chained", namespace, name, exc)
        return False
    if (ds.get("metadata") or {}).get("deletionTimestamp"):
        log.info("DaemonSet %s/%s is being deleted; Ambit is being uninstalled", namespace, name)
        return True
    log.info("DaemonSet %s/%s is still there (a restart or rolling update); keeping ambit-cni chained", namespace, name)
    return False


def _read_daemonset(namespace: str, name: str) -> dict:
    from kubernetes import client, config

    config.load_incluster_config()
    api = client.ApiClient()
    response = client.AppsV1Api(api).read_namespaced_daemon_set(name, namespace, _preload_content=False,
                                                                 _request_timeout=5)
    return json.loads(response.data)


# ---- ambit cni-install ---------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``ambit cni-install``: install and keep installed until SIGTERM (or ``--once``)."""
    parser = argparse.ArgumentParser(prog="ambit cni-install", description="Install the ambit-cni plugin on this node.")
    parser.add_argument("--conf-dir", default="/etc/cni/net.d", help="the node's CNI config dir (default: %(default)s)")
    parser.add_argument("--bin-dir", default="/opt/cni/bin", help="the node's CNI bin dir (default: %(default)s)")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="absolute path of the Python (3.11+) on the node that runs the plugin (default: this one, %(default)s)",
    )
    parser.add_argument("--agent-socket", default=spec.DEFAULT_AGENT_SOCKET, help="the node agent's CNI socket (default: %(default)s)")
    parser.add_argument("--agent-timeout", type=float, default=spec.DEFAULT_AGENT_TIMEOUT, help="seconds the plugin waits for the agent (default: %(default)s)")
    parser.add_argument("--agent-namespace", default="ambit-system", help="the agent's own namespace, never enrolled (default: %(default)s)")
    parser.add_argument("--exclude-namespace", action="append", default=[], metavar="NS", help="another namespace the plugin never asks about (repeatable)")
    parser.add_argument(
        "--fail-open",
        action="store_true",
        help="let pods start without Ambit when the agent's socket does not exist (default: such pods wait)",
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between checks of the config (default: %(default)s)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="install once and exit")
    mode.add_argument("--uninstall", action="store_true", help="remove ambit-cni from the node and exit")
    mode.add_argument("--check", action="store_true",
                      help="exit 0 if ambit-cni is chained and installed on this node, else 1 saying why (a readiness probe)")
    parser.add_argument(
        "--uninstall-on-exit",
        action="store_true",
        help="remove ambit-cni on SIGTERM (off by default: during an agent restart enrolled pods must wait, not start unprotected)",
    )
    parser.add_argument(
        "--uninstall-if-daemonset-gone",
        metavar="NAME",
        help="on SIGTERM, remove ambit-cni only if DaemonSet NAME (in --agent-namespace) is gone or being deleted: "
        "an uninstall, not a rolling update or a restart",
    )
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.uninstall:
        uninstall(conf_dir=args.conf_dir, bin_dir=args.bin_dir)
        return 0
    if args.check:
        problem = check(conf_dir=args.conf_dir, bin_dir=args.bin_dir)
        print(problem or "ambit-cni is chained and installed", file=sys.stderr if problem else sys.stdout)
        return 1 if problem else 0
    excluded = ["kube-system", args.agent_namespace, *args.exclude_namespace]
    plugin_config = {
        "agentSocket": args.agent_socket,
        "agentTimeoutSeconds": args.agent_timeout,
        "failClosed": not args.fail_open,
        "excludeNamespaces": list(dict.fromkeys(excluded)),
    }
    try:
        if args.once:
            result = install(conf_dir=args.conf_dir, bin_dir=args.bin_dir, plugin_config=plugin_config, source_executable=args.python)
            log.info("ambit-cni chained in %s", result.config_path)
            return 0
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        run(
            conf_dir=args.conf_dir,
            bin_dir=args.bin_dir,
            plugin_config=plugin_config,
            source_executable=args.python,
            stop=stop,
            interval=args.interval,
        )
        if args.uninstall_on_exit or (
            args.uninstall_if_daemonset_gone
            and daemonset_gone(namespace=args.agent_namespace, name=args.uninstall_if_daemonset_gone)
        ):
            uninstall(conf_dir=args.conf_dir, bin_dir=args.bin_dir)
        return 0
    except InstallError as exc:
        print(f"ambit cni-install: {exc}", file=sys.stderr)
        return 1
