"""``ambit-agent``: the commands Ambit's own containers run (the chart's DaemonSet and Deployment).

- ``node-agent``: the node agent (settings from the environment, ``node_agent.settings``)
- ``identity serve``: the identity CA
- ``cni-install``: the DaemonSet's CNI installer (``cni.install``)

Users' commands (install, uninstall, the sandbox) are the ``ambit`` command, ``ambitctl/``.
Log level: ``AMBIT_LOG_LEVEL`` (error, warn, info, debug; default info) or ``-v`` for debug.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

LOG_LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}


def _log_level(verbose: bool) -> int:
    if verbose:
        return logging.DEBUG
    raw = os.environ.get("AMBIT_LOG_LEVEL", "info")
    try:
        return LOG_LEVELS[raw.lower()]
    except KeyError:
        raise SystemExit(f"ambit-agent: AMBIT_LOG_LEVEL={raw!r} is not a log level; use one of {', '.join(LOG_LEVELS)}") from None


# ---- mesh components -----------------------------------------------------------------------
def cmd_node_agent(args: argparse.Namespace) -> int:
    from node_agent.agent import main as agent_main
    from node_agent.settings import AgentSettings, SettingsError

    try:
        settings = AgentSettings.from_env()
    except SettingsError as exc:
        print(f"ambit node-agent: {exc}", file=sys.stderr)
        return 2
    return agent_main(settings)


def cmd_identity_serve(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from node_agent.identity.errors import IdentityError
    from node_agent.identity.server import main as serve
    from node_agent.identity.settings import CaSettings, IdentitySettings, ServerSettings

    try:
        settings = IdentitySettings(
            trust_domain=args.trust_domain,
            ca=CaSettings(namespace=args.namespace, owner_deployment=args.owner_deployment or None,
                          workload_cert_ttl=timedelta(hours=args.workload_cert_ttl_hours)),
            server=ServerSettings(port=args.port, extra_ips=tuple(args.extra_ip)),
        )
    except (IdentityError, ValueError) as exc:
        print(f"ambit identity serve: {exc}", file=sys.stderr)
        return 2
    return serve(settings)


# ---- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ambit-agent", description="Ambit's in-cluster components (run by the Helm chart)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (overrides AMBIT_LOG_LEVEL)")
    sub = p.add_subparsers(dest="cmd", required=True)

    agent = sub.add_parser("node-agent", help="run the node agent (the DaemonSet's container; config from env)")
    agent.set_defaults(func=cmd_node_agent)

    ident = sub.add_parser("identity", help="the identity CA").add_subparsers(dest="identity_cmd", required=True)
    serve = ident.add_parser("serve", help="run the CA service (the ambit-identity Deployment)")
    serve.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "ambit-system"),
                       help="namespace of the CA Secret and trust-bundle ConfigMap")
    serve.add_argument("--trust-domain", default=os.environ.get("AMBIT_TRUST_DOMAIN", "cluster.local"))
    serve.add_argument("--port", type=int, default=15012)
    serve.add_argument("--extra-ip", action="append", default=[],
                       help="an IP address to put in the serving certificate (e.g. the Service ClusterIP)")
    serve.add_argument("--workload-cert-ttl-hours", type=int, default=24,
                       help="lifetime of workload certificates (default: %(default)s)")
    serve.add_argument("--owner-deployment", default="",
                       help="the CA's Deployment: owner of the Secret and ConfigMap it creates, so they go with it")
    serve.set_defaults(func=cmd_identity_serve)

    sub.add_parser("cni-install", help="install ambit-cni into the node's CNI config and keep it there "
                                       "(the DaemonSet's installer container); see `ambit-agent cni-install --help`")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if argv[:1] == ["cni-install"]:  # every flag after it belongs to the installer
        from cni.install import main as install_main

        logging.basicConfig(level=_log_level(False), format=fmt)
        return install_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=_log_level(args.verbose), format=fmt)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
