"""``python -m sandbox.controllers [--ready-file PATH]``: every controller, until SIGTERM."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sandbox.controllers.manager import main


def _cli() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.controllers",
        description="Run the sandbox's scheduler, workload, EndpointSlice and garbage-collection "
        "controllers against the sandbox API (settings from AMBIT_SANDBOX* variables).",
    )
    parser.add_argument("--ready-file", type=Path, default=None,
                        help="write this file (our pid) once every cache has synced; removed on exit")
    args = parser.parse_args()
    return main(ready_file=args.ready_file)


if __name__ == "__main__":
    sys.exit(_cli())
