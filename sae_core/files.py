"""Writing our files: atomically (readers see the old file or the new one, never half of one), and refusing
files written by a newer version of the package."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_version(path: str | Path, version: int | None, supported: int) -> None:
    """Refuse a file written by a newer version of this package (its layout may mean something else)."""
    from .errors import SAEFormatError

    if version is not None and version > supported:
        raise SAEFormatError(path, "was written by a newer version of this package", found=f"format {version}",
                             expected=f"format <= {supported} (update the node pack)")
