"""``train.batch_size: auto``: the rule that picks a micro-batch and accumulation steps, and the trainer using it."""

from __future__ import annotations

import math

import pytest
import yaml
from helpers import tiny_tree
from hypothesis import given, settings
from hypothesis import strategies as st

import maskkit
from maskkit.engine.batch_rule import CPU_MICRO, MAX_MICRO, StepShape, pick_batch
from maskkit.engine.trainer import Trainer

GiB = 2**30
# MAE's step shapes at 224 px, 75% masked (visible tokens + cls), decoder 8 x 512 on every patch + cls
VIT_B16 = StepShape(params=111_700_000, encoder_tokens=50, encoder_dim=768, encoder_depth=12,
                    decoder_tokens=197, decoder_dim=512, decoder_depth=8)
VIT_L16 = StepShape(params=329_500_000, encoder_tokens=50, encoder_dim=1024, encoder_depth=24,
                    decoder_tokens=197, decoder_dim=512, decoder_depth=8)
VIT_H14 = StepShape(params=657_000_000, encoder_tokens=65, encoder_dim=1280, encoder_depth=32,
                    decoder_tokens=257, decoder_dim=512, decoder_depth=8)


@pytest.mark.parametrize("shape, memory, world, expected", [
    (VIT_L16, 80 * GiB, 8, (256, 2)),    # H100: the largest micro-batch the rule allows
    (VIT_L16, 141 * GiB, 8, (256, 2)),   # H200: capped at MAX_MICRO
    (VIT_H14, 80 * GiB, 8, (128, 4)),    # ~126 MB of activations per image: 246 fit, so 128
    (VIT_H14, 141 * GiB, 8, (256, 2)),
    (VIT_B16, 16 * GiB, 8, (128, 4)),    # a 16 GB GPU: ~43 MB per image, 153 fit
    (VIT_L16, 16 * GiB, 32, (32, 4)),    # 32 x 16 GB: weights and AdamW take 6 GB, 38 images fit: 32
    (VIT_B16, 80 * GiB, 1, (256, 16)),   # one GPU
])
def test_cuda_picks(shape, memory, world, expected):
    micro, accum = pick_batch(shape, effective_batch=4096, world_size=world, device_type="cuda", memory_bytes=memory)
    assert (micro, accum) == expected and micro * accum * world == 4096


def test_cpu_fallback_and_errors():
    assert pick_batch(VIT_L16, effective_batch=4096, world_size=2, device_type="cpu") == (CPU_MICRO, 32)
    assert pick_batch(VIT_B16, effective_batch=96, world_size=1, device_type="cpu") == (32, 3)  # divides 96
    assert pick_batch(VIT_B16, effective_batch=4096, world_size=8, device_type="cuda", memory_bytes=80 * GiB,
                      bf16=False)[0] == 256  # fp32 doubles the activations: 80 GB still fits 256
    with pytest.raises(maskkit.ConfigError, match="train.effective_batch: expected a positive multiple of the world"):
        pick_batch(VIT_B16, effective_batch=4096, world_size=6, device_type="cuda", memory_bytes=80 * GiB)
    with pytest.raises(maskkit.ConfigError, match="leaves no room"):
        pick_batch(VIT_H14, effective_batch=4096, world_size=8, device_type="cuda", memory_bytes=8 * GiB)


@settings(max_examples=60, deadline=None)
@given(log_effective=st.integers(0, 13), log_world=st.integers(0, 6), memory_gib=st.integers(12, 200),
       more=st.integers(0, 200), cpu=st.booleans())
def test_the_picks_keep_the_effective_batch_and_grow_with_memory(log_effective, log_world, memory_gib, more, cpu):
    world = 2 ** min(log_world, log_effective)
    effective = 2**log_effective * 3 if log_effective % 3 == 0 else 2**log_effective  # some non-powers of two
    kind = "cpu" if cpu else "cuda"
    micro, accum = pick_batch(VIT_L16, effective_batch=effective, world_size=world, device_type=kind,
                              memory_bytes=memory_gib * GiB)
    assert micro * accum * world == effective and micro == 2 ** int(math.log2(micro))
    assert micro <= (CPU_MICRO if cpu else MAX_MICRO)
    bigger, _ = pick_batch(VIT_L16, effective_batch=effective, world_size=world, device_type=kind,
                           memory_bytes=(memory_gib + more) * GiB)
    assert bigger >= micro


def test_step_shape_of_a_built_model(builtin_registry):
    model = maskkit.build_model(maskkit.Recipe(tiny_tree()), builtin_registry)  # 28 px, 4 px patches: 49 patches
    shape = StepShape.of(model)
    hidden = model.masker.num_hidden(model.grid)
    assert 30 < hidden < 40 and (
        (shape.encoder_tokens, shape.encoder_dim, shape.encoder_depth) == (1 + 49 - hidden, 32, 1))
    assert (shape.decoder_tokens, shape.decoder_dim, shape.decoder_depth) == (1 + 49, 16, 1)
    assert shape.params == sum(p.numel() for p in model.parameters())


def test_recipe_keys_go_together():
    def train(**keys):
        return maskkit.Recipe(tiny_tree(train={**tiny_tree()["train"], **keys})).train

    assert train(batch_size="auto", accum_steps="auto", effective_batch=64).auto_batch
    with pytest.raises(maskkit.ConfigError, match="train.accum_steps: batch_size: auto and accum_steps: auto go"):
        train(batch_size="auto", effective_batch=64)
    with pytest.raises(maskkit.ConfigError, match="train.effective_batch: expected with batch_size: auto"):
        train(batch_size="auto", accum_steps="auto")
    with pytest.raises(maskkit.ConfigError, match="train.batch_size: expected a positive int"):
        train(batch_size="big")


def test_trainer_records_the_picks_and_scales_the_lr(tmp_path, builtin_registry):
    tree = tiny_tree()
    tree["train"].update(batch_size="auto", accum_steps="auto", effective_batch=128, max_steps=1, ckpt_every=0,
                         base_lr=1e-3)
    trainer = Trainer(maskkit.Recipe(tree), tmp_path, registry=builtin_registry, progress=False)
    trainer.fit()
    saved = yaml.safe_load((tmp_path / "recipe.yaml").read_text())["train"]
    assert (saved["batch_size"], saved["accum_steps"], saved["effective_batch"]) == (64, 2, 128)  # CPU: 64
    assert trainer.effective_batch == 128 and math.isclose(trainer.base_lr, 1e-3 * 128 / 256)
    tree["train"]["max_steps"] = 2  # a resume of the auto recipe takes the checkpoint's picks and is accepted
    resumed = Trainer(maskkit.Recipe(tree), tmp_path, registry=builtin_registry, progress=False,
                      resume=tmp_path / "checkpoint.pth")
    assert resumed.fit().steps == 2 and (resumed.cfg.batch_size, resumed.cfg.accum_steps) == (64, 2)
    tree["train"].update(batch_size=32, accum_steps=2, max_steps=1)  # numbers that do not make the effective batch
    with pytest.raises(maskkit.ConfigError, match="train.effective_batch: batch_size 32 x accum_steps 2"):
        Trainer(maskkit.Recipe(tree), tmp_path / "bad", registry=builtin_registry, progress=False).fit()


def test_an_auto_batch_error_names_the_recipe_file(tmp_path, builtin_registry, monkeypatch):
    """The rule's errors reach the user as one line that names the recipe file, as every recipe error does
    (here: an effective batch that 3 processes cannot split)."""
    import maskkit.engine.trainer as trainer_module

    real = trainer_module.pick_batch
    monkeypatch.setattr(trainer_module, "pick_batch", lambda shape, **kw: real(shape, **{**kw, "world_size": 3}))
    tree = tiny_tree()
    tree["train"].update(batch_size="auto", accum_steps="auto", effective_batch=128, max_steps=1)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(maskkit.ConfigError) as info:
        Trainer(maskkit.load_recipe(str(path)), tmp_path / "run", registry=builtin_registry, progress=False).fit()
    assert str(info.value) == (f"{path}: train.effective_batch: expected a positive multiple of the world size 3, "
                               "got 128")
