"""The kubelet's AtomicWriter: a volume directory whose files all change in one step.

```
<dir>/..2025_01_02_15_04_05.k3j2h1/   the payload: files and subdirectories, written in full first
<dir>/..data -> ..2025_01_02_...      switched with rename(2), the one atomic step
<dir>/<name> -> ..data/<name>         one symlink per top-level entry of the payload
```

A reader opening ``<dir>/key`` (through a bind mount too) sees the old payload or the new one,
never a file half-written nor a mix of two versions of the same file. Old payload directories
are removed after the switch; names that left the payload lose their symlink.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Mapping

from sandbox.node.volumes import File

DATA = "..data"
_DATA_TMP = "..data_tmp"


def current_payload_dir(directory: Path) -> Path | None:
    """The payload directory ``..data`` points at, or ``None`` before the first write."""
    try:
        return directory / os.readlink(directory / DATA)
    except FileNotFoundError:
        return None


def write(directory: Path, payload: Mapping[str, File]) -> None:
    """Make ``directory`` hold exactly ``payload`` (relative path -> File), atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    old = current_payload_dir(directory)
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
    new = Path(tempfile.mkdtemp(prefix=f"..{stamp}.", dir=directory))
    try:
        for rel, f in payload.items():
            target = new / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                out.write(f.data)
            os.chmod(target, f.mode)
        os.chmod(new, 0o755)
        tmp_link = directory / _DATA_TMP
        tmp_link.unlink(missing_ok=True)
        os.symlink(new.name, tmp_link)
        os.rename(tmp_link, directory / DATA)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    _link_top_level(directory, {rel.split("/", 1)[0] for rel in payload})
    for entry in directory.iterdir():  # the previous payload, and any a crash left behind
        if entry.name.startswith("..") and entry.name not in (DATA, new.name) and entry.is_dir() \
                and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
    if old is not None and old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _link_top_level(directory: Path, names: set[str]) -> None:
    for name in names:
        link = directory / name
        if link.is_symlink():
            continue
        if link.exists():
            raise OSError(f"{link} exists and is not one of the volume's symlinks; "
                          "is a mountPath of another volume nested inside this one?")
        os.symlink(f"{DATA}/{name}", link)
    for entry in directory.iterdir():
        if entry.name.startswith("..") or entry.name in names or not entry.is_symlink():
            continue
        if os.readlink(entry).startswith(f"{DATA}/"):
            entry.unlink()
