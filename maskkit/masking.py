"""Public helpers for writing maskers: noise that is independent of how the batch is split over processes,
and the score-to-mask step that gives an exact hidden count.

A masker that wants the masks of a run not to depend on the number of processes draws its randomness with
:func:`noise` for ``rows`` (the ``rows`` context of :data:`maskkit.interfaces.MASKER_CONTEXT`): every process
draws the noise of the whole global batch up to its last row from the same generator and keeps its own rows,
so two processes with batch B draw what one process with batch 2B draws.
"""

from __future__ import annotations

import torch


def noise(batch_size: int, n: int, *, generator: torch.Generator | None = None,
          device: torch.device | str | None = None, rows: slice | None = None) -> torch.Tensor:
    """Uniform noise ``[batch_size, n]`` in [0, 1) for this process's ``rows`` of the global batch.

    ``rows=None`` (one process) is ``slice(0, batch_size)``. ``rows.stop - rows.start`` must equal
    ``batch_size``.
    """
    rows = rows if rows is not None else slice(0, batch_size)
    start, stop = rows.start or 0, rows.stop
    if stop - start != batch_size:
        raise ValueError(f"rows {start}:{stop} hold {stop - start} samples, not batch_size={batch_size}")
    full = torch.rand(stop, n, generator=generator, device=device)  # [rows.stop, n]: the global batch so far
    return full[start:stop]


def mask_from_scores(scores: torch.Tensor, num_hidden: int) -> torch.Tensor:
    """``scores [B, N] -> mask [B, N]`` hiding the ``num_hidden`` highest-scoring patches of every sample.

    Ties are broken by patch index (the lower index is hidden first), so the mask is a function of the
    scores alone; the count is exact whatever the scores (NaNs count as lowest).
    """
    b, n = scores.shape
    if not 0 <= num_hidden <= n:
        raise ValueError(f"num_hidden must be in [0, {n}], got {num_hidden}")
    scores = torch.nan_to_num(scores.detach().float(), nan=float("-inf"))
    order = torch.argsort(scores, dim=1, descending=True, stable=True)  # [B, N], hardest first
    mask = torch.zeros(b, n, dtype=torch.bool, device=scores.device)
    return mask.scatter_(1, order[:, :num_hidden], True)
