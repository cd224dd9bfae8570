"""The normal paths of the text scripts print no alarming warnings, and Ctrl-C ends in one line saying how to resume.

Checked in a fresh process (DeepSpeed's device line is printed once per process, at its first import): a causal-LM
teacher, a student distilling from it, its resume, and an MLM run and its resume.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hf_kd.core.cli_utils import run_cli
from tests.support import REPO

ALARMS = ("Setting accelerator to CPU",                      # DeepSpeed's auto-detection (dev extra installed)
          "Token indices sequence length is longer",         # the tokenizer, on whole documents cut into blocks
          "must be `None` or an integer within the vocabulary",  # bos/eos ids of a from-scratch causal LM
          "There were missing keys in the checkpoint",       # tied output weights on --resume_from_checkpoint
          "vocabularies not compared")

COMMON = ["--vocab_size", "512", "--max_seq_length", "32", "--max_train_samples", "32", "--max_eval_samples", "8",
          "--per_device_train_batch_size", "4", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true",
          "--save_steps", "2"]

RUNS = """
import sys
from run_scripts import run_clm_kd, run_mlm_kd
common, out = {common!r}, {out!r}
run_clm_kd.main(common + ["--max_steps", "2", "--output_dir", out + "/clm_teacher"])
run_clm_kd.main(common + ["--max_steps", "2", "--output_dir", out + "/clm_kd",
                          "--teacher_model_name_or_path", out + "/clm_teacher"])
run_clm_kd.main(common + ["--max_steps", "4", "--output_dir", out + "/clm_kd", "--resume_from_checkpoint", "latest",
                          "--teacher_model_name_or_path", out + "/clm_teacher"])
run_mlm_kd.main(common + ["--max_steps", "2", "--output_dir", out + "/mlm"])
run_mlm_kd.main(common + ["--max_steps", "4", "--output_dir", out + "/mlm", "--resume_from_checkpoint", "latest"])
print("DONE")
"""


@pytest.mark.slow
def test_normal_runs_and_resumes_print_no_alarming_warnings(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    env.update(PYTHONPATH=str(REPO), HF_KD_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    code = "from hf_kd.core.cli_utils import quiet_deepspeed_autodetect\nquiet_deepspeed_autodetect()\n" + \
        RUNS.format(common=COMMON, out=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stderr[-3000:]
    card = (tmp_path / "clm_kd" / "README.md").read_text()  # the causal-LM card: its own words, its device
    assert "kd_positions: labelled next tokens" in card and "kd_positions: masked" not in card
    assert "| CPU-hours (training) |" in card and "here spent on cpu" in card
    printed = proc.stdout + proc.stderr  # DeepSpeed's logger writes to stdout
    for alarm in ALARMS:
        assert alarm not in printed, (alarm, [line for line in printed.splitlines() if alarm in line][:2])


def test_cost_rows_name_the_device_and_keep_the_key():
    from hf_kd.core.hub import cost_note, run_card_rows
    from hf_kd.text.card import kd_positions_fact

    facts = {"training_data": "d", "train_steps": 2, "max_steps": 2, "global_batch_size": 4, "num_processes": 1,
             "gpu_hours": 0.5, "eval_gpu_hours": 0.1}
    assert ("CPU-hours (training)", "0.5") in run_card_rows({**facts, "device": "cpu"})
    assert ("GPU-hours (training)", "0.5") in run_card_rows({**facts, "device": "cuda"})
    assert "`gpu_hours` key" in cost_note("cpu") and "spent on cpu" in cost_note("cpu")
    assert kd_positions_fact("clm", "masked") == "labelled next tokens" and kd_positions_fact("mlm", "masked") == "masked"


def test_causal_lm_preset_keeps_special_ids_inside_the_vocabulary():
    from transformers import BertTokenizerFast

    from hf_kd.text.models import clm_preset_config

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])}
    from tokenizers import Tokenizer, models

    tok = BertTokenizerFast(tokenizer_object=Tokenizer(models.WordPiece(vocab, unk_token="[UNK]")),
                            pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                            unk_token="[UNK]")
    for preset in ("tiny", "llama-tiny"):
        cfg = clm_preset_config(preset, vocab_size=len(tok), tokenizer=tok)
        assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (2, 3, 0), preset


def test_ctrl_c_during_training_is_one_line_naming_step_and_checkpoint(tmp_path, capsys, monkeypatch):
    from transformers import TrainerCallback

    import hf_kd.text.pretrain as pretrain
    from run_scripts.run_mlm_kd import main

    class CtrlC(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt

    build = pretrain.build_trainer
    monkeypatch.setattr(pretrain, "build_trainer", lambda m, d, a, teacher, callbacks, task: build(
        m, d, a, teacher, [CtrlC()], task))
    monkeypatch.setenv("HF_KD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_KD_DEBUG", raising=False)
    out = tmp_path / "run"
    capsys.readouterr()
    rc = run_cli(lambda: main([*COMMON, "--max_steps", "6", "--output_dir", str(out)]))
    err = capsys.readouterr().err
    assert rc == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("interrupted at step 3; rerun the same command with "
                                            "--resume_from_checkpoint latest to resume from checkpoint-2")
