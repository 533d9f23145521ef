"""The ``ambit`` command line. Commands of other packages (the sandbox's ``up``, ``down`` and
``sandbox``) register through the ``ambit.commands`` entry point, so this package imports none of
them. Heavy modules are imported inside each command so ``ambit --help`` stays instant.
"""
from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

from ambitctl.errors import AmbitctlError


def _say(msg: str) -> None:
    print(f"ambit: {msg}", flush=True)


def cmd_install(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ambitctl import chart

    rendered = chart.render(chart.values(files=args.values, sets=args.set), chart=Path(args.chart),
                            namespace=args.namespace, release=args.release)
    if args.dry_run:
        sys.stdout.write(rendered.yaml())
        return 0
    from ambitctl.apply import connect
    from ambitctl.install import install

    api = connect(kubeconfig=args.kubeconfig, context=args.context)
    report = install(api, rendered, namespace=args.namespace, release=args.release,
                     wait=None if args.no_wait else args.timeout, say=_say, skip_crds=args.skip_crds)
    _say(f"Ambit is installed in namespace {args.namespace} ({report.summary()})")
    if report.changed and rendered.notes:
        print(rendered.notes.rstrip())
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    from ambitctl.apply import connect
    from ambitctl.install import uninstall

    crds = ()
    if args.delete_crds:
        from ambitctl import chart

        crds = chart.render(chart.values()).crds
    api = connect(kubeconfig=args.kubeconfig, context=args.context)
    deleted = uninstall(api, namespace=args.namespace, release=args.release, timeout=args.timeout, say=_say,
                        crds=crds)
    _say(f"Ambit is uninstalled ({deleted} objects deleted)" if deleted else
         f"nothing to uninstall: no Ambit object in namespace {args.namespace}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ambitctl import check
    from ambitctl.apply import connect

    api = connect(kubeconfig=args.kubeconfig, context=args.context)
    categories = check.run_until(lambda: check.Cluster(api, namespace=args.namespace), wait=args.wait)
    print(check.render(categories, output=args.output))
    return 0 if check.succeeded(categories) else 1


def cmd_node(args: argparse.Namespace) -> int:
    from ambitctl import node
    from ambitctl.apply import connect
    from ambitctl.cluster import Cluster

    cluster = Cluster(connect(kubeconfig=args.kubeconfig, context=args.context), namespace=args.ambit_namespace)
    target = node.resolve(cluster, node=args.node, pod_ref=args.pod, namespace=args.namespace)
    doc = node.report(cluster, target)
    rows = (node.redirection_rows if args.what == "redirection" else node.cert_rows)(doc, node=target.node)
    if not rows and args.output != "json":
        print(f"no captured pods on {target.node}" + (f" named {'/'.join(target.pod)}" if target.pod else ""))
        return 0
    print(node.render(rows, what=args.what, output=args.output))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from ambitctl import explain
    from ambitctl.apply import connect
    from ambitctl.cluster import Cluster

    cluster = Cluster(connect(kubeconfig=args.kubeconfig, context=args.context), namespace=args.ambit_namespace)
    result = explain.explain(cluster, namespace=args.namespace, source=args.source, destination=args.destination)
    print(explain.render(result, output=args.output))
    return 1 if result.broken else 0


def cmd_stat(args: argparse.Namespace) -> int:
    from ambitctl import stat
    from ambitctl.apply import connect
    from ambitctl.cluster import Cluster

    cluster = Cluster(connect(kubeconfig=args.kubeconfig, context=args.context), namespace=args.ambit_namespace)
    rows = stat.stat(cluster, kind=args.kind, name=args.name, namespace=None if args.all_namespaces else args.namespace,
                     window=args.window)
    print(stat.render(rows, output=args.output, all_namespaces=args.all_namespaces))
    return 0


def cmd_waypoint(args: argparse.Namespace) -> int:
    from ambitctl import waypoint
    from ambitctl.apply import Applier, connect

    applier = Applier(connect(kubeconfig=args.kubeconfig, context=args.context), field_manager=waypoint.FIELD_MANAGER)
    if args.action == "list":
        ns = None if args.all_namespaces else args.namespace
        print(waypoint.render(waypoint.rows(applier, namespace=ns), output=args.output))
        return 0
    if args.action == "apply":
        said = waypoint.apply(applier, name=args.name, namespace=args.namespace,
                              enroll_namespace=args.enroll_namespace, wait=args.wait or None)
    else:
        said = waypoint.delete(applier, name=args.name, namespace=args.namespace)
    for line in said:
        _say(line)
    return 0


def _seconds(text: str) -> float:
    """``10s``, ``1m``, ``500ms`` or a bare number of seconds."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            value = float(text[: -len(suffix)]) * scale
            break
    else:
        if not text.replace(".", "", 1).isdigit():
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration; use e.g. 10s, 1m or 500ms")
        value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than zero")
    return value


def _connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")


def _ambit_flags(p: argparse.ArgumentParser, *, release: bool = True, timeout: bool = True) -> None:
    """Commands about Ambit itself: ``-n`` is Ambit's namespace."""
    from ambitctl.chart import NAMESPACE, RELEASE

    _connection_flags(p)
    p.add_argument("-n", "--namespace", default=NAMESPACE, help="Ambit's namespace (default: %(default)s)")
    if release:
        p.add_argument("--release", default=RELEASE, help="release name, as in helm (default: %(default)s)")
    if timeout:
        p.add_argument("--timeout", type=float, default=300, help="seconds to wait (default: %(default)s)")


def _workload_flags(p: argparse.ArgumentParser, *, what: str, outputs: tuple[str, ...]) -> None:
    """Commands about users' workloads: ``-n`` is theirs, ``--ambit-namespace`` Ambit's."""
    from ambitctl.chart import NAMESPACE

    _connection_flags(p)
    p.add_argument("-n", "--namespace", default="default", help=f"namespace of {what} (default: %(default)s)")
    p.add_argument("--ambit-namespace", default=NAMESPACE, help="Ambit's namespace (default: %(default)s)")
    p.add_argument("-o", "--output", choices=outputs, default="table")


def build_parser() -> argparse.ArgumentParser:
    from ambitctl.chart import DEFAULT_CHART

    p = argparse.ArgumentParser(prog="ambit", description="Ambit: an ambient service mesh for Kubernetes")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)

    ins = sub.add_parser("install", help="install or upgrade Ambit from its Helm chart (server-side apply)")
    _ambit_flags(ins)
    ins.add_argument("-f", "--values", action="append", default=[], metavar="FILE",
                     help="a values file (repeatable; later files win)")
    ins.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="a value, as helm --set (repeatable; wins over -f)")
    ins.add_argument("--dry-run", action="store_true", help="print the rendered YAML and apply nothing")
    ins.add_argument("--no-wait", action="store_true", help="do not wait for the CA and the agents to be ready")
    ins.add_argument("--skip-crds", action="store_true",
                     help="do not create the chart's Gateway API CRDs (as helm --skip-crds: the cluster has its own)")
    ins.add_argument("--chart", default=str(DEFAULT_CHART), help="the chart directory (default: this checkout's)")
    ins.set_defaults(func=cmd_install)

    uni = sub.add_parser("uninstall", help="remove every Ambit object and unchain ambit-cni from every node")
    _ambit_flags(uni)
    uni.add_argument("--delete-crds", action="store_true",
                     help="also delete the chart's Gateway API CRDs, and with them every Gateway and route in the cluster")
    uni.set_defaults(func=cmd_uninstall)

    chk = sub.add_parser("check", help="check that Ambit is installed and healthy (exit 1 on any failure)")
    _ambit_flags(chk, release=False, timeout=False)
    chk.add_argument("-o", "--output", choices=("table", "json", "short"), default="table",
                     help="table: every check; short: only problems; json: for scripts (default: %(default)s)")
    chk.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                     help="retry until every check passes or this many seconds have passed (default: no retry)")
    chk.set_defaults(func=cmd_check)

    nd = sub.add_parser("node", help="what one node's agent says: redirection or certs of the pods it captured")
    nd.add_argument("what", choices=("redirection", "certs"))
    nd.add_argument("pod", nargs="?", help="a pod (NAME in -n's namespace, or NAMESPACE/NAME): its node, its rows")
    nd.add_argument("--node", help="a node: every pod its agent captured")
    _workload_flags(nd, what="the pod", outputs=("table", "wide", "json"))
    nd.set_defaults(func=cmd_node)

    st = sub.add_parser("stat", help="golden figures per deployment or namespace (HTTP ones from waypoints)")
    st.add_argument("kind", choices=("deploy", "deployment", "ns", "namespace"))
    st.add_argument("name", nargs="?", help="one deployment or namespace (default: all)")
    _workload_flags(st, what="the deployments", outputs=("table", "json"))
    st.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    st.add_argument("-t", "--window", type=_seconds, default=5.0, metavar="DURATION",
                    help="HTTP figures over this window, e.g. 10s or 1m (default: 5s; read from the waypoints)")
    st.set_defaults(func=cmd_stat)

    ex = sub.add_parser("explain", help="walk one path hop by hop and name the first broken link (exit 1)")
    ex.add_argument("source", help="pod/NAME or deploy/NAME")
    ex.add_argument("destination", help="svc/NAME[:PORT], pod/NAME[:PORT] or IP:PORT")
    _workload_flags(ex, what="SRC and DST", outputs=("table", "json"))
    ex.set_defaults(func=cmd_explain)

    wp = sub.add_parser("waypoint", help="L7 waypoints: Gateways of class ambit-waypoint")
    wps = wp.add_subparsers(dest="action", required=True)
    wpa = wps.add_parser("apply", help="create or update a waypoint for a namespace (and wait until it is ready)")
    wpa.add_argument("--name", default="waypoint", help="the Gateway's name (default: %(default)s)")
    wpa.add_argument("--enroll-namespace", action="store_true",
                     help="label the namespace ambit.dev/use-waypoint=NAME: all its services use the waypoint")
    wpa.add_argument("--wait", type=float, default=120, metavar="SECONDS",
                     help="wait until the waypoint is Programmed (0: do not wait; default: %(default)s)")
    wpl = wps.add_parser("list", help="waypoints, whether they are ready, and what uses them")
    wpl.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    wpd = wps.add_parser("delete", help="delete a waypoint (and its namespace label)")
    wpd.add_argument("name", nargs="?", default="waypoint", help="the Gateway's name (default: %(default)s)")
    for p_ in (wpa, wpl, wpd):
        _workload_flags(p_, what="the waypoint", outputs=("table", "json"))
        p_.set_defaults(func=cmd_waypoint)

    for ep in entry_points(group="ambit.commands"):
        ep.load()(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if extra and args.cmd == "node" and args.pod is None and len(extra) == 1 and not extra[0].startswith("-"):
        args.pod = extra[0]  # `ambit node certs -n demo web-1`: the pod after an option, as kubectl takes it
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except AmbitctlError as exc:
        print(f"ambit: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
