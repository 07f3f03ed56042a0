"""Public helpers for writing maskers: noise that is independent of how the batch is split over processes,
the score-to-mask steps that give an exact hidden count (the highest scores, :func:`mask_from_scores`, or a draw
weighted by them, :func:`sample_from_scores`), and the checks every mask passes before an encoder sees
it (:func:`check_mask`, :func:`draw_checked`, :func:`check_masker`).

A masker that wants the masks of a run not to depend on the number of processes draws its randomness with
:func:`noise` for ``rows`` (the ``rows`` context of :data:`maskkit.interfaces.MASKER_CONTEXT`): every process
draws the noise of the whole global batch up to its last row from the same generator and keeps its own rows,
so two processes with batch B draw what one process with batch 2B draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from maskkit.errors import MaskError
from maskkit.interfaces import Grid, MaskDraw, masker_context


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


def sample_from_scores(scores: torch.Tensor, num_hidden: int, *, temperature: float = 1.0,
                       generator: torch.Generator | None = None, rows: slice | None = None) -> torch.Tensor:
    """``scores [B, N] -> mask [B, N]`` hiding ``num_hidden`` patches per sample drawn at random without
    replacement: each draw picks one of the patches left with probability ``softmax(scores / temperature)``
    over them (Gumbel-top-k, Kool et al. 2019: the ``num_hidden`` highest of ``scores / temperature`` plus
    Gumbel noise, so the count is exact).

    A low ``temperature`` hides the highest scores (:func:`mask_from_scores`); a high one, uniformly at random.
    The noise is :func:`noise` for ``rows``, so a run's masks do not depend on how its batch is split over
    processes. The scores are detached: a learned masker that needs its draw's log-probability computes it
    from its own scores (AdaMAE in maskkit-adaptive draws its visible patches this way and does).
    """
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    b, n = scores.shape
    u = noise(b, n, generator=generator, device=scores.device, rows=rows).clamp(1e-12, 1 - 1e-7)  # [B, N]
    gumbel = -torch.log(-torch.log(u))  # standard Gumbel
    return mask_from_scores(scores.detach().float() / temperature + gumbel, num_hidden)


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


def _call(masker: Any, batch_size: int, grid: Grid, generator: torch.Generator | None,
          device: torch.device | str | None, context: dict[str, Any] | None, name: str,
          names: tuple[str, ...] | None) -> MaskDraw:
    """``masker(...)`` with the context it names, its result as a :class:`MaskDraw` (unchecked)."""
    names = masker_context(masker, name) if names is None else names
    given = {"step": 0, "epoch": 0.0, "progress": 0.0, "rows": slice(0, batch_size),
             **{k: v for k, v in (context or {}).items() if v is not None}}
    missing = [key for key in names if given.get(key) is None]
    if missing:
        raise ValueError(f"masker {name} asks for {', '.join(missing)}: draw it with "
                         f"{', '.join(k + '=' for k in missing)} (e.g. from a model: MaskedModel.draw)")
    return as_draw(masker(batch_size, grid, generator=generator, device=device, **{k: given[k] for k in names}))


def draw_checked(masker: Any, batch_size: int, grid: Grid, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, context: dict[str, Any] | None = None,
                 name: str | None = None, sync: bool = True, names: tuple[str, ...] | None = None) -> MaskDraw:
    """Call ``masker`` with the context it names (taken from ``context``: ``images``, ``step``, ``epoch``,
    ``model``, ``rows``) and check what it returns (:func:`check_mask`). ``rows`` defaults to
    ``slice(0, batch_size)``, ``step``/``epoch`` to 0. ``names``: the masker's context names when the caller
    has them already (:func:`~maskkit.interfaces.masker_context`; else inspected here).

    A masker that names a context missing from ``context`` (``images`` or ``model``) raises ``ValueError``.
    """
    name = name or type(masker).__name__
    drawn = _call(masker, batch_size, grid, generator, device, context, name, names)
    check_mask(drawn.mask, batch_size=batch_size, grid=grid, num_hidden=masker.num_hidden(grid), name=name,
               device=device, sync=sync)
    return drawn


@attrs.frozen
class MaskStats:
    """What a masker's masks really hide, over the samples :func:`check_masker` drew.

    ``declared``: its ``num_hidden`` (``None``: varies); ``hidden``: the hidden count of every sample (``[S]``,
    int); ``masks``: the masks, bool ``[S, N]`` on the CPU; ``grid``; ``name``.
    """

    name: str
    grid: Grid
    declared: int | None
    hidden: torch.Tensor
    masks: torch.Tensor

    @property
    def wrong(self) -> list[int]:
        """Samples whose count differs from the declared one (empty when the count may vary)."""
        if self.declared is None:
            return []
        return (self.hidden != self.declared).nonzero().flatten().tolist()

    def summary(self) -> str:
        """One line: the declared count and the min/mean/max hidden per sample."""
        n = self.grid[0] * self.grid[1]
        declared = (f"declares {self.declared} of {n} patches hidden per sample" if self.declared is not None
                    else f"declares a varying count of {n} patches")
        h = self.hidden.float()
        return (f"masker {self.name} {declared}; its {len(self.hidden)} drawn samples hide min {int(h.min())}, "
                f"mean {float(h.mean()):.1f}, max {int(h.max())} ({100 * float(h.mean()) / n:.1f}% on average)")

    def check(self) -> None:
        """Raise :class:`~maskkit.errors.MaskError` when a sample hides another count than declared."""
        if self.wrong:
            i = self.wrong[0]
            raise MaskError(f"masker {self.name}: declared {self.declared} hidden patches per sample, sample {i} "
                            f"hides {int(self.hidden[i])}")


def check_masker(masker: Any, grid: Grid, *, name: str | None = None, batch_size: int = 8,
                 seeds: Sequence[int] = (0, 1, 2), context: dict[str, Any] | None = None,
                 device: torch.device | str = "cpu", strict: bool = True) -> MaskStats:
    """Draw ``batch_size`` masks for each of ``seeds`` and check them: bool, ``[B, N]``, on ``device`` (always
    raised) and, with ``strict``, the declared count in every sample (else see :attr:`MaskStats.wrong`).
    Returns :class:`MaskStats`, what the masks hide: for ``maskkit masks show``, ``compare --dry-run`` and
    tests. Every check is on the host.

    ``context``: what a context-aware masker asks for (``images [batch_size, C, H, W]``, ``model``...; see
    :func:`draw_checked`). A blind masker needs none.
    """
    name = name or type(masker).__name__
    names = masker_context(masker, name)
    masks = []
    for seed in seeds:
        gen = torch.Generator(device=device).manual_seed(seed)
        drawn = _call(masker, batch_size, grid, gen, device, context, name, names)
        check_mask(drawn.mask, batch_size=batch_size, grid=grid, num_hidden=None, name=name, device=device)
        masks.append(drawn.mask.detach().cpu())
    stacked = torch.cat(masks)  # [S, N]
    stats = MaskStats(name, tuple(grid), masker.num_hidden(grid), stacked.sum(dim=1), stacked)
    if strict:
        stats.check()
    return stats
