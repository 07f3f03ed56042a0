"""AttMask: hide the patches a ViT attends to most (Kakogeorgiou et al., "What to Hide from Your Students:
Attention-Guided Masked Image Modeling", ECCV 2022, arXiv:2203.12719; official code
github.com/gkakogeorgiou/attmask)."""

from __future__ import annotations

import torch

from maskkit import ConfigError, MaskedModel, Masker
from maskkit.interfaces import Grid
from maskkit.masking import mask_from_scores, noise
from maskkit_adaptive._common import (
    check_feature_source,
    check_fraction,
    check_grid,
    check_ratio,
    check_source,
    feature_encoder,
    mae_num_hidden,
    need,
)
from maskkit_adaptive.attention import cls_attention

MODES = ("high", "hint", "low")


class AttMaskMasker(Masker):
    """Rank the patches by the [CLS] attention of the last encoder block on the whole image (averaged over
    heads, no gradients) and hide by that rank.

    * ``high`` (AttMask-High): hide the ``num_hidden`` most attended patches.
    * ``hint`` (AttMask-Hint): hide the most attended patches, then reveal ``int(hint_ratio * N)`` of them
      drawn uniformly from the ``int(hint_pool * N)`` most attended. ``hint_pool`` is the official
      ``show_max`` (0.1) and ``hint_ratio`` the official ``show_ratio``, which ``main_attmask.py`` sets to
      ``show_max * pred_ratio``: so ``hint_ratio`` defaults to ``hint_pool * ratio`` (0.075 of N at the
      defaults; set it to decouple it from the ratio). As in the official code, the revealed hints lower the
      hidden count: every sample hides ``N - int(N * (1 - ratio)) - int(hint_ratio * N)`` patches.
    * ``low`` (AttMask-Low, the paper's ablation): hide the least attended patches.

    ``source``: whose attention: ``encoder`` (the model being trained, as the paper's student-free ablation),
    ``teacher`` (the EMA teacher of a ``teacher`` target from maskkit-teacher, as the paper, which takes the
    attention of iBOT's/DINO's EMA teacher), or ``auto`` (the teacher when the recipe has one, else the encoder).

    ``masking_prob``: the paper (iBOT setting) masks each image with some probability and leaves the others
    whole. A sparse MAE encoder needs the same count in every sample, so here every sample hides the same
    number of patches and ``masking_prob`` is the probability that a sample is masked by attention; the
    others are masked uniformly at random (1.0, the default: every sample by attention).

    Differences from the paper, by design: the attention is taken in a separate no-grad forward of the whole
    image (in iBOT the teacher's forward of the global crops serves both the target and the attention), so the
    masker costs one full-image encoder forward per step. That forward runs in eval mode (no dropout, no drop
    path, as the official teacher; each submodule's mode is restored after), so the attention depends on the
    images and the weights only, never on the global RNG.
    Randomness (hints, ``masking_prob``) comes from ``generator`` through :func:`maskkit.masking.noise`, so two
    processes with batch B draw what one draws with 2B given the same attention.

    ``__call__(B, grid, generator=, device=, images=[B, C, H, W], model=MaskedModel, rows=) -> bool [B, N]``.
    """

    def __init__(self, ratio: float = 0.75, mode: str = "high", hint_ratio: float | None = None,
                 hint_pool: float = 0.1, masking_prob: float = 1.0, source: str = "auto"):
        self.ratio = check_ratio(ratio)
        if mode not in MODES:
            raise ConfigError("mode", f"expected one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.hint_pool = check_fraction(hint_pool, "hint_pool")
        derived = hint_ratio is None
        if derived:  # main_attmask.py: show_ratio = show_max * pred_ratio
            hint_ratio = self.hint_pool * self.ratio
        self.hint_ratio = check_fraction(hint_ratio, "hint_ratio")
        if mode == "hint" and not 0 < self.hint_ratio <= self.hint_pool < self.ratio:
            given = (f"hint_ratio={self.hint_ratio:g} (hint_pool x ratio, the default)" if derived else
                     f"hint_ratio={hint_ratio}")  # the key named is one the recipe set
            raise ConfigError("hint_pool" if derived else "hint_ratio",
                              f"mode hint needs 0 < hint_ratio <= hint_pool < ratio, got {given}, "
                              f"hint_pool={hint_pool}, ratio={ratio}")
        self.masking_prob = check_fraction(masking_prob, "masking_prob")
        self.source = check_source(source)

    def _num_hints(self, n: int) -> int:
        return int(self.hint_ratio * n) if self.mode == "hint" else 0

    def num_hidden(self, grid: Grid) -> int:
        n = grid[0] * grid[1]
        return mae_num_hidden(self.ratio, grid) - self._num_hints(n)

    def check_model(self, model: MaskedModel) -> None:
        """Refuse, when the model is built, a ``source`` without its encoder (``teacher`` without a teacher
        target: ``masker.source``) and an encoder that gives no [CLS] attention (``encoder.class_token: false``,
        registers only, an encoder without ``prefix_attention``: ``masker``)."""
        encoder = check_feature_source(model, self.source)
        reason = encoder.prefix_attention_unavailable()
        if reason is not None:
            whose = "encoder" if encoder is model.encoder else "EMA teacher (a copy of the encoder)"
            raise ConfigError("", f"attmask ranks patches by the [CLS] attention of the {whose}, but {reason}; "
                                  "use an encoder that gives it, or another masker")

    def __call__(self, batch_size: int, grid: Grid, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, images: torch.Tensor | None = None,
                 model=None, rows: slice | None = None) -> torch.Tensor:
        need("attmask", images=images, model=model)
        encoder = feature_encoder(model, self.source)
        check_grid(encoder, grid, "attmask")
        n = grid[0] * grid[1]
        device = images.device if device is None else device
        attention = cls_attention(encoder, images).to(device)  # [B, N]
        scores = -attention if self.mode == "low" else attention
        mask = mask_from_scores(scores, mae_num_hidden(self.ratio, grid))  # [B, N]
        hints = self._num_hints(n)
        if hints or self.masking_prob < 1.0:
            # one draw for all the randomness: each row's values then do not depend on how the batch is split
            draw = noise(batch_size, 2 * n + 1, generator=generator, device=device, rows=rows)  # [B, 2N + 1]
        if hints:
            pool = mask_from_scores(attention, int(self.hint_pool * n))  # [B, N] the most attended
            reveal = mask_from_scores(torch.where(pool, draw[:, :n], torch.full_like(draw[:, :n], -1.0)), hints)
            mask = mask & ~reveal
        if self.masking_prob < 1.0:
            # samples not masked by attention hide the same count uniformly at random (MAE's masking)
            uniform = mask_from_scores(draw[:, n:2 * n], self.num_hidden(grid))
            mask = torch.where(draw[:, 2 * n:] < self.masking_prob, mask, uniform)
        return mask

    def __repr__(self) -> str:
        return (f"AttMaskMasker(ratio={self.ratio}, mode={self.mode!r}, hint_ratio={self.hint_ratio}, "
                f"hint_pool={self.hint_pool}, masking_prob={self.masking_prob}, source={self.source!r})")
