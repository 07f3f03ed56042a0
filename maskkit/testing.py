"""Contract tests for plugin authors: subclass, say how to build your component, get the invariants checked.

::

    from maskkit.testing import MaskerContract

    class TestCheckerboard(MaskerContract):
        def make_masker(self):
            return Checkerboard()

Each contract is a pytest test class (its name does not start with ``Test``, so it is not collected by
itself). Properties are checked with hypothesis over batch sizes, grids and seeds. Every built-in component's
tests and every first-party plugin's tests inherit these classes.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskkit.interfaces import Decoder, Encoder, Loss, Masker, Target

_settings = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                             HealthCheck.differing_executors])
grids = st.tuples(st.integers(2, 16), st.integers(2, 16))
seeds = st.integers(0, 2**31 - 1)
batch_sizes = st.integers(1, 9)


class MaskerContract:
    """Invariants of every :class:`~maskkit.Masker`. Override :meth:`make_masker`; optionally ``grids``, and
    ``deterministic = True`` for a masker that draws nothing at random (MAE's grid masking)."""

    grids = grids
    deterministic = False

    def make_masker(self) -> Masker:
        raise NotImplementedError

    def _mask(self, masker, b, grid, seed, device="cpu"):
        gen = torch.Generator(device=device).manual_seed(seed)
        return masker(b, grid, generator=gen, device=device)

    def test_is_a_masker(self):
        assert isinstance(self.make_masker(), Masker)

    @_settings
    @given(data=st.data(), b=batch_sizes, seed=seeds)
    def test_shape_dtype_device(self, data, b, seed):
        grid = data.draw(self.grids)
        mask = self._mask(self.make_masker(), b, grid, seed)
        assert mask.shape == (b, grid[0] * grid[1])
        assert mask.dtype == torch.bool
        assert mask.device.type == "cpu"

    @_settings
    @given(data=st.data(), b=batch_sizes, seed=seeds)
    def test_fixed_count_is_exact(self, data, b, seed):
        grid = data.draw(self.grids)
        masker = self.make_masker()
        mask = self._mask(masker, b, grid, seed)
        expected = masker.num_hidden(grid)
        if expected is not None:
            assert 0 < expected < grid[0] * grid[1], "a fixed-count masker must hide some and show some patches"
            assert mask.sum(dim=1).tolist() == [expected] * b
        else:
            assert bool(mask.any(dim=1).all()), "every sample must hide at least one patch"
            assert not bool(mask.all(dim=1).any()), "every sample must show at least one patch"

    @_settings
    @given(data=st.data(), b=batch_sizes, seed=seeds)
    def test_deterministic_from_seed(self, data, b, seed):
        grid = data.draw(self.grids)
        masker = self.make_masker()
        assert torch.equal(self._mask(masker, b, grid, seed), self._mask(masker, b, grid, seed))

    def test_seed_changes_mask(self):
        if self.deterministic:
            return
        masker = self.make_masker()
        masks = {tuple(self._mask(masker, 4, (14, 14), seed).flatten().tolist()) for seed in range(5)}
        assert len(masks) > 1

    def test_samples_differ(self):
        """Samples of one batch get different masks (unless the masker is deterministic)."""
        if self.deterministic:
            return
        mask = self._mask(self.make_masker(), 16, (14, 14), 0)
        assert len({tuple(row.tolist()) for row in mask}) > 1

    def test_uses_only_the_given_generator(self):
        masker = self.make_masker()
        torch.manual_seed(0)
        first = self._mask(masker, 4, (8, 8), 123)
        torch.manual_seed(1)
        second = self._mask(masker, 4, (8, 8), 123)
        assert torch.equal(first, second), "the mask depends on the global RNG, not only on the generator"


class EncoderContract:
    """Invariants of every :class:`~maskkit.Encoder`. Override :meth:`make_encoder` (small, for speed) and,
    if needed, :meth:`make_mask`."""

    def make_encoder(self) -> Encoder:
        raise NotImplementedError

    def make_mask(self, batch_size: int, grid, seed: int) -> torch.Tensor:
        from maskkit.builtin.masking import RandomMasker

        return RandomMasker(0.75)(batch_size, grid, generator=torch.Generator().manual_seed(seed))

    def _images(self, enc, b, seed=0, dtype=torch.float32):
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(b, enc.in_chans, *enc.img_size, generator=gen, dtype=dtype)

    def test_attributes(self):
        enc = self.make_encoder()
        assert isinstance(enc, Encoder)
        assert enc.grid == (enc.img_size[0] // enc.patch_size[0], enc.img_size[1] // enc.patch_size[1])
        assert isinstance(enc.sparse, bool) and enc.embed_dim > 0 and enc.num_prefix_tokens >= 0

    def test_export_leaves_out_pretraining_only_weights(self):
        enc = self.make_encoder()
        full, exported = enc.state_dict(), enc.export_state_dict()
        assert exported and set(exported) <= set(full)
        assert not any(k.split(".")[0] in enc.PRETRAINING_ONLY for k in exported)
        assert all(torch.equal(v, full[k]) for k, v in exported.items())

    @settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.differing_executors])
    @given(b=st.integers(1, 4), seed=seeds)
    def test_output_shape(self, b, seed):
        enc = self.make_encoder()
        mask = self.make_mask(b, enc.grid, seed)
        out = enc(self._images(enc, b, seed), mask)
        n = enc.num_patches
        tokens = n - int(mask[0].sum()) if enc.sparse else n
        assert out.shape == (b, enc.num_prefix_tokens + tokens, enc.embed_dim)
        assert torch.isfinite(out).all()

    def test_features_shape(self):
        enc = self.make_encoder()
        out = enc.forward_features(self._images(enc, 2))
        assert out.shape == (2, enc.num_prefix_tokens + enc.num_patches, enc.embed_dim)

    def test_samples_independent(self):
        """Changing one sample of the batch leaves the others' outputs unchanged."""
        enc = self.make_encoder().eval()
        images = self._images(enc, 3)
        mask = self.make_mask(3, enc.grid, 0)
        before = enc(images, mask)
        images[1] = images[1] + 1.0
        after = enc(images, mask)
        torch.testing.assert_close(before[[0, 2]], after[[0, 2]])

    def test_gradients_flow(self):
        enc = self.make_encoder()
        enc(self._images(enc, 2), self.make_mask(2, enc.grid, 0)).square().mean().backward()
        grads = [p.grad for p in enc.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


class DecoderContract:
    """Invariants of every :class:`~maskkit.Decoder`. Override :meth:`make_decoder` and set ``in_dim``,
    ``grid``, ``out_dim``, ``num_prefix_tokens`` as class attributes matching it."""

    in_dim = 32
    grid = (4, 6)
    out_dim = 12
    num_prefix_tokens = 1
    sparse = True

    def make_decoder(self) -> Decoder:
        raise NotImplementedError

    def _inputs(self, b, seed=0):
        gen = torch.Generator().manual_seed(seed)
        n = self.grid[0] * self.grid[1]
        order = torch.rand(b, n, generator=gen).argsort(dim=1)
        mask = torch.zeros(b, n, dtype=torch.bool).scatter_(1, order[:, : n // 2], True)
        tokens = n - n // 2 if self.sparse else n
        latent = torch.randn(b, self.num_prefix_tokens + tokens, self.in_dim, generator=gen)
        return latent, mask

    @settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.differing_executors])
    @given(b=st.integers(1, 4), seed=seeds)
    def test_output_shape_and_finite(self, b, seed):
        dec = self.make_decoder()
        assert isinstance(dec, Decoder)
        latent, mask = self._inputs(b, seed)
        pred = dec(latent, mask)
        assert pred.shape == (b, self.grid[0] * self.grid[1], self.out_dim)
        assert torch.isfinite(pred).all()

    def test_gradients_reach_latent(self):
        dec = self.make_decoder()
        latent, mask = self._inputs(2)
        latent.requires_grad_(True)
        dec(latent, mask).square().mean().backward()
        assert latent.grad is not None and latent.grad.abs().sum() > 0

    def test_dtype_follows_input(self):
        dec = self.make_decoder().double()
        latent, mask = self._inputs(2)
        assert dec(latent.double(), mask).dtype == torch.float64


class TargetContract:
    """Invariants of every :class:`~maskkit.Target`. Override :meth:`make_target`; set ``img_size``,
    ``patch_size``, ``in_chans`` to match it."""

    img_size = (16, 24)
    patch_size = (4, 4)
    in_chans = 3

    def make_target(self) -> Target:
        raise NotImplementedError

    def _images(self, b, seed=0):
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(b, self.in_chans, *self.img_size, generator=gen)

    @settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.differing_executors])
    @given(b=st.integers(1, 4), seed=seeds)
    def test_shape_and_finite(self, b, seed):
        target = self.make_target()
        assert isinstance(target, Target) and target.dim > 0
        out = target(self._images(b, seed))
        n = (self.img_size[0] // self.patch_size[0]) * (self.img_size[1] // self.patch_size[1])
        assert out.shape == (b, n, target.dim)
        assert torch.isfinite(out).all()

    def test_no_gradient_into_target(self):
        images = self._images(2).requires_grad_(True)
        out = self.make_target()(images)
        assert not out.requires_grad

    def test_deterministic_and_per_sample(self):
        target = self.make_target()
        images = self._images(3)
        first = target(images)
        torch.testing.assert_close(first, target(images))
        torch.testing.assert_close(first[1:2], target(images[1:2]))

    def test_dtype_follows_input(self):
        out = self.make_target()(self._images(2).double())
        assert out.dtype == torch.float64


class LossContract:
    """Invariants of every :class:`~maskkit.Loss`. Override :meth:`make_loss`."""

    def make_loss(self) -> Loss:
        raise NotImplementedError

    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.differing_executors])
    @given(b=st.integers(1, 4), n=st.integers(2, 20), d=st.integers(1, 8), seed=seeds)
    def test_scalar_finite_non_negative(self, b, n, d, seed):
        gen = torch.Generator().manual_seed(seed)
        pred, target = torch.randn(b, n, d, generator=gen), torch.randn(b, n, d, generator=gen)
        mask = torch.rand(b, n, generator=gen) < 0.5
        mask[:, 0] = True
        loss = self.make_loss()(pred, target, mask)
        assert loss.shape == () and torch.isfinite(loss) and loss >= 0

    def test_zero_at_target(self):
        target = torch.randn(2, 10, 6)
        mask = torch.ones(2, 10, dtype=torch.bool)
        assert float(self.make_loss()(target.clone(), target, mask)) < 1e-6

    def test_visible_patches_do_not_count(self):
        """Changing the prediction on visible patches leaves the loss unchanged (unless configured otherwise)."""
        loss_fn = self.make_loss()
        if getattr(loss_fn, "include_visible", False):
            return
        gen = torch.Generator().manual_seed(0)
        pred, target = torch.randn(2, 10, 6, generator=gen), torch.randn(2, 10, 6, generator=gen)
        mask = torch.zeros(2, 10, dtype=torch.bool)
        mask[:, :5] = True
        changed = pred.clone()
        changed[:, 5:] += 3.0
        torch.testing.assert_close(loss_fn(pred, target, mask), loss_fn(changed, target, mask))

    def test_gradient_flows_to_pred(self):
        pred = torch.randn(2, 10, 6, requires_grad=True)
        self.make_loss()(pred, torch.randn(2, 10, 6), torch.ones(2, 10, dtype=torch.bool)).backward()
        assert pred.grad is not None and pred.grad.abs().sum() > 0
