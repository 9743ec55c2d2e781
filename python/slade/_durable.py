"""Durable files of a run: atomic writes (temporary file, fsync, rename, fsync of the
folder) and the removal of the temporary files that a killed write leaves behind.

Temporary files are named ``<name>.tmp-<pid>``, as the Rust core names those of its
checkpoints, so one rule finds them all.

Every write and removal of a run's files goes through here; inside :func:`skipped` none
happens (the ranks but rank 0 of a distributed run: :mod:`slade.distributed`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_TEMPORARY = re.compile(r"\.tmp-[0-9]+$")

#: Whether writes and removals are skipped (:func:`skipped`).
_skipping = False


@contextmanager
def skipped(skip: bool = True) -> Iterator[None]:
    """Inside, with ``skip``, the writes and removals of this module do nothing."""
    global _skipping
    before, _skipping = _skipping, skip
    try:
        yield
    finally:
        _skipping = before


def remove(path: Path) -> None:
    """Removes a file or a folder tree, if there."""
    if _skipping:
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def temporary_path(path: Path) -> Path:
    """The sibling a write of ``path`` goes to before its rename."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def is_temporary(path: Path) -> bool:
    return _TEMPORARY.search(path.name) is not None


def write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically and durably: readers see the old file or the
    new one, never a part, and after a power cut the new one if this returned."""
    write_with(path, lambda temporary: temporary.write_bytes(data))


def write_with(path: Path, write: Callable[[Path], object]) -> None:
    """Atomically and durably writes the file that ``write`` creates at the path it is
    given (a temporary sibling): fsync, rename over ``path``, fsync of the folder. Readers
    see the old file or the new one, never a part, and after a power cut the new one if
    this returned."""
    if _skipping:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        write(temporary)
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def write_json(path: Path, value: Any) -> None:
    """Writes strict JSON atomically and durably (see :func:`write_bytes`): NaN and Inf,
    which JSON has no words for (a skipped step's loss), are written as ``null``."""
    write_bytes(path, json.dumps(_strict(value), indent=1, allow_nan=False).encode())


def _strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def sync_folder(folder: Path) -> None:
    """fsyncs a folder so that the renames and removals in it are durable (POSIX only)."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_temporary_files(folder: Path | None) -> list[Path]:
    """Removes the temporary files that killed writes left in ``folder``; returns them."""
    if _skipping or folder is None or not folder.is_dir():
        return []
    stale = [path for path in folder.iterdir() if path.is_file() and is_temporary(path)]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        sync_folder(folder)
    return stale
