"""The dense Swin / ConvNeXt encoders: maskkit's encoder contract, and SimMIM's mask-token semantics."""

from __future__ import annotations

import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from simmim_helpers import RandomCountMasker, tiny_convnext, tiny_swin, tiny_swin_stride32

import maskkit
from maskkit.errors import ConfigError
from maskkit.patches import upsample_mask
from maskkit.testing import EncoderContract
from maskkit_simmim import SimMIMConvNeXtEncoder, SimMIMRandomMasker, SimMIMSwinEncoder

few = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.differing_executors])


class _SimMIMMask:
    def make_mask(self, batch_size, grid, seed):
        return SimMIMRandomMasker(0.6)(batch_size, grid, generator=torch.Generator().manual_seed(seed))


class TestSwinContract(_SimMIMMask, EncoderContract):
    def make_encoder(self):
        return tiny_swin()


class TestSwinStride32Contract(_SimMIMMask, EncoderContract):
    def make_encoder(self):
        return tiny_swin_stride32()


class TestConvNeXtContract(_SimMIMMask, EncoderContract):
    def make_encoder(self):
        return tiny_convnext()


class TestConvNeXtV2Contract(_SimMIMMask, EncoderContract):
    def make_encoder(self):
        return SimMIMConvNeXtEncoder("convnextv2_atto", img_size=64, stem_patch_size=2, in_chans=1,
                                     depths=(1, 1, 1, 1), dims=(8, 8, 16, 16))


class TestSwinVariableCountMasks(EncoderContract):
    """The contract again, with masks hiding a different number of patches in every sample."""

    def make_encoder(self):
        return tiny_swin()

    def make_mask(self, batch_size, grid, seed):
        return RandomCountMasker()(batch_size, grid, generator=torch.Generator().manual_seed(seed))


ENCODERS = {"swin": tiny_swin, "swin_stride32": tiny_swin_stride32, "convnext": tiny_convnext}


def _images(enc, b, seed=0):
    return torch.randn(b, enc.in_chans, *enc.img_size, generator=torch.Generator().manual_seed(seed))


def _pixel_mask(enc, mask):
    """``[B, N]`` -> bool ``[B, 1, H, W]``, True on the pixels of hidden patches."""
    return upsample_mask(mask, enc.grid, enc.patch_size)


@pytest.mark.parametrize("make", ENCODERS.values(), ids=ENCODERS.keys())
def test_geometry(make):
    enc = make()
    stride = enc.patch_size[0]
    assert enc.sparse is False and enc.num_prefix_tokens == 0
    assert enc.grid == (enc.img_size[0] // stride, enc.img_size[1] // stride)
    assert enc.mask_scale * enc.stem_patch_size == stride
    assert enc.embed_dim == enc.forward_features(_images(enc, 1)).shape[-1]


def test_swin_tiny_paper_geometry():
    """SimMIM's Swin at 192 px, window 6: stride 32, 6x6 grid of 32-px mask patches, 48x48 stem tokens, D=768."""
    enc = SimMIMSwinEncoder("swin_tiny_patch4_window7_224", img_size=192, window_size=6, depths=(1, 1, 1, 1))
    assert (enc.patch_size, enc.grid, enc.stem_patch_size, enc.mask_scale, enc.embed_dim) == ((32, 32), (6, 6), 4, 8,
                                                                                              768)


@pytest.mark.parametrize("make", ENCODERS.values(), ids=ENCODERS.keys())
@few
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 3))
def test_hidden_pixels_do_not_reach_any_output(make, seed, b):
    """Rewriting every pixel of the hidden patches leaves the whole output unchanged: the mask token really
    replaces them at the stem, and no hidden pixel leaks into a visible position."""
    enc = make().eval()
    images = _images(enc, b, seed)
    mask = RandomCountMasker()(b, enc.grid, generator=torch.Generator().manual_seed(seed))
    noise = 5 * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed + 1))
    changed = torch.where(_pixel_mask(enc, mask), noise, images)
    with torch.no_grad():
        torch.testing.assert_close(enc(changed, mask), enc(images, mask), rtol=0, atol=0)


@pytest.mark.parametrize("make", ENCODERS.values(), ids=ENCODERS.keys())
def test_visible_pixels_do_reach_the_output(make):
    """The converse, so the test above is not vacuous: changing one visible patch changes the output."""
    enc = make().eval()
    images = _images(enc, 1)
    mask = torch.ones(1, enc.num_patches, dtype=torch.bool)
    mask[0, 1] = False  # only patch 1 visible
    changed = images + 3.0 * (~_pixel_mask(enc, mask))
    with torch.no_grad():
        assert not torch.allclose(enc(changed, mask), enc(images, mask))


@pytest.mark.parametrize("make", ENCODERS.values(), ids=ENCODERS.keys())
def test_stem_tokens_are_the_mask_token_exactly_where_hidden(make):
    enc = make()
    images = _images(enc, 2)
    mask = SimMIMRandomMasker(0.5)(2, enc.grid, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tokens = enc.masked_stem(images, mask)
        plain = enc.masked_stem(images, torch.zeros_like(mask))  # nothing hidden: the stem's own output
    channels_last = tokens.shape[-1] == enc.mask_token.numel()
    if not channels_last:  # ConvNeXt: NCHW -> NHWC
        tokens, plain = tokens.permute(0, 2, 3, 1), plain.permute(0, 2, 3, 1)
    hidden = upsample_mask(mask, enc.grid, (enc.mask_scale, enc.mask_scale))[:, 0]  # [B, H', W']
    assert tokens.shape[1:3] == hidden.shape[1:]
    token = enc.mask_token.reshape(-1)
    assert torch.equal(tokens[hidden], token.expand(int(hidden.sum()), -1))
    assert torch.equal(tokens[~hidden], plain[~hidden])


@pytest.mark.parametrize("make", ENCODERS.values(), ids=ENCODERS.keys())
def test_nothing_hidden_is_forward_features(make):
    enc = make().eval()
    images = _images(enc, 2)
    with torch.no_grad():
        torch.testing.assert_close(enc(images, torch.zeros(2, enc.num_patches, dtype=torch.bool)),
                                   enc.forward_features(images))


@pytest.mark.parametrize("make", ENCODERS.values(), ids=ENCODERS.keys())
def test_each_sample_uses_its_own_mask(make):
    """A batch with per-sample masks (of different counts) gives each sample what it gets alone."""
    enc = make().eval()
    images = _images(enc, 3)
    mask = RandomCountMasker()(3, enc.grid, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched = enc(images, mask)
        for i in range(3):
            torch.testing.assert_close(batched[i:i + 1], enc(images[i:i + 1], mask[i:i + 1]))


@pytest.mark.parametrize("make", ENCODERS.values(), ids=ENCODERS.keys())
def test_mask_token_is_trained(make):
    enc = make()
    mask = torch.ones(2, enc.num_patches, dtype=torch.bool)
    mask[:, 0] = False
    enc(_images(enc, 2), mask).square().mean().backward()
    assert enc.mask_token.grad is not None and enc.mask_token.grad.abs().sum() > 0
    assert "mask_token" in enc.no_weight_decay()


def test_swin_no_weight_decay_names_exist():
    enc = tiny_swin()
    names = dict(enc.named_parameters())
    nwd = enc.no_weight_decay()
    assert nwd <= set(names) and any("relative_position_bias_table" in n for n in nwd)


def test_swin_matches_timm_and_exports_to_it():
    """forward_features is timm's forward_features (flattened), and the state dict minus the mask token loads
    into the timm model strictly: a pre-trained encoder exports to timm as it is."""
    kwargs = dict(img_size=(32, 48), patch_size=2, window_size=2, in_chans=2, embed_dim=8, depths=(1, 1, 1),
                  num_heads=(1, 1, 1), drop_path_rate=0.0)
    enc = tiny_swin().eval()
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, **kwargs).eval()
    state = {k: v for k, v in enc.state_dict().items() if k != "mask_token"}
    ref.load_state_dict(state, strict=True)
    images = _images(enc, 2)
    with torch.no_grad():
        expected = ref.forward_features(images).flatten(1, 2)  # NHWC -> [B, N, D]
        torch.testing.assert_close(enc.forward_features(images), expected)


@pytest.mark.parametrize("name", ["convnext_atto", "convnext_tiny_hnf", "convnextv2_atto"])
def test_convnext_matches_timm_and_exports_to_it(name):
    kwargs = dict(in_chans=3, depths=(1, 1, 1, 1), dims=(8, 16, 16, 24))
    enc = SimMIMConvNeXtEncoder(name, img_size=(64, 96), **kwargs).eval()
    ref = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    ref.load_state_dict({k: v for k, v in enc.state_dict().items() if k != "mask_token"}, strict=True)
    images = _images(enc, 2)
    with torch.no_grad():
        reference = ref.forward_features(images)  # [B, D, h, w], before the head's norm
        tokens = enc.forward_features(images)  # [B, N, D], after it (per position)
    torch.testing.assert_close(enc.norm_pre(enc.stages(enc.stem(images))), reference)
    final = enc.head["norm"](reference) if "norm" in enc.head else reference
    torch.testing.assert_close(tokens, final.flatten(2).transpose(1, 2))


def test_dense_vit_hides_pixels_at_the_simmim_vit_mask_scale():
    """The ViT recipe's pairing (dense ViT, 2x2-cell mask patches): hidden pixels do not reach the output."""
    enc = maskkit.create("encoder", "vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=3, depth=1,
                         embed_dim=32, num_heads=2, dense=True).eval()
    mask = SimMIMRandomMasker(0.6, scale=2)(2, enc.grid, generator=torch.Generator().manual_seed(0))
    images = _images(enc, 2)
    changed = torch.where(_pixel_mask(enc, mask), torch.randn_like(images), images)
    with torch.no_grad():
        torch.testing.assert_close(enc(changed, mask), enc(images, mask), rtol=0, atol=0)


def test_non_square_grid_is_row_major():
    """Token ``i`` of the output belongs to patch ``(i // w, i % w)``: hide one patch and see where it shows."""
    enc = tiny_swin(depths=(1,), num_heads=(1,), window_size=1, stem_patch_size=8)  # 1 stage: no mixing
    assert enc.grid == (4, 6)
    images = _images(enc, 1)
    mask = torch.zeros(1, 24, dtype=torch.bool)
    mask[0, 7] = True  # row 1, column 1
    with torch.no_grad():
        diff = (enc(images, mask) - enc.forward_features(images)).abs().sum(-1)[0]  # [N]
    assert diff.nonzero().flatten().tolist() == [7]


@pytest.mark.parametrize("make, kwargs, key", [
    (tiny_swin, {"img_size": (36, 48)}, "img_size"),
    (tiny_convnext, {"img_size": 80}, "img_size"),
    (tiny_swin, {"patch_size": 4}, "patch_size"),
    (tiny_convnext, {"patch_size": 4}, "patch_size"),
    (tiny_swin, {"in_chans": 0}, "in_chans"),
])
def test_bad_arguments_name_the_key(make, kwargs, key):
    with pytest.raises(ConfigError) as info:
        make(**kwargs)
    assert info.value.key == key


def test_overlapping_stem_is_refused():
    with pytest.raises(ConfigError, match="overlapping stem"):
        SimMIMConvNeXtEncoder("convnext_atto_ols", img_size=64)


def test_wrong_mask_shape_is_an_error():
    enc = tiny_swin()
    with pytest.raises(ValueError, match="mask"):
        enc(_images(enc, 1), torch.zeros(1, enc.num_patches + 1, dtype=torch.bool))
