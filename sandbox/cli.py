"""The sandbox's commands, registered into the ``ambit`` CLI (``ambitctl``) through the
``ambit.commands`` entry point: ``ambit up``, ``ambit down``, ``ambit sandbox kubeconfig|values|status|exec|logs``.

Heavy modules are imported inside each command so ``ambit --help`` stays instant.
"""
from __future__ import annotations

import argparse
import os
import sys


def _sandbox_cfg(args: argparse.Namespace | None = None):
    from sandbox.config import ConfigError, SandboxConfig

    nodes = getattr(args, "nodes", None) if args is not None else None
    if nodes is None:
        env_nodes = os.environ.get("AMBIT_SANDBOX_NODES")
        nodes = int(env_nodes) if env_nodes and env_nodes.isdigit() else None
    try:
        return SandboxConfig.from_env(nodes=nodes)
    except ConfigError as exc:
        raise SystemExit(f"ambit: {exc}") from None


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise SystemExit(f"ambit: {what} needs root (network namespaces, iptables); run it with sudo")


# ---- sandbox -------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    from sandbox import up as sandbox_up

    _require_root("ambit up")
    cfg = _sandbox_cfg(args)
    try:
        sandbox_up.up(cfg, demo=args.demo, mesh=args.mesh, value_files=args.values, set_values=args.set)
    except sandbox_up.SandboxError as exc:
        print(f"ambit: {exc}", file=sys.stderr)
        if cfg.state_dir.exists():
            print("ambit: the sandbox is partly up; `ambit down` removes it", file=sys.stderr)
        return 1
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from sandbox import up as sandbox_up

    _require_root("ambit down")
    cfg = _sandbox_cfg(args)
    removed = sandbox_up.down(cfg)
    print("ambit: removed " + (", ".join(removed) if removed else "nothing (no sandbox was up)"))
    return 0


def _print_path(path, what: str) -> int:
    if not path.exists():
        print(f"ambit: no sandbox {what} at {path}; run `ambit up` first", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    return _print_path(_sandbox_cfg().kubeconfig_path, "kubeconfig")


def cmd_values(args: argparse.Namespace) -> int:
    return _print_path(_sandbox_cfg().values_path, "values")


def _find_pod(cfg, ref: str):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from sandbox.kube import api_client

    ns, sep, name = ref.partition("/")
    if not sep or not ns or not name:
        raise SystemExit(f"ambit: pod reference {ref!r} must look like NAMESPACE/POD, e.g. demo/web-6f7c9-abcde")
    try:
        return client.CoreV1Api(api_client(cfg)).read_namespaced_pod(name, ns)
    except ApiException as exc:
        if exc.status == 404:
            raise SystemExit(f"ambit: pod {ref} not found; list pods with `kubectl get pods -n {ns}`") from None
        raise SystemExit(f"ambit: could not read pod {ref}: HTTP {exc.status} {exc.reason}") from None


def cmd_exec(args: argparse.Namespace) -> int:
    _require_root("ambit sandbox exec")
    cfg = _sandbox_cfg()
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise SystemExit("ambit: give a command after --, e.g. ambit sandbox exec demo/web-x -- curl -s http://10.220.0.10:8080/")
    pod = _find_pod(cfg, args.pod)
    if pod.spec.host_network:
        netns = cfg.node_netns(pod.spec.node_name)
    else:
        netns = cfg.pod_netns(pod.metadata.uid)
    path = f"/run/netns/{netns}"
    if not os.path.exists(path):
        raise SystemExit(f"ambit: pod {args.pod} has no network namespace yet ({path}); is it Running?")
    os.execvp("nsenter", ["nsenter", f"--net={path}", "--", *command])
    return 127  # not reached


def cmd_logs(args: argparse.Namespace) -> int:
    from sandbox.node.logs import pod_log_path

    cfg = _sandbox_cfg()
    pod = _find_pod(cfg, args.pod)
    containers = [c.name for c in pod.spec.containers]
    container = args.container or containers[0]
    if container not in containers:
        raise SystemExit(f"ambit: pod {args.pod} has no container {container!r}; it has {', '.join(containers)}")
    path = pod_log_path(cfg, pod.spec.node_name, pod.metadata.namespace, pod.metadata.name, container)
    try:
        with open(path, "rb") as f:
            sys.stdout.buffer.write(f.read())
    except FileNotFoundError:
        raise SystemExit(f"ambit: no logs yet for {args.pod} container {container} ({path})") from None
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from sandbox import procs

    cfg = _sandbox_cfg()
    if not cfg.state_dir.exists():
        print(f"sandbox {cfg.name}: down")
        return 1
    print(f"sandbox {cfg.name}: state {cfg.state_dir}, API {cfg.api_url_host}, kubeconfig {cfg.kubeconfig_path}")
    names = sorted(p.stem for p in cfg.pid_dir.glob("*.pid")) if cfg.pid_dir.exists() else []
    healthy = True
    print(f"{'COMPONENT':<24}{'PID':>8}  STATE")
    for name in names:
        pid = procs.pid_of(cfg, name)
        healthy &= pid is not None
        print(f"{name:<24}{pid or '-':>8}  {'running' if pid else 'exited (see ' + str(cfg.log_dir / (name + '.log')) + ')'}")
    try:
        from kubernetes import client

        from sandbox.kube import api_client

        core = client.CoreV1Api(api_client(cfg))
        nodes = core.list_node().items
        pods = core.list_pod_for_all_namespaces().items
        print()
        print(f"{'NODE':<12}{'STATUS':<10}{'INTERNAL-IP':<16}{'PODS':>5}")
        for n in nodes:
            status = n.status
            ready = bool(status) and any(c.type == "Ready" and c.status == "True" for c in (status.conditions or []))
            ip = next((a.address for a in ((status and status.addresses) or []) if a.type == "InternalIP"), "-")
            count = sum(1 for p in pods if p.spec.node_name == n.metadata.name)
            print(f"{n.metadata.name:<12}{'Ready' if ready else 'NotReady':<10}{ip:<16}{count:>5}")
    except Exception as exc:
        print(f"API unreachable: {exc}")
        healthy = False
    return 0 if healthy else 1


# ---- registration ----------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    """Add the sandbox's commands to the ``ambit`` parser's subcommands."""
    up = sub.add_parser("up", help="start the local sandbox cluster with Ambit installed from its Helm chart (root)")
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (default 2)")
    up.add_argument("--demo", dest="demo", action="store_true", default=True, help="deploy the demo app (default)")
    up.add_argument("--no-demo", dest="demo", action="store_false", help="do not deploy the demo app")
    up.add_argument("--no-mesh", dest="mesh", action="store_false", default=True,
                    help="do not install Ambit (CA, node agents, ambit-cni): a plain cluster")
    up.add_argument("-f", "--values", action="append", default=[], metavar="FILE",
                    help="a values file for Ambit's chart (repeatable; later files win)")
    up.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a chart value, as helm --set (repeatable; wins over -f)")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="remove the local sandbox: namespaces, links, rules, processes, files")
    down.set_defaults(func=cmd_down)

    sb = sub.add_parser("sandbox", help="local sandbox tools").add_subparsers(dest="sandbox_cmd", required=True)
    sb.add_parser("kubeconfig", help="print the sandbox kubeconfig path").set_defaults(func=cmd_kubeconfig)
    sb.add_parser("values", help="print the path of the chart values Ambit is installed with here "
                                 "(for ambit install -f / helm install -f)").set_defaults(func=cmd_values)
    sb.add_parser("status", help="components, nodes and pod counts").set_defaults(func=cmd_status)
    ex = sb.add_parser("exec", help="run a command in a pod's network namespace: NS/POD -- CMD...")
    ex.add_argument("pod")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)
    lg = sb.add_parser("logs", help="print a pod container's output: NS/POD [-c CONTAINER]")
    lg.add_argument("pod")
    lg.add_argument("-c", "--container")
    lg.set_defaults(func=cmd_logs)
