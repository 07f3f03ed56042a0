"""attmask's and hpm's scoring pass runs the training encoder in eval mode: with drop path in the encoder, the
masks depend on the masker's generator only (not on the global RNG), a split batch draws the whole batch's
masks, and every submodule gets its own mode back afterwards, also when the pass raises."""

import pytest
import torch
from adaptive_helpers import GRID, fashion, tiny_model

from maskkit import ConfigError, toolkit
from maskkit_adaptive import AttMaskMasker, HPMMasker

DROP_PATH = ("encoder.drop_path_rate=0.2", "encoder.depth=4")
MASKERS = {
    "attmask": lambda: AttMaskMasker(mode="high"),
    "hpm": lambda: HPMMasker(in_dim=32, ramp_epochs=1.0),
}


@pytest.fixture(scope="module")
def model():
    """The tiny quickstart MAE with stochastic depth, in train mode (as the trainer keeps it); 4 blocks, so that
    drop path acts before the last block's attention (drop path rises linearly from 0 in the first block)."""
    return tiny_model(seed=1, overrides=DROP_PATH).train()


def _draw(name, masker, b, seed, images, model, global_seed, rows=None) -> torch.Tensor:
    torch.manual_seed(global_seed)  # the global RNG differs between calls; the masker's generator does not
    context = {"epoch": 1.0} if name == "hpm" else {}  # hpm: half the hidden patches chosen by the head
    out = masker(b, GRID, generator=torch.Generator().manual_seed(seed), images=images, model=model, rows=rows,
                 **context)
    return getattr(out, "mask", out)


@pytest.mark.parametrize("name", sorted(MASKERS))
def test_masks_do_not_depend_on_the_global_rng(name, model):
    masker, images = MASKERS[name](), fashion()[:8]
    first = _draw(name, masker, 8, 123, images, model, global_seed=0)
    assert torch.equal(first, _draw(name, masker, 8, 123, images, model, global_seed=1))
    assert model.training and all(m.training for m in model.modules())


@pytest.mark.parametrize("name", sorted(MASKERS))
def test_two_halves_draw_the_whole_batchs_masks_with_drop_path(name, model):
    """What two ranks of batch 4 draw (each with its own global RNG state) is what one process of 8 draws."""
    masker, images = MASKERS[name](), fashion()[:8]
    whole = _draw(name, masker, 8, 5, images, model, global_seed=0)
    first = _draw(name, masker, 4, 5, images[:4], model, global_seed=1, rows=slice(0, 4))
    second = _draw(name, masker, 4, 5, images[4:], model, global_seed=2, rows=slice(4, 8))
    assert torch.equal(torch.cat([first, second]), whole)


@pytest.mark.parametrize("name", sorted(MASKERS))
def test_the_pass_runs_in_eval_mode_and_restores_each_modules_mode(name, monkeypatch):
    model = tiny_model(seed=1, overrides=DROP_PATH).train()
    model.encoder.blocks[0].eval()  # a mixed state: each submodule must get its own flag back
    before = {n: m.training for n, m in model.named_modules()}
    masker, images = MASKERS[name](), fashion()[:2]
    seen = []
    method = "prefix_attention" if name == "attmask" else "forward_features"
    original = getattr(model.encoder, method)

    def spy(x):
        seen.append([m.training for m in model.encoder.modules()])
        return original(x)

    monkeypatch.setattr(model.encoder, method, spy)
    _draw(name, masker, 2, 0, images, model, global_seed=0)
    assert seen and not any(any(flags) for flags in seen), "the scoring pass ran with modules in train mode"
    assert {n: m.training for n, m in model.named_modules()} == before

    def fail(x):
        raise RuntimeError("boom")

    monkeypatch.setattr(model.encoder, method, fail)
    with pytest.raises(RuntimeError, match="boom"):
        _draw(name, masker, 2, 0, images, model, global_seed=0)
    assert {n: m.training for n, m in model.named_modules()} == before


def test_hpm_modes_come_back_after_a_wrong_width():
    model = tiny_model(seed=1).train()
    with pytest.raises(ConfigError, match="in_dim"):
        _draw("hpm", HPMMasker(in_dim=64), 2, 0, fashion()[:2], model, global_seed=0)
    assert all(m.training for m in model.modules())


def test_eval_mode_restores_each_flag():
    net = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Sequential(torch.nn.Dropout(0.5)))
    net[1].eval()
    with toolkit.eval_mode(net) as inner:
        assert inner is net and not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == [True, True, False, False]
