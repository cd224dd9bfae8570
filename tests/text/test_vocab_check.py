"""what a teacher is loaded as (dtype) and whether its vocabulary is the student's."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import PreTrainedTokenizerFast, default_data_collator

from hf_kd import DistillationTrainer
from hf_kd.core.teachers import TeacherLoadError, vocabulary_difference
from tests.support.data import ListDataset, mlm_examples, quick_args
from tests.support.models import tiny_bert

ANIMALS = ["the cat sat on the mat with another cat", "a dog barked at the mailman every morning",
           "quick brown foxes jump over lazy dogs"] * 5
MARKETS = ["stock markets rallied after the central bank cut rates", "investors bought bonds and sold shares quickly",
           "prices of oil and gold moved in opposite directions"] * 5
VOCAB = 80


def wordpiece(texts: list[str], size: int = VOCAB) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer trained on ``texts`` (tiny, in code)."""
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(texts, vocab_size=size, min_frequency=1, show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                                   pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")


def _save_teacher(folder, tokenizer=None, dtype=None):
    teacher = tiny_bert(vocab_size=VOCAB, seed=1, layers=1)
    if dtype is not None:
        teacher = teacher.to(dtype)
    teacher.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return str(folder)


def _trainer(tmp_path, teacher, tokenizer=None, **kw):
    return DistillationTrainer(model=tiny_bert(vocab_size=VOCAB), teacher_model=teacher,
                               args=quick_args(tmp_path, **kw), processing_class=tokenizer,
                               train_dataset=ListDataset(mlm_examples(4, vocab_size=VOCAB)),
                               data_collator=default_data_collator)


# -- the vocabulary ----------------------------------------------------------------------------------------
def test_same_size_other_vocabulary_is_refused(tmp_path):
    """two WordPiece vocabularies of equal size from different text must not be distilled across."""
    student_tok, teacher_tok = wordpiece(ANIMALS), wordpiece(MARKETS)
    assert len(student_tok) == len(teacher_tok) == VOCAB  # the size check alone cannot tell them apart
    teacher = _save_teacher(tmp_path / "teacher", teacher_tok)
    with pytest.raises(TeacherLoadError, match=r"uses another vocabulary than the student: \d+ of \d+ token ids "
                                               r"differ \(id \d+ is '.*' for the teacher but '.*' for the student"):
        _trainer(tmp_path, teacher, student_tok)


def test_same_vocabulary_is_accepted_and_missing_tokenizer_warns(tmp_path, caplog):
    """the teacher's own tokenizer passes; a teacher without one is trained with a warning."""
    tok = wordpiece(ANIMALS)
    # the teacher's saved tokenizer, reloaded from its folder, is the student's (WordPiece training on the same
    # text is not even deterministic in its id order: retraining is no substitute)
    _trainer(tmp_path / "a", _save_teacher(tmp_path / "t1", tok), tok)
    with caplog.at_level(logging.WARNING):
        _trainer(tmp_path / "b", _save_teacher(tmp_path / "t2"), tok)
    assert "vocabularies not compared: no tokenizer was found for teacher(s)" in caplog.text


def test_special_token_ids_are_compared():
    """equal token maps but another [MASK] id is a mismatch too."""
    vocab = {"[PAD]": 0, "[MASK]": 1, "a": 2}
    assert vocabulary_difference(vocab, dict(vocab)) is None
    assert vocabulary_difference(vocab, dict(vocab), {"mask_token_id": 1}, {"mask_token_id": 2}) == \
        "mask_token_id is 2 in the teacher but 1 in the student"
    assert "id 2 is 'b' for the teacher but 'a' for the student" in vocabulary_difference(vocab, {**vocab, "b": 2})


# -- the dtype a teacher or student is loaded as ----------------------------------------------------------
def test_bf16_saved_teacher_loads_as_float32_in_fp32_run(tmp_path):
    """teacher_dtype 'auto' without --bf16/--fp16 is float32, not the checkpoint's saved dtype."""
    teacher = _save_teacher(tmp_path / "teacher", dtype=torch.bfloat16)
    trainer = _trainer(tmp_path, teacher)
    assert {p.dtype for p in trainer.teachers[0].parameters()} == {torch.float32}


def test_bf16_saved_student_loads_as_float32(tmp_path):
    """a student loaded by path is float32 (its trained master weights) whatever it was saved in."""
    from hf_kd.text.models import build_student
    from hf_kd.text.script_args import ModelArguments

    folder = _save_teacher(tmp_path / "student", dtype=torch.bfloat16)
    student = build_student(ModelArguments(model_name_or_path=folder), tokenizer=None)
    assert {p.dtype for p in student.parameters()} == {torch.float32}


def test_help_says_what_auto_means():
    """--help states the rule."""
    from dataclasses import fields

    from hf_kd import DistillationTrainingArguments

    text = next(f for f in fields(DistillationTrainingArguments) if f.name == "teacher_dtype").metadata["help"]
    assert "bfloat16 under --bf16" in text and "float16 under --fp16" in text and "else float32" in text


# -- the run_mlm_kd path ----------------------------------------------------------------------------------
def _run_args(tmp_path, *extra):
    train = tmp_path / "my.jsonl"
    train.write_text("".join(f'{{"text": "{t} {i}"}}\n' for i, t in enumerate(ANIMALS * 4)))
    return ["--train_file", str(train), "--max_seq_length", "32", "--max_train_samples", "8", "--max_eval_samples",
            "4", "--per_device_train_batch_size", "4", "--max_steps", "1", "--report_to", "none", "--use_cpu",
            "--disable_tqdm", "true", "--save_strategy", "no", "--output_dir", str(tmp_path / "out"), *extra]


def test_run_mlm_kd_student_uses_the_teachers_tokenizer(tmp_path, caplog, monkeypatch):
    """a teacher and no --tokenizer_name: the student takes the teacher's tokenizer (and says so)."""
    from transformers import AutoTokenizer

    from run_scripts.run_mlm_kd import main

    monkeypatch.setenv("HF_KD_CACHE", str(tmp_path / "cache"))
    teacher_tok = wordpiece(MARKETS)
    teacher = _save_teacher(tmp_path / "teacher", teacher_tok)
    with caplog.at_level(logging.INFO):
        main(_run_args(tmp_path, "--teacher_model_name_or_path", teacher))
    assert f"the student uses the tokenizer of teacher {teacher!r}" in caplog.text
    assert AutoTokenizer.from_pretrained(str(tmp_path / "out")).get_vocab() == teacher_tok.get_vocab()


def test_run_mlm_kd_refuses_a_given_tokenizer_that_differs(tmp_path, capsys, monkeypatch):
    """--tokenizer_name with another vocabulary than the teacher's is refused in one line."""
    from tests.support.scripts import error_lines, run_script

    monkeypatch.setenv("HF_KD_CACHE", str(tmp_path / "cache"))
    teacher = _save_teacher(tmp_path / "teacher", wordpiece(MARKETS))
    wordpiece(ANIMALS).save_pretrained(tmp_path / "tok")
    rc, err = run_script(_run_args(tmp_path, "--teacher_model_name_or_path", teacher, "--tokenizer_name",
                                   str(tmp_path / "tok")), capsys)
    assert rc != 0
    lines = error_lines(err)
    assert len(lines) == 1 and "uses another vocabulary than the student" in lines[0], err[-2000:]
    assert not (tmp_path / "out" / "model.safetensors").exists()
