"""Crash-safe checkpoints: staged saves published by one atomic rename, and a ``latest`` that skips broken ones.

``transformers.Trainer`` writes ``checkpoint-N/`` in place, so a crash (or ``kill -9``) mid-save leaves a folder
that ``get_last_checkpoint`` picks and ``resume`` then fails on. :class:`StagedCheckpoint` names the staging folder
``.partial-checkpoint-N/checkpoint-N`` that every rank writes into and publishes it as ``checkpoint-N`` by one
rename once all are done (the text trainer's ``_save_checkpoint`` and the vision loop drive it); :func:`latest_complete_checkpoint` additionally verifies a folder before resuming from it (a
checkpoint truncated by a full disk, or written by another tool, is skipped with a warning).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .errors import UserError

logger = logging.getLogger(__name__)

PARTIAL_PREFIX = ".partial-"
STATE_FILE = "trainer_state.json"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# Weight files other than safetensors that mark a checkpoint as holding a model (DeepSpeed writes `latest`).
OTHER_WEIGHT_MARKERS = ("pytorch_model.bin", "latest")


def checkpoint_problem(path: str | os.PathLike, state_file: str = STATE_FILE) -> str | None:
    """Why ``path`` is not a complete, resumable checkpoint folder; ``None`` when it is one.

    Complete = ``state_file`` parses (the Trainer writes ``trainer_state.json`` after the weights, optimizer and
    RNG state; the vision loop writes its own marker last), every file the marker lists under ``"files"``
    (name -> size in bytes) has that size, and every ``*.safetensors`` file has a readable header that covers the
    whole file (catches truncation).
    """
    p = Path(path)
    if not p.is_dir():
        return "it is not a folder"
    try:
        state = json.loads((p / state_file).read_text())
    except FileNotFoundError:
        return f"it has no {state_file}"
    except (OSError, ValueError) as e:
        return f"its {state_file} is unreadable ({e})"
    listed = state.get("files", {}) if isinstance(state, dict) else {}
    for name, size in listed.items():
        actual = (p / name).stat().st_size if (p / name).is_file() else None
        if actual != size:
            return f"{name} is {'missing' if actual is None else f'{actual} bytes'}, its marker says {size} bytes"
    weights = sorted(p.glob("*.safetensors"))
    if not weights and not any((p / m).exists() for m in OTHER_WEIGHT_MARKERS):
        return "it holds no model weights"
    for f in weights:
        problem = safetensors_problem(f)
        if problem:
            return problem
    return None


def safetensors_problem(path: Path) -> str | None:
    """``None`` if ``path`` is a readable safetensors file, else why not (safetensors checks the size too)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:  # safetensors raises its own error types for truncated headers/data
        return f"{path.name} is not a readable safetensors file ({e})"
    return None


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-N`` folders of ``output_dir``, newest (highest N) first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in out.iterdir() if (m := _CHECKPOINT_RE.match(d.name)) and d.is_dir()]
    return [d for _, d in sorted(found, reverse=True)]


def latest_complete_checkpoint(output_dir: str | os.PathLike, state_file: str = STATE_FILE) -> str | None:
    """The newest checkpoint of ``output_dir`` that :func:`checkpoint_problem` accepts; broken ones are logged."""
    for folder in checkpoint_folders(output_dir):
        problem = checkpoint_problem(folder, state_file)
        if problem is None:
            return str(folder)
        logger.warning("skipping incomplete checkpoint %s: %s", folder, problem)
    return None


def refuse_nonempty_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> None:
    """A fresh run (not resuming) never writes into a non-empty ``output_dir`` unless ``--overwrite_output_dir``."""
    out = Path(output_dir)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output_dir {str(out)!r} is not empty; pass --overwrite_output_dir, "
                        "--resume_from_checkpoint latest, or another --output_dir")


def resolve_resume(output_dir: str | os.PathLike, resume: str | bool | None,
                   state_file: str = STATE_FILE) -> Path | None:
    """The verified folder ``--resume_from_checkpoint`` names; ``None`` when not resuming.

    ``latest`` (or ``true``, what the Trainer's own flag accepts) is the newest complete ``checkpoint-<step>`` of
    ``output_dir``; a path must be a complete checkpoint (:func:`checkpoint_problem`). Every task calls this, so
    the forms accepted and the error texts are the same for text and vision.
    """
    if resume is None or resume is False or str(resume).strip().lower() in ("", "false", "none"):
        return None
    if resume is True or str(resume).strip().lower() in ("latest", "true"):
        found = latest_complete_checkpoint(output_dir, state_file)
        if found is None:
            raise UserError(f"--resume_from_checkpoint {resume}: no complete {PREFIX_CHECKPOINT_DIR}-<step> folder in "
                            f"{str(output_dir)!r}; expected a run folder with a finished checkpoint")
        return Path(found)
    path = Path(resume)
    if not path.exists():
        raise UserError(f"--resume_from_checkpoint {str(resume)!r} does not exist; expected a "
                        f"{PREFIX_CHECKPOINT_DIR}-<step> folder or 'latest'")
    problem = checkpoint_problem(path, state_file)
    if problem:
        raise UserError(f"--resume_from_checkpoint {str(resume)!r} is not a complete checkpoint: {problem}; pass "
                        f"another {PREFIX_CHECKPOINT_DIR}-<step> folder or 'latest'")
    return path


def check_run_dir(output_dir: str | os.PathLike, resume: str | bool | None, overwrite: bool,
                  state_file: str = STATE_FILE) -> Path | None:
    """Resolve ``--resume_from_checkpoint`` (see :func:`resolve_resume`); a fresh run refuses a non-empty folder."""
    resumed = resolve_resume(output_dir, resume, state_file)
    if resumed is None:
        refuse_nonempty_output_dir(output_dir, overwrite)
    return resumed


def remove_partials(run_dir: str | os.PathLike) -> None:
    """Delete staging folders a killed save left behind (never picked for resume, but they take space)."""
    for d in Path(run_dir).glob(f"{PARTIAL_PREFIX}{PREFIX_CHECKPOINT_DIR}-*"):
        shutil.rmtree(d, ignore_errors=True)


def publish(staged: Path, final: Path) -> None:
    """Move the finished ``staged`` folder to ``final``; an existing ``final`` is replaced."""
    old = final.with_name(f"{PARTIAL_PREFIX}old-{final.name}")
    if final.exists():
        # A directory cannot be renamed over a non-empty one: move it aside first. A crash in between
        # leaves no `final`, so resume falls back to the previous complete checkpoint.
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    staged.rename(final)  # atomic on POSIX within one filesystem
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staged.parent, ignore_errors=True)


@dataclass(frozen=True)
class StagedCheckpoint:
    """Where ``checkpoint-<step>`` of ``run_dir`` is written (``staged``) and published (``final``).

    The saving process calls :meth:`clear_leftovers` before every rank writes into :attr:`root` and
    :meth:`publish` once all are done; nothing here knows who writes (the text trainer, the vision loop).
    """

    run_dir: Path
    step: int

    @property
    def name(self) -> str:
        return f"{PREFIX_CHECKPOINT_DIR}-{self.step}"

    @property
    def root(self) -> Path:
        """The staging folder; writers place ``checkpoint-<step>`` inside it."""
        return self.run_dir / f"{PARTIAL_PREFIX}{self.name}"

    @property
    def staged(self) -> Path:
        return self.root / self.name

    @property
    def final(self) -> Path:
        return self.run_dir / self.name

    def clear_leftovers(self) -> None:
        remove_partials(self.run_dir)

    def publish(self, keep: int | None = None, best: str | None = None) -> None:
        """Publish the staged folder by one rename; then keep the newest ``keep`` checkpoints (and ``best``)."""
        publish(self.staged, self.final)
        rotate_checkpoints(str(self.run_dir), keep, best, use_mtime=True)
