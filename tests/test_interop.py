"""Interop: weights read from transformers ViTMAE folders and official MAE checkpoints, and written back out,
give the same model: the same loss and predictions under the same noise, the same features."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import maskkit
from maskkit.builtin.masking import mask_from_noise
from maskkit.engine.checkpoint import load_training_checkpoint
from maskkit.errors import CheckpointError
from maskkit.interop import load_pretrained, read_pretrained
from maskkit.interop.pretrained import _shipped_recipe_with_shapes
from maskkit.interop.vit_names import official_to_transformers, transformers_to_official
from maskkit.recipe import Recipe
from test_mae_reference import mae_recipe, official_keys


def _same_loss(model_a, model_b_call, images, noise, ratio):
    """maskkit ``model_a`` and another model (``model_b_call(images, noise) -> (loss, pred, mask)``) under the
    same noise."""
    with torch.no_grad():
        ours = model_a.eval()(images, mask=mask_from_noise(noise, ratio))
        loss, pred, mask = model_b_call(images, noise)
    assert torch.equal(ours.mask, mask.bool())
    torch.testing.assert_close(ours.pred, pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.loss, loss, atol=1e-6, rtol=1e-5)


def _built(loaded):
    model = maskkit.build_model(Recipe(loaded.recipe))
    model.load_state_dict(loaded.state_dict, strict=True)
    return model.eval()


# -- names --------------------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(depth=st.integers(1, 3), dec_depth=st.integers(0, 2), layout=st.sampled_from(["v4", "v5"]),
       prefix=st.sampled_from(["vit.", ""]))
def test_names_round_trip(depth, dec_depth, layout, prefix):
    """official -> transformers -> official is the identity (every tensor, same values), in both layouts."""
    keys = official_keys(depth, max(dec_depth, 1))
    if dec_depth == 0:
        keys = {k for k in keys if not k.startswith(("decoder", "mask_token"))}
    gen = torch.Generator().manual_seed(depth * 10 + dec_depth)
    state = {k: torch.randn(12 if "qkv" in k else 4, generator=gen) for k in sorted(keys)}
    theirs = official_to_transformers(state, layout=layout, encoder_prefix=prefix)
    assert len(theirs) == len(state) + 4 * (depth + (dec_depth and max(dec_depth, 1)))  # qkv -> q, k, v
    back = transformers_to_official(theirs)
    assert set(back) == set(state)
    for key, value in state.items():
        assert torch.equal(back[key], value), key


def test_unknown_keys_are_refused():
    with pytest.raises(CheckpointError, match="classifier"):
        transformers_to_official({"vit.layernorm.weight": torch.ones(2), "classifier.weight": torch.ones(2, 2)})
    with pytest.raises(CheckpointError, match="head.weight"):
        official_to_transformers({"norm.weight": torch.ones(2), "head.weight": torch.ones(2, 2)})


# -- transformers ViTMAE folders ----------------------------------------------------------------------------


def _tiny_vitmae(transformers, **overrides):
    config = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=64, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                  decoder_num_attention_heads=2, decoder_intermediate_size=48, norm_pix_loss=True,
                  layer_norm_eps=1e-6, mask_ratio=0.5)
    config.update(overrides)
    torch.manual_seed(0)
    return transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**config)).eval()


@pytest.mark.parametrize("overrides", [{}, {"norm_pix_loss": False, "mask_ratio": 0.75, "num_channels": 1,
                                            "image_size": 28, "patch_size": 2}])
def test_transformers_folder_reads_to_the_same_model(tmp_path, overrides):
    transformers = pytest.importorskip("transformers")
    hf = _tiny_vitmae(transformers, **overrides)
    with torch.no_grad():  # non-zero everywhere, so a tensor left at its init would show
        for param in hf.parameters():
            param.add_(0.01 * torch.randn_like(param))
    hf.save_pretrained(tmp_path / "hf")
    loaded = load_pretrained(tmp_path / "hf")
    assert loaded.source == "transformers" and loaded.notes == ()
    config = hf.config
    assert loaded.recipe["target"]["name"] == ("norm_pixels" if config.norm_pix_loss else "pixels")
    assert loaded.recipe["masker"] == {"name": "random", "ratio": config.mask_ratio}
    if config.num_channels == 1:
        assert loaded.recipe["data"]["name"] == "fashion_mnist"
    model = _built(loaded)
    size, n = config.image_size, (config.image_size // config.patch_size) ** 2
    gen = torch.Generator().manual_seed(1)
    images, noise = torch.randn(3, config.num_channels, size, size, generator=gen), torch.rand(3, n, generator=gen)

    def theirs(images, noise):
        out = hf(pixel_values=images, noise=noise)
        return out.loss, out.logits, out.mask

    _same_loss(model, theirs, images, noise, config.mask_ratio)


def test_transformers_encoder_only_folder_gets_a_fresh_decoder(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = _tiny_vitmae(transformers)
    hf.vit.save_pretrained(tmp_path / "enc")  # ViTMAEModel: no decoder
    loaded = load_pretrained(tmp_path / "enc")
    assert any("decoder is freshly initialised" in note for note in loaded.notes)
    model = _built(loaded)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        theirs = hf.vit.eval()(pixel_values=images, noise=torch.arange(16.0).expand(2, 16)).last_hidden_state
    # mask ratio 0.5 keeps the 8 lowest-noise patches, here 0..7 in order, as maskkit orders visible tokens
    ours = model.encoder(images, mask_from_noise(torch.arange(16.0).expand(2, 16), 0.5))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    again = load_pretrained(tmp_path / "enc")  # the fresh decoder is seeded: the same every time
    assert torch.equal(again.state_dict["decoder_embed.weight"], loaded.state_dict["decoder_embed.weight"])


def test_transformers_folder_with_another_activation_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    _tiny_vitmae(transformers, hidden_act="relu").save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="hidden_act 'relu'"):
        load_pretrained(tmp_path / "hf")


# -- official MAE checkpoints -------------------------------------------------------------------------------


def test_official_checkpoint_reads_to_the_same_model(builtin_registry, tmp_path):
    """A synthetic official checkpoint (maskkit's MAE saved under the official names): sizes from the shapes,
    heads from MAE's 64-wide heads (here exact: 128 / 2, 64 / 2), norm-pix target, same loss."""
    torch.manual_seed(0)
    source = maskkit.build_model(mae_recipe(depth=2, dec_depth=1, img=32, patch=8, dim=128, heads=2, dec_dim=64),
                                 builtin_registry).eval()
    torch.save({"model": source.state_dict()}, tmp_path / "mae_pretrain.pth")
    loaded = load_pretrained(tmp_path / "mae_pretrain.pth")
    assert loaded.source == "official"
    assert loaded.recipe["encoder"]["num_heads"] == 2 and loaded.recipe["decoder"]["num_heads"] == 2
    model = _built(loaded)
    gen = torch.Generator().manual_seed(2)
    images, noise = torch.randn(4, 3, 32, 32, generator=gen), torch.rand(4, 16, generator=gen)

    def theirs(images, noise):
        out = source(images, mask=mask_from_noise(noise, 0.75))
        return out.loss, out.pred, out.mask

    _same_loss(model, theirs, images, noise, 0.75)


def test_official_checkpoint_heads_and_target_by_override(builtin_registry, tmp_path):
    """Heads are not in the shapes: a model with other heads needs overrides, and then matches exactly."""
    torch.manual_seed(0)
    source = maskkit.build_model(mae_recipe(dim=64, heads=4, dec_dim=32, target="pixels"), builtin_registry).eval()
    torch.save({"model": source.state_dict()}, tmp_path / "official.pth")
    overrides = ["encoder.num_heads=4", "decoder.num_heads=4", "target.name=pixels"]
    loaded = load_pretrained(tmp_path / "official.pth", overrides)
    assert loaded.notes == ()
    model = _built(loaded)
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)

    def theirs(images, noise):
        out = source(images, mask=mask_from_noise(noise, 0.75))
        return out.loss, out.pred, out.mask

    _same_loss(model, theirs, images, noise, 0.75)
    guessed = _built(load_pretrained(tmp_path / "official.pth"))  # 1 head by MAE's head width: not the same
    with torch.no_grad():
        assert not torch.allclose(guessed.encoder.forward_features(images), source.encoder.forward_features(images))


def test_official_encoder_only_checkpoint(builtin_registry, tmp_path):
    """MAE's released pretraining checkpoints hold the encoder alone: it is read, the decoder is fresh."""
    source = maskkit.build_model(mae_recipe(dim=128, heads=2), builtin_registry).eval()
    encoder_only = {k: v for k, v in source.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": encoder_only}, tmp_path / "enc.pth")
    recipe, state = read_pretrained(tmp_path / "enc.pth")
    model = maskkit.build_model(Recipe(recipe))
    model.load_state_dict(state, strict=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encoder.forward_features(images),
                                   source.encoder.forward_features(images))
    assert recipe["decoder"] == {"name": "mae", "embed_dim": 512, "depth": 8, "num_heads": 16}


def test_shipped_recipes_are_recognised_by_their_shapes(registry):
    for name in ("mae_vit_base_patch16", "mae_vit_huge_patch14"):
        with torch.device("meta"):
            model = maskkit.build_model(maskkit.load_recipe(name, registry=registry), registry)
        state = model.state_dict()
        assert _shipped_recipe_with_shapes(state, registry)[0] == name
        encoder_only = {k: v for k, v in state.items() if model._flat_owner.get(k) == "encoder"}
        assert _shipped_recipe_with_shapes(encoder_only, registry)[0] == name


def test_maskkit_checkpoint_and_bad_files(tmp_path, builtin_registry):
    from maskkit.interop import write_checkpoint
    from maskkit.interop.pretrained import Pretrained

    model = maskkit.build_model(mae_recipe(), builtin_registry)
    write_checkpoint(Pretrained(mae_recipe().tree, model.state_dict(), "maskkit"), tmp_path / "ck.pth")
    recipe, state = read_pretrained(tmp_path / "ck.pth")
    assert recipe == mae_recipe().tree and set(state) == set(model.state_dict())
    assert load_training_checkpoint(tmp_path / "ck.pth")["step"] == 0
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_pretrained(tmp_path / "junk.pth")
    torch.save({"step": 3}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="neither a maskkit checkpoint nor an official MAE one"):
        read_pretrained(tmp_path / "other.pth")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        read_pretrained(tmp_path / "folder")
