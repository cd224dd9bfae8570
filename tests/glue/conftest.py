"""Fixtures for the GLUE tests."""

import gc

import pytest


@pytest.fixture(autouse=True, scope="module")
def _fast_gc():
    """The Trainer runs gc.collect() after every fine-tuning; with the test module's heap frozen it is cheap."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()
