"""A report's numbers must follow from the run logs kept beside it (``hf-kd reproduce --rerender --check``)."""

import importlib.util
import json
from pathlib import Path

import pytest

from hf_kd.cli import main as cli_main
from hf_kd.reproduce.report import write_report


def _run(variant, losses, seed, role="student", teachers=()):
    log = []
    for i, loss in enumerate(losses, start=1):
        log.append({"loss": loss, "gpu_hours": i * 0.01, "step": i * 10})
        log.append({"eval_loss": loss, "eval_accuracy": 1 / loss, "gpu_hours": i * 0.01, "step": i * 10})
    return {"variant": variant, "role": role, "seed": seed, "steps": 10 * len(losses), "teacher_forwards": 0,
            "teachers": list(teachers), "kd_stop_ratio": None, "selection": "mean", "run_dir": f"gone/{variant}",
            "log_history": log}


def _report(tmp_path):
    runs = []
    for s in range(3):
        runs += [_run("baseline", [6.0, 5.5, 5.0 + s / 100], s), _run("baseline_2x", [6, 5.6, 5.3, 5.1, 4.9, 4.7], s,
                                                                        role="frontier"),
                 _run("kd_full", [5.6, 5.1, 4.8 + s / 50], s, teachers=("good",))]
    results = {"task": "mlm", "corpus": "synthetic", "teachers": {"good": {"steps": 90, "gpu_hours": 0.1, "final_quality": 4.5}},
               "regime": {"unigram_entropy": 6.2}, "calibration": {"relative": {"base": 1.0, "kd1": 1.3},
                                                                   "rounds": 5, "threads": 1}, "runs": runs}
    write_report(results, tmp_path)
    return tmp_path / "results.md"


def test_rerender_check_accepts_a_report_that_follows_from_its_logs(tmp_path, capsys):
    md = _report(tmp_path)
    assert "6.2000 nats" in md.read_text() and "teacher `good`" in md.read_text()
    assert cli_main(["reproduce", "--rerender", "--check", "--output_dir", str(tmp_path)]) == 0
    assert "follows from its run logs" in capsys.readouterr().out


def test_rerender_reads_the_task_from_results_json_not_from_a_label(tmp_path, capsys):
    _report(tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    saved["metric"]["label"] = "held-out next-token loss"  # a label is prose: it does not decide the task
    (tmp_path / "results.json").write_text(json.dumps(saved))
    assert cli_main(["reproduce", "--rerender", "--check", "--output_dir", str(tmp_path)]) == 0
    del saved["task"]
    (tmp_path / "results.json").write_text(json.dumps(saved))
    assert cli_main(["reproduce", "--rerender", "--check", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names task None" in err[0] and "mlm, clm, vision" in err[0]


def test_rerender_check_rejects_an_edited_or_stale_report(tmp_path, capsys):
    md = _report(tmp_path)
    text = md.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| kd_full |"))
    md.write_text(text.replace(row, row.replace("| 4.", "| 3.", 1)))  # a hand-edited final loss
    before = md.read_text()
    assert cli_main(["reproduce", "--rerender", "--check", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not follow from its run logs" in err[0] and "line " in err[0]
    assert md.read_text() == before  # --check writes nothing
    saved = json.loads((tmp_path / "results.json").read_text())
    assert all("log_history" in r for r in saved["runs"])  # the logs travel with the report
    assert cli_main(["reproduce", "--rerender", "--output_dir", str(tmp_path)]) == 0  # regenerate ...
    assert md.read_text() == text  # ... gives back what the logs say


DOCS = Path(__file__).resolve().parents[2] / "docs"
# docs/rerender.py is a script, not a package module: load it to use its page discovery and marker
_spec = importlib.util.spec_from_file_location("docs_rerender", DOCS / "rerender.py")
RERENDER = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(RERENDER)
MARKER, PAGES = RERENDER.MARKER, RERENDER.report_pages()


def test_the_checked_in_reports_are_found():
    assert {"reproduce_builtin", "reproduce_clm", "reproduce_clm_full", "reproduce_glue"} <= set(PAGES)


@pytest.mark.parametrize("name", PAGES)
def test_checked_in_report_follows_from_its_run_logs(tmp_path, name):
    """Each page's verbatim report must be what the checked-in code makes of its run logs (no stale numbers)."""
    import shutil

    docs, marker = DOCS, MARKER
    text = (docs / f"{name}.md").read_text()
    assert marker in text
    (tmp_path / "results.md").write_text(text.split(marker, 1)[1].split("-->\n\n", 1)[1])
    shutil.copy(docs / f"{name}.json", tmp_path / "results.json")
    assert cli_main(["reproduce", "--rerender", "--check", "--output_dir", str(tmp_path)]) == 0


def test_checked_in_regime_study_follows_from_its_run_logs(tmp_path):
    """docs/regime_study.md's table must be what the checked-in code makes of its cells' run logs."""
    import shutil
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    marker = "<!-- study.md of that run, verbatim"
    text = (docs / "regime_study.md").read_text()
    assert marker in text
    (tmp_path / "study.md").write_text(text.split(marker, 1)[1].split("-->\n\n", 1)[1])
    shutil.copytree(docs / "regime_study" / "cells", tmp_path / "cells")
    assert cli_main(["reproduce", "--study", "--rerender", "--check", "--output_dir", str(tmp_path)]) == 0
