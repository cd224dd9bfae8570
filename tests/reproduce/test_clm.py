"""hf-kd reproduce --task clm: the MLM protocol's code run for a tiny GPT-2 (next-token loss), resumable, same verdicts."""

import ast
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers

from hf_kd.cli import main as cli_main
from hf_kd.reproduce import text
from hf_kd.reproduce.findings import findings
from hf_kd.reproduce.presets import CLM_TINY, apply_overrides, scale_steps
from hf_kd.reproduce.protocol import RunRecord
from hf_kd.reproduce.report import METRICS, speedups, write_report
from hf_kd.reproduce.run import run_protocol
from tests.support.data import write_tiny_corpus
from tests.support.reproduce import Interrupt, SpyBackend

OVERRIDES = ["vocab_size=200", "max_seq_length=32", "batch_size=4", "eval_every=30", "frontier=0.5"]


@pytest.fixture
def corpus_file(tmp_path, monkeypatch):
    corpus = write_tiny_corpus(tmp_path, monkeypatch, "the model reads text and learns to predict the next word from the words before it")
    return str(corpus)


def _hand_next_token_loss(model, val) -> float:
    """Mean next-token CE over every validation position that has a next token, computed here by hand."""
    ids = torch.tensor(val["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item()


@pytest.mark.slow
def test_clm_protocol_end_to_end_resumes_and_reuses(corpus_file, tmp_path):
    out = str(tmp_path / "out")
    argv = ["reproduce", "--task", "clm", "--corpus", corpus_file, "--override", *OVERRIDES, "--steps", "8",
            "--seeds", "1", "--workers", "1", "--only", "kd_full", "--teacher_outputs", "live", "--output_dir", out]
    p = scale_steps(apply_overrides(CLM_TINY, OVERRIDES), 8)  # what the CLI runs
    assert (p.task, p.eval_every, p.good_teacher_steps) == ("clm", 2, 24)
    spy = SpyBackend(p, corpus_file, interrupt=Interrupt("kd_full", 6))
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C during kd_full, after its checkpoint at step 4
        run_protocol(spy, out, seeds=1, only=["kd_full"], calibrate=False)
    assert spy.trained[0].startswith("good-") and spy.trained[1:] == ["baseline-seed0", "baseline_0.5x-seed0",
                                                                      "kd_full-seed0"]
    assert (Path(out) / "runs" / "kd_full-seed0" / "checkpoint-4").is_dir()
    assert set(spy.models) == {"GPT2LMHeadModel"}

    assert cli_main(argv) == 0  # the CLI resumes kd_full; the teacher and the baselines are reused
    res = json.loads((Path(out) / "results.json").read_text())
    assert res["task"] == "clm" and res["metric"]["label"] == "held-out next-token loss" and res["preset"]["task"] == "clm"
    assert set(res["calibration"]["kinds"]) == {"base", "kd1"}
    kd = next(r for r in res["runs"] if r["variant"] == "kd_full")
    assert kd["teacher_forwards"] == 8 and [e["step"] for e in kd["log_history"] if "eval_loss" in e] == [2, 4, 6, 8]
    # quality = held-out next-token loss: the cached teacher's recorded loss is the hand-computed one
    corpus = spy.corpus
    (folder,) = (tmp_path / "cache" / "clm_teachers").iterdir()
    teacher = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert type(teacher).__name__ == "GPT2LMHeadModel"
    assert res["teachers"]["good"]["final_quality"] == pytest.approx(_hand_next_token_loss(teacher, corpus.val),
                                                                     rel=1e-4)
    # the regime line: entropy of the validation next-token targets' own frequencies
    counts = torch.tensor(list(Counter(t for row in corpus.val["input_ids"] for t in row[1:]).values())).double()
    probs = counts / counts.sum()
    assert res["regime"]["unigram_entropy"] == pytest.approx(float(-(probs * probs.log()).sum()))
    md = (Path(out) / "results.md").read_text()
    assert "held-out next-token loss" in md and "next tokens' own frequencies" in md and "| kd_full |" in md

    spy = SpyBackend(p, corpus_file)
    run_protocol(spy, out, seeds=1, only=["kd_full"], calibrate=False)
    assert spy.trained == []  # everything finished: nothing is retrained
    mlm = SpyBackend(replace(p, task="mlm"), corpus_file)  # same sizes as an MLM protocol: never mistaken
    assert mlm.teacher_folder("good").parent != spy.teacher_folder("good").parent and mlm.key != spy.key


def _run(variant, losses, role="student", seed=0, teachers=()):
    log = []
    for i, loss in enumerate(losses, start=1):
        log.append({"loss": loss, "gpu_hours": i * 10.0, "step": i * 10})
        log.append({"eval_loss": loss, "eval_accuracy": 1 / loss, "gpu_hours": i * 10.0, "step": i * 10})
    return {"variant": variant, "role": role, "seed": seed, "steps": len(losses) * 10, "teacher_forwards": 0,
            "teachers": list(teachers), "kd_stop_ratio": None, "selection": "mean", "log_history": log, "run_dir": ""}


def test_clm_report_shares_the_mlm_speedups_and_verdicts(tmp_path):
    runs = []
    for seed, d in enumerate((0.0, 0.02, -0.01)):
        runs += [_run("baseline", [6.0 + d, 5.5 + d, 5.2 + d, 5.0 + d], seed=seed),
                 _run("baseline_0.5x", [6.0 + d, 5.4 + d], role="frontier", seed=seed),
                 _run("baseline_2x", [x + d for x in (6.0, 5.6, 5.3, 5.1, 4.9, 4.8, 4.7, 4.6)], role="frontier",
                      seed=seed),
                 _run("kd_full", [5.6 + d, 5.0 + d, 4.9 + d, 4.8 + d], seed=seed, teachers=("good",))]
    results = {"corpus": "c", "runs": runs, "teachers": {}, "regime": {"unigram_entropy": 6.2}}
    clm = write_report(json.loads(json.dumps({**results, "task": "clm"})), tmp_path, write=False)
    mlm = write_report(json.loads(json.dumps({**results, "task": "mlm"})), tmp_path, write=False)
    table = speedups([RunRecord.from_dict(r) for r in runs], METRICS["clm"])
    assert clm["summary"] == mlm["summary"] == {n: row.to_dict() for n, row in table.items()}
    assert clm["findings"] == mlm["findings"] == findings(table, METRICS["clm"])
    assert clm["findings"][0]["verdict"] == "REPRODUCED"  # 1.5x in every seed
    assert "held-out next-token loss" in clm["markdown"] and "held-out MLM loss" in mlm["markdown"]


def test_verdict_rule_is_defined_once():
    """Every protocol and the GLUE report reuse one verdict rule: nothing else defines one of its own."""
    repo = Path(text.__file__).parents[2]
    defined = {}
    for f in [*(repo / "hf_kd").rglob("*.py"), *(repo / "glue_eval").rglob("*.py")]:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in ("verdict", "spread_of", "paired_ratio", "t95"):
                defined.setdefault(node.name, []).append(f.relative_to(repo).as_posix())
    where = ["hf_kd/core/uncertainty.py"]
    assert defined == {"verdict": where, "spread_of": where, "paired_ratio": where, "t95": where}


@pytest.mark.parametrize("argv, needle", [
    (["reproduce", "--task", "clm", "--preset", "gpu-small"], "--preset 'gpu-small' with --task clm is invalid"),
    (["reproduce", "--task", "audio"], "task='audio' is invalid: expected one of ('mlm', 'clm', 'vision', 'text')")])
def test_clm_cli_bad_input(argv, needle, capsys, tmp_path):
    # tiny flags: were the check ever lost, this would train a little instead of the whole protocol
    out = tmp_path / "never-written"
    assert cli_main([*argv, "--steps", "2", "--seeds", "1", "--workers", "1", "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and not out.exists()


def test_help_lists_tasks_and_presets(capsys):
    with pytest.raises(SystemExit):
        cli_main(["reproduce", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "{mlm,clm,vision,text}" in out and "{tiny,gpu-small,bert-base-c4}" in out
