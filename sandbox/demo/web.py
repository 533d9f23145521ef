"""The web front end: ``python3 -m sandbox.demo.web`` (env HOST, PORT=8080, EMOJI_ADDR, VOTING_ADDR).

GET /                      -> a small page to vote and see the leaderboard
GET /api/list              -> the emoji service's list
GET /api/vote?choice=:joy: -> finds the emoji (emoji service), then votes (voting service);
                              404 for an unknown emoji, 500 when the vote fails (:doughnut:)
GET /api/leaderboard       -> [{"shortcode", "unicode", "votes"}], most votes first
GET /healthz               -> {"status": "ok"}
Upstreams: ``EMOJI_ADDR``/``VOTING_ADDR`` (host:port) or the ``emoji``/``voting`` Services'
ClusterIPs from the in-cluster API (see ``upstream``); 503 while unknown, 502 when unreachable.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

from sandbox.demo.service import (
    DemoServer,
    Request,
    Response,
    UpstreamError,
    call,
    error,
    listen_address,
    make_server,
    serve,
    setup_logging,
)
from sandbox.demo.upstream import SA_DIR, Unresolved, Upstream

log = logging.getLogger("sandbox.demo.web")

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Emoji Vote</title>
<style>body{font-family:sans-serif;max-width:44em;margin:2em auto}button{font-size:2em;margin:.1em;
border:0;background:none;cursor:pointer}td{padding:.2em .8em}#msg{height:1.5em;color:#a00}</style></head>
<body><h1>Emoji Vote</h1><p>Pick your favourite (one of them is broken on purpose).</p>
<div id="grid"></div><p id="msg"></p><h2>Leaderboard</h2><table id="board"></table>
<script>
async function j(u){const r=await fetch(u);const b=await r.json();if(!r.ok)throw new Error(b.error||r.status);return b}
async function board(){const rows=await j('/api/leaderboard');document.getElementById('board').innerHTML=
 rows.map(r=>`<tr><td>${r.unicode}</td><td>${r.shortcode}</td><td>${r.votes}</td></tr>`).join('')}
async function vote(s){const m=document.getElementById('msg');try{await j('/api/vote?choice='+encodeURIComponent(s));
 m.textContent=''}catch(e){m.textContent='vote for '+s+' failed: '+e.message}board()}
j('/api/list').then(l=>{document.getElementById('grid').innerHTML=l.map(e=>
 `<button title="${e.shortcode}" onclick="vote('${e.shortcode}')">${e.unicode}</button>`).join('')});board()
</script></body></html>
"""


class Web:
    def __init__(self, *, emoji: Upstream, voting: Upstream) -> None:
        self.emoji = emoji
        self.voting = voting

    def _ask(self, upstream: Upstream, path: str, *, method: str = "GET") -> tuple[int, Any] | Response:
        """The upstream's (status, body), or the error response to give our client."""
        try:
            addr = upstream.address()
        except Unresolved as exc:
            return error(503, f"the {upstream.service} service's address is unknown: {exc}; retrying")
        try:
            return call(addr, path, method=method)
        except UpstreamError as exc:
            return error(502, f"{upstream.service} service unreachable: {exc}")

    def index(self, _: Request) -> Response:
        return Response(200, PAGE, content_type="text/html")

    def list(self, _: Request) -> Response:
        got = self._ask(self.emoji, "/api/list")
        if isinstance(got, Response):
            return got
        status, body = got
        return Response(200 if status == 200 else 502, body if status == 200 else
                        {"error": f"emoji service answered {status}: {_reason(body)}"})

    def vote(self, req: Request) -> Response:
        choice = req.query.get("choice", "")
        if not choice:
            return error(400, "missing ?choice=, e.g. /api/vote?choice=:joy:")
        got = self._ask(self.emoji, f"/api/find?shortcode={quote(choice)}")
        if isinstance(got, Response):
            return got
        status, found = got
        if status == 404:
            return error(404, f"no emoji {choice}")
        if status != 200:
            return error(502, f"emoji service answered {status}: {_reason(found)}")
        got = self._ask(self.voting, f"/api/vote?shortcode={quote(choice)}", method="POST")
        if isinstance(got, Response):
            return got
        status, voted = got
        if status != 200:
            # propagate the failure (the doughnut) as a 500, as emojivoto's web does
            return error(500, f"the voting service failed: {_reason(voted)}")
        return Response(200, {"choice": choice, "unicode": found.get("unicode"), "votes": voted.get("votes")})

    def leaderboard(self, _: Request) -> Response:
        got = self._ask(self.voting, "/api/results")
        if isinstance(got, Response):
            return got
        status, results = got
        if status != 200:
            return error(502, f"voting service answered {status}: {_reason(results)}")
        got = self._ask(self.emoji, "/api/list")
        if isinstance(got, Response):
            return got
        status, emoji = got
        unicode = {e["shortcode"]: e["unicode"] for e in emoji} if status == 200 else {}
        return Response(200, [{"shortcode": r["shortcode"], "unicode": unicode.get(r["shortcode"], "?"),
                               "votes": r["votes"]} for r in results])


def _reason(body: Any) -> str:
    return body.get("error", str(body)) if isinstance(body, dict) else str(body)


def build(*, environ: Mapping[str, str], host: str = "0.0.0.0", port: int = 8080,
          sa_dir: Path = SA_DIR) -> DemoServer:
    web = Web(
        emoji=Upstream(environ.get("EMOJI_SERVICE", "emoji"), env_var="EMOJI_ADDR", environ=environ, sa_dir=sa_dir),
        voting=Upstream(environ.get("VOTING_SERVICE", "voting"), env_var="VOTING_ADDR", environ=environ,
                        sa_dir=sa_dir),
    )
    for upstream in (web.emoji, web.voting):  # resolve early so the log says where they are
        try:
            upstream.address()
        except Unresolved as exc:
            log.warning("%s; will retry on demand", exc)
    return make_server({
        ("GET", "/"): web.index,
        ("GET", "/api/list"): web.list,
        ("GET", "/api/vote"): web.vote,
        ("POST", "/api/vote"): web.vote,
        ("GET", "/api/leaderboard"): web.leaderboard,
        ("GET", "/healthz"): lambda _: Response(200, {"status": "ok"}),
    }, name="web", host=host, port=port)


def main() -> int:
    setup_logging()
    host, port = listen_address(os.environ)
    try:
        server = build(environ=os.environ, host=host, port=port)
    except ValueError as exc:  # a malformed *_ADDR
        log.error("%s", exc)
        return 2
    return serve(server, name="web")


if __name__ == "__main__":
    raise SystemExit(main())
