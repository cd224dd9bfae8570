"""MLM masking helpers: a validation set masked once, so every evaluation scores the same positions.

Random re-masking at each evaluation adds noise of the same size as the differences between runs that
a speed-up is computed from; a fixed mask (seeded) makes curves of different runs directly comparable.
"""

from __future__ import annotations

import torch
from transformers import DataCollatorForLanguageModeling, default_data_collator


class PremaskedAwareCollator:
    """Masks raw examples like ``DataCollatorForLanguageModeling``; passes examples that carry ``labels`` as is."""

    def __init__(self, tokenizer, mlm_probability: float = 0.15):
        self.mlm = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)

    def __call__(self, features: list[dict]) -> dict:
        if features and "labels" in features[0]:
            return default_data_collator(features)
        return self.mlm(features)


def premask(dataset, tokenizer, mlm_probability: float = 0.15, seed: int = 1234):
    """Apply BERT's 80/10/10 masking once with a fixed seed; returns a dataset with ``labels``."""
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        rows = [dict(r) for r in dataset]
        keep = ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask")
        batch = collator([{k: r[k] for k in keep if k in r} for r in rows])
    finally:
        torch.random.set_rng_state(state)
    import datasets

    cols = {k: v.tolist() for k, v in batch.items() if k != "special_tokens_mask"}
    return datasets.Dataset.from_dict(cols)
