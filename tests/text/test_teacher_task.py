"""A teacher checkpoint of the other objective is refused from its config, before its weights load."""

from __future__ import annotations

import pytest
from transformers import BertConfig, BertLMHeadModel, default_data_collator

from hf_kd import DistillationTrainer
from hf_kd.core.teachers import TeacherLoadError
from tests.support.data import ListDataset, clm_examples, mlm_examples, quick_args
from tests.support.models import tiny_bert, tiny_gpt2


def _trainer(tmp_path, student, teacher, examples):
    return DistillationTrainer(model=student, teacher_model=teacher, args=quick_args(tmp_path / "run"),
                               train_dataset=ListDataset(examples(4)), data_collator=default_data_collator)


def test_masked_lm_checkpoint_is_refused_as_causal_lm_teacher(tmp_path):
    tiny_bert(seed=1).save_pretrained(tmp_path / "bert")
    with pytest.raises(TeacherLoadError, match=r"is a masked LM checkpoint, BertForMaskedLM \(model_type='bert', "
                                               r"is_decoder=False\).*trained as a causal LM"):
        _trainer(tmp_path, tiny_gpt2(), str(tmp_path / "bert"), clm_examples)


def test_causal_lm_checkpoint_is_refused_as_masked_lm_teacher(tmp_path):
    tiny_gpt2(seed=1).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(TeacherLoadError, match=r"is a causal LM checkpoint, GPT2LMHeadModel.*trained as a masked LM"):
        _trainer(tmp_path, tiny_bert(), str(tmp_path / "gpt2"), mlm_examples)


def test_bert_lm_head_without_is_decoder_is_refused_for_a_causal_lm(tmp_path):
    """a causal-LM class that attends to the whole sequence (is_decoder=False) is no causal-LM teacher."""
    teacher = BertLMHeadModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, is_decoder=False))
    with pytest.raises(TeacherLoadError, match="is_decoder=False"):
        _trainer(tmp_path, tiny_gpt2(), teacher, clm_examples)
