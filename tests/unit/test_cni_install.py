"""The installer on temporary directories: chaining, idempotence, re-patching, uninstall, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni import install as inst
from cni.errors import InstallError, InvalidConfigFile, NoPrimaryConfig

PYTHON = sys.executable
PTP = {
    "cniVersion": "1.0.0",
    "name": "podnet",
    "type": "ptp",
    "ipam": {"type": "host-local", "subnet": "10.99.0.0/24", "routes": [{"dst": "0.0.0.0/0"}]},
}
CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "podnet",
    "plugins": [
        {"type": "ptp", "ipam": {"type": "host-local", "subnet": "10.99.0.0/24"}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}
PLUGIN_CONFIG = {"agentSocket": "/run/ambit/cni.sock", "excludeNamespaces": ["kube-system", "ambit-system"]}
OURS = {"type": "ambit-cni", **PLUGIN_CONFIG}


@pytest.fixture
def dirs(tmp_path):
    conf, bins = tmp_path / "net.d", tmp_path / "bin"
    conf.mkdir()
    return conf, bins


def do_install(conf: Path, bins: Path, plugin_config=PLUGIN_CONFIG):
    return inst.install(conf_dir=conf, bin_dir=bins, plugin_config=plugin_config, source_executable=PYTHON)


def write(path: Path, doc, *, mode=0o644) -> None:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    path.chmod(mode)


def read(path: Path):
    return json.loads(path.read_text())


# ---- chaining ------------------------------------------------------------------------------
def test_conf_becomes_conflist(dirs):
    conf, bins = dirs
    write(conf / "10-ptp.conf", PTP, mode=0o600)
    result = do_install(conf, bins)
    assert result.config_path == conf / "10-ptp.conflist"
    assert result.config_changed and result.plugin_changed
    assert sorted(os.listdir(conf)) == ["10-ptp.conflist"]  # the .conf is gone, no temp files left
    assert read(conf / "10-ptp.conflist") == {"cniVersion": "1.0.0", "name": "podnet", "plugins": [PTP, OURS]}
    assert (conf / "10-ptp.conflist").stat().st_mode & 0o777 == 0o600


def test_conflist_gets_our_entry_last(dirs):
    conf, bins = dirs
    write(conf / "10-net.conflist", CONFLIST)
    do_install(conf, bins)
    assert read(conf / "10-net.conflist") == {**CONFLIST, "plugins": [*CONFLIST["plugins"], OURS]}


def test_install_is_idempotent(dirs):
    conf, bins = dirs
    write(conf / "10-ptp.conf", PTP)
    do_install(conf, bins)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for d in dirs for p in d.iterdir()}
    result = do_install(conf, bins)
    assert not result.config_changed and not result.plugin_changed
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for d in dirs for p in d.iterdir()}
    assert after == before
    assert [p["type"] for p in read(conf / "10-ptp.conflist")["plugins"]] == ["ptp", "ambit-cni"]


@pytest.mark.parametrize(
    "plugins",
    [
        [OURS, CONFLIST["plugins"][0]],
        [CONFLIST["plugins"][0], OURS, OURS],
        [CONFLIST["plugins"][0], {"type": "ambit-cni", "agentSocket": "/old/path.sock"}],
    ],
    ids=["ours-not-last", "ours-twice", "ours-stale"],
)
def test_our_entry_is_normalized(dirs, plugins):
    conf, bins = dirs
    write(conf / "10-net.conflist", {**CONFLIST, "plugins": plugins})
    assert do_install(conf, bins).config_changed
    assert read(conf / "10-net.conflist")["plugins"] == [CONFLIST["plugins"][0], OURS]


def test_patches_only_the_lexically_first_config(dirs):
    conf, bins = dirs
    write(conf / "05-first.conflist", CONFLIST)
    write(conf / "10-ptp.conf", PTP)
    write(conf / ".hidden.conflist", "garbage")
    write(conf / "README", "not a config")
    assert do_install(conf, bins).config_path == conf / "05-first.conflist"
    assert read(conf / "10-ptp.conf") == PTP


def test_skips_a_config_that_is_only_ours(dirs):
    conf, bins = dirs
    write(conf / "00-ambit.conflist", {"cniVersion": "1.0.0", "name": "x", "plugins": [OURS]})
    write(conf / "10-net.conflist", CONFLIST)
    assert do_install(conf, bins).config_path == conf / "10-net.conflist"


def test_repatches_after_the_primary_rewrites_its_config(dirs):
    conf, bins = dirs
    write(conf / "10-net.conflist", CONFLIST)
    do_install(conf, bins)
    write(conf / "10-net.conflist", CONFLIST)  # the primary CNI restarts and rewrites its file
    result = do_install(conf, bins)
    assert result.config_changed and not result.plugin_changed
    assert read(conf / "10-net.conflist")["plugins"][-1] == OURS


def test_rewrites_a_tampered_plugin(dirs):
    conf, bins = dirs
    write(conf / "10-net.conflist", CONFLIST)
    do_install(conf, bins)
    (bins / "ambit-cni").write_text("#!/bin/sh\nexit 0\n")
    (bins / "ambit-cni.pyz").chmod(0o600)
    assert do_install(conf, bins).plugin_changed
    assert (bins / "ambit-cni").read_bytes() == inst.build_plugin(interpreter=PYTHON).launcher
    assert (bins / "ambit-cni.pyz").stat().st_mode & 0o777 == 0o644


def test_run_waits_for_the_primary_and_repatches(dirs):
    conf, bins = dirs
    stop = threading.Event()
    thread = threading.Thread(
        target=inst.run,
        kwargs=dict(conf_dir=conf, bin_dir=bins, plugin_config=PLUGIN_CONFIG, source_executable=PYTHON, stop=stop, interval=0.02),
    )
    thread.start()
    try:
        time.sleep(0.1)  # no primary config yet: keeps waiting, does not crash
        assert thread.is_alive()
        write(conf / "10-net.conflist", CONFLIST)
        wait_for(lambda: read(conf / "10-net.conflist")["plugins"][-1] == OURS)
        write(conf / "10-net.conflist", CONFLIST)
        wait_for(lambda: read(conf / "10-net.conflist")["plugins"][-1] == OURS)
        write(conf / "10-net.conflist", "{garbage")  # a bad file is logged and retried
        time.sleep(0.1)
        assert thread.is_alive()
        write(conf / "10-net.conflist", CONFLIST)
        wait_for(lambda: read(conf / "10-net.conflist")["plugins"][-1] == OURS)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (ValueError, OSError):  # mid-rewrite by the test itself
            pass
        time.sleep(0.01)
    raise AssertionError("condition not met within 5s")


# ---- uninstall -----------------------------------------------------------------------------
def test_uninstall_restores_a_conflist(dirs):
    conf, bins = dirs
    write(conf / "10-net.conflist", CONFLIST)
    do_install(conf, bins)
    assert inst.uninstall(conf_dir=conf, bin_dir=bins) == [conf / "10-net.conflist"]
    assert read(conf / "10-net.conflist") == CONFLIST
    assert list(bins.iterdir()) == []


def test_uninstall_after_conversion_keeps_an_equivalent_conflist(dirs):
    conf, bins = dirs
    write(conf / "10-ptp.conf", PTP)
    do_install(conf, bins)
    inst.uninstall(conf_dir=conf, bin_dir=bins)
    assert read(conf / "10-ptp.conflist") == {"cniVersion": "1.0.0", "name": "podnet", "plugins": [PTP]}


def test_uninstall_removes_every_entry_of_ours_and_nothing_else(dirs):
    conf, bins = dirs
    write(conf / "05-old.conflist", {**CONFLIST, "plugins": [*CONFLIST["plugins"], OURS]})
    write(conf / "10-net.conflist", {**CONFLIST, "plugins": [OURS, *CONFLIST["plugins"], OURS]})
    write(conf / "20-ours.conflist", {"cniVersion": "1.0.0", "name": "x", "plugins": [OURS]})
    write(conf / "30-broken.conflist", "{garbage")
    write(conf / "40-ptp.conf", PTP)
    inst.uninstall(conf_dir=conf, bin_dir=bins)
    assert read(conf / "05-old.conflist") == CONFLIST
    assert read(conf / "10-net.conflist") == CONFLIST
    assert not (conf / "20-ours.conflist").exists()
    assert (conf / "30-broken.conflist").read_text() == "{garbage"
    assert read(conf / "40-ptp.conf") == PTP


def test_uninstall_twice_is_a_no_op(dirs):
    conf, bins = dirs
    write(conf / "10-net.conflist", CONFLIST)
    do_install(conf, bins)
    inst.uninstall(conf_dir=conf, bin_dir=bins)
    assert inst.uninstall(conf_dir=conf, bin_dir=bins) == []
    assert read(conf / "10-net.conflist") == CONFLIST


# ---- errors --------------------------------------------------------------------------------
BAD_FILES = [
    ("not-json", "{nope", "not valid JSON"),
    ("array", "[]", "expected a JSON object, got a list"),
    ("plugins-not-list", json.dumps({"name": "x", "plugins": {}}), "'plugins' must be a non-empty list"),
    ("plugins-empty", json.dumps({"name": "x", "plugins": []}), "'plugins' must be a non-empty list"),
    ("plugin-no-type", json.dumps({"name": "x", "plugins": [{"ipam": {}}]}), "plugins[0] has no string 'type'"),
    ("neither", json.dumps({"name": "x"}), "neither a .conflist"),
]


@pytest.mark.parametrize(("content", "reason"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_garbage_primary_config_names_the_file(dirs, content, reason):
    conf, bins = dirs
    write(conf / "10-net.conflist", content)
    with pytest.raises(InvalidConfigFile) as info:
        do_install(conf, bins)
    assert str(conf / "10-net.conflist") in str(info.value)
    assert reason in str(info.value)
    assert (conf / "10-net.conflist").read_text() == content


def test_conf_without_name_cannot_become_a_conflist(dirs):
    conf, bins = dirs
    write(conf / "10-ptp.conf", {k: v for k, v in PTP.items() if k != "name"})
    with pytest.raises(InvalidConfigFile, match="10-ptp.conf: a single plugin config needs a string 'name'"):
        do_install(conf, bins)


def test_conf_beside_its_conflist_name_is_refused(dirs):
    conf, bins = dirs
    write(conf / "10-ptp.conf", PTP)
    write(conf / "10-ptp.conflist", CONFLIST)
    with pytest.raises(InvalidConfigFile, match="10-ptp.conflist, which exists already"):
        do_install(conf, bins)
    assert read(conf / "10-ptp.conf") == PTP


def test_no_primary_config(dirs):
    conf, bins = dirs
    with pytest.raises(NoPrimaryConfig, match="no primary CNI config in"):
        do_install(conf, bins)


@pytest.mark.parametrize(
    ("plugin_config", "reason"),
    [
        ({"agentSockett": "/x"}, "unknown ambit-cni config keys ['agentSockett']"),
        ({"agentTimeoutSeconds": -1}, "'agentTimeoutSeconds' must be a number"),
        ({"type": "other"}, "unknown ambit-cni config keys ['type']"),
        ({"agentSocket": "relative.sock"}, "'agentSocket' must be an absolute path"),
    ],
    ids=["typo", "negative-timeout", "type", "relative-socket"],
)
def test_bad_plugin_config(dirs, plugin_config, reason):
    conf, bins = dirs
    write(conf / "10-net.conflist", CONFLIST)
    with pytest.raises(InstallError) as info:
        do_install(conf, bins, plugin_config)
    assert reason in str(info.value)
    assert read(conf / "10-net.conflist") == CONFLIST


@pytest.mark.parametrize("interpreter", ["python3", "/opt/my python/bin/python3"], ids=["relative", "space"])
def test_bad_interpreter(interpreter):
    with pytest.raises(InstallError, match="interpreter"):
        inst.build_plugin(interpreter=interpreter)


# ---- the installed plugin runs as a runtime runs it -----------------------------------------
def run_plugin(bins: Path, env: dict, stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([str(bins / "ambit-cni")], input=stdin, env=env, capture_output=True, timeout=30)


def test_launcher_runs_with_an_empty_environment(dirs):
    conf, bins = dirs
    write(conf / "10-net.conflist", CONFLIST)
    do_install(conf, bins)
    assert os.access(bins / "ambit-cni", os.X_OK)
    version = run_plugin(bins, {"CNI_COMMAND": "VERSION"}, b"")
    assert version.returncode == 0, version.stderr
    assert json.loads(version.stdout)["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.99.0.2/24"}]}
    add = run_plugin(
        bins,
        {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "c1",
            "CNI_NETNS": "/var/run/netns/x",
            "CNI_IFNAME": "eth0",
            "CNI_ARGS": "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns",
        },
        json.dumps({"cniVersion": "1.0.0", "name": "podnet", **OURS, "prevResult": prev}).encode(),
    )
    assert add.returncode == 0, add.stderr
    assert json.loads(add.stdout) == prev


def test_library_holds_exactly_what_the_plugin_imports_and_nothing_heavy(dirs):
    conf, bins = dirs
    write(conf / "10-net.conflist", CONFLIST)
    do_install(conf, bins)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import cni.plugin; "
        "print(' '.join(sorted(sys.modules)))"
    )
    out = subprocess.run([PYTHON, "-IS", "-c", probe, str(bins / "ambit-cni.pyz")], capture_output=True, text=True, check=True)
    modules = set(out.stdout.split())
    ours = {m for m in modules if m == "cni" or m.startswith("cni.")}
    assert ours == {"cni"} | {f"cni.{m}" for m in inst._PLUGIN_MODULES if m != "__init__"}
    heavy = {"node_agent", "kubernetes", "asyncio", "dataclasses", "typing", "ipaddress", "logging", "ssl", "subprocess"}
    assert modules & heavy == set()


# ---- ambit cni-install ---------------------------------------------------------------------
def test_main_once_and_uninstall(dirs):
    conf, bins = dirs
    write(conf / "10-net.conflist", CONFLIST)
    argv = ["--conf-dir", str(conf), "--bin-dir", str(bins), "--python", PYTHON, "--agent-socket", "/run/a.sock"]
    assert inst.main([*argv, "--once", "--agent-namespace", "mesh", "--exclude-namespace", "monitoring", "--fail-open"]) == 0
    assert read(conf / "10-net.conflist")["plugins"][-1] == {
        "type": "ambit-cni",
        "agentSocket": "/run/a.sock",
        "agentTimeoutSeconds": 10.0,
        "failClosed": False,
        "excludeNamespaces": ["kube-system", "mesh", "monitoring"],
    }
    assert inst.main(["--conf-dir", str(conf), "--bin-dir", str(bins), "--uninstall"]) == 0
    assert read(conf / "10-net.conflist") == CONFLIST
    assert not (bins / "ambit-cni").exists()


def test_main_reports_bad_config_files(dirs, capsys):
    conf, bins = dirs
    write(conf / "10-net.conflist", "{nope")
    assert inst.main(["--conf-dir", str(conf), "--bin-dir", str(bins), "--python", PYTHON, "--once"]) == 1
    assert "10-net.conflist: not valid JSON" in capsys.readouterr().err


@given(st.one_of(st.binary(max_size=200), st.recursive(st.none() | st.integers() | st.text(max_size=8), lambda k: st.lists(k, max_size=3) | st.dictionaries(st.sampled_from(["type", "name", "cniVersion", "plugins", "x"]), k, max_size=4), max_leaves=10).map(lambda d: json.dumps(d).encode())))
def test_any_config_file_loads_or_names_itself(data):
    path = Path("/etc/cni/net.d/10-x.conflist")
    try:
        doc = inst.load_config(path, data)
    except InvalidConfigFile as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    conflist = inst.with_entry(inst.as_conflist(doc, path=path), OURS) if "plugins" in doc or all(
        isinstance(doc.get(k), str) for k in ("name", "cniVersion")
    ) else None
    if conflist is not None:
        assert conflist["plugins"][-1] == OURS
        assert sum(inst.is_ours(p) for p in conflist["plugins"]) == 1


# ---- uninstall or rolling update? ----------------------------------------------------------
def _reader(result):
    from kubernetes.client.exceptions import ApiException

    def read(namespace, name):
        assert (namespace, name) == ("ambit-system", "ambit-node-agent")
        if isinstance(result, int):
            raise ApiException(status=result, reason="x")
        if isinstance(result, Exception):
            raise result
        return result
    return read


@pytest.mark.parametrize(
    ("answer", "gone"),
    [
        (404, True),
        (403, True),
        (401, True),
        ({"metadata": {"name": "ambit-node-agent", "deletionTimestamp": "2026-12-07T00:00:00Z"}}, True),
        ({"metadata": {"name": "ambit-node-agent"}}, False),
        (500, False),
        (ConnectionRefusedError("no API"), False),
    ],
    ids=["not-found", "rbac-gone", "sa-gone", "deleting", "still-there", "api-error", "api-unreachable"],
)
def test_uninstall_only_when_the_daemonset_is_gone(answer, gone):
    from cni.install import daemonset_gone

    assert daemonset_gone(namespace="ambit-system", name="ambit-node-agent", read=_reader(answer)) is gone


def test_check_says_whether_the_node_is_protected(tmp_path):
    from cni.install import check, install, uninstall

    conf, bins = tmp_path / "net.d", tmp_path / "bin"
    conf.mkdir()
    assert "no primary CNI config" in check(conf_dir=conf, bin_dir=bins)
    (conf / "10-ptp.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "ptp"}]}))
    assert check(conf_dir=conf, bin_dir=bins) == f"ambit-cni is not chained last in {conf / '10-ptp.conflist'}"
    install(conf_dir=conf, bin_dir=bins, plugin_config=PLUGIN_CONFIG, source_executable=sys.executable)
    assert check(conf_dir=conf, bin_dir=bins) is None
    (bins / "ambit-cni.pyz").unlink()
    assert check(conf_dir=conf, bin_dir=bins) == f"ambit-cni.pyz missing from {bins}"
    uninstall(conf_dir=conf, bin_dir=bins)
    assert "not chained" in check(conf_dir=conf, bin_dir=bins)
