"""With maskkit's own Trainer: the hook runs once per step with the trainer's run length, and a run resumed
from a checkpoint ends with exactly the teacher of an uninterrupted run."""

import pytest
import torch

import maskkit
from maskkit.registry import Registry, make_plugin_manager
from maskkit_teacher import momentum_at
from maskkit_teacher import plugin as teacher_plugin

trainer_module = pytest.importorskip("maskkit.engine.trainer")

OVERRIDES = ["encoder.img_size=12", "encoder.embed_dim=32", "encoder.depth=2", "encoder.num_heads=2",
             "train.batch_size=8", "train.max_steps=4", "train.ckpt_every=2", "train.warmup_epochs=0",
             "train.device=cpu"]


class Stop(Exception):
    pass


class StopAfterCheckpoint:
    """Interrupts the run right after the checkpoint of step ``step`` is written."""

    def __init__(self, step):
        self.step = step

    @maskkit.hookimpl
    def maskkit_checkpoint_saved(self, step):
        if step == self.step:
            raise Stop


class RecordMomentum:
    def __init__(self):
        self.seen = []

    @maskkit.hookimpl(trylast=True)  # after the teacher plugin's update
    def maskkit_step_end(self, trainer, model, step):
        self.seen.append((step, trainer.total_steps, model.target.last_momentum))


def _registry(*extra):
    loaded = make_plugin_manager(autoload=False)
    loaded.manager.register(teacher_plugin, name="teacher")
    for i, plugin in enumerate(extra):
        loaded.manager.register(plugin, name=f"test_{i}")
    return Registry(loaded)


def _fit(recipe, out, registry, resume=None):
    trainer = trainer_module.Trainer(recipe, out, registry=registry, resume=resume, progress=False)
    trainer.fit()
    return trainer


def test_trainer_drives_the_ema_and_resume_is_exact(tmp_path):
    pytest.importorskip("maskkit.data")
    recipe = maskkit.load_recipe("quickstart_data2vec", OVERRIDES)
    recorder = RecordMomentum()
    straight = _fit(recipe, tmp_path / "a", _registry(recorder))
    start, end = recipe.tree["target"]["momentum"], recipe.tree["target"]["momentum_end"]
    assert recorder.seen == [(s, 4, pytest.approx(momentum_at(s, start, end, 4))) for s in range(4)]

    with pytest.raises(Stop):
        _fit(recipe, tmp_path / "b", _registry(StopAfterCheckpoint(2)))
    resumed = _fit(recipe, tmp_path / "b", _registry(), resume=tmp_path / "b" / "checkpoint.pth")
    assert resumed.step == straight.step == 4
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and any(k.startswith("target.teacher.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    teacher = dict(straight.model.target.teacher.named_parameters())
    student = dict(straight.model.encoder.named_parameters())
    assert any(not torch.equal(teacher[n], student[n]) for n in teacher), "the teacher lags the student"
