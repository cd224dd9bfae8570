"""Atomic writes: the target holds the old content or the whole new one, never a part, and no temporary stays."""

from __future__ import annotations

import json

import pytest

from hf_kd.core.atomic import write_atomic, write_json_atomic, write_text_atomic


def test_a_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"step": 1})
    write_json_atomic(path, {"step": 2, "files": {"a": 3}})
    assert json.loads(path.read_text()) == {"step": 2, "files": {"a": 3}} and path.read_text().endswith("\n")
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_write_that_fails_midway_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_text_atomic(path, "old\n")

    def half_then_crash(tmp):
        tmp.write_text("new but incomp")
        raise KeyboardInterrupt  # e.g. Ctrl-C while writing

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, half_then_crash)
    with pytest.raises(TypeError):
        write_json_atomic(path, {"not json": object()})
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
