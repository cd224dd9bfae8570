"""examples/ run as a user runs them (a subprocess, offline, built-in corpus), with few steps for CI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.support import REPO

EXAMPLE = REPO / "examples" / "distill_mlm.py"


@pytest.mark.slow
def test_distill_mlm_example_runs_offline(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_KD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "4", "--output_dir", str(tmp_path / "runs")],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vocabularies not compared" not in proc.stderr  # the example passes its tokenizer; its teacher is in memory
    summary = json.loads(proc.stdout[proc.stdout.rindex("{\n"):])
    assert summary["kd_stop_step"] == 2 and summary["teacher_forwards"] == 2  # KD for the first half of 4 steps
    assert 0 < summary["student_eval_loss"] < 20 and 0 < summary["teacher_eval_loss"] < 20
    assert summary["student_gpu_hours"] > 0


def test_readme_library_example_is_an_excerpt_of_the_script():
    """The README's Python block is copied from examples/distill_mlm.py, so it cannot drift from code that runs."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no python block"
    script = EXAMPLE.read_text()
    for line in blocks[0].splitlines():
        if line.strip() and not line.lstrip().startswith("# ...") and not line.startswith(("from ", "import ")):
            assert line in script, f"README line not in {EXAMPLE.name}: {line!r}"
