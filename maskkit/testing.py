"""Contract tests for plugin authors: subclass, say how to build your component, get the invariants checked.

::

    from maskkit.testing import MaskerContract

    class TestCheckerboard(MaskerContract):
        def make_masker(self):
            return Checkerboard()

Each contract is a pytest test class (its name does not start with ``Test``, so it is not collected by
itself). Properties are checked with hypothesis over batch sizes, grids and seeds. Every built-in component's
tests and every first-party plugin's tests inherit these classes.

A masker that asks for context (``images``, ``model``...: masker contract v2) inherits
:class:`ContextMaskerContract` instead of :class:`MaskerContract`; one with parameters or buffers inherits
:class:`LearnableMaskerContract`. Both draw on real images (the embedded Fashion-MNIST) through a small MAE
built around the masker (override ``make_model`` for another).

A failed check says what was expected and what came back, as a plain message (pytest does not rewrite the
``assert`` statements of an installed module, so these raise ``AssertionError`` with the message themselves).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskkit.errors import MaskError
from maskkit.interfaces import Decoder, Encoder, Loss, Masker, Target, masker_context

_settings = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                             HealthCheck.differing_executors])
grids = st.tuples(st.integers(2, 16), st.integers(2, 16))
seeds = st.integers(0, 2**31 - 1)
batch_sizes = st.integers(1, 9)


def expect(ok: Any, what: str, expected: Any, got: Any) -> None:
    """Raise ``AssertionError("WHAT: expected EXPECTED, got GOT")`` unless ``ok``: a contract failure that
    reads the same whether or not pytest rewrote the assertion."""
    if not ok:
        raise AssertionError(f"{what}: expected {expected}, got {got}")


def _shape(x: Any) -> Any:
    return list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_counts(masker: Masker, mask: torch.Tensor, grid) -> None:
    """The declared count in every sample, or (count varies) at least one hidden and one shown patch."""
    n = grid[0] * grid[1]
    expected = masker.num_hidden(grid)
    counts = mask.sum(dim=1).tolist()
    if expected is not None:
        expect(0 < expected < n, f"num_hidden({grid}) of a fixed-count masker", f"between 1 and {n - 1}", expected)
        wrong = [i for i, c in enumerate(counts) if c != expected]
        expect(not wrong, f"hidden patches per sample on grid {grid} (num_hidden declares {expected})",
               f"{expected} in every sample", f"sample {wrong[0]} hides {counts[wrong[0]]}" if wrong else "")
    else:
        expect(min(counts) > 0, "hidden patches per sample", "at least 1", f"counts {counts}")
        expect(max(counts) < n, "hidden patches per sample", f"at most {n - 1} (some shown)", f"counts {counts}")


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
        masker = self.make_masker()
        expect(isinstance(masker, Masker), "make_masker()", "a maskkit.Masker instance", type(masker).__name__)

    @_settings
    @given(data=st.data(), b=batch_sizes, seed=seeds)
    def test_shape_dtype_device(self, data, b, seed):
        grid = data.draw(self.grids)
        mask = self._mask(self.make_masker(), b, grid, seed)
        expect(isinstance(mask, torch.Tensor), "the mask", "a torch.Tensor", type(mask).__name__)
        expect(tuple(mask.shape) == (b, grid[0] * grid[1]), f"mask shape for batch {b} on grid {grid}",
               [b, grid[0] * grid[1]], _shape(mask))
        expect(mask.dtype == torch.bool, "mask dtype", torch.bool, mask.dtype)
        expect(mask.device.type == "cpu", "mask device (device='cpu' was asked)", "cpu", mask.device)

    @_settings
    @given(data=st.data(), b=batch_sizes, seed=seeds)
    def test_fixed_count_is_exact(self, data, b, seed):
        grid = data.draw(self.grids)
        masker = self.make_masker()
        mask = self._mask(masker, b, grid, seed)
        _check_counts(masker, mask, grid)

    @_settings
    @given(data=st.data(), b=batch_sizes, seed=seeds)
    def test_deterministic_from_seed(self, data, b, seed):
        grid = data.draw(self.grids)
        masker = self.make_masker()
        first, second = self._mask(masker, b, grid, seed), self._mask(masker, b, grid, seed)
        expect(torch.equal(first, second), f"two draws with seed {seed} (batch {b}, grid {grid})", "the same masks",
               f"masks differing in {int((first != second).sum())} entries")

    def test_seed_changes_mask(self):
        if self.deterministic:
            return
        masker = self.make_masker()
        masks = {tuple(self._mask(masker, 4, (14, 14), seed).flatten().tolist()) for seed in range(5)}
        expect(len(masks) > 1, "masks of seeds 0-4 (set deterministic = True for a masker that draws nothing)",
               "some difference", "five identical draws")

    def test_samples_differ(self):
        """Samples of one batch get different masks (unless the masker is deterministic)."""
        if self.deterministic:
            return
        mask = self._mask(self.make_masker(), 16, (14, 14), 0)
        distinct = len({tuple(row.tolist()) for row in mask})
        expect(distinct > 1, "distinct masks among 16 samples of one batch", "more than 1", distinct)

    def test_uses_only_the_given_generator(self):
        masker = self.make_masker()
        torch.manual_seed(0)
        first = self._mask(masker, 4, (8, 8), 123)
        torch.manual_seed(1)
        second = self._mask(masker, 4, (8, 8), 123)
        expect(torch.equal(first, second), "masks from the same generator seed under two global seeds",
               "the same masks (randomness only from `generator`)", "masks that depend on torch's global RNG")


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
        expect(isinstance(enc, Encoder), "make_encoder()", "a maskkit.Encoder", type(enc).__name__)
        grid = (enc.img_size[0] // enc.patch_size[0], enc.img_size[1] // enc.patch_size[1])
        expect(enc.grid == grid, "encoder.grid (img_size // patch_size)", grid, enc.grid)
        expect(isinstance(enc.sparse, bool), "encoder.sparse", "a bool", enc.sparse)
        expect(enc.embed_dim > 0 and enc.num_prefix_tokens >= 0, "embed_dim, num_prefix_tokens",
               "> 0 and >= 0", (enc.embed_dim, enc.num_prefix_tokens))

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
        expected = [b, enc.num_prefix_tokens + tokens, enc.embed_dim]
        expect(list(out.shape) == expected, f"encoder output ({'sparse' if enc.sparse else 'dense'})", expected,
               _shape(out))
        expect(bool(torch.isfinite(out).all()), "encoder output", "finite values", "NaN or inf")

    def test_features_shape(self):
        enc = self.make_encoder()
        out = enc.forward_features(self._images(enc, 2))
        expected = [2, enc.num_prefix_tokens + enc.num_patches, enc.embed_dim]
        expect(list(out.shape) == expected, "forward_features output", expected, _shape(out))

    def test_prefix_attention_when_given(self):
        """An encoder that gives its [CLS] attention (``prefix_attention``) gives softmax weights over the
        patches, ``[B, heads, N]``, each row summing to at most 1; one without a [CLS] token gives none."""
        enc = self.make_encoder().eval()
        try:
            weights = enc.prefix_attention(self._images(enc, 2))
        except NotImplementedError:
            return  # optional
        expect(enc.num_prefix_tokens >= 1, "prefix_attention", "NotImplementedError without a prefix token",
               "weights")
        expect(weights.dim() == 3 and list(weights.shape[::2]) == [2, enc.num_patches],
               "prefix_attention output", f"[2, heads, {enc.num_patches}]", _shape(weights))
        sums = weights.sum(-1)
        expect(bool((weights >= 0).all() and (sums <= 1 + 1e-5).all() and (sums > 0).all()),
               "prefix_attention rows", "non-negative weights summing to at most 1", f"sums {sums.tolist()}")
        expect(not weights.requires_grad, "prefix_attention output", "no gradient", "requires_grad=True")

    def test_prefix_attention_unavailable_says_why(self):
        """``prefix_attention_unavailable()`` (what maskers check when the model is built) agrees with
        ``prefix_attention``: ``None`` when it gives the weights, else the one-line reason it raises for."""
        enc = self.make_encoder().eval()
        reason = enc.prefix_attention_unavailable()
        expect(reason is None or (isinstance(reason, str) and reason and "\n" not in reason),
               "prefix_attention_unavailable()", "None or a one-line reason", repr(reason))
        try:
            enc.prefix_attention(self._images(enc, 2))
            given = None
        except NotImplementedError as exc:
            given = str(exc) or type(exc).__name__
        expect((reason is None) == (given is None), "prefix_attention_unavailable()",
               "None exactly when prefix_attention gives the weights",
               f"{reason!r} while prefix_attention {'raised: ' + given if given else 'gave the weights'}")

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
        expect(bool(grads), "trainable encoder parameters", "some", "none")
        missing = sum(g is None for g in grads)
        expect(missing == 0, "encoder parameters without a gradient", 0, missing)
        expect(all(bool(torch.isfinite(g).all()) for g in grads), "encoder gradients", "finite", "NaN or inf")
        expect(any(bool(g.abs().sum() > 0) for g in grads), "encoder gradients", "some non-zero", "all zero")


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
        expect(isinstance(dec, Decoder), "make_decoder()", "a maskkit.Decoder", type(dec).__name__)
        latent, mask = self._inputs(b, seed)
        pred = dec(latent, mask)
        expected = [b, self.grid[0] * self.grid[1], self.out_dim]
        expect(list(pred.shape) == expected, "decoder predictions", expected, _shape(pred))
        expect(bool(torch.isfinite(pred).all()), "decoder predictions", "finite values", "NaN or inf")

    def test_gradients_reach_latent(self):
        dec = self.make_decoder()
        latent, mask = self._inputs(2)
        latent.requires_grad_(True)
        dec(latent, mask).square().mean().backward()
        expect(latent.grad is not None and bool(latent.grad.abs().sum() > 0), "gradient reaching the latent",
               "non-zero", "none" if latent.grad is None else "all zero")

    def test_dtype_follows_input(self):
        dec = self.make_decoder().double()
        latent, mask = self._inputs(2)
        dtype = dec(latent.double(), mask).dtype
        expect(dtype == torch.float64, "prediction dtype for a float64 decoder and latent", torch.float64, dtype)


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
        expect(isinstance(target, Target), "make_target()", "a maskkit.Target", type(target).__name__)
        expect(target.dim > 0, "target.dim", "> 0", target.dim)
        out = target(self._images(b, seed))
        n = (self.img_size[0] // self.patch_size[0]) * (self.img_size[1] // self.patch_size[1])
        expect(list(out.shape) == [b, n, target.dim], "target output", [b, n, target.dim], _shape(out))
        expect(bool(torch.isfinite(out).all()), "target output", "finite values", "NaN or inf")

    def test_no_gradient_into_target(self):
        images = self._images(2).requires_grad_(True)
        out = self.make_target()(images)
        expect(not out.requires_grad, "target output requires_grad", False, out.requires_grad)

    def test_deterministic_and_per_sample(self):
        target = self.make_target()
        images = self._images(3)
        first = target(images)
        expect(torch.allclose(first, target(images)), "two targets of the same images", "the same", "different")
        expect(torch.allclose(first[1:2], target(images[1:2]), atol=1e-6), "sample 1's target alone and in a batch",
               "the same (per-sample targets)", "different")

    def test_dtype_follows_input(self):
        out = self.make_target()(self._images(2).double())
        expect(out.dtype == torch.float64, "target dtype for float64 images", torch.float64, out.dtype)


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
        expect(loss.shape == (), "loss shape", "a scalar []", _shape(loss))
        expect(bool(torch.isfinite(loss)) and float(loss) >= 0, "loss value", "finite and >= 0", float(loss))

    def test_zero_at_target(self):
        target = torch.randn(2, 10, 6)
        mask = torch.ones(2, 10, dtype=torch.bool)
        value = float(self.make_loss()(target.clone(), target, mask))
        expect(value < 1e-6, "loss of a prediction equal to the target", "0", value)

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
        before, after = loss_fn(pred, target, mask), loss_fn(changed, target, mask)
        expect(torch.allclose(before, after), "loss after changing visible patches' predictions",
               f"unchanged ({float(before):.6g})", f"{float(after):.6g}")

    def test_gradient_flows_to_pred(self):
        pred = torch.randn(2, 10, 6, requires_grad=True)
        self.make_loss()(pred, torch.randn(2, 10, 6), torch.ones(2, 10, dtype=torch.bool)).backward()
        expect(pred.grad is not None and bool(pred.grad.abs().sum() > 0), "gradient reaching the prediction",
               "non-zero", "none" if pred.grad is None else "all zero")


# -- masker contract v2: maskers that look at the images or the model, and maskers that learn ----------------


@functools.lru_cache(maxsize=1)
def _fashion_train_images() -> torch.Tensor:
    from maskkit.data.fashion_mnist import FashionMNIST

    return FashionMNIST("train", source="embedded").images  # uint8 [N, 1, 28, 28], read once


def embedded_images(batch_size: int, start: int = 0) -> torch.Tensor:
    """``batch_size`` real images ``[B, 1, 28, 28]``, normalised (a new tensor): the embedded Fashion-MNIST
    training set from image ``start`` on (no download)."""
    images = _fashion_train_images()[start:start + batch_size].float() / 255.0
    return (images - 0.2860) / 0.3530


def small_model(masker: Masker, *, patch_size: int = 4) -> Any:
    """A small MAE around ``masker`` for 28x28 one-channel images (grid ``(28 // patch_size,) * 2``): a 1-block
    ViT of width 32, a 1-block decoder, pixel targets, MSE. Built from the built-in components."""
    from maskkit.builder import build_model
    from maskkit.model import MaskedModel
    from maskkit.recipe import Recipe
    from maskkit.registry import Registry

    tree = {"data": {"name": "fashion_mnist", "source": "embedded"}, "masker": {"name": "random"},
            "encoder": {"name": "vit_tiny_patch16_224", "img_size": 28, "patch_size": patch_size, "in_chans": 1,
                        "embed_dim": 32, "depth": 1, "num_heads": 2},
            "decoder": {"name": "mae", "embed_dim": 16, "depth": 1, "num_heads": 2},
            "target": {"name": "pixels"}, "loss": {"name": "mse"}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = build_model(Recipe(tree, "maskkit.testing"), Registry.from_plugins(autoload=False))
    return MaskedModel(masker, base.encoder, base.decoder, base.target, base.loss,
                       masker_name=type(masker).__name__)


def _draw(model, images: torch.Tensor, seed: int, *, rows: slice | None = None, step: int = 0):
    """The model's masker drawn on ``images`` with a generator of ``seed``; a wrong mask fails as a contract
    failure (the :class:`~maskkit.errors.MaskError` message, which says what was declared and what came)."""
    gen = torch.Generator().manual_seed(seed)
    try:
        return model.draw(images.shape[0], gen, images.device, images=images, rows=rows, step=step,
                          epoch=float(step))
    except MaskError as exc:
        raise AssertionError(str(exc)) from None


class ContextMaskerContract:
    """Invariants of a masker that asks for context (``images``, ``model``, ``step``...): override
    :meth:`make_masker`; optionally :meth:`make_model` (a :class:`~maskkit.MaskedModel` around the masker:
    :func:`small_model` by default, 7x7 patches of 28x28 Fashion-MNIST) and :meth:`images`.

    ``rows_invariant = False`` for a masker whose masks of a sample depend on the other samples of the batch
    (then two processes with batch B cannot draw what one process with batch 2B draws: say so in its docs;
    the test is skipped with that reason).
    """

    rows_invariant = True

    def make_masker(self) -> Masker:
        raise NotImplementedError

    def make_model(self, masker: Masker):
        return small_model(masker)

    def images(self, batch_size: int, start: int = 0) -> torch.Tensor:
        return embedded_images(batch_size, start)

    def _model(self):
        return self.make_model(self.make_masker())

    def test_check_model_accepts_the_model(self):
        """``check_model`` (optional: :meth:`maskkit.Masker.check_model`, called when the model is built) accepts
        the model this contract draws with, and returns nothing."""
        model = self._model()
        check = getattr(model.masker, "check_model", None)
        if check is not None:
            result = check(model)
            expect(result is None, "check_model(model)", "None (refuse with maskkit.ConfigError)", repr(result))

    def test_context_names_are_known(self):
        masker = self.make_masker()
        try:
            names = masker_context(masker)
        except Exception as exc:  # noqa: BLE001 - the ConfigError's one line is the message
            raise AssertionError(f"masker_context(masker): expected names from MASKER_CONTEXT, got: {exc}") from None
        expect(isinstance(masker, Masker), "make_masker()", "a maskkit.Masker instance", type(masker).__name__)
        expect(names, "the context the masker names", "at least one name (else inherit MaskerContract)", "none")

    @settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.differing_executors])
    @given(b=st.integers(1, 6), seed=seeds, start=st.integers(0, 90))
    def test_count_dtype_shape_on_real_images(self, b, seed, start):
        model = self._model()
        mask = _draw(model, self.images(b, start), seed).mask
        n = model.encoder.num_patches
        expect(tuple(mask.shape) == (b, n) and mask.dtype == torch.bool, "the mask", f"bool [{b}, {n}]",
               f"{mask.dtype} {_shape(mask)}")
        _check_counts(model.masker, mask, model.grid)
        expect(not mask.requires_grad, "mask.requires_grad", False, True)

    @settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.differing_executors])
    @given(seed=seeds)
    def test_same_images_and_seed_give_the_same_masks(self, seed):
        model = self._model()
        images = self.images(4)
        first, second = _draw(model, images, seed).mask, _draw(model, images, seed).mask
        expect(torch.equal(first, second), f"two draws on the same images with seed {seed}", "the same masks",
               f"masks differing in {int((first != second).sum())} entries")

    def test_uses_only_the_given_generator(self):
        model = self._model()
        images = self.images(4)
        torch.manual_seed(0)
        first = _draw(model, images, 123).mask
        torch.manual_seed(1)
        second = _draw(model, images, 123).mask
        expect(torch.equal(first, second), "masks from the same generator seed under two global seeds",
               "the same masks (randomness only from `generator`)", "masks that depend on torch's global RNG")

    def test_two_processes_draw_what_one_draws(self):
        """Rows ``0:B`` and ``B:2B`` drawn apart (as two processes with batch B do, from the same generator)
        are the masks of the whole batch of 2B drawn at once: what :func:`maskkit.masking.noise` gives."""
        import pytest

        if not self.rows_invariant:
            pytest.skip("rows_invariant = False: this masker's masks depend on the rest of the batch")
        model = self._model()
        images = self.images(6)
        whole = _draw(model, images, 5).mask
        halves = torch.cat([_draw(model, images[:3], 5, rows=slice(0, 3)).mask,
                            _draw(model, images[3:], 5, rows=slice(3, 6)).mask])
        expect(torch.equal(whole, halves), "masks of rows 0:3 and 3:6 drawn apart (two processes)",
               "the masks of the 6 rows drawn at once (draw randomness with maskkit.masking.noise(rows=rows))",
               f"masks differing in {int((whole != halves).sum())} entries")


class LearnableMaskerContract(ContextMaskerContract):
    """Invariants of a masker with parameters or buffers (an ``nn.Module``), on top of
    :class:`ContextMaskerContract`: its parameters get a gradient from its own auxiliary losses and none from the
    reconstruction loss through the (discrete) mask; the encoder gets none through the masking; its state
    round-trips through a checkpoint file and gives the same masks after."""

    def _step(self, model, images, seed=0):
        gen = torch.Generator().manual_seed(seed)
        try:
            return model(images, generator=gen)
        except MaskError as exc:
            raise AssertionError(str(exc)) from None

    def test_is_a_module_with_state(self):
        masker = self.make_masker()
        expect(isinstance(masker, torch.nn.Module), "make_masker()", "an nn.Module (subclass Masker and nn.Module)",
               type(masker).__name__)
        state = masker.state_dict()
        expect(len(state) > 0, "the masker's state_dict", "parameters or buffers", "nothing")

    def test_aux_losses_are_named_finite_scalars(self):
        model = self._model()
        out = self._step(model, self.images(4))
        mine = {k: v for k, v in out.aux.items() if k.startswith("masker.")}
        trainable = [p for p in model.masker.parameters() if p.requires_grad]
        if trainable:
            expect(mine, "the masker's auxiliary losses (out.aux['masker.*'])",
                   "at least one (its parameters train only through them)", f"keys {sorted(out.aux)}")
        for key, value in mine.items():
            expect(value.shape == () and bool(torch.isfinite(value)), f"out.aux[{key!r}]", "a finite scalar",
                   f"{_shape(value)} {value.detach().flatten()[:3].tolist()}")
        torch.testing.assert_close(out.loss, out.main_loss + sum(v.float() for v in out.aux.values()))

    def test_gradients_reach_only_what_should_train(self):
        model = self._model()
        out = self._step(model, self.images(4))
        masker_params = {n: p for n, p in model.masker.named_parameters() if p.requires_grad}
        aux = sum((v for k, v in out.aux.items() if k.startswith("masker.")), torch.zeros(()))
        if aux.requires_grad:
            aux.backward(retain_graph=True)
        others = {f"{name}.{n}": p for name in ("encoder", "decoder") for n, p in
                  getattr(model, name).named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
        expect(not others, "gradients of the masker's auxiliary losses outside the masker", "none",
               f"{sorted(others)[:4]}")
        if masker_params:
            reached = [n for n, p in masker_params.items() if p.grad is not None and bool(p.grad.abs().sum() > 0)]
            expect(reached, "masker parameters with a gradient from its auxiliary losses", "at least one",
                   f"none of {sorted(masker_params)[:4]}")
            expect(all(bool(torch.isfinite(p.grad).all()) for p in masker_params.values() if p.grad is not None),
                   "masker gradients", "finite", "NaN or inf")
        model.zero_grad(set_to_none=True)
        out.main_loss.backward()
        leaked = [n for n, p in masker_params.items() if p.grad is not None and bool(p.grad.abs().sum() > 0)]
        expect(not leaked, "masker parameters with a gradient from the reconstruction loss", "none (the mask is "
               "discrete: train the masker through aux_losses)", leaked[:4])

    def test_state_round_trips_through_a_checkpoint(self, tmp_path):
        """Train one step, save the model's state with maskkit's checkpoint writer, load it into a fresh model:
        the same masker state and the same masks."""
        from maskkit.engine.checkpoint import read_checkpoint, save_atomic
        from maskkit.engine.optim import make_optimizer

        model = self._model()
        images = self.images(4)
        optimizer = make_optimizer(model, lr=1e-2, weight_decay=0.05, betas=(0.9, 0.95), device=torch.device("cpu"))
        self._step(model, images).loss.backward()
        optimizer.step()
        path = save_atomic({"model": model.state_dict()}, tmp_path / "masker.pth")
        fresh = self._model()
        fresh.load_state_dict(read_checkpoint(path)["model"])
        for key, value in model.masker.state_dict().items():
            other = fresh.masker.state_dict()[key]
            expect(torch.equal(value, other), f"masker.{key} after a checkpoint round trip", "the saved value",
                   "a different value")
        first, second = _draw(model, images, 7).mask, _draw(fresh, images, 7).mask
        expect(torch.equal(first, second), "masks of the restored masker", "the saved masker's masks",
               f"masks differing in {int((first != second).sum())} entries")
