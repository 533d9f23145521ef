"""Settings shared by every test directory.

Tools: `make deps` installs kubectl and helm into the venv's bin/ when the machine has none
recent enough (.ci/install-kube-tools). `make test` runs `.venv/bin/python -m pytest` without
activating the venv, so that directory goes first on PATH here: tests find `kubectl` and
`helm` with `shutil.which` and run them by name, as a user with the venv active would.

Hypothesis: the suite asserts properties, never timings (speed lives in `bench/`). Its
`too_slow` health check and per-example `deadline` are wall-clock measurements of data
generation and of one example; on a loaded CI machine (two cores shared with the e2e
sandboxes' processes) they fail a correct test at random. The profile turns both off for
every property test; the number of examples stays what each test asks for.
"""
import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

_VENV_BIN = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _VENV_BIN:
    os.environ["PATH"] = os.pathsep.join([_VENV_BIN, os.environ.get("PATH", "")])

settings.register_profile("ambit", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ambit")
