"""Training with the teacher: the shipped recipes at tiny size, the EMA between steps, checkpoints."""

import copy
import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from teacher_helpers import fashion_images

import maskkit
import maskkit_teacher
from maskkit_teacher import TeacherTarget
from maskkit_teacher import plugin as teacher_plugin

RUN = SimpleNamespace(total_steps=100)  # what the step-end hook reads from maskkit's Trainer
TINY = {
    "quickstart_data2vec": ["encoder.embed_dim=32", "encoder.depth=2", "encoder.num_heads=2", "target.top_k=2"],
    "data2vec_vit_base_patch16": ["encoder.img_size=32", "encoder.patch_size=8", "encoder.embed_dim=32",
                                  "encoder.depth=6", "encoder.num_heads=2"],
}


def _build(name, overrides=(), seed=0):
    recipe = maskkit.load_recipe(name, [*TINY[name], *overrides])
    torch.manual_seed(seed)
    return maskkit.build_model(recipe)


def _batch(model, b=8):
    enc = model.encoder
    if enc.in_chans == 1 and enc.img_size == (28, 28):
        return fashion_images(b)
    return torch.randn(b, enc.in_chans, *enc.img_size, generator=torch.Generator().manual_seed(0))


def _optimizer(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_recipes_are_shipped_as_package_data():
    folder = Path(maskkit_teacher.__file__).parent / "recipes"
    registry = maskkit.default_registry()
    for name in TINY:
        assert registry.recipe_path(name) == folder / f"{name}.yaml"
        assert registry.get("recipe", name).plugin == "teacher"


@pytest.mark.parametrize("name", sorted(TINY))
def test_one_training_step_of_each_recipe(name):
    """Forward, backward, optimizer step and the step-end hook, at tiny size; the teacher moves by exactly
    the EMA of the step's momentum, toward the updated student."""
    recipe = maskkit.load_recipe(name, TINY[name])
    _ = recipe.train, recipe.augment, recipe.eval  # the engine sections validate
    model = _build(name)
    assert isinstance(model.target, TeacherTarget) and model.encoder.sparse is False
    assert model.target.dim == model.encoder.embed_dim == 32
    model.train()
    images = _batch(model)
    opt = _optimizer(model)
    teacher_before = _params(model.target.teacher)
    out = model(images, generator=torch.Generator().manual_seed(0))
    n = model.encoder.num_patches
    assert model.masker.num_hidden(model.grid) == n - int(n * 0.4)  # 60% hidden
    assert out.mask.sum(dim=1).tolist() == [n - int(n * 0.4)] * 8
    assert out.pred.shape == out.target.shape == (8, model.encoder.num_patches, 32)
    assert torch.isfinite(out.loss) and out.loss > 0
    out.loss.backward()
    assert all(p.grad is None for p in model.target.parameters())
    assert model.decoder.lm_head.weight.grad.abs().sum() > 0
    opt.step()
    teacher_plugin.maskkit_step_end(trainer=SimpleNamespace(total_steps=10), model=model, step=0)
    m = model.target.momentum_at(0, 10)
    assert m == model.target.momentum
    student = dict(model.encoder.named_parameters())
    moved = 0
    for n, p in model.target.teacher.named_parameters():
        torch.testing.assert_close(p, teacher_before[n] + (1 - m) * (student[n].detach() - teacher_before[n]),
                                   rtol=0, atol=1e-7)
        moved += int(not torch.equal(p, teacher_before[n]))
    assert moved > 0


def test_teacher_output_is_unchanged_by_student_steps_until_the_hook_runs():
    model = _build("quickstart_data2vec")
    model.train()
    images = _batch(model, b=4)
    # Even an optimizer given every parameter leaves the teacher alone: it has no gradients.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    assert all(not p.requires_grad for p in model.target.parameters())
    target_before = model.target(images)
    student_before = _params(model.encoder)
    for step in range(3):
        model(images, generator=torch.Generator().manual_seed(step)).loss.backward()
        opt.step()
        opt.zero_grad()
    assert not all(torch.equal(p, student_before[n]) for n, p in model.encoder.named_parameters())
    assert torch.equal(model.target(images), target_before)
    teacher_plugin.maskkit_step_end(trainer=RUN, model=model, step=2)
    assert not torch.allclose(model.target(images), target_before)


def test_state_dict_round_trip_restores_the_teacher_exactly():
    model = _build("quickstart_data2vec")
    model.train()
    images = _batch(model)
    opt = _optimizer(model)
    for step in range(2):
        model(images, generator=torch.Generator().manual_seed(step)).loss.backward()
        opt.step()
        opt.zero_grad()
        teacher_plugin.maskkit_step_end(trainer=RUN, model=model, step=step)
    state = model.state_dict()
    teacher_keys = [k for k in state if k.startswith("target.teacher.")]
    assert len(teacher_keys) == len(model.encoder.state_dict())
    assert "lm_head.weight" in state  # the decoder's keys are flattened like MAE's, the head keeps its name
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = _build("quickstart_data2vec", seed=1)
    assert not torch.equal(fresh.target(images), model.target(images))
    fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    assert torch.equal(fresh.target(images), model.target(images))
    for (n, p), (_, q) in zip(model.target.teacher.named_parameters(), fresh.target.teacher.named_parameters()):
        assert torch.equal(p, q), n
    # After loading, the restored teacher still follows the restored student.
    teacher_plugin.maskkit_step_end(trainer=RUN, model=fresh, step=2)
    teacher_plugin.maskkit_step_end(trainer=RUN, model=model, step=2)
    assert torch.equal(fresh.target(images), model.target(images))


def test_a_deep_copied_model_has_its_own_teacher_and_student():
    model = _build("quickstart_data2vec")
    clone = copy.deepcopy(model)
    assert clone.target.student is clone.encoder and model.target.student is model.encoder
    with torch.no_grad():
        for p in clone.encoder.parameters():
            p.add_(1.0)
    teacher_plugin.maskkit_step_end(trainer=RUN, model=clone, step=0)
    assert all(torch.equal(p, q) for p, q in zip(model.target.teacher.parameters(), model.encoder.parameters()))


def test_a_sparse_student_with_a_mask_token_decoder_also_trains():
    """The teacher always encodes the full image, so a sparse (MAE-style) student works too, given a decoder
    with mask tokens; the linear head refuses the sparse latent."""
    model = _build("quickstart_data2vec", ["encoder.dense=false", "decoder.name=mae", "decoder.embed_dim=16",
                                           "decoder.depth=1", "decoder.num_heads=2"])
    assert model.encoder.sparse
    out = model(_batch(model, b=2), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.target.shape == (2, 196, 32)
    with pytest.raises(ValueError, match="dense"):
        _build("quickstart_data2vec", ["encoder.dense=false"])(_batch(model, b=2))
