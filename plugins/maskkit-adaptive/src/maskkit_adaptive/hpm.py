"""HPM, Hard Patches Mining (Wang et al., "Hard Patches Mining for Masked Image Modeling", CVPR 2023,
arXiv:2304.05919; official code github.com/Haochen-Wang409/HPM)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskkit import ConfigError, MaskDraw, MaskedModel, Masker, toolkit
from maskkit.interfaces import Grid
from maskkit.masking import mask_from_scores, noise
from maskkit_adaptive._common import (
    check_feature_source,
    check_fraction,
    check_grid,
    check_positive,
    check_ratio,
    check_source,
    feature_encoder,
    mae_num_hidden,
    need,
)


def relative_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """HPM's relative (ranking) objective: for every pair (i, j) of patches of a sample whose target losses
    differ, binary cross-entropy of ``sigmoid(pred_j - pred_i)`` against ``target_j > target_i``; the mean over
    those pairs. ``pred, target [B, M] -> scalar``; ``target`` carries no gradient."""
    target = target.detach().float()
    diff = pred.float().unsqueeze(1) - pred.float().unsqueeze(2)  # [B, M, M]: pred_j - pred_i at [b, i, j]
    harder = target.unsqueeze(1) > target.unsqueeze(2)  # [B, M, M]: target_j > target_i
    easier = target.unsqueeze(1) < target.unsqueeze(2)
    valid = harder | easier
    bce = F.binary_cross_entropy_with_logits(diff, harder.float(), reduction="none")  # [B, M, M]
    return (bce * valid).sum() / valid.sum().clamp_min(1)


class HPMMasker(nn.Module, Masker):
    """Hide the patches a small learned head predicts hardest to reconstruct, mixed with random ones on an
    easy-to-hard schedule, and train the head on the step's detached per-patch loss with a ranking objective.

    At mask time the model's encoder (``source``, as for attmask: ``encoder``, ``teacher`` or ``auto``) encodes
    the whole image without gradients and in eval mode (no dropout, no drop path: HPM draws its masks with an
    EMA model that has no drop path; each submodule's mode is restored after), so the mask depends on the
    images, the weights and ``generator`` only, not on the global RNG. The loss predictor (LayerNorm,
    ``Linear(in_dim, hidden)``, GELU, ``Linear(hidden, 1)`` per patch token) scores each patch; the
    ``int(hard_fraction * num_hidden)`` highest scores are hidden and the rest of the ``num_hidden`` patches
    is drawn uniformly among the others. The fraction follows HPM's schedule, rising linearly from 0 to
    ``hard_max`` (the paper's 0.5) over the whole run (the paper's ``hard_max * (epoch + 1) / total_epochs``;
    here the ``progress`` context, step / total steps, so it rises every step and follows the run's length
    whatever it is), or over the first ``ramp_epochs`` (fractional epochs) when that is set. ``aux_losses``
    returns ``{"rank": relative_loss}`` on the hidden patches: the predictor's scores (recomputed with
    gradients from the stored features) against the detached per-patch reconstruction loss, HPM's relative
    loss (``loss_weight`` times it, 1.0 as the paper).

    Simplifications, by design, and why:

    * HPM's loss predictor is a second decoder (as deep as the pixel decoder) on the masked latent of the
      student, and the mask is drawn from the predictions of an EMA copy of the whole model on the unmasked
      image. Here the predictor is a two-layer head on the full-image features of the encoder (or of the EMA
      teacher of a ``teacher`` target); those features are detached, so the ranking loss trains the head only
      and not the encoder (HPM's loss also shapes the student's representation). A decoder-sized predictor
      and an EMA model are what a masker plugin cannot own cheaply; the ranking signal and the schedule are
      the paper's. The stored features, hence the head's inputs, come from the eval-mode pass.
    * The cost is one full-image encoder forward per step, as AttMask's.

    ``in_dim`` is the encoder's width, passed by the builder (a wiring argument); built by hand with another
    width, the mismatch is reported at the first call.
    ``lr_scale`` scales the head's learning rate (the engine gives it its own parameter group).

    ``forward(B, grid, generator=, device=, images=, model=, epoch=, progress=, rows=) -> MaskDraw(mask [B, N],
    extras)``.
    """

    def __init__(self, in_dim: int, ratio: float = 0.75, hidden: int = 64, hard_max: float = 0.5,
                 ramp_epochs: float | None = None, loss_weight: float = 1.0, lr_scale: float = 1.0,
                 source: str = "encoder"):
        super().__init__()
        self.in_dim = check_positive(in_dim, "in_dim", int)
        self.ratio = check_ratio(ratio)
        self.hard_max = check_fraction(hard_max, "hard_max")
        self.ramp_epochs = None if ramp_epochs is None else check_positive(ramp_epochs, "ramp_epochs")
        self.loss_weight = check_positive(loss_weight, "loss_weight")
        self.lr_scale = check_positive(lr_scale, "lr_scale")
        self.source = check_source(source)
        hidden = check_positive(hidden, "hidden", int)
        self.predictor = nn.Sequential(nn.LayerNorm(self.in_dim), nn.Linear(self.in_dim, hidden), nn.GELU(),
                                       nn.Linear(hidden, 1))

    def num_hidden(self, grid: Grid) -> int:
        return mae_num_hidden(self.ratio, grid)

    def hard_fraction(self, epoch: float, progress: float = 0.0) -> float:
        """The fraction of the hidden patches chosen as the predicted hardest at (fractional) ``epoch``, which is
        ``progress`` (the fraction of the run trained) of the run: ``hard_max * progress``, or ``hard_max * epoch /
        ramp_epochs`` when ``ramp_epochs`` is set; at most ``hard_max``."""
        done = float(progress) if self.ramp_epochs is None else float(epoch) / self.ramp_epochs
        return self.hard_max * min(1.0, max(0.0, done))

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Patch features ``[B, N, in_dim] -> predicted difficulty [B, N]`` (higher: harder), in the head's
        dtype (float32) even under autocast.

        Under bf16 autocast the head's output would be rounded to bf16's 8 bits of mantissa, and the scores of
        a sample tie often (on the tiny quickstart model 114 to 166 distinct values of 196); the ranking breaks
        ties by patch index, so the "hardest" patches would lean to the top left. The head is tiny (a LayerNorm
        and two Linear layers per patch), so it runs with autocast off: the ranking sees the scores' full
        precision, draws nothing from the generator (masks and ``--resume`` stay exact, and an fp32 run is
        unchanged bit for bit), and the ranking loss trains the head in float32 too."""
        if features.shape[-1] != self.in_dim:
            raise ConfigError("in_dim", f"expected the encoder's width {features.shape[-1]}, got {self.in_dim} "
                                        f"(build the masker with in_dim=encoder.embed_dim)")
        with torch.autocast(features.device.type, enabled=False):
            return self.predictor(features.to(self.predictor[1].weight.dtype)).squeeze(-1)  # [B, N]

    def check_model(self, model: MaskedModel) -> None:
        """Refuse, when the model is built, ``source: teacher`` on a model whose target has no EMA teacher
        (``masker.source``)."""
        check_feature_source(model, self.source)

    def forward(self, batch_size: int, grid: Grid, *, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, images: torch.Tensor | None = None, model=None,
                epoch: float = 0.0, progress: float = 0.0, rows: slice | None = None):
        need("hpm", images=images, model=model)
        encoder = feature_encoder(model, self.source)
        check_grid(encoder, grid, "hpm")
        n = grid[0] * grid[1]
        device = images.device if device is None else device
        with torch.no_grad(), toolkit.eval_mode(encoder):  # deterministic: no drop path from the global RNG
            features = encoder.forward_features(images)[:, encoder.num_prefix_tokens:].detach()  # [B, N, D]
            predicted = self.predict(features).float().to(device)  # [B, N]
        hidden = self.num_hidden(grid)
        hard = int(hidden * self.hard_fraction(epoch, progress))
        draw = noise(batch_size, n, generator=generator, device=device, rows=rows)  # [B, N] in [0, 1)
        if hard > 0:
            hardest = mask_from_scores(predicted, hard)  # [B, N]
            draw = draw + 2.0 * hardest.float()  # the hardest rank above every random draw
        mask = mask_from_scores(draw, hidden)
        return MaskDraw(mask, {"features": features})

    def aux_losses(self, *, mask: torch.Tensor, patch_loss: torch.Tensor, extras: dict) -> dict[str, torch.Tensor]:
        """``{"rank": loss_weight * relative_loss}`` over each sample's hidden patches (the same count in every
        sample), from the stored full-image features and the step's detached per-patch loss ``[B, N]``. Empty
        when the model was given a mask (no draw, nothing to learn)."""
        if "features" not in extras:  # the model was given a mask (a picture, a replay): nothing was drawn
            return {}
        features = extras["features"]  # [B, N, D], detached
        pred = self.predict(features)  # [B, N], with gradients into the predictor
        n = mask.shape[1]
        count = n - int(n * (1 - self.ratio))  # num_hidden: host arithmetic, no device sync
        order = torch.argsort(mask.to(torch.int8), dim=1, descending=True, stable=True)  # [B, N] hidden first
        idx = order[:, :count]  # [B, M]
        return {"rank": self.loss_weight * relative_loss(pred.gather(1, idx), patch_loss.gather(1, idx))}

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, ratio={self.ratio}, hard_max={self.hard_max}, ramp_epochs={self.ramp_epochs}, "
                f"loss_weight={self.loss_weight}, lr_scale={self.lr_scale}, source={self.source!r}")
