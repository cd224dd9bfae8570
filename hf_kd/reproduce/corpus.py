"""``hf-kd reproduce``'s corpus: tokenizer, chunked train split and fixed validation set, built once per run.

Workers of a parallel run load it from disk (:func:`save_corpus` / :func:`load_saved_corpus`) instead of rebuilding
it; :func:`unigram_entropy` is the regime line of every report (the loss of a context-free predictor).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from ..text.data import tokenize_and_chunk, train_wordpiece_tokenizer
from ..text.masking import premask
from .clm import next_token_unigram_entropy


@dataclass
class Corpus:
    tokenizer: object
    train: object
    val: object
    fingerprint: str
    name: str = "built-in stdlib prose"
    stats: dict = field(default_factory=dict)


def load_corpus(p, corpus_path: str | None) -> Corpus:
    """Tokenizer + chunked train and fixed-mask validation sets: built-in corpus, ``corpus_path`` or a Hub dataset."""
    import datasets

    from ..text.data import load_raw_splits, text_sample
    from ..text.script_args import DataArguments

    if p.dataset_name and not corpus_path:
        data_args = DataArguments(dataset_name=p.dataset_name, dataset_config_name=p.dataset_config_name,
                                  streaming=p.streaming)
    else:
        data_args = DataArguments(train_file=corpus_path) if corpus_path else DataArguments()
    train_raw, val_raw = load_raw_splits(data_args)
    texts = text_sample(train_raw, "text", limit=2_000 if p.tokenizer_name else 200_000)
    if p.tokenizer_name:
        tokenizer = transformers.AutoTokenizer.from_pretrained(p.tokenizer_name)
    else:
        tokenizer = train_wordpiece_tokenizer(texts, p.vocab_size)
    tokenizer.model_max_length = 10**6  # chunks are cut to max_seq_length below; silence the length warning
    train = tokenize_and_chunk(train_raw, tokenizer, "text", p.max_seq_length)
    val = tokenize_and_chunk(val_raw, tokenizer, "text", p.max_seq_length, what="validation data")
    if p.max_eval_samples or isinstance(val, datasets.IterableDataset):
        n = p.max_eval_samples or 1024
        val = datasets.Dataset.from_list(list(val.take(n)) if isinstance(val, datasets.IterableDataset)
                                         else [val[i] for i in range(min(n, len(val)))])
    if p.task == "mlm":  # masked once, so every evaluation scores the same positions; a causal LM needs no mask
        val = premask(val, tokenizer, p.mlm_probability)
    n_train = None if isinstance(train, datasets.IterableDataset) else len(train)
    fp = hashlib.sha256(("\0".join(texts[:50]) + str(n_train) + str(len(val))).encode()).hexdigest()[:12]
    stats = {"train_sequences": n_train, "val_sequences": len(val)}
    if n_train:
        stats.update(train_tokens=n_train * p.max_seq_length, epochs_per_student=p.steps * p.batch_size / n_train)
    name = corpus_path or (f"{p.dataset_name} (streaming)" if p.dataset_name else "built-in stdlib prose")
    return Corpus(tokenizer, train, val, fp, name, stats)


def unigram_entropy(val, pad_token_id: int | None = None) -> float:
    """Entropy (nats) of the masked tokens' frequencies in the validation set: the loss of the best predictor
    that ignores context, i.e. the level a student has to get below to have learnt anything from context.
    A causal LM's validation set has no labels: the next-token targets' frequencies are used instead."""
    if "labels" not in val.column_names:
        return next_token_unigram_entropy(val, pad_token_id)
    counts = torch.bincount(torch.tensor([t for row in val["labels"] for t in row if t != -100]))
    probs = counts[counts > 0].double() / counts.sum()
    return float(-(probs * probs.log()).sum())


def save_corpus(corpus: Corpus, folder: Path) -> None:
    """Write the corpus (tokenizer, chunked splits) for worker processes, which load it instead of rebuilding it."""
    if (folder / "corpus.json").is_file() and json.loads((folder / "corpus.json").read_text())["fingerprint"] == \
            corpus.fingerprint:
        return
    shutil.rmtree(folder, ignore_errors=True)
    corpus.tokenizer.save_pretrained(str(folder / "tokenizer"))
    corpus.train.save_to_disk(str(folder / "train"))
    corpus.val.save_to_disk(str(folder / "val"))
    (folder / "corpus.json").write_text(json.dumps({"fingerprint": corpus.fingerprint, "name": corpus.name,
                                                    "stats": corpus.stats}))


def load_saved_corpus(folder: Path) -> Corpus:
    import datasets

    meta = json.loads((folder / "corpus.json").read_text())
    tok = transformers.AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    tok.model_max_length = 10**6
    return Corpus(tok, datasets.load_from_disk(str(folder / "train")), datasets.load_from_disk(str(folder / "val")),
                  meta["fingerprint"], meta["name"], meta["stats"])
