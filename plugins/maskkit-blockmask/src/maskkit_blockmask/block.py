"""BEiT's block-wise masking (Bao et al., 2021, "BEiT: BERT Pre-Training of Image Transformers", Algorithm 1),
vectorized over the batch, with an exact hidden count for sparse (MAE) encoders.

Algorithm 1 of the paper hides rectangles until enough patches are hidden::

    M <- {}
    repeat
        s <- Rand(16, 0.4 N - |M|)              block area
        r <- Rand(0.3, 1 / 0.3)                 aspect ratio (log-uniform in the official code)
        a <- sqrt(s r);  b <- sqrt(s / r)       block height and width
        t <- Rand(0, h - a);  l <- Rand(0, w - b)
        M <- M u {(i, j): i in [t, t + a), j in [l, l + b)}
    until |M| > 0.4 N

:class:`BlockMasker` runs this loop for every sample of the batch at once: one block per sample and round,
for a bounded number of rounds, each round a handful of tensor operations on ``[B, N]`` masks.
"""

from __future__ import annotations

import math

import attrs
import torch

from maskkit import Masker, toolkit
from maskkit.errors import ConfigError

Grid = tuple[int, int]

MAX_ROUNDS = 64  # upper bound on block-placement rounds, whatever the grid

NO_BLOCK, WHOLE_BLOCK, TRIMMED_BLOCK = 0, 1, 2


@attrs.frozen
class BlockMaskSample:
    """A block mask with the blocks that made it (for tests, visualisation and debugging).

    ``mask`` bool ``[B, N]``, True = hidden. ``blocks`` long ``[B, R, 4]``: ``(top, left, height, width)`` of the
    block each of the ``R`` rounds drew (zeros where it drew none). ``kinds`` long ``[B, R]``: ``NO_BLOCK`` (0,
    the sample was done), ``WHOLE_BLOCK`` (1, every patch of the rectangle is now hidden) or ``TRIMMED_BLOCK``
    (2, only its first visible patches in row-major order were hidden). ``closing`` long ``[B, 4]``: the closing
    block (zeros where unused) and ``closing_count`` long ``[B]`` how many patches it added.
    """

    mask: torch.Tensor
    blocks: torch.Tensor
    kinds: torch.Tensor
    closing: torch.Tensor
    closing_count: torch.Tensor


class BlockMasker(Masker):
    """BEiT block-wise masking: hide random rectangles of about ``min_block_patches`` patches or more.

    ``ratio``: fraction of patches to hide; the target count is ``N - int(N * (1 - ratio))`` (MAE's rule for
    random masking, :meth:`target_count`), clamped to ``[1, N - 1]`` so every sample hides and shows
    something. ``min_block_patches`` / ``max_block_patches`` bound the area ``s`` of a block (``None``: the
    target; the area before rounding); ``aspect_ratio``: ``(min, max)`` of ``r = height / width``, drawn
    log-uniformly. BEiT hides about 40% (75 of 196 patches in its code) in blocks of at least 16 patches with
    ``r`` in (0.3, 1 / 0.3); MAE's Table 1f compares block masking at ratios 0.5 and 0.75 with random masking.

    Each round, every sample that still needs patches draws one block as in Algorithm 1: area ``s`` uniform
    between ``min_block_patches`` and ``min(max_block_patches, remaining)`` (whichever is larger, like Python's
    ``random.uniform``), ``log r`` uniform, height ``round(sqrt(s r))``, width ``round(sqrt(s / r))``, top-left
    uniform where the rectangle fits; the block is added to the mask. Where the official generator redraws a
    block taller or wider than the grid, the range of ``log r`` is narrowed to the ratios whose block fits
    (``r`` stays log-uniform on them), so no draw is wasted; only when no ratio in range fits (a grid much
    wider than tall, or ``s`` close to ``N``) is the block clipped to the grid.

    * ``exact=True`` (default): ``num_hidden(grid)`` is the target, for every sample. The block that would
      overshoot it is *trimmed*: only its first ``remaining`` visible patches in row-major order are hidden
      (whole rows from its top, then part of a row), so the last block stays contiguous.
    * ``exact=False``: Algorithm 1 as written: the last block is kept whole, so a sample hides at least the
      target and usually a little more (``num_hidden`` is ``None``: pair it with a dense encoder, as SimMIM
      and BEiT do). The last block is still trimmed if it would hide every patch (one stays visible).

    Rounds are bounded (:meth:`num_rounds`: at most ``MAX_ROUNDS``), because a block may land on patches that
    are already hidden and add nothing. If a sample still falls short after them (rare: tiny targets with
    many rounds of fully overlapping blocks), one *closing block* of area equal to the shortfall is placed at
    random: its visible patches are hidden in row-major order and, if it holds too few, it grows ring by ring
    around itself (Chebyshev distance 1, 2, ...; each ring in row-major order) until the count is reached, so
    the added patches stay contiguous. Hence generation always terminates with the promised count, also when
    ``min_block_patches`` exceeds the grid (then the first block is the whole grid, trimmed).

    Shapes: ``__call__(B, (h, w)) -> bool [B, h * w]``, True = hidden, built on ``device`` from ``generator``
    only; :meth:`sample` also returns the blocks. No Python loop over samples. On CUDA nothing is read back
    from the device: every round runs on the whole batch (finished samples add nothing). On CPU, where
    reading back is free, finished samples leave the working batch and the loop stops when all are done;
    the random numbers are drawn for the whole batch either way, so both paths give the same masks.
    """

    def __init__(self, ratio: float = 0.4, min_block_patches: int = 16, max_block_patches: int | None = None,
                 aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3), exact: bool = True):
        self.ratio = toolkit.ratio(ratio)
        self.min_block_patches = _positive_int(min_block_patches, "min_block_patches")
        if max_block_patches is not None:
            max_block_patches = _positive_int(max_block_patches, "max_block_patches")
            if max_block_patches < self.min_block_patches:
                raise ConfigError("max_block_patches", f"expected an int >= min_block_patches "
                                  f"({self.min_block_patches}) or null, got {max_block_patches!r}")
        self.max_block_patches = max_block_patches
        self.aspect_ratio = _aspect_ratio(aspect_ratio)
        if not isinstance(exact, bool):
            raise ConfigError("exact", f"expected true or false, got {exact!r}")
        self.exact = exact
        self._skip_finished_on_cpu = True  # tests turn it off to check that it changes nothing

    # -- counts ---------------------------------------------------------------------------------------------

    def target_count(self, grid: Grid) -> int:
        """``N - int(N * (1 - ratio))`` clamped to ``[1, N - 1]``: the exact count, or the inexact minimum."""
        n = grid[0] * grid[1]
        return min(max(n - int(n * (1 - self.ratio)), 1), max(n - 1, 1))

    def num_hidden(self, grid: Grid) -> int | None:
        return self.target_count(grid) if self.exact else None

    def num_rounds(self, grid: Grid) -> int:
        """Block rounds run on ``grid``: twice the blocks of minimum area the target needs, plus 8, at most
        ``MAX_ROUNDS``. Samples need fewer: about 4 on average on 14 x 14 at ratio 0.4, 12 at 0.75."""
        target = self.target_count(grid)
        smallest = max(1, min(self.min_block_patches, target))
        return min(MAX_ROUNDS, 8 + 2 * math.ceil(target / smallest))

    # -- generation -----------------------------------------------------------------------------------------

    def __call__(self, batch_size: int, grid: Grid, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        return self._generate(batch_size, grid, generator, device, record=False).mask

    def sample(self, batch_size: int, grid: Grid, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> BlockMaskSample:
        """Like ``__call__`` (the same mask from the same generator state), plus the blocks drawn."""
        return self._generate(batch_size, grid, generator, device, record=True)

    def _generate(self, batch_size: int, grid: Grid, generator: torch.Generator | None,
                  device: torch.device | str | None, record: bool) -> BlockMaskSample:
        h, w = int(grid[0]), int(grid[1])
        n, b = h * w, int(batch_size)
        device = torch.device(device) if device is not None else torch.device("cpu")
        rects = _Rectangles((h, w), self.aspect_ratio, device)
        target = self.target_count((h, w))
        max_block = self.max_block_patches or target
        on_cpu = self._skip_finished_on_cpu and device.type == "cpu"

        # The working rows: every sample on CUDA; on CPU the finished samples leave them (written to `visible`).
        visible = torch.ones(b, n, dtype=torch.bool, device=device)  # [B, N] result, True = visible
        work, hidden = visible, torch.zeros(b, dtype=torch.long, device=device)  # [W, N], [W]
        rows = None  # sample index of each working row; None: all samples, in order
        blocks, kinds = [], []
        for _ in range(self.num_rounds((h, w))):
            u = torch.rand(b, 4, generator=generator, device=device)  # [B, 4], drawn for every sample
            rect, kind = self._round(rects, work, hidden, u if rows is None else u.index_select(0, rows), target,
                                     max_block, on_cpu, record)
            if record:
                blocks.append(_to_samples(rect, rows, b))
                kinds.append(_to_samples(kind, rows, b))
            if on_cpu:  # once a quarter of the working rows are finished, write those out and drop them
                unfinished = hidden < target
                left = int(unfinished.sum())
                if left <= 0.75 * hidden.shape[0]:
                    done, keep = (~unfinished).nonzero().squeeze(1), unfinished.nonzero().squeeze(1)
                    visible[done if rows is None else rows.index_select(0, done)] = work.index_select(0, done)
                    rows = keep if rows is None else rows.index_select(0, keep)
                    work, hidden = work.index_select(0, keep), hidden.index_select(0, keep)
                    if left == 0:
                        break

        shortfall = (target - hidden).clamp(min=0)  # [W]
        closing = torch.zeros(b, 4, dtype=torch.long, device=device)
        if not (on_cpu and rows is not None and rows.numel() == 0):
            u = torch.rand(b, 3, generator=generator, device=device)  # [B, 3]
            rect = rects.closing_block(work, shortfall, u if rows is None else u.index_select(0, rows), on_cpu)
            closing = _to_samples(rect, rows, b)
        if rows is not None:
            visible[rows] = work
        return BlockMaskSample(
            mask=~visible,
            blocks=torch.stack(blocks, dim=1) if blocks else closing.new_zeros(b, 0, 4),
            kinds=torch.stack(kinds, dim=1) if kinds else closing.new_zeros(b, 0),
            closing=closing,
            closing_count=_to_samples(shortfall, rows, b),
        )

    def _round(self, rects: "_Rectangles", visible: torch.Tensor, hidden: torch.Tensor, u: torch.Tensor,
               target: int, max_block: int, on_cpu: bool, record: bool
               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One block per sample of Algorithm 1, hidden in place in ``visible [B, N]``; ``hidden [B]`` updated.

        ``u [B, 4]`` uniform numbers (area, aspect ratio, top, left). Samples already at the target add
        nothing. With ``record``, returns each sample's block ``[B, 4]`` and its kind ``[B]`` (zeros for
        finished samples), else ``(None, None)``.
        """
        remaining = target - hidden  # [B]
        low = float(self.min_block_patches)
        area = (low + (remaining.clamp(max=max_block) - low) * u[:, 0]).clamp(min=1.0)  # [B]
        rect = rects.draw(area, u[:, 1:])  # [B, 4]: top, left, height, width
        # the most patches this block may add: up to the target (exact), or short of hiding every patch
        most = visible.shape[1] - 1 - hidden
        limit = remaining if self.exact else most * (remaining > 0)  # [B], 0 once finished
        count = rects.fill(visible, rect, limit, on_cpu)  # [B]: visible patches the block covered
        hidden += torch.minimum(count, limit)
        if not record:
            return None, None
        active = remaining > 0
        kind = torch.where(count > limit, TRIMMED_BLOCK, WHOLE_BLOCK) * active
        return rect * active.unsqueeze(1), kind

    def __repr__(self) -> str:
        return (f"BlockMasker(ratio={self.ratio}, min_block_patches={self.min_block_patches}, "
                f"max_block_patches={self.max_block_patches}, aspect_ratio={self.aspect_ratio}, "
                f"exact={self.exact})")


def _to_samples(values: torch.Tensor, rows: torch.Tensor | None, batch_size: int) -> torch.Tensor:
    """Per-working-row ``values [W, ...]`` -> per-sample ``[B, ...]`` (zeros for samples not in ``rows``)."""
    if rows is None:
        return values
    return values.new_zeros((batch_size, *values.shape[1:])).index_put_((rows,), values)


class _Rectangles:
    """Rectangles on one ``(h, w)`` grid: drawing them and hiding their patches in ``[B, N]`` masks.

    A rectangle's patches are looked up, not computed: ``rows[top * h + height - 1]`` is the bool ``[N]``
    pattern of rows ``[top, top + height)`` (all columns), ``cols[left * w + width - 1]`` that of the columns,
    and their AND is the rectangle. Two row gathers and an AND of contiguous ``[B, N]`` tensors are far cheaper
    than broadcasting ``[B, h, 1] & [B, 1, w]``, on CPU especially.
    """

    def __init__(self, grid: Grid, aspect_ratio: tuple[float, float], device: torch.device):
        self.h, self.w = grid
        self.log_aspect = (math.log(aspect_ratio[0]), math.log(aspect_ratio[1]))
        # built on the device without copying host data (a host-to-device copy can stall on a busy stream)
        axis = torch.arange(2, device=device, dtype=torch.float32)  # [0, 1]
        self.extent = self.h + (self.w - self.h) * axis  # [h, w]
        self.sign = 1.0 - 2.0 * axis  # [1, -1]: height = sqrt(s r), width = sqrt(s / r)
        index = torch.arange(self.h * self.w, device=device)
        self.rows = _span_patterns(index // self.w, self.h)  # [h * h, N]
        self.cols = _span_patterns(index % self.w, self.w)  # [w * w, N]
        # narrow integer types that still count every patch: on CPU, ranking in uint8 needs no conversion and
        # summing into int16 is ~3x faster than into int32 (both are cheaper casts of the uint8 view)
        n = self.h * self.w
        self.count_dtype = torch.uint8 if n < 2**8 else torch.int16 if n < 2**15 else torch.int32
        self.sum_dtype = torch.int16 if n < 2**15 else torch.int32

    def draw(self, area: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Blocks of ``area [B]`` with a log-uniform aspect ratio ``r`` whose range is narrowed to the ratios
        that fit the grid, at uniform positions, from ``u [B, 3]`` (aspect, top, left) in ``[0, 1)``.

        Returns ``[B, 4]`` long ``(top, left, height, width)``: ``height = round(sqrt(area r))``,
        ``width = round(sqrt(area / r))`` (computed in log space), both at least 1 and within the grid.
        """
        log_area = area.log().unsqueeze(1)  # [B, 1]
        lo = (log_area - 2 * math.log(self.w)).clamp(min=self.log_aspect[0])  # width <= w
        hi = (2 * math.log(self.h) - log_area).clamp(max=self.log_aspect[1])  # height <= h
        log_r = torch.lerp(lo, hi, u[:, :1])  # [B, 1]; hi < lo: no ratio fits, the block is clipped below
        size = ((log_area + log_r * self.sign) * 0.5).exp_().round_().clamp_(min=1.0)  # [B, 2]
        size = torch.minimum(size, self.extent)
        corner = torch.minimum((u[:, 1:] * (self.extent + 1 - size)).floor_(), self.extent - size)  # [B, 2]
        return torch.cat([corner, size], dim=1).long()

    def fill(self, visible: torch.Tensor, rect: torch.Tensor, limit: torch.Tensor, on_cpu: bool) -> torch.Tensor:
        """Hide, in place, the first ``limit [B]`` visible patches (row-major) of each sample's ``rect [B, 4]``.

        A rectangle with at most ``limit`` visible patches is hidden whole; a bigger one is trimmed to whole
        rows from its top and part of the next row. Returns how many visible patches the rectangle held
        ``[B]`` (it hid ``min(that, limit)``). ``on_cpu`` ranks the patches of the trimmed rectangles only
        (the same result with less work, after reading back whether there are any).
        """
        top, left, height, width = rect.unbind(1)
        fresh = self.rows.index_select(0, top * self.h + height - 1)  # [B, N]: the block's rows...
        fresh &= self.cols.index_select(0, left * self.w + width - 1)  # ...and columns: the rectangle
        fresh &= visible  # its patches still visible
        count = fresh.view(torch.uint8).sum(dim=1, dtype=self.sum_dtype)  # [B]
        over = count > limit
        if not on_cpu:
            fresh &= self._first(fresh, limit)
        elif bool(over.any()):
            trim = over.nonzero().squeeze(1)
            part = fresh.index_select(0, trim)
            fresh[trim] = part & self._first(part, limit.index_select(0, trim))
        visible ^= fresh  # fresh patches are visible ones: this hides exactly them
        return count

    def _first(self, fresh: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
        """bool ``[B, N]``: the first ``limit [B]`` True entries of each row of ``fresh`` (and any False one)."""
        rank = fresh.view(torch.uint8).cumsum(dim=1, dtype=self.count_dtype)  # 1, 2, ... in row-major order
        # comparing with a materialized [B, N] limit is ~10x faster on CPU than broadcasting a [B, 1] one
        return rank <= limit.to(self.count_dtype).unsqueeze(1).expand_as(rank).contiguous()

    def closing_block(self, visible: torch.Tensor, count: torch.Tensor, u: torch.Tensor,
                      on_cpu: bool) -> torch.Tensor:
        """Hide, in place, exactly ``count [B]`` more patches per sample around one block of that area.

        The block (drawn from ``u [B, 3]`` as any block) is grown ring by ring: ring ``d`` is the block dilated
        by ``d`` (Chebyshev distance), and its visible patches are taken in row-major order until the count is
        reached. Needs ``count <=`` the visible patches. Returns the block ``[B, 4]`` (zeros where
        ``count == 0``).
        """
        rect = self.draw(count.clamp(min=1).to(u.dtype), u)
        top, left, height, width = rect.unbind(1)
        need = count.clone()
        for d in range(max(self.h, self.w)):  # ring max(h, w) - 1 covers the grid from any block
            if on_cpu and not bool(need.any()):
                break
            row0, col0 = (top - d).clamp(min=0), (left - d).clamp(min=0)
            row1, col1 = (top + height + d).clamp(max=self.h), (left + width + d).clamp(max=self.w)
            grown = torch.stack([row0, col0, row1 - row0, col1 - col0], dim=1)
            need -= torch.minimum(self.fill(visible, grown, need, on_cpu), need)
        return rect * (count > 0).unsqueeze(1)


def _span_patterns(coord: torch.Tensor, length: int) -> torch.Tensor:
    """``coord [N]`` (each patch's row or column) -> bool ``[length * length, N]``: entry ``start * length +
    size - 1`` marks the patches with ``start <= coord < start + size``."""
    start = torch.arange(length, device=coord.device).view(length, 1, 1)
    size = torch.arange(1, length + 1, device=coord.device).view(1, length, 1)
    return ((coord >= start) & (coord < start + size)).view(length * length, -1)


def _positive_int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, f"expected a positive int, got {value!r}")
    return value


def _aspect_ratio(value: object) -> tuple[float, float]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in value)
          and value[0] <= value[1])
    if not ok:
        raise ConfigError("aspect_ratio", f"expected [min, max] with 0 < min <= max, got {value!r}")
    return (float(value[0]), float(value[1]))
