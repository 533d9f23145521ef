"""``pods/proxy``: ``GET /api/v1/namespaces/{ns}/pods/{[scheme:]name[:port]}/proxy/{path}`` forwards one
HTTP GET to the pod's IP, as the real API server does (kubectl get --raw, and clients reading an
agent's debug endpoint). The sandbox API runs on the host, which routes to every node's pod CIDR
and reaches hostNetwork pods at their node's address. Only GET and HEAD; HTTP, not HTTPS.
"""
from __future__ import annotations

import aiohttp
from aiohttp import web

from .errors import ApiError, BadRequest, MethodNotAllowed


class ServiceUnavailable(ApiError):
    code = 503
    reason = "ServiceUnavailable"


def parse_target(ref: str) -> tuple[str, int | None]:
    """``name``, ``name:port`` or ``http:name:port`` -> (name, port or None)."""
    parts = ref.split(":")
    if len(parts) == 3:
        scheme, name, port = parts
        if scheme != "http":
            raise BadRequest(f"the sandbox proxies plain HTTP only, not {scheme!r}")
    elif len(parts) == 2:
        name, port = parts
    elif len(parts) == 1:
        name, port = parts[0], ""
    else:
        raise BadRequest(f"{ref!r} is not NAME, NAME:PORT or SCHEME:NAME:PORT")
    if not port:
        return name, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest(f"{port!r} is not a port number (the sandbox does not resolve named ports here)")
    return name, int(port)


def _default_port(pod: dict) -> int:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            return int(port["containerPort"])
    raise BadRequest("the pod declares no container port; name one: pods/NAME:PORT/proxy")


async def forward(request: web.Request, pod: dict, *, namespace: str, ref: str, path: list[str]) -> web.Response:
    name, port = parse_target(ref)
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(f"the sandbox's pods/proxy forwards GET and HEAD, not {request.method}")
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        raise ServiceUnavailable(f"pod {namespace}/{name} has no IP yet")
    url = f"http://{ip}:{port or _default_port(pod)}/{'/'.join(path)}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.request(request.method, url, params=request.query) as resp:
                body = await resp.read()
                return web.Response(status=resp.status, body=body,
                                    content_type=resp.content_type or "application/octet-stream")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ServiceUnavailable(f"error trying to reach service: {exc}") from exc
