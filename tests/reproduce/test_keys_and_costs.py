"""What a reproduce run is keyed by (every text and the vocabulary) and what its calibration charges (the real
teachers' size)."""

import json
from dataclasses import replace
from pathlib import Path

import transformers

from hf_kd.reproduce.corpus import data_fingerprint
from hf_kd.reproduce.jobs import Context, to_train
from hf_kd.reproduce.protocol import plan_jobs, select_variants
from hf_kd.reproduce.run import run_protocol
from hf_kd.text.models import preset_config
from hf_kd.text.script_args import DataArguments
from tests.support.data import write_tiny_corpus
from tests.support.reproduce import TINY, SpyBackend


def _same_start_other_end(corpus: str, tmp_path: Path, keep: int = 60) -> str:
    """The corpus with its lines after the first ``keep`` reversed word by word: same words, same token counts."""
    lines = [json.loads(x)["text"] for x in Path(corpus).read_text().splitlines()]
    lines = lines[:keep] + [" ".join(reversed(t.split())) for t in lines[keep:]]
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(json.dumps({"text": t}) for t in lines))
    return str(other)


def _to_train(backend, jobs) -> list[str]:
    teachers = {j.name: backend.peek_teacher(j.name) for j in jobs if j.variant is None}
    return sorted(j.name for j in to_train(jobs, Context(backend), {n: t for n, t in teachers.items() if t}))


def test_corpora_equal_in_their_first_lines_share_no_run_and_no_teacher(tmp_path, monkeypatch):
    first = write_tiny_corpus(tmp_path, monkeypatch)
    second = _same_start_other_end(first, tmp_path)
    a = SpyBackend(replace(TINY, steps=4, good_teacher_steps=4), first)
    b = SpyBackend(replace(TINY, steps=4, good_teacher_steps=4), second)
    assert len(a.corpus.train) == len(b.corpus.train) and len(a.corpus.val) == len(b.corpus.val)
    assert len(a.corpus.tokenizer) == len(b.corpus.tokenizer)
    assert a.key != b.key and a.teacher_folder("good") != b.teacher_folder("good")
    out = str(tmp_path / "out")
    run_protocol(a, out, seeds=1, only=["kd_full"], calibrate=False)
    jobs = plan_jobs(a.preset, select_variants(a.preset.frontier, ["kd_full"], False), 1, Path(out))
    # the plan counts runs by key, not by the presence of run_result.json
    assert _to_train(a, jobs) == [] and _to_train(b, jobs) == ["baseline", "baseline_0.5x", "kd_full"]
    res = run_protocol(b, out, seeds=1, only=["kd_full"], calibrate=False)
    assert b.trained[0].startswith("good-") and b.trained[1:] == ["baseline-seed0", "baseline_0.5x-seed0",
                                                                  "kd_full-seed0"]  # nothing reused
    assert res["corpus"] == second
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "teachers").iterdir()) == ["good", "good"]


def test_the_vocabulary_is_part_of_the_corpus_key(tmp_path, monkeypatch):
    corpus = write_tiny_corpus(tmp_path, monkeypatch)
    tok = SpyBackend(TINY, corpus).corpus.tokenizer
    other = transformers.AutoTokenizer.from_pretrained(tok.name_or_path)
    other.add_tokens(["zzzunseen"])  # same texts, another vocabulary
    args = DataArguments(train_file=corpus, max_seq_length=32)
    assert data_fingerprint(args, tok) == data_fingerprint(args, transformers.AutoTokenizer.from_pretrained(
        tok.name_or_path))
    assert data_fingerprint(args, tok) != data_fingerprint(args, other)


def test_calibration_times_a_teacher_of_the_real_teachers_size(tmp_path, monkeypatch):
    """A recycled teacher twice the student's depth: the KD step timed must run that teacher, not one shaped like
    the student (that undercharged KD on the axis the verdicts use)."""
    corpus = write_tiny_corpus(tmp_path, monkeypatch)
    tok = SpyBackend(TINY, corpus).corpus.tokenizer
    teacher = transformers.BertForMaskedLM(preset_config("tiny", vocab_size=len(tok), num_hidden_layers=4,
                                                         pad_token_id=tok.pad_token_id))
    teacher.save_pretrained(str(tmp_path / "teacher"))
    tok.save_pretrained(str(tmp_path / "teacher"))
    backend = SpyBackend(replace(TINY, recycled_teacher=str(tmp_path / "teacher")), corpus)
    cal = backend.measure_step_costs(["base", "kd1"], rounds=1, steps_per_round=1)
    student = transformers.BertForMaskedLM(preset_config("tiny", vocab_size=len(tok)))
    assert cal.teacher_parameters == {"base": 0, "kd1": teacher.num_parameters()}
    assert teacher.num_parameters() > 1.5 * student.num_parameters()
    assert set(cal.relative) == {"base", "kd1"} and cal.relative["base"] == 1.0
