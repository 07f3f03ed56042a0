"""HPM: the relative loss ranks, the predictor learns the per-patch loss's order on real images, the schedule
mixes the predicted hardest with random patches, and the ranking loss trains the predictor only."""

import pytest
import torch
from adaptive_helpers import GRID, draw, fashion, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit import ConfigError
from maskkit_adaptive import HPMMasker, relative_loss


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 4), m=st.integers(2, 30), seed=st.integers(0, 2**31 - 1))
def test_relative_loss_rewards_the_right_order(b, m, seed):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(b, m, generator=gen)
    right, wrong = relative_loss(target, target), relative_loss(-target, target)
    assert float(right) < 0.6931 < float(wrong)  # log 2: the loss of a predictor that ranks nothing
    assert float(relative_loss(3 * target, target)) < float(right)  # surer of the right order: lower
    # only the order of the target counts
    torch.testing.assert_close(relative_loss(target, target), relative_loss(target, target.exp() * 3 + 1))


def _patch_loss(model, images, mask):
    out = model(images, mask=mask)
    return (out.pred - out.target).square().mean(-1).detach()  # [B, N]


def test_predictor_learns_the_order_of_the_patch_loss_on_a_fixed_batch():
    model = tiny_model(seed=2)
    images = fashion()[:16]
    torch.manual_seed(0)
    masker = HPMMasker(in_dim=32)
    opt = torch.optim.Adam(masker.parameters(), lr=3e-3)
    result = masker(16, GRID, generator=torch.Generator().manual_seed(0), images=images, model=model)
    patch_loss = _patch_loss(model, images, result.mask)
    losses = []
    for _ in range(40):
        loss = masker.aux_losses(mask=result.mask, patch_loss=patch_loss, extras=result.extras)["rank"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses[::10]
    # the trained predictor ranks the hidden patches' losses better than chance (Spearman > 0.3)
    pred = masker.predict(result.extras["features"]).detach()
    rank = lambda x: x.argsort(1).argsort(1).float()  # noqa: E731
    hidden = result.mask
    r_pred, r_loss = rank(pred.masked_fill(~hidden, -1e9)), rank(patch_loss.masked_fill(~hidden, -1e9))
    keep = hidden.float()
    corr = ((r_pred - r_pred.mean()) * (r_loss - r_loss.mean()) * keep).sum() / (
        ((r_pred - r_pred.mean()).square() * keep).sum() * ((r_loss - r_loss.mean()).square() * keep).sum()).sqrt()
    assert float(corr) > 0.3


def test_easy_to_hard_schedule():
    masker = HPMMasker(in_dim=32, hard_max=0.5, ramp_epochs=4)
    assert [masker.hard_fraction(e) for e in (0, 1, 2, 4, 9)] == [0.0, 0.125, 0.25, 0.5, 0.5]
    model = tiny_model(seed=2)
    images = fashion()[:8]
    with torch.no_grad():
        features = model.encoder.forward_features(images)[:, 1:]
        predicted = masker.predict(features)
    top = predicted.argsort(1, descending=True)
    hidden = masker.num_hidden(GRID)
    late = draw(masker, 8, epoch=4, images=images, model=model)
    hard = int(hidden * 0.5)
    assert bool(late.gather(1, top[:, :hard]).all()), "the predicted hardest half of the hidden patches is hidden"
    early = draw(masker, 8, epoch=0, images=images, model=model)
    assert late.sum(1).tolist() == early.sum(1).tolist() == [hidden] * 8
    frac = lambda mask: float(mask.gather(1, top[:, :hard]).float().mean())  # noqa: E731
    assert frac(early) < 0.9, "at epoch 0 the mask is random"


def test_by_default_the_schedule_spans_the_run():
    """Without ``ramp_epochs`` the hard fraction follows ``progress`` (step / total steps), HPM's schedule over
    the whole run whatever its length; with it, the fractional epoch over those epochs (``progress`` unused)."""
    whole_run = HPMMasker(in_dim=32, hard_max=0.5)
    assert [whole_run.hard_fraction(epoch=50.0, progress=p) for p in (0.0, 0.25, 0.5, 1.0)] == [0, 0.125, 0.25, 0.5]
    ramped = HPMMasker(in_dim=32, hard_max=0.5, ramp_epochs=4)
    assert ramped.hard_fraction(epoch=2.0, progress=0.9) == 0.25
    model = tiny_model(seed=2)
    images = fashion()[:8]
    with torch.no_grad():
        top = whole_run.predict(model.encoder.forward_features(images)[:, 1:]).argsort(1, descending=True)
    hard = int(whole_run.num_hidden(GRID) * 0.5)
    late = draw(whole_run, 8, epoch=0.5, progress=1.0, images=images, model=model)
    assert bool(late.gather(1, top[:, :hard]).all()), "at the end of the run: the predicted hardest half hidden"
    early = draw(whole_run, 8, epoch=7.0, progress=0.0, images=images, model=model)
    assert float(early.gather(1, top[:, :hard]).float().mean()) < 0.9, "at the start: random"


def test_ranking_loss_trains_the_predictor_only():
    model = tiny_model(seed=2).train()
    images = fashion()[:4]
    masker = HPMMasker(in_dim=32)
    result = masker(4, GRID, generator=torch.Generator().manual_seed(0), images=images, model=model)
    out = model(images, mask=result.mask)
    patch_loss = (out.pred - out.target).square().mean(-1)  # not detached: aux_losses must not use its graph
    masker.aux_losses(mask=result.mask, patch_loss=patch_loss, extras=result.extras)["rank"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in masker.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_wrong_width_is_one_line():
    with pytest.raises(ConfigError, match="in_dim: expected the encoder's width 32, got 64"):
        draw(HPMMasker(in_dim=64), 2, images=fashion()[:2], model=tiny_model())


def test_a_teacher_source_without_a_teacher_target_is_refused_when_the_model_is_built():
    """A recipe mistake, so a one-line ConfigError naming the file and ``masker.source`` from ``check_model``,
    not a plugin failure at the first step; with a teacher target the same masker builds."""
    with pytest.raises(ConfigError, match=r"quickstart.yaml: masker.source: 'teacher' needs a target with an EMA "
                                          r"teacher encoder .* but target PixelTarget has none"):
        tiny_model("{name: hpm, source: teacher}")
    pytest.importorskip("maskkit_teacher")
    model = tiny_model("{name: hpm, source: teacher}", recipe="quickstart_data2vec", overrides=("target.top_k=1",),
                       tiny=("encoder.embed_dim=32", "encoder.depth=1", "encoder.num_heads=2"))
    assert model.masker.check_model(model) is None


def test_scores_keep_float32_precision_under_bf16_autocast():
    """Under bf16 autocast the head's scores would round to bf16 and tie (ties go to the lower patch index, so
    the "hardest" patches would lean top-left). They are computed in float32: distinct in every sample, the very
    scores of an fp32 run on the same features, and the mask's hardest patches are their top ranks."""
    model = tiny_model(seed=2)
    images = fashion()[:8]
    masker = HPMMasker(in_dim=32, ramp_epochs=1)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in masker.parameters():  # away from the initialisation: scores spread like a trained head's
            p.add_(0.1 * torch.randn_like(p))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.encoder.forward_features(images)[:, 1:]  # what forward scores, under autocast
        scores = masker.predict(features)  # [8, N]
        mask = draw(masker, 8, epoch=1, images=images, model=model)
    n = GRID[0] * GRID[1]
    assert [len(torch.unique(row)) for row in scores] == [n] * 8, "no ties among a sample's scores"
    assert scores.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(scores, masker.predict(features.float()))  # as without autocast
    hard = int(masker.num_hidden(GRID) * masker.hard_fraction(1))
    hardest = scores.argsort(dim=1, descending=True)[:, :hard]  # [8, hard]
    assert bool(mask.gather(1, hardest).all()), "the top-ranked float32 scores are hidden"
