"""``maskkit.testing``'s contracts for context-aware and learnable maskers, run on the tests' own maskers, and
the plain messages every contract gives when it fails."""

from __future__ import annotations

import pytest
import torch
from context_maskers import HighVariance, Learned, OffByOne, OffByOneLooking, Predictor, Recording

from maskkit.builtin.masking import RandomMasker
from maskkit.testing import ContextMaskerContract, LearnableMaskerContract, LossContract, MaskerContract


class TestHighVariance(ContextMaskerContract):
    def make_masker(self):
        return HighVariance(0.75)


class TestRecording(ContextMaskerContract):
    def make_masker(self):
        return Recording(0.6)


class TestLearned(LearnableMaskerContract):
    def make_masker(self):
        return Learned(0.75, grid=(7, 7))


class TestPredictor(LearnableMaskerContract):
    def make_masker(self):
        return Predictor(0.5)


# -- failures read as plain messages ------------------------------------------------------------------------


def failure(test, **example) -> str:
    """The first line of the failure of contract test ``test`` (a bound method); a hypothesis test is run on
    the one ``example`` given (its inner test: no search, no shrinking)."""
    inner = getattr(getattr(test, "hypothesis", None), "inner_test", None)
    with pytest.raises(AssertionError) as info:
        inner(test.__self__, **example) if inner is not None else test()
    return str(info.value).splitlines()[0]


class Grid:
    """Stands for hypothesis' ``st.data()``: every draw is this grid."""

    def __init__(self, grid):
        self.grid = grid

    def draw(self, strategy):
        return self.grid


def test_a_wrong_count_says_what_was_declared_and_what_came():
    class Contract(MaskerContract):
        def make_masker(self):
            return OffByOne(0.75)

    assert failure(Contract().test_fixed_count_is_exact, data=Grid((7, 7)), b=3, seed=0) == (
        "hidden patches per sample on grid (7, 7) (num_hidden declares 37): expected 37 in every sample, got "
        "sample 0 hides 38")

    class Looking(ContextMaskerContract):
        def make_masker(self):
            return OffByOneLooking(0.75)

    assert failure(Looking().test_count_dtype_shape_on_real_images, b=3, seed=0, start=0) == \
        "masker OffByOneLooking: declared 37 hidden patches per sample, sample 0 hides 38"


def test_a_masker_ignoring_rows_fails_the_two_process_check():
    class IgnoresRows(RandomMasker):
        def __call__(self, batch_size, grid, *, generator=None, device=None, images):
            return super().__call__(batch_size, grid, generator=generator, device=device)

    class Contract(ContextMaskerContract):
        def make_masker(self):
            return IgnoresRows(0.75)

    assert failure(Contract().test_two_processes_draw_what_one_draws).startswith(
        "masks of rows 0:3 and 3:6 drawn apart (two processes): expected the masks of the 6 rows drawn at once "
        "(draw randomness with maskkit.masking.noise(rows=rows)), got masks differing in")


def test_a_masker_on_the_global_rng_fails():
    class GlobalRng(RandomMasker):
        def __call__(self, batch_size, grid, *, generator=None, device=None, images):
            return super().__call__(batch_size, grid, generator=None, device=device)

    class Contract(ContextMaskerContract):
        def make_masker(self):
            return GlobalRng(0.75)

    assert failure(Contract().test_uses_only_the_given_generator) == (
        "masks from the same generator seed under two global seeds: expected the same masks (randomness only from "
        "`generator`), got masks that depend on torch's global RNG")


def test_a_learnable_masker_without_aux_losses_is_told_why():
    class Untrained(Learned):
        aux_losses = None  # no auxiliary loss: its parameter can never train

    class Contract(LearnableMaskerContract):
        def make_masker(self):
            return Untrained(0.75, grid=(7, 7))

    assert failure(Contract().test_aux_losses_are_named_finite_scalars) == (
        "the masker's auxiliary losses (out.aux['masker.*']): expected at least one (its parameters train only "
        "through them), got keys []")


def test_a_masker_trained_by_the_reconstruction_loss_is_refused():
    class Leaky(Learned):
        def __init__(self, ratio):
            super().__init__(ratio, grid=(7, 7))
            self.scores.data.fill_(1.0)

        def aux_losses(self, *, patch_loss, mask, extras, pred):
            return {"fit": (self.scores[None] * pred.mean(-1)).mean()}  # reaches the decoder through pred

    class Contract(LearnableMaskerContract):
        def make_masker(self):
            return Leaky(0.75)

    message = failure(Contract().test_gradients_reach_only_what_should_train)
    assert message.startswith("gradients of the masker's auxiliary losses outside the masker: expected none, got [")


def test_a_loss_failure_is_a_plain_message():
    class Negative(torch.nn.Module):
        def forward(self, pred, target, mask):
            return -(pred - target).square().mean()

    class Contract(LossContract):
        def make_loss(self):
            return Negative()

    assert failure(Contract().test_scalar_finite_non_negative, b=2, n=5, d=3, seed=0).startswith(
        "loss value: expected finite and >= 0, got -")


def test_an_encoder_whose_prefix_attention_check_disagrees_fails():
    """``prefix_attention_unavailable`` is what maskers check when the model is built: one that says the weights
    are there while ``prefix_attention`` raises would let a recipe through that fails at the first step."""
    from maskkit.builtin.vit import TimmViTEncoder
    from maskkit.testing import EncoderContract

    class Optimistic(TimmViTEncoder):
        def prefix_attention(self, images):
            raise NotImplementedError("no attention in this configuration")

    class Contract(EncoderContract):
        def make_encoder(self):
            return Optimistic("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=3, depth=1, embed_dim=32,
                              num_heads=2)

    assert failure(Contract().test_prefix_attention_unavailable_says_why) == (
        "prefix_attention_unavailable(): expected None exactly when prefix_attention gives the weights, got None "
        "while prefix_attention raised: no attention in this configuration")


def test_a_check_model_returning_a_value_fails():
    """``check_model`` refuses by raising ConfigError; a returned value (say, False) would be ignored."""
    from context_maskers import NeedsTarget

    class ReturnsFalse(NeedsTarget):
        def check_model(self, model):
            return False

    class Contract(ContextMaskerContract):
        def make_masker(self):
            return ReturnsFalse(target="forward")

    assert failure(Contract().test_check_model_accepts_the_model) == (
        "check_model(model): expected None (refuse with maskkit.ConfigError), got False")
