"""Tiny offline stand-ins for smoke tests: GLUE-format fixture files and a tiny BERT checkpoint.

The fixture files copy the original download's layout and quirks (CoLA without header, MRPC with a BOM and
lone quote characters, STS-B's 10 columns with a float score, MNLI's ``gold_label`` and two dev files)::

    python -c "from glue_eval.testing import *; write_glue_fixture('/tmp/glue'); tiny_checkpoint('/tmp/ckpt')"
    python -m glue_eval.run_glue --model_name_or_path /tmp/ckpt --glue_dir /tmp/glue --tasks all \\
        --max_steps 2 --output_dir /tmp/glue_out
"""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ("the cat dog man woman child plane car house tree sat ran saw ate jumped over under near big small "
         "red blue quickly slowly a an on in with and but not is was").split()


def _sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _rows(task: str, split: str, n: int, rng: random.Random) -> list[str]:
    out = []
    for i in range(n):
        a, b = _sentence(rng), _sentence(rng)
        if task == "cola":
            out.append(f"gj04\t{i % 2}\t{'' if i % 2 else '*'}\t{a}")
        elif task == "sst2":
            out.append(f"{a} \t{i % 2}")
        elif task == "mrpc":
            out.append(f'{i % 2}\t{1000 + i}\t{2000 + i}\t"{a}\t{b} "quoted" end')  # lone quotes, as in MRPC
        elif task == "stsb":
            out.append(f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{a}\t{b}\t{(i * 0.7) % 5:.3f}")
        elif task == "qqp":
            out.append(f"{i}\t{2 * i}\t{2 * i + 1}\t{a}?\t{b}?\t{i % 2}")
        elif task == "mnli":
            gold = ("entailment", "neutral", "contradiction")[i % 3]
            parses = "\t".join(["( x )"] * 4)
            extra = "\t".join([gold] * (5 if split != "train" else 1))
            out.append(f"{i}\t{i}\t{i}e\tfiction\t{parses}\t{a}\t{b}\t{extra}\t{gold}")
        elif task in ("qnli", "rte"):
            out.append(f"{i}\t{a}\t{b}\t{('entailment', 'not_entailment')[i % 2]}")
        else:  # wnli
            out.append(f"{i}\t{a}\t{b}\t{i % 2}")
    return out


HEADERS = {
    "cola": None,
    "sst2": "sentence\tlabel",
    "mrpc": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
    "stsb": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
    "qqp": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
    "mnli": ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
             "sentence2_parse\tsentence1\tsentence2\tlabel1{extra}\tgold_label"),
    "qnli": "index\tquestion\tsentence\tlabel",
    "rte": "index\tsentence1\tsentence2\tlabel",
    "wnli": "index\tsentence1\tsentence2\tlabel",
}


def write_glue_fixture(root: str | Path, n_train: int = 24, n_dev: int = 12, seed: int = 0,
                       tasks: list[str] | None = None) -> Path:
    """GLUE-download-shaped files for ``tasks`` (default all nine) with ``n_train``/``n_dev`` rows each."""
    from .data import split_files

    rng = random.Random(seed)
    for task in tasks or list(HEADERS):
        for split, path in split_files(task, root).items():
            n = n_train if split == "train" else n_dev
            header = HEADERS[task]
            if task == "mnli":
                header = header.format(extra="" if split == "train" else "\tlabel2\tlabel3\tlabel4\tlabel5")
            lines = ([header] if header else []) + _rows(task, split, n, rng)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(root)


def tiny_tokenizer(vocab_size: int = 120):
    """A WordPiece tokenizer trained on :data:`WORDS` (BERT special tokens)."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import PreTrainedTokenizerFast

    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator([" ".join(WORDS)] * 4 + list(WORDS), vocab_size=vocab_size, min_frequency=1,
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                                   pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]", model_max_length=64)


def tiny_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """A 1-layer, 32-wide ``BertForMaskedLM`` and its tokenizer saved like a pretraining checkpoint."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    BertForMaskedLM(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return Path(path)
