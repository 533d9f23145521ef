"""The benchmark run: build the topology, measure every path interleaved, write the report.

Phases (each says what it does on stdout):
1. ``ambit up`` on the rig's own sandbox; the bench pods; the nginx-mtls relay pair (PKI of its own);
   for the waypoint paths, the waypoint (``ambit waypoint apply -n bench-waypoint
   --enroll-namespace``) and nginx-http in the network namespace of the node the waypoint runs on;
2. check that every path answers (the ambit paths must show up as mutual-TLS connections in the
   agents' metrics, the waypoint path as requests in the waypoint's) -- a path that does not is
   reported as failed, the others still run;
3. memory: agent RSS idle; with ``scale_pods`` more enrolled pods; with ``idle_connections``
   open idle connections through each relay;
4. load, ``repetitions`` times: for each figure, every path in turn (the order rotates per
   repetition): iperf3 1 and 4 streams (with the relays' CPU time), wrk c=1, c=32 (with the relays'
   CPU time), and c=32 with ``Connection: close``; the HTTP-only paths (waypoint, nginx-http) take
   part in the wrk c=1 and c=32 runs only; the relays' RSS is sampled throughout;
5. CNI ADD latency, enrolled and not;
6. always, also on errors and Ctrl-C: stop what the rig started, ``ambit down``, remove the work dir.
"""
from __future__ import annotations

import datetime as dt
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import cni_latency, nginx, pki, report, settings, tools
from bench.procs import (
    Children,
    RssSampler,
    ToolError,
    cpu_seconds,
    descendants,
    others_cpu,
    rss_kb,
    status_kb,
    wait_until,
)
from bench.topology import (
    HTTP_PORT,
    IPERF_PORT,
    NS_DIRECT,
    NS_MESH,
    NS_SCALE,
    NS_WAYPOINT,
    SERVICE,
    Topology,
)

REPO = Path(__file__).resolve().parent.parent
HOLDCONNS = Path(__file__).with_name("holdconns.py")
REQUIRED_TOOLS = ("iperf3", "wrk", "nginx", "curl", "nsenter", "ip", "iptables")
PATH_READY_TIMEOUT = 120.0
"""Seconds a path may take to answer at start (the agents may still be fetching certificates)."""
WAYPOINT_READY_TIMEOUT = 150.0
"""Seconds the waypoint may take to be Programmed (its pod started, certificate, discovery synced)."""
STEPS = ("iperf1", "iperf4", "c1", "c32", "close")
HTTP_STEPS = ("c1", "c32")
"""what the HTTP-only paths (waypoint, nginx-http) are measured with"""
NGINX_HTTP_DEFAULT_NODE = "node-2"
"""where nginx-http runs when there is no waypoint to sit beside (the scheduler puts the waypoint on
node-2 too: it has fewer pods)"""


def say(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


@dataclass
class BenchPath:
    name: str
    netns: str
    """the client pod's network namespace"""
    http_host: str
    http_port: int
    iperf_host: str
    iperf_port: int
    relays: dict[str, list[int]] = field(default_factory=dict)
    """node (or ``waypoint``) -> pids of the relay processes there (empty for direct paths)"""
    proxy: list[int] = field(default_factory=list)
    """the one-hop L7 proxy (the waypoint process; nginx-http's master and worker): its own CPU is reported"""
    steps: tuple[str, ...] = STEPS
    proof: Callable[[], float] | None = None
    """a counter that must grow when a request went the way the path says (else: it did not); with it,
    a path that does not answer yet is retried until ``PATH_READY_TIMEOUT``"""
    proof_missing: str = ""
    """what it means when ``proof`` did not grow"""
    upstream_conns: Callable[[], float] | None = None
    """connections opened to the server so far (the destination agent's counter), for the waypoint's pool"""
    error: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.http_host}:{self.http_port}/"

    @property
    def relay_pids(self) -> list[int]:
        return [p for pids in self.relays.values() for p in pids]


class Bench:
    def __init__(self, s: settings.BenchSettings, topo: Topology, children: Children) -> None:
        self.s = s
        self.topo = topo
        self.children = children
        self.samples: dict[str, dict[str, list]] = {p: {f: [] for f in report.FIGURES} for p in report.PATHS}
        self.errors: dict[str, list[str]] = {p: [] for p in (*report.PATHS, "setup", "memory", "cni")}
        self.memory: dict = {}
        self.cni: dict = {}
        self.agents: dict[str, int] = {}
        self.nginx: dict[str, list[int]] = {}
        self.proxies: dict[str, list[int]] = {}
        """the one-hop L7 proxies by path: ``waypoint`` (its process), ``nginx-http`` (master, worker)"""
        self.layout: dict = {}
        """where the waypoint and nginx-http run, for the report"""

    # ---- 1. topology ----------------------------------------------------------------------
    def build(self) -> list[BenchPath]:
        topo, s = self.topo, self.s
        say(f"sandbox {s.sandbox} (index {s.index}) up")
        topo.down()  # a previous run that was killed may have left it
        topo.up()
        say("bench pods: client/server/server-local in bench-direct and bench-mesh (enrolled)")
        topo.create_bench_pods()
        for ns in (NS_DIRECT, NS_MESH):
            topo.wait_ready(ns, count=3, timeout=120)
        self.agents = topo.agent_pids()
        if sorted(self.agents) != ["node-1", "node-2"]:
            raise ToolError(f"expected a node agent on node-1 and node-2, found {self.agents}")
        direct = {p.name: p for p in topo.pods(NS_DIRECT)}
        mesh = {p.name: p for p in topo.pods(NS_MESH)}
        say("nginx-mtls relay pair in the node namespaces")
        paths = pki.write_pki(topo.workdir / "pki")
        conf1, conf2 = nginx.write_relays(topo.workdir / "relays", pki=paths, node1_ip=topo.node_ip("node-1"),
                                          node2_ip=topo.node_ip("node-2"), server_ip=direct["server"].ip,
                                          ports=(HTTP_PORT, IPERF_PORT))
        for node, conf in (("node-2", conf2), ("node-1", conf1)):
            self.nginx[node] = self._start_nginx(conf, node=node, what="nginx relay")
        client_d, client_m = direct["client"].netns, mesh["client"].netns
        n1 = topo.node_ip("node-1")
        agents = {node: [pid] for node, pid in self.agents.items()}
        paths = [
            BenchPath("direct", client_d, direct["server"].ip, HTTP_PORT, direct["server"].ip, IPERF_PORT),
            BenchPath("nginx-mtls", client_d, n1, nginx.relay_port(1, HTTP_PORT), n1, nginx.relay_port(1, IPERF_PORT),
                      relays=dict(self.nginx)),
            BenchPath("ambit", client_m, mesh["server"].ip, HTTP_PORT, mesh["server"].ip, IPERF_PORT,
                      relays=agents, **self._mtls_proof("node-2")),
            BenchPath("direct-same-node", client_d, direct["server-local"].ip, HTTP_PORT, direct["server-local"].ip,
                      IPERF_PORT),
            BenchPath("ambit-same-node", client_m, mesh["server-local"].ip, HTTP_PORT, mesh["server-local"].ip,
                      IPERF_PORT, relays=agents, **self._mtls_proof("node-1")),
        ]
        return paths + self._build_l7(server=direct["server"], client=direct["client"])

    def _build_l7(self, *, server, client) -> list[BenchPath]:
        """The waypoint and nginx-http paths, if selected. A waypoint that does not come up fails its
        path only; nginx-http then sits on ``NGINX_HTTP_DEFAULT_NODE``."""
        topo, out = self.topo, []
        waypoint_node, waypoint_error = None, None
        if self._wanted("waypoint"):
            say(f"bench pods in {NS_WAYPOINT} (enrolled); its waypoint (ambit waypoint apply -n {NS_WAYPOINT} "
                "--enroll-namespace)")
            topo.create_waypoint_pods()
            topo.wait_ready(NS_WAYPOINT, count=2, timeout=120)
            try:
                topo.apply_waypoint(timeout=WAYPOINT_READY_TIMEOUT)
                pod = topo.waypoint_pod()
                self.proxies["waypoint"] = [topo.waypoint_pid(pod)]
                waypoint_node = pod.node
                self.layout["waypoint_node"] = pod.node
                say(f"waypoint {pod.namespace}/{pod.name} ready on {pod.node} (pid {self.proxies['waypoint'][0]})")
            except ToolError as exc:
                waypoint_error = str(exc)
                say(f"waypoint: {exc}")
            svc_ip = topo.service_ip(NS_WAYPOINT, SERVICE)
            wp_server = topo.pod(NS_WAYPOINT, "server")
            relays = {node: [pid] for node, pid in self.agents.items()}
            relays.update({"waypoint": self.proxies.get("waypoint", [])})
            path = BenchPath("waypoint", topo.pod(NS_WAYPOINT, "client").netns, svc_ip, HTTP_PORT, svc_ip, HTTP_PORT,
                             relays=relays, proxy=self.proxies.get("waypoint", []), steps=HTTP_STEPS,
                             proof=self._waypoint_requests if waypoint_error is None else None,
                             proof_missing="the request was answered but the waypoint counted no request to "
                                           f"{SERVICE}.{NS_WAYPOINT}: the traffic did not go through it",
                             upstream_conns=lambda: topo.agent_metric(
                                 wp_server.node, "ambit_tcp_connections_opened_total", reporter="destination",
                                 destination_workload_namespace=NS_WAYPOINT),
                             error=waypoint_error)
            if waypoint_error:
                self.errors["waypoint"].append(f"not measured: {waypoint_error}")
            out.append(path)
        if self._wanted("nginx-http"):
            node = waypoint_node or NGINX_HTTP_DEFAULT_NODE
            say(f"nginx-http (an http reverse proxy, {nginx.HTTP_PROXY_WORKERS} worker) in {node}'s network namespace")
            conf = nginx.write_http_proxy(topo.workdir / "nginx-http", listen_ip=topo.node_ip(node),
                                          port=nginx.HTTP_PROXY_PORT, server_ip=server.ip, server_port=HTTP_PORT)
            self.proxies["nginx-http"] = self._start_nginx(conf, node=node, what="nginx-http")
            self.layout.update(nginx_http_node=node, nginx_http_workers=nginx.HTTP_PROXY_WORKERS)
            ip = topo.node_ip(node)
            out.append(BenchPath("nginx-http", client.netns, ip, nginx.HTTP_PROXY_PORT, ip, nginx.HTTP_PROXY_PORT,
                                 relays={node: self.proxies["nginx-http"]}, proxy=self.proxies["nginx-http"],
                                 steps=HTTP_STEPS))
        return out

    def _start_nginx(self, conf: Path, *, node: str, what: str) -> list[int]:
        """nginx with ``conf`` in ``node``'s network namespace; its master's and worker's pids."""
        log = open(conf.parent / "error.log", "wb")
        proc = self.children.start(["nginx", "-p", str(conf.parent), "-c", str(conf), "-e", "stderr"],
                                   netns=self.topo.node_netns(node), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(lambda: (conf.parent / "nginx.pid").exists() or proc.poll() is not None, timeout=10,
                   what=f"{what} on {node} to start")
        if proc.poll() is not None:
            raise ToolError(f"{what} on {node} exited: {(conf.parent / 'error.log').read_text()[-500:]}")
        wait_until(lambda: len(descendants(proc.pid)) >= 2, timeout=10, what=f"{what}'s worker on {node}")
        return descendants(proc.pid)  # nginx master (nsenter execs it) and its worker

    def _mtls_proof(self, node: str) -> dict:
        """For ambit paths: the agent on ``node`` must record the connection as mutual TLS."""
        def opened() -> float:
            return self.topo.agent_metric(node, "ambit_tcp_connections_opened_total", reporter="destination",
                                          connection_security_policy="mutual_tls",
                                          destination_workload_namespace=NS_MESH)

        return {"proof": opened, "proof_missing": f"the request was answered but the agent on {node} recorded no "
                                                  "mutual-TLS connection: the traffic did not go through the mesh"}

    def _waypoint_requests(self) -> float:
        pod = self.topo.waypoint_pod()
        return self.topo.pod_metric(pod, "ambit_requests_total", reporter="waypoint",
                                    destination_service=f"{SERVICE}.{NS_WAYPOINT}.svc.cluster.local",
                                    response_code="200")

    # ---- 2. every path answers ------------------------------------------------------------
    def check(self, paths: list[BenchPath]) -> None:
        deadline = time.monotonic() + PATH_READY_TIMEOUT
        for path in paths:
            if not self._selected(path) or path.error:
                continue
            while True:
                why = self._check_once(path)
                if why is None:
                    say(f"path {path.name}: ok")
                    break
                if path.proof is None or time.monotonic() > deadline:
                    path.error = why
                    self.errors[path.name].append(f"not measured: {why}")
                    say(f"path {path.name}: FAILED, not measured: {why}")
                    break
                say(f"path {path.name}: not yet ({why}); retrying")
                time.sleep(5)

    def _check_once(self, path: BenchPath) -> str | None:
        try:
            before = path.proof() if path.proof else 0
            why = tools.http_ok(self.children, netns=path.netns, url=path.url)
            if why is not None:
                return why
            if path.proof and path.proof() <= before:
                return path.proof_missing
        except (OSError, ToolError) as exc:
            return f"could not read the path's metrics: {exc}"
        return None

    # ---- 3. memory ------------------------------------------------------------------------
    def memory_idle(self) -> None:
        self.memory["agent_idle_kb"] = {n: status_kb(pid, "VmRSS") for n, pid in self.agents.items()}
        self.memory["nginx_idle_kb"] = {n: rss_kb(pids) for n, pids in self.nginx.items()}
        self.memory["proxy_idle_kb"] = {n: rss_kb(pids) for n, pids in self.proxies.items()}
        say(f"idle RSS: agents {self._mb(self.memory['agent_idle_kb'])}, nginx {self._mb(self.memory['nginx_idle_kb'])}"
            + (f"; {self._mb(self.memory['proxy_idle_kb'])}" if self.proxies else ""))

    def memory_scale(self) -> None:
        n = self.s.scale_pods
        if n <= 0:
            return
        say(f"{n} tiny enrolled pods in {NS_SCALE}")
        before = {node: status_kb(pid, "VmRSS") for node, pid in self.agents.items()}
        started = time.monotonic()
        self.topo.create_scale_pods(n)
        try:
            self.topo.wait_ready(NS_SCALE, count=n, timeout=max(120, 3 * n))
        except ToolError as exc:
            self.errors["memory"].append(f"scale pods: {exc}")
            say(f"scale pods: {exc}")
            return
        ready_s = time.monotonic() - started
        self.topo.settle(3)
        per_node: dict[str, int] = {}
        for p in self.topo.pods(NS_SCALE):
            per_node[p.node] = per_node.get(p.node, 0) + 1
        self.memory["scale"] = {node: {"before_kb": before[node], "after_kb": status_kb(pid, "VmRSS"),
                                       "pods": per_node.get(node, 0)} for node, pid in self.agents.items()}
        self.memory["scale_ready_s"] = ready_s
        say(f"{n} pods Ready in {ready_s:.0f}s; agents {self._mb(before)} -> "
            f"{self._mb({k: v['after_kb'] for k, v in self.memory['scale'].items()})}")

    def memory_connections(self, paths: list[BenchPath]) -> None:
        n = self.s.idle_connections
        if n <= 0:
            return
        out = {}
        for path in paths:
            if path.name not in ("ambit", "nginx-mtls") or path.error or not self._selected(path):
                continue
            say(f"{n} idle connections through {path.name}")
            before = {node: rss_kb(pids) for node, pids in path.relays.items()}
            proc = self.children.start([sys.executable, str(HOLDCONNS), path.http_host, str(path.http_port), str(n)],
                                       netns=path.netns, stdin=subprocess.PIPE)
            try:
                ready, _, _ = select.select([proc.stdout], [], [], 60 + n / 20)
                line = proc.stdout.readline().decode().strip() if ready else "timed out"
                if not line.startswith("ready"):
                    err = proc.stderr.read1(2000).decode() if proc.poll() is not None else ""
                    raise ToolError(f"holding {n} connections through {path.name} failed: {line} {err}".strip())
                time.sleep(2)
                after = {node: rss_kb(pids) for node, pids in path.relays.items()}
            except ToolError as exc:
                self.errors["memory"].append(str(exc))
                say(str(exc))
                continue
            finally:
                self.children.stop(proc, grace=5)
            out[path.name] = {"count": n, "nodes": {node: {"before_kb": before[node], "after_kb": after[node]}
                                                   for node in before}}
            say(f"  {path.name}: {self._mb(before)} -> {self._mb(after)}")
            time.sleep(2)  # let the relays close them
        self.memory["idle_connections"] = out

    # ---- 4. load --------------------------------------------------------------------------
    def load(self, paths: list[BenchPath]) -> None:
        s = self.s
        live = [p for p in paths if p.error is None and self._selected(p)]
        self.memory["agent_before_load_kb"] = {n: status_kb(pid, "VmRSS") for n, pid in self.agents.items()}
        groups = {f"agent-{n}": [pid] for n, pid in self.agents.items()}
        groups.update({f"nginx-{n}": pids for n, pids in self.nginx.items()})
        groups.update({f"proxy-{n}": pids for n, pids in self.proxies.items()})
        self.memory["proxy_before_load_kb"] = {n: rss_kb(pids) for n, pids in self.proxies.items()}
        marker = f"AMBIT_SANDBOX_MEMBER={self.topo.cfg.name}".encode()
        others0, t0 = others_cpu(netns_prefix=f"{self.topo.cfg.name}-", member_marker=marker), time.monotonic()
        with RssSampler(groups) as sampler:
            for rep in range(s.repetitions):
                order = live[rep % len(live):] + live[:rep % len(live)]
                for step in STEPS:
                    for path in order:
                        if step not in path.steps:
                            continue
                        say(f"repetition {rep + 1}/{s.repetitions}: {step:6s} {path.name}")
                        try:
                            self._measure(step, path)
                        except ToolError as exc:
                            self.errors[path.name].append(f"repetition {rep + 1} {step}: {exc}")
                            say(f"  failed: {exc}")
                        time.sleep(0.5)
                self.memory.setdefault("agent_after_rep_kb", []).append(
                    {n: status_kb(pid, "VmRSS") for n, pid in self.agents.items()})
        others1, elapsed = others_cpu(netns_prefix=f"{self.topo.cfg.name}-", member_marker=marker), time.monotonic() - t0
        # our children (wrk, iperf3, nsenter) live in our namespaces; children of processes that exited
        # meanwhile are not seen, so this is a lower bound
        used = sum(max(0.0, cpu - others0.get(pid, 0.0)) for pid, cpu in others1.items())
        self.memory["others_cpu_share"] = used / (elapsed * (os.cpu_count() or 1))
        if self.memory["others_cpu_share"] > 0.05:
            say(f"warning: other processes used {self.memory['others_cpu_share']:.0%} of the machine during the load runs")
        self.memory["agent_peak_kb"] = {n: sampler.peak_kb[f"agent-{n}"] for n in self.agents}
        self.memory["nginx_peak_kb"] = {n: sampler.peak_kb[f"nginx-{n}"] for n in self.nginx}
        self.memory["proxy_peak_kb"] = {n: sampler.peak_kb[f"proxy-{n}"] for n in self.proxies}
        self.memory["proxy_after_load_kb"] = {n: rss_kb(pids) for n, pids in self.proxies.items()}
        self.memory["agent_hwm_kb"] = {n: status_kb(pid, "VmHWM") for n, pid in self.agents.items()}
        self.memory["agent_after_load_kb"] = {n: status_kb(pid, "VmRSS") for n, pid in self.agents.items()}

    def _measure(self, step: str, path: BenchPath) -> None:
        s, c, add = self.s, self.children, self.samples[path.name]
        if step in ("iperf1", "iperf4"):
            streams = 1 if step == "iperf1" else 4
            cpu0 = cpu_seconds(path.relay_pids)
            r = tools.iperf3(c, netns=path.netns, host=path.iperf_host, port=path.iperf_port,
                             seconds=s.iperf_seconds, streams=streams)
            cpu = cpu_seconds(path.relay_pids) - cpu0
            add[f"iperf{streams}_gbps"].append(r["gbps"])
            if streams == 1:
                add["cpu_s_per_gb"].append(cpu / (r["bytes"] / 1e9) if path.relays else None)
            say(f"  {r['gbps']:.2f} Gb/s" + (f", relays {cpu:.2f} CPU s" if path.relays else ""))
        elif step == "c1":
            r = tools.wrk(c, netns=path.netns, url=path.url, connections=1, seconds=s.wrk_seconds)
            add["c1_p50_ms"].append(r["p50_ms"])
            add["c1_p99_ms"].append(r["p99_ms"])
            add["c1_rps"].append(r["rps"])
            say(f"  {r['rps']:.0f} req/s, p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms")
        elif step == "c32":
            relay0, proxy0 = cpu_seconds(path.relay_pids), cpu_seconds(path.proxy)
            conns0 = self._upstream_conns(path)
            r = tools.wrk(c, netns=path.netns, url=path.url, connections=s.wrk_connections, seconds=s.wrk_seconds)
            relay, proxy = cpu_seconds(path.relay_pids) - relay0, cpu_seconds(path.proxy) - proxy0
            conns1 = self._upstream_conns(path)
            conns = None if conns0 is None or conns1 is None else conns1 - conns0
            add["c32_upstream_conns_per_1k"].append(None if conns is None else conns / r["requests"] * 1000)
            add["c32_rps"].append(r["rps"])
            add["c32_p99_ms"].append(r["p99_ms"])
            add["c32_relay_cpu_us"].append(relay / r["requests"] * 1e6 if path.relays else None)
            add["c32_proxy_cpu_us"].append(proxy / r["requests"] * 1e6 if path.proxy else None)
            add["c32_proxy_cores"].append(proxy / r["seconds"] if path.proxy else None)
            say(f"  {r['rps']:.0f} req/s, p99 {r['p99_ms']:.3f} ms"
                + (f", relays {relay / r['requests'] * 1e6:.0f} CPU us/request" if path.relays else "")
                + (f", proxy {proxy / r['seconds']:.2f} cores" if path.proxy else "")
                + (f", {conns:.0f} upstream connections opened" if conns is not None else "")
                + (f", {r['errors']} errors" if r["errors"] else ""))
        else:
            r = tools.wrk(c, netns=path.netns, url=path.url, connections=s.wrk_connections, seconds=s.wrk_seconds,
                          close=True)
            add["conn_rate"].append(r["rps"])
            say(f"  {r['rps']:.0f} conn/s" + (f", {r['errors']} errors" if r["errors"] else ""))
        if step in ("c32", "close") and r["errors"]:
            self.errors[path.name].append(f"{step}: {r['errors']} wrk errors out of {r['requests']} requests")

    # ---- 5. CNI ---------------------------------------------------------------------------
    def cni_latency(self) -> None:
        n = self.s.cni_samples
        if n <= 0:
            return
        enrolled = self.topo.pods(NS_SCALE) or self.topo.pods(NS_MESH)
        others = self.topo.pods(NS_DIRECT)
        for key, pods in (("enrolled_ms", enrolled), ("not_enrolled_ms", others)):
            say(f"CNI ADD x{n}: {key.removesuffix('_ms').replace('_', ' ')} pods")
            try:
                times, errors = cni_latency.time_adds(self.children, self.topo, pods, samples=n,
                                                      delete_first=key == "enrolled_ms")
            except ToolError as exc:
                self.errors["cni"].append(str(exc))
                continue
            self.cni[key] = times
            self.errors["cni"].extend(errors[:10])
            say(f"  p50 {report.percentile(times, 50) or 0:.1f} ms, p99 {report.percentile(times, 99) or 0:.1f} ms"
                + (f", {len(errors)} failed" if errors else ""))

    @staticmethod
    def _upstream_conns(path: BenchPath) -> float | None:
        try:
            return path.upstream_conns() if path.upstream_conns else None
        except OSError as exc:
            say(f"  could not read the connections opened to the server: {exc}")
            return None

    def _selected(self, path: BenchPath) -> bool:
        return self._wanted(path.name)

    def _wanted(self, name: str) -> bool:
        return not self.s.paths or name in self.s.paths

    @staticmethod
    def _mb(kb: dict[str, int]) -> str:
        return ", ".join(f"{node} {v / 1024:.1f} MB" for node, v in sorted(kb.items()))


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def _preflight() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (network namespaces, nsenter); run it as root, e.g. `sudo make bench`")
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if not Path(nginx.STREAM_MODULE).exists():
        missing.append(f"the nginx stream module ({nginx.STREAM_MODULE}, package libnginx-mod-stream)")
    if missing:
        raise SystemExit(f"bench: missing {', '.join(missing)}; `make bench` installs them")


def _machine_busy(seconds: float = 2.0) -> float:
    """Share of CPU time the machine spent busy over ``seconds`` (from /proc/stat), before we start."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def _interrupt(signum, frame):  # SIGTERM/SIGHUP end the run like Ctrl-C: cleanly
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    s = settings.parse(argv)
    _preflight()
    os.chdir(REPO)
    workdir = Path(f"/tmp/ambit-bench-{s.sandbox}")
    workdir.mkdir(parents=True, exist_ok=True)
    children = Children()
    topo = Topology(name=s.sandbox, index=s.index, workdir=workdir)
    bench = Bench(s, topo, children)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored (background)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    busy = _machine_busy()
    if busy > 0.10:
        say(f"warning: the machine is {busy:.0%} busy before the run; other work on these cores skews the figures")
    started = time.monotonic()
    date = dt.date.today().isoformat()
    # the code under test is what the sandbox's processes load at start: name it before they do (other
    # commits may land in the tree while the run goes on)
    code = ("node_agent", "cni", "waypoint")
    commit, dirty_files = _git("rev-parse", "--short", "HEAD"), _git("status", "--porcelain", "--", *code).splitlines()
    ok = False
    try:
        paths = bench.build()
        bench.check(paths)
        bench.memory_idle()
        bench.memory_scale()
        bench.memory_connections(paths)
        bench.load(paths)
        bench.cni_latency()
        ok = True
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
    except ToolError as exc:
        say(f"FAILED: {exc}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        children.stop_all()
        if s.keep:
            say(f"sandbox kept: AMBIT_SANDBOX={s.sandbox} AMBIT_SANDBOX_INDEX={s.index} "
                f"AMBIT_SANDBOX_DIR={topo.cfg.base_dir} {sys.executable} -m ambitctl.cli down")
        else:
            say(topo.down())
            shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if not ok:
        return 1
    meta = {**report.machine(), "date": date, "commit": commit, "dirty": bool(dirty_files), "dirty_files": dirty_files,
            "repetitions": s.repetitions, "iperf_seconds": s.iperf_seconds, "wrk_seconds": s.wrk_seconds,
            "wrk_connections": s.wrk_connections, "scale_pods": s.scale_pods, "idle_connections": s.idle_connections,
            "cni_samples": s.cni_samples, "paths": list(s.paths) or list(report.PATHS),
            "elapsed_s": time.monotonic() - started, "busy_before": busy, "layout": bench.layout}
    results = report.Results(meta=meta, samples=bench.samples, errors={k: v for k, v in bench.errors.items() if v},
                             memory=bench.memory, cni=bench.cni)
    md, js = report.write(results, REPO / s.results_dir)
    print()
    print(md.read_text())
    say(f"wrote {md} and {js}")
    return 0
