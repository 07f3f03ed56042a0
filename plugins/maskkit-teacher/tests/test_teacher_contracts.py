"""The shared maskkit contracts, for the teacher target and the linear head."""

import pytest
import torch
from teacher_helpers import tiny_encoder

from maskkit.testing import DecoderContract, TargetContract
from maskkit_teacher import LinearHead, TeacherTarget


class TestTeacherTarget(TargetContract):
    def make_target(self):
        return TeacherTarget(tiny_encoder(self.img_size, self.patch_size, self.in_chans), top_k=2)


class TestTeacherTargetRawAverage(TargetContract):
    """No normalization at all: the plain average of the top 3 block outputs."""

    def make_target(self):
        return TeacherTarget(tiny_encoder(self.img_size, self.patch_size, self.in_chans), top_k=3,
                             layer_norm=False, post_layer_norm=False)


class TestTeacherTargetRegisters(TargetContract):
    """cls + 4 register tokens (P = 5) are dropped; one channel, square image."""

    img_size = (12, 12)
    patch_size = (3, 3)
    in_chans = 1

    def make_target(self):
        enc = tiny_encoder(self.img_size, self.patch_size, self.in_chans, depth=2, reg_tokens=4)
        assert enc.num_prefix_tokens == 5
        return TeacherTarget(enc, top_k=1, post_layer_norm=True)


class TestLinearHead(DecoderContract):
    sparse = False

    def make_decoder(self):
        return LinearHead(self.in_dim, self.grid, self.out_dim, self.num_prefix_tokens)


class TestLinearHeadNoPrefix(TestLinearHead):
    num_prefix_tokens = 0


def test_linear_head_is_one_linear_map_of_the_patch_tokens():
    head = LinearHead(8, (2, 3), 5, num_prefix_tokens=1)
    assert [name for name, _ in head.named_parameters()] == ["lm_head.weight", "lm_head.bias"]
    assert float(head.lm_head.weight.detach().abs().max()) <= 0.02 and not head.lm_head.bias.detach().any()
    latent = torch.randn(2, 7, 8)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    expected = latent[:, 1:] @ head.lm_head.weight.T + head.lm_head.bias
    torch.testing.assert_close(head(latent, mask), expected)


def test_linear_head_refuses_a_sparse_latent():
    head = LinearHead(8, (2, 3), 5, num_prefix_tokens=1)
    with pytest.raises(ValueError, match="dense"):
        head(torch.randn(2, 1 + 3, 8), torch.zeros(2, 6, dtype=torch.bool))
