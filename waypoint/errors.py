"""The L7 core's errors: one root, one class per thing a caller can act on.

Library errors (``httptools``, ``re``) are converted where they cross into the waypoint and raised
``from`` the original. Messages are lowercase and say what to change.
"""
from __future__ import annotations


class WaypointError(Exception):
    """Root of every error raised by the waypoint's L7 core."""


class HttpError(WaypointError, ValueError):
    """Bytes that are not HTTP/1.x the waypoint accepts; ``status`` is what to answer the client
    (400, 431, 501, 505), or what to report as the upstream's failure (502)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class RouteError(WaypointError, ValueError):
    """An HTTPRoute the waypoint cannot apply: says which route, where in it, and what to change."""


class StreamRefused(HttpError):
    """The upstream reset the request's h2 stream with ``REFUSED_STREAM`` before answering: it processed
    nothing (RFC 9113 8.7), so the request may go to another attempt."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=502)
