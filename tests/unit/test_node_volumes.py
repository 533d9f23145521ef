"""Pod volumes without root or an API: spec parsing, file plans, the atomic writer, resync logic."""
from __future__ import annotations

import base64
import os
import shutil
import socket
import stat
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.node import atomicwriter
from sandbox.node.errors import ContainerError
from sandbox.node.launch import Bind
from sandbox.node.podvolumes import PodVolumes, check_host_path
from sandbox.node.volumes import (File, HostPath, HostPathError, KeyToPath, Mount, ObjectSource, SourceError,
                                  TokenSource, Volume, VolumeError, container_mounts, parse_volumes, render)

# the pod spec Ambit's node agent uses, verbatim
AGENT_VOLUMES = [
    {"name": "ca-token", "projected": {"sources": [{"serviceAccountToken": {
        "audience": "ambit-identity", "expirationSeconds": 3600, "path": "ambit-identity"}}]}},
    {"name": "trust", "configMap": {"name": "ambit-trust-bundle", "optional": True}},
    {"name": "scratch", "emptyDir": {}},
]
AGENT = {"name": "agent", "volumeMounts": [
    {"name": "ca-token", "mountPath": "/var/run/secrets/ambit/tokens", "readOnly": True},
    {"name": "trust", "mountPath": "/var/run/ambit/trust", "readOnly": True},
    {"name": "scratch", "mountPath": "/tmp/work"},
]}


def pod(volumes: list, containers: list | None = None) -> dict:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"volumes": volumes, "containers": containers or []}}


def cm(name: str, data: dict | None = None, binary: dict | None = None) -> dict:
    obj = {"metadata": {"name": name}, "data": data or {}}
    if binary:
        obj["binaryData"] = {k: base64.b64encode(v).decode() for k, v in binary.items()}
    return obj


def secret(name: str, data: dict[str, bytes]) -> dict:
    return {"metadata": {"name": name}, "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


# ---- parsing --------------------------------------------------------------------------------------
def test_the_agent_spec_parses_into_a_plan():
    vols = parse_volumes(pod(AGENT_VOLUMES))
    assert vols == {
        "ca-token": Volume("ca-token", "projected", (TokenSource("ambit-identity", 3600, "ambit-identity"),)),
        "trust": Volume("trust", "configMap", (ObjectSource("configmap", "ambit-trust-bundle", None, True),)),
        "scratch": Volume("scratch", "emptyDir"),
    }
    assert [v.plugin_dir for v in vols.values()] == ["kubernetes.io~projected", "kubernetes.io~configmap",
                                                     "kubernetes.io~empty-dir"]
    assert container_mounts(AGENT, vols) == [
        Mount("ca-token", "/var/run/secrets/ambit/tokens", True),
        Mount("trust", "/var/run/ambit/trust", True),
        Mount("scratch", "/tmp/work", False),
    ]


def test_defaults_and_every_supported_field():
    vols = parse_volumes(pod([
        {"name": "all", "projected": {"defaultMode": 0o440, "sources": [
            {"serviceAccountToken": {"path": "token"}},
            {"configMap": {"name": "c", "items": [{"key": "k", "path": "dir/k.txt", "mode": 0o400}]}},
            {"secret": {"name": "s", "optional": True}}]}},
        {"name": "sec", "secret": {"secretName": "db", "defaultMode": 0o600}},
        {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
    ]))
    assert vols["all"] == Volume("all", "projected", (
        TokenSource("", 3600, "token"),
        ObjectSource("configmap", "c", (KeyToPath("k", "dir/k.txt", 0o400),), False),
        ObjectSource("secret", "s", None, True)), default_mode=0o440)
    assert vols["sec"] == Volume("sec", "secret", (ObjectSource("secret", "db"),), default_mode=0o600)
    assert vols["mem"] == Volume("mem", "emptyDir")


@pytest.mark.parametrize("volumes, message", [
    ([{"configMap": {"name": "c"}}], r"spec.volumes\[0\]: a volume needs a name"),
    ([{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}], 'duplicate volume name "v"'),
    ([{"name": "v"}], 'volume "v": exactly one volume type is required, found none'),
    ([{"name": "v", "emptyDir": {}, "secret": {"secretName": "s"}}], "found emptyDir and secret"),
    ([{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}], "persistentVolumeClaim volumes are not supported "
                                                                 "by the sandbox kubelet; use one of projected, "
                                                                 "configMap, secret, emptyDir, hostPath"),
    ([{"name": "v", "hostPath": "/etc"}], r'volume "v".hostPath: must be an object with a path'),
    ([{"name": "v", "hostPath": {"type": "Directory"}}], r"hostPath.path: a path on the node is required"),
    ([{"name": "v", "hostPath": {"path": "run/netns"}}], r"'run/netns' must be absolute, e.g. '/run/netns'"),
    ([{"name": "v", "hostPath": {"path": "/var/../etc"}}], r"'/var/../etc' must not contain '..'"),
    ([{"name": "v", "hostPath": {"path": "/x", "type": "Dir"}}],
     r"hostPath.type: 'Dir' is not a hostPath type; use one of \"\", DirectoryOrCreate, Directory, FileOrCreate, "
     "File, Socket, CharDevice, BlockDevice"),
    ([{"name": "v", "configMap": {}}], r'volume "v".configMap: name is required'),
    ([{"name": "v", "secret": {"name": "s"}}], r"secret: secretName is required"),
    ([{"name": "v", "configMap": {"name": "c", "items": [{"path": "x"}]}}], r"items\[0\]: a key is required"),
    ([{"name": "v", "configMap": {"name": "c", "items": [{"key": "k", "path": "/etc/x"}]}}], "must be relative"),
    ([{"name": "v", "configMap": {"name": "c", "items": [{"key": "k", "path": "a/../../x"}]}}], "must not contain '..'"),
    ([{"name": "v", "configMap": {"name": "c", "items": [{"key": "k", "path": "..data"}]}}], "start with '..'"),
    ([{"name": "v", "configMap": {"name": "c", "items": [{"key": "k", "path": "a//b"}]}}], "empty or '.' element"),
    ([{"name": "v", "configMap": {"name": "c", "defaultMode": 0o1777}}], "between 0 and 0777"),
    ([{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "expirationSeconds": 300}}]}}],
     "expirationSeconds: 300 is less than the minimum of 600"),
    ([{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "expirationSeconds": 2**33}}]}}],
     "more than the maximum"),
    ([{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"audience": "a"}}]}}], "a path is required"),
    ([{"name": "v", "projected": {"sources": [{"downwardAPI": {"items": []}}]}}],
     "downwardAPI sources are not supported by the sandbox kubelet"),
    ([{"name": "v", "projected": {"sources": [{}]}}], "exactly one source type is required, found none"),
    ([{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}},
                                              {"configMap": {"name": "c", "items": [{"key": "k", "path": "t"}]}}]}}],
     "conflicting duplicate path 't'"),
    ([{"name": "v", "emptyDir": {"medium": "HugePages-2Mi"}}], "medium 'HugePages-2Mi' is not supported"),
    ([{"name": "v", "secret": {"secretName": "s", "items": [{"key": "a", "path": "x"}, {"key": "b", "path": "x"}]}}],
     r'volume "v".secret: conflicting duplicate path'),
], ids=["no-name", "duplicate", "no-type", "two-types", "pvc", "hostPath-not-object", "hostPath-no-path",
        "hostPath-relative", "hostPath-dotdot", "hostPath-bad-type", "cm-no-name", "secret-no-secretName",
        "item-no-key", "absolute-path", "dotdot", "starts-dotdot", "empty-element", "bad-mode", "short-token",
        "long-token", "token-no-path", "downwardAPI", "empty-source", "duplicate-path", "hugepages",
        "duplicate-item-path"])
def test_bad_volume_specs_say_what_to_fix(volumes, message):
    with pytest.raises(VolumeError, match=message) as err:
        parse_volumes(pod(volumes))
    assert str(err.value)[0].islower() or str(err.value).startswith("spec.")


JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 2**34) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=12)
FIELDS = st.sampled_from(["name", "projected", "configMap", "secret", "emptyDir", "hostPath", "sources",
                          "serviceAccountToken", "audience", "expirationSeconds", "path", "items", "key", "mode",
                          "optional", "secretName", "defaultMode", "medium", "type"])
SPECISH = st.recursive(JSON, lambda inner: st.dictionaries(FIELDS, inner, max_size=4) | st.lists(inner, max_size=3),
                       max_leaves=20)


@settings(max_examples=150)
@given(st.lists(SPECISH, max_size=3) | SPECISH)
def test_any_volumes_value_parses_or_names_its_problem(volumes):
    try:
        parsed = parse_volumes({"spec": {"volumes": volumes}})
    except VolumeError as exc:
        assert str(exc) and not str(exc).startswith("BUG")
        return
    for vol in parsed.values():
        objects = {src.ref: None for src in vol.objects}
        tokens = {src.key: "t" for src in vol.tokens}
        try:
            render(vol, objects=objects, tokens=tokens)
        except SourceError as exc:
            assert "not found" in str(exc)


VOLS = parse_volumes(pod(AGENT_VOLUMES))


@pytest.mark.parametrize("mounts, message", [
    ([{"name": "nope", "mountPath": "/x"}], 'volumeMount "nope" refers to no volume in spec.volumes '
                                            r"\(volumes: ca-token, trust, scratch\)"),
    ([{"name": "trust", "mountPath": "/etc/t", "subPath": "ca.crt"}],
     "uses subPath 'ca.crt', which the sandbox kubelet does not support; mount the whole volume"),
    ([{"name": "trust", "mountPath": "/etc/t", "subPathExpr": "$(POD)"}], "uses subPathExpr"),
    ([{"name": "trust", "mountPath": "etc/t"}], "needs an absolute mountPath, got 'etc/t'"),
    ([{"name": "trust"}], "needs an absolute mountPath, got None"),
    ([{"name": "trust", "mountPath": "/"}], "would hide the whole filesystem"),
    ([{"name": "trust", "mountPath": "/a"}, {"name": "scratch", "mountPath": "/a/"}],
     'mountPath /a is already used by volumeMount "trust"'),
    ([{"name": "trust", "mountPath": "/a", "mountPropagation": "Bidirectional"}], "Bidirectional is not supported"),
], ids=["unknown-volume", "subPath", "subPathExpr", "relative", "missing", "root", "duplicate", "bidirectional"])
def test_bad_mounts_are_container_config_errors(mounts, message):
    with pytest.raises(ContainerError, match=message) as err:
        container_mounts({"name": "agent", "volumeMounts": mounts}, VOLS)
    assert err.value.reason == "CreateContainerConfigError"


def test_mount_paths_are_normalised_and_api_data_is_always_read_only():
    mounts = container_mounts({"name": "c", "volumeMounts": [
        {"name": "trust", "mountPath": "/etc//trust/./"},
        {"name": "scratch", "mountPath": "/scratch", "readOnly": True}]}, VOLS)
    assert mounts == [Mount("trust", "/etc/trust", True), Mount("scratch", "/scratch", True)]


# ---- hostPath: the spec ----------------------------------------------------------------------------
@pytest.mark.parametrize("body, host_path, on_node_1", [
    ({"path": "/var/run/netns"}, HostPath("/var/run/netns", ""), "/var/run/netns"),
    ({"path": "/var/run/netns", "type": ""}, HostPath("/var/run/netns", ""), "/var/run/netns"),
    ({"path": "/run/xtables.lock", "type": "FileOrCreate"}, HostPath("/run/xtables.lock", "FileOrCreate"),
     "/run/xtables.lock"),
    ({"path": "/s/nodes/$(NODE_NAME)/cni/net.d", "type": "DirectoryOrCreate"},
     HostPath("/s/nodes/$(NODE_NAME)/cni/net.d", "DirectoryOrCreate"), "/s/nodes/node-1/cni/net.d"),
    ({"path": "/a/$(NODE_NAME)/$(NODE_NAME).sock", "type": "Socket"},
     HostPath("/a/$(NODE_NAME)/$(NODE_NAME).sock", "Socket"), "/a/node-1/node-1.sock"),
    ({"path": "/a/$(POD_NAME)/$NODE_NAME"}, HostPath("/a/$(POD_NAME)/$NODE_NAME", ""), "/a/$(POD_NAME)/$NODE_NAME"),
    ({"path": "/dev/null", "type": "CharDevice"}, HostPath("/dev/null", "CharDevice"), "/dev/null"),
], ids=["untyped", "empty-type", "file-or-create", "node-name", "node-name-twice", "other-refs-literal",
        "char-device"])
def test_host_path_volumes_parse_and_expand_the_node_name(body, host_path, on_node_1):
    vol = parse_volumes(pod([{"name": "h", "hostPath": body}]))["h"]
    assert vol == Volume("h", "hostPath", host_path=host_path)
    assert vol.host_path.on_node("node-1") == on_node_1
    assert not vol.always_read_only and vol.sources == ()


HOST_VOLS = parse_volumes(pod([{"name": "netns", "hostPath": {"path": "/var/run/netns"}},
                               {"name": "cni", "hostPath": {"path": "/s/$(NODE_NAME)/net.d", "type": "Directory"}}]))


@pytest.mark.parametrize("mount, expected", [
    ({"name": "netns", "mountPath": "/var/run/netns"}, Mount("netns", "/var/run/netns", False)),
    ({"name": "netns", "mountPath": "/host/run/netns/", "mountPropagation": "HostToContainer"},
     Mount("netns", "/host/run/netns", False)),
    ({"name": "cni", "mountPath": "/host/etc/cni/net.d", "readOnly": True, "mountPropagation": "None"},
     Mount("cni", "/host/etc/cni/net.d", True)),
    ({"name": "netns", "mountPath": "/x", "mountPropagation": "Bidirectional"},
     "mountPropagation Bidirectional is not supported; leave it unset"),
    ({"name": "netns", "mountPath": "/x", "mountPropagation": "Shared"},
     "mountPropagation 'Shared' is not valid; use None or HostToContainer"),
], ids=["same-place", "host-to-container", "read-only-none", "bidirectional", "invalid"])
def test_host_path_mounts_are_read_write_unless_asked_and_never_bidirectional(mount, expected):
    container = {"name": "agent", "volumeMounts": [mount]}
    if isinstance(expected, Mount):
        assert container_mounts(container, HOST_VOLS) == [expected]
    else:
        with pytest.raises(ContainerError, match=expected) as err:
            container_mounts(container, HOST_VOLS)
        assert err.value.reason == "CreateContainerConfigError"


# ---- hostPath: the type check (on the filesystem) ------------------------------------------------------
def block_device(directory: Path) -> str:
    """A block device node: one of /dev's, else one made in ``directory`` (root may mknod)."""
    for entry in sorted(os.scandir("/dev"), key=lambda e: e.name):
        if stat.S_ISBLK(entry.stat(follow_symlinks=False).st_mode):
            return entry.path
    path = directory / "blk"
    os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(7, 0))  # loop0's numbers; never opened
    return str(path)


@pytest.fixture
def host(tmp_path: Path):
    """A small host tree: a directory, a file, a socket, a symlink to the directory."""
    short = Path(tempfile.mkdtemp(prefix="hp-", dir="/tmp"))  # AF_UNIX paths are short
    (short / "dir").mkdir()
    (short / "file").write_text("x")
    (short / "link").symlink_to(short / "dir")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(short / "sock"))
    try:
        yield short
    finally:
        sock.close()
        shutil.rmtree(short)


@pytest.mark.parametrize("path, htype, error", [
    ("missing", "", None),
    ("file", "", None),
    ("dir", "Directory", None),
    ("link", "Directory", None),
    ("file", "Directory", "{h}/file is not a directory"),
    ("missing", "Directory", "{h}/missing is not a directory"),
    ("dir", "DirectoryOrCreate", None),
    ("file", "DirectoryOrCreate", "{h}/file is not a directory"),
    ("file", "File", None),
    ("dir", "File", "{h}/dir is not a file"),
    ("sock", "File", "{h}/sock is not a file"),
    ("file", "FileOrCreate", None),
    ("dir", "FileOrCreate", "{h}/dir is not a file"),
    ("missing/f", "FileOrCreate",
     "cannot create {h}/missing/f: no such file or directory; FileOrCreate does not create the parent directory"),
    ("sock", "Socket", None),
    ("file", "Socket", "{h}/file is not a socket file"),
    ("/dev/null", "CharDevice", None),
    ("file", "CharDevice", "{h}/file is not a character device"),
    ("/dev/null", "BlockDevice", "/dev/null is not a block device"),
    ("file/sub", "DirectoryOrCreate", "cannot create {h}/file/sub: not a directory"),
], ids=["untyped-missing", "untyped-file", "dir", "symlink-to-dir", "file-not-dir", "missing-dir",
        "dir-or-create-exists", "dir-or-create-on-file", "file", "dir-not-file", "socket-not-file",
        "file-or-create-exists", "file-or-create-on-dir", "file-or-create-no-parent", "socket",
        "file-not-socket", "char", "file-not-char", "char-not-block", "dir-or-create-under-file"])
def test_host_path_type_check_words_failures_like_the_kubelet(host: Path, path, htype, error):
    full = path if path.startswith("/") else f"{host}/{path}"
    before = sorted(os.listdir(host))
    if error is None:
        check_host_path(full, htype)
    else:
        with pytest.raises(HostPathError) as err:
            check_host_path(full, htype)
        assert str(err.value) == "hostPath type check failed: " + error.format(h=host)
    assert sorted(os.listdir(host)) == before  # nothing made at the top level but by *OrCreate below


def test_host_path_or_create_types_make_what_is_missing(host: Path):
    check_host_path(f"{host}/dir/new/deeper", "DirectoryOrCreate")
    made = host / "dir" / "new" / "deeper"
    assert made.is_dir() and stat.S_IMODE(made.stat().st_mode) == 0o755
    check_host_path(f"{host}/dir/made.txt", "FileOrCreate")
    f = host / "dir" / "made.txt"
    assert f.read_bytes() == b"" and stat.S_IMODE(f.stat().st_mode) == 0o644
    f.write_text("kept")
    f.chmod(0o600)
    check_host_path(f"{host}/dir/made.txt", "FileOrCreate")  # exists: kept as it is
    assert f.read_text() == "kept" and stat.S_IMODE(f.stat().st_mode) == 0o600
    check_host_path(block_device(host), "BlockDevice")


def test_host_path_check_looks_at_the_node_path_where_this_process_reaches_it(host: Path):
    """The kubelet checks a node's path through the node's filesystem (``at``), naming the node's path."""
    (host / "node-root" / "run" / "ambit").mkdir(parents=True)
    check_host_path("/var/run/ambit", "Directory", at=str(host / "node-root" / "run" / "ambit"))
    check_host_path("/run/ambit/sub", "DirectoryOrCreate", at=str(host / "node-root" / "run" / "ambit" / "sub"))
    assert (host / "node-root" / "run" / "ambit" / "sub").is_dir()
    with pytest.raises(HostPathError, match=r"^hostPath type check failed: /run/ambit/cni.sock is not a socket file$"):
        check_host_path("/run/ambit/cni.sock", "Socket", at=str(host / "node-root" / "run" / "ambit" / "cni.sock"))


def test_or_create_modes_do_not_depend_on_the_umask(host: Path):
    old = os.umask(0o077)
    try:
        check_host_path(f"{host}/dir/new", "DirectoryOrCreate")
        check_host_path(f"{host}/dir/made.txt", "FileOrCreate")
    finally:
        os.umask(old)
    assert stat.S_IMODE((host / "dir" / "new").stat().st_mode) == 0o755
    assert stat.S_IMODE((host / "dir" / "made.txt").stat().st_mode) == 0o644


# ---- rendering -------------------------------------------------------------------------------------
def test_render_projects_tokens_configmaps_and_secrets_with_modes():
    vol = parse_volumes(pod([{"name": "v", "projected": {"sources": [
        {"serviceAccountToken": {"audience": "aud", "path": "tok"}},
        {"configMap": {"name": "c", "items": [{"key": "bundle", "path": "trust/ca.crt", "mode": 0o444}]}},
        {"secret": {"name": "s"}}]}}]))["v"]
    files = render(vol, objects={("configmap", "c"): cm("c", {"bundle": "PEM", "other": "x"}),
                                 ("secret", "s"): secret("s", {"key.pem": b"\x00\xffkey"})},
                   tokens={("aud", 3600): "jwt"})
    assert files == {"tok": File(b"jwt", 0o644), "trust/ca.crt": File(b"PEM", 0o444),
                     "key.pem": File(b"\x00\xffkey", 0o644)}


def test_render_configmap_binary_data_and_every_key():
    vol = Volume("v", "configMap", (ObjectSource("configmap", "c"),), default_mode=0o400)
    files = render(vol, objects={("configmap", "c"): cm("c", {"a": "text"}, {"b": b"\x01\x02"})}, tokens={})
    assert files == {"a": File(b"text", 0o400), "b": File(b"\x01\x02", 0o400)}


@pytest.mark.parametrize("source, objects, result", [
    (ObjectSource("configmap", "c", optional=True), {("configmap", "c"): None}, {}),
    (ObjectSource("configmap", "c", (KeyToPath("missing", "m"),), optional=True),
     {("configmap", "c"): cm("c", {"k": "v"})}, {}),
    (ObjectSource("configmap", "c"), {("configmap", "c"): None}, 'configmap "c" not found'),
    (ObjectSource("secret", "s"), {("secret", "s"): None}, 'secret "s" not found'),
    (ObjectSource("configmap", "c", (KeyToPath("missing", "m"),)), {("configmap", "c"): cm("c", {"k": "v"})},
     r'configmap references non-existent config key: missing \(configmap "c" has k\)'),
    (ObjectSource("secret", "s", (KeyToPath("missing", "m"),)), {("secret", "s"): secret("s", {})},
     r"secret references non-existent secret key: missing \(secret \"s\" has no keys\)"),
    (ObjectSource("secret", "s"), {("secret", "s"): {"metadata": {"name": "s"}, "data": {"k": "!!"}}},
     r"secret \"s\": data\['k'\] is not valid base64"),
    (ObjectSource("configmap", "c"), {("configmap", "c"): cm("c", {"..data": "x"})}, "must not contain '..'"),
], ids=["optional-missing", "optional-missing-key", "missing", "secret-missing", "missing-key",
        "secret-missing-key", "bad-base64", "bad-key-name"])
def test_missing_sources(source, objects, result):
    vol = Volume("v", "projected", (source,))
    if isinstance(result, dict):
        assert render(vol, objects=objects, tokens={}) == result
    else:
        with pytest.raises(VolumeError, match=result):
            render(vol, objects=objects, tokens={})


def test_a_missing_object_is_retryable_and_a_file_directory_clash_is_reported():
    vol = Volume("v", "configMap", (ObjectSource("configmap", "c"),))
    with pytest.raises(SourceError):
        render(vol, objects={}, tokens={})
    clash = Volume("v", "projected", (ObjectSource("configmap", "a"), ObjectSource("configmap", "b", (
        KeyToPath("k", "x/y"),))))
    with pytest.raises(SourceError, match="'x' is both a file and a directory"):
        render(clash, objects={("configmap", "a"): cm("a", {"x": "1"}), ("configmap", "b"): cm("b", {"k": "2"})},
               tokens={})


# ---- the atomic writer ------------------------------------------------------------------------------
def listing(d: Path) -> dict[str, str]:
    return {p.name: os.readlink(p) for p in d.iterdir() if p.is_symlink()}


def test_atomic_writer_layout_updates_and_removals(tmp_path: Path):
    d = tmp_path / "vol"
    atomicwriter.write(d, {"a": File(b"1", 0o644), "sub/b": File(b"2", 0o600)})
    first = atomicwriter.current_payload_dir(d)
    assert listing(d) == {"..data": first.name, "a": "..data/a", "sub": "..data/sub"}
    assert (d / "a").read_bytes() == b"1" and (d / "sub" / "b").read_bytes() == b"2"
    assert (d / "sub" / "b").stat().st_mode & 0o777 == 0o600

    atomicwriter.write(d, {"a": File(b"1'", 0o644), "c": File(b"3", 0o644)})
    second = atomicwriter.current_payload_dir(d)
    assert second != first and not first.exists()
    assert listing(d) == {"..data": second.name, "a": "..data/a", "c": "..data/c"}
    assert (d / "a").read_bytes() == b"1'" and not (d / "sub").exists()
    assert sorted(p.name for p in d.iterdir()) == sorted(["..data", second.name, "a", "c"])

    atomicwriter.write(d, {})
    assert listing(d) == {"..data": atomicwriter.current_payload_dir(d).name}
    assert [p for p in d.iterdir() if not p.name.startswith("..")] == []


def test_a_reader_sees_the_old_or_the_new_file_never_a_mix(tmp_path: Path):
    d = tmp_path / "vol"
    versions = [bytes([65 + i]) * 200_000 for i in range(4)]
    atomicwriter.write(d, {"cert.pem": File(versions[0], 0o644)})
    stop = threading.Event()
    seen, bad = set(), []

    def reader():
        while not stop.is_set():
            try:
                data = (d / "cert.pem").read_bytes()
            except FileNotFoundError:
                continue  # the old payload dir was removed while the path was being resolved
            if data in versions:
                seen.add(data[:1])
            else:
                bad.append(len(data))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(60):
            atomicwriter.write(d, {"cert.pem": File(versions[i % 4], 0o644)})
    finally:
        stop.set()
        t.join()
    assert bad == [] and len(seen) >= 2


@settings(max_examples=60)
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.-]{0,8}(/[a-z][a-z0-9_-]{0,8})?", fullmatch=True),
                       st.binary(max_size=64), max_size=6))
def test_atomic_writer_holds_exactly_the_payload(tmp_path_factory, payload):
    files = {k: File(v, 0o644) for k, v in payload.items()}
    heads = {k.split("/")[0] for k in files}
    if any(k in heads and "/" not in k and any(o.startswith(k + "/") for o in files) for k in files):
        return  # a file that is also a directory: render() rejects it before the writer sees it
    d = tmp_path_factory.mktemp("w") / "vol"
    atomicwriter.write(d, {"old": File(b"x", 0o644)})
    atomicwriter.write(d, files)
    got = {}
    for top, dirs, names in os.walk(d, followlinks=True):
        dirs[:] = [n for n in dirs if not n.startswith("..")]
        for n in names:
            if not n.startswith(".."):
                path = Path(top, n)
                got[str(path.relative_to(d))] = path.read_bytes()
    assert got == payload


# ---- PodVolumes: retries and resync, with fake sources and clock -------------------------------------
class FakeSources:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict] = {}
        self.tokens: list[tuple[str, int]] = []
        self.fail_reads = False

    def read_object(self, kind: str, name: str) -> dict | None:
        if self.fail_reads:
            raise ConnectionError("connection refused")
        return self.objects.get((kind, name))

    def request_token(self, *, audience: str, expiration_seconds: int) -> tuple[str, float]:
        import time
        self.tokens.append((audience, expiration_seconds))
        return f"tok-{audience}-{len(self.tokens)}", time.time() + expiration_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pod_volumes_wait_for_a_missing_configmap_then_follow_its_updates(tmp_path: Path):
    spec = pod([*AGENT_VOLUMES, {"name": "cfg", "configMap": {"name": "app", "items": [{"key": "k", "path": "k"}]}}])
    sources, clock = FakeSources(), Clock()
    pv = PodVolumes(pod=spec, node="node-1", root=tmp_path / "volumes", sources=sources, resync=10.0, clock=clock)

    assert pv.setup() == ['MountVolume.SetUp failed for volume "cfg" : configmap "app" not found']
    assert not pv.ready
    tokens = pv.dir(pv.volumes["ca-token"])
    assert (tokens / "ambit-identity").read_text() == "tok-ambit-identity-1"
    assert (pv.dir(pv.volumes["trust"]) / "..data").is_symlink()
    assert [n for n in os.listdir(pv.dir(pv.volumes["trust"])) if not n.startswith("..")] == []  # optional: empty
    assert pv.dir(pv.volumes["scratch"]).is_dir()

    sources.objects[("configmap", "app")] = cm("app", {"k": "v1"})
    assert pv.setup() == [] and pv.ready
    assert sources.tokens == [("ambit-identity", 3600)]  # not requested again
    cfg = pv.dir(pv.volumes["cfg"])
    assert (cfg / "k").read_text() == "v1"

    sources.objects[("configmap", "app")] = cm("app", {"k": "v2"})
    sources.objects[("configmap", "ambit-trust-bundle")] = cm("ambit-trust-bundle", {"ca.crt": "PEM"})
    clock.now += 5
    assert pv.sync() == [] and (cfg / "k").read_text() == "v1"  # not due yet
    clock.now += 5
    assert pv.next_due <= clock.now
    assert pv.sync() == []
    assert (cfg / "k").read_text() == "v2"
    assert (pv.dir(pv.volumes["trust"]) / "ca.crt").read_text() == "PEM"

    del sources.objects[("configmap", "app")]  # deleted: keep the last content, warn
    clock.now += 10
    assert pv.sync() == ['MountVolume.SetUp failed for volume "cfg" : configmap "app" not found']
    assert (cfg / "k").read_text() == "v2"

    sources.fail_reads = True  # the API is down: nothing changes, nothing is lost
    clock.now += 10
    assert pv.sync() == [] and (cfg / "k").read_text() == "v2"


def test_pod_volumes_refresh_tokens_at_80_percent_of_their_life(tmp_path: Path):
    spec = pod([AGENT_VOLUMES[0], {"name": "other", "projected": {"sources": [
        {"serviceAccountToken": {"audience": "ambit-identity", "expirationSeconds": 3600, "path": "again"}},
        {"serviceAccountToken": {"expirationSeconds": 7200, "path": "api"}}]}}])
    sources, clock = FakeSources(), Clock()
    pv = PodVolumes(pod=spec, node="node-1", root=tmp_path / "volumes", sources=sources, resync=10.0, clock=clock)
    assert pv.setup() == [] and pv.ready
    assert sorted(sources.tokens) == [("", 7200), ("ambit-identity", 3600)]  # one request per audience+ttl
    assert abs(pv.next_due - (clock.now + 2880)) < 2
    clock.now += 2881
    assert pv.sync() == []
    assert sources.tokens[-1] == ("ambit-identity", 3600) and len(sources.tokens) == 3
    token_file = pv.dir(pv.volumes["ca-token"]) / "ambit-identity"
    assert token_file.read_text() == "tok-ambit-identity-3"
    assert (pv.dir(pv.volumes["other"]) / "again").read_text() == "tok-ambit-identity-3"


def test_pod_volumes_check_host_paths_on_this_node_and_retry_until_they_pass(tmp_path: Path):
    spec = pod([
        {"name": "cni", "hostPath": {"path": f"{tmp_path}/nodes/$(NODE_NAME)/cni/net.d", "type": "DirectoryOrCreate"}},
        {"name": "sock", "hostPath": {"path": f"{tmp_path}/$(NODE_NAME).sock", "type": "Socket"}},
        {"name": "netns", "hostPath": {"path": "/var/run/netns"}},
        {"name": "later", "hostPath": {"path": f"{tmp_path}/later"}},
    ])
    pv = PodVolumes(pod=spec, node="node-2", root=tmp_path / "volumes", sources=FakeSources(), resync=10.0)
    assert pv.setup() == [f'MountVolume.SetUp failed for volume "sock" : hostPath type check failed: '
                          f"{tmp_path}/node-2.sock is not a socket file"]
    assert not pv.ready
    assert (tmp_path / "nodes" / "node-2" / "cni" / "net.d").is_dir()  # made for this node only
    assert not (tmp_path / "nodes" / "$(NODE_NAME)").exists()
    assert not (tmp_path / "volumes" / "kubernetes.io~host-path").exists()  # nothing is copied

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "node-2.sock"))
        assert pv.setup() == [] and pv.ready
    assert pv.next_due == float("inf")  # nothing to resync

    agent = {"name": "agent", "volumeMounts": [
        {"name": "cni", "mountPath": "/host/etc/cni/net.d"},
        {"name": "sock", "mountPath": "/var/run/ambit/agent.sock", "readOnly": True},
        {"name": "netns", "mountPath": "/var/run/netns", "mountPropagation": "HostToContainer"}]}
    assert pv.binds(agent) == [
        Bind(f"{tmp_path}/nodes/node-2/cni/net.d", "/host/etc/cni/net.d", False, True),
        Bind(f"{tmp_path}/node-2.sock", "/var/run/ambit/agent.sock", True, True),
        Bind("/var/run/netns", "/var/run/netns", False, True),
    ]
    # an untyped hostPath is not checked at setup, but a container cannot start while it is missing
    late = {"name": "late", "volumeMounts": [{"name": "later", "mountPath": "/later"}]}
    with pytest.raises(ContainerError, match=f"hostPath {tmp_path}/later does not exist; create it, or give the "
                                             "volume type DirectoryOrCreate or FileOrCreate") as err:
        pv.binds(late)
    assert err.value.reason == "CreateContainerError"
    (tmp_path / "later").mkdir()
    assert pv.binds(late) == [Bind(f"{tmp_path}/later", "/later", False, True)]
