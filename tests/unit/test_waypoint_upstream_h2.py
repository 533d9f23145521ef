"""What an h2c upstream's answer means for a retry: a refused stream (it processed nothing) and gRPC's
trailers-only UNAVAILABLE, decided from h2 events before anything reaches the client."""
from __future__ import annotations

import asyncio

import h2.errors
import h2.events
import pytest

from waypoint.errors import HttpError, StreamRefused
from waypoint.http_proxy import _grpc_unavailable
from waypoint.upstream import H2Connection, Http2Upstream, _response_head


class Wire:
    """The connection's socket: what h2 writes is dropped (these cases only feed events in)."""

    def write(self, data: bytes) -> None:
        pass


def reset(code: int) -> h2.events.StreamReset:
    return h2.events.StreamReset(stream_id=1, error_code=code)


def goaway(last_stream_id: int) -> h2.events.ConnectionTerminated:
    event = h2.events.ConnectionTerminated()
    event.error_code, event.last_stream_id = h2.errors.ErrorCodes.NO_ERROR, last_stream_id
    return event


def response() -> h2.events.ResponseReceived:
    return h2.events.ResponseReceived(stream_id=1, headers=[(b":status", b"200")])


@pytest.mark.parametrize(("events", "error", "message"), [
    ([reset(h2.errors.ErrorCodes.REFUSED_STREAM)], StreamRefused, "upstream refused the stream (refused_stream)"),
    ([goaway(last_stream_id=0)], StreamRefused, "upstream sent goaway"),
    ([reset(h2.errors.ErrorCodes.CANCEL)], HttpError, "upstream reset the stream (cancel)"),
    ([reset(0x77)], HttpError, "upstream reset the stream (code 119)"),
    ([response(), reset(h2.errors.ErrorCodes.REFUSED_STREAM)], HttpError,
     "upstream reset the stream (refused_stream)"),
], ids=["refused-before-headers", "goaway-below-the-stream", "cancel", "unknown-code", "refused-after-headers"])
def test_which_resets_are_refusals(events: list, error: type[HttpError], message: str) -> None:
    async def main() -> None:
        up = Http2Upstream(H2Connection(Wire()), method="GET")  # type: ignore[arg-type]
        for event in events:
            up._dispatch(event)
        if isinstance(events[0], h2.events.ResponseReceived):
            assert (await up.next_event()).status == 200  # type: ignore[union-attr]
        with pytest.raises(HttpError) as caught:
            await up.next_event()
        assert type(caught.value) is error
        assert str(caught.value).startswith(message)
        assert caught.value.status == 502

    asyncio.run(main())


@pytest.mark.parametrize(("headers", "ended", "retried"), [
    ([(b"grpc-status", b"14"), (b"grpc-message", b"try again")], True, True),
    ([(b"grpc-status", b"14")], False, False),
    ([(b"grpc-status", b"0")], True, False),
    ([(b"grpc-status", b"4")], True, False),
    ([], True, False),
], ids=["trailers-only-unavailable", "unavailable-in-headers-with-a-body-to-come", "ok", "deadline-exceeded",
        "no-grpc-status"])
def test_grpc_unavailable_is_retried_only_from_a_trailers_only_answer(headers: list, ended: bool,
                                                                       retried: bool) -> None:
    head = _response_head([(b":status", b"200"), (b"content-type", b"application/grpc"), *headers], method="POST",
                          ended=ended)
    assert _grpc_unavailable(head) is retried
