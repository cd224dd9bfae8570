"""Stand-in for ``hf_kd/core/fingerprint.py`` (being added on main with this API) until it lands; deleted at merge.

Same signatures: ``text_content_hash(texts)`` streams sha256 over every text, ``tokenizer_hash(tokenizer)`` hashes
the vocabulary, ``model_fingerprint(model_or_path)`` hashes the config and the weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import torch


def text_content_hash(texts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for text in texts:
        data = (text or "").encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))  # length-prefixed: ["ab", "c"] != ["a", "bc"]
        h.update(data)
    return h.hexdigest()


def tokenizer_hash(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()


def model_fingerprint(model_or_path) -> str:
    if isinstance(model_or_path, str):
        # The files as saved (config + weights): loading into a generic class would initialise missing heads randomly.
        from pathlib import Path

        folder = Path(model_or_path)
        h = hashlib.sha256()
        for f in sorted(folder.glob("config.json")) + sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            h.update(f.name.encode("utf-8"))
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()
    h = hashlib.sha256(model_or_path.config.to_json_string(use_diff=False).encode("utf-8"))
    for name, tensor in sorted(model_or_path.state_dict().items()):
        h.update(name.encode("utf-8"))
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
