"""Reading GLUE in the original download's layout: the real files' quirks, row counts, and errors."""

from __future__ import annotations

import datasets
import pytest

from glue_eval.data import check_glue_dir, load_task, read_split
from glue_eval.tasks import TASKS
from glue_eval.testing import write_glue_fixture
from tests.support import DATA_DIR

REAL_GLUE = DATA_DIR / "glue"
# Row counts listed in the data folder's README (../shared/data/README.md by default).
REAL_COUNTS = {("cola", "train"): 8551, ("cola", "dev"): 1043, ("sst2", "train"): 67349, ("sst2", "dev"): 872,
               ("mrpc", "train"): 3668, ("mrpc", "dev"): 408, ("stsb", "train"): 5749, ("stsb", "dev"): 1500,
               ("rte", "train"): 2490, ("rte", "dev"): 277, ("wnli", "train"): 635, ("wnli", "dev"): 71,
               ("qnli", "dev"): 5463}


def test_fixture_quirks(tmp_path):
    write_glue_fixture(tmp_path, n_train=6, n_dev=4)
    cola = read_split("cola", tmp_path / "CoLA" / "train.tsv")  # no header: all 6 lines are rows
    assert len(cola["sentence"]) == 6 and cola["label"] == [0, 1, 0, 1, 0, 1]
    mrpc = read_split("mrpc", tmp_path / "MRPC" / "dev.tsv")  # BOM + lone quotes: still 4 rows, 2 texts each
    assert len(mrpc["label"]) == 4 and mrpc["sentence1"][0].startswith('"') and '"quoted"' in mrpc["sentence2"][0]
    stsb = read_split("stsb", tmp_path / "STS-B" / "dev.tsv")
    assert stsb["label"] == pytest.approx([0.0, 0.7, 1.4, 2.1]) and isinstance(stsb["label"][0], float)
    splits = load_task("mnli", tmp_path)
    assert set(splits) == {"train", "validation_matched", "validation_mismatched"}
    assert splits["validation_matched"]["label"] == [0, 1, 2, 0] and splits["train"].column_names == [
        "premise", "hypothesis", "label"]
    capped = load_task("qqp", tmp_path, max_train_samples=2, max_eval_samples=3)
    assert (len(capped["train"]), len(capped["validation"])) == (2, 3)


def test_errors_name_the_bad_value(tmp_path):
    write_glue_fixture(tmp_path, n_train=2, n_dev=2, tasks=["rte", "mnli"])
    (tmp_path / "MNLI" / "dev_mismatched.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="no mnli validation_mismatched split.*MNLI/dev_mismatched.tsv"):
        check_glue_dir(tmp_path, ["rte", "mnli"])
    with pytest.raises(FileNotFoundError, match="not a folder"):
        check_glue_dir(tmp_path / "nope", ["rte"])
    bad = tmp_path / "RTE" / "dev.tsv"
    bad.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ValueError, match="line 2 is malformed for rte.*expected text field"):
        read_split("rte", bad)


def test_hub_path_keeps_hub_columns(monkeypatch):
    calls = []

    def fake_load(name, config):
        calls.append((name, config))
        ds = datasets.Dataset.from_dict({"idx": [0, 1], "sentence1": ["a", "b"], "sentence2": ["c", "d"],
                                         "label": [1.5, 2.0]})
        return datasets.DatasetDict({"train": ds, "validation": ds, "test": ds})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    out = load_task("stsb", max_eval_samples=1)
    assert calls == [("nyu-mll/glue", "stsb")]
    assert set(out) == {"train", "validation"} and out["validation"].column_names == ["sentence1", "sentence2", "label"]
    assert len(out["validation"]) == 1


@pytest.mark.skipif(not REAL_GLUE.is_dir(), reason=f"{REAL_GLUE} is absent")
@pytest.mark.parametrize("task,split", sorted(REAL_COUNTS))
def test_real_glue_row_counts(task, split):
    cols = read_split(task, REAL_GLUE / TASKS[task].folder / f"{split}.tsv")
    assert len(cols["label"]) == REAL_COUNTS[task, split]
    assert all(len(v) == len(cols["label"]) for v in cols.values())
    assert all(s.strip() for c in TASKS[task].text_columns for s in cols[c][:50])
    if task == "stsb":
        assert min(cols["label"]) >= 0.0 and max(cols["label"]) <= 5.0
    else:
        assert set(cols["label"]) == set(range(len(TASKS[task].labels)))
