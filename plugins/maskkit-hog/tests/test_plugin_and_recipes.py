"""The plugin registers ``hog`` and its recipes; each recipe builds (at tiny size) and trains a step."""

from __future__ import annotations

import pytest
import torch

import maskkit
from maskkit.errors import ConfigError
from maskkit_hog import HOGTarget
from maskkit_hog.plugin import RECIPE_DIR

RECIPES = ("maskfeat_vit_base_patch16", "quickstart_maskfeat")
TINY_VIT_B = ["encoder.depth=1", "encoder.embed_dim=32", "encoder.num_heads=2", "encoder.img_size=32",
              "decoder.embed_dim=32"]


@pytest.fixture(scope="module")
def registry():
    return maskkit.Registry.from_plugins(autoload=True)


def test_registered_through_the_entry_point(registry):
    entry = registry.get("target", "hog")
    assert entry.factory is HOGTarget and entry.plugin == "hog"
    for name in RECIPES:
        assert registry.recipe_path(name) == RECIPE_DIR / f"{name}.yaml"


def test_recipes_are_package_data():
    assert sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")) == sorted(RECIPES)


def test_maskfeat_recipe_at_full_size_targets_108_numbers_per_patch(registry):
    recipe = maskkit.load_recipe(RECIPE_DIR / "maskfeat_vit_base_patch16.yaml", registry=registry)
    spec = recipe.component("target")
    target = registry.create("target", spec.pop("name"), patch_size=(16, 16), in_chans=3, **spec)
    assert target.dim == 108 and target.cell == (8, 8)
    assert recipe.component("masker") == {"name": "random", "ratio": 0.4}
    assert recipe.component("loss") == {"name": "mse"}
    assert recipe.component("encoder")["dense"] is True
    assert "dense" in recipe.tree["description"] and "sparse" in recipe.tree["description"]


@pytest.mark.parametrize("name, overrides", [("maskfeat_vit_base_patch16", TINY_VIT_B),
                                             ("quickstart_maskfeat", [])])
def test_recipe_builds_and_takes_a_training_step(registry, name, overrides):
    recipe = maskkit.load_recipe(RECIPE_DIR / f"{name}.yaml", overrides, registry=registry)
    assert recipe.train is not None  # the train section validates
    model = maskkit.build_model(recipe, registry)
    assert isinstance(model.target, HOGTarget) and not model.encoder.sparse
    images = torch.randn(4, model.encoder.in_chans, *model.encoder.img_size)
    out = model(images, generator=torch.Generator().manual_seed(0))
    assert out.pred.shape == out.target.shape == (4, model.encoder.num_patches, model.target.dim)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["encoder.encoder_mask_token"].abs().sum() > 0  # the dense encoder's mask token learns
    assert grads["decoder.decoder_pred.weight"].abs().sum() > 0


def test_quickstart_learns_on_real_images(registry, fashion_images):
    """A few Adam steps on one real batch with a fixed mask lower the HOG loss of the hidden patches."""
    recipe = maskkit.load_recipe(RECIPE_DIR / "quickstart_maskfeat.yaml",
                                 ["encoder.depth=1", "encoder.embed_dim=64", "decoder.depth=1"], registry=registry)
    torch.manual_seed(0)
    model = maskkit.build_model(recipe, registry)
    assert model.encoder.grid == (7, 7) and model.target.dim == 9
    images = (fashion_images[:16].float() / 255.0 - 0.2860) / 0.3530
    mask = model.draw_mask(16, torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [20] * 16  # 40% of 49 patches
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = model(images, mask).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_block_masking_replaces_random_masking(registry):
    """README: ``masker.name=block`` (maskkit-blockmask) works with the dense encoder of the recipe."""
    if "block" not in registry.list("masker"):
        pytest.skip("maskkit-blockmask is not installed")
    recipe = maskkit.load_recipe(RECIPE_DIR / "quickstart_maskfeat.yaml", ["masker.name=block",
                                                                           "masker.min_block_patches=4"],
                                 registry=registry)
    model = maskkit.build_model(recipe, registry)
    out = model(torch.randn(2, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.mask.any(dim=1).all()


def test_builder_rejects_wiring_keys_and_bad_cells(registry):
    with pytest.raises(ConfigError, match="target.patch_size"):
        maskkit.build_model(maskkit.load_recipe(RECIPE_DIR / "quickstart_maskfeat.yaml", ["target.patch_size=4"],
                                                registry=registry), registry)
    with pytest.raises(ConfigError, match="target.cell_size"):
        maskkit.build_model(maskkit.load_recipe(RECIPE_DIR / "quickstart_maskfeat.yaml", ["target.cell_size=3"],
                                                registry=registry), registry)
