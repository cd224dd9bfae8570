"""Argument dataclasses shared by every text entry point (``run_mlm_kd.py``, ``run_clm_kd.py``, ``hf-kd reproduce``).

Flag names follow transformers' ``run_mlm.py`` / ``run_clm.py`` so users' launch lines carry over.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MODEL_PRESETS = ("tiny", "mini", "small", "medium", "base")
CLM_PRESETS = MODEL_PRESETS + tuple(f"llama-{p}" for p in MODEL_PRESETS)
ALL_PRESETS = tuple(dict.fromkeys(MODEL_PRESETS + CLM_PRESETS))  # what --model_preset accepts (the task narrows it)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Student checkpoint (folder or Hub id) to start from. Unset = from scratch."})
    config_name: str | None = field(
        default=None, metadata={"help": "Config (folder or Hub id) for a student trained from scratch."})
    model_preset: str | None = field(
        default=None, metadata={"help": f"From-scratch size, one of {MODEL_PRESETS} (tiny 2L/128, mini 4L/256, "
                                "small 4L/512, medium 8L/512, base 12L/768): BERT for MLM, GPT-2 for causal LMs, "
                                "which also take llama-tiny ... llama-base. Default tiny when nothing else is set. "
                                "A preset brings a from-scratch learning rate (tiny 2e-3, mini/small 1e-3, medium/base "
                                "5e-4) and warm-up (6%% of the steps) unless --learning_rate / --warmup_steps are given.",
                                "choices": ALL_PRESETS})
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or Hub id. Unset: the student's, else a WordPiece "
                                "tokenizer trained on the training text and cached."})
    vocab_size: int = field(default=8192, metadata={"help": "Vocabulary size of a tokenizer trained here."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow model code from the Hub/folder to run. Off: it is arbitrary code."})


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset, e.g. allenai/c4 (needs the Hub)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset config, e.g. en."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local training text: .txt (one document per line), .json/.jsonl, .csv, "
                                ".parquet with a text column."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation text, same formats."})
    text_column_name: str = field(default="text", metadata={"help": "Column holding the text."})
    validation_split_percentage: int = field(
        default=5, metadata={"help": "Held-out share of the training documents when no validation set is given."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset (C4 scale); needs max_steps."})
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per training sequence (texts are "
                                                         "concatenated and chunked)."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens masked for MLM."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap on training sequences."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap on validation sequences."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})


@dataclass
class ClmDataArguments(DataArguments):
    """``DataArguments`` with ``run_clm.py``'s ``--block_size`` (the sequence length; ``mlm_probability`` unused)."""

    block_size: int | None = field(
        default=None, metadata={"help": "Tokens per training sequence (texts are concatenated and cut into blocks); "
                                "wins over --max_seq_length. Unset = max_seq_length (128)."})

    def __post_init__(self):
        if self.block_size is not None:
            if self.block_size < 2:
                raise ValueError(f"block_size={self.block_size} is invalid: expected an integer >= 2 (a next-token "
                                 "loss needs two tokens)")
            self.max_seq_length = self.block_size
