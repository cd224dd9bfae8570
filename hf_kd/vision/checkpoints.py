"""Vision checkpoints with the text side's guarantees (``hf_kd.core.checkpointing``).

* **Staged, published atomically.** ``accelerator.save_state`` writes into ``.partial-checkpoint-N/checkpoint-N``
  (every rank its RNG file), then the main process writes the marker ``training_state.json`` -- step, steps per
  epoch, processes, GPU-hours and the size of every file -- and renames the folder to ``checkpoint-N``. A crash
  or ``kill -9`` mid-save leaves only a ``.partial-`` folder, which is never resumed and removed by the next save.
* **``latest`` verifies.** ``--resume_from_checkpoint latest`` picks the newest ``checkpoint-N`` whose marker parses,
  whose files have the sizes it lists and whose safetensors are readable; broken ones are skipped with a warning.
  An explicit folder is verified the same way (a folder from an older version, without marker, is accepted with
  a warning).
* **Rotation.** ``--save_total_limit N`` keeps the newest N checkpoints after each save (``transformers``'
  ``rotate_checkpoints``, as the Trainer does).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from accelerate import Accelerator
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..core.checkpointing import (
    PARTIAL_PREFIX,
    checkpoint_problem,
    latest_complete_checkpoint,
    publish,
    refuse_nonempty_output_dir,
    remove_partials,
    safetensors_problem,
)
from ..core.cli_utils import UserError

logger = logging.getLogger(__name__)

STATE_MARKER = "training_state.json"
CHECKPOINT_PREFIX = f"{PREFIX_CHECKPOINT_DIR}-"


def save_checkpoint(acc: Accelerator, output_dir: str | Path, step: int, marker: dict,
                    save_total_limit: int | None = None) -> Path:
    """``acc.save_state`` into a staging folder, then (main process) the marker, the rename and the rotation.

    Called on every rank (``save_state`` and the barriers are collective); returns ``<output_dir>/checkpoint-<step>``.
    """
    run_dir = Path(output_dir)
    name = f"{CHECKPOINT_PREFIX}{step}"
    staged = run_dir / f"{PARTIAL_PREFIX}{name}" / name
    if acc.is_main_process:
        remove_partials(run_dir)  # leftovers of a save that was killed
    acc.wait_for_everyone()
    acc.save_state(str(staged))
    acc.wait_for_everyone()  # every rank's files are written before the sizes are taken
    final = run_dir / name
    if acc.is_main_process:
        files = {f.name: f.stat().st_size for f in sorted(staged.iterdir()) if f.is_file()}
        (staged / STATE_MARKER).write_text(json.dumps({**marker, "step": step, "files": files}, indent=2) + "\n")
        publish(staged, final)
        rotate_checkpoints(str(run_dir), save_total_limit)
    acc.wait_for_everyone()
    return final


# What ``save_state`` wrote for an older hf-kd run, the loop state and cost meter (written last) included.
LEGACY_FILES = ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
                "custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl")


def _legacy_checkpoint(path: Path) -> bool:
    """A checkpoint written in place by an older hf-kd: no marker, but all of accelerate's files and readable
    weights (a save killed before its last file is not one)."""
    return (not (path / STATE_MARKER).exists() and all((path / f).is_file() for f in LEGACY_FILES)
            and safetensors_problem(path / "model.safetensors") is None)


def resolve_resume(output_dir: str | Path, resume: str) -> Path:
    """The folder ``--resume_from_checkpoint`` names (``latest`` = newest complete one), verified."""
    if resume == "latest":
        found = latest_complete_checkpoint(output_dir, state_file=STATE_MARKER)
        if found is None:
            raise UserError(f"--resume_from_checkpoint latest: no complete {CHECKPOINT_PREFIX}<step> folder in "
                            f"{str(output_dir)!r} (one without {STATE_MARKER}, from an older version, can be passed "
                            "by its path)")
        return Path(found)
    path = Path(resume)
    if not path.is_dir():
        raise UserError(f"checkpoint {resume!r} is not a folder; expected {CHECKPOINT_PREFIX}<step> or 'latest'")
    problem = checkpoint_problem(path, state_file=STATE_MARKER)
    if problem is None:
        return path
    if _legacy_checkpoint(path):
        logger.warning("%s has no %s (written by an older version): resuming from it unverified", path, STATE_MARKER)
        return path
    raise UserError(f"checkpoint {resume!r} is incomplete: {problem}; pass another one or 'latest'")


def check_output_dir(output_dir: str | Path, resume: str | None, overwrite: bool) -> Path | None:
    """Refuse to train into a non-empty output_dir (unless overwriting or resuming); resolve the resume path."""
    if resume:
        return resolve_resume(output_dir, resume)
    refuse_nonempty_output_dir(output_dir, overwrite)
    return None
