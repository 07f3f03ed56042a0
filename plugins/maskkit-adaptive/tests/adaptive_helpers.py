"""Small builders shared by this plugin's tests: a registry with the plugin, a tiny quickstart MAE, real
Fashion-MNIST images, and a masker contract that passes the context (images, model) to context-aware maskers."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from hypothesis import strategies as st

import maskkit
from maskkit.registry import Registry
from maskkit.testing import MaskerContract
from maskkit_adaptive import plugin

#: The quickstart MAE made tiny for tests: the same 14 x 14 grid (28 px, patch 2), width 32, 2 blocks.
TINY = ["encoder.embed_dim=32", "encoder.depth=2", "encoder.num_heads=2", "decoder.embed_dim=16",
        "train.device=cpu", "train.warmup_epochs=0"]
GRID = (14, 14)


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The built-ins, this plugin, and maskkit-teacher when it is importable (for the teacher source)."""
    plugins = {"adaptive": plugin}
    try:
        from maskkit_teacher import plugin as teacher_plugin

        plugins["teacher"] = teacher_plugin
    except ImportError:
        pass
    return Registry.from_plugins(autoload=False, plugins=plugins)


def tiny_model(masker: dict | None = None, seed: int = 0, recipe: str = "recipes/quickstart.yaml",
               overrides: tuple[str, ...] = (), tiny: tuple[str, ...] = tuple(TINY)):
    """The tiny quickstart MAE (random init from ``seed``), in eval mode, optionally with another masker."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[3]
    extra = [f"masker={masker}".replace("'", "") if masker else None]
    recipe = maskkit.load_recipe(root / recipe if recipe.endswith(".yaml") else recipe,
                                 overrides=[*tiny, *overrides, *[e for e in extra if e]], registry=registry())
    torch.manual_seed(seed)
    return maskkit.build_model(recipe, registry=registry()).eval()


@lru_cache(maxsize=1)
def fashion(n: int = 32) -> torch.Tensor:
    """The first ``n`` images of the embedded Fashion-MNIST training subset, normalized, ``[n, 1, 28, 28]``."""
    try:
        from maskkit.data import FashionMNIST

        ds = FashionMNIST("train", source="embedded")
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"embedded Fashion-MNIST unavailable: {exc}")
    return ((ds.images[:n].float() / 255.0 - ds.mean[0]) / ds.std[0]).reshape(n, 1, 28, 28)


def draw(masker, b, grid=GRID, seed=0, **context) -> torch.Tensor:
    """A mask from any masker (a ``MaskDraw``'s mask)."""
    out = masker(b, grid, generator=torch.Generator().manual_seed(seed), **context)
    return getattr(out, "mask", out)


class QuickstartContextContract(MaskerContract):
    """maskkit's masker contract on the quickstart grid, with real images and a tiny model passed as context."""

    grids = st.just(GRID)

    @classmethod
    def model(cls):
        if "_model" not in cls.__dict__:
            cls._model = tiny_model()
        return cls._model

    def _mask(self, masker, b, grid, seed, device="cpu"):
        images = fashion(32)[:b] if b <= 32 else fashion(32).repeat(b // 32 + 1, 1, 1, 1)[:b]
        gen = torch.Generator(device=device).manual_seed(seed)
        out = masker(b, grid, generator=gen, device=device, images=images, model=self.model())
        return getattr(out, "mask", out)

    def test_uses_only_the_given_generator(self):
        """As the base contract's test, on the model's grid (the base uses an 8 x 8 grid)."""
        masker = self.make_masker()
        torch.manual_seed(0)
        first = self._mask(masker, 4, GRID, 123)
        torch.manual_seed(1)
        second = self._mask(masker, 4, GRID, 123)
        assert torch.equal(first, second), "the mask depends on the global RNG, not only on the generator"
