"""The ``hog`` target: MaskFeat's per-patch Histograms of Oriented Gradients (Wei et al., CVPR 2022)."""

from __future__ import annotations

import torch

from maskkit import Target
from maskkit.errors import ConfigError
from maskkit.patches import to_2tuple
from maskkit_hog.hog import Size2, cell_histograms, l2_normalize_cells
from maskkit_hog.hog import gaussian_window as make_gaussian_window

CHANNEL_MODES = ("per_channel", "gray")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


class HOGTarget(Target):
    """Predict the HOG of each patch: ``images [B, C, H, W] -> [B, N, dim]``, N patches in row-major order.

    Each patch of ``ph x pw`` pixels holds ``(ph // cy) x (pw // cx)`` cells of ``cy x cx`` pixels; its target
    is the concatenation of the L2-normalised ``nbins``-bin histograms of those cells, for each channel
    (``channels="per_channel"``, MaskFeat's choice for RGB) or for the channel mean (``"gray"``)::

        dim = C_eff * nbins * (ph // cy) * (pw // cx),   laid out as (channel, bin, cell row, cell column)

    which is MaskFeat's layout (108 numbers for RGB, 16x16 patches and 8x8 cells).

    ``cell_size`` is capped by the patch size per axis, ``cy = min(cell_size, ph)``: a 2x2 or 4x4 patch
    (Fashion-MNIST at 28x28) is a single cell, so its target is one 9-bin histogram per channel. The patch
    must be a multiple of the cell (a 14-pixel patch needs ``cell_size: 7`` or ``14``).

    ``gaussian_window=True`` weights the gradient magnitudes by a Gaussian centred on each patch with a
    standard deviation of half the patch size (as mmpretrain's MaskFeat). ``eps`` guards the normalisation:
    a cell without gradient (a flat region) has an all-zero histogram. Computed without gradients, on the
    images' device, in float32 for half-precision inputs (the output keeps the input dtype).
    """

    def __init__(
        self,
        patch_size: int | tuple[int, int],
        in_chans: int,
        nbins: int = 9,
        cell_size: int | tuple[int, int] = 8,
        channels: str = "per_channel",
        gaussian_window: bool = True,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.patch_size: Size2 = to_2tuple(patch_size)
        if isinstance(nbins, bool) or not isinstance(nbins, int) or nbins < 1:
            raise ConfigError("nbins", f"expected a positive int, got {nbins!r}")
        if channels not in CHANNEL_MODES:
            raise ConfigError("channels", f"expected one of {', '.join(CHANNEL_MODES)}, got {channels!r}")
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise ConfigError("in_chans", f"expected a positive int, got {in_chans!r}")
        self.cell = _cell_for_patch(cell_size, self.patch_size)
        self.nbins = nbins
        self.in_chans = in_chans
        self.channels = channels
        self.eps = float(eps)
        self.cells_per_patch = (self.patch_size[0] // self.cell[0], self.patch_size[1] // self.cell[1])
        effective_chans = in_chans if channels == "per_channel" else 1
        self.dim = effective_chans * nbins * self.cells_per_patch[0] * self.cells_per_patch[1]
        # Float64 so that float64 inputs get exact weights (cast to the compute dtype in forward). Not persistent:
        # it follows from the arguments, and keeps target keys out of checkpoints.
        window = make_gaussian_window(self.patch_size, dtype=torch.float64) if gaussian_window else None
        self.register_buffer("window", window, persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, c, height, width = images.shape
        ph, pw = self.patch_size
        if c != self.in_chans:
            raise ValueError(f"hog target was built for {self.in_chans} channels, got images with {c}")
        if height % ph or width % pw:
            raise ValueError(f"image size {(height, width)} is not a multiple of the patch size {(ph, pw)}")
        x = images.float() if images.dtype in _LOW_PRECISION else images
        if self.channels == "gray":
            x = x.mean(dim=1, keepdim=True)  # [B, 1, H, W]
        gh, gw = height // ph, width // pw
        weight = None if self.window is None else self.window.to(x.dtype).repeat(gh, gw)  # [H, W]
        hist = l2_normalize_cells(cell_histograms(x, self.nbins, self.cell, weight), self.eps)  # [B, C', K, h, w]
        ny, nx = self.cells_per_patch
        hist = hist.reshape(b, x.shape[1], self.nbins, gh, ny, gw, nx)
        hist = hist.permute(0, 3, 5, 1, 2, 4, 6)  # [B, gh, gw, C', K, ny, nx]
        return hist.reshape(b, gh * gw, self.dim).to(images.dtype)

    def extra_repr(self) -> str:
        return (f"patch_size={self.patch_size}, cell={self.cell}, nbins={self.nbins}, channels={self.channels}, "
                f"gaussian_window={self.window is not None}, dim={self.dim}")


def _cell_for_patch(cell_size: int | tuple[int, int] | list[int], patch_size: Size2) -> Size2:
    """``cell_size`` capped by the patch per axis; the patch must be a whole number of cells."""
    try:
        requested = to_2tuple(cell_size)
    except (TypeError, ValueError):
        raise ConfigError("cell_size", f"expected a positive int or [rows, cols], got {cell_size!r}") from None
    if any(isinstance(v, bool) or v < 1 for v in requested):
        raise ConfigError("cell_size", f"expected a positive int or [rows, cols], got {cell_size!r}")
    cell = (min(requested[0], patch_size[0]), min(requested[1], patch_size[1]))
    for axis, (patch, size) in enumerate(zip(patch_size, cell)):
        if patch % size:
            divisors = [d for d in range(1, patch + 1) if patch % d == 0]
            raise ConfigError("cell_size", f"the patch ({patch} pixels on axis {axis}) is not a whole number of "
                                           f"{size}-pixel cells; use one of {divisors}")
    return cell
