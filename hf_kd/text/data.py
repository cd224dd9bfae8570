"""Text data for MLM pretraining: Hub or local files or the built-in corpus -> fixed-length token chunks.

Every user error raises :class:`DataError` with one line naming the bad value and what is expected.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from itertools import chain
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..core.errors import DataError
from .corpus import builtin_splits, corpus_fingerprint
from .script_args import DataArguments

logger = logging.getLogger(__name__)

LOCAL_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv",
                  ".parquet": "parquet"}
UTF8_CHECK_BYTES = 64 * 2**20


def cache_root() -> Path:
    """Where hf-kd caches tokenizers and teachers (``$HF_KD_CACHE``, default ``~/.cache/hf_kd``)."""
    return Path(os.environ.get("HF_KD_CACHE", Path.home() / ".cache" / "hf_kd"))


def _check_local_file(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {path!r} does not exist")
    builder = LOCAL_BUILDERS.get(p.suffix.lower())
    if builder is None:
        raise DataError(f"data file {path!r} has suffix {p.suffix!r}; expected one of {sorted(LOCAL_BUILDERS)}")
    if p.stat().st_size == 0:
        raise DataError(f"data file {path!r} is empty; expected at least one document")
    if builder != "parquet":
        with open(p, "rb") as f:
            head = f.read(UTF8_CHECK_BYTES)
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4:  # not just a multi-byte character cut by the read limit
                raise DataError(f"data file {path!r} is not valid UTF-8 (byte {e.start}); re-encode it as UTF-8") from e
    return builder


def _load_local(path: str, streaming: bool):
    builder = _check_local_file(path)
    try:
        return datasets.load_dataset(builder, data_files={"train": path}, split="train", streaming=streaming)
    except datasets.exceptions.DatasetGenerationError as e:  # malformed JSON/CSV rows; the cause says where
        cause = e.__cause__ or e
        raise DataError(f"data file {path!r} could not be read as {builder}: {str(cause).splitlines()[0]}") from e


def _check_text_column(ds, column: str, what: str):
    cols = ds.column_names
    if cols is not None and column not in cols:
        raise DataError(f"{what} has no column {column!r}; columns found: {cols}. Pass --text_column_name")
    return ds


Split = datasets.Dataset | datasets.IterableDataset


def load_raw_splits(args: DataArguments) -> tuple[Split, Split]:
    """(train, validation) datasets with a text column; streaming keeps them iterable."""
    if args.dataset_name:
        # The real path for C4 and other Hub corpora (needs the Hub; kept even though it cannot run offline).
        train = datasets.load_dataset(args.dataset_name, args.dataset_config_name, split="train",
                                      streaming=args.streaming)
        val = datasets.load_dataset(args.dataset_name, args.dataset_config_name, split="validation",
                                    streaming=args.streaming)
    elif args.train_file:
        train = _load_local(args.train_file, args.streaming)
        if args.validation_file:
            val = _load_local(args.validation_file, args.streaming)
        elif args.streaming:
            raise DataError("--streaming with --train_file needs --validation_file (a stream cannot be split)")
        else:
            if len(train) == 0:
                raise DataError(f"data file {args.train_file!r} holds no rows; expected at least one document")
            n_val = max(1, len(train) * args.validation_split_percentage // 100)
            val, train = train.select(range(n_val)), train.select(range(n_val, len(train)))
    else:
        tr, va = builtin_splits()
        train, val = datasets.Dataset.from_dict({"text": tr}), datasets.Dataset.from_dict({"text": va})
    for ds, what in ((train, "training data"), (val, "validation data")):
        _check_text_column(ds, args.text_column_name, what)
        if not args.streaming and len(ds) == 0:
            raise DataError(f"{what} is empty; expected at least one document")
    return train, val


def text_sample(ds, column: str, limit: int = 200_000) -> list[str]:
    """Up to ``limit`` documents of a (possibly streaming) dataset, for training a tokenizer."""
    out = []
    for i, row in enumerate(ds):
        if i >= limit:
            break
        if row[column]:
            out.append(row[column])
    return out


def train_wordpiece_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer trained on ``texts``, cached by corpus and vocabulary size."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import AutoTokenizer

    folder = cache_root() / "tokenizers" / f"wordpiece-{vocab_size}-{corpus_fingerprint(texts)}"
    if (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(folder))
    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, show_progress=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                                   pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]", model_max_length=512)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    fast.save_pretrained(str(tmp))
    try:
        tmp.replace(folder)  # atomic: a concurrent or killed writer never leaves half a tokenizer
    except OSError:
        pass  # another process won the race; its tokenizer is identical
    return AutoTokenizer.from_pretrained(str(folder))


def tokenize_and_chunk(ds: Split, tokenizer: PreTrainedTokenizerBase, column: str, max_seq_length: int,
                       num_proc: int | None = None, what: str = "training data") -> Split:
    """Tokenize, concatenate and cut into ``max_seq_length`` chunks (run_mlm's ``group_texts``)."""

    def tokenize(batch):
        return tokenizer([t for t in batch[column] if t], return_special_tokens_mask=True)

    def group(batch):
        concat = {k: list(chain(*batch[k])) for k in batch}
        n = (len(concat["input_ids"]) // max_seq_length) * max_seq_length
        return {k: [v[i: i + max_seq_length] for i in range(0, n, max_seq_length)] for k, v in concat.items()}

    # Whole documents are longer than the model's positions; group() cuts them into blocks, so the tokenizer's
    # "Token indices sequence length is longer than the specified maximum" warning is noise here (it warns once
    # per tokenizer and then sets this flag: setting it first keeps it quiet).
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    cols = ds.column_names
    kwargs = {} if isinstance(ds, datasets.IterableDataset) else {"num_proc": num_proc, "desc": f"tokenizing {what}"}
    tokenized = ds.map(tokenize, batched=True, remove_columns=cols, **kwargs)
    chunked = tokenized.map(group, batched=True, batch_size=1000, **(
        {} if isinstance(ds, datasets.IterableDataset) else {"num_proc": num_proc, "desc": f"chunking {what}"}))
    if not isinstance(chunked, datasets.IterableDataset) and len(chunked) == 0:
        n_tokens = sum(len(x) for x in tokenized["input_ids"])
        raise DataError(f"{what} has {n_tokens} tokens, too short for one sequence of max_seq_length="
                        f"{max_seq_length}; give more text or a smaller --max_seq_length")
    return chunked


class ResumableMLMCollator(DataCollatorForLanguageModeling):
    """MLM masking drawn from ``(seed, batch content)`` instead of the global torch RNG.

    Why: the stock collator draws masks from the global RNG inside the DataLoader, which accelerate prefetches one
    batch ahead, so the RNG state a checkpoint saves never matches the state the next batch was masked with, and a
    resumed run masks differently (and shifts dropout). A per-batch generator seeded by a hash of the batch makes
    masking a pure function of data order (itself a pure function of seed and epoch), so resume is exact -- with
    DataLoader workers too, and the global RNG is left to dropout. Identical batches (evaluation) get identical
    masks, which also makes evaluation losses comparable across checkpoints.
    """

    def torch_call(self, examples):
        digest = hashlib.blake2b(str(self.seed).encode(), digest_size=8)
        for ex in examples:
            ids = ex["input_ids"] if isinstance(ex, Mapping) else ex
            digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        self.generator = torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") & (2**63 - 1))
        self._generator_pid = os.getpid()  # stops the base class from re-seeding it per worker
        return super().torch_call(examples)


def cap(ds: Split, n: int | None) -> Split:
    """First ``n`` rows (``max_train_samples``); works for streaming datasets too."""
    if n is None:
        return ds
    return ds.take(n) if isinstance(ds, datasets.IterableDataset) else ds.select(range(min(n, len(ds))))
