"""The vote bot against emoji + voting + web in-process, for a bounded number of requests."""
from __future__ import annotations

import logging
import random
import threading
import time

import pytest

from sandbox.demo import emoji, vote_bot, voting, web
from sandbox.demo.service import call
from sandbox.demo.upstream import Upstream


def start(server):
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    return server, t


@pytest.fixture
def web_addr(tmp_path):
    servers = [start(emoji.build(host="127.0.0.1", port=0)), start(voting.build(host="127.0.0.1", port=0))]
    env = {"EMOJI_ADDR": f"127.0.0.1:{servers[0][0].server_address[1]}",
           "VOTING_ADDR": f"127.0.0.1:{servers[1][0].server_address[1]}"}
    servers.append(start(web.build(environ=env, host="127.0.0.1", port=0, sa_dir=tmp_path)))
    yield f"127.0.0.1:{servers[2][0].server_address[1]}"
    for server, thread in servers:
        server.shutdown()
        thread.join(5)
        server.server_close()


def test_bot_votes_and_counts_the_doughnut_failures(web_addr, caplog):
    up = Upstream("web", env_var="WEB_ADDR", environ={"WEB_ADDR": web_addr})
    choices = [":doughnut:", ":joy:", ":taco:"]
    with caplog.at_level(logging.INFO, logger="sandbox.demo.vote_bot"):
        tally = vote_bot.run(up, rate=1000, max_requests=60, choices=choices, rng=random.Random(7))
    expected = random.Random(7)
    picks = [expected.choice(choices) for _ in range(60)]
    assert tally.sent == 60
    assert tally.failed == {"HTTP 500": picks.count(":doughnut:")}
    assert tally.ok == 60 - picks.count(":doughnut:")
    failures = [r.getMessage() for r in caplog.records if "HTTP 500" in r.getMessage()]
    assert len(failures) == picks.count(":doughnut:")
    assert failures[0] == ("vote :doughnut: -> HTTP 500 (the voting service failed: "
                           "voting for :doughnut: fails on purpose (the demo's error rate))")
    host, port = web_addr.split(":")
    status, board = call((host, int(port)), "/api/leaderboard")
    assert status == 200
    assert {r["shortcode"]: r["votes"] for r in board} == {c: picks.count(c) for c in (":joy:", ":taco:")}


def test_bot_keeps_a_steady_rate(web_addr):
    up = Upstream("web", env_var="WEB_ADDR", environ={"WEB_ADDR": web_addr})
    began = time.monotonic()
    tally = vote_bot.run(up, rate=50, max_requests=10, choices=[":joy:"])
    elapsed = time.monotonic() - began
    assert tally.ok == 10
    assert 0.17 <= elapsed < 1.5, f"10 requests at 50/s took {elapsed:.2f}s"


def test_bot_stops_when_asked(web_addr):
    up = Upstream("web", env_var="WEB_ADDR", environ={"WEB_ADDR": web_addr})
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    tally = vote_bot.run(up, rate=20, stop=stop, choices=[":joy:"])
    assert 2 <= tally.sent <= 10


def test_unreachable_web_is_counted_not_fatal():
    up = Upstream("web", env_var="WEB_ADDR", environ={"WEB_ADDR": "127.0.0.1:9"})
    tally = vote_bot.run(up, rate=1000, max_requests=3, choices=[":joy:"])
    assert tally.failed == {"unreachable": 3} and tally.ok == 0


def test_main_with_count(web_addr, monkeypatch, caplog):
    monkeypatch.setenv("WEB_ADDR", web_addr)
    monkeypatch.setenv("RATE", "200")
    with caplog.at_level(logging.INFO, logger="sandbox.demo.vote_bot"):
        assert vote_bot.main(["--count", "5"]) == 0
    assert any(r.getMessage().startswith("sent 5 votes:") for r in caplog.records)


@pytest.mark.parametrize("env,args", [({"RATE": "fast"}, []), ({}, ["--rate", "0"]), ({"WEB_ADDR": "web"}, [])])
def test_main_rejects_bad_settings(monkeypatch, env, args):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert vote_bot.main([*args, "--count", "1"]) == 2


def test_failing_share_sets_how_often_the_doughnut_is_voted():
    import random

    from sandbox.demo import vote_bot

    chosen: list[str] = []

    class Web:
        def address(self):
            return ("127.0.0.1", 1)

    def fake_call(address, path):
        chosen.append(path.rsplit("=", 1)[1])
        return 200, {}

    original = vote_bot.call
    vote_bot.call = fake_call
    try:
        vote_bot.run(Web(), rate=1e9, max_requests=2000, failing_share=0.15, rng=random.Random(7))
    finally:
        vote_bot.call = original
    share = chosen.count("%3Adoughnut%3A") / len(chosen)
    assert 0.12 < share < 0.18
    import pytest

    with pytest.raises(ValueError, match="between 0 and 1"):
        vote_bot.run(Web(), rate=1, failing_share=1.5)
