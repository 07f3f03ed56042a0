"""Tiny encoders and a variable-count masker shared by the tests."""

from __future__ import annotations

import torch

from maskkit import Masker
from maskkit_simmim import SimMIMConvNeXtEncoder, SimMIMSwinEncoder


def tiny_swin(**overrides) -> SimMIMSwinEncoder:
    """3 stages, 2-px stem: total stride 8; 32x48 images -> a 4x6 grid (16x24 stem tokens)."""
    kwargs = dict(img_size=(32, 48), stem_patch_size=2, window_size=2, in_chans=2, embed_dim=8, depths=(1, 1, 1),
                  num_heads=(1, 1, 1), drop_path_rate=0.0)
    kwargs.update(overrides)
    return SimMIMSwinEncoder("swin_tiny_patch4_window7_224", **kwargs)


def tiny_swin_stride32(**overrides) -> SimMIMSwinEncoder:
    """timm Swin's own geometry (4-px stem, 4 stages, stride 32): 64x96 images -> a 2x3 grid."""
    kwargs = dict(img_size=(64, 96), window_size=2, in_chans=3, embed_dim=8, depths=(1, 1, 1, 1),
                  num_heads=(1, 1, 1, 1), drop_path_rate=0.0)
    kwargs.update(overrides)
    return SimMIMSwinEncoder("swin_tiny_patch4_window7_224", **kwargs)


def tiny_convnext(**overrides) -> SimMIMConvNeXtEncoder:
    """convnext_atto shrunk: 4-px stem, 4 stages, stride 32; 64x96 images -> a 2x3 grid."""
    kwargs = dict(img_size=(64, 96), in_chans=3, depths=(1, 1, 1, 1), dims=(8, 16, 16, 24))
    kwargs.update(overrides)
    return SimMIMConvNeXtEncoder("convnext_atto", **kwargs)


class RandomCountMasker(Masker):
    """Hides a random number of patches per sample (between 1 and N - 1), uniformly placed: ``num_hidden``
    is None, which only a dense encoder can take."""

    def num_hidden(self, grid):
        return None

    def __call__(self, batch_size, grid, *, generator=None, device=None):
        n = grid[0] * grid[1]
        counts = torch.randint(1, n, (batch_size, 1), generator=generator, device=device)  # [B, 1]
        ranks = torch.rand(batch_size, n, generator=generator, device=device).argsort(dim=1).argsort(dim=1)
        return ranks < counts  # [B, N]: the `count` patches of lowest noise are hidden
