"""AdaMAE: a token-sampling network learns which patches to show the encoder (Bandara et al., "AdaMAE:
Adaptive Masking for Efficient Spatiotemporal Learning with Masked Autoencoders", CVPR 2023,
arXiv:2211.09120; official code github.com/wgcban/adamae)."""

from __future__ import annotations

import torch
from torch import nn

from maskkit import ConfigError, MaskDraw, Masker
from maskkit.interfaces import Grid
from maskkit.masking import sample_from_scores
from maskkit_adaptive._common import check_positive, check_ratio, mae_num_hidden, need


def sincos_2d(grid: Grid, dim: int, device=None) -> torch.Tensor:
    """Fixed 2-D sine-cosine position codes ``[h * w, dim]`` (row-major), half the channels per axis."""
    h, w = grid
    quarter = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1)))
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    parts = [torch.sin(ys.reshape(-1, 1) * freq), torch.cos(ys.reshape(-1, 1) * freq),
             torch.sin(xs.reshape(-1, 1) * freq), torch.cos(xs.reshape(-1, 1) * freq)]
    codes = torch.cat(parts, dim=1)  # [N, 4 * quarter]
    return nn.functional.pad(codes, (0, dim - codes.shape[1]))


class AdaMAEMasker(nn.Module, Masker):
    """Sample the visible patches from a learned categorical distribution over the patches, and train the
    sampler with AdaMAE's REINFORCE-style loss on the detached reconstruction error.

    The sampling network reads the encoder's patch embeddings of the image (``model.encoder.patch_embed``,
    detached) plus fixed 2-D sin-cos positions, maps them to ``dim`` channels, runs ``depth`` transformer
    blocks (``heads`` heads) and a linear layer to one logit per patch; ``p = softmax(logits)`` over the
    ``N`` patches. ``N - num_hidden`` visible patches are drawn from ``p`` without replacement (as the paper's
    ``torch.multinomial(p, N_v, replacement=False)``, here by the equivalent Gumbel-top-k of
    :func:`maskkit.masking.sample_from_scores` on noise from the generator, so masks are reproducible); the
    rest are hidden. ``aux_losses`` returns
    ``{"sampling": -loss_weight * mean_b mean_{i hidden} log p_i * err_i}`` with ``err`` the detached
    per-patch reconstruction loss, the official sampling loss (weight 1e-4 there and here): it raises the
    probability of the hidden patches that were reconstructed worst, so those are shown more often.

    The log-probabilities travel from the draw to ``aux_losses`` in ``MaskDraw.extras`` with their gradient;
    the sampler sees detached inputs, so the sampling loss trains the sampler only, and the reconstruction
    loss (which sees a discrete mask) does not reach the sampler.

    Simplifications: AdaMAE's sampler runs on the (video) encoder's own token embeddings and shares them; here
    it reads the image encoder's patch embeddings without gradient, so the encoder is trained by the
    reconstruction loss alone. The sampler's size (``dim``, ``depth``, ``heads``) is small for the small
    quickstart model. ``in_dim`` is the encoder's width (passed by the builder); ``lr_scale`` scales the
    sampler's learning rate.

    ``forward(B, grid, generator=, device=, images=, model=, rows=) -> MaskDraw(mask [B, N], {"log_probs": [B, N]})``.
    """

    def __init__(self, in_dim: int, ratio: float = 0.75, dim: int = 64, depth: int = 1, heads: int = 4,
                 loss_weight: float = 1e-4, lr_scale: float = 1.0):
        super().__init__()
        self.in_dim = check_positive(in_dim, "in_dim", int)
        self.ratio = check_ratio(ratio)
        self.dim = check_positive(dim, "dim", int)
        depth = check_positive(depth, "depth", int)
        heads = check_positive(heads, "heads", int)
        if self.dim % heads:
            raise ConfigError("heads", f"expected a divisor of dim={self.dim}, got {heads}")
        self.loss_weight = check_positive(loss_weight, "loss_weight")
        self.lr_scale = check_positive(lr_scale, "lr_scale")
        self.embed = nn.Linear(self.in_dim, self.dim)
        layer = nn.TransformerEncoderLayer(self.dim, heads, dim_feedforward=4 * self.dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(self.dim)
        self.head = nn.Linear(self.dim, 1)

    def num_hidden(self, grid: Grid) -> int:
        return mae_num_hidden(self.ratio, grid)

    def log_probs(self, tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Patch embeddings ``[B, N, in_dim] -> log p [B, N]`` (log-softmax over the patches)."""
        if tokens.shape[-1] != self.in_dim:
            raise ConfigError("in_dim", f"expected the encoder's width {tokens.shape[-1]}, got {self.in_dim} "
                                        f"(build the masker with in_dim=encoder.embed_dim)")
        x = self.embed(tokens.to(self.embed.weight.dtype))  # [B, N, dim]
        x = x + sincos_2d(grid, self.dim, device=x.device).to(x.dtype)
        logits = self.head(self.norm(self.blocks(x))).squeeze(-1)  # [B, N]
        return logits.float().log_softmax(dim=-1)

    def check_model(self, model) -> None:
        """Refuse, when the model is built, an encoder without the patch embedding the sampler reads
        (``patch_embed``, as timm's ViTs have), or one that gives another number of tokens than the encoder's
        grid has patches (found by embedding one blank image of the encoder's size): a one-line
        :class:`maskkit.ConfigError` on ``masker``."""
        encoder = model.encoder
        patch_embed = getattr(encoder, "patch_embed", None)
        if not callable(patch_embed):
            raise ConfigError("", f"adamae's sampler reads the encoder's patch embeddings (encoder.patch_embed), but "
                                  f"{type(encoder).__name__} has none; use a ViT encoder or another masker")
        weight = next(iter(patch_embed.parameters()), None) if isinstance(patch_embed, nn.Module) else None
        device = weight.device if weight is not None else None  # the meta device too: shapes only
        with torch.no_grad():
            tokens = patch_embed(torch.zeros(1, encoder.in_chans, *encoder.img_size, device=device))
        count = tokens.shape[1] * tokens.shape[2] if tokens.dim() == 4 else tokens.shape[1]
        if count != encoder.grid[0] * encoder.grid[1]:
            raise ConfigError("", f"adamae samples one token per patch, but the encoder's patch_embed gives {count} "
                                  f"tokens for its {encoder.grid[0]}x{encoder.grid[1]} grid of patches")

    def forward(self, batch_size: int, grid: Grid, *, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, images: torch.Tensor | None = None, model=None,
                rows: slice | None = None) -> MaskDraw:
        need("adamae", images=images, model=model)
        patch_embed = getattr(model.encoder, "patch_embed", None)
        if not callable(patch_embed):
            raise TypeError(f"adamae reads the encoder's patch embeddings: {type(model.encoder).__name__} has no "
                            "'patch_embed'")
        with torch.no_grad():
            tokens = patch_embed(images)  # [B, N, D] (timm: flattened row-major)
        if tokens.dim() == 4:  # a patch embedding that keeps the grid: [B, h, w, D]
            tokens = tokens.flatten(1, 2)
        n = grid[0] * grid[1]
        if tokens.shape[1] != n:
            raise ValueError(f"adamae: the patch embedding gave {tokens.shape[1]} tokens for grid {tuple(grid)}")
        log_p = self.log_probs(tokens.detach(), grid)  # [B, N], with gradients
        # visible: N - num_hidden patches drawn from p without replacement (Gumbel-top-k on log p); hidden: the rest
        visible = sample_from_scores(log_p, n - self.num_hidden(grid), generator=generator, rows=rows)
        return MaskDraw(~visible, {"log_probs": log_p})

    def aux_losses(self, *, mask: torch.Tensor, patch_loss: torch.Tensor, extras: dict) -> dict[str, torch.Tensor]:
        """AdaMAE's sampling loss over the hidden patches: ``-loss_weight * mean(log p_hidden * err_hidden)``."""
        if "log_probs" not in extras:  # the model was given a mask (a picture, a replay): nothing was sampled
            return {}
        log_p = extras["log_probs"]  # [B, N]
        hidden = mask.to(log_p.dtype)
        per_sample = (log_p * patch_loss.detach().to(log_p.dtype) * hidden).sum(1) / hidden.sum(1).clamp_min(1)
        return {"sampling": -self.loss_weight * per_sample.mean()}

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, ratio={self.ratio}, dim={self.dim}, loss_weight={self.loss_weight}, "
                f"lr_scale={self.lr_scale}")


