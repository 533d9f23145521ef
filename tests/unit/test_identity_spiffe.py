import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_agent.identity.errors import SpiffeIdError
from node_agent.identity.spiffe import SpiffeId


def test_parse_and_format_round_trip():
    sid = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/web.frontend")
    assert sid == SpiffeId.for_workload("cluster.local", "shop", "web.frontend")
    assert str(sid) == "spiffe://cluster.local/ns/shop/sa/web.frontend"
    assert sid.uri == str(sid)


@pytest.mark.parametrize(
    "uri, message",
    [
        ("", "must start with 'spiffe://'"),
        ("https://cluster.local/ns/a/sa/b", "must start with 'spiffe://'"),
        ("SPIFFE://cluster.local/ns/a/sa/b", "must start with 'spiffe://'"),
        ("spiffe:///ns/a/sa/b", "no trust domain"),
        ("spiffe://cluster.local", "has no path"),
        ("spiffe://Cluster.local/ns/a/sa/b", "trust domain 'Cluster.local' is invalid"),
        ("spiffe://cluster.local:443/ns/a/sa/b", "must not contain a port"),
        ("spiffe://user@cluster.local/ns/a/sa/b", "must not contain user info"),
        ("spiffe://cluster.local/ns/a/sa/b?x=1", "must not contain a query"),
        ("spiffe://cluster.local/ns/a/sa/b#frag", "must not contain a fragment"),
        ("spiffe://cluster.local/ns/a", "expected /ns/<namespace>/sa/<service-account>"),
        ("spiffe://cluster.local/ns/a/sa/b/extra", "expected /ns/<namespace>/sa/<service-account>"),
        ("spiffe://cluster.local/sa/b/ns/a", "expected /ns/<namespace>/sa/<service-account>"),
        ("spiffe://cluster.local/ns//sa/b", "namespace '' is not a valid"),
        ("spiffe://cluster.local/ns/A/sa/b", "namespace 'A' is not a valid"),
        ("spiffe://cluster.local/ns/a/sa/", "service account '' is not a valid"),
        ("spiffe://cluster.local/ns/a/sa/..", "service account '..' is not a valid"),
        ("spiffe://cluster.local/ns/" + "a" * 64 + "/sa/b", "at most 63 characters"),
        ("spiffe://cluster.local/ns/a/sa/" + "b" * 2100, "the limit is 2048"),
    ],
    ids=["empty", "https", "uppercase-scheme", "no-trust-domain", "no-path", "uppercase-td", "port", "userinfo",
         "query", "fragment", "short-path", "long-path", "swapped", "empty-ns", "uppercase-ns", "empty-sa",
         "dotdot-sa", "long-ns", "too-long"],
)
def test_parse_rejects_with_a_clear_reason(uri, message):
    with pytest.raises(SpiffeIdError, match=None) as info:
        SpiffeId.parse(uri)
    assert message in str(info.value)


def test_parse_rejects_non_strings():
    with pytest.raises(SpiffeIdError, match="must be a string"):
        SpiffeId.parse(b"spiffe://cluster.local/ns/a/sa/b")  # type: ignore[arg-type]


def test_for_workload_validates():
    with pytest.raises(SpiffeIdError, match="namespace 'Shop'"):
        SpiffeId.for_workload("cluster.local", "Shop", "web")


_label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z")


@given(td=st.from_regex(r"\A[a-z0-9._-]{1,30}\Z"), ns=_label, sa=st.lists(_label, min_size=1, max_size=3))
def test_round_trip_property(td, ns, sa):
    sid = SpiffeId.for_workload(td, ns, ".".join(sa))
    assert SpiffeId.parse(str(sid)) == sid


@given(st.text(max_size=80))
def test_parse_never_raises_anything_but_spiffe_id_error(text):
    try:
        sid = SpiffeId.parse(text)
    except SpiffeIdError:
        return
    assert str(sid) == text
