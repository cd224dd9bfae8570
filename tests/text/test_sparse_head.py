"""``hf_kd.text.sparse_head`` per model family: the head runs on exactly the selected rows and
gives the full computation's values there; heads it cannot separate fall back to the full forward."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import AutoModelForMaskedLM, default_data_collator

from hf_kd.text.sparse_head import SparseHead, find_mlm_head
from tests.support.data import ListDataset, mlm_examples, quick_args

V, H = 48, 32
SMALL = dict(vocab_size=V, hidden_size=H, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
SEPARABLE = {
    "bert": ("BertConfig", {}),
    "roberta": ("RobertaConfig", {"max_position_embeddings": 48}),
    "xlm-roberta": ("XLMRobertaConfig", {"max_position_embeddings": 48}),
    "albert": ("AlbertConfig", {"embedding_size": 16}),
    "deberta-v2": ("DebertaV2Config", {}),
    "mpnet": ("MPNetConfig", {}),
    "funnel": ("FunnelConfig", {"block_sizes": [1, 1], "d_model": H, "n_head": 2, "d_head": 16, "d_inner": 64,
                                "hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}),
    "mobilebert": ("MobileBertConfig", {"embedding_size": 16, "intra_bottleneck_size": 16, "true_hidden_size": 16,
                                        "num_feedforward_networks": 1}),
    "esm": ("EsmConfig", {"mask_token_id": 3, "position_embedding_type": "absolute"}),
}
UNSEPARABLE = {
    "distilbert": ("DistilBertConfig", {"dim": H, "n_layers": 1, "n_heads": 2, "hidden_dim": 64, "dropout": 0.0,
                                        "attention_dropout": 0.0}),
    "electra": ("ElectraConfig", {"embedding_size": 16}),
    "modernbert": ("ModernBertConfig", {"global_attn_every_n_layers": 1, "local_attention": 16, "embedding_dropout": 0.0,
                                        "mlp_dropout": 0.0, "attention_dropout": 0.0}),
}


def _model(family: dict, name: str):
    cls_name, extra = family[name]
    torch.manual_seed(0)
    kwargs = {**SMALL, **extra}
    if "block_sizes" in kwargs:  # Funnel derives its depth from block_sizes and refuses num_hidden_layers
        kwargs.pop("num_hidden_layers")
    config = getattr(transformers, cls_name)(**kwargs)
    return AutoModelForMaskedLM.from_config(config).eval()


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (3, 10), generator=g)
    attention = torch.ones_like(ids)
    attention[1, 7:] = 0
    mask = (torch.rand(3, 10, generator=g) < 0.3) & attention.bool()
    mask[0, 0] = True  # at least one row
    return {"input_ids": ids, "attention_mask": attention}, mask


@pytest.mark.parametrize("name", sorted(SEPARABLE))
def test_sparse_head_runs_on_exactly_the_selected_rows(name):
    """per family, the head sees only the masked rows, and its logits equal the full ones there."""
    model = _model(SEPARABLE, name)
    head = SparseHead.attach(model)
    assert head is not None, f"{name}: no separable MLM head found"
    seen = []
    head.head.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    inputs, mask = _batch()
    with torch.no_grad():
        full = model(**inputs).logits
        with head.select(mask):
            sparse = model(**inputs).logits
    m = int(mask.sum())
    assert seen[0][:2] == (3, 10) and seen[1] == (m, seen[0][-1]), seen  # full: [B, L, .]; sparse: [M, .]
    assert sparse.shape == (m, full.shape[-1])
    torch.testing.assert_close(sparse, full[mask], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(UNSEPARABLE))
def test_unknown_heads_fall_back_to_the_full_forward(tmp_path, name):
    """a head that is not one token-wise module is left alone; the trainer still trains."""
    from hf_kd import DistillationTrainer

    model = _model(UNSEPARABLE, name)
    assert find_mlm_head(model) is None and SparseHead.attach(model) is None
    args = quick_args(tmp_path, per_device_train_batch_size=4, learning_rate=0.01, sparse_mlm_head=True)
    trainer = DistillationTrainer(model=model.train(), args=args, data_collator=default_data_collator,
                                  train_dataset=ListDataset(mlm_examples(4, seq_len=10, vocab_size=V)))
    assert trainer.objective.student_head is None
    trainer.train()
    assert trainer.state.log_history[0]["mlm_loss"] > 0
