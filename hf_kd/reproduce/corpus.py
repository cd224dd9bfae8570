"""``hf-kd reproduce``'s corpus: built once per protocol through the scripts' own data path, and fingerprinted.

The tokenizer and the chunked splits come from :func:`hf_kd.text.pretrain.prepare_text_data` (what
``run_mlm_kd.py`` / ``run_clm_kd.py`` build from the same flags), so the runs that certify the product train on
exactly what the product would. The fingerprint that keys every run and teacher hashes every training and
validation text and the tokenizer's vocabulary (:mod:`hf_kd.core.fingerprint`): two corpora that differ anywhere
never share a run. Workers of a parallel run load the corpus from disk (:func:`save_corpus` /
:func:`load_saved_corpus`) instead of rebuilding it; :func:`unigram_entropy` is the regime line of every report.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import transformers

from ..core.fingerprint import text_content_hash, tokenizer_hash
from ..text.config import DistillationTrainingArguments
from ..text.data import load_raw_splits
from ..text.pretrain import TextData, prepare_text_data
from ..text.script_args import DataArguments, ModelArguments

BUILTIN_NAME = "built-in stdlib prose"


@dataclass
class Corpus:
    data: TextData
    fingerprint: str
    name: str = BUILTIN_NAME
    stats: dict = field(default_factory=dict)

    @property
    def tokenizer(self) -> transformers.PreTrainedTokenizerBase:
        return self.data.tokenizer

    @property
    def train(self):
        return self.data.train

    @property
    def val(self):
        return self.data.val


def data_fingerprint(data_args: DataArguments, tokenizer) -> str:
    """Every training and validation text (a streamed Hub dataset: its name, as its content is the Hub's) and the
    tokenizer's vocabulary, with the chunking that turns them into sequences."""
    if data_args.streaming and data_args.dataset_name:
        content = json.dumps([data_args.dataset_name, data_args.dataset_config_name, "streaming"])
    else:
        train, val = load_raw_splits(data_args)
        col = data_args.text_column_name
        content = text_content_hash(t for ds in (train, val) for t in ("\0split\0", *(r[col] or "" for r in ds)))
    parts = [content, tokenizer_hash(tokenizer), data_args.max_seq_length, data_args.max_train_samples,
             data_args.max_eval_samples]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def load_corpus(model_args: ModelArguments, data_args: DataArguments, args: DistillationTrainingArguments,
                name: str) -> Corpus:
    """Tokenizer + chunked train and validation sets, as the scripts build them from the same arguments."""
    data = prepare_text_data(model_args, data_args, args)
    data.tokenizer.model_max_length = 10**6  # chunks are cut to max_seq_length already; silence the length warning
    n_train = None if isinstance(data.train, datasets.IterableDataset) else len(data.train)
    n_val = None if isinstance(data.val, datasets.IterableDataset) else len(data.val)
    stats = {"train_sequences": n_train, "val_sequences": n_val}
    if n_train:
        stats["train_tokens"] = n_train * data_args.max_seq_length
    return Corpus(data, data_fingerprint(data_args, data.tokenizer), name, stats)


def unigram_entropy(val, tokenizer, task: str) -> float:
    """Entropy (nats) of the predicted tokens' own frequencies in the validation set: the loss of the best predictor
    that ignores context, i.e. the level a student has to get below to have learnt anything from context.

    MLM: every maskable token (masking picks them uniformly, so these are the masked tokens' frequencies in
    expectation); causal LM: every next-token target (each row's first token has none). Padding never counts."""
    counts: torch.Tensor | None = None
    for row in val:
        ids = torch.tensor(row["input_ids"])
        if task == "clm":
            ids = ids[1:]
        elif "special_tokens_mask" in row:
            ids = ids[torch.tensor(row["special_tokens_mask"]) == 0]
        if tokenizer.pad_token_id is not None:
            ids = ids[ids != tokenizer.pad_token_id]
        c = torch.bincount(ids, minlength=len(tokenizer))
        counts = c if counts is None else counts + c
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
    meta = json.loads((folder / "corpus.json").read_text())
    tok = transformers.AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    tok.model_max_length = 10**6
    data = TextData(tok, datasets.load_from_disk(str(folder / "train")), datasets.load_from_disk(str(folder / "val")))
    return Corpus(data, meta["fingerprint"], meta["name"], meta["stats"])
