"""``ambit check``: is Ambit healthy on this cluster? (Linkerd's ``linkerd check``.)

Categories of checks, run in order; when a gate fails (the API cannot be reached, Ambit's namespace
does not exist) the run stops there, since every later check would only repeat that failure. Each check is a function of a ``Cluster`` (what it reads from
the API) returning None (passed), or a ``Problem`` (an error, or a warning that does not fail the
run). Every problem names what is wrong and its hint points to ``docs/checks.md``.

The data-plane checks ask each node's agent (its ``/debug/pods`` on port 15020, through the API
server's pod proxy) rather than infer from labels. Not yet: ``--pre`` (permissions and kernel
features before installing), waypoint and metrics checks; ``docs/checks.md`` says so.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from ambitctl.cluster import AGENT, IDENTITY, Cluster, agents_by_node, enrolled_pods, linux_nodes, ready, running
from ambitctl.errors import AmbitctlError, ClusterError

DOCS = "docs/checks.md"
MIN_KUBERNETES = (1, 28)
EXPIRY_WARNING = timedelta(days=60)


@dataclass(frozen=True)
class Problem:
    error: str
    warning: bool = False


@dataclass(frozen=True)
class Result:
    description: str
    result: str
    """``success``, ``warning`` or ``error``"""
    error: str = ""
    hint: str = ""

    def as_json(self) -> dict:
        return {"description": self.description, "result": self.result, "error": self.error, "hint": self.hint}


@dataclass
class Category:
    name: str
    checks: list[Result] = field(default_factory=list)


Check = Callable[[Cluster], "Problem | None"]


# ---- kubernetes-api ------------------------------------------------------------------------
def api_reachable(c: Cluster) -> Problem | None:
    c.version()
    return None


def api_version(c: Cluster) -> Problem | None:
    v = c.version()
    try:
        have = (int(v["major"]), int("".join(ch for ch in v["minor"] if ch.isdigit())))
    except (KeyError, ValueError):
        return Problem(f"the API server reports version {v.get('git_version')!r}, which cannot be read")
    if have < MIN_KUBERNETES:
        return Problem(f"Kubernetes {have[0]}.{have[1]} is older than {MIN_KUBERNETES[0]}.{MIN_KUBERNETES[1]}, "
                       "the oldest Ambit supports")
    return None


# ---- ambit-install -------------------------------------------------------------------------
def namespace_exists(c: Cluster) -> Problem | None:
    if c.get("v1", "Namespace", c.namespace) is None:
        return Problem(f"namespace {c.namespace} does not exist; install Ambit with `ambit install` "
                       f"(or `helm install ambit deploy/charts/ambit -n {c.namespace} --create-namespace`)")
    return None


def _missing(c: Cluster, wanted: list[tuple[str, str, str, bool]]) -> Problem | None:
    gone = [f"{kind} {name}" for api_version, kind, name, namespaced in wanted
            if c.get(api_version, kind, name, c.namespace if namespaced else None) is None]
    if gone:
        return Problem(f"missing: {', '.join(gone)}; run `ambit install` again to restore them")
    return None


def service_accounts_exist(c: Cluster) -> Problem | None:
    return _missing(c, [("v1", "ServiceAccount", AGENT, True), ("v1", "ServiceAccount", IDENTITY, True)])


def rbac_exists(c: Cluster) -> Problem | None:
    rbac = "rbac.authorization.k8s.io/v1"
    return _missing(c, [(rbac, "ClusterRole", f"{AGENT}-{c.namespace}", False),
                        (rbac, "ClusterRoleBinding", f"{AGENT}-{c.namespace}", False),
                        (rbac, "ClusterRole", f"{IDENTITY}-{c.namespace}", False),
                        (rbac, "ClusterRoleBinding", f"{IDENTITY}-{c.namespace}", False),
                        (rbac, "Role", AGENT, True), (rbac, "RoleBinding", AGENT, True),
                        (rbac, "Role", IDENTITY, True), (rbac, "RoleBinding", IDENTITY, True)])


def workloads_exist(c: Cluster) -> Problem | None:
    return _missing(c, [("apps/v1", "DaemonSet", AGENT, True), ("apps/v1", "Deployment", IDENTITY, True),
                        ("v1", "Service", IDENTITY, True)])


# ---- ambit-identity ------------------------------------------------------------------------
def ca_ready(c: Cluster) -> Problem | None:
    deploy = c.get("apps/v1", "Deployment", IDENTITY, c.namespace)
    if deploy is None:
        return Problem(f"Deployment {c.namespace}/{IDENTITY} does not exist")
    want = deploy["spec"].get("replicas", 1)
    available = (deploy.get("status") or {}).get("availableReplicas") or 0
    if want == 0:
        return Problem(f"Deployment {c.namespace}/{IDENTITY} is scaled to 0: no new certificates can be issued "
                       f"(running pods keep theirs until they expire); `kubectl scale -n {c.namespace} "
                       f"deployment/{IDENTITY} --replicas=1`")
    if available < 1:
        return Problem(f"Deployment {c.namespace}/{IDENTITY} has {available}/{want} available replicas; "
                       f"see `kubectl get pods -n {c.namespace} -l app.kubernetes.io/component=identity`")
    return None


def _certificates(pem: str) -> list:
    from cryptography import x509

    return x509.load_pem_x509_certificates(pem.encode())


def _validity(c: Cluster, pem: str, what: str) -> Problem | None:
    try:
        certs = _certificates(pem)
    except ValueError as exc:
        return Problem(f"{what} is not PEM certificates: {exc}")
    for cert in certs:
        subject = cert.subject.rfc4514_string() or "(no subject)"
        if cert.not_valid_after_utc <= c.now:
            return Problem(f"{what} {subject} expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        if cert.not_valid_before_utc > c.now:
            return Problem(f"{what} {subject} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
        if cert.not_valid_after_utc - c.now < EXPIRY_WARNING:
            return Problem(f"{what} {subject} expires on {cert.not_valid_after_utc:%Y-%m-%d} (in less than "
                           f"{EXPIRY_WARNING.days} days): rotate it", warning=True)
    return None


def trust_bundle_valid(c: Cluster) -> Problem | None:
    cm = c.get("v1", "ConfigMap", "ambit-trust-bundle", c.namespace)
    pem = ((cm or {}).get("data") or {}).get("root-cert.pem")
    if not pem:
        return Problem(f"ConfigMap {c.namespace}/ambit-trust-bundle has no root-cert.pem yet; the CA publishes it "
                       "when it starts: is it running?")
    return _validity(c, pem, "trust anchor")


def issuer_valid(c: Cluster) -> Problem | None:
    try:
        secret = c.get("v1", "Secret", "ambit-ca", c.namespace)
    except ClusterError as exc:
        return Problem(f"cannot read Secret {c.namespace}/ambit-ca to check the issuer ({exc})", warning=True)
    if secret is None:
        return Problem(f"Secret {c.namespace}/ambit-ca does not exist; the CA creates it when it starts: is it running?")
    import base64

    crt = ((secret.get("data") or {}).get("ca.crt")) or ""
    return _validity(c, base64.b64decode(crt).decode(errors="replace"), "issuer certificate")


# ---- ambit-agents --------------------------------------------------------------------------
def agent_on_every_node(c: Cluster) -> Problem | None:
    without = [n for n in linux_nodes(c) if n not in agents_by_node(c)]
    if without:
        return Problem(f"no node agent on {', '.join(without)}: pods there are not protected and new ones wait "
                       f"(cni.failClosed); check the DaemonSet's nodeSelector and tolerations "
                       f"(`kubectl get daemonset -n {c.namespace} {AGENT} -o yaml`)")
    return None


def agents_ready(c: Cluster) -> Problem | None:
    bad = sorted(f"{node} ({pod['metadata']['name']})" for node, pod in agents_by_node(c).items()
                 if not ready(pod, "agent"))
    if bad:
        return Problem(f"the node agent is not ready on {', '.join(bad)}; "
                       f"`kubectl logs -n {c.namespace} <pod> -c agent` says why")
    return None


def cni_chained(c: Cluster) -> Problem | None:
    bad = sorted(node for node, pod in agents_by_node(c).items() if not ready(pod, "install-cni"))
    if bad:
        return Problem(f"ambit-cni is not chained into the CNI config on {', '.join(bad)}; "
                       f"`kubectl logs -n {c.namespace} <pod> -c install-cni` says why")
    return None


# ---- ambit-data-plane: ask each node's agent ------------------------------------------------
def _reported(c: Cluster) -> tuple[dict[str, dict], dict[str, str]]:
    """uid -> the agent's report of that pod, over every node with an enrolled pod; and node -> why
    its agent could not be asked."""
    by_uid: dict[str, dict] = {}
    unasked: dict[str, str] = {}
    agents = agents_by_node(c)
    for node in sorted({p["spec"].get("nodeName") for p in enrolled_pods(c)}):
        agent_pod = agents.get(node)
        if agent_pod is None:
            unasked[node] = "no agent"
            continue
        try:
            report = c.agent_pods(agent_pod["metadata"]["name"])
        except ClusterError as exc:
            unasked[node] = str(exc)
            continue
        by_uid.update({p["uid"]: p for p in report.get("pods") or []})
    return by_uid, unasked


def pods_captured(c: Cluster) -> Problem | None:
    reported, unasked = _reported(c)
    bad = []
    for pod in enrolled_pods(c):
        meta = pod["metadata"]
        where = f"{meta['namespace']}/{meta['name']} on {pod['spec'].get('nodeName')}"
        r = reported.get(meta["uid"])
        if r is None:
            if pod["spec"].get("nodeName") not in unasked:
                bad.append(f"{where}: not captured by its node's agent")
        elif r["redirection"] != "installed":
            bad.append(f"{where}: redirection {r['redirection']}" + (f" ({r['error']})" if r.get("error") else ""))
    problems = bad + [f"cannot ask the agent on {node} ({why})" for node, why in unasked.items()]
    if problems:
        return Problem("; ".join(problems) + ". Its traffic is not meshed as labelled; the agent's log says why "
                       f"(`kubectl logs -n {c.namespace} <agent pod> -c agent`)")
    return None


def pod_certificates(c: Cluster) -> Problem | None:
    reported, _ = _reported(c)
    bad = []
    for pod in enrolled_pods(c):
        r = reported.get(pod["metadata"]["uid"])
        if r is None or r["redirection"] != "installed":
            continue  # the capture check names it
        cert = r.get("certificate") or {}
        if cert.get("state") not in ("valid", "renewing"):
            bad.append(f"{pod['metadata']['namespace']}/{pod['metadata']['name']} ({r.get('identity')}): "
                       f"certificate {cert.get('state') or 'missing'}")
    if bad:
        return Problem("; ".join(bad) + ". Its connections fail until the CA signs one: is the CA ready?")
    return None


# ---- ambit-waypoints ----------------------------------------------------------------------
def _waypoint_gateways(c: Cluster) -> list[dict]:
    from ambitctl.waypoint import GATEWAY_API, GATEWAY_CLASS

    return [g for g in c.list(GATEWAY_API, "Gateway") if (g.get("spec") or {}).get("gatewayClassName") == GATEWAY_CLASS]


def waypoints_programmed(c: Cluster) -> Problem | None:
    from ambitctl.waypoint import programmed

    try:
        gateways = _waypoint_gateways(c)
    except ClusterError as exc:
        return Problem(f"Gateways cannot be listed ({exc}); without the Gateway API CRDs there are no waypoints",
                       warning=True)
    bad = [f"{g['metadata']['namespace']}/{g['metadata']['name']}: {why}" for g in gateways
           if (why := programmed(g)) is not None]
    return Problem("; ".join(bad)) if bad else None


def waypoint_bindings(c: Cluster) -> Problem | None:
    """Every Service that names a waypoint (itself or through its namespace) finds it ready: else
    its connections are refused (WAYPOINT_NOT_READY)."""
    from ambitctl.explain import GATEWAY_NAME_LABEL, USE_WAYPOINT_LABEL, waypoint_of

    bound_ns = {n["metadata"]["name"]: n for n in c.list("v1", "Namespace")
                if USE_WAYPOINT_LABEL in (n["metadata"].get("labels") or {})}
    services = c.list("v1", "Service", selector=USE_WAYPOINT_LABEL)
    for ns in bound_ns:
        services += c.list("v1", "Service", namespace=ns)
    ready_waypoints = {(p["metadata"]["namespace"], (p["metadata"].get("labels") or {})[GATEWAY_NAME_LABEL])
                       for p in running(c.list("v1", "Pod", selector=GATEWAY_NAME_LABEL)) if ready(p)}
    bad: dict[tuple[str, str], list[str]] = {}
    seen = set()
    for svc in services:
        meta = svc["metadata"]
        if (meta["namespace"], meta["name"]) in seen:
            continue
        seen.add((meta["namespace"], meta["name"]))
        name = waypoint_of(svc, bound_ns.get(meta["namespace"], {"metadata": {}}))
        if name and (meta["namespace"], name) not in ready_waypoints:
            bad.setdefault((meta["namespace"], name), []).append(meta["name"])
    if bad:
        return Problem("; ".join(f"waypoint {ns}/{wp} has no ready pod, so connections to {', '.join(sorted(svcs))} "
                                 f"are refused (WAYPOINT_NOT_READY): `ambit waypoint list -n {ns}`"
                                 for (ns, wp), svcs in sorted(bad.items())))
    return None


CATEGORIES: list[tuple[str, list[tuple[str, str, Check]]]] = [
    ("kubernetes-api", [
        ("can reach the Kubernetes API", "api-reachable", api_reachable),
        (f"runs Kubernetes {MIN_KUBERNETES[0]}.{MIN_KUBERNETES[1]} or newer", "api-version", api_version),
    ]),
    ("ambit-install", [
        ("Ambit's namespace exists", "namespace", namespace_exists),
        ("service accounts exist", "objects", service_accounts_exist),
        ("cluster roles, roles and bindings exist", "objects", rbac_exists),
        ("the node-agent DaemonSet and the identity Deployment and Service exist", "objects", workloads_exist),
    ]),
    ("ambit-identity", [
        ("the identity CA is ready", "ca-ready", ca_ready),
        ("trust anchors are published and valid", "trust-anchors", trust_bundle_valid),
        ("the issuer certificate is valid", "issuer", issuer_valid),
    ]),
    ("ambit-agents", [
        ("a node agent runs on every node", "agent-on-every-node", agent_on_every_node),
        ("every node agent is ready", "agents-ready", agents_ready),
        ("ambit-cni is chained on every node", "cni-chained", cni_chained),
    ]),
    ("ambit-data-plane", [
        ("every enrolled pod is captured (asked of its node's agent)", "pods-captured", pods_captured),
        ("every captured pod holds a valid certificate", "pod-certificates", pod_certificates),
    ]),
    ("ambit-waypoints", [
        ("every waypoint Gateway is programmed", "waypoints-programmed", waypoints_programmed),
        ("every service bound to a waypoint finds it ready", "waypoint-bindings", waypoint_bindings),
    ]),
]


GATES: tuple[Check, ...] = (api_reachable, namespace_exists)


def run(cluster: Cluster) -> list[Category]:
    out: list[Category] = []
    for name, checks in CATEGORIES:
        category = Category(name)
        out.append(category)
        for description, anchor, check in checks:
            hint = f"see {DOCS}#{anchor}"
            try:
                problem = check(cluster)
            except AmbitctlError as exc:
                problem = Problem(str(exc))
            if problem is None:
                category.checks.append(Result(description, "success"))
                continue
            category.checks.append(Result(description, "warning" if problem.warning else "error", problem.error, hint))
            if not problem.warning and check in GATES:
                return out  # nothing after it can be asked: every later check would repeat this failure
    return out


def succeeded(categories: list[Category]) -> bool:
    return not any(r.result == "error" for cat in categories for r in cat.checks)


def run_until(connect: Callable[[], Cluster], *, wait: float) -> list[Category]:
    """Run the checks; with ``wait`` > 0, again every second until they pass or the time is up."""
    deadline = time.monotonic() + wait
    while True:
        categories = run(connect())
        if succeeded(categories) or time.monotonic() >= deadline:
            return categories
        time.sleep(1)


# ---- output --------------------------------------------------------------------------------
SYMBOLS = {"success": "✔", "warning": "‼", "error": "×"}


def render(categories: list[Category], *, output: str) -> str:
    import json

    ok = succeeded(categories)
    if output == "json":
        return json.dumps({"success": ok, "categories": [
            {"name": cat.name, "checks": [r.as_json() for r in cat.checks]} for cat in categories]}, indent=2)
    lines: list[str] = []
    for cat in categories:
        shown = [r for r in cat.checks if output != "short" or r.result != "success"]
        if not shown:
            continue
        lines += [cat.name, "-" * len(cat.name)]
        for r in shown:
            lines.append(f"{SYMBOLS[r.result]} {r.description}")
            if r.result != "success":
                lines += [f"    {r.error}", f"    {r.hint}"]
        lines.append("")
    counts = {k: sum(r.result == k for cat in categories for r in cat.checks) for k in SYMBOLS}
    lines.append(f"Status check results are {'✔' if ok else '×'} ({counts['success']} passed, "
                 f"{counts['warning']} warnings, {counts['error']} failed)")
    return "\n".join(lines)
