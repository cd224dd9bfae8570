"""Rebuild the verbatim reports inside docs/ from the run logs checked in beside them.

    python docs/rerender.py          # rewrite docs/reproduce_{builtin,clm,c4}.md's report and regime_study.md's table
    python docs/rerender.py --check  # exit 1 if any of them is stale (what tests/reproduce/test_rerender.py checks)

Each page keeps its own prose; only the part after its ``<!-- ... verbatim ... -->`` marker is the output of
``hf-kd reproduce --rerender`` (``--study --rerender`` for the regime study) on the page's logs. Plots are
rebuilt into a temporary folder and copied only where the page has one in ``docs/img``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
MARKER = "<!-- results.md of that run, verbatim"


def report_pages() -> list[str]:
    """Every page under docs/ holding a verbatim report, with its run logs beside it (``<name>.json``)."""
    return sorted(str(p.relative_to(DOCS).with_suffix("")) for p in DOCS.rglob("*.md")
                  if p.with_suffix(".json").is_file() and MARKER in p.read_text())


REPORTS = tuple(report_pages())


def _split(text: str, marker: str) -> tuple[str, str]:
    head, rest = text.split(marker, 1)
    comment, _ = rest.split("-->\n\n", 1)
    return head + marker + comment + "-->\n\n", rest.split("-->\n\n", 1)[1]


def rerender_page(name: str, tmp: Path) -> tuple[str, str]:
    """(current page, page with a freshly rendered report)."""
    from hf_kd.cli import main as cli_main

    page = DOCS / f"{name}.md"
    text = page.read_text()
    work = tmp / name
    work.mkdir(parents=True)
    if name == "regime_study":
        head, _ = _split(text, "<!-- study.md of that run, verbatim")
        shutil.copytree(DOCS / "regime_study" / "cells", work / "cells")
        assert cli_main(["reproduce", "--study", "--rerender", "--output_dir", str(work)]) == 0
        return text, head + (work / "study.md").read_text()
    head, _ = _split(text, MARKER)
    shutil.copy(DOCS / f"{name}.json", work / "results.json")
    assert cli_main(["reproduce", "--rerender", "--output_dir", str(work)]) == 0
    if "--check" not in sys.argv:  # the plots' paths point into the temporary folder: keep their names only
        results = json.loads((work / "results.json").read_text())
        results["plots"] = [Path(p).name for p in results.get("plots", [])]
        (DOCS / f"{name}.json").write_text(json.dumps(results, indent=1))
    return text, head + (work / "results.md").read_text()


def main() -> int:
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in (*REPORTS, "regime_study"):
            old, new = rerender_page(name, Path(tmp))
            if old != new:
                stale.append(name)
                if "--check" not in sys.argv:
                    (DOCS / f"{name}.md").write_text(new)
    print(("stale: " if "--check" in sys.argv else "rewritten: ") + (", ".join(stale) or "none"))
    return 1 if stale and "--check" in sys.argv else 0


if __name__ == "__main__":
    sys.exit(main())
