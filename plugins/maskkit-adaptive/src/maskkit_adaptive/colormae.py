"""ColorMAE's filtered-noise masks (Hinojosa, Liu and Ghanem, "ColorMAE: Exploring data-independent masking
strategies in Masked AutoEncoders", ECCV 2024, arXiv:2407.13036; official code github.com/carlosh93/ColorMAE)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from maskkit import ConfigError, Masker
from maskkit.interfaces import Grid
from maskkit.masking import mask_from_scores, noise
from maskkit_adaptive._common import check_positive, check_ratio, mae_num_hidden, zscore

COLORS = ("red", "blue", "green", "purple", "white")


def gaussian_kernel(sigma: float, radius: int, device=None) -> torch.Tensor:
    """A normalized 1-D Gaussian ``[2 * radius + 1]``."""
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur(white: torch.Tensor, sigma: float, margin: int) -> torch.Tensor:
    """Separable Gaussian blur of ``white [B, h + 2m, w + 2m]`` keeping the centre ``[B, h, w]`` (no padding:
    the margin supplies the neighbours, as cropping a larger noise texture does)."""
    radius = min(margin, max(1, math.ceil(3 * sigma)))
    k = gaussian_kernel(sigma, radius, device=white.device)
    x = white[:, None]  # [B, 1, H', W']
    x = F.conv2d(x, k.view(1, 1, 1, -1))  # along w
    x = F.conv2d(x, k.view(1, 1, -1, 1))  # along h
    cut = margin - radius
    h, w = white.shape[1] - 2 * margin, white.shape[2] - 2 * margin
    return x[:, 0, cut:cut + h, cut:cut + w]


def color_noise(white: torch.Tensor, color: str, sigma: float, sigma2: float, margin: int) -> torch.Tensor:
    """ColorMAE's filters on white noise ``[B, h + 2m, w + 2m] -> [B, h, w]``, each pattern normalized to zero
    mean and unit variance: red = G_sigma * W (low-pass), blue = W - G_sigma * W (high-pass), green =
    G_sigma * W - G_sigma2 * W with sigma < sigma2 (band-pass), purple = W - green (band-stop), white = W."""
    centre = white[:, margin:white.shape[1] - margin, margin:white.shape[2] - margin]
    if color == "white":
        out = centre
    elif color == "red":
        out = blur(white, sigma, margin)
    elif color == "blue":
        out = centre - blur(white, sigma, margin)
    else:
        green = blur(white, sigma, margin) - blur(white, sigma2, margin)
        out = green if color == "green" else centre - green
    return zscore(out, dim=(1, 2))


class ColorNoiseMasker(Masker):
    """Hide the patches where a filtered-noise pattern is lowest; the same count in every sample.

    Per sample: white Gaussian noise on the patch grid plus a margin, filtered by the ``color``'s filter (see
    :func:`color_noise`; ``sigma`` and ``sigma2`` in patches), normalized; the ``N - num_hidden`` patches with
    the highest values stay visible (as the official ``ColorMasking`` keeps "the stronger values"), the rest is
    hidden (:func:`maskkit.masking.mask_from_scores`, exact count). Green noise (band-pass) gives the paper's
    best results: hidden clusters of a typical size with gaps between them.

    Difference from the official code, by design: the official code loads precomputed noise textures (npz
    files, e.g. 3072 green-noise patterns) and takes random crops and flips of them; here every pattern is
    drawn on the fly from the run's generator (white noise through :func:`maskkit.masking.noise`, so masks are
    reproducible and independent of how the batch is split over processes) and filtered on the device with
    the paper's filters; nothing is stored or downloaded. The sigmas are ours for a 14 x 14 grid (the paper
    states the filters, its textures encode its own parameters): red sigma 1.5; blue sigma 1.0; green and
    purple the difference of sigma 1.0 and 2.0. Uniform noise is Box-Muller-transformed to Gaussian.

    ``__call__(B, grid, generator=, device=, rows=) -> bool [B, N]``: blind (no images, no model).
    """

    def __init__(self, color: str = "green", ratio: float = 0.75, sigma: float | None = None,
                 sigma2: float | None = None):
        if color not in COLORS:
            raise ConfigError("color", f"expected one of {', '.join(COLORS)}, got {color!r}")
        self.color = color
        self.ratio = check_ratio(ratio)
        default = {"red": 1.5, "blue": 1.0, "green": 1.0, "purple": 1.0, "white": 1.0}[color]
        self.sigma = check_positive(default if sigma is None else sigma, "sigma")
        self.sigma2 = check_positive(2.0 * self.sigma if sigma2 is None else sigma2, "sigma2")
        if color in ("green", "purple") and not self.sigma < self.sigma2:
            raise ConfigError("sigma2", f"expected sigma2 > sigma={self.sigma} (a band-pass), got {self.sigma2}")
        self.margin = math.ceil(3 * max(self.sigma, self.sigma2))

    def num_hidden(self, grid: Grid) -> int:
        return mae_num_hidden(self.ratio, grid)

    def pattern(self, batch_size: int, grid: Grid, *, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, rows: slice | None = None) -> torch.Tensor:
        """The normalized noise pattern ``[B, h * w]`` the mask thresholds."""
        h, w = grid
        m = self.margin
        white = gaussian_white(batch_size, (h + 2 * m, w + 2 * m), generator=generator, device=device, rows=rows)
        return color_noise(white, self.color, self.sigma, self.sigma2, m).reshape(batch_size, h * w)

    def __call__(self, batch_size: int, grid: Grid, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, rows: slice | None = None) -> torch.Tensor:
        scores = self.pattern(batch_size, grid, generator=generator, device=device, rows=rows)
        return mask_from_scores(-scores, self.num_hidden(grid))  # the lowest values are hidden

    def __repr__(self) -> str:
        return f"ColorNoiseMasker(color={self.color!r}, ratio={self.ratio}, sigma={self.sigma}, sigma2={self.sigma2})"


def gaussian_white(batch_size: int, size: Grid, *, generator=None, device=None, rows=None) -> torch.Tensor:
    """Standard normal noise ``[B, H, W]`` from :func:`maskkit.masking.noise` (Box-Muller on two uniform draws)."""
    n = size[0] * size[1]
    u = noise(batch_size, 2 * n, generator=generator, device=device, rows=rows)  # [B, 2n]
    u1, u2 = u[:, :n].clamp_min(1e-12), u[:, n:]
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    return z.reshape(batch_size, *size)
