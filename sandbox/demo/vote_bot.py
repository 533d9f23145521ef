"""The vote bot: ``python3 -m sandbox.demo.vote_bot [--rate R] [--count N]`` (env RATE=5, WEB_ADDR,
FAILING_SHARE: the share of votes for :doughnut:, which fails; the demo sets 0.15 so the success rates
read like the seed's dashboard).

Calls web's /api/vote with a random emoji (the failing :doughnut: included) at a steady rate,
forever or for ``--count`` requests, and logs each failure in one line. It finds ``web`` like web
finds its upstreams: ``WEB_ADDR=host:port`` or the ``web`` Service's ClusterIP (see ``upstream``).
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence
from urllib.parse import quote

from sandbox.demo.emoji import EMOJI

FAILING = ":doughnut:"
"""the vote the voting service refuses (its FAILING_SHORTCODE default)"""
from sandbox.demo.service import UpstreamError, call, setup_logging
from sandbox.demo.upstream import Unresolved, Upstream

log = logging.getLogger("sandbox.demo.vote_bot")


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    """failures by cause: "HTTP 500", "unresolved", "unreachable", ..."""

    def fail(self, cause: str) -> None:
        self.failed[cause] = self.failed.get(cause, 0) + 1


def run(
    web: Upstream,
    *,
    rate: float,
    max_requests: int | None = None,
    choices: Sequence[str] = tuple(s for s, _ in EMOJI),
    stop: threading.Event | None = None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    failing_share: float | None = None,
) -> Tally:
    """Vote at ``rate`` per second until ``stop`` or ``max_requests``; returns what happened.
    ``failing_share``: the share of votes for the failing :doughnut: (None: as often as any other)."""
    if rate <= 0:
        raise ValueError(f"rate {rate} must be positive, e.g. 5")
    if failing_share is not None and not 0 <= failing_share <= 1:
        raise ValueError(f"failing share {failing_share} must be between 0 and 1, e.g. 0.15")
    others = tuple(c for c in choices if c != FAILING)
    stop = stop or threading.Event()
    rng = rng or random.Random()
    tally = Tally()
    start = clock()
    while not stop.is_set() and (max_requests is None or tally.sent < max_requests):
        due = start + tally.sent / rate
        now = clock()
        if due > now:
            if stop.wait(due - now):
                break
        elif now - due > 1.0:
            start = now - tally.sent / rate  # fell behind (slow web): don't burst to catch up
        if failing_share is None or not others:
            choice = rng.choice(choices)
        else:
            choice = FAILING if rng.random() < failing_share else rng.choice(others)
        tally.sent += 1
        try:
            status, body = call(web.address(), f"/api/vote?choice={quote(choice)}")
        except Unresolved as exc:
            tally.fail("unresolved")
            log.warning("vote %s -> %s", choice, exc)
            continue
        except UpstreamError as exc:
            tally.fail("unreachable")
            log.warning("vote %s -> %s", choice, exc)
            continue
        if status == 200:
            tally.ok += 1
        else:
            tally.fail(f"HTTP {status}")
            reason = body.get("error") if isinstance(body, dict) else body
            log.info("vote %s -> HTTP %d (%s)", choice, status, reason)
    return tally


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m sandbox.demo.vote_bot",
                                     description="vote for random emoji through the web service, forever")
    parser.add_argument("--rate", type=float, default=None, help="requests per second (env RATE, default 5)")
    parser.add_argument("--count", type=int, default=None, help="stop after this many requests (default: never)")
    args = parser.parse_args(argv)
    setup_logging()
    raw_rate = os.environ.get("RATE", "5")
    raw_share = os.environ.get("FAILING_SHARE", "")
    try:
        failing_share = float(raw_share) if raw_share else None
    except ValueError:
        log.error("FAILING_SHARE=%r must be a number between 0 and 1, e.g. 0.15", raw_share)
        return 2
    try:
        rate = args.rate if args.rate is not None else float(raw_rate)
        web = Upstream(os.environ.get("WEB_SERVICE", "web"), env_var="WEB_ADDR", environ=os.environ)
    except ValueError as exc:
        log.error("%s", exc if "ADDR" in str(exc) else f"RATE={raw_rate!r} must be a number, e.g. 5")
        return 2
    if rate <= 0:
        log.error("the rate must be positive, e.g. --rate 5")
        return 2
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    log.info("voting %s per second%s", f"{rate:g}", f", {args.count} times" if args.count else "")
    tally = run(web, rate=rate, max_requests=args.count, stop=stop, failing_share=failing_share)
    log.info("sent %d votes: %d ok, failed %s", tally.sent, tally.ok, tally.failed or "none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
