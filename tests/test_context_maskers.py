"""Masker contract v2 in the engine: context by name, checked masks, learnable maskers, auxiliary losses."""

from __future__ import annotations

import json
import re

import pytest
import torch
from context_maskers import ContextMaskersPlugin, HighVariance, Learned, Predictor, Recording
from helpers import tiny_tree
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine import Crash, CrashAfterCheckpoint

import maskkit
from maskkit.builtin.losses import MSELoss
from maskkit.engine import checkpoint as ckpt
from maskkit.engine.trainer import Trainer
from maskkit.errors import ConfigError, MaskError, PluginError
from maskkit.interfaces import is_blind, masker_context
from maskkit.masking import check_mask, mask_from_scores, noise, sample_from_scores
from maskkit.recipe import load_recipe


@pytest.fixture(scope="module")
def registry():
    return maskkit.Registry.from_plugins(autoload=False, plugins={"context": ContextMaskersPlugin()})


def recipe(masker: str, *overrides: str):
    return load_recipe(tiny_tree(masker={"name": masker}), ["train.ckpt_every=0", *overrides])


def fashion_images(b: int = 4) -> torch.Tensor:
    """The first ``b`` embedded Fashion-MNIST training images, normalised, ``[b, 1, 28, 28]``."""
    from maskkit.data.fashion_mnist import FashionMNIST

    images = FashionMNIST(split="train", source="embedded").images[:b].float() / 255  # [b, 1, 28, 28]
    return (images - 0.286) / 0.353


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- context by name ----------------------------------------------------------------------------------------


def test_context_is_what_the_masker_names():
    assert masker_context(
        maskkit.create("masker", "random", registry=maskkit.Registry.from_plugins(autoload=False))) == ()
    assert masker_context(HighVariance()) == ("images",)
    assert masker_context(Recording()) == ("images", "step", "epoch", "progress", "model", "rows")
    assert masker_context(Predictor()) == ("images", "model")  # nn.Module: its forward
    assert masker_context(Learned(grid=(7, 7))) == ("rows", "images")
    assert not is_blind(HighVariance()) and not is_blind(Learned(grid=(7, 7))) and is_blind(Recording.__mro__[1]())


@pytest.mark.parametrize("masker_first", [True, False])
def test_a_module_masker_with_forward_works_whichever_base_comes_first(masker_first):
    """``class M(maskkit.Masker, nn.Module)`` with a ``forward`` is instantiable and called through it, as
    ``class M(nn.Module, maskkit.Masker)`` is (the abstract ``Masker.__call__`` used to shadow it)."""
    from torch import nn

    def forward(self, batch_size, grid, *, generator=None, device=None, rows):
        return noise(batch_size, grid[0] * grid[1], generator=generator, device=device, rows=rows) < 2  # all hidden

    bases = (maskkit.Masker, nn.Module) if masker_first else (nn.Module, maskkit.Masker)
    cls = type("Everything", bases, {"__init__": lambda self: nn.Module.__init__(self), "forward": forward,
                                     "num_hidden": lambda self, grid: grid[0] * grid[1]})
    masker = cls()
    assert masker_context(masker) == ("rows",)
    assert masker(2, (3, 3), rows=slice(0, 2)).all()


def test_an_unknown_context_name_is_refused_at_build(registry):
    with pytest.raises(ConfigError) as info:
        maskkit.build_model(recipe("asks_for_labels"), registry)
    message = str(info.value)
    assert "\n" not in message
    assert "masker: asks_for_labels asks for 'labels'" in message
    assert "(did you mean" not in message  # nothing close to 'labels'
    assert "images, step, epoch, progress, model, rows" in message


def test_a_misspelled_context_name_gets_the_closest_real_one():
    class AsksForImage(maskkit.Masker):
        def num_hidden(self, grid):
            return 1

        def __call__(self, batch_size, grid, *, generator=None, device=None, image):
            raise AssertionError("never drawn")

    with pytest.raises(ConfigError, match=r"asks for 'image', which maskkit does not give a masker \(did you mean "
                                          r"images\?\); a masker may ask for: images, step"):
        masker_context(AsksForImage())


def test_aux_losses_asking_for_an_unknown_name_are_refused_at_build(registry):
    class Bad(Learned):
        def aux_losses(self, *, labels):
            return {}

    with pytest.raises(ConfigError, match=r"masker: Bad.aux_losses asks for 'labels'.*may ask for: images, mask"):
        model = maskkit.build_model(recipe("random"), registry)
        maskkit.MaskedModel(Bad(grid=(7, 7)), model.encoder, model.decoder, model.target, model.loss)


def test_check_model_sees_the_built_model_and_its_refusal_names_the_file_and_key(registry, tmp_path):
    """``Masker.check_model`` is called once with the whole model (every component set) and a refusal is a
    one-line ConfigError naming the recipe file and the key, relative to the masker section (``masker.target``,
    or ``masker`` itself)."""
    import yaml

    model = maskkit.build_model(recipe("needs_target", "masker.target=forward"), registry)
    assert model.masker.checked == [(model, model.encoder, model.target, model.decoder, model.loss)]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe("needs_target").tree))
    with pytest.raises(ConfigError) as info:
        maskkit.build_model(load_recipe(path), registry)
    assert str(info.value) == (f"{path}: masker.target: expected a target with a 'teacher' (target: {{name: "
                               "teacher}), got PixelTarget")
    with pytest.raises(ConfigError, match=r"^<recipe>: masker: expected a target with a 'teacher'"):
        maskkit.build_model(recipe("needs_target", "masker.key=''"), registry)


def test_a_masker_swapped_in_is_checked_before_it_draws(registry):
    """A plugin may swap the masker between steps: the new masker object is checked against the model at its
    first draw, before it draws."""
    from context_maskers import NeedsTarget

    model = maskkit.build_model(recipe("high_variance"), registry)
    model.masker = NeedsTarget()
    with pytest.raises(ConfigError, match="^masker.target: expected a target with a 'teacher'"):
        model(fashion_images(2), generator=torch.Generator().manual_seed(0))
    model.masker = NeedsTarget(target="forward")
    assert model.draw_mask(2, torch.Generator().manual_seed(0), images=fashion_images(2)).shape == (2, 49)
    assert model.masker.checked == [(model, model.encoder, model.target, model.decoder, model.loss)]


def test_the_cli_refuses_a_model_the_masker_cannot_work_with_before_writing_the_run_folder(
        registry, tmp_path, monkeypatch, capsys):
    import yaml

    from maskkit import cli

    monkeypatch.setattr(cli, "_registry", lambda args=None: registry)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe("needs_target").tree))
    run = tmp_path / "run"
    assert cli.main(["train", str(path), "--out", str(run), "--no-progress", "--no-eval"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"maskkit: error: {path}: masker.target: expected a target with a 'teacher' (target: {{name: "
                   "teacher}), got PixelTarget")
    assert not run.exists() or not any(run.iterdir()), "nothing is written in the run folder"


def test_the_masker_gets_the_batch_step_epoch_progress_rows_and_model(registry, tmp_path):
    rec = recipe("recording", "train.max_steps=3", "train.batch_size=8", "train.accum_steps=2")
    trainer = Trainer(rec, tmp_path, registry=registry, progress=False)
    seen_images = []
    trainer_forward = Trainer._forward

    def spy(self, images, micro_step, num_visible):
        seen_images.append(images.clone())
        return trainer_forward(self, images, micro_step, num_visible)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_forward", spy)
        trainer.fit()
    calls = trainer.model.masker.calls
    assert [c["step"] for c in calls] == [0, 0, 1, 1, 2, 2]
    assert [c["epoch"] for c in calls] == [s / trainer.steps_per_epoch for s in (0, 0, 1, 1, 2, 2)]
    assert [c["progress"] for c in calls] == [s / 3 for s in (0, 0, 1, 1, 2, 2)]  # of train.max_steps=3
    assert all(c["rows"] == slice(0, 8) and c["model"] is trainer.model for c in calls)
    assert all(torch.equal(c["images"], x) for c, x in zip(calls, seen_images))


def test_same_seed_and_data_give_the_same_masks(registry, tmp_path):
    """Twice the same run of a masker that looks at the images: the same masks, micro-step by micro-step;
    another seed gives other masks."""
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        trainer = Trainer(recipe("recording", "train.max_steps=3", f"seed={seed}"), tmp_path / name,
                          registry=registry, progress=False)
        trainer.fit()
        runs.append([c["mask"] for c in trainer.model.masker.calls])
    assert len(runs[0]) == 3 and all(torch.equal(x, y) for x, y in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0][0], runs[2][0])


def test_noise_for_rows_is_the_global_batch_split():
    """Two processes with batch B draw the rows of one process with batch 2B."""
    whole = noise(8, 49, generator=torch.Generator().manual_seed(3))
    first = noise(4, 49, generator=torch.Generator().manual_seed(3), rows=slice(0, 4))
    second = noise(4, 49, generator=torch.Generator().manual_seed(3), rows=slice(4, 8))
    assert torch.equal(torch.cat([first, second]), whole)
    with pytest.raises(ValueError, match="hold 3 samples, not batch_size=4"):
        noise(4, 49, rows=slice(1, 4))


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 6), h=st.integers(1, 6), w=st.integers(1, 6), data=st.data(),
       temperature=st.floats(0.01, 100.0), seed=st.integers(0, 2**31 - 1))
def test_sample_from_scores_hides_the_count_deterministically_and_splits_like_the_global_batch(
        b, h, w, data, temperature, seed):
    """Any scores (ties and NaNs included), any count: exactly ``num_hidden`` per sample, the same mask for the
    same generator, and two halves of the batch (``rows``) draw what the whole batch draws."""
    n = h * w
    hidden = data.draw(st.integers(0, n))
    scores = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 1.0, -2.5, 3.0, float("nan")]),
                                             min_size=2 * b * n, max_size=2 * b * n))).view(2 * b, n)

    def draw(rows=None):
        part = scores if rows is None else scores[rows]
        return sample_from_scores(part, hidden, temperature=temperature, rows=rows,
                                  generator=torch.Generator().manual_seed(seed))

    mask = draw()
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == [hidden] * (2 * b)
    assert torch.equal(mask, draw())
    assert torch.equal(torch.cat([draw(slice(0, b)), draw(slice(b, 2 * b))]), mask)


def test_sample_from_scores_draws_by_the_softmax_of_the_scores_over_the_temperature():
    """One hidden patch of four: how often each is hidden is softmax(scores / T) (20,000 samples, within 6
    standard errors); a tiny temperature hides the highest scores, a huge one is uniform."""
    scores = torch.tensor([0.0, 1.0, 2.0, 3.0]).expand(20_000, 4)
    for temperature in (1.0, 2.0):
        freq = sample_from_scores(scores, 1, temperature=temperature,
                                  generator=torch.Generator().manual_seed(0)).float().mean(0)
        assert torch.allclose(freq, torch.softmax(scores[0] / temperature, 0), atol=0.02), (temperature, freq)
    cold = sample_from_scores(scores, 2, temperature=1e-4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(cold, mask_from_scores(scores, 2))
    hot = sample_from_scores(scores, 1, temperature=1e6, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(hot.float().mean(0), torch.full((4,), 0.25), atol=0.02)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        sample_from_scores(scores, 1, temperature=0)


def test_sample_from_scores_on_real_images_hides_busier_patches_the_colder_it_is():
    """Scores = the patch variance of real images: the hidden patches' mean variance falls as the temperature
    rises, from the top-k's at a low temperature towards the image's mean."""
    images = fashion_images(16)
    var = images.unfold(2, 4, 4).unfold(3, 4, 4).reshape(16, 49, 16).var(dim=-1)  # [16, 49]
    var = var / var.std()

    def hidden_variance(temperature):
        mask = sample_from_scores(var, 24, temperature=temperature, generator=torch.Generator().manual_seed(0))
        return float((var * mask).sum() / mask.sum())

    top, cold, warm, hot = (float((var * mask_from_scores(var, 24)).sum() / (16 * 24)), hidden_variance(0.01),
                            hidden_variance(1.0), hidden_variance(100.0))
    assert top == pytest.approx(cold, rel=1e-3) and cold > warm > hot  # (ties among blank patches aside)
    assert hot == pytest.approx(float(var.mean()), rel=0.2)


def test_a_content_aware_masker_hides_the_busiest_patches_of_real_images(registry):
    model = maskkit.build_model(recipe("high_variance"), registry)
    images = fashion_images(4)
    out = model(images, generator=torch.Generator().manual_seed(0))
    patches = images.unfold(2, 4, 4).unfold(3, 4, 4).reshape(4, 49, 16)
    var = patches.var(dim=-1)
    hidden_var = (var * out.mask).sum(1) / out.mask.sum(1)
    shown_var = (var * ~out.mask).sum(1) / (~out.mask).sum(1)
    assert out.mask.sum(1).tolist() == [model.masker.num_hidden(model.grid)] * 4
    assert bool((hidden_var > shown_var).all())
    assert bool((var.masked_fill(~out.mask, float("inf")).amin(1) >= var.masked_fill(out.mask, -1).amax(1)).all())


# -- wrong masks never reach the encoder --------------------------------------------------------------------


WRONG = {
    "off_by_one": "masker off_by_one (plugin context): declared 37 hidden patches per sample, sample 0 hides 38",
    "inverted": "masker inverted (plugin context): declared 37 hidden patches per sample, sample 0 hides 12",
    "float_mask": "masker float_mask (plugin context): returned a float32 mask, expected torch.bool (True = hidden)",
    "off_by_one_looking": "masker off_by_one_looking (plugin context): declared 37 hidden patches per sample, "
                          "sample 0 hides 38",
}


@pytest.mark.parametrize("name", sorted(WRONG))
def test_a_wrong_mask_is_refused_before_the_encoder_sees_it(registry, name):
    model = maskkit.build_model(recipe(name), registry)
    calls = []
    model.encoder.register_forward_pre_hook(lambda module, args: calls.append(1))
    images = fashion_images(4)
    with pytest.raises(MaskError) as info:
        model(images, generator=torch.Generator().manual_seed(0))
    assert str(info.value) == WRONG[name]
    with pytest.raises(MaskError):
        model.draw_mask(4, torch.Generator().manual_seed(0), images=images)
    assert calls == []


@pytest.mark.parametrize("name", ["off_by_one", "off_by_one_looking"])
def test_training_with_a_wrong_mask_stops_at_the_first_step(registry, tmp_path, name):
    """The blind one is drawn by the loop, the other inside the forward: both are checked."""
    trainer = Trainer(recipe(name), tmp_path, registry=registry, progress=False)
    with pytest.raises(MaskError, match=re.escape(WRONG[name])):  # the plugin that registered it is named
        trainer.fit()
    assert trainer.step == 0


def test_the_cli_prints_a_wrong_mask_as_one_line(registry, tmp_path, monkeypatch, capsys):
    import yaml

    from maskkit import cli

    monkeypatch.setattr(cli, "_registry", lambda args=None: registry)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe("inverted").tree))
    assert cli.main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress", "--no-eval"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"maskkit: error: {WRONG['inverted']}"


def test_check_mask_on_the_host_and_on_the_device():
    good = torch.zeros(3, 12, dtype=torch.bool)
    good[:, :4] = True
    assert check_mask(good, batch_size=3, grid=(3, 4), num_hidden=4) is good
    check_mask(good, batch_size=3, grid=(3, 4), num_hidden=4, sync=False)  # passes: nothing raised
    bad = good.clone()
    bad[2, 5] = True
    with pytest.raises(MaskError, match="declared 4 hidden patches per sample, sample 2 hides 5"):
        check_mask(bad, batch_size=3, grid=(3, 4), num_hidden=4, name="m")
    with pytest.raises(RuntimeError, match="masker m: declared 4 hidden patches per sample, but a sample hides"):
        check_mask(bad, batch_size=3, grid=(3, 4), num_hidden=4, name="m", sync=False)  # CPU: raises at once
    with pytest.raises(MaskError, match=r"returned a mask of shape \[3, 11\], expected \[B, N\] = \[3, 12\]"):
        check_mask(good[:, :11], batch_size=3, grid=(3, 4), num_hidden=4)
    with pytest.raises(MaskError, match="returned list, expected a bool tensor"):
        check_mask([[True]], batch_size=3, grid=(3, 4), num_hidden=4)
    check_mask(bad, batch_size=3, grid=(3, 4), num_hidden=None)  # a varying count is not checked


# -- learnable maskers and auxiliary losses -----------------------------------------------------------------


def test_a_learnable_masker_is_a_child_module_with_its_own_param_group(registry, tmp_path):
    builtin = maskkit.build_model(recipe("random"), registry)
    trainer = Trainer(recipe("learned", "train.max_steps=2"), tmp_path, registry=registry, progress=False)
    trainer.fit()
    model = trainer.model
    keys = set(model.state_dict())
    assert keys - set(builtin.state_dict()) == {"masker.scores", "masker.draws"}  # official names unchanged
    assert int(model.state_dict()["masker.draws"]) == 2
    groups = [g for g in trainer.optimizer.param_groups if g["component"] == "masker"]
    assert [p is model.masker.scores for g in groups for p in g["params"]] == [True]
    assert groups[0]["weight_decay"] == 0.0  # a 1-D parameter: no decay, as elsewhere
    shared = trainer.optimizer.param_groups[0]
    assert groups[0]["lr"] == pytest.approx(0.5 * shared["lr"]) and shared["lr"] > 0
    assert float(model.masker.scores.detach().abs().sum()) > 0  # it trained


def test_aux_losses_are_added_logged_and_shown(registry, tmp_path):
    trainer = Trainer(recipe("learned", "train.max_steps=3"), tmp_path, registry=registry, progress=False)
    trainer.fit()
    rows = metrics(tmp_path)
    assert all({"loss", "loss_main", "aux/masker.fit"} <= set(r) for r in rows)
    for r in rows:
        assert r["loss"] == pytest.approx(r["loss_main"] + r["aux/masker.fit"], rel=1e-5)
        assert r["aux/masker.fit"] > 0
    model = trainer.model
    images = fashion_images(4)
    out = model(images, generator=torch.Generator().manual_seed(0))
    assert set(out.aux) == {"masker.fit"}
    patch_loss = model.loss.per_patch(out.pred, out.target).detach()
    expected = 0.1 * (model.masker.scores[None] - patch_loss).square().mean()
    torch.testing.assert_close(out.aux["masker.fit"], expected)
    torch.testing.assert_close(out.loss, out.main_loss + expected)
    assert metrics_without_aux(registry, tmp_path)


class StepRecordingLoss(MSELoss):
    """The masked MSE, with a zero auxiliary loss that records the ``step``, ``epoch`` and ``progress`` it is
    given."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen: list[tuple[int, float, float]] = []

    def aux_losses(self, *, step: int, epoch: float, progress: float, pred: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append((step, epoch, progress))
        return {"zero": pred.sum() * 0}


class StepRecordingPlugin:
    @maskkit.hookimpl
    def maskkit_add_losses(self):
        return {"step_recording": StepRecordingLoss}


@pytest.mark.parametrize("masker", ["random", "recording"])
def test_aux_losses_see_the_training_step_whether_or_not_the_masker_is_blind(masker, tmp_path):
    """``step``, ``epoch`` and ``progress`` in a component's ``aux_losses`` are the optimizer step, the fractional
    epoch and the fraction of the run, with a blind masker (whose mask the engine draws) as with one drawn in
    the forward (step and epoch used to be 0 and 0.0 with a blind one)."""
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"context": ContextMaskersPlugin(),
                                                                       "loss": StepRecordingPlugin()})
    tree = tiny_tree(masker={"name": masker, **({"ratio": 0.75} if masker == "random" else {})},
                     loss={"name": "step_recording"})
    trainer = Trainer(load_recipe(tree, ["train.ckpt_every=0", "train.max_steps=4", "train.batch_size=8"]),
                      tmp_path, registry=registry, progress=False)
    trainer.fit()
    assert trainer.model.loss.seen == [(s, s / trainer.steps_per_epoch, s / 4) for s in range(4)]


def metrics_without_aux(registry, tmp_path) -> bool:
    """A model whose components define no aux_losses logs no aux keys (and its output has none)."""
    Trainer(recipe("random", "train.max_steps=1"), tmp_path / "plain", registry=registry, progress=False).fit()
    return all("loss_main" not in r and not any(k.startswith("aux/") for k in r) for r in metrics(tmp_path / "plain"))


def test_gradients_of_a_masker_come_from_its_aux_loss_only(registry):
    """The masker's parameter gets the gradient of its aux loss; the encoder gets none through the masking."""
    model = maskkit.build_model(recipe("predictor"), registry)
    out = model(fashion_images(4), generator=torch.Generator().manual_seed(0))
    out.aux["masker.rank"].backward(retain_graph=True)
    assert model.masker.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.parameters())
    model.zero_grad(set_to_none=True)
    out.main_loss.backward()
    assert all(p.grad is None for p in model.masker.parameters())


def test_aux_losses_must_be_scalars(registry):
    class Vector(Learned):
        def aux_losses(self, *, patch_loss):
            return {"bad": patch_loss.mean(0)}

    model = maskkit.build_model(recipe("random"), registry)
    model = maskkit.MaskedModel(Vector(grid=(7, 7)), model.encoder, model.decoder, model.target, model.loss,
                                masker_name="vector")
    with pytest.raises(PluginError, match=r"masker vector: aux_losses\(\)\['bad'\] is \[49\], expected a scalar"):
        model(fashion_images(2), generator=torch.Generator().manual_seed(0))


def test_resume_is_exact_with_a_learnable_masker(registry, tmp_path):
    """The masker's parameter is sized by the ``grid`` the builder wires in (14x14 here), so the resumed run
    loads the checkpoint's."""
    rec = recipe("learned", "train.max_steps=6", "train.ckpt_every=3", "encoder.patch_size=2")
    Trainer(rec, tmp_path / "full", registry=registry, progress=False).fit()
    crashing = maskkit.Registry.from_plugins(autoload=False, plugins={"context": ContextMaskersPlugin(),
                                                                      "crash": CrashAfterCheckpoint(3)})
    with pytest.raises(Crash):
        Trainer(rec, tmp_path / "part", registry=crashing, progress=False).fit()
    Trainer(rec, tmp_path / "part", registry=registry, resume=tmp_path / "part" / "checkpoint.pth",
            progress=False).fit()
    full = [(r["loss"], r["aux/masker.fit"]) for r in metrics(tmp_path / "full")]
    part = [(r["loss"], r["aux/masker.fit"]) for r in metrics(tmp_path / "part")]
    assert part == full  # exact, every step
    a = ckpt.read_checkpoint(tmp_path / "full" / "checkpoint.pth")["model"]
    b = ckpt.read_checkpoint(tmp_path / "part" / "checkpoint.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a) and int(b["masker.draws"]) == 6


def test_export_leaves_the_masker_out(registry, tmp_path, monkeypatch):
    from maskkit import cli

    Trainer(recipe("learned", "train.max_steps=1"), tmp_path, registry=registry, progress=False).fit()
    monkeypatch.setattr(cli, "_registry", lambda args=None: registry)
    assert cli.main(["export", str(tmp_path / "checkpoint.pth"), "--out", str(tmp_path / "enc.pth")]) == 0
    exported = torch.load(tmp_path / "enc.pth", weights_only=True)
    exported = exported.get("model", exported)
    assert exported and not any("masker" in k or k.startswith("scores") for k in exported)


# -- masks show and check_masker ----------------------------------------------------------------------------


def show(registry, monkeypatch, tmp_path, *argv):
    from maskkit import cli

    monkeypatch.setattr(cli, "_registry", lambda args=None: registry)
    return cli.main(["masks", "show", *argv, "--out", str(tmp_path / "m.png")])


def test_masks_show_prints_what_the_masks_hide(registry, tmp_path, monkeypatch, capsys):
    assert show(registry, monkeypatch, tmp_path, "random", "ratio=0.5", "--grid", "7x7", "--count", "4") == 0
    out = capsys.readouterr().out
    assert "masker random declares 25 of 49 patches hidden per sample; its 16 drawn samples hide min 25, mean " \
           "25.0, max 25" in out
    assert (tmp_path / "m.png").stat().st_size > 0


def test_masks_show_wires_its_grid_into_a_blind_masker_sized_by_it(tmp_path, monkeypatch, capsys):
    """A blind masker whose state is sized by the ``grid`` wiring is drawn by ``masks show --grid 5x7`` at
    that grid, not at the default recipe's encoder's (14x14)."""
    from maskkit.builtin.masking import RandomMasker

    class PerPosition(RandomMasker):
        def __init__(self, ratio: float = 0.75, *, grid: tuple[int, int]):
            super().__init__(ratio)
            self.bias = torch.zeros(grid[0] * grid[1])  # [N]: one score per patch position

        def __call__(self, batch_size, grid, *, generator=None, device=None):
            assert self.bias.numel() == grid[0] * grid[1], f"sized for {self.bias.numel()} patches, drawn on {grid}"
            return super().__call__(batch_size, grid, generator=generator, device=device)

    class Plugin:
        @maskkit.hookimpl
        def maskkit_add_maskers(self):
            return {"per_position": PerPosition}

    sized = maskkit.Registry.from_plugins(autoload=False, plugins={"sized": Plugin()})
    assert show(sized, monkeypatch, tmp_path, "per_position", "ratio=0.5", "--grid", "5x7", "--count", "2") == 0
    assert "declares 18 of 35 patches hidden per sample" in capsys.readouterr().out


def test_masks_show_draws_a_context_aware_masker_on_real_images(registry, tmp_path, monkeypatch, capsys):
    assert show(registry, monkeypatch, tmp_path, "predictor", "--count", "4") == 0  # asks for images and model
    out = capsys.readouterr().out
    assert "masker predictor declares 147 of 196 patches hidden per sample; its 16 drawn samples hide min 147" in out
    from PIL import Image

    assert Image.open(tmp_path / "m.png").size[0] > 0


def test_masks_show_reports_a_wrong_masker_after_drawing_it(registry, tmp_path, monkeypatch, capsys):
    assert show(registry, monkeypatch, tmp_path, "inverted", "--grid", "14x14", "--count", "4") == 2
    captured = capsys.readouterr()
    assert "its 16 drawn samples hide min 49, mean 49.0, max 49" in captured.out  # the truth, printed
    assert captured.err.strip() == "maskkit: error: masker inverted: declared 147 hidden patches per sample, " \
                                   "sample 0 hides 49"
    assert (tmp_path / "m.png").exists()  # the picture shows it
    assert show(registry, monkeypatch, tmp_path, "float_mask") == 2
    assert "returned a float32 mask, expected torch.bool" in capsys.readouterr().err


def test_check_masker_counts_every_drawn_sample():
    from context_maskers import OffByOne

    from maskkit.masking import check_masker

    stats = check_masker(OffByOne(0.75), (7, 7), name="obo", batch_size=5, seeds=(0, 1), strict=False)
    assert stats.hidden.tolist() == [38] * 10 and stats.declared == 37 and stats.wrong == list(range(10))
    with pytest.raises(MaskError, match="masker obo: declared 37 hidden patches per sample, sample 0 hides 38"):
        stats.check()
    with pytest.raises(ValueError, match="masker hv asks for images: draw it with images="):
        check_masker(HighVariance(), (7, 7), name="hv")
    stats = check_masker(HighVariance(), (7, 7), batch_size=4, context={"images": fashion_images(4)})
    assert stats.hidden.tolist() == [37] * 12 and stats.wrong == []


def test_a_comparison_plan_refuses_a_wrong_blind_masker(tmp_path):
    """``compare --dry-run`` (the plan) draws a few masks of every blind masker and checks them."""
    from test_compare import SmallFashion, write_spec

    from maskkit.compare import load_spec, make_plan

    both = maskkit.Registry.from_plugins(autoload=False, plugins={"small": SmallFashion(),
                                                                  "context": ContextMaskersPlugin()})
    path = write_spec(tmp_path, variants={"r75": {}, "obo": {"masker": {"name": "off_by_one"}}})
    with pytest.raises(MaskError) as info:
        make_plan(load_spec(path, registry=both), both)
    assert str(info.value) == (f"{path}: variants.obo: masker off_by_one: declared 37 hidden patches per sample, "
                               "sample 0 hides 38")


def test_every_micro_step_is_checked_on_the_cpu(registry, tmp_path):
    """On the CPU the count is checked on the host at every micro-step, not only the first ones (a GPU run
    asserts it on the device after its first micro-steps: tests/test_cuda.py)."""
    trainer = Trainer(recipe("wrong_later", "train.max_steps=6", "train.accum_steps=2"), tmp_path, registry=registry,
                      progress=False)
    with pytest.raises(MaskError, match=re.escape("masker wrong_later (plugin context): declared 37 hidden patches per "
                                                  "sample, sample 0 hides 38")):
        trainer.fit()
    assert trainer.step == 2  # micro-steps 0-3 (steps 0 and 1) were right, the 5th draw was not


def test_comparison_samples_draw_a_context_aware_masker_on_test_images(registry):
    """A comparison report's mask samples of a masker that looks at the images: drawn on the test images."""
    from maskkit.compare.runner import make_samples

    rec = recipe("high_variance")
    model = maskkit.build_model(rec, registry).eval()
    samples = make_samples(model, rec, registry, images=0, masks=4, seed=0, device=torch.device("cpu"))
    assert samples["masks"].shape == (4, 49) and samples["masks"].sum(1).tolist() == [37] * 4
    from maskkit.builder import build_dataset
    from maskkit.evaluate import eval_loader

    test = build_dataset(rec, "test", registry)
    images = next(iter(eval_loader(test, model.encoder.img_size, 4)))[0]
    assert torch.equal(samples["masks"], model.draw_mask(4, images=images))


def test_the_comparisons_masks_picture_shows_every_variant_on_the_same_test_images(registry, tmp_path, monkeypatch):
    """masks.png: a masker that looks at the images (high_variance) is judged on them, and a blind one (random)
    is drawn over the same test images, so each column compares the strategies on one image. Every panel
    draws its test image, then the hidden patches over it."""
    from types import SimpleNamespace

    import matplotlib.axes

    from maskkit.builder import build_dataset
    from maskkit.compare.plots import plot_masks
    from maskkit.compare.runner import make_samples
    from maskkit.evaluate import eval_loader
    from maskkit.patches import upsample_mask
    from maskkit.visualize import _denormalize

    samples = {}
    for name in ("high_variance", "random"):
        rec = recipe(name)
        model = maskkit.build_model(rec, registry).eval()
        samples[name] = {**make_samples(model, rec, registry, images=0, masks=3, seed=0, device=torch.device("cpu")),
                         "seed": 0}
    test = build_dataset(recipe("random"), "test", registry)
    first = _denormalize(next(iter(eval_loader(test, 28, 3)))[0], test.mean, test.std)  # [3, 1, 28, 28]
    for name, sample in samples.items():  # the same test images kept with every variant's masks
        assert sample["mask_images"].dtype == torch.uint8 and sample["mask_images"].shape == (3, 1, 28, 28)
        assert torch.equal(sample["mask_images"], (first * 255).round().to(torch.uint8)), name
    assert not torch.equal(samples["high_variance"]["masks"], samples["random"]["masks"])

    drawn = []  # what each imshow got: [28, 28] test images and hidden pixels, or a bare 7x7 grid
    real_imshow = matplotlib.axes.Axes.imshow
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow",
                        lambda ax, data, *a, **k: drawn.append(torch.as_tensor(data)) or real_imshow(ax, data, *a, **k))
    plan = SimpleNamespace(variants=[SimpleNamespace(name=name) for name in samples])
    assert plot_masks(plan, samples, tmp_path / "masks.png") == tmp_path / "masks.png"
    assert len(drawn) == 2 * 2 * 3  # variants x panels x (image, hidden patches)
    for row, sample in enumerate(samples.values()):
        for col in range(3):
            image, hidden = drawn[6 * row + 2 * col], drawn[6 * row + 2 * col + 1]
            assert torch.allclose(image.float(), sample["mask_images"][col, 0].float() / 255)
            assert torch.equal(hidden.bool(), upsample_mask(sample["masks"][col:col + 1], (7, 7), (4, 4))[0, 0])


def test_a_given_mask_leaves_the_maskers_aux_losses_out(registry):
    """``model(images, mask=...)`` (reconstruction pictures, a fixed mask): the masker did not draw it, so its
    auxiliary losses, which may need its extras, are not called; the loss is the main loss."""
    model = maskkit.build_model(recipe("learned"), registry)
    images = fashion_images(2)
    mask = model.draw_mask(2, torch.Generator().manual_seed(0), images=images)
    out = model(images, mask=mask)
    assert out.aux == {} and torch.equal(out.loss, out.main_loss)
    from maskkit.visualize import reconstruction_rows

    assert reconstruction_rows(model, images, mask, [0.286], [0.353]).shape == (8, 1, 28, 28)


def test_compare_times_a_masker_that_looks_at_the_images(registry):
    """compare's "masker ms/batch" draws a looking masker on real test images (it was left blank), and the masks
    drawn there are the masker's own choice on those images."""
    from maskkit.builder import build_dataset
    from maskkit.compare.measure import time_masker, timing_images

    rec = recipe("high_variance")
    model = maskkit.build_model(rec, registry).eval()
    assert time_masker(model, 8, torch.device("cpu")) is None  # needs images, none given
    images = timing_images(model, rec, registry, 8)
    assert images.shape == (8, 1, 28, 28) and images.std() > 0.1
    ms = time_masker(model, 8, torch.device("cpu"), repeats=3, images=images)
    assert ms is not None and 0 < ms < 1000
    expected = HighVariance()(8, model.grid, images=images)
    assert torch.equal(model.draw_mask(8, images=images), expected)
    n = len(build_dataset(rec, "test", registry))  # a split smaller than the batch is repeated
    assert torch.equal(timing_images(model, rec, registry, n + 8)[n:], images)
