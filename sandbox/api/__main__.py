"""``python -m sandbox.api --bind 127.0.0.1 [--bind 10.200.0.1]`` (settings from the environment)."""
from __future__ import annotations

import argparse
import logging
import sys

from sandbox.config import ConfigError, SandboxConfig

from .server import ServerError, main


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.api", description="the sandbox's Kubernetes-compatible API server")
    parser.add_argument("--bind", action="append", default=[], metavar="ADDR", help="address to listen on (repeatable; port is the sandbox's API port)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="debug logs one line per request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = SandboxConfig.from_env()
        main(cfg, bind=args.bind or ["127.0.0.1"])
    except (ConfigError, ServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
