"""Bad input: every case ends in one ``error: ...`` line naming the bad value, exit status 2, and no file touched.

Cases run ``run_mlm_kd.main(argv)`` under ``hf_kd.core.cli_utils.run_cli`` in-process (fast); two real subprocesses
check the exit status and that stderr is one line without a traceback. The helpers (a synthetic corpus, tiny
teachers, the script runner) live in ``tests/support/scripts.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from tests.support import REPO
from tests.support.scripts import KDEnv, build_env, error_lines, run_script, script_args, snapshot, tiny_model, truncate


@pytest.fixture(scope="module")
def kd_env(tmp_path_factory) -> KDEnv:
    env = build_env(tmp_path_factory.mktemp("kd_env"))
    v, d = env.vocab_size, env.inputs
    tiny_model(d / "teacher", v)
    tiny_model(d / "teacher_other_vocab", v + 7)
    tiny_model(d / "small_vocab", 50)
    tiny_model(d / "encoder_only", v, "BertModel")
    tiny_model(d / "classifier", v, "BertForSequenceClassification")
    shutil.copytree(d / "teacher", d / "truncated")
    truncate(d / "truncated" / "model.safetensors")
    (d / "empty.txt").write_text("")
    (d / "notes.md").write_text("ka lo mi\n")
    (d / "short.txt").write_text("ka lo\nmi\n")
    (d / "other_column.jsonl").write_text("".join(json.dumps({"body": "ka lo mi " * 30}) + "\n" for _ in range(20)))
    (d / "latin1.txt").write_bytes(("caf\xe9 au lait " * 50 + "\n").encode("latin-1") * 20)
    (d / "malformed.jsonl").write_text('{"text": "ka lo"}\n{oops\n')
    (d / "ds_bad.json").write_text('{"zero_optimization": {"stage": 2,}')
    return env


@pytest.fixture(autouse=True)
def _tokenizer_cache(monkeypatch, request):
    if "kd_env" in request.fixturenames:
        monkeypatch.setenv("HF_KD_CACHE", str(request.getfixturevalue("kd_env").cache))


T = "--teacher_model_name_or_path"
# (id, extra flags with {d} = inputs folder, substrings the one error line must contain)
CASES = [
    ("teacher_missing", [T, "{d}/no_such_teacher"], ["no_such_teacher", "does not exist", "expected"]),
    ("teacher_other_vocab", [T, "{d}/teacher_other_vocab"], ["teacher_other_vocab", "vocabulary/output size",
                                                             "must be equal"]),
    ("teacher_encoder_only", [T, "{d}/encoder_only"], ["encoder_only", "BertModel", "expected a complete"]),
    ("teacher_classifier", [T, "{d}/classifier"], ["BertForSequenceClassification", "expected a complete"]),
    ("teacher_truncated", [T, "{d}/truncated"], ["truncated/model.safetensors", "not a readable safetensors"]),
    ("student_truncated", ["--model_name_or_path", "{d}/truncated", "--tokenizer_name", "{tok}"],
     ["truncated/model.safetensors", "readable"]),
    ("student_without_tokenizer", ["--model_name_or_path", "{d}/teacher"], ["teacher", "no tokenizer files",
                                                                             "--tokenizer_name"]),
    ("tokenizer_larger_than_model", ["--model_name_or_path", "{d}/small_vocab", "--tokenizer_name", "{tok}"],
     ["tokens but the model's vocab_size is 50"]),
    ("alpha_above_1", ["--kd_alpha", "1.5"], ["kd_alpha=1.5", "[0, 1]"]),
    ("alpha_negative", ["--kd_alpha", "-0.1"], ["kd_alpha=-0.1", "[0, 1]"]),
    ("alpha_not_a_number", ["--kd_alpha", "high"], ["--kd_alpha", "'high'"]),
    ("temperature_zero", ["--kd_temperature", "0"], ["kd_temperature=0.0", "> 0"]),
    ("temperature_negative", ["--kd_temperature", "-2"], ["kd_temperature=-2.0", "> 0"]),
    ("stop_ratio_zero", ["--kd_stop_ratio", "0"], ["kd_stop_ratio=0.0", "(0, 1]"]),
    ("stop_ratio_above_1", ["--kd_stop_ratio", "1.5"], ["kd_stop_ratio=1.5", "(0, 1]"]),
    ("stop_steps_negative", ["--kd_stop_steps", "-1"], ["kd_stop_steps=-1", ">= 0"]),
    ("stop_forms_disagree", ["--kd_stop_ratio", "0.5", "--kd_stop_steps", "2"], ["kd_stop_steps=2", "kd_stop_ratio=0.5",
                                                                                 "set only one"]),
    ("unknown_selection", ["--kd_teacher_selection", "random"], ["kd_teacher_selection='random'", "'sample'"]),
    ("unknown_positions", ["--kd_positions", "some"], ["kd_positions='some'", "'masked'"]),
    ("unknown_divergence", ["--kd_divergence", "js"], ["kd_divergence='js'", "'forward_kl'"]),
    ("unknown_teacher_dtype", ["--teacher_dtype", "int8"], ["teacher_dtype='int8'", "'bfloat16'"]),
    ("sample_without_teacher", ["--kd_teacher_selection", "sample"], ["kd_teacher_selection='sample'",
                                                                      "--teacher_model_name_or_path"]),
    ("unknown_flag", ["--kd_alpah", "0.5"], ["--kd_alpah"]),
    ("student_missing", ["--model_name_or_path", "{d}/no_such_student"], ["model", "no_such_student", "does not exist"]),
    ("tokenizer_missing", ["--tokenizer_name", "{d}/no_such_tokenizer"], ["tokenizer", "no_such_tokenizer",
                                                                          "does not exist"]),
    ("save_total_limit_negative", ["--save_total_limit", "-3"], ["save_total_limit=-3", "a positive integer"]),
    ("train_file_missing", ["--train_file", "{d}/nope.txt"], ["nope.txt", "does not exist"]),
    ("train_file_suffix", ["--train_file", "{d}/notes.md"], ["notes.md", "suffix '.md'"]),
    ("empty_dataset", ["--train_file", "{d}/empty.txt"], ["empty.txt", "is empty", "at least one document"]),
    ("too_short_for_one_sequence", ["--train_file", "{d}/short.txt"], ["2 tokens", "max_seq_length=32"]),
    ("missing_text_column", ["--train_file", "{d}/other_column.jsonl"], ["'text'", "columns found: ['body']"]),
    ("non_utf8_file", ["--train_file", "{d}/latin1.txt"], ["latin1.txt", "not valid UTF-8"]),
    ("malformed_jsonl", ["--train_file", "{d}/malformed.jsonl"], ["malformed.jsonl", "could not be read as json"]),
    ("resume_from_nothing", ["--resume_from_checkpoint", "{d}/no_checkpoint"], ["no_checkpoint", "does not exist"]),
    ("resume_latest_without_any", ["--resume_from_checkpoint", "latest"], ["latest", "no complete checkpoint"]),
    ("resume_from_non_checkpoint", ["--resume_from_checkpoint", "{d}/teacher"], ["teacher", "trainer_state.json"]),
    ("seq_longer_than_positions", ["--max_seq_length", "1024"], ["max_seq_length=1024",
                                                                 "max_position_embeddings=512"]),
    ("deepspeed_not_json", ["--deepspeed", "{d}/ds_bad.json"], ["ds_bad.json", "not valid JSON"]),
    ("deepspeed_missing", ["--deepspeed", "{d}/ds_none.json"], ["ds_none.json", "does not exist"]),
]


@pytest.mark.parametrize("extra,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_error_and_touches_nothing(kd_env, tmp_path, capsys, extra, expected):
    (tmp_path / "keep.txt").write_text("precious")
    before = snapshot(tmp_path, kd_env.inputs)
    argv = script_args(kd_env, tmp_path / "out", *[a.format(d=kd_env.inputs, tok=kd_env.tokenizer) for a in extra])
    rc, err = run_script(argv, capsys)
    assert rc == 2, err[-2000:]
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for s in expected:
        assert s in lines[0], (s, lines[0])
    assert snapshot(tmp_path, kd_env.inputs) == before  # no output_dir, nothing rewritten


def test_non_empty_output_dir_is_refused_and_kept(kd_env, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    before = snapshot(tmp_path)
    rc, err = run_script(script_args(kd_env, out), capsys)
    assert rc == 2
    assert error_lines(err) == [f"error: output_dir {str(out)!r} is not empty; pass --overwrite_output_dir, "
                                "--resume_from_checkpoint latest, or another --output_dir"]
    assert snapshot(tmp_path) == before


def test_stop_steps_beyond_max_steps_warns_once_and_keeps_kd_on(kd_env, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="hf_kd"):
        rc, err = run_script(script_args(kd_env, out, T, str(kd_env.inputs / "teacher"), "--kd_stop_steps", "50",
                                         "--logging_steps", "1"), capsys)
    assert rc == 0, err[-2000:]
    warnings = [r.getMessage() for r in caplog.records if "beyond max_steps" in r.getMessage()]
    assert warnings == ["kd_stop_steps=50 is beyond max_steps=2: KD stays on for the whole run"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert [e["kd_weight"] for e in state["log_history"] if "loss" in e] == [0.9, 0.9]


def test_sample_with_one_teacher_runs_and_says_so(kd_env, tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="hf_kd"):
        rc, err = run_script(script_args(kd_env, tmp_path / "out", T, str(kd_env.inputs / "teacher"),
                                         "--kd_teacher_selection", "sample"), capsys)
    assert rc == 0, err[-2000:]
    assert any("'sample' with one teacher" in r.getMessage() for r in caplog.records)


def test_mean_without_teacher_is_the_baseline(kd_env, tmp_path, capsys):
    rc, err = run_script(script_args(kd_env, tmp_path / "out"), capsys)
    assert rc == 0, err[-2000:]
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert results["num_teachers"] == 0 and results["teacher_forwards"] == 0


def test_subprocess_exit_status_and_single_line(kd_env, tmp_path):
    argv = script_args(kd_env, tmp_path / "out", "--kd_alpha", "2")
    env = {**os.environ, "HF_KD_CACHE": str(kd_env.cache), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "run_scripts" / "run_mlm_kd.py"), *argv], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == ["error: kd_alpha=2.0 is invalid: expected a number in [0, 1]"]
    assert not (tmp_path / "out").exists()


# -- GLUE harness (glue_eval, another part of the project) ----------------------------------------------------
def _glue_main():
    if not (REPO / "glue_eval" / "run_glue.py").is_file():
        pytest.skip("glue_eval/run_glue.py does not exist yet")
    from glue_eval.run_glue import main

    return main


@pytest.mark.parametrize("case", ["unknown_task", "missing_split"])
def test_glue_bad_input(tmp_path, capsys, case):
    main = _glue_main()
    from glue_eval.testing import tiny_checkpoint, write_glue_fixture
    from hf_kd.core.cli_utils import run_cli

    ckpt, glue = tiny_checkpoint(tmp_path / "ckpt"), write_glue_fixture(tmp_path / "glue", tasks=["rte"])
    if case == "missing_split":
        (glue / "RTE" / "dev.tsv").unlink()
    before = snapshot(tmp_path)
    tasks = "rte,bogus" if case == "unknown_task" else "rte"
    argv = ["--model_name_or_path", str(ckpt), "--glue_dir", str(glue), "--tasks", tasks, "--max_steps", "1",
            "--output_dir", str(tmp_path / "out")]
    capsys.readouterr()
    rc = run_cli(lambda: main(argv))
    lines = error_lines(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1
    assert ("'bogus'" in lines[0]) if case == "unknown_task" else ("dev.tsv" in lines[0] and "rte" in lines[0])
    assert snapshot(tmp_path) == before
