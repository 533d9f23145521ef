"""``ambit-waypoint``: the waypoint's two in-cluster commands.

- ``proxy``: one waypoint pod (settings from the environment its Deployment sets; ``settings``)
- ``controller``: turns Gateways of class ``ambit-waypoint`` into waypoint Deployments (``controller``)

Log level: ``AMBIT_LOG_LEVEL`` (error, warn, info, debug; default info) or ``-v``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

LOG_LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}


def cmd_proxy(args: argparse.Namespace) -> int:
    from waypoint.run import main as run
    from waypoint.settings import SettingsError, WaypointSettings

    try:
        settings = WaypointSettings.from_env()
    except SettingsError as exc:
        print(f"ambit-waypoint proxy: {exc}", file=sys.stderr)
        return 2
    return run(settings)


def cmd_controller(args: argparse.Namespace) -> int:
    from waypoint.controller import WaypointConfig, main as run

    return run(WaypointConfig(namespace=args.namespace, image=args.image, trust_domain=args.trust_domain,
                              ca_url=args.ca_url, ca_service=args.ca_service, log_level=args.waypoint_log_level))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ambit-waypoint", description="Ambit's L7 waypoint (run by the Helm chart)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (overrides AMBIT_LOG_LEVEL)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("proxy", help="run one waypoint (a waypoint Deployment's container; config from env)") \
        .set_defaults(func=cmd_proxy)
    ctl = sub.add_parser("controller", help="provision waypoints for Gateways of class ambit-waypoint")
    ctl.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "ambit-system"),
                     help="Ambit's namespace (trust bundle, CA service)")
    ctl.add_argument("--image", required=True, help="the image waypoint pods run")
    ctl.add_argument("--trust-domain", default=os.environ.get("AMBIT_TRUST_DOMAIN", "cluster.local"))
    ctl.add_argument("--ca-url", default="https://ambit-identity.ambit-system.svc:15012")
    ctl.add_argument("--ca-service", default="ambit-identity", help="the CA's Service in --namespace")
    ctl.add_argument("--waypoint-log-level", default="info", choices=list(LOG_LEVELS))
    ctl.set_defaults(func=cmd_controller)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    raw = os.environ.get("AMBIT_LOG_LEVEL", "info").lower()
    if raw not in LOG_LEVELS:
        print(f"ambit-waypoint: AMBIT_LOG_LEVEL={raw!r} is not a log level; use one of {', '.join(LOG_LEVELS)}",
              file=sys.stderr)
        return 2
    level = logging.DEBUG if args.verbose else LOG_LEVELS[raw]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
