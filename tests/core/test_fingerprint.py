"""Content fingerprints hash everything that shapes an artefact: every text, the whole vocabulary, all weights."""

import torch
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

from hf_kd.core.fingerprint import model_fingerprint, text_content_hash, tokenizer_hash
from tests.support.models import tiny_bert


def test_texts_that_differ_only_after_their_first_lines_differ():
    head = [f"line {i} of the shared head" for i in range(60)]
    a = head + ["the tail reads one way"] * 300
    b = head + ["way one reads tail the"] * 300  # same words, same lengths, other order
    assert text_content_hash(a) != text_content_hash(b)
    assert text_content_hash(a) == text_content_hash(list(a))
    assert text_content_hash(iter(a)) == text_content_hash(a)  # streamed


def test_text_boundaries_are_part_of_the_hash():
    assert text_content_hash(["ab", "c"]) != text_content_hash(["a", "bc"])


def _tokenizer(words):
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)})


def test_tokenizers_of_the_same_size_with_other_tokens_differ():
    a = _tokenizer(["alpha", "beta", "gamma"])
    b = _tokenizer(["alpha", "beta", "delta"])
    assert len(a) == len(b) == 8
    assert tokenizer_hash(a) != tokenizer_hash(b)
    assert tokenizer_hash(a) == tokenizer_hash(_tokenizer(["alpha", "beta", "gamma"]))


def test_model_fingerprint_sees_one_changed_weight_and_ignores_where_it_was_saved(tmp_path):
    m = tiny_bert(seed=0)
    fp = model_fingerprint(m)
    assert fp == model_fingerprint(tiny_bert(seed=0))
    m.save_pretrained(tmp_path / "a")
    m.save_pretrained(tmp_path / "b")
    assert model_fingerprint(tmp_path / "a") == model_fingerprint(str(tmp_path / "b"))
    with torch.no_grad():
        m.bert.embeddings.word_embeddings.weight[3, 5] += 1e-3
    assert model_fingerprint(m) != fp
    m.save_pretrained(tmp_path / "c")
    assert model_fingerprint(tmp_path / "c") != model_fingerprint(tmp_path / "a")


def test_model_fingerprint_sees_the_config():
    cfg = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    a = BertForMaskedLM(BertConfig(**cfg))
    torch.manual_seed(0)
    b = BertForMaskedLM(BertConfig(**cfg, layer_norm_eps=1e-5))  # same weights, another computation
    assert model_fingerprint(a) != model_fingerprint(b)
