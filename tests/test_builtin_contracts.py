"""Every built-in component passes the contract that plugin authors inherit."""

from maskkit.builtin import losses
from maskkit.builtin.decoder import MAEDecoder
from maskkit.builtin.masking import RandomMasker
from maskkit.builtin.targets import norm_pixels, pixels
from maskkit.builtin.vit import TimmViTEncoder
from maskkit.testing import DecoderContract, EncoderContract, LossContract, MaskerContract, TargetContract


class TestRandomMasker(MaskerContract):
    def make_masker(self):
        return RandomMasker(0.75)


class TestRandomMaskerLowRatio(MaskerContract):
    def make_masker(self):
        return RandomMasker(0.3)


class TestSparseViT(EncoderContract):
    def make_encoder(self):
        return TimmViTEncoder("vit_tiny_patch16_224", img_size=(16, 24), patch_size=4, in_chans=2, depth=2,
                              embed_dim=32, num_heads=2)


class TestDenseViT(EncoderContract):
    def make_encoder(self):
        return TimmViTEncoder("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=3, depth=1,
                              embed_dim=32, num_heads=2, dense=True)


class TestRegisterViT(EncoderContract):
    """A ViT with register tokens: prefix tokens are cls + 4 registers."""

    def make_encoder(self):
        return TimmViTEncoder("vit_tiny_patch16_224", reg_tokens=4, img_size=16, patch_size=4, in_chans=3, depth=1,
                              embed_dim=32, num_heads=2)


class TestMAEDecoder(DecoderContract):
    def make_decoder(self):
        return MAEDecoder(self.in_dim, self.grid, self.out_dim, self.num_prefix_tokens, embed_dim=16, depth=1,
                          num_heads=2)


class TestMAEDecoderDenseLatent(TestMAEDecoder):
    sparse = False
    num_prefix_tokens = 0


class TestPixels(TargetContract):
    def make_target(self):
        return pixels(self.patch_size, self.in_chans)


class TestNormPixels(TargetContract):
    def make_target(self):
        return norm_pixels(self.patch_size, self.in_chans)


class TestMSE(LossContract):
    def make_loss(self):
        return losses.MSELoss()


class TestMSEAllPatches(LossContract):
    def make_loss(self):
        return losses.MSELoss(include_visible=True)


class TestL1(LossContract):
    def make_loss(self):
        return losses.L1Loss()


class TestSmoothL1(LossContract):
    def make_loss(self):
        return losses.SmoothL1Loss(beta=0.5)


class TestCosine(LossContract):
    def make_loss(self):
        return losses.CosineLoss()


class TestPooledViTWithoutCls(EncoderContract):
    """No [CLS] token (mean-pooled ViT): no prefix attention, said plainly."""

    def make_encoder(self):
        return TimmViTEncoder("vit_tiny_patch16_224", class_token=False, img_size=16,
                              patch_size=4, in_chans=3, depth=1, embed_dim=32, num_heads=2)

    def test_no_prefix_attention(self):
        import pytest
        import torch

        enc = self.make_encoder()
        with pytest.raises(NotImplementedError, match="no \\[CLS\\] token"):
            enc.prefix_attention(torch.randn(1, 3, 16, 16))


class TestRegisterViTWithoutCls(EncoderContract):
    """Registers and no [CLS] token (timm's ``*_reg4_gap`` ViTs): a register is not a [CLS] token, so no
    prefix attention, said plainly."""

    def make_encoder(self):
        return TimmViTEncoder("vit_base_patch16_reg4_gap_256", img_size=28, patch_size=4, in_chans=1, embed_dim=32,
                              depth=1, num_heads=2)

    def test_no_prefix_attention(self):
        import pytest
        import torch

        enc = self.make_encoder()
        assert enc.cls_token is None and enc.num_prefix_tokens == 4
        with pytest.raises(NotImplementedError, match="no \\[CLS\\] token"):
            enc.prefix_attention(torch.randn(1, 1, 28, 28))
