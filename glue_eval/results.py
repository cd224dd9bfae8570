"""The results file: one JSON line per fine-tune, appended durably, resumable.

A line is keyed by (run, checkpoint, task, seed, ``config_hash``): the hash of its ``config``, everything
that shapes the result (hyperparameters, training flags, caps, data source, tokenizer, the checkpoint's
identity: resolved path and its weight files' size and mtime). A rerun with another learning rate, without a
smoke test's caps, on other data or on rewritten weights therefore computes new lines instead of reusing old
ones. Each line also names its run folder (``run_path``); a run name already used in the file for another
folder is refused (:func:`check_run_names`).

Each finished entry is written as one line with flush + fsync, so a killed sweep loses at most the entry it
was computing. On start the file is read back; a truncated last line (a write cut by the kill) is cut off
the file, and finished keys are skipped, so a rerun neither duplicates nor loses an entry::

    from glue_eval.results import ResultsFile
    results = ResultsFile("glue/results.jsonl")
    if not results.done({"run": "kd", "checkpoint": "checkpoint-1000", "task": "rte", "seed": 0}): ...
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

KEY_FIELDS = ("run", "checkpoint", "task", "seed", "config_hash")


def entry_key(record: dict) -> tuple:
    return tuple(str(record.get(k)) for k in KEY_FIELDS)


def config_hash(config: dict) -> str:
    """Short stable hash of a JSON-able configuration."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_run_names(records: list[dict], run_paths: dict[str, str], where: str) -> None:
    """Refuse a run name whose existing lines in ``where`` came from another run folder."""
    for name, path in run_paths.items():
        other = next((r["run_path"] for r in records if r.get("run") == name and r.get("run_path")
                      and r["run_path"] != path), None)
        if other:
            raise ValueError(f"run name {name!r} of {path!r} collides: {where!r} already holds lines of {other!r} "
                             "under that name; expected distinct names (give --run_names, or another results file)")


def read_records(path: str | Path) -> tuple[list[dict], int]:
    """Complete records of a JSON-lines file and the byte length they occupy (a cut last line is ignored)."""
    p = Path(path)
    if not p.exists():
        return [], 0
    data = p.read_bytes()
    good_end = data.rfind(b"\n") + 1  # bytes after the last newline are an interrupted write
    records = []
    for n, line in enumerate(data[:good_end].split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"results file {str(p)!r} line {n} is not valid JSON ({e.msg}); expected one JSON "
                             "object per line -- fix or remove that line") from e
    if good_end < len(data):
        logger.warning("%s: ignoring a truncated last line (%d bytes)", p, len(data) - good_end)
    return records, good_end


class ResultsFile:
    """Append-only results with the keys of finished entries; ``writer=False`` (non-main ranks) never writes."""

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self.records, good_end = read_records(self.path)
        if writer and self.path.exists() and good_end < self.path.stat().st_size:
            with open(self.path, "r+b") as f:  # drop the interrupted write so the next line starts clean
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        self.keys = {entry_key(r) for r in self.records}

    def done(self, record: dict) -> bool:
        return entry_key(record) in self.keys

    def append(self, record: dict) -> None:
        key = entry_key(record)
        if key in self.keys:
            raise ValueError(f"entry {key} is already in {str(self.path)!r}")
        self.records.append(record)
        self.keys.add(key)
        if not self.writer:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
