"""GLUE data: the Hub (``nyu-mll/glue``) or a local copy of the original GLUE download.

Local layout (``--glue_dir``): ``<dir>/<Folder>/train.tsv`` and ``dev.tsv`` (MNLI: ``dev_matched.tsv`` and
``dev_mismatched.tsv``), folders CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI. The files' quirks:
CoLA has no header (``source, label, star, sentence``); MRPC starts with a UTF-8 BOM and has unbalanced
quote characters inside fields (so rows are split on tabs only, never with csv quoting); STS-B has 10
columns with the float score last; MNLI's label is ``gold_label``. Every split comes back with the Hub's
column names and label ids, so both sources feed the same code::

    from glue_eval.data import load_task
    splits = load_task("rte", glue_dir="data/glue")   # DatasetDict: train, validation (no glue_dir: the Hub)
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets

from .tasks import DEV_FILES, TASKS, TaskSpec

logger = logging.getLogger(__name__)

HUB_DATASET = "nyu-mll/glue"
# Columns of each headed file that hold (text_a, text_b, label), in the file's own header names.
FILE_COLUMNS = {
    "sst2": ("sentence", None, "label"),
    "mrpc": ("#1 String", "#2 String", "Quality"),
    "stsb": ("sentence1", "sentence2", "score"),
    "qqp": ("question1", "question2", "is_duplicate"),
    "mnli": ("sentence1", "sentence2", "gold_label"),
    "qnli": ("question", "sentence", "label"),
    "rte": ("sentence1", "sentence2", "label"),
    "wnli": ("sentence1", "sentence2", "label"),
}
COLA_POSITIONS = (3, None, 1)  # no header: source, label, star, sentence
SKIP_MALFORMED = {"qqp", "mnli"}  # large files known to hold a few broken rows: skipped with a warning


def split_files(task: str, glue_dir: str | Path) -> dict[str, Path]:
    """Hub split name -> file of the original download."""
    spec = TASKS[task]
    folder = Path(glue_dir) / spec.folder
    return {"train": folder / "train.tsv", **{s: folder / DEV_FILES[s] for s in spec.eval_splits}}


def check_glue_dir(glue_dir: str | Path, tasks: list[str]) -> None:
    """Fail before anything is written when a task's folder or split file is missing."""
    if not Path(glue_dir).is_dir():
        raise FileNotFoundError(f"--glue_dir {str(glue_dir)!r} is not a folder; expected the GLUE download "
                                "layout <dir>/<TASK>/train.tsv, dev.tsv")
    for task in tasks:
        for split, path in split_files(task, glue_dir).items():
            if not path.is_file():
                raise FileNotFoundError(f"--glue_dir {str(glue_dir)!r} has no {task} {split} split: {str(path)!r} "
                                        f"is missing (expected {TASKS[task].folder}/{path.name})")


def _read_lines(path: Path) -> list[list[str]]:
    """Tab-split rows; BOM stripped; no quote handling (MRPC/MNLI fields contain lone quote characters)."""
    text = path.read_text(encoding="utf-8-sig")
    return [line.rstrip("\r").split("\t") for line in text.split("\n") if line.rstrip("\r")]


def _positions(task: str, rows: list[list[str]], path: Path) -> tuple[tuple, list[list[str]]]:
    if task == "cola":
        return COLA_POSITIONS, rows
    if not rows:
        raise ValueError(f"{str(path)!r} is empty; expected a header line and rows")
    header = rows[0]
    missing = [c for c in FILE_COLUMNS[task] if c is not None and c not in header]
    if missing:
        raise ValueError(f"{str(path)!r} has no column {missing[0]!r} for {task}; header found: {header}")
    return tuple(None if c is None else header.index(c) for c in FILE_COLUMNS[task]), rows[1:]


def _label(spec: TaskSpec, text: str):
    if spec.is_regression:
        return float(text)
    return spec.labels.index(text.strip())


def read_split(task: str, path: str | Path) -> dict[str, list]:
    """One split file -> columns with the Hub's names (``spec.text_columns`` + ``label``)."""
    spec, path = TASKS[task], Path(path)
    (ia, ib, il), rows = _positions(task, _read_lines(path), path)
    cols: dict[str, list] = {c: [] for c in (*spec.text_columns, "label")}
    skipped = 0
    first_line = 1 if task == "cola" else 2
    for n, row in enumerate(rows, start=first_line):
        try:
            values = [row[ia]] + ([row[ib]] if ib is not None else []) + [_label(spec, row[il])]
        except (IndexError, ValueError) as e:
            if task in SKIP_MALFORMED:
                skipped += 1
                continue
            expected = "a float score" if spec.is_regression else f"a label in {list(spec.labels)}"
            raise ValueError(f"{str(path)!r} line {n} is malformed for {task} ({len(row)} fields); expected "
                             f"text field(s) and {expected}") from e
        for c, v in zip(cols, values):
            cols[c].append(v)
    if skipped:
        logger.warning("%s: skipped %d malformed rows", path, skipped)
    return cols


def _cap(ds: datasets.Dataset, n: int | None) -> datasets.Dataset:
    return ds if n is None else ds.select(range(min(n, len(ds))))


def load_task(task: str, glue_dir: str | Path | None = None, max_train_samples: int | None = None,
              max_eval_samples: int | None = None) -> datasets.DatasetDict:
    """``train`` plus the task's eval splits (``validation``; MNLI ``validation_matched/_mismatched``)."""
    spec = TASKS[task]
    if glue_dir is not None:
        check_glue_dir(glue_dir, [task])
        out = datasets.DatasetDict({s: datasets.Dataset.from_dict(read_split(task, p))
                                    for s, p in split_files(task, glue_dir).items()})
    else:
        # The real path: the Hub copy of GLUE (needs network access; kept although this machine is offline).
        hub = datasets.load_dataset(HUB_DATASET, task)
        keep = [*spec.text_columns, "label"]
        out = datasets.DatasetDict({s: hub[s].select_columns(keep) for s in ("train", *spec.eval_splits)})
    caps = {s: (max_train_samples if s == "train" else max_eval_samples) for s in out}
    return datasets.DatasetDict({s: _cap(ds, caps[s]) for s, ds in out.items()})
