"""The positions of a ``[B, L]`` batch that carry a loss, selected once per micro-batch.

Every loss path of the text trainer (MLM and causal LM, student and teachers, training and evaluation, live or
cached teacher targets) selects rows through :class:`Rows`, so the one host read a selection costs is paid once.
"""

from __future__ import annotations

import torch


class Rows:
    """Selected positions of a ``[B, L]`` batch: the bool ``mask`` and, computed once, its row-major indices.

    Selecting with a boolean mask makes the device tell the host how many rows there are (a sync on a GPU, at
    every use, and again in its backward, an ``index_put`` with the mask). One ``nonzero`` per mask, shared by
    every selection of a micro-batch (student head, teachers' heads, labels), pays that unavoidable sync once;
    ``index_select``'s backward needs none.
    """

    def __init__(self, mask: torch.Tensor):
        self.mask = mask
        self._index: torch.Tensor | None = None

    @property
    def index(self) -> torch.Tensor:
        if self._index is None:
            self._index = self.mask.reshape(-1).nonzero().squeeze(1)
        return self._index

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """``x[mask]`` for ``x`` of shape ``[B, L, ...]`` (same rows, same order), as one ``index_select``."""
        if x.shape[:2] != self.mask.shape:
            raise RuntimeError(f"{tuple(x.shape)} does not match the position mask {tuple(self.mask.shape)}")
        return x.flatten(0, 1).index_select(0, self.index)


def as_rows(mask: torch.Tensor | Rows | None) -> Rows | None:
    return mask if mask is None or isinstance(mask, Rows) else Rows(mask)
