"""The pure part of in-pod redirection: the rules, restore input, iptables-save parsing, assessment."""
from __future__ import annotations

import ipaddress
import socket
import struct
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_agent.inpod import redirect_iptables as rd
from node_agent.inpod.errors import RedirectError
from node_agent.proxy.sockets import parse_sockaddr

POD = rd.pod_rules()


def dump_of(*rules: str, chains: tuple[str, ...] = ()) -> rd.TableDump:
    declared = set(chains) | {r.split()[1] for r in rules}
    return rd.TableDump(frozenset(declared | {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}), tuple(rules))


INSTALLED = dump_of(
    "-A PREROUTING -j AMBIT_PREROUTING",
    "-A OUTPUT -j AMBIT_OUTPUT",
    *POD["AMBIT_OUTPUT"],
    *POD["AMBIT_PREROUTING"],
)


def test_pod_rules_are_exactly_the_documented_ones():
    assert POD == {
        "AMBIT_PREROUTING": (
            "-A AMBIT_PREROUTING -m mark --mark 0x539 -j RETURN",
            "-A AMBIT_PREROUTING -i lo -j RETURN",
            "-A AMBIT_PREROUTING -s 169.254.7.127/32 -p tcp -j RETURN",
            "-A AMBIT_PREROUTING -p tcp -m tcp --dport 15008 -j RETURN",
            "-A AMBIT_PREROUTING -p tcp -j REDIRECT --to-ports 15006",
        ),
        "AMBIT_OUTPUT": (
            "-A AMBIT_OUTPUT -m mark --mark 0x539 -j RETURN",
            "-A AMBIT_OUTPUT -o lo -j RETURN",
            "-A AMBIT_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
        ),
    }


def test_settings_change_ports_and_mark():
    rules = rd.pod_rules(rd.RedirectSettings(mark=0x1000, outbound_port=16001, inbound_port=16006, tunnel_port=16008))
    text = "\n".join(r for chain in rules.values() for r in chain)
    assert "--mark 0x1000 " in text and "--to-ports 16001" in text and "--to-ports 16006" in text and "--dport 16008" in text


@pytest.mark.parametrize(
    "kwargs", [{"outbound_port": 0}, {"tunnel_port": 70000}, {"mark": 0}], ids=["port-0", "port-too-big", "mark-0"]
)
def test_bad_settings_name_the_field(kwargs):
    with pytest.raises(ValueError, match=f"RedirectSettings.{next(iter(kwargs))}"):
        rd.RedirectSettings(**kwargs)


def test_ipv6_rules_use_the_ipv6_probe_source():
    assert "-A AMBIT_PREROUTING -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -j RETURN" in rd.pod_rules(ipv6=True)["AMBIT_PREROUTING"]


# ---- restore input -------------------------------------------------------------------------
def restore_lines(current: rd.TableDump) -> list[str]:
    return rd.render_sync(POD, hooks=rd.POD_HOOKS, current=current).splitlines()


def test_fresh_install_declares_flushes_fills_and_hooks_first():
    lines = restore_lines(rd.TableDump())
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    assert lines[1:5] == [":AMBIT_PREROUTING - [0:0]", ":AMBIT_OUTPUT - [0:0]", "-F AMBIT_PREROUTING", "-F AMBIT_OUTPUT"]
    assert lines[5:13] == [*POD["AMBIT_PREROUTING"], *POD["AMBIT_OUTPUT"]]
    assert lines[13:15] == ["-I PREROUTING 1 -j AMBIT_PREROUTING", "-I OUTPUT 1 -j AMBIT_OUTPUT"]


@pytest.mark.parametrize(
    ("current", "hook_lines"),
    [
        (INSTALLED, []),
        (dump_of("-A OUTPUT -j AMBIT_OUTPUT", chains=("AMBIT_OUTPUT",)), ["-I PREROUTING 1 -j AMBIT_PREROUTING"]),
        (
            dump_of("-A PREROUTING -j AMBIT_PREROUTING", "-A PREROUTING -j AMBIT_PREROUTING", "-A PREROUTING -j AMBIT_PREROUTING", "-A OUTPUT -j AMBIT_OUTPUT"),
            ["-D PREROUTING -j AMBIT_PREROUTING", "-D PREROUTING -j AMBIT_PREROUTING"],
        ),
        (dump_of("-A OUTPUT -p udp -j AMBIT_OUTPUT"), ["-I PREROUTING 1 -j AMBIT_PREROUTING", "-I OUTPUT 1 -j AMBIT_OUTPUT"]),
    ],
    ids=["installed", "one-hook-missing", "hook-thrice", "foreign-jump-is-not-our-hook"],
)
def test_hooks_end_up_exactly_once(current, hook_lines):
    lines = restore_lines(current)
    assert [l for l in lines if l.startswith(("-I ", "-D "))] == hook_lines


def test_remove_input():
    assert rd.render_remove(POD, hooks=rd.POD_HOOKS, current=INSTALLED).splitlines() == [
        "*nat",
        "-D PREROUTING -j AMBIT_PREROUTING",
        "-D OUTPUT -j AMBIT_OUTPUT",
        "-F AMBIT_PREROUTING",
        "-F AMBIT_OUTPUT",
        "-X AMBIT_PREROUTING",
        "-X AMBIT_OUTPUT",
        "COMMIT",
    ]


def test_remove_when_absent_is_nothing():
    assert rd.render_remove(POD, hooks=rd.POD_HOOKS, current=dump_of("-A OUTPUT -j KUBE-SERVICES")) is None


def test_remove_of_a_partial_install():
    text = rd.render_remove(POD, hooks=rd.POD_HOOKS, current=dump_of("-A OUTPUT -j AMBIT_OUTPUT", chains=("AMBIT_OUTPUT",)))
    assert text.splitlines()[1:-1] == ["-D OUTPUT -j AMBIT_OUTPUT", "-F AMBIT_OUTPUT", "-X AMBIT_OUTPUT"]


# ---- assessment ----------------------------------------------------------------------------
ASSESSMENTS = [
    ("absent", dump_of("-A OUTPUT -j KUBE-SERVICES"), "absent", (), ()),
    ("installed", INSTALLED, "installed", (), ()),
    (
        "hook-missing",
        rd.TableDump(INSTALLED.chains, tuple(r for r in INSTALLED.rules if r != "-A OUTPUT -j AMBIT_OUTPUT")),
        "partial",
        ("-A OUTPUT -j AMBIT_OUTPUT",),
        (),
    ),
    (
        "rule-missing",
        rd.TableDump(INSTALLED.chains, tuple(r for r in INSTALLED.rules if "15008" not in r)),
        "partial",
        ("-A AMBIT_PREROUTING -p tcp -m tcp --dport 15008 -j RETURN",),
        (),
    ),
    (
        "foreign-rule",
        rd.TableDump(INSTALLED.chains, (*INSTALLED.rules, "-A AMBIT_OUTPUT -j ACCEPT")),
        "partial",
        (),
        ("-A AMBIT_OUTPUT -j ACCEPT",),
    ),
    (
        "duplicate-hook",
        rd.TableDump(INSTALLED.chains, ("-A OUTPUT -j AMBIT_OUTPUT", *INSTALLED.rules)),
        "partial",
        (),
        ("-A OUTPUT -j AMBIT_OUTPUT",),
    ),
    (
        "chains-without-hooks",
        rd.TableDump(INSTALLED.chains, tuple(r for r in INSTALLED.rules if not r.startswith(("-A OUTPUT", "-A PREROUTING")))),
        "partial",
        ("-A PREROUTING -j AMBIT_PREROUTING", "-A OUTPUT -j AMBIT_OUTPUT"),
        (),
    ),
    (
        "wrong-order",
        rd.TableDump(INSTALLED.chains, ("-A PREROUTING -j AMBIT_PREROUTING", "-A OUTPUT -j AMBIT_OUTPUT", *reversed(POD["AMBIT_OUTPUT"]), *POD["AMBIT_PREROUTING"])),
        "partial",
        (),
        tuple(reversed(POD["AMBIT_OUTPUT"])),
    ),
]


@pytest.mark.parametrize(("current", "status", "missing", "unexpected"), [a[1:] for a in ASSESSMENTS], ids=[a[0] for a in ASSESSMENTS])
def test_assess(current, status, missing, unexpected):
    result = rd.assess(POD, hooks=rd.POD_HOOKS, current=current)
    assert (result.status, result.missing, result.unexpected) == (status, missing, unexpected)


def test_state_prints_the_differences():
    text = str(rd.RedirectState(status="partial", missing=("-A OUTPUT -j AMBIT_OUTPUT",), unexpected=("-A AMBIT_OUTPUT -j ACCEPT",)))
    assert text == "partial\n  missing:    -A OUTPUT -j AMBIT_OUTPUT\n  unexpected: -A AMBIT_OUTPUT -j ACCEPT"


# ---- probe SNAT ----------------------------------------------------------------------------
def test_probe_snat_rules_per_family_sorted_and_deduplicated():
    ips = ["10.210.0.9", "10.210.0.10", "fd00::5", "10.210.0.9"]
    assert rd.probe_snat_rules(ips) == {
        "AMBIT_POSTROUTING": (
            "-A AMBIT_POSTROUTING -d 10.210.0.9/32 -p tcp -m owner --socket-exists -j SNAT --to-source 169.254.7.127",
            "-A AMBIT_POSTROUTING -d 10.210.0.10/32 -p tcp -m owner --socket-exists -j SNAT --to-source 169.254.7.127",
        )
    }
    assert rd.probe_snat_rules(ips, ipv6=True)["AMBIT_POSTROUTING"] == (
        "-A AMBIT_POSTROUTING -d fd00::5/128 -p tcp -m owner --socket-exists -j SNAT --to-source fd16:9254:7127:1337:ffff:ffff:ffff:ffff",
    )


def test_probe_snat_with_no_pods_keeps_an_empty_hooked_chain():
    assert rd.render_sync(rd.probe_snat_rules([]), hooks=rd.NODE_HOOKS, current=rd.TableDump()).splitlines() == [
        "*nat",
        ":AMBIT_POSTROUTING - [0:0]",
        "-F AMBIT_POSTROUTING",
        "-I POSTROUTING 1 -j AMBIT_POSTROUTING",
        "COMMIT",
    ]


def test_probe_snat_refuses_non_addresses():
    with pytest.raises(ValueError):
        rd.probe_snat_rules(["10.0.0.1/32"])


# ---- iptables-save parsing -----------------------------------------------------------------
SAVE = """\
# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 22 15:14:50 2026
*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -j MARK --set-xmark 0x1/0xffffffff
COMMIT
*nat
:PREROUTING ACCEPT [3:180]
:OUTPUT ACCEPT [0:0]
:AMBIT_OUTPUT - [0:0]
-A OUTPUT -j AMBIT_OUTPUT
-A AMBIT_OUTPUT -o lo -j RETURN
COMMIT
# Completed on Sun Nov 22 15:14:50 2026
"""


def test_parse_save():
    tables = rd.parse_save(SAVE)
    assert set(tables) == {"mangle", "nat"}
    assert tables["nat"].chains == {"PREROUTING", "OUTPUT", "AMBIT_OUTPUT"}
    assert tables["nat"].rules == ("-A OUTPUT -j AMBIT_OUTPUT", "-A AMBIT_OUTPUT -o lo -j RETURN")
    assert tables["nat"].rules_of("AMBIT_OUTPUT") == ("-A AMBIT_OUTPUT -o lo -j RETURN",)
    assert tables["nat"].hook_count("OUTPUT", "AMBIT_OUTPUT") == 1


def test_parse_save_of_nothing():
    assert rd.parse_save("") == {}


def test_parse_save_rejects_rules_outside_a_table():
    with pytest.raises(RedirectError, match="outside a table"):
        rd.parse_save("-A OUTPUT -j X\n")


@given(st.text(max_size=300))
def test_parse_save_raises_only_redirect_errors(text):
    try:
        rd.parse_save(text)
    except RedirectError:
        pass


@given(st.lists(st.sampled_from([*POD["AMBIT_OUTPUT"], *POD["AMBIT_PREROUTING"], "-A OUTPUT -j AMBIT_OUTPUT", "-A PREROUTING -j AMBIT_PREROUTING", "-A OUTPUT -j KUBE"]), max_size=12))
def test_sync_then_assess_is_installed_whatever_was_there(rules):
    """Applying the restore input to any prior state (simulated) yields 'installed'."""
    before = dump_of(*rules)
    after_rules = [r for r in before.rules if not r.startswith(("-A AMBIT_",))]
    for line in rd.render_sync(POD, hooks=rd.POD_HOOKS, current=before).splitlines():
        if line.startswith("-I "):
            builtin, _, chain = line[3:].partition(" 1 -j ")
            after_rules.insert(0, f"-A {builtin} -j {chain}")
        elif line.startswith("-D "):
            after_rules.remove("-A " + line[3:])
        elif line.startswith("-A "):
            after_rules.append(line)
    after = dump_of(*after_rules, chains=tuple(POD))
    assert rd.assess(POD, hooks=rd.POD_HOOKS, current=after).status == "installed"


# ---- sockaddr parsing (SO_ORIGINAL_DST) ----------------------------------------------------
def sockaddr_in(ip: str, port: int) -> bytes:
    return socket.AF_INET.to_bytes(2, sys.byteorder) + struct.pack("!H", port) + socket.inet_aton(ip) + b"\0" * 8


def sockaddr_in6(ip: str, port: int) -> bytes:
    head = socket.AF_INET6.to_bytes(2, sys.byteorder) + struct.pack("!HI", port, 0)
    return head + socket.inet_pton(socket.AF_INET6, ip) + b"\0" * 4


@given(st.ip_addresses(v=4), st.integers(0, 65535))
def test_parse_sockaddr_in(ip, port):
    assert parse_sockaddr(sockaddr_in(str(ip), port)) == (str(ip), port)


@given(st.ip_addresses(v=6), st.integers(0, 65535))
def test_parse_sockaddr_in6(ip, port):
    text, parsed_port = parse_sockaddr(sockaddr_in6(str(ip), port))
    assert (ipaddress.ip_address(text), parsed_port) == (ip, port)  # '::ffff:0:0' is '::ffff:0.0.0.0'


@given(st.binary(max_size=40))
def test_parse_sockaddr_garbage_raises_value_error(raw):
    try:
        parse_sockaddr(raw)
    except ValueError:
        pass
