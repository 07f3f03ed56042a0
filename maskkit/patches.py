"""Patch geometry: images to per-patch vectors and back, and 2-D sin-cos position embeddings.

The per-patch layout is MAE's (``nchpwq -> nhwpqc``): rows of the patch, then columns, then channels, so an
official MAE checkpoint's ``decoder_pred`` lines up with our targets.
"""

from __future__ import annotations

import torch

Size2 = tuple[int, int]


def to_2tuple(value: int | tuple[int, int] | list[int]) -> Size2:
    """``16 -> (16, 16)``; ``(14, 12)`` stays."""
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


def patchify(images: torch.Tensor, patch_size: Size2) -> torch.Tensor:
    """``[B, C, H, W] -> [B, N, ph * pw * C]`` with ``N = (H // ph) * (W // pw)`` in row-major order."""
    b, c, height, width = images.shape
    ph, pw = patch_size
    h, w = height // ph, width // pw
    # a permute, not einsum: CUDA autocast runs einsum in bf16, which would round the pixel targets
    x = images.reshape(b, c, h, ph, w, pw).permute(0, 2, 4, 3, 5, 1)  # [B, h, w, ph, pw, C]
    return x.reshape(b, h * w, ph * pw * c)


def unpatchify(patches: torch.Tensor, patch_size: Size2, grid: Size2, in_chans: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, N, ph * pw * C] -> [B, C, h * ph, w * pw]``."""
    b = patches.shape[0]
    ph, pw = patch_size
    h, w = grid
    x = patches.reshape(b, h, w, ph, pw, in_chans).permute(0, 5, 1, 3, 2, 4)  # [B, C, h, ph, w, pw]
    return x.reshape(b, in_chans, h * ph, w * pw)


def upsample_mask(mask: torch.Tensor, grid: Size2, patch_size: Size2) -> torch.Tensor:
    """``[B, N]`` patch mask -> ``[B, 1, H, W]`` pixel mask (same dtype)."""
    b = mask.shape[0]
    m = mask.reshape(b, 1, grid[0], 1, grid[1], 1).expand(-1, -1, -1, patch_size[0], -1, patch_size[1])
    return m.reshape(b, 1, grid[0] * patch_size[0], grid[1] * patch_size[1])


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``positions [M] -> [M, dim]``: sin of ``pos * omega`` then cos, ``omega = 1 / 10000^(2i / dim)``."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_2d(dim: int, grid: Size2, num_prefix_tokens: int = 0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding ``[num_prefix_tokens + h * w, dim]`` (prefix rows are zeros).

    Same numbers as the official MAE ``get_2d_sincos_pos_embed``: the first half of the channels encodes the
    column index, the second half the row index; patches in row-major order.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a dimension divisible by 4, got {dim}")
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1)
    emb = torch.cat([torch.zeros(num_prefix_tokens, dim, dtype=torch.float64), emb], dim=0)
    return emb.float()


def visible_indices(mask: torch.Tensor, num_visible: int | None = None) -> torch.Tensor:
    """Indices ``[B, N_visible]`` of the visible patches of ``mask [B, N]``, in increasing patch index.

    Every sample must show the same count. Pass ``num_visible`` when known to avoid a device-to-host sync.
    """
    if num_visible is None:
        num_visible = int(mask.shape[1] - mask[0].sum())
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible (0) first, in index order
    return order[:, :num_visible]
