"""Content fingerprints: what a cached artefact (a reproduce run, a teacher, a teacher-output cache) was made
from, hashed in full so that a change anywhere in the data, the vocabulary or the weights changes the key.

A sample is not enough: two corpora equal in their first lines but different after them must not share runs
or teacher outputs, so every text is hashed (streamed: constant memory for any corpus size).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

# Config fields that say where or how a model was saved, not what it computes.
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "_commit_hash", "_attn_implementation_autoset")


def text_content_hash(texts: Iterable[str]) -> str:
    """sha256 of every text in order, each length-prefixed (so ``["ab", "c"]`` and ``["a", "bc"]`` differ)."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of the token -> id map and the special tokens' ids (what decides which id a text becomes)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    specials = {name: getattr(tokenizer, f"{name}_id", None) for name in
                ("pad_token", "mask_token", "cls_token", "sep_token", "bos_token", "eos_token", "unk_token")}
    payload = json.dumps({"vocab": vocab, "specials": specials, "class": type(tokenizer).__name__.removesuffix("Fast")},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _config_payload(config: dict) -> bytes:
    clean = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    return json.dumps(clean, sort_keys=True, default=str).encode("utf-8")


def model_fingerprint(model_or_path: Any) -> str:
    """sha256 of a model's config (less where it was saved) and all its weights.

    A folder is hashed from its ``config.json`` and the bytes of its ``*.safetensors`` files (no model load); an
    in-memory ``PreTrainedModel`` from ``config.to_dict()`` and every tensor of its ``state_dict`` in name order.
    The two forms of one model give different fingerprints (file bytes vs tensor bytes): compare like with like.
    """
    h = hashlib.sha256()
    if isinstance(model_or_path, (str, Path)):
        folder = Path(model_or_path)
        config = folder / "config.json"
        if config.is_file():
            h.update(_config_payload(json.loads(config.read_text())))
        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            raise FileNotFoundError(f"{folder} has no *.safetensors weights to fingerprint")
        for f in weights:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()
    config = getattr(model_or_path, "config", None)
    if config is not None:
        h.update(_config_payload(config.to_dict()))
    for name, tensor in sorted(model_or_path.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
