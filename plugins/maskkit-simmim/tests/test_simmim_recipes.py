"""The shipped recipes build through maskkit's registry and train, and the plugin registers its names."""

from __future__ import annotations

import pytest
import torch
from simmim_helpers import RandomCountMasker, tiny_convnext, tiny_swin

import maskkit
from maskkit.errors import ConfigError
from maskkit.patches import patchify
from maskkit.registry import Registry
from maskkit_simmim import SimMIMHead, SimMIMSwinEncoder

# Tiny sizes for the paper-sized recipes; the quickstart is CPU-sized already and runs as shipped.
TINY = {
    "simmim_swin_tiny": ["encoder.img_size=64", "encoder.window_size=2", "encoder.embed_dim=8",
                         "encoder.depths=[1,1,1,1]", "encoder.num_heads=[1,1,1,1]"],
    "simmim_vit_base_patch16": ["encoder.img_size=32", "encoder.patch_size=8", "encoder.embed_dim=32",
                                "encoder.depth=1", "encoder.num_heads=2"],
    "quickstart_simmim_swin": [],
}


@pytest.fixture(scope="module")
def registry():
    return Registry.from_plugins()


def test_plugin_registers_its_names(registry):
    assert registry.get("decoder", "simmim").plugin == "simmim"
    assert registry.get("masker", "simmim_random").plugin == "simmim"
    swins = registry.list("encoder", "simmim_swin_*")
    assert {"simmim_swin_tiny_patch4_window7_224", "simmim_swin_base_patch4_window7_224"} <= set(swins)
    assert {"simmim_convnext_atto", "simmim_convnext_tiny", "simmim_convnextv2_atto"} <= set(
        registry.list("encoder", "simmim_convnext*"))
    assert not registry.list("encoder", "simmim_*_ols")
    assert set(TINY) <= set(registry.entries("recipe"))


def _images(recipe_model, fashion_images, b):
    enc = recipe_model.encoder
    return fashion_images(b, enc.img_size[0], enc.in_chans)


@pytest.mark.parametrize("name", TINY)
def test_recipe_trains_one_step(name, registry, fashion_images):
    recipe = maskkit.load_recipe(name, TINY[name], registry=registry)
    torch.manual_seed(0)
    model = maskkit.build_model(recipe, registry)
    assert not model.encoder.sparse and isinstance(model.decoder, SimMIMHead)
    images = _images(model, fashion_images, 4)
    out = model(images, generator=torch.Generator().manual_seed(0))
    hidden = model.masker.num_hidden(model.grid)
    assert out.mask.sum(1).tolist() == [hidden] * 4
    # SimMIM's loss: mean |prediction - raw pixels| over the hidden patches' pixels and channels.
    target = patchify(images, model.encoder.patch_size)
    expected = (out.pred - target).abs()[out.mask].mean()
    torch.testing.assert_close(out.loss, expected)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out.loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "decoder.decoder_pred.weight" in changed
    token = "encoder.mask_token" if "encoder.mask_token" in before else "encoder.encoder_mask_token"
    assert token in changed, "the mask token must be trained"


def test_vit_recipe_predicts_16px_patches_under_32px_mask_patches(registry):
    recipe = maskkit.load_recipe("simmim_vit_base_patch16", ["encoder.depth=1", "encoder.embed_dim=64",
                                                             "encoder.num_heads=2"], registry=registry)
    model = maskkit.build_model(recipe, registry)
    assert model.grid == (14, 14) and model.encoder.patch_size == (16, 16)
    assert model.decoder.decoder_pred.out_features == 16 * 16 * 3
    assert model.masker.num_hidden(model.grid) == 30 * 4  # ceil(49 * 0.6) mask patches of 2x2 cells


def test_swin_recipe_is_the_paper_geometry(registry):
    recipe = maskkit.load_recipe("simmim_swin_tiny", ["encoder.depths=[1,1,1,1]"], registry=registry)
    model = maskkit.build_model(recipe, registry)
    assert model.grid == (6, 6) and model.encoder.patch_size == (32, 32)
    assert model.decoder.decoder_pred.out_features == 32 * 32 * 3
    assert model.masker.num_hidden(model.grid) == 22
    train = recipe.train
    assert train.base_lr * 2048 / 256 == pytest.approx(8e-4)  # the paper's lr at batch 2048
    assert train.batch_size * train.accum_steps == 2048


def test_quickstart_learns_on_fashion_mnist(registry, fashion_images):
    """A few steps on one batch of real images, one fixed mask: the L1 reconstruction loss falls clearly."""
    recipe = maskkit.load_recipe("quickstart_simmim_swin", registry=registry)
    torch.manual_seed(0)
    model = maskkit.build_model(recipe, registry)
    images = _images(model, fashion_images, 16)
    mask = model.draw_mask(16, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        loss = model(images, mask).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.88 * losses[0], losses


@pytest.mark.parametrize("make", [tiny_swin, tiny_convnext], ids=["swin", "convnext"])
def test_variable_count_masker_trains_with_a_dense_encoder(make):
    """A masker hiding a different count per sample (num_hidden None) works end to end with a dense encoder."""
    enc = make()
    target = maskkit.create("target", "pixels", patch_size=enc.patch_size, in_chans=enc.in_chans)
    head = SimMIMHead(enc.embed_dim, enc.grid, target.dim)
    model = maskkit.MaskedModel(RandomCountMasker(), enc, head, target, maskkit.create("loss", "l1"))
    images = torch.randn(6, enc.in_chans, *enc.img_size, generator=torch.Generator().manual_seed(0))
    out = model(images, generator=torch.Generator().manual_seed(1))
    counts = out.mask.sum(1)
    assert len(set(counts.tolist())) > 1, "the test masker should vary the count"
    per_patch = (out.pred - out.target).abs().mean(-1)
    torch.testing.assert_close(out.loss, per_patch[out.mask].mean())
    out.loss.backward()
    assert enc.mask_token.grad.abs().sum() > 0


def test_variable_count_masker_is_refused_by_a_sparse_encoder(registry):
    enc = maskkit.create("encoder", "vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1, embed_dim=32,
                         num_heads=2, registry=registry)
    head = SimMIMHead(enc.embed_dim, enc.grid, 48, enc.num_prefix_tokens)
    with pytest.raises(ConfigError, match="varying number"):
        maskkit.MaskedModel(RandomCountMasker(), enc, head, maskkit.create("target", "pixels", patch_size=4,
                                                                           in_chans=3),
                            maskkit.create("loss", "l1"))


@pytest.mark.parametrize("override, key", [("encoder.img_size=200", "encoder.img_size"),
                                           ("encoder.patch_size=16", "encoder.patch_size"),
                                           ("decoder.in_dim=3", "decoder.in_dim"),
                                           ("masker.scale=0", "masker.scale")])
def test_recipe_errors_name_the_key(registry, override, key):
    recipe = maskkit.load_recipe("simmim_swin_tiny", TINY["simmim_swin_tiny"] + [override], registry=registry)
    with pytest.raises(ConfigError) as info:
        maskkit.build_model(recipe, registry)
    assert info.value.key == key


def test_encoder_class_is_exported():
    assert issubclass(SimMIMSwinEncoder, maskkit.Encoder)
