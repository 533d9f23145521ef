"""Socket options of the in-pod data path.

- ``SO_MARK`` (0x539 on every agent socket) exempts the agent's own traffic from redirection;
- ``IP_TRANSPARENT`` lets a socket bind or accept for addresses that are not local.

Where a REDIRECTed connection was going (``SO_ORIGINAL_DST``) is ``node_agent.proxy.sockets``'.
"""
from __future__ import annotations

import socket

PROXY_MARK = 0x539
"""SO_MARK of every socket the agent opens in a pod; the redirection rules exempt it"""

SO_MARK = getattr(socket, "SO_MARK", 36)
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
