"""The training stream as the student will see it: ``(optimizer step, micro-batches)`` from the Trainer's own train
dataloader, and the KD rows of each micro-batch.

Why through the Trainer: the batches a student's ``compute_loss`` gets depend on the Trainer's sampler (accelerate's
seedable sampler, seeded from the torch seed the Trainer sets), its sharding over ranks, the epoch boundaries and the
short last accumulation step of an epoch, and the collator (MLM masks drawn from (seed, batch)). Rebuilding any of
that by hand would drift with transformers; this module drives the same objects with the loop structure of
``Trainer._run_epoch`` (checked against a real run by ``tests/text/test_cache_producer.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..core.losses import IGNORE_INDEX
from .clm import loss_positions
from .sparse_head import Rows


def training_batches(trainer, stop_step: int) -> Iterator[tuple[int, list[dict]]]:
    """``(step, [micro-batch, ...])`` for optimizer steps ``0 .. stop_step - 1``, as ``trainer.train()`` draws them
    on this rank (tensors on the trainer's device)."""
    args = trainer.args
    dataloader = trainer.get_train_dataloader()
    (num_epochs, updates_per_epoch, _, _, _, steps_in_epoch, _) = trainer.set_initial_training_values(args, dataloader)
    ga = args.gradient_accumulation_steps
    remainder = steps_in_epoch % ga or ga
    step = 0
    for epoch in range(num_epochs):
        _set_epoch(dataloader, epoch)
        iterator = iter(dataloader)
        for update in range(updates_per_epoch):
            wanted = ga if update != updates_per_epoch - 1 else remainder
            batches = []
            for _ in range(wanted):
                try:
                    batches.append(next(iterator))
                except StopIteration:
                    break
            if step >= stop_step:
                return
            yield step, [{k: v.to(args.device) if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]
            step += 1


def _set_epoch(dataloader, epoch: int) -> None:
    # As Trainer._run_epoch: accelerate's DataLoaderShard.set_epoch does not reach a sharded batch sampler's sampler.
    if hasattr(dataloader, "set_epoch"):
        dataloader.set_epoch(epoch)
    inner = getattr(getattr(dataloader, "batch_sampler", None), "batch_sampler", None)
    if hasattr(inner, "set_epoch"):
        inner.set_epoch(epoch)


def kd_rows(batch: dict, task: str, kd_positions: str) -> Rows:
    """The positions of ``batch`` where the student takes KD, in the row-major order of its KD loss."""
    labels = batch["labels"]
    if task == "clm":
        return loss_positions(batch, labels, kd_positions == "all")[0]
    if kd_positions == "masked":
        return Rows(labels != IGNORE_INDEX)
    mask = batch.get("attention_mask")
    return Rows((mask if mask is not None else torch.ones_like(batch["input_ids"])).bool())


def model_inputs(batch: dict) -> dict:
    """What a teacher's forward takes (no labels: the loss is ours)."""
    return {k: v for k, v in batch.items() if k not in ("labels", "shift_labels", "special_tokens_mask")}
