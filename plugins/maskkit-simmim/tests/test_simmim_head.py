"""SimMIM's linear head: the decoder contract, and that its per-patch layout is maskkit's patchify layout."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from maskkit.patches import patchify
from maskkit.testing import DecoderContract
from maskkit_simmim import SimMIMHead, pixel_shuffle_weight_to_patchify


class TestHeadDense(DecoderContract):
    sparse = False
    num_prefix_tokens = 0

    def make_decoder(self):
        return SimMIMHead(self.in_dim, self.grid, self.out_dim, self.num_prefix_tokens)


class TestHeadDenseWithCls(TestHeadDense):
    """A dense ViT's latent: the cls token comes first and is dropped."""

    num_prefix_tokens = 1


def test_prefix_tokens_are_ignored_and_each_token_predicts_its_own_patch():
    head = SimMIMHead(in_dim=6, grid=(2, 3), out_dim=4, num_prefix_tokens=2)
    latent = torch.randn(2, 2 + 6, 6)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    pred = head(latent, mask)
    changed = latent.clone()
    changed[:, :2] += 10.0  # prefix tokens
    changed[:, 2 + 4] += 1.0  # token of patch 4
    diff = (head(changed, mask) - pred).abs().sum(dim=(0, 2))  # [N]
    assert diff.nonzero().flatten().tolist() == [4]
    torch.testing.assert_close(pred, head.decoder_pred(latent[:, 2:]))


def test_sparse_latent_is_refused():
    head = SimMIMHead(in_dim=8, grid=(4, 4), out_dim=3, num_prefix_tokens=1)
    with pytest.raises(ValueError, match="dense encoder"):
        head(torch.randn(2, 1 + 4, 8), torch.zeros(2, 16, dtype=torch.bool))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.differing_executors])
@given(stride=st.integers(1, 4), in_chans=st.integers(1, 3), h=st.integers(1, 3), w=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1))
def test_official_conv_pixel_shuffle_head_equals_ours_in_patchify_order(stride, in_chans, h, w, seed):
    """The official head (1x1 conv + PixelShuffle) makes an image; patchify-ing that image gives exactly our
    head's output once its weights are converted: the layouts line up with the ``pixels`` target."""
    torch.manual_seed(seed)
    dim = 5
    conv = nn.Conv2d(dim, stride * stride * in_chans, kernel_size=1)
    official = nn.Sequential(conv, nn.PixelShuffle(stride))
    head = SimMIMHead(dim, (h, w), stride * stride * in_chans, num_prefix_tokens=0)
    weight, bias = pixel_shuffle_weight_to_patchify(conv.weight.data, conv.bias.data, stride, in_chans)
    head.decoder_pred.weight.data.copy_(weight)
    head.decoder_pred.bias.data.copy_(bias)
    feature_map = torch.randn(2, dim, h, w)  # [B, D, h, w]
    image = official(feature_map)  # [B, C, h * s, w * s]
    tokens = feature_map.flatten(2).transpose(1, 2)  # [B, N, D], row-major
    pred = head(tokens, torch.zeros(2, h * w, dtype=torch.bool))
    torch.testing.assert_close(pred, patchify(image, (stride, stride)))


def test_weight_conversion_checks_the_size():
    with pytest.raises(ValueError, match="output channels"):
        pixel_shuffle_weight_to_patchify(torch.zeros(10, 4, 1, 1), None, 2, 3)


def test_sparse_encoder_is_refused_at_build_time():
    import maskkit
    from maskkit.errors import ConfigError

    tree = {"masker": {"name": "random", "ratio": 0.6},
            "encoder": {"name": "vit_tiny_patch16_224", "img_size": 16, "patch_size": 4, "in_chans": 1,
                        "embed_dim": 32, "depth": 1, "num_heads": 2},
            "decoder": {"name": "simmim"}, "target": {"name": "pixels"}, "loss": {"name": "l1"},
            "data": {"name": "fashion_mnist"}}
    try:
        maskkit.build_model(maskkit.load_recipe(tree))
    except ConfigError as exc:
        assert str(exc).startswith("<recipe>: decoder.name: the simmim head needs a dense encoder")
    else:
        raise AssertionError("a sparse encoder with the simmim head must be refused")
