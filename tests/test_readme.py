"""The README's first-hour instructions cannot drift: its install lines name only extras and files that exist,
its first screen times both make commands, and the walk-through's training commands run as written (at tiny size).
"""

from __future__ import annotations

import json
import re
import shlex

import pytest
import tomllib

from tests.support import REPO

README = (REPO / "README.md").read_text()


def _section(heading: str) -> str:
    start = README.index(f"\n## {heading}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def _bash_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks in ``text``: comments dropped, ``\\`` continuations joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line.split(" #")[0].strip() for line in joined.splitlines()
                     if line.strip() and not line.lstrip().startswith("#")]
    return commands


def test_install_lines_name_only_extras_and_files_that_exist():
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    install = _section("Install")
    pip_lines = [c for c in _bash_commands(install) if c.startswith("pip install")]
    assert pip_lines, "the Install section has no pip install line"
    for line in pip_lines:  # what a reader copies; the prose may mention the future `pip install hf-kd`
        assert not re.match(r"pip install \"?hf-kd\b(?! @)", line), f"hf-kd is not on the package index: {line}"
    for line in pip_lines + re.findall(r"`(pip install [^`]+)`", install):
        for extra in re.findall(r"\[([a-z,]+)\]", line):
            for name in extra.split(","):
                assert name in extras, f"README installs extra {name!r}, pyproject has {sorted(extras)}"
    for path in re.findall(r"`((?:run_scripts|ds_configs|examples)/[^`\s]*)`", README):
        for p in re.sub(r"\{([^}]*)\}", lambda m: m.group(1).split(",")[0], path).split():
            assert (REPO / p).exists(), f"README names {p}, which is not in the repository"
    makefile = (REPO / "Makefile").read_text()
    for target in set(re.findall(r"`?make (\w+)`?", README)):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"README runs `make {target}`; no such target"


def test_first_screen_times_both_make_commands_and_activates_the_environment():
    first = README[:README.index("\n## ")]
    for command in ("make demo", "make test"):
        line = next(line for line in first.splitlines() if line.startswith(command))
        assert re.search(r"\d+ min \d+ s measured", line), line
    assert "source .venv/bin/activate" in first


@pytest.mark.slow
def test_walk_through_training_commands_run_as_written_at_tiny_size(tmp_path, monkeypatch):
    """Steps 1-3 parsed from the README, in a folder of their own, with size flags appended (later flags win)."""
    from run_scripts.run_mlm_kd import main

    steps = [c for c in _bash_commands(_section("Walk-through")) if c.startswith("python run_scripts/run_mlm_kd.py")]
    assert len(steps) == 3, steps
    tiny = ["--max_steps", "4", "--save_steps", "2", "--eval_steps", "2", "--logging_steps", "1", "--vocab_size",
            "512", "--max_seq_length", "32", "--max_train_samples", "32", "--max_eval_samples", "8",
            "--per_device_train_batch_size", "4", "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true"]
    monkeypatch.chdir(tmp_path)  # runs/teacher etc. as the README writes them
    monkeypatch.setenv("HF_KD_CACHE", str(tmp_path / "cache"))
    results = {}
    for command in steps:
        argv = shlex.split(command)[2:] + tiny
        out = argv[argv.index("--output_dir") + 1]
        results[out] = main(argv)
        assert (tmp_path / out / "model.safetensors").is_file(), out
    assert set(results) == {"runs/teacher", "runs/baseline", "runs/kd"}
    assert results["runs/kd"]["teacher_forwards"] > 0 and results["runs/baseline"]["teacher_forwards"] == 0
    for run in ("runs/baseline", "runs/kd"):  # the checkpoints step 4 fine-tunes, each with a logged cost
        state = json.loads((tmp_path / run / "checkpoint-2" / "trainer_state.json").read_text())
        assert any("gpu_hours" in e for e in state["log_history"]), run
        lrs = [e["learning_rate"] for e in state["log_history"] if "learning_rate" in e]
        assert max(lrs) > 1e-3, f"{run}: the tiny preset's learning rate did not apply ({lrs})"
