"""The plugin's side of the agent socket: one blocking request with an overall deadline."""
from __future__ import annotations

import errno
import socket
import time

from cni.errors import AgentAbsent, AgentTimeout, AgentUnreachable
from cni.protocol import CniRequest, CniResponse, FrameDecoder, decode_response, encode_request


def ask_agent(path: str, request: CniRequest, *, timeout: float) -> CniResponse:
    """Send ``request`` to the agent listening on ``path`` and wait for its answer.

    ``timeout`` bounds the whole exchange (connect, send, the agent's work, the answer).
    Raises ``AgentAbsent`` when nothing exists at ``path``, ``AgentUnreachable`` when the
    socket exists but nobody answers on it, ``AgentTimeout`` past the deadline, and
    ``ProtocolError`` when the answer is not understood.
    """
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise AgentAbsent(f"no agent socket at {path}") from None
        except socket.timeout:
            raise AgentTimeout(f"connecting to {path} took longer than {timeout:g}s") from None
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                raise AgentUnreachable(f"nothing listens on {path} (is the agent restarting?)") from None
            raise AgentUnreachable(f"cannot connect to {path}: {exc.strerror or exc}") from None
        decoder = FrameDecoder()
        try:
            sock.sendall(encode_request(request))
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    raise AgentUnreachable(f"the agent closed {path} without answering")
                bodies = decoder.feed(chunk)
                if bodies:
                    return decode_response(bodies[0])
        except socket.timeout:
            raise AgentTimeout(f"no answer on {path} within {timeout:g}s") from None
        except (ConnectionError, BrokenPipeError) as exc:
            raise AgentUnreachable(f"the connection to {path} broke: {exc.strerror or exc}") from None
    finally:
        sock.close()
