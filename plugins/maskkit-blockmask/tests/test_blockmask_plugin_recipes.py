"""The plugin registers through maskkit's entry points, and its recipes build and train one step."""

import pytest
import torch

import maskkit
from maskkit.registry import Registry

TINY = ["encoder.depth=1", "encoder.embed_dim=32", "encoder.num_heads=2", "decoder.depth=1", "decoder.embed_dim=16",
        "decoder.num_heads=2"]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugins()


def test_maskers_registered_by_this_plugin(registry):
    entries = registry.entries("masker")
    for name in ("block", "grid", "uniform"):
        assert entries[name].plugin == "blockmask"
    masker = registry.create("masker", "block", ratio=0.5)
    assert masker.num_hidden((14, 14)) == 98


def test_recipes_registered(registry):
    recipes = registry.entries("recipe")
    for name in ("quickstart_block", "mae_block75_vit_base_patch16"):
        assert recipes[name].plugin == "blockmask" and registry.recipe_path(name).is_file()


def test_recipe_keys_are_checked(registry):
    with pytest.raises(maskkit.ConfigError, match="masker.ratio"):
        maskkit.build_model(maskkit.load_recipe("quickstart_block", ["masker.ratio=1.5"], registry=registry),
                            registry)
    with pytest.raises(maskkit.ConfigError, match="masker.block_size"):
        maskkit.build_model(maskkit.load_recipe("quickstart_block", ["masker.block_size=3"], registry=registry),
                            registry)


def test_inexact_block_needs_a_dense_encoder(registry):
    recipe = maskkit.load_recipe("quickstart_block", ["masker.exact=false", *TINY], registry=registry)
    with pytest.raises(maskkit.ConfigError, match="dense encoder"):
        maskkit.build_model(recipe, registry)
    model = maskkit.build_model(recipe.with_overrides(["encoder.dense=true"]), registry)
    assert model.masker.num_hidden(model.grid) is None


def one_step(model, images: torch.Tensor, seed: int = 0):
    model.train()
    out = model(images, generator=torch.Generator().manual_seed(seed))
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    return out, grads


def test_quickstart_block_trains_one_step_on_fashion_mnist(registry, fashion_images):
    recipe = maskkit.load_recipe("quickstart_block", TINY, registry=registry)
    assert recipe.tree["masker"] == {"name": "block", "ratio": 0.5}
    assert recipe.train.epochs == 5 and recipe.train.batch_size == 128 and recipe.augment.scale == (0.35, 1.0)
    model = maskkit.build_model(recipe, registry)
    assert model.grid == (14, 14)
    out, grads = one_step(model, fashion_images(8, 28))
    assert out.mask.sum(dim=1).tolist() == [98] * 8
    assert torch.isfinite(out.loss) and out.loss > 0
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_mae_block75_recipe_builds_tiny_and_trains_one_step(registry, fashion_images):
    recipe = maskkit.load_recipe("mae_block75_vit_base_patch16",
                                 ["encoder.img_size=56", "encoder.patch_size=8", *TINY], registry=registry)
    assert recipe.tree["masker"]["ratio"] == 0.75 and recipe.train.epochs == 800
    assert recipe.train.batch_size * recipe.train.accum_steps == 4096
    model = maskkit.build_model(recipe, registry)
    assert model.grid == (7, 7) and model.encoder.sparse
    out, grads = one_step(model, fashion_images(4, 56, in_chans=3))
    assert out.mask.sum(dim=1).tolist() == [49 - int(49 * 0.25)] * 4
    assert torch.isfinite(out.loss) and grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("spec", [{"name": "grid"}, {"name": "grid", "random_offset": True},
                                  {"name": "uniform"}, {"name": "uniform", "secondary_ratio": 0.25}])
def test_grid_and_uniform_in_the_quickstart(registry, fashion_images, spec):
    recipe = maskkit.load_recipe("quickstart_block", TINY, registry=registry)
    recipe = maskkit.Recipe({**recipe.tree, "masker": spec}, recipe.path)
    model = maskkit.build_model(recipe, registry)
    out, _ = one_step(model, fashion_images(4, 28))
    assert out.mask.sum(dim=1).tolist() == [model.masker.num_hidden((14, 14))] * 4
    assert torch.isfinite(out.loss)
