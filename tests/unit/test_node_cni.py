"""CNI runtime, pure parts: config loading, plugin env/stdin, results, errors, the cache."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.config import SandboxConfig
from sandbox.node import cni
from sandbox.node.errors import CniError

LIST = {
    "cniVersion": "1.0.0",
    "name": "pods",
    "plugins": [
        {"type": "ptp", "ipam": {"type": "host-local"}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "ambit-cni", "capabilities": {"portMappings": False}},
    ],
}
RT = cni.pod_runtime_conf(container_id="c0ffee", netns="/run/netns/x-pod-1", namespace="shop", name="web-1",
                          uid="1234-5678", port_mappings=[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])


def _net(doc: dict = LIST) -> cni.NetworkList:
    return cni.parse_network_list(json.dumps(doc).encode(), source="t.conflist")


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"name": "n", "plugins": [{"type": "ptp"}]}, "no \"cniVersion\""),
        ({"cniVersion": "1.0.0", "plugins": [{"type": "ptp"}]}, "no \"name\""),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": []}, "no \"plugins\""),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"ipam": {}}]}, "plugin #0 has no \"type\""),
    ],
    ids=["no-version", "no-name", "no-plugins", "plugin-without-type"],
)
def test_invalid_lists_are_rejected_with_the_reason(doc, message):
    with pytest.raises(CniError, match=message) as err:
        _net(doc)
    assert err.value.code == cni.ERR_INVALID_NETWORK_CONFIG


def test_the_lexically_first_file_wins_and_a_conf_is_wrapped(tmp_path: Path):
    (tmp_path / "20-b.conflist").write_text(json.dumps(LIST))
    (tmp_path / "10-a.conf").write_text(json.dumps({"cniVersion": "0.4.0", "name": "single", "type": "bridge"}))
    (tmp_path / "05-ignored.txt").write_text("not a config")
    net = cni.load_network_list(tmp_path)
    assert (net.name, net.cni_version, [p["type"] for p in net.plugins]) == ("single", "0.4.0", ["bridge"])
    assert json.loads(net.raw)["plugins"][0]["type"] == "bridge"


def test_an_empty_config_dir_says_how_to_fix_it(tmp_path: Path):
    with pytest.raises(CniError, match="no network config found .*default_conflist"):
        cni.load_network_list(tmp_path)


def test_env_carries_the_pod_identity_in_cni_args():
    env = cni.plugin_env("ADD", RT, cni_path=[Path("/a"), Path("/b")], base={"PATH": "/usr/bin", "CNI_X": "old"})
    assert env == {
        "PATH": "/usr/bin",
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": "/run/netns/x-pod-1",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/a:/b",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;"
                    "K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=1234-5678",
    }


@pytest.mark.parametrize(
    "index, prev, expect_prev, expect_runtime",
    [
        (0, None, False, None),
        (1, {"cniVersion": "1.0.0", "ips": []}, True,
         {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}),
        (2, {"cniVersion": "1.0.0", "ips": []}, True, None),
    ],
    ids=["first-has-no-prevResult", "declared-capability-injected", "disabled-capability-not-injected"],
)
def test_stdin_injects_name_version_prevresult_and_capabilities(index, prev, expect_prev, expect_runtime):
    net = _net()
    conf = json.loads(cni.plugin_stdin(net, net.plugins[index], rt=RT, prev_result=prev))
    assert conf["name"] == "pods" and conf["cniVersion"] == "1.0.0"
    assert ("prevResult" in conf) is expect_prev
    if expect_prev:
        assert conf["prevResult"] == prev
    assert conf.get("runtimeConfig") == expect_runtime
    assert conf["type"] == net.plugins[index]["type"]


@pytest.mark.parametrize(
    "stdout, stderr, code, details, message",
    [
        (b'{"cniVersion":"1.0.0","code":7,"msg":"invalid config","details":"no subnet"}', b"", 7, "no subnet",
         "invalid config"),
        (b"", b'{"code":100,"msg":"agent unreachable"}', 100, "", "agent unreachable"),
        (b"", b"panic: boom\n", None, "", "exited with status 1: panic: boom"),
        (b"garbage", b"", None, "", "exited with status 1: garbage"),
    ],
    ids=["error-json-on-stdout", "error-json-on-stderr", "plain-stderr", "plain-stdout"],
)
def test_plugin_failures_become_typed_errors(stdout, stderr, code, details, message):
    err = cni.parse_error(stdout, stderr, 1, plugin="ambit-cni", command="ADD")
    assert (err.code, err.details, err.plugin, err.command) == (code, details, "ambit-cni", "ADD")
    assert message in err.msg
    assert str(err).startswith("plugin ambit-cni ADD: ")


@given(st.binary(max_size=300), st.binary(max_size=300), st.integers(min_value=1, max_value=255))
def test_parse_error_never_raises(stdout, stderr, rc):
    err = cni.parse_error(stdout, stderr, rc, plugin="p", command="DEL")
    assert isinstance(err, CniError) and err.msg


@given(st.binary(max_size=300))
def test_parse_result_returns_a_dict_or_a_decode_error(data):
    try:
        assert isinstance(cni.parse_result(data, plugin="p", command="ADD"), dict)
    except CniError as exc:
        assert exc.code == cni.ERR_DECODE


@pytest.mark.parametrize(
    "result, ips",
    [
        ({"interfaces": [{"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/p"}],
          "ips": [{"address": "10.210.1.5/24", "interface": 1}, {"address": "10.9.9.9/32", "interface": 0}]},
         ["10.210.1.5"]),
        ({"ips": [{"address": "10.210.1.6/24"}]}, ["10.210.1.6"]),
        ({"ip4": {"ip": "10.1.1.1/24"}}, ["10.1.1.1"]),
        ({}, []),
    ],
    ids=["container-interface-only", "no-interface-index", "legacy-0.2.0", "empty"],
)
def test_pod_ips_come_from_the_container_interface(result, ips):
    assert cni.result_ips(result) == ips


def test_cache_round_trip_keeps_config_args_and_result():
    net = _net()
    result = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}
    entry = cni.decode_cache(cni.encode_cache(net, RT, result), source="x")
    assert entry.network.raw == net.raw and entry.network.plugins == net.plugins
    assert entry.rt == RT
    assert entry.result == result
    raw = json.loads(cni.encode_cache(net, RT, result))
    assert raw["kind"] == "cniCacheV1" and raw["networkName"] == "pods"


def test_a_corrupt_cache_names_the_file():
    with pytest.raises(CniError, match="cache file /c/x is unreadable"):
        cni.decode_cache(b"{}", source="/c/x")


def test_port_mappings_from_host_ports():
    pod = {"spec": {"containers": [{"ports": [{"containerPort": 80, "hostPort": 8080},
                                              {"containerPort": 53, "protocol": "UDP"}]}]}}
    assert cni.port_mappings(pod) == [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]


def test_default_conflist_keeps_plugins_appended_by_others(tmp_path: Path):
    cfg = SandboxConfig(name="nodet", index=8, base_dir=tmp_path)
    path = cni.default_conflist(cfg, 1)
    assert path.name == "10-nodet.conflist"
    doc = json.loads(path.read_text())
    assert [p["type"] for p in doc["plugins"]] == ["ptp", "portmap"]
    ptp = doc["plugins"][0]
    assert (ptp["ipMasq"], ptp["mtu"]) == (False, 1500)
    assert ptp["ipam"]["ranges"] == [[{"subnet": "10.218.1.0/24", "gateway": "10.218.1.1"}]]
    doc["plugins"].append({"type": "ambit-cni", "socket": "/x"})
    path.write_text(json.dumps(doc))
    again = json.loads(cni.default_conflist(cfg, 1).read_text())
    assert [p["type"] for p in again["plugins"]] == ["ptp", "portmap", "ambit-cni"]
    assert cni.load_network_list(cfg.cni_conf_dir("node-1")).name == "nodet-pods"


def test_missing_plugin_lists_the_search_path(tmp_path: Path):
    runtime = cni.CniRuntime(conf_dir=tmp_path, cache_dir=tmp_path, plugin_dirs=[tmp_path / "bin"])
    with pytest.raises(CniError, match="failed to find plugin 'nope' in path"):
        runtime.find_plugin("nope")
    with pytest.raises(CniError, match="invalid plugin type"):
        runtime.find_plugin("../sh")


class FakeNode:
    """A node's filesystem rooted at a directory; ``mntns`` fails when ``broken``."""

    def __init__(self, root: Path, *, broken: bool = False) -> None:
        self.root, self.broken = root, broken

    def mntns(self) -> str:
        if self.broken:
            from sandbox.node.errors import NodeFsError
            raise NodeFsError("cannot make node-1's filesystem: its holder exited with 1")
        return "/proc/self/ns/mnt"

    def path(self, node_path: str) -> str:
        return str(self.root) + node_path


def test_plugins_are_found_and_named_in_the_node_filesystem(tmp_path: Path):
    node_bin = tmp_path / "opt" / "cni" / "bin"
    node_bin.mkdir(parents=True)
    (node_bin / "ambit-cni").write_text("#!/bin/sh\n")
    (node_bin / "ambit-cni").chmod(0o755)
    (tmp_path / "ambit-cni").write_text("not searched: the node's view decides")
    runtime = cni.CniRuntime(conf_dir=tmp_path, cache_dir=tmp_path, plugin_dirs=cni.NODE_PLUGIN_DIRS,
                             node_fs=FakeNode(tmp_path))
    assert runtime.find_plugin("ambit-cni") == Path("/opt/cni/bin/ambit-cni")  # as the plugin runs it
    with pytest.raises(CniError, match=r"failed to find plugin 'ptp' in path \['/opt/cni/bin', '/usr/lib/cni'\]"):
        runtime.find_plugin("ptp")


def test_a_node_filesystem_that_cannot_be_made_fails_the_plugin_call(tmp_path: Path):
    node_bin = tmp_path / "opt" / "cni" / "bin"
    node_bin.mkdir(parents=True)
    (node_bin / "ptp").write_text("#!/bin/sh\n")
    (node_bin / "ptp").chmod(0o755)
    conf = tmp_path / "etc" / "cni" / "net.d"
    conf.mkdir(parents=True)
    (conf / "10-pods.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "pods",
                                                       "plugins": [{"type": "ptp"}]}))
    runtime = cni.CniRuntime(conf_dir=conf, cache_dir=tmp_path / "cache", plugin_dirs=cni.NODE_PLUGIN_DIRS,
                             node_fs=FakeNode(tmp_path, broken=True))
    with pytest.raises(CniError, match="plugin ptp ADD: cannot make node-1's filesystem") as err:
        runtime.add(RT)
    assert err.value.code is None
    assert not (tmp_path / "cache").exists()
