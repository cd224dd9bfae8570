"""--help puts hf-kd's own flags first; ``hf-kd --help`` names every training script."""

from __future__ import annotations

import pytest

from hf_kd.core.cli_utils import make_parser


@pytest.mark.parametrize("script", ["mlm", "clm"])
def test_script_help_lists_hf_kd_flags_before_training_arguments(script):
    from hf_kd.text.config import DistillationTrainingArguments
    from hf_kd.text.script_args import ClmDataArguments, DataArguments, ModelArguments

    data = ClmDataArguments if script == "clm" else DataArguments
    text = make_parser((ModelArguments, data, DistillationTrainingArguments), prog=f"run_{script}_kd.py").format_help()
    lines = text.splitlines()
    ours = lines.index("hf-kd options (model, data, knowledge distillation):")
    theirs = next(i for i, line in enumerate(lines) if line.startswith("transformers TrainingArguments"))
    line_of = {flag: next(i for i, line in enumerate(lines) if line.lstrip().startswith(flag + " "))
               for flag in ("--kd_alpha", "--model_preset", "--teacher_model_name_or_path", "--learning_rate",
                            "--output_dir")}
    assert ours < line_of["--model_preset"] < line_of["--kd_alpha"] < line_of["--teacher_model_name_or_path"] < theirs
    assert theirs < line_of["--learning_rate"] and theirs < line_of["--output_dir"]
    assert line_of["--kd_alpha"] < 120, "the kd_* flags must be near the top"


def test_hf_kd_help_names_both_text_scripts(capsys):
    from hf_kd.cli import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for script in ("run_mlm_kd.py", "run_clm_kd.py", "run_resnet_kd.py"):
        assert f"run_scripts/{script} --help" in out, script
