"""emoji, voting and web in-process on 127.0.0.1, wired with explicit *_ADDR: the answers users see."""
from __future__ import annotations

import http.client
import json
import threading
from contextlib import contextmanager

import pytest

from sandbox.demo import emoji, voting, web
from sandbox.demo.service import call


@contextmanager
def running(server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield ("127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def addr_env(**addrs):
    return {k: f"{h}:{p}" for k, (h, p) in addrs.items()}


@pytest.fixture
def app(tmp_path):
    """emoji + voting + web; yields the three addresses."""
    with running(emoji.build(host="127.0.0.1", port=0)) as e, running(voting.build(host="127.0.0.1", port=0)) as v:
        env = addr_env(EMOJI_ADDR=e, VOTING_ADDR=v)
        with running(web.build(environ=env, host="127.0.0.1", port=0, sa_dir=tmp_path)) as w:
            yield {"emoji": e, "voting": v, "web": w}


def get(addr, path, method="GET"):
    return call(addr, path, method=method)


# ---- emoji ---------------------------------------------------------------------------------------
def test_emoji_list_and_find(app):
    status, body = get(app["emoji"], "/api/list")
    assert status == 200 and len(body) == len(emoji.EMOJI)
    assert {"shortcode": ":joy:", "unicode": "\U0001F602"} in body
    assert any(e["shortcode"] == ":doughnut:" for e in body)
    assert get(app["emoji"], "/api/find?shortcode=:joy:") == (200, {"shortcode": ":joy:", "unicode": "\U0001F602"})
    status, body = get(app["emoji"], "/api/find?shortcode=:nope:")
    assert status == 404 and body == {"error": "no emoji with shortcode :nope:"}
    assert get(app["emoji"], "/api/find")[0] == 400


@pytest.mark.parametrize("svc", ["emoji", "voting", "web"])
def test_healthz(app, svc):
    assert get(app[svc], "/healthz") == (200, {"status": "ok"})


def test_unknown_path_and_wrong_method(app):
    assert get(app["emoji"], "/nope") == (404, {"error": "no such path /nope"})
    status, body = get(app["voting"], "/api/vote?shortcode=:joy:", method="GET")
    assert status == 405 and "use POST" in body["error"]


# ---- voting --------------------------------------------------------------------------------------
def test_voting_counts_and_ranks(app):
    for code in (":joy:", ":joy:", ":pizza:"):
        assert get(app["voting"], f"/api/vote?shortcode={code}", method="POST")[0] == 200
    assert get(app["voting"], "/api/vote?shortcode=:joy:", method="POST") == (200, {"shortcode": ":joy:", "votes": 3})
    assert get(app["voting"], "/api/results") == (200, [{"shortcode": ":joy:", "votes": 3},
                                                         {"shortcode": ":pizza:", "votes": 1}])


def test_voting_for_the_doughnut_fails_on_purpose(app):
    status, body = get(app["voting"], "/api/vote?shortcode=:doughnut:", method="POST")
    assert status == 500 and ":doughnut:" in body["error"]
    assert get(app["voting"], "/api/results") == (200, [])


def test_voting_rejects_garbage(app):
    assert get(app["voting"], "/api/vote?shortcode=joy", method="POST")[0] == 400


# ---- web -----------------------------------------------------------------------------------------
def test_web_page(app):
    conn = http.client.HTTPConnection(*app["web"], timeout=3)
    conn.request("GET", "/")
    resp = conn.getresponse()
    page = resp.read().decode()
    conn.close()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/html")
    assert "<title>Emoji Vote</title>" in page and "/api/leaderboard" in page


def test_web_lists_emoji(app):
    assert get(app["web"], "/api/list") == get(app["emoji"], "/api/list")


def test_web_vote_then_leaderboard(app):
    assert get(app["web"], "/api/vote?choice=:rocket:") == (200, {"choice": ":rocket:", "unicode": "\U0001F680",
                                                                  "votes": 1})
    get(app["web"], "/api/vote?choice=:rocket:")
    get(app["web"], "/api/vote?choice=:taco:")
    assert get(app["web"], "/api/leaderboard") == (200, [
        {"shortcode": ":rocket:", "unicode": "\U0001F680", "votes": 2},
        {"shortcode": ":taco:", "unicode": "\U0001F32E", "votes": 1},
    ])


def test_web_propagates_the_doughnut_failure_as_500(app):
    status, body = get(app["web"], "/api/vote?choice=:doughnut:")
    assert status == 500
    assert body["error"].startswith("the voting service failed: voting for :doughnut: fails on purpose")


def test_web_unknown_emoji_is_404(app):
    assert get(app["web"], "/api/vote?choice=:unicorn_bagel:") == (404, {"error": "no emoji :unicorn_bagel:"})
    assert get(app["voting"], "/api/results") == (200, [])


def test_web_without_any_way_to_find_upstreams_answers_503(tmp_path):
    with running(web.build(environ={}, host="127.0.0.1", port=0, sa_dir=tmp_path)) as w:
        status, body = get(w, "/api/vote?choice=:joy:")
    assert status == 503
    assert "EMOJI_ADDR" in body["error"] and "retrying" in body["error"]


def test_web_with_an_upstream_down_answers_502(tmp_path):
    with running(emoji.build(host="127.0.0.1", port=0)) as e:
        pass  # closed again: nothing listens there now
    env = addr_env(EMOJI_ADDR=e, VOTING_ADDR=e)
    with running(web.build(environ=env, host="127.0.0.1", port=0, sa_dir=tmp_path)) as w:
        status, body = get(w, "/api/list")
    assert status == 502 and "emoji service unreachable" in body["error"]


def test_keep_alive_connection_serves_many_requests(app):
    conn = http.client.HTTPConnection(*app["web"], timeout=3)
    try:
        for _ in range(3):
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read()) == {"status": "ok"}
    finally:
        conn.close()
