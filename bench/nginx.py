"""nginx configurations: the HTTP server in the server pods, the nginx-mtls relay pair, and nginx-http.

- ``write_http_server``: one worker answering ``200 ok`` from memory (no disk, no logs), keep-alive
  unlimited; run by the kubelet as a pod process with its own prefix in the rig's work directory.
- ``write_relays``: the C peer of the node agents. node-1's nginx (``stream``) accepts plaintext
  from the client pod on the node's address and opens TLS 1.3 with a client certificate to node-2's
  nginx, which requires one (mutual TLS), verifies it, and connects to the server pod. Session
  reuse is on (``proxy_ssl_session_reuse``; tickets on the server side). One worker per node, as
  the agent is one event loop per node. One listener pair per server port (8080, 5201), since
  plain nginx has no tunnel header to name the target.
- ``write_http_proxy``: the C peer of the waypoint (``nginx-http``): one nginx ``http`` reverse
  proxy hop, plaintext, in a node's network namespace, ``proxy_pass`` to the server pod with
  upstream keep-alive (``keepalive 32``, HTTP/1.1, ``Connection ""``), one worker as the waypoint is
  one event loop.
"""
from __future__ import annotations

from pathlib import Path

from bench.pki import SERVER_NAME

STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
RELAY_PORT_OFFSET = {1: 10000, 2: 11000}
"""node-1 listens on port+10000 (18080, 15201), node-2 on port+11000 (19080, 16201)."""
HTTP_PROXY_PORT = 20080
"""nginx-http listens on the node's address, port 20080 (clear of the relays' ports)."""
HTTP_PROXY_WORKERS = 1
"""nginx-http's worker_processes: one, as the waypoint is one process with one event loop"""

_COMMON = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 65536;
error_log stderr warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 16384; multi_accept on; }}
"""


def write_http_server(prefix: Path, *, port: int) -> Path:
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(_COMMON.format(prefix=prefix) + f"""\
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body; proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    server {{
        listen {port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")
    return conf


def write_http_proxy(prefix: Path, *, listen_ip: str, port: int, server_ip: str, server_port: int) -> Path:
    """nginx-http: an ``http`` reverse proxy from ``listen_ip:port`` to the server pod, keep-alive both ways."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(_COMMON.format(prefix=prefix).replace("worker_processes 1;",
                                                         f"worker_processes {HTTP_PROXY_WORKERS};") + f"""\
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body; proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    upstream server {{
        server {server_ip}:{server_port};
        keepalive 32;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen {listen_ip}:{port} backlog=4096;
        location / {{
            proxy_pass http://server;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
""")
    return conf


def relay_port(node_index: int, port: int) -> int:
    return port + RELAY_PORT_OFFSET[node_index]


def write_relays(prefix: Path, *, pki: dict[str, Path], node1_ip: str, node2_ip: str, server_ip: str,
                 ports: tuple[int, ...]) -> tuple[Path, Path]:
    """nginx configs for node-1 (plaintext in, mTLS out) and node-2 (mTLS in, plaintext to the pod)."""
    confs = []
    for node in (1, 2):
        p = prefix / f"relay-node-{node}"
        p.mkdir(parents=True, exist_ok=True)
        servers = []
        for port in ports:
            if node == 1:
                servers.append(f"""\
    server {{
        listen {node1_ip}:{relay_port(1, port)} backlog=4096;
        proxy_pass {node2_ip}:{relay_port(2, port)};
        proxy_ssl on;
        proxy_ssl_protocols TLSv1.3;
        proxy_ssl_certificate {pki['node-1.crt']};
        proxy_ssl_certificate_key {pki['node-1.key']};
        proxy_ssl_trusted_certificate {pki['ca.crt']};
        proxy_ssl_verify on;
        proxy_ssl_verify_depth 2;
        proxy_ssl_name {SERVER_NAME};
        proxy_ssl_session_reuse on;
    }}""")
            else:
                servers.append(f"""\
    server {{
        listen {node2_ip}:{relay_port(2, port)} ssl backlog=4096;
        proxy_pass {server_ip}:{port};
    }}""")
        tls_server = f"""\
    ssl_protocols TLSv1.3;
    ssl_certificate {pki['node-2.crt']};
    ssl_certificate_key {pki['node-2.key']};
    ssl_client_certificate {pki['ca.crt']};
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_session_cache shared:bench:16m;
    ssl_session_tickets on;
""" if node == 2 else ""
        conf = p / "nginx.conf"
        conf.write_text(f"load_module {STREAM_MODULE};\n" + _COMMON.format(prefix=p) + "stream {\n" + tls_server
                        + "\n".join(servers) + "\n}\n")
        confs.append(conf)
    return confs[0], confs[1]
