"""Public helpers for writing maskers: noise that is independent of how the batch is split over processes,
and the score-to-mask step that gives an exact hidden count.

A masker that wants the masks of a run not to depend on the number of processes draws its randomness with
:func:`noise` for ``rows`` (the ``rows`` context of :data:`maskkit.interfaces.MASKER_CONTEXT`): every process
draws the noise of the whole global batch up to its last row from the same generator and keeps its own rows,
so two processes with batch B draw what one process with batch 2B draws.
"""

from __future__ import annotations

from typing import Any

import torch

from maskkit.errors import MaskError
from maskkit.interfaces import Grid, MaskDraw


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


def as_draw(result: Any) -> MaskDraw:
    """A masker's return value as a :class:`~maskkit.interfaces.MaskDraw` (a bare mask gets empty extras)."""
    return result if isinstance(result, MaskDraw) else MaskDraw(result)


def check_mask(mask: Any, *, batch_size: int, grid: Grid, num_hidden: int | None, name: str = "masker",
               device: torch.device | str | None = None, sync: bool = True) -> torch.Tensor:
    """Check a mask a masker returned against what it declares, and return it.

    Host metadata first (free): a tensor of ``torch.bool``, shape ``[batch_size, h * w]``, on ``device`` when
    given. Then, when ``num_hidden`` is an ``int``, the count of every sample: with ``sync=True`` on the host
    (a device-to-host copy of ``B`` counts), naming the first sample that differs; with ``sync=False`` by a
    device-side assertion (``torch._assert_async``) that the training loop never waits for.

    Raises :class:`~maskkit.errors.MaskError`, one line, naming the masker, what it declared and what came back.
    """
    n = grid[0] * grid[1]
    if not isinstance(mask, torch.Tensor):
        raise MaskError(f"masker {name}: returned {type(mask).__name__}, expected a bool tensor "
                        f"[B, N] = [{batch_size}, {n}] (or a maskkit.MaskDraw holding one)")
    if mask.dtype != torch.bool:
        raise MaskError(f"masker {name}: returned a {str(mask.dtype).replace('torch.', '')} mask, expected "
                        "torch.bool (True = hidden)")
    if tuple(mask.shape) != (batch_size, n):
        raise MaskError(f"masker {name}: returned a mask of shape {list(mask.shape)}, expected [B, N] = "
                        f"[{batch_size}, {n}] for grid {tuple(grid)}")
    if device is not None:
        want = torch.device(device)
        if mask.device.type != want.type or (want.index is not None and mask.device.index != want.index):
            raise MaskError(f"masker {name}: returned a mask on {mask.device}, expected it on {want} "
                            "(draw it on the device you are given)")
    if num_hidden is None or batch_size == 0:
        return mask
    counts = mask.sum(dim=1)  # [B]
    if sync:
        wrong = (counts != num_hidden).nonzero()
        if wrong.numel():
            i = int(wrong[0, 0])
            raise MaskError(f"masker {name}: declared {num_hidden} hidden patches per sample, sample {i} hides "
                            f"{int(counts[i])}")
    else:
        torch._assert_async((counts == num_hidden).all(), f"masker {name}: declared {num_hidden} hidden patches "
                            "per sample, but a sample hides another count")
    return mask
