"""Vision checkpoints with the text side's guarantees (``hf_kd.core.checkpointing``).

* **Staged, published atomically.** ``accelerator.save_state`` writes into ``.partial-checkpoint-N/checkpoint-N``
  (every rank its RNG file), then the main process writes the marker ``training_state.json`` -- step, steps per
  epoch, processes, GPU-hours and the size of every file -- and renames the folder to ``checkpoint-N``. A crash
  or ``kill -9`` mid-save leaves only a ``.partial-`` folder, which is never resumed and removed by the next save.
* **``latest`` verifies.** ``--resume_from_checkpoint latest`` picks the newest ``checkpoint-N`` whose marker parses,
  whose files have the sizes it lists and whose safetensors are readable; broken ones are skipped with a warning.
  An explicit folder is verified the same way (``hf_kd.core.checkpointing.resolve_resume``, shared with text).
* **Rotation.** ``--save_total_limit N`` keeps the newest N checkpoints after each save (``transformers``'
  ``rotate_checkpoints``, as the Trainer does).
"""

from __future__ import annotations

import json
from pathlib import Path

from accelerate import Accelerator
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..core.checkpointing import PARTIAL_PREFIX, check_run_dir, publish, remove_partials

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


def check_output_dir(output_dir: str | Path, resume: str | None, overwrite: bool) -> Path | None:
    """The verified checkpoint to resume from (``None``: a fresh run, which refuses a non-empty output_dir)."""
    return check_run_dir(output_dir, resume, overwrite, state_file=STATE_MARKER)
