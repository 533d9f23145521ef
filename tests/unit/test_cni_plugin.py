"""The plugin's handling of its input and of the agent's answers, without processes or sockets."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni import plugin, spec
from cni.errors import AgentAbsent, AgentTimeout, AgentUnreachable, ProtocolError
from cni.protocol import CniResponse

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:01"},
        {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/var/run/netns/pod"},
    ],
    "ips": [
        {"address": "10.210.0.7/24", "interface": 1, "gateway": "10.210.0.1"},
        {"address": "10.210.0.1/32", "interface": 0},
    ],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}


def conf(**overrides) -> dict:
    doc = {
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "ambit-cni",
        "agentSocket": "/run/ambit/cni.sock",
        "prevResult": PREV,
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not DROP}


DROP = object()


def env(command: str = "ADD", **overrides) -> dict:
    doc = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": "/var/run/netns/pod",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_UID=u-1",
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not DROP}


class FakeAgent:
    """Records questions; answers with ``answer`` (a CniResponse, or an exception to raise)."""

    def __init__(self, answer=CniResponse("enrolled", "")) -> None:
        self.answer = answer
        self.asked: list[tuple] = []

    def __call__(self, path, request, *, timeout):
        self.asked.append((path, request, timeout))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def run(environ: dict, stdin, agent: FakeAgent | None = None):
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    code, out = plugin.run(env=environ, stdin=data, ask=agent or FakeAgent())
    return code, (json.loads(out) if out else None)


# ---- malformed input: every case has its code and message ---------------------------------
MALFORMED = [
    ("no-command", env(CNI_COMMAND=DROP), conf(), 4, "CNI_COMMAND is not set"),
    ("unknown-command", env("UPDATE"), conf(), 4, "unknown CNI_COMMAND 'UPDATE'"),
    ("add-no-containerid", env(CNI_CONTAINERID=DROP), conf(), 4, "CNI_CONTAINERID is not set for ADD"),
    ("bad-containerid", env(CNI_CONTAINERID="a/b"), conf(), 4, "contains invalid characters '/'"),
    ("add-no-netns", env(CNI_NETNS=DROP), conf(), 4, "CNI_NETNS is not set for ADD"),
    ("check-no-netns", env("CHECK", CNI_NETNS=""), conf(), 4, "CNI_NETNS is not set for CHECK"),
    ("add-no-ifname", env(CNI_IFNAME=DROP), conf(), 4, "CNI_IFNAME is not set for ADD"),
    ("del-no-containerid", env("DEL", CNI_CONTAINERID=DROP), conf(), 4, "CNI_CONTAINERID is not set for DEL"),
    ("bad-cni-args", env(CNI_ARGS="K8S_POD_NAME"), conf(), 4, "CNI_ARGS has an invalid pair 'K8S_POD_NAME'"),
    ("not-json", env(), b"{nope", 6, "not valid JSON"),
    ("not-utf8", env(), b"\xff\xfe{}", 6, "not valid JSON"),
    ("empty-stdin", env(), b"", 6, "not valid JSON"),
    ("json-array", env(), [1, 2], 6, "not a JSON object"),
    ("no-cniversion", env(), conf(cniVersion=DROP), 7, "has no 'cniVersion'"),
    ("no-name", env(), conf(name=DROP), 7, "has no 'name'"),
    ("no-type", env(), conf(type=DROP), 7, "has no 'type'"),
    ("numeric-version", env(), conf(cniVersion=1), 7, "'cniVersion' must be a non-empty string"),
    ("old-version", env(), conf(cniVersion="0.2.0"), 1, "cniVersion '0.2.0' is not supported"),
    ("future-version", env(), conf(cniVersion="2.0.0"), 1, "cniVersion '2.0.0' is not supported"),
    ("check-on-0.3.1", env("CHECK"), conf(cniVersion="0.3.1"), 1, "CHECK is not defined for cniVersion 0.3.1"),
    ("relative-socket", env(), conf(agentSocket="cni.sock"), 7, "'agentSocket' must be an absolute path"),
    ("zero-timeout", env(), conf(agentTimeoutSeconds=0), 7, "'agentTimeoutSeconds' must be a number"),
    ("bool-timeout", env(), conf(agentTimeoutSeconds=True), 7, "'agentTimeoutSeconds' must be a number"),
    ("string-failclosed", env(), conf(failClosed="yes"), 7, "'failClosed' must be true or false"),
    ("bad-exclude", env(), conf(excludeNamespaces="kube-system"), 7, "'excludeNamespaces' must be a list"),
    ("add-unchained", env(), conf(prevResult=DROP), 7, "must be chained after a primary plugin"),
    ("check-unchained", env("CHECK"), conf(prevResult=DROP), 7, "must be chained after a primary plugin"),
    ("prevresult-list", env(), conf(prevResult=[]), 7, "'prevResult' must be a JSON object"),
    ("prevresult-bad-ip", env(), conf(prevResult={"ips": [{"address": 7}]}), 7, "prevResult.ips[0].address"),
    ("prevresult-ips-dict", env(), conf(prevResult={"ips": {}}), 7, "'ips' and 'interfaces' must be lists"),
]


@pytest.mark.parametrize(("environ", "stdin", "code", "msg"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_input_is_a_cni_error(environ, stdin, code, msg):
    agent = FakeAgent()
    status, out = run(environ, stdin, agent)
    assert status == 1
    assert set(out) == {"cniVersion", "code", "msg", "details"}
    assert out["code"] == code
    assert msg in out["msg"]
    assert agent.asked == []  # bad input never reaches the agent


def test_error_result_uses_the_configs_version_when_readable():
    _, out = run(env(CNI_NETNS=DROP), conf(cniVersion="0.4.0"))
    assert out["cniVersion"] == "0.4.0"
    _, out = run(env(), b"{nope")
    assert out["cniVersion"] == "1.0.0"


# ---- VERSION --------------------------------------------------------------------------------
@pytest.mark.parametrize("stdin", [b'{"cniVersion": "1.0.0"}', b"", b"garbage"], ids=["config", "empty", "garbage"])
def test_version_lists_supported_versions(stdin):
    status, out = run({"CNI_COMMAND": "VERSION"}, stdin)
    assert status == 0
    assert out == {"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}


# ---- ADD -----------------------------------------------------------------------------------
@pytest.mark.parametrize("version", spec.SUPPORTED_VERSIONS)
def test_add_enrolled_passes_prev_result_through_in_the_configs_version(version):
    agent = FakeAgent(CniResponse("enrolled", ""))
    prev = {**PREV, "cniVersion": version}
    status, out = run(env(), conf(cniVersion=version, prevResult=prev), agent)
    assert status == 0
    assert out == {**PREV, "cniVersion": version}
    [(path, request, timeout)] = agent.asked
    assert path == "/run/ambit/cni.sock"
    assert timeout == spec.DEFAULT_AGENT_TIMEOUT
    assert request.command == "ADD"
    assert (request.pod_namespace, request.pod_name, request.pod_uid) == ("shop", "web-1", "u-1")
    assert (request.container_id, request.netns, request.interface) == ("c0ffee", "/var/run/netns/pod", "eth0")
    assert request.ips == ("10.210.0.7",)  # not the host side's 10.210.0.1


def test_add_not_enrolled_passes_through():
    status, out = run(env(), conf(), FakeAgent(CniResponse("not_enrolled", "")))
    assert (status, out) == (0, PREV)


def test_add_uses_configured_timeout():
    agent = FakeAgent()
    run(env(), conf(agentTimeoutSeconds=2.5), agent)
    assert agent.asked[0][2] == 2.5


@pytest.mark.parametrize(
    "environ,config",
    [
        (env(CNI_ARGS="K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1"), conf()),
        (env(CNI_ARGS="K8S_POD_NAMESPACE=ambit-system;K8S_POD_NAME=ambit-node-x"), conf(excludeNamespaces=["kube-system", "ambit-system"])),
        (env(CNI_ARGS=""), conf()),
        (env(CNI_ARGS="K8S_POD_NAMESPACE=shop"), conf()),
    ],
    ids=["kube-system-default", "agent-namespace", "not-kubernetes", "no-pod-name"],
)
def test_add_fast_path_never_asks(environ, config):
    agent = FakeAgent(AgentAbsent("must not be asked"))
    status, out = run(environ, config, agent)
    assert (status, out) == (0, PREV)
    assert agent.asked == []


AGENT_FAILURES = [
    ("absent-fail-closed", AgentAbsent("no agent socket at /run/ambit/cni.sock"), {}, 11, "is not running on this node"),
    ("unreachable", AgentUnreachable("nothing listens"), {}, 11, "is unreachable"),
    ("unreachable-fail-open", AgentUnreachable("nothing listens"), {"failClosed": False}, 11, "is unreachable"),
    ("timeout", AgentTimeout("no answer"), {}, 11, "did not set up pod shop/web-1 within 10s"),
    ("garbled", ProtocolError("frame announces 0 bytes"), {}, 101, "was not understood"),
    ("agent-error", CniResponse("error", "iptables-restore failed"), {}, 100, "could not set up pod shop/web-1"),
]


@pytest.mark.parametrize(("answer", "config", "code", "msg"), [c[1:] for c in AGENT_FAILURES], ids=[c[0] for c in AGENT_FAILURES])
def test_add_fails_closed(answer, config, code, msg):
    status, out = run(env(), conf(**config), FakeAgent(answer))
    assert status == 1
    assert out["code"] == code
    assert msg in out["msg"]
    assert out["details"]


def test_add_agent_error_message_is_in_details():
    _, out = run(env(), conf(), FakeAgent(CniResponse("error", "iptables-restore failed: line 3")))
    assert out["details"] == "iptables-restore failed: line 3"


def test_add_absent_agent_with_fail_open_passes_through(capsys):
    status, out = run(env(), conf(failClosed=False), FakeAgent(AgentAbsent("no agent socket at /x")))
    assert (status, out) == (0, PREV)
    assert "starts without Ambit" in capsys.readouterr().err


# ---- DEL -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer",
    [
        CniResponse("enrolled", ""),
        CniResponse("not_enrolled", ""),
        CniResponse("error", "boom"),
        AgentAbsent("gone"),
        AgentUnreachable("refused"),
        AgentTimeout("slow"),
        ProtocolError("garbage"),
    ],
    ids=["enrolled", "not-enrolled", "agent-error", "absent", "unreachable", "timeout", "garbled"],
)
def test_del_never_fails_over_the_agent(answer):
    agent = FakeAgent(answer)
    status, out = run(env("DEL", CNI_NETNS=""), conf(prevResult=DROP), agent)
    assert (status, out) == (0, None)
    [(_, request, timeout)] = agent.asked
    assert request.command == "DEL" and request.netns == ""
    assert timeout == plugin.DEL_TIMEOUT_CAP


def test_del_tolerates_a_malformed_prev_result():
    agent = FakeAgent()
    status, _ = run(env("DEL"), conf(prevResult={"ips": "nope"}), agent)
    assert status == 0
    assert agent.asked[0][1].ips == ()


# ---- CHECK ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "config", "code"),
    [
        (CniResponse("enrolled", ""), {}, None),
        (CniResponse("not_enrolled", ""), {}, None),
        (AgentAbsent("gone"), {"failClosed": False}, None),
        (AgentAbsent("gone"), {}, 11),
        (AgentTimeout("slow"), {}, 11),
        (CniResponse("error", "AMBIT_OUTPUT is missing"), {}, 100),
    ],
    ids=["enrolled", "not-enrolled", "absent-fail-open", "absent", "timeout", "rules-missing"],
)
def test_check(answer, config, code):
    status, out = run(env("CHECK"), conf(**config), FakeAgent(answer))
    if code is None:
        assert (status, out) == (0, None)
    else:
        assert status == 1 and out["code"] == code


# ---- any input: an answer, never a crash ---------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=15,
)
config_keys = st.sampled_from(
    ["cniVersion", "name", "type", "prevResult", "agentSocket", "agentTimeoutSeconds", "failClosed", "excludeNamespaces"]
)


def assert_well_formed(status: int, out: bytes) -> None:
    assert status in (0, 1)
    if status == 1:
        doc = json.loads(out)
        assert isinstance(doc["code"], int) and doc["msg"] and isinstance(doc["details"], str)
        assert doc["cniVersion"] in spec.SUPPORTED_VERSIONS
    elif out:
        assert isinstance(json.loads(out), dict)


@settings(max_examples=300)
@given(
    st.sampled_from(["ADD", "DEL", "CHECK", "VERSION"]),
    st.one_of(st.binary(max_size=200), st.dictionaries(config_keys, json_values, max_size=8).map(lambda d: json.dumps(d).encode())),
    st.text(max_size=60),
)
def test_any_input_gets_a_well_formed_answer(command, stdin, cni_args):
    environ = env(command, CNI_ARGS=cni_args)
    status, out = plugin.run(env=environ, stdin=stdin, ask=FakeAgent(CniResponse("not_enrolled", "")))
    assert_well_formed(status, out)


@settings(max_examples=200)
@given(st.dictionaries(config_keys, json_values, max_size=8))
def test_any_config_around_a_valid_core_is_handled(extra):
    doc = {**conf(), **extra}
    status, out = plugin.run(env=env(), stdin=json.dumps(doc).encode(), ask=FakeAgent(CniResponse("enrolled", "")))
    assert_well_formed(status, out)
    if status == 0:
        assert json.loads(out) == {**doc["prevResult"], "cniVersion": doc["cniVersion"]}
