"""The demo's manifests as objects, for ``ambit up --demo`` (host side: uses PyYAML, not the pods)."""
from __future__ import annotations

from pathlib import Path

import yaml

PATH = Path(__file__).with_name("manifests.yaml")


def load() -> list[dict]:
    """Every object in ``manifests.yaml``, in apply order (Namespace first)."""
    with PATH.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]
