"""Atomic file writes: a reader, a concurrent writer or a crash sees the whole new file or the old one, never half.

Every file the package publishes in place (model folders, cache shards, manifests, metrics rewritten on resume)
goes through :func:`write_atomic`: write a temporary sibling, fsync it, ``os.replace`` it over the target (atomic
on POSIX within one file system), then fsync the folder so the rename itself survives a power cut.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` writes the content to the temporary path it is given; then it is published as ``path``.

    The temporary name carries the process id, so two processes writing the same file never share one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """``obj`` as JSON (with a final newline); ``json.dumps`` runs before anything is written, so an object that
    cannot be serialised leaves the old file untouched."""
    write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")
