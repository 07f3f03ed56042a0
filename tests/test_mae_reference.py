"""MAE is faithful to the paper and the official implementation: same key names, same masks, same loss."""

import pytest
import torch

import maskkit
from maskkit.builtin.masking import RandomMasker, mask_from_noise
from maskkit.interop.vit_names import layout_of, official_to_transformers
from maskkit.patches import patchify, sincos_pos_embed_2d, unpatchify


def mae_recipe(depth=2, dec_depth=1, img=32, patch=4, chans=3, dim=64, heads=4, dec_dim=32, target="norm_pixels"):
    return maskkit.load_recipe({
        "masker": {"name": "random", "ratio": 0.75},
        "encoder": {"name": "vit_base_patch16_224", "img_size": img, "patch_size": patch, "in_chans": chans,
                    "embed_dim": dim, "depth": depth, "num_heads": heads},
        "decoder": {"name": "mae", "embed_dim": dec_dim, "depth": dec_depth, "num_heads": heads},
        "target": {"name": target}, "loss": {"name": "mse"},
        "data": {"name": "fashion_mnist"},
    })


def official_keys(depth: int, dec_depth: int) -> set[str]:
    """The state-dict keys of the official ``MaskedAutoencoderViT`` (models_mae.py), written out by rule."""
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
             "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
            "mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias", "decoder_norm.weight",
            "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"}
    keys |= {f"blocks.{i}.{k}" for i in range(depth) for k in block}
    keys |= {f"decoder_blocks.{i}.{k}" for i in range(dec_depth) for k in block}
    return keys


def test_state_dict_uses_official_names(builtin_registry):
    model = maskkit.build_model(mae_recipe(depth=3, dec_depth=2), builtin_registry)
    assert set(model.state_dict()) == official_keys(3, 2)


def test_official_checkpoint_loads_strictly(builtin_registry, tmp_path):
    """A ``{"model": state_dict}`` with official names loads with strict=True, and the encoder part alone
    loads into the encoder."""
    source = maskkit.build_model(mae_recipe(), builtin_registry)
    torch.save({"model": source.state_dict()}, tmp_path / "official.pth")
    target = maskkit.build_model(mae_recipe(), builtin_registry)
    target.load_state_dict(torch.load(tmp_path / "official.pth", weights_only=True)["model"], strict=True)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name
    encoder_only = {k: v for k, v in source.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    fresh = maskkit.build_model(mae_recipe(), builtin_registry)
    fresh.encoder.load_state_dict(encoder_only, strict=True)
    assert torch.equal(fresh.encoder.blocks[0].attn.qkv.weight, source.encoder.blocks[0].attn.qkv.weight)


def test_sincos_matches_official_formula():
    """Spot values of the official numpy code: first half encodes the column (w), second half the row (h)."""
    dim, grid = 8, (3, 5)
    emb = sincos_pos_embed_2d(dim, grid, num_prefix_tokens=1)
    assert emb.shape == (1 + 15, 8) and torch.equal(emb[0], torch.zeros(8))
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2.0)
    row, col = 2, 3
    expected = torch.cat([torch.sin(col * omega), torch.cos(col * omega),
                          torch.sin(row * omega), torch.cos(row * omega)])
    torch.testing.assert_close(emb[1 + row * 5 + col], expected.float())


def test_patchify_roundtrip_and_layout():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    p = patchify(x, (2, 3))
    assert p.shape == (2, 4, 18)
    # first patch, first pixel: all channels are consecutive (nhwpqc layout)
    assert p[0, 0, :3].tolist() == [x[0, 0, 0, 0].item(), x[0, 1, 0, 0].item(), x[0, 2, 0, 0].item()]
    assert torch.equal(unpatchify(p, (2, 3), (2, 2), 3), x)


def test_random_mask_matches_official_scheme():
    noise = torch.rand(3, 196, generator=torch.Generator().manual_seed(0))
    mask = mask_from_noise(noise, 0.75)
    keep = torch.argsort(noise, dim=1)[:, :49]
    for b in range(3):
        assert set(torch.nonzero(~mask[b]).flatten().tolist()) == set(keep[b].tolist())
    assert RandomMasker(0.75).num_hidden((14, 14)) == 147


def _hf_model_from(model, img, patch, chans, dim, depth, heads, dec_dim, dec_depth):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTMAEConfig(
        image_size=img, patch_size=patch, num_channels=chans, hidden_size=dim, num_hidden_layers=depth,
        num_attention_heads=heads, intermediate_size=4 * dim, decoder_hidden_size=dec_dim,
        decoder_num_hidden_layers=dec_depth, decoder_num_attention_heads=heads, decoder_intermediate_size=4 * dec_dim,
        mask_ratio=0.75, norm_pix_loss=True, layer_norm_eps=1e-6, qkv_bias=True, hidden_act="gelu",
        attn_implementation="eager")
    hf = transformers.ViTMAEForPreTraining(config).eval()
    # the renaming maskkit's export uses (maskkit.interop.vit_names), checked here against the reference
    new = official_to_transformers(model.state_dict(), layout_of(hf.state_dict()))
    missing, unexpected = hf.load_state_dict(new, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    return hf


def test_loss_equals_transformers_vitmae(builtin_registry):
    """Same weights, images and noise: the loss and predictions equal transformers' ViTMAEForPreTraining."""
    img, patch, chans, dim, depth, heads, dec_dim, dec_depth = 32, 4, 3, 64, 2, 4, 32, 2
    torch.manual_seed(0)
    model = maskkit.build_model(mae_recipe(depth, dec_depth, img, patch, chans, dim, heads, dec_dim),
                                builtin_registry).eval()
    hf = _hf_model_from(model, img, patch, chans, dim, depth, heads, dec_dim, dec_depth)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(4, chans, img, img, generator=gen)
    noise = torch.rand(4, (img // patch) ** 2, generator=gen)
    with torch.no_grad():
        ours = model(images, mask=mask_from_noise(noise, 0.75))
        theirs = hf(pixel_values=images, noise=noise)
    assert torch.equal(ours.mask, theirs.mask.bool())
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.pred, theirs.logits, atol=1e-4, rtol=1e-4)


def test_loss_is_masked_mean_of_norm_pix_mse(builtin_registry):
    """The paper's equation, written out independently of the model's loss code."""
    model = maskkit.build_model(mae_recipe(), builtin_registry)
    images = torch.randn(2, 3, 32, 32)
    out = model(images, generator=torch.Generator().manual_seed(0))
    target = patchify(images, (4, 4))
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    per_patch = ((out.pred - target) ** 2).mean(-1)
    expected = (per_patch * out.mask).sum() / out.mask.sum()
    torch.testing.assert_close(out.loss, expected)


def test_given_mask_is_reproduced_and_non_square_images_work(builtin_registry):
    recipe = mae_recipe(img=32, patch=4, chans=2).with_overrides(["encoder.img_size=[16, 40]"])
    model = maskkit.build_model(recipe, builtin_registry)
    assert model.grid == (4, 10)
    images = torch.randn(3, 2, 16, 40)
    first = model(images, generator=torch.Generator().manual_seed(5))
    again = model(images, mask=first.mask)
    assert first.pred.shape == (3, 40, 4 * 4 * 2)
    torch.testing.assert_close(first.loss, again.loss)


def test_sparse_encoder_refuses_uneven_masks(builtin_registry):
    model = maskkit.build_model(mae_recipe(), builtin_registry)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[0, :48] = True
    mask[1, :40] = True
    with pytest.raises(ValueError, match="same number of visible"):
        model(torch.randn(2, 3, 32, 32), mask=mask)


def test_official_style_reference_loads_maskkit_weights_and_computes_the_same_loss(builtin_registry):
    """The benchmark's official-style MAE (models_mae.py's structure on timm blocks) takes maskkit's state dict
    strictly and, from the same images and noise, gives the same mask, predictions, loss and gradients."""
    from maskkit.mae_reference import OfficialStyleMAE

    torch.manual_seed(0)
    model = maskkit.build_model(mae_recipe(depth=2, dec_depth=2, img=32, patch=4, chans=3), builtin_registry)
    reference = OfficialStyleMAE.like(model)
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(4, 3, 32, 32, generator=gen)
    noise = torch.rand(4, 64, generator=gen)
    ours = model(images, mask=mask_from_noise(noise, 0.75))
    loss, pred, mask = reference(images, noise=noise)
    assert torch.equal(ours.mask, mask.bool())
    torch.testing.assert_close(ours.pred, pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.loss, loss, atol=1e-6, rtol=1e-6)
    ours.loss.backward()
    loss.backward()
    ref_params = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        flat = name.split(".", 1)[1] if name.startswith(("encoder.", "decoder.")) else name
        assert (param.grad is None) == (ref_params[flat].grad is None), flat
        if param.grad is not None:
            torch.testing.assert_close(param.grad, ref_params[flat].grad, atol=1e-5, rtol=1e-4, msg=flat)
