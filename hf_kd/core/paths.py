"""Up-front checks on the folders a run will write, so a bad ``--output_dir`` fails in one line before any work."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError


def check_output_dir_creatable(output_dir: str | os.PathLike, flag: str = "--output_dir") -> None:
    """Refuse an output folder that cannot be created (under a file, on a read-only or virtual file system).

    The probe creates the missing folders and removes them again, so a refusal that comes later still leaves
    nothing behind; permissions alone cannot answer it (root may write anywhere except where the kernel says no,
    e.g. under ``/proc``).
    """
    path = Path(output_dir).expanduser().absolute()
    if path.is_dir():
        return
    if path.exists():
        raise UserError(f"{flag} {str(output_dir)!r} is a file; expected a folder (existing or to be created)")
    created: list[Path] = []
    try:
        for p in reversed([path, *path.parents]):
            if not p.exists():
                try:
                    p.mkdir()
                except FileExistsError:  # another rank of the same launch probing at the same moment
                    continue
                created.append(p)
            elif not p.is_dir():
                raise UserError(f"{flag} {str(output_dir)!r} cannot be created: {str(p)!r} is a file; expected a "
                                "folder that can be created")
    except OSError as e:
        raise UserError(f"{flag} {str(output_dir)!r} cannot be created ({e.strerror or e}); expected a writable "
                        "location") from e
    finally:
        for p in reversed(created):
            try:
                p.rmdir()
            except OSError:
                pass
