"""The one-GPU protocol (``--preset gpu-small``) rehearsed end to end on CPU at tiny size through the CLI."""

import json
import logging

import pytest
import transformers

from hf_kd.cli import main as cli_main
from hf_kd.reproduce.presets import GPU_SMALL, apply_overrides
from hf_kd.text.data import train_wordpiece_tokenizer
from hf_kd.text.models import preset_config


def test_gpu_small_preset_is_the_documented_protocol():
    p = GPU_SMALL
    assert (p.model_preset, p.dataset_name, p.streaming, p.bf16) == ("small", "allenai/c4", True, True)
    assert p.recycled_teacher == "google/bert_uncased_L-8_H-512_A-8" and p.tokenizer_name == "bert-base-uncased"
    assert p.frontier == (0.75, 1.5, 2.0) and p.max_eval_samples and p.steps == 3000


@pytest.mark.parametrize("pair, needle", [("nope=1", "KEY one of"), ("steps=many", "expected a value of type int"),
                                          ("bf16=maybe", "type bool")])
def test_bad_override_is_a_one_line_error(pair, needle):
    with pytest.raises(ValueError, match=needle):
        apply_overrides(GPU_SMALL, [pair])


@pytest.mark.slow
def test_gpu_small_rehearsal_on_cpu(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("HF_KD_CACHE", str(tmp_path / "cache"))
    words = "the model reads text and learns to predict masked words from their context".split()
    lines = [" ".join(words[(i + j) % len(words)] for j in range(60)) for i in range(120)]
    corpus = tmp_path / "c4-sample.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in lines))
    tok = train_wordpiece_tokenizer(lines, 200)
    tok.save_pretrained(str(tmp_path / "tok"))
    teacher = transformers.BertForMaskedLM(preset_config("tiny", vocab_size=len(tok), pad_token_id=tok.pad_token_id))
    teacher.save_pretrained(str(tmp_path / "teacher"))  # stands in for the recycled Hub checkpoint
    argv = ["reproduce", "--preset", "gpu-small", "--corpus", str(corpus), "--steps", "8", "--only", "kd_full",
            "--output_dir", str(tmp_path / "out"), "--override", "model_preset=tiny", "batch_size=4",
            "max_seq_length=32", f"tokenizer_name={tmp_path / 'tok'}", f"recycled_teacher={tmp_path / 'teacher'}",
            "streaming=false", "bf16=false", "max_eval_samples=16", "vocab_size=200", "eval_every=4"]
    with caplog.at_level(logging.INFO, logger="hf_kd"):
        assert cli_main(argv) == 0
    assert any("plan:" in r.getMessage() and "estimated" in r.getMessage() for r in caplog.records)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted({r["seed"] for r in saved["runs"]}) == [0, 1]  # gpu-small: 2 seeds by default
    assert {r["variant"] for r in saved["runs"]} == {"baseline", "kd_full", "kd_full_live", "baseline_0.75x",
                                                     "baseline_1.5x", "baseline_2x"}
    # the recycled teacher's outputs are produced once per seed and read by kd_full (teacher_outputs cached)
    assert set(saved["caches"]) == {"outputs-good-mean-seed0", "outputs-good-mean-seed1"}
    assert all(r["teacher_outputs"] == "cached" for r in saved["runs"] if r["variant"] == "kd_full")
    assert saved["calibration"]["relative"]["cached"] > 0 and saved["calibration"]["relative"]["produce1"] > 0
    assert saved["teachers"]["good"]["steps"] == "recycled" and saved["teachers"]["good"]["final_quality"] > 0
    assert saved["calibration"]["relative"]["kd1"] > 0
    assert f"teacher `good`: recycled {tmp_path / 'teacher'}, final" in capsys.readouterr().out
    mtime = (tmp_path / "out" / "runs" / "kd_full-seed1" / "run_result.json").stat().st_mtime_ns
    assert cli_main(argv) == 0  # rerun: everything reused
    assert (tmp_path / "out" / "runs" / "kd_full-seed1" / "run_result.json").stat().st_mtime_ns == mtime
