"""The EMA update and its momentum ramp, called directly and through pluggy's step-end hook."""

import types
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from teacher_helpers import tiny_encoder

import maskkit
from maskkit.registry import Registry, make_plugin_manager
from maskkit_teacher import FALLBACK_RAMP_STEPS, TeacherTarget, ema_update_, momentum_at
from maskkit_teacher import plugin as teacher_plugin


def _set_dyadic_(module, gen):
    """Give every parameter values k / 16 with |k| <= 64: m * t + (1 - m) * s is then exact in float32 for
    any momentum m = j / 16, so the update can be compared bit for bit with the hand computation."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randint(-64, 65, p.shape, generator=gen).float() / 16)


def _snapshot(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _assert_exact_ema(target, before_teacher, student_values, m):
    for name, param in target.teacher.named_parameters():
        expected = m * before_teacher[name].double() + (1 - m) * student_values[name].double()
        assert torch.equal(param.double(), expected), f"{name}: EMA differs from m * t + (1 - m) * s"


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), j=st.integers(0, 16))
def test_ema_equals_hand_computation_exactly(seed, j):
    m = j / 16
    gen = torch.Generator().manual_seed(seed)
    student = tiny_encoder(depth=1)
    target = TeacherTarget(student, top_k=1)
    _set_dyadic_(target.teacher, gen)
    _set_dyadic_(student, gen)
    before, student_values = _snapshot(target.teacher), _snapshot(student)
    target.update_teacher(m)
    _assert_exact_ema(target, before, student_values, m)
    assert target.last_momentum == m
    for name, p in student.named_parameters():
        assert torch.equal(p, student_values[name]), "the student must not move"


def test_ema_with_a_realistic_momentum():
    student = tiny_encoder(depth=1)
    target = TeacherTarget(student, top_k=1)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before, s = _snapshot(target.teacher), _snapshot(student)
    target.update_teacher(0.999)
    for name, param in target.teacher.named_parameters():
        torch.testing.assert_close(param, 0.999 * before[name] + 0.001 * s[name], rtol=0, atol=1e-6)


def test_equal_and_frozen_parameters_do_not_drift():
    """Where teacher and student agree (the frozen sin-cos position embedding) the update is bit-exact."""
    student = tiny_encoder(depth=1)
    target = TeacherTarget(student, top_k=1)
    pos = target.teacher.pos_embed.detach().clone()
    for _ in range(50):
        target.update_teacher(0.9997)
    assert torch.equal(target.teacher.pos_embed, pos)
    target.update_teacher(1.0)
    for name, p in target.teacher.named_parameters():
        assert torch.equal(p, dict(student.named_parameters())[name])


def test_ema_update_refuses_different_structures():
    with pytest.raises(RuntimeError, match="deep copy"):
        ema_update_(tiny_encoder(depth=1), tiny_encoder(depth=2), 0.5)


@settings(max_examples=50, deadline=None)
@given(start=st.floats(0, 1), end=st.floats(0, 1), ramp=st.integers(1, 10_000), step=st.integers(0, 20_000))
def test_momentum_ramp_is_linear_then_constant(start, end, ramp, step):
    m = momentum_at(step, start, end, ramp)
    if step >= ramp:
        assert m == end
    else:
        fairseq = end - (end - start) * (1 - step / ramp)  # fairseq's get_annealed_rate
        assert m == pytest.approx(fairseq, abs=1e-12)
        assert min(start, end) - 1e-12 <= m <= max(start, end) + 1e-12
    assert momentum_at(0, start, end, ramp) == start
    assert momentum_at(step, start, end, 0) == end


def test_ramp_length_comes_from_the_recipe_then_the_trainer_then_the_fallback():
    trainer = types.SimpleNamespace(total_steps=100)
    whole_run = TeacherTarget(tiny_encoder(depth=1), top_k=1, momentum=0.9, momentum_end=1.0)
    assert whole_run.momentum_at(50, trainer.total_steps) == pytest.approx(0.95)
    fixed = TeacherTarget(tiny_encoder(depth=1), top_k=1, momentum=0.9, momentum_end=1.0, ramp_steps=10)
    assert fixed.momentum_at(5, trainer.total_steps) == pytest.approx(0.95)
    assert fixed.momentum_at(50, trainer.total_steps) == 1.0
    with pytest.warns(UserWarning, match="run length is unknown"):
        m = whole_run.momentum_at(FALLBACK_RAMP_STEPS // 2)
    assert m == pytest.approx(0.95)
    constant = TeacherTarget(tiny_encoder(depth=1), top_k=1, momentum=0.99, momentum_end=0.99)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a constant momentum needs no run length: no warning
        assert constant.momentum_at(123) == 0.99


def test_the_same_step_twice_is_an_error_not_a_second_update():
    student = tiny_encoder(depth=1)
    target = TeacherTarget(student, top_k=1, momentum=0.5, momentum_end=0.5, ramp_steps=0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    assert target.ema_step(0) == 0.5
    after_first = _snapshot(target.teacher)
    with pytest.raises(RuntimeError, match="already applied"):
        target.ema_step(0)
    for name, p in target.teacher.named_parameters():
        assert torch.equal(p, after_first[name])
    target.ema_step(1)  # the next step is fine


# -- through pluggy ---------------------------------------------------------------------------------------


def _tiny_model(momentum=0.75):
    recipe = maskkit.load_recipe("quickstart_data2vec", [
        "encoder.embed_dim=32", "encoder.depth=2", "encoder.num_heads=2", "encoder.img_size=8",
        f"target.momentum={momentum}", f"target.momentum_end={momentum}"])
    torch.manual_seed(0)
    return maskkit.build_model(recipe)


def _check_hook_applies_one_exact_update(hook, model):
    gen = torch.Generator().manual_seed(0)
    _set_dyadic_(model.target.teacher, gen)
    _set_dyadic_(model.encoder, gen)
    before, student_values = _snapshot(model.target.teacher), _snapshot(model.encoder)
    hook.maskkit_step_end(trainer=None, model=model, step=0, loss=torch.tensor(0.0))
    _assert_exact_ema(model.target, before, student_values, 0.75)


def test_installed_plugin_hook_is_called_by_pluggy():
    """The entry point (``pip install -e plugins/maskkit-teacher``) registers the hook under 'teacher'."""
    registry = Registry.from_plugins(autoload=True)
    assert registry.plugin_manager.get_plugin("teacher") is teacher_plugin, \
        "entry point 'teacher' not loaded: pip install --no-deps --no-build-isolation -e plugins/maskkit-teacher"
    assert registry.get("target", "teacher").plugin == "teacher"
    _check_hook_applies_one_exact_update(registry.plugin_manager.hook, _tiny_model())


def test_hook_from_a_manager_built_by_hand():
    loaded = make_plugin_manager(autoload=False)
    loaded.manager.register(teacher_plugin, name="teacher")
    loaded.manager.check_pending()
    _check_hook_applies_one_exact_update(loaded.manager.hook, _tiny_model())


def test_hook_finds_the_target_inside_a_wrapper_and_reads_total_steps():
    model = _tiny_model()
    model.target.momentum, model.target.momentum_end = 0.5, 1.0
    wrapper = torch.nn.Sequential(model)  # as DDP / torch.compile wrap the model
    trainer = types.SimpleNamespace(total_steps=8)
    teacher_plugin.maskkit_step_end(trainer=trainer, model=wrapper, step=2)
    assert model.target.last_momentum == pytest.approx(0.625)


def test_hook_ignores_models_without_a_teacher():
    tree = maskkit.load_recipe("quickstart_data2vec", ["encoder.depth=1", "encoder.embed_dim=32"]).tree
    tree |= {"target": {"name": "norm_pixels"}, "decoder": {"name": "mae", "embed_dim": 16, "depth": 1,
                                                            "num_heads": 2}}
    model = maskkit.build_model(maskkit.load_recipe(tree))
    teacher_plugin.maskkit_step_end(trainer=None, model=model, step=0)  # nothing to do, no error
