"""Builders shared by the tests (imported by them; no test lives here)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Real GLUE tasks and a C4 sample; tests that read them skip when the folder is absent.
DATA_DIR = Path(os.environ.get("HF_KD_TEST_DATA", REPO.parent / "shared" / "data"))
