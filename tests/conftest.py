"""Fixtures shared by every test folder; the builders they use live in ``tests/support``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support import DATA_DIR
from tests.support.data import write_tiny_corpus

# One thread: on a shared 2-core machine two OpenMP threads per test process oversubscribe the cores and
# tiny models run ~30x slower (measured); the tests measure correctness, not throughput.
torch.set_num_threads(1)


@pytest.fixture
def fresh_accelerate_state():
    """Reset accelerate's process-wide singletons after a test that built an ``Accelerator``."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def shared_data() -> Path:
    """The real-data folder (``HF_KD_TEST_DATA``, default ``../shared/data``); the test skips when it is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"{DATA_DIR} is absent (set HF_KD_TEST_DATA to a folder with glue/ and c4/)")
    return DATA_DIR


@pytest.fixture
def tiny_corpus(tmp_path, monkeypatch) -> str:
    """A 120-line .jsonl corpus for reproduce runs, with ``HF_KD_CACHE`` under ``tmp_path``."""
    return write_tiny_corpus(tmp_path, monkeypatch)
