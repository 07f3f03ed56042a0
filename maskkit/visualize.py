"""Pictures: reconstructions (original | masked | reconstruction | reconstruction + visible) and mask grids."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from maskkit.errors import MaskkitError, NoPixelFormError
from maskkit.masking import MaskStats
from maskkit.model import MaskedModel
from maskkit.patches import unpatchify, upsample_mask

# The columns of a reconstruction grid, in the order of :func:`reconstruction_rows`; every grid titles them.
RECONSTRUCTION_COLUMNS = ("original", "masked (grey: hidden)", "reconstruction", "reconstruction + visible")


def _denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * std_t + mean_t).clamp(0, 1)


@torch.no_grad()
def reconstruction_rows(model: MaskedModel, images: torch.Tensor, mask: torch.Tensor, mean: Sequence[float],
                        std: Sequence[float]) -> torch.Tensor:
    """``images [B, C, H, W]`` (normalized) and ``mask [B, N]`` -> ``[B * 4, C, H, W]`` pictures in [0, 1]:
    per image original, masked (hidden patches grey), reconstruction, reconstruction with visible pasted back.

    Raises :class:`~maskkit.errors.NoPixelFormError` (a ``ValueError``) when the model's target cannot be
    turned back into pixels (HOG, features).
    """
    was_training = model.training
    model.eval()
    out = model(images, mask=mask)
    model.train(was_training)
    pred_pixels = model.target.to_pixels(out.pred.float(), images)
    if pred_pixels is None:
        raise NoPixelFormError(f"target {type(model.target).__name__} predicts no pixels, so there is no "
                               "reconstruction to draw (`maskkit masks show` draws the masks)")
    enc = model.encoder
    recon = unpatchify(pred_pixels, enc.patch_size, enc.grid, enc.in_chans)
    pixel_mask = upsample_mask(mask, enc.grid, enc.patch_size).to(images.dtype)  # [B, 1, H, W]
    original = _denormalize(images, mean, std)
    grey = torch.full_like(original, 0.5)
    masked = original * (1 - pixel_mask) + grey * pixel_mask
    recon_img = _denormalize(recon, mean, std)
    pasted = original * (1 - pixel_mask) + recon_img * pixel_mask
    rows = torch.stack([original, masked, recon_img, pasted], dim=1)  # [B, 4, C, H, W]
    return rows.flatten(0, 1)


def save_grid(pictures: torch.Tensor, path: str | Path, *, ncol: int, min_side: int = 112) -> Path:
    """Save ``[M, C, H, W]`` pictures in [0, 1] as one PNG with ``ncol`` columns (small images upscaled)."""
    h, w = pictures.shape[-2:]
    scale = max(1, min_side // max(h, w))
    if scale > 1:
        pictures = F.interpolate(pictures, scale_factor=scale, mode="nearest")
    if pictures.shape[1] not in (1, 3):
        pictures = pictures[:, :1]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(pictures.float().cpu(), nrow=ncol, padding=2, pad_value=1.0), path)
    return path


def show_picture(ax, picture: torch.Tensor, *, vmax: float) -> None:
    """``picture [C, H, W]`` (values in ``[0, vmax]``: 1 for floats, 255 for uint8) on matplotlib's ``ax``,
    grey for one channel, without axes."""
    if picture.shape[0] == 1:
        ax.imshow(picture[0].numpy(), cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
    else:
        ax.imshow(picture[:3].permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def reconstruction_figure(pictures: torch.Tensor, *, columns: Sequence[str] = RECONSTRUCTION_COLUMNS,
                          title: str | None = None):
    """A matplotlib figure of ``pictures [B * len(columns), C, H, W]`` in [0, 1], one image per row and one
    titled column per kind (:data:`RECONSTRUCTION_COLUMNS`), so the picture needs no caption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = len(columns)
    rows = pictures.shape[0] // ncol
    pics = pictures.float().clamp(0, 1).cpu().reshape(rows, ncol, *pictures.shape[1:])
    fig, axes = plt.subplots(rows, ncol, figsize=(1.9 * ncol, 1.8 * rows + (0.8 if title else 0.4)), squeeze=False)
    for r in range(rows):
        for c in range(ncol):
            ax = axes[r][c]
            show_picture(ax, pics[r, c], vmax=1)
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def picture_path(path: str | Path) -> Path:
    """The file a figure saved to ``path`` lands in: ``path`` itself, or ``path.png`` when it has no suffix (as
    matplotlib names it). A folder, or a suffix matplotlib cannot write, is a one-line
    :class:`~maskkit.errors.MaskkitError` naming the path."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    if path.is_dir():
        raise MaskkitError(f"{path}: is a folder, expected a picture file such as {path / 'picture.png'}")
    if not path.suffix:
        return path.with_name(f"{path.name.rstrip('.')}.png")
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if path.suffix[1:].lower() not in formats:
        raise MaskkitError(f"{path}: cannot write a {path.suffix} picture; expected one of "
                           f"{', '.join('.' + f for f in formats)}")
    return path


def _save_figure(fig, path: Path) -> Path:
    """Save ``fig`` to ``path`` (its folders made), close it, and return ``path``."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_reconstructions(model: MaskedModel, images: torch.Tensor, path: str | Path, *, mean: Sequence[float],
                         std: Sequence[float], seed: int = 0) -> Path:
    """Draw masks from the model's masker (seeded) and save the four-column reconstruction grid, its columns
    titled (:data:`RECONSTRUCTION_COLUMNS`). Returns the file written (see :func:`picture_path`)."""
    path = picture_path(path)
    gen = torch.Generator(device=images.device).manual_seed(seed)
    mask = model.draw_mask(images.shape[0], gen, images.device, images=images)
    hidden = 100 * mask.float().mean().item()
    fig = reconstruction_figure(reconstruction_rows(model, images, mask, mean, std),
                                title=f"{images.shape[0]} images, masks seed {seed} ({hidden:.0f}% hidden)")
    return _save_figure(fig, path)


def mask_shades(over_images: bool) -> tuple[str, str]:
    """The colours of hidden and visible patches in a mask panel: over an image, hidden patches are painted a
    colour no grey-scale picture has (visible ones show the image); a bare mask is dark where hidden."""
    return ("#3b6fb6", "#9a9a9a") if over_images else ("#4d4d4d", "#f0f0f0")


def show_mask(ax, mask: torch.Tensor, grid: Sequence[int], image: torch.Tensor | None = None) -> None:
    """One mask (bool ``[N]`` on ``grid``) on matplotlib's ``ax``, without axes: over ``image [C, H, W]`` (values
    in [0, 1]; grey unless it has 3 channels) with its hidden patches painted over it, else the bare grid
    (colours: :func:`mask_shades`)."""
    import matplotlib

    hidden_shade, visible_shade = mask_shades(over_images=image is not None)
    mask = mask.reshape(-1).cpu()
    if image is not None:
        picture = image.float().cpu()
        patch = (picture.shape[-2] // grid[0], picture.shape[-1] // grid[1])
        pixels = upsample_mask(mask.reshape(1, -1), tuple(grid), patch)[0, 0]  # [H, W] bool
        shown = picture.mean(0) if picture.shape[0] != 3 else picture.permute(1, 2, 0)
        ax.imshow(shown.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.imshow(pixels.numpy(), cmap=matplotlib.colors.ListedColormap([(0, 0, 0, 0), hidden_shade]),
                  vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(mask.reshape(*grid).numpy(), cmap=matplotlib.colors.ListedColormap([visible_shade, hidden_shade]),
                  vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def mask_legend(over_images: bool) -> list:
    """The legend handles of :func:`show_mask`'s panels: which shade is hidden, which visible."""
    from matplotlib.patches import Patch

    hidden_shade, visible_shade = mask_shades(over_images)
    visible_label = "visible (the image shows)" if over_images else "visible"
    return [Patch(facecolor=hidden_shade, edgecolor="black", label="hidden (to predict)"),
            Patch(facecolor=visible_shade, edgecolor="black", label=visible_label)]


def save_mask_samples(stats: MaskStats, path: str | Path, *, count: int = 8, title: str | None = None,
                      columns: int = 8, images: torch.Tensor | None = None) -> Path:
    """Render the first ``count`` masks of ``stats`` (:func:`maskkit.masking.check_masker`) as one PNG: each
    panel titled with the patches it really hides (and the declared count when it differs), a legend saying
    which shade is hidden, the figure title with the min/mean/max hidden over all drawn samples.

    ``images [count, C, H, W]`` in [0, 1]: panels show the image with its hidden patches greyed out (for a
    masker that looks at the images); otherwise the bare masks. Drawn with matplotlib. Returns the file written
    (see :func:`picture_path`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = picture_path(path)

    grid = stats.grid
    n = grid[0] * grid[1]
    count = min(count, stats.masks.shape[0])
    columns = min(columns, count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows + 0.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:count]):
        show_mask(ax, stats.masks[i], grid, None if images is None else images[i])
        hidden = int(stats.hidden[i])
        label = f"{hidden}/{n} hidden"
        if stats.declared is not None and hidden != stats.declared:
            label += f"\n(declared {stats.declared})"
        ax.set_title(label, fontsize=8, color="black" if stats.declared in (None, hidden) else "red")
    fig.legend(handles=mask_legend(over_images=images is not None), loc="lower center", ncol=2, fontsize=8,
               frameon=False)
    h = stats.hidden.float()
    counts = (f"hidden per sample over {len(h)} draws: min {int(h.min())}, mean {float(h.mean()):.1f}, "
              f"max {int(h.max())} of {n}; declared {stats.declared if stats.declared is not None else 'varying'}")
    fig.suptitle(f"{title}\n{counts}" if title else counts, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save_figure(fig, path)
