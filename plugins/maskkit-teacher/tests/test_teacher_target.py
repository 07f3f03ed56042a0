"""The teacher target: a frozen deep copy of the student, top-K block averages of the full image."""

import copy

import pytest
import torch
import torch.nn.functional as F
from teacher_helpers import fashion_images, tiny_encoder

import maskkit
from maskkit.errors import ConfigError
from maskkit_teacher import TeacherTarget


def _images(enc, b=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, enc.in_chans, *enc.img_size, generator=gen)


def test_teacher_is_a_frozen_deep_copy_of_the_student():
    student = tiny_encoder()
    target = TeacherTarget(student, top_k=2)
    assert target.dim == student.embed_dim and target.student is student
    t_params, s_params = dict(target.teacher.named_parameters()), dict(student.named_parameters())
    assert t_params.keys() == s_params.keys()
    for name, param in t_params.items():
        assert torch.equal(param, s_params[name])
        assert param.data_ptr() != s_params[name].data_ptr(), f"{name} is shared, not copied"
        assert not param.requires_grad
    assert any(p.requires_grad for p in student.parameters()), "the student must stay trainable"


def test_only_the_teacher_is_in_the_state_dict():
    """The student is referenced, not registered: its weights are saved once, as the encoder's."""
    student = tiny_encoder()
    target = TeacherTarget(student, top_k=2)
    keys = list(target.state_dict())
    assert keys and all(k.startswith("teacher.") for k in keys)
    assert len(keys) == len(student.state_dict())
    assert {id(p) for p in target.parameters()}.isdisjoint(id(p) for p in student.parameters())


def test_teacher_stays_in_eval_mode():
    target = TeacherTarget(tiny_encoder(drop_path_rate=0.5), top_k=2)
    target.train()
    assert target.training and not target.teacher.training
    assert not any(m.training for m in target.teacher.modules())
    images = _images(target.teacher)
    torch.testing.assert_close(target(images), target(images))  # drop-path would make this random


def test_top_block_alone_is_the_encoder_output_before_its_final_norm():
    """Oracle: with top_k=1 and no normalization the target is the last block's output, so the encoder's own
    final norm applied to it gives ``forward_features`` (prefix dropped)."""
    enc = tiny_encoder(reg_tokens=2)
    target = TeacherTarget(enc, top_k=1, layer_norm=False)
    images = _images(enc)
    out = target(images)
    expected = enc.forward_features(images)[:, enc.num_prefix_tokens:]
    torch.testing.assert_close(target.teacher.norm(out), expected)


def test_top_k_averages_the_last_k_blocks():
    """Oracle: a copy of the encoder cut after block L-1 gives block L-1's output, so the top-2 average
    equals the mean of the top-1 targets of the cut and the full encoder."""
    enc = tiny_encoder(depth=3)
    cut = copy.deepcopy(enc)
    cut.blocks = cut.blocks[:-1]
    images = _images(enc)
    for layer_norm in (False, True):
        last = TeacherTarget(enc, top_k=1, layer_norm=layer_norm)(images)
        before_last = TeacherTarget(cut, top_k=1, layer_norm=layer_norm)(images)
        both = TeacherTarget(enc, top_k=2, layer_norm=layer_norm)(images)
        torch.testing.assert_close(both, (last + before_last) / 2)
        assert not torch.allclose(last, before_last)


def test_layer_norm_of_each_block_and_of_the_average():
    enc = tiny_encoder()
    images = _images(enc)
    raw = TeacherTarget(enc, top_k=1, layer_norm=False)(images)
    torch.testing.assert_close(TeacherTarget(enc, top_k=1, layer_norm=True)(images), F.layer_norm(raw, (32,)))
    post = TeacherTarget(enc, top_k=3, layer_norm=True, post_layer_norm=True)(images)
    torch.testing.assert_close(post.mean(-1), torch.zeros(post.shape[:2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(post.var(-1, unbiased=False), torch.ones(post.shape[:2]), atol=1e-3, rtol=0)


def test_target_sees_the_full_image_on_real_data():
    """On real Fashion-MNIST images: every patch's target depends on the whole image (attention mixes the
    patches), so changing one corner patch changes the targets of patches far from it."""
    images = fashion_images(4)
    enc = tiny_encoder(img_size=28, patch_size=2, in_chans=1, depth=2)
    target = TeacherTarget(enc, top_k=2)
    out = target(images)
    assert out.shape == (4, 196, 32) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1]), "different images must give different targets"
    changed = images.clone()
    changed[:, :, :2, :2] += 3.0  # patch 0 only
    far = target(changed)[:, 195]
    assert not torch.allclose(far, out[:, 195])


def test_target_runs_the_teacher_in_its_own_dtype_and_returns_the_images_dtype():
    target = TeacherTarget(tiny_encoder(), top_k=2)
    images = _images(target.teacher)
    out64 = target(images.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), target(images))


def test_an_encoder_method_for_block_outputs_is_used_when_present():
    """An encoder offering ``forward_block_outputs`` (the method proposed for the core) is asked directly."""
    enc = tiny_encoder(depth=2)
    p, n = enc.num_prefix_tokens, enc.num_patches
    known = [torch.full((2, p + n, 32), float(i)) + torch.arange(32.0) for i in range(2)]
    enc.forward_block_outputs = lambda images: known
    target = TeacherTarget(enc, top_k=2, layer_norm=False)
    torch.testing.assert_close(target(_images(enc, 2)), ((known[0] + known[1]) / 2)[:, p:])


def test_hooks_are_removed_after_each_call():
    target = TeacherTarget(tiny_encoder(), top_k=2)
    target(_images(target.teacher))
    assert all(not block._forward_hooks for block in target.teacher.blocks)


def test_no_gradient_reaches_the_teacher():
    enc = tiny_encoder()
    target = TeacherTarget(enc, top_k=2)
    images = _images(enc)
    mask = torch.zeros(3, enc.num_patches, dtype=torch.bool)
    mask[:, ::2] = True
    loss = F.mse_loss(enc(images, mask)[:, 1:], target(images))
    loss.backward()
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)


@pytest.mark.parametrize("kwargs, key", [
    ({"top_k": 0}, "top_k"), ({"top_k": 4}, "top_k"), ({"top_k": 2.0}, "top_k"),
    ({"momentum": 1.5}, "momentum"), ({"momentum_end": -0.1}, "momentum_end"),
    ({"ramp_steps": -1}, "ramp_steps"), ({"layer_norm": "yes"}, "layer_norm"),
])
def test_bad_arguments_name_their_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        TeacherTarget(tiny_encoder(depth=3), **{"top_k": 2, **kwargs})
    assert info.value.key == key


def test_recipe_errors_name_the_target_section():
    recipe = maskkit.load_recipe("quickstart_data2vec", ["target.top_k=5"])
    with pytest.raises(ConfigError, match=r"target\.top_k: expected an int in \[1, 4\]"):
        maskkit.build_model(recipe)
    with pytest.raises(ConfigError, match="target.encoder"):
        maskkit.build_model(maskkit.load_recipe("quickstart_data2vec", ["target.encoder=1"]))
