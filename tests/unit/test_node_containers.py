"""Container env, command and $(VAR) expansion; the launcher's argument parsing."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.node import containers as ctr
from sandbox.node import launch
from sandbox.node.errors import ContainerError

POD = {
    "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"},
                 "annotations": {"team": "a"}},
    "spec": {"nodeName": "node-2", "serviceAccountName": "web"},
}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("$(A)-x", "1-x"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("a$b$(A)$", "a$b1$"),
        ("$(A)$(B)", "12"),
    ],
    ids=["defined", "undefined-kept", "escaped", "lone-escape", "stray-dollars", "adjacent"],
)
def test_expand_follows_kubernetes(text, expected):
    assert ctr.expand(text, {"A": "1", "B": "2"}) == expected


@given(st.text(alphabet="$()AB_x", max_size=40))
def test_expand_without_variables_only_unescapes(text):
    assert ctr.expand(text, {}) == text.replace("$$", "$")


@pytest.mark.parametrize(
    "path, value",
    [
        ("metadata.name", "web-1"),
        ("metadata.namespace", "shop"),
        ("metadata.uid", "u-1"),
        ("metadata.labels['app']", "web"),
        ("metadata.annotations['team']", "a"),
        ("spec.nodeName", "node-2"),
        ("spec.serviceAccountName", "web"),
        ("status.podIP", "10.210.2.5"),
        ("status.hostIP", "10.200.0.12"),
    ],
)
def test_field_refs(path, value):
    assert ctr.field_ref(POD, path, pod_ip="10.210.2.5", host_ip="10.200.0.12") == value


def test_unsupported_field_ref_is_a_config_error():
    with pytest.raises(ContainerError, match="fieldRef 'spec.priority' is not supported") as err:
        ctr.field_ref(POD, "spec.priority", pod_ip="", host_ip="")
    assert err.value.reason == "CreateContainerConfigError"


def test_env_has_runtime_defaults_then_the_spec_in_order():
    container = {"name": "app", "env": [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "GREETING", "value": "hi $(POD) on $(NODE)"},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "PATH", "value": "/custom:$(PATH)"},
    ]}
    env = ctr.container_env(POD, container, pod_ip="10.210.2.5", host_ip="10.200.0.12", api_host="10.200.0.1",
                            api_port=6443, python_bin=Path("/venv/bin"))
    assert env["KUBERNETES_SERVICE_HOST"] == "10.200.0.1" and env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert env["POD"] == "web-1"
    assert env["GREETING"] == "hi web-1 on $(NODE)"  # NODE is defined later: not expanded
    assert env["PATH"].startswith("/custom:/venv/bin:")
    assert env["HOSTNAME"] == "web-1"


def test_secret_refs_are_refused_with_a_hint():
    container = {"name": "app", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    with pytest.raises(ContainerError, match="valueFrom secretKeyRef is not supported"):
        ctr.container_env(POD, container, pod_ip="", host_ip="", api_host="h", api_port=1)


def test_argv_is_command_plus_args_expanded():
    c = {"name": "a", "command": ["python3", "-m", "http.server"], "args": ["$(PORT)", "--bind", "0.0.0.0"]}
    assert ctr.container_argv(c, {"PORT": "8080"}) == ["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0"]


def test_a_container_without_command_explains_images_are_not_run():
    with pytest.raises(ContainerError, match="sandbox ignores images"):
        ctr.container_argv({"name": "nginx", "image": "nginx"}, {})


@pytest.mark.parametrize("returncode, code", [(0, 0), (3, 3), (-9, 137), (-15, 143)])
def test_exit_codes_follow_container_runtimes(returncode, code):
    assert ctr.returncode_to_exit(returncode) == code


def test_launcher_argv_and_parsing_round_trip():
    binds = [launch.Bind("/s", launch.SA_MOUNT, True), launch.Bind("/v/scratch", "/tmp/work", False),
             launch.Bind("/var/run/netns", "/host/run/netns", False, True),
             launch.Bind("/etc/cni/net.d", "/host/etc/cni/net.d", True, True)]
    argv = ctr.launcher_argv(["sleep", "1"], netns_path="/run/netns/p", binds=binds,
                             scratch_dir=Path("/m"), node_mntns="/proc/9/ns/mnt", workdir="/w", ready_fd=7)
    i = argv.index("sandbox.node.launch")
    assert argv[argv.index("/var/run/netns") - 1] == "--bind-host"
    assert argv[argv.index("/etc/cni/net.d") - 1] == "--bind-host-ro"
    opts, command = launch.parse_args(argv[i + 1:])
    assert opts == launch.Options(netns="/run/netns/p", node_mntns="/proc/9/ns/mnt", scratch="/m", workdir="/w",
                                  ready_fd=7, binds=tuple(binds))
    assert command == ["sleep", "1"]


def test_exec_joins_the_container_mount_namespace_without_binds():
    argv = ctr.launcher_argv(["cat", "/x"], netns_path="/run/netns/p", mntns_path="/proc/42/ns/mnt")
    opts, command = launch.parse_args(argv[argv.index("sandbox.node.launch") + 1:])
    assert (opts.mntns, opts.netns, opts.binds, command) == ("/proc/42/ns/mnt", "/run/netns/p", (), ["cat", "/x"])


def test_mounts_are_made_parents_first():
    binds = [launch.Bind("/a", "/run/x/y/z", True), launch.Bind("/b", "/run/x", False),
             launch.Bind("/c", "/tmp/q", False)]
    assert [b.source for b in launch.mount_order(binds)] == ["/b", "/c", "/a"]


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unexpected launcher argument"),
    (["--netns", "/x"], "no command after"),
    (["--bind", "/a"], "unexpected launcher argument '--bind'"),
    (["--bind", "/a", "/b", "--", "true"], "--bind needs --scratch"),
    (["--bind-ro", "/a", "/b", "--scratch", "/m", "--mntns", "/proc/1/ns/mnt", "--", "true"], "exclude each other"),
    (["--node-mntns", "/proc/2/ns/mnt", "--mntns", "/proc/1/ns/mnt", "--", "true"], "exclude each other"),
    (["--ready-fd", "x", "--", "true"], "must be a file descriptor number"),
], ids=["unknown", "no-command", "bind-one-arg", "bind-no-scratch", "bind-and-mntns", "node-mntns-and-mntns",
        "bad-ready-fd"])
def test_launcher_rejects_bad_arguments(args, message):
    with pytest.raises(launch.SetupError, match=message):
        launch.parse_args(args)
