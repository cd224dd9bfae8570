"""Teacher forwards -> stored sparse targets, for the micro-batches of one cache shard (``hf-kd cache-teacher``).

Micro-batches are stacked up to ``producer_batch_size`` sequences per teacher forward, and the vocabulary-wide
work (head, log-softmax, top-k) runs a chunk of KD rows at a time, so no ``[positions, vocab]`` buffer larger than
about 16 MB exists even for a 150k vocabulary: MLM teachers run their head at the KD rows only (``SparseHead``),
causal LMs with a plain linear head hand over their final hidden states at those rows (``HiddenCapture``) and the
head is applied per chunk; other models fall back to full logits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..core.chunked_kd import default_chunk_size
from ..core.losses import teacher_log_probs
from ..core.schedule import teacher_indices
from ..core.sparse_kd import SparseTargets, sampled_targets, topk_targets
from .cache_stream import kd_rows, model_inputs
from .clm import HiddenCapture, fused_head
from .sparse_head import Rows, SparseHead

Item = tuple[int, int, dict]  # (step, micro-batch, batch)


class ShardProducer:
    """Sparse targets for ``(step, micro-batch)`` items, as the student at that step needs them (the ``mean``
    ensemble's mixture, or the teacher ``sample`` selects)."""

    def __init__(self, trainer, task: str, top_k: int, producer_batch_size: int | None, sampled: bool = False):
        self.trainer, self.task, self.top_k, self.sampled = trainer, task, top_k, sampled
        self.args = trainer.args
        self.limit = producer_batch_size or 0
        teachers = trainer.teachers
        self._sparse = [SparseHead.attach(t) if task == "mlm" else None for t in teachers]
        heads = [fused_head(t) if task == "clm" else None for t in teachers]
        self._captures = [HiddenCapture(h) if h is not None else None for h in heads]
        vocab = trainer.model.get_output_embeddings().weight.shape[0]
        self.chunk = default_chunk_size(vocab)

    def targets(self, items: list[Item]) -> dict[tuple[int, int], SparseTargets]:
        out: dict[tuple[int, int], SparseTargets] = {}
        group: list[Item] = []
        key = None
        for step, mb, batch in items:
            teachers = tuple(teacher_indices(step, len(self.trainer.teachers), self.args.kd_teacher_selection,
                                             self.args.seed))
            size = sum(b["input_ids"].shape[0] for _, _, b in group)
            if group and (teachers != key or size + batch["input_ids"].shape[0] > self.limit
                          or not _stackable(group, batch)):
                out.update(self._group_targets(group, key))
                group = []
            group.append((step, mb, batch))
            key = teachers
        if group:
            out.update(self._group_targets(group, key))
        return out

    def _group_targets(self, group: list[Item], teachers: tuple[int, ...]) -> dict[tuple[int, int], SparseTargets]:
        batches = [b for _, _, b in group]
        masks = [kd_rows(b, self.task, self.args.kd_positions).mask for b in batches]
        rows = Rows(torch.cat(masks))  # row-major over the stacked batch = each micro-batch's rows, in order
        stacked = {k: torch.cat([b[k] for b in batches]) for k in model_inputs(batches[0])}
        with torch.inference_mode():
            sources = [self._row_logits(i, stacked, rows) for i in teachers]
            n = int(rows.index.numel())
            reduce = self._reducer(group[0], rows.mask.device)
            parts = [reduce(teacher_log_probs([src(slice(s, s + self.chunk)) for src in sources],
                                              self.args.kd_temperature))
                     for s in range(0, max(n, 1), self.chunk)]
        # To the host per group: a shard's targets (hundreds of MB for a long causal-LM shard) never sit on the GPU.
        ids, logp, rest = (torch.cat([getattr(p, f) for p in parts]).cpu() for f in ("ids", "logp", "log_rest"))
        out, start = {}, 0
        for (step, mb, _), mask in zip(group, masks, strict=True):
            end = start + int(mask.sum())
            out[(step, mb)] = SparseTargets(ids[start:end], logp[start:end], rest[start:end])
            start = end
        return out

    def _reducer(self, first: Item, device) -> Callable[[torch.Tensor], SparseTargets]:
        """Full log-probs of a chunk of rows -> stored targets: the top k, or draws seeded by (seed, step, micro-batch,
        rank) of the group's first item, so that a rerun or a resumed production draws the same tokens."""
        if not self.sampled:
            return lambda logp: topk_targets(logp, self.top_k)
        seed = hash_seed(self.args.seed, first[0], first[1], self.trainer.accelerator.process_index)
        generator = torch.Generator(device=device).manual_seed(seed)
        return lambda logp: sampled_targets(logp, self.top_k, generator)

    def _row_logits(self, i: int, stacked: dict, rows: Rows) -> Callable[[slice], torch.Tensor]:
        """Teacher ``i``'s logits at ``rows``, as a function of a slice of those rows."""
        teacher, capture, sparse = self.trainer.teachers[i], self._captures[i], self._sparse[i]
        if capture is not None:
            with capture.rows(rows) as got:
                teacher(**stacked)
            hidden, head = got.hidden, capture.head
            return lambda sl: F.linear(hidden[sl], head.weight, head.bias)
        if sparse is not None:
            with sparse.select(rows):
                logits = teacher(**stacked).logits
        else:
            logits = rows.take(teacher(**stacked).logits)
        return lambda sl: logits[sl]


def hash_seed(*parts: int) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _stackable(group: list[Item], batch: dict) -> bool:
    first = group[0][2]
    return all(k in batch and first[k].shape[1:] == batch[k].shape[1:] for k in model_inputs(first))
