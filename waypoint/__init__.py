"""The L7 waypoint proxy: not built yet.

It will terminate the tunnel (reusing ``node_agent.proxy`` and ``node_agent.identity``), parse
HTTP/1.1 and HTTP/2, apply HTTPRoute rules and record request metrics (ARCHITECTURE.md).
"""
