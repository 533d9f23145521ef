"""The voting service: ``python3 -m sandbox.demo.voting`` (env HOST, PORT=8080, FAILING_SHORTCODE).

POST /api/vote?shortcode=:joy: -> {"shortcode": ":joy:", "votes": 3}
                                  500 for FAILING_SHORTCODE (default ":doughnut:"), on purpose, as in
                                  emojivoto: the demo always has an error rate to look at
GET  /api/results              -> [{"shortcode": ":joy:", "votes": 3}, ...], most votes first
GET  /healthz                  -> {"status": "ok"}
Votes live in memory: each replica counts its own, as in the original.
"""
from __future__ import annotations

import os
import re
import threading
from collections import Counter

from sandbox.demo.service import DemoServer, Request, Response, error, listen_address, make_server, serve, setup_logging

DEFAULT_FAILING = ":doughnut:"
_SHORTCODE = re.compile(r"^:[a-z0-9_+\-]{1,64}:$")


class Ballot:
    def __init__(self, *, failing: str = DEFAULT_FAILING) -> None:
        self.failing = failing
        self._lock = threading.Lock()
        self._votes: Counter[str] = Counter()

    def vote(self, req: Request) -> Response:
        shortcode = req.query.get("shortcode", "")
        if not _SHORTCODE.match(shortcode):
            return error(400, f"shortcode {shortcode!r} is not like :name:; use /api/vote?shortcode=:joy:")
        if shortcode == self.failing:
            return error(500, f"voting for {shortcode} fails on purpose (the demo's error rate)")
        with self._lock:
            self._votes[shortcode] += 1
            votes = self._votes[shortcode]
        return Response(200, {"shortcode": shortcode, "votes": votes})

    def results(self, _: Request) -> Response:
        with self._lock:
            ranked = sorted(self._votes.items(), key=lambda kv: (-kv[1], kv[0]))
        return Response(200, [{"shortcode": s, "votes": n} for s, n in ranked])


def build(*, host: str = "0.0.0.0", port: int = 8080, failing: str = DEFAULT_FAILING) -> DemoServer:
    ballot = Ballot(failing=failing)
    return make_server({
        ("POST", "/api/vote"): ballot.vote,
        ("GET", "/api/results"): ballot.results,
        ("GET", "/healthz"): lambda _: Response(200, {"status": "ok"}),
    }, name="voting", host=host, port=port)


def main() -> int:
    setup_logging()
    host, port = listen_address(os.environ)
    return serve(build(host=host, port=port, failing=os.environ.get("FAILING_SHORTCODE", DEFAULT_FAILING)),
                 name="voting")


if __name__ == "__main__":
    raise SystemExit(main())
