"""Maskers for the tests of masker contract v2: wrong ones (the issue's off-by-one, inverted and float masks),
one that looks at the images, one that records its context, and a learnable one with an auxiliary loss.

``ContextMaskersPlugin`` registers them, for tests that build models from recipes and for the two-process test's
worker script.
"""

from __future__ import annotations

import torch
from torch import nn

import maskkit
from maskkit.builtin.masking import RandomMasker
from maskkit.masking import mask_from_scores, noise


class OffByOne(RandomMasker):
    """Declares MAE's count but hides one patch more in every sample (the issue's off-by-one masker)."""

    def __call__(self, batch_size, grid, *, generator=None, device=None):
        mask = super().__call__(batch_size, grid, generator=generator, device=device)
        first_visible = (~mask).float().argmax(dim=1)  # [B]
        return mask.scatter(1, first_visible[:, None], True)


class Inverted(RandomMasker):
    """Declares MAE's count and returns the complement: 25% hidden, 75% shown."""

    def __call__(self, batch_size, grid, *, generator=None, device=None):
        return ~super().__call__(batch_size, grid, generator=generator, device=device)


class FloatMask(RandomMasker):
    """The right masks as a float tensor."""

    def __call__(self, batch_size, grid, *, generator=None, device=None):
        return super().__call__(batch_size, grid, generator=generator, device=device).float()


class OffByOneLooking(OffByOne):
    """Off by one, and asks for the images: drawn inside the model's forward."""

    def __call__(self, batch_size, grid, *, generator=None, device=None, images):
        return super().__call__(batch_size, grid, generator=generator, device=device)


class WrongLater(RandomMasker):
    """Right for its first 4 draws, then off by one: past the micro-steps a GPU run checks on the host."""

    def __init__(self, ratio: float = 0.75):
        super().__init__(ratio)
        self.draws = 0

    def __call__(self, batch_size, grid, *, generator=None, device=None):
        self.draws += 1
        mask = super().__call__(batch_size, grid, generator=generator, device=device)
        if self.draws <= 4:
            return mask
        first_visible = (~mask).float().argmax(dim=1)  # [B]
        return mask.scatter(1, first_visible[:, None], True)


class WrongLaterLooking(WrongLater):
    """The same, drawn inside the model's forward (it asks for the step)."""

    def __call__(self, batch_size, grid, *, generator=None, device=None, images, step):
        return super().__call__(batch_size, grid, generator=generator, device=device)


class AsksForLabels(RandomMasker):
    """Asks for a context maskkit does not give."""

    def __call__(self, batch_size, grid, *, generator=None, device=None, labels):
        return super().__call__(batch_size, grid, generator=generator, device=device)


class HighVariance(maskkit.Masker):
    """Hides the ``ratio`` of patches with the highest pixel variance (ties by patch index)."""

    def __init__(self, ratio: float = 0.75):
        self.ratio = ratio

    def num_hidden(self, grid):
        n = grid[0] * grid[1]
        return n - int(n * (1 - self.ratio))

    def __call__(self, batch_size, grid, *, generator=None, device=None, images):
        h, w = grid
        b, c = images.shape[:2]
        patches = images.reshape(b, c, h, images.shape[2] // h, w, images.shape[3] // w)
        scores = patches.permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, -1).var(dim=-1)  # [B, N]
        return mask_from_scores(scores, self.num_hidden(grid))


class Recording(RandomMasker):
    """MAE's masks, drawn with :func:`maskkit.masking.noise` for ``rows``, recording every context it gets."""

    def __init__(self, ratio: float = 0.75):
        super().__init__(ratio)
        self.calls: list[dict] = []

    def __call__(self, batch_size, grid, *, generator=None, device=None, images, step, epoch, progress, model, rows):
        self.calls.append({"images": images.clone(), "step": step, "epoch": epoch, "progress": progress,
                           "model": model, "rows": rows})
        scores = noise(batch_size, grid[0] * grid[1], generator=generator, device=device, rows=rows)
        mask = mask_from_scores(scores, self.num_hidden(grid))
        self.calls[-1]["mask"] = mask.clone()
        return mask


class Learned(RandomMasker, nn.Module):
    """A learnable masker: a score per patch position plus rank-independent noise; its auxiliary loss fits the
    scores to the (detached) per-patch loss, so the parameter trains and the encoder gets nothing through it.

    ``__call__`` comes from this class (not ``nn.Module``'s); ``lr_scale`` gives it half the learning rate.
    ``grid`` (a wiring argument, the encoder's patch grid) sizes its parameter, so that a resumed run finds it
    with the checkpoint's shape.
    """

    lr_scale = 0.5

    def __init__(self, ratio: float = 0.75, *, grid: tuple[int, int]):
        nn.Module.__init__(self)
        RandomMasker.__init__(self, ratio)
        self.scores = nn.Parameter(torch.zeros(grid[0] * grid[1]))  # [N]
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))

    def __call__(self, batch_size, grid, *, generator=None, device=None, rows, images):
        self.draws += 1
        n = grid[0] * grid[1]
        scores = noise(batch_size, n, generator=generator, device=device, rows=rows) + self.scores.detach()
        mask = mask_from_scores(scores, self.num_hidden(grid))
        return maskkit.MaskDraw(mask, {"chosen": mask})

    def aux_losses(self, *, patch_loss, mask, extras):
        assert extras["chosen"] is mask
        return {"fit": 0.1 * (self.scores[None, :] - patch_loss).square().mean()}


class Predictor(nn.Module, maskkit.Masker):
    """A learnable masker written as an ``nn.Module`` with ``forward`` (no ``__call__`` of its own)."""

    def __init__(self, ratio: float = 0.75):
        super().__init__()
        self.ratio = ratio
        self.head = nn.Linear(1, 1)

    def num_hidden(self, grid):
        n = grid[0] * grid[1]
        return n - int(n * (1 - self.ratio))

    def forward(self, batch_size, grid, *, generator=None, device=None, images, model):
        with torch.no_grad():
            features = model.encoder.forward_features(images)[:, model.encoder.num_prefix_tokens:]  # [B, N, D]
        score = self.head(features.norm(dim=-1, keepdim=True)).squeeze(-1)  # [B, N]
        return maskkit.MaskDraw(mask_from_scores(score, self.num_hidden(grid)), {"score": score})

    def aux_losses(self, *, patch_loss, extras):
        return {"rank": (extras["score"] - patch_loss).square().mean()}


class NeedsTarget(RandomMasker):
    """Looks at the features of a target encoder: ``target`` names a target attribute, which ``check_model``
    requires when the model is built (as a teacher source requires a teacher target); ``key`` is the recipe key
    its refusal names (``"target"``, or ``""`` for the masker section itself)."""

    def __init__(self, ratio: float = 0.75, target: str = "teacher", key: str = "target"):
        super().__init__(ratio)
        self.target, self.key = target, key
        self.checked: list = []

    def check_model(self, model) -> None:
        self.checked.append((model, model.encoder, model.target, model.decoder, model.loss))
        if not hasattr(model.target, self.target):
            raise maskkit.ConfigError(self.key, f"expected a target with a {self.target!r} (target: {{name: "
                                                f"teacher}}), got {type(model.target).__name__}")

    def __call__(self, batch_size, grid, *, generator=None, device=None, model, rows):
        scores = noise(batch_size, grid[0] * grid[1], generator=generator, device=device, rows=rows)
        return mask_from_scores(scores, self.num_hidden(grid))


MASKERS = {"off_by_one": OffByOne, "inverted": Inverted, "float_mask": FloatMask,
           "off_by_one_looking": OffByOneLooking, "asks_for_labels": AsksForLabels,
           "wrong_later": WrongLater, "wrong_later_looking": WrongLaterLooking, "high_variance": HighVariance,
           "recording": Recording, "learned": Learned, "predictor": Predictor,
           "needs_target": NeedsTarget}


class ContextMaskersPlugin:
    @maskkit.hookimpl
    def maskkit_add_maskers(self):
        return dict(MASKERS)
