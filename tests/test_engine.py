"""The training engine: exact resume, metrics, atomic checkpoints, non-finite losses, schedules."""

import json
import math
import re
import time

import pytest
import torch
from helpers import tiny_tree

import maskkit
from maskkit.engine import checkpoint as ckpt
from maskkit.engine.optim import lr_at, param_groups
from maskkit.engine.trainer import Trainer
from maskkit.errors import CheckpointError, TrainingError
from maskkit.recipe import load_recipe


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class Crash(Exception):
    pass


class CrashAfterCheckpoint:
    """Simulates a crash right after the checkpoint of ``step`` is written."""

    def __init__(self, step):
        self.step = step

    @maskkit.hookimpl
    def maskkit_checkpoint_saved(self, path, step):
        if step == self.step:
            raise Crash(f"crash after step {step}")


def test_resume_continues_bit_for_bit(tmp_path):
    """With drop-path, so that the restored random state matters; logging every 2 steps and checkpointing every
    3, so that the checkpoint holds an open loss window, which the resumed run's ``loss_avg`` continues."""
    recipe = load_recipe(tiny_tree(), ["train.max_steps=6", "train.ckpt_every=3", "augment.scale=[0.2, 1.0]",
                                       "encoder.drop_path_rate=0.5", "encoder.depth=2", "train.log_every=2"])
    full = Trainer(recipe, tmp_path / "full", registry=maskkit.Registry.from_plugins(autoload=False),
                   progress=False).fit()
    assert full.steps == 6
    crashing = maskkit.Registry.from_plugins(autoload=False, plugins={"crash": CrashAfterCheckpoint(3)})
    with pytest.raises(Crash):
        Trainer(recipe, tmp_path / "part", registry=crashing, progress=False).fit()
    assert ckpt.load_training_checkpoint(tmp_path / "part" / "checkpoint.pth")["step"] == 3
    Trainer(recipe, tmp_path / "part", registry=maskkit.Registry.from_plugins(autoload=False),
            resume=tmp_path / "part" / "checkpoint.pth", progress=False).fit()
    assert losses(tmp_path / "part") == losses(tmp_path / "full")  # exact float equality, every step
    averages = [[json.loads(line)["loss_avg"] for line in (run / "metrics.jsonl").read_text().splitlines()]
                for run in (tmp_path / "part", tmp_path / "full")]
    assert averages[0] == averages[1] and len(averages[0]) == 3
    a = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "checkpoint.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("accum, steps_per_epoch, max_steps, ckpt_every", [(2, 6, 9, 4), (5, 2, 6, 3)])
def test_resume_across_an_epoch_boundary_with_accumulation(tmp_path, builtin_registry, accum, steps_per_epoch,
                                                            max_steps, ckpt_every):
    """200 images make 12 batches of 16: 6 steps of 2 micro-batches per epoch, or 2 steps of 5 (the last 2
    batches of each epoch, too few for a step, are not drawn: an epoch ends with a step); the crash is in the
    second or third epoch."""
    tree = tiny_tree()
    recipe = load_recipe(tree, [f"train.max_steps={max_steps}", "train.batch_size=16", f"train.accum_steps={accum}",
                                f"train.ckpt_every={ckpt_every}"])
    subset = SmallFashion(200)
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"small": subset})
    recipe = recipe.with_overrides(["data={name: small_fashion}"])
    full = Trainer(recipe, tmp_path / "full", registry=registry, progress=False)
    full.fit()
    assert full.steps_per_epoch == steps_per_epoch and len(full.sampler) == steps_per_epoch * accum
    crash_step = (max_steps - 1) // ckpt_every * ckpt_every
    crash = maskkit.Registry.from_plugins(autoload=False,
                                          plugins={"small": subset, "crash": CrashAfterCheckpoint(crash_step)})
    with pytest.raises(Crash):
        Trainer(recipe, tmp_path / "part", registry=crash, progress=False).fit()
    Trainer(recipe, tmp_path / "part", registry=registry, resume=tmp_path / "part" / "checkpoint.pth",
            progress=False).fit()
    assert losses(tmp_path / "part") == losses(tmp_path / "full")


class SmallFashion:
    """A plugin providing the first ``n`` embedded Fashion-MNIST images as dataset ``small_fashion``."""

    def __init__(self, n):
        self.n = n

    @maskkit.hookimpl
    def maskkit_add_datasets(self):
        from maskkit.data.fashion_mnist import FashionMNIST

        n = self.n

        def small_fashion(split: str = "train"):
            data = FashionMNIST(split, source="embedded")
            data.images, data.labels = data.images[:n], data.labels[:n]
            return data

        return {"small_fashion": small_fashion}


def test_the_metrics_say_what_checkpoints_took_of_each_window(tmp_path, builtin_registry, monkeypatch):
    """A checkpoint written between two records is part of the next record's wall time (its ``images_per_s``)
    and is said apart as its ``checkpoint_s``, so that a reader can tell the steps' rate from the saving's cost
    (the GPU check's train-versus-bench goal does)."""
    save_atomic = ckpt.save_atomic

    def slow_save(*args, **kwargs):
        time.sleep(0.3)
        return save_atomic(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_atomic", slow_save)
    recipe = load_recipe(tiny_tree(), ["train.max_steps=6", "train.log_every=2", "train.ckpt_every=3"])
    Trainer(recipe, tmp_path, registry=builtin_registry, progress=False).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert records[0]["checkpoint_s"] == 0.0 and records[2]["checkpoint_s"] == 0.0  # step 6's comes after its record
    assert 0.3 <= records[1]["checkpoint_s"] <= records[1]["time"] - records[0]["time"]  # step 3's, in (2, 4]


def test_run_folder_contents(tmp_path, builtin_registry):
    recipe = load_recipe(tiny_tree(), ["train.max_steps=4", "train.log_every=2"])
    result = Trainer(recipe, tmp_path, registry=builtin_registry, progress=False).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert all({"step", "loss", "lr", "images_per_s", "epoch"} <= set(r) for r in records)
    assert result.final_loss == records[-1]["loss"]
    assert load_recipe(tmp_path / "recipe.yaml").tree == recipe.tree
    versions = json.loads((tmp_path / "versions.json").read_text())
    assert {"maskkit", "torch", "timm", "plugin:maskkit"} <= set(versions)
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)  # plain data and tensors only
    assert state["step"] == 4 and state["format"] == "maskkit"
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


class PoisonAtStep:
    """Sets a weight to NaN before ``step``, so that step's loss is non-finite."""

    def __init__(self, step):
        self.step = step

    @maskkit.hookimpl
    def maskkit_step_start(self, model, step):
        if step == self.step:
            with torch.no_grad():
                model.decoder.decoder_pred.weight.fill_(float("nan"))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    recipe = load_recipe(tiny_tree(), ["train.max_steps=6", "train.ckpt_every=2", "train.log_every=3"])
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"poison": PoisonAtStep(3)})
    with pytest.raises(TrainingError, match=r"non-finite loss at step 3 .*last good checkpoint is .*checkpoint.pth"):
        Trainer(recipe, tmp_path, registry=registry, progress=False).fit()
    state = ckpt.load_training_checkpoint(tmp_path / "checkpoint.pth")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "c.pth"
    ckpt.save_atomic({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ckpt.save_atomic({"a": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert list(tmp_path.iterdir()) == [path]


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth: not a readable checkpoint"):
        ckpt.load_training_checkpoint(bad)
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pth: not a maskkit training checkpoint"):
        ckpt.load_training_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ckpt.load_training_checkpoint(tmp_path / "missing.pth")


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_mapped_read_gives_the_same_checkpoint_in_either_file_format(tmp_path, zip_format):
    """``mmap=True`` (a look at a checkpoint's recipe) maps a zip-format file and reads a pre-zip one whole, so
    both give the same tensors and plain data; the refusals are the same as for a full read."""
    path = tmp_path / "c.pth"
    saved = {"format": "maskkit", "step": 3, "model": {"w": torch.arange(6.0)}, "recipe": {"train": {"lr": 1.0}}}
    torch.save(saved, path, _use_new_zipfile_serialization=zip_format)
    mapped = ckpt.read_checkpoint(path, mmap=True)
    assert mapped["step"] == 3 and mapped["recipe"] == saved["recipe"]
    assert torch.equal(mapped["model"]["w"], saved["model"]["w"])
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth: not a readable checkpoint"):
        ckpt.read_checkpoint(bad, mmap=True)


def test_resume_refuses_a_checkpoint_it_cannot_continue_saying_what_it_is(tmp_path, builtin_registry, capsys):
    """A weights-only checkpoint (no optimizer or random states), one made by ``maskkit convert`` and a
    fine-tuning one: ``--resume`` says what each is, in one line, instead of blaming the weights or the recipe."""
    from maskkit.cli import main

    recipe = load_recipe(tiny_tree(), ["train.max_steps=1"])
    Trainer(recipe, tmp_path / "run", registry=builtin_registry, progress=False).fit()
    state = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    cases = {"weights.pth": ({k: v for k, v in state.items() if k not in ("optimizer", "rng")},
                             "not resumable: it holds no optimizer, rng"),
             "converted.pth": ({**state, "converted_from": {"source": "official", "path": "", "notes": []}},
                               "made by `maskkit convert`"),
             "finetune.pth": ({**state, "kind": "finetune"}, "a fine-tuning checkpoint; `maskkit finetune --resume")}
    for name, (content, fragment) in cases.items():
        path = tmp_path / name
        torch.save(content, path)
        with pytest.raises(CheckpointError, match=re.escape(fragment)):
            Trainer(recipe, tmp_path / name, registry=builtin_registry, resume=path, progress=False).fit()
        assert main(["train", "--resume", str(path), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and fragment in err, err


def test_resume_with_a_different_recipe_is_refused(tmp_path, builtin_registry):
    recipe = load_recipe(tiny_tree(), ["train.max_steps=2"])
    Trainer(recipe, tmp_path, registry=builtin_registry, progress=False).fit()
    other = recipe.with_overrides(["masker.ratio=0.5"])
    with pytest.raises(CheckpointError, match="differs from the checkpoint's in masker.ratio"):
        Trainer(other, tmp_path, registry=builtin_registry, resume=tmp_path / "checkpoint.pth", progress=False).fit()


def test_resume_with_a_default_spelled_out_is_the_same_recipe(tmp_path, builtin_registry):
    """``train.compile: auto``, ``train.precision: auto``, ``seed: 0`` and ``augment.hflip: true`` are defaults:
    writing them out (or leaving them out) does not change the recipe a resume compares."""
    tree = tiny_tree()
    tree.pop("seed")  # 0 by default
    recipe = load_recipe(tree, ["train.max_steps=2"])
    Trainer(recipe, tmp_path, registry=builtin_registry, progress=False).fit()
    from rich.console import Console

    spelled = recipe.with_overrides(["train.max_steps=3", "train.compile=auto", "train.precision=auto", "seed=0",
                                     "data_seed=0", "distributed.strategy=ddp", "data.decode=host"])
    console = Console(record=True, width=200)
    trainer = Trainer(spelled, tmp_path, registry=builtin_registry, resume=tmp_path / "checkpoint.pth",
                      progress=False, console=console)
    assert trainer.fit().steps == 3
    assert "not bit for bit" not in console.export_text()  # data.decode: host is the default route
    changed = recipe.with_overrides(["train.precision=fp32", "train.max_steps=4"])  # no default: still refused
    with pytest.raises(CheckpointError, match="differs from the checkpoint's in train.precision"):
        Trainer(changed, tmp_path, registry=builtin_registry, resume=tmp_path / "checkpoint.pth",
                progress=False).fit()
    # a checkpoint whose recipe no longer validates (a key of an older maskkit): the trees as written are
    # compared, so the message names that key rather than every default of the other side
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    state["recipe"]["train"]["retired_key"] = 1
    torch.save(state, tmp_path / "older.pth")
    with pytest.raises(CheckpointError, match=r"differs from the checkpoint's in train\.retired_key; a resumed"):
        Trainer(spelled, tmp_path, registry=builtin_registry, resume=tmp_path / "older.pth", progress=False).fit()


def test_resume_may_change_the_evaluation_and_says_when_it_is_not_exact(tmp_path, builtin_registry):
    """``eval.*`` runs after training: it may change. ``train.device`` may change too (a run moved to a GPU),
    with a note that the run is no longer bit-exact."""
    from rich.console import Console

    recipe = load_recipe(tiny_tree(), ["train.max_steps=2", "train.device=auto"])
    Trainer(recipe, tmp_path, registry=builtin_registry, progress=False).fit()
    console = Console(record=True, width=200)
    resumed = Trainer(recipe.with_overrides(["train.max_steps=3", "eval.k=5", "train.device=cpu"]), tmp_path,
                      registry=builtin_registry, resume=tmp_path / "checkpoint.pth", progress=False, console=console)
    assert resumed.fit().steps == 3
    said = console.export_text()
    assert "resuming with train.device changed: the run goes on, but not bit for bit" in said and "eval" not in said


def test_weight_decay_groups(builtin_registry):
    model = maskkit.build_model(load_recipe(tiny_tree()), builtin_registry)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert {"encoder.cls_token", "decoder.mask_token"} <= no_decay_names
    assert any(n.endswith("norm1.weight") for n in no_decay_names)
    assert all(n.endswith("weight") and "norm" not in n for n in decay_names)
    assert "encoder.pos_embed" not in decay_names | no_decay_names  # frozen sin-cos


def test_lr_schedule_warmup_then_cosine():
    kw = dict(base=1.0, total_steps=100, warmup_steps=10, min_lr=0.1)
    assert lr_at(0, **kw) == 0.0 and lr_at(5, **kw) == 0.5 and lr_at(10, **kw) == 1.0
    assert math.isclose(lr_at(55, **kw), 0.1 + 0.9 * 0.5, rel_tol=1e-9)
    assert math.isclose(lr_at(100, **kw), 0.1)
    values = [lr_at(s, **kw) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_lr_scales_with_effective_batch(tmp_path, builtin_registry):
    recipe = load_recipe(tiny_tree(), ["train.max_steps=1", "train.batch_size=8", "train.accum_steps=4",
                                       "train.base_lr=1e-3"])
    trainer = Trainer(recipe, tmp_path, registry=builtin_registry, progress=False)
    trainer.fit()
    assert trainer.effective_batch == 32 and math.isclose(trainer.base_lr, 1e-3 * 32 / 256)


def test_random_state_of_either_checkpoint_format_is_restored():
    """Per-rank states (a list) restore this rank's entry; a first-format state (one dict) is restored as is."""
    first_format = {"cpu": torch.get_rng_state()}
    expected = torch.rand(3)
    ckpt.set_rng_state(first_format)
    assert torch.equal(torch.rand(3), expected)
    per_rank = [ckpt.rng_state(torch.device("cpu")), {"cpu": torch.get_rng_state()}]
    expected = torch.rand(3)
    ckpt.set_rng_state(per_rank, rank=1)
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(CheckpointError, match="not of rank 2"):
        ckpt.set_rng_state(per_rank, rank=2)


class RatioSchedule:
    """CONTRIBUTING's mask-ratio schedule, recording what the encoder was given at each step."""

    def __init__(self):
        self.expected, self.seen = [], []

    @maskkit.hookimpl
    def maskkit_train_start(self, model):
        model.encoder.register_forward_hook(lambda module, args, out: self.seen.append(out.shape[1]))

    @maskkit.hookimpl
    def maskkit_step_start(self, trainer, model, step):
        model.masker.ratio = 0.3 + 0.6 * step / trainer.total_steps
        self.expected.append(1 + model.encoder.num_patches - model.masker.num_hidden(model.grid))


def test_a_masker_changed_at_step_start_is_used_whole_that_step(tmp_path):
    """The visible count is taken after ``maskkit_step_start``: the encoder sees every visible patch of the
    scheduled ratio (the cls token plus 35 of 49 patches at ratio 0.3, down to 13 at 0.75)."""
    schedule = RatioSchedule()
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"schedule": schedule})
    recipe = load_recipe(tiny_tree(), ["train.max_steps=4", "train.ckpt_every=0"])
    Trainer(recipe, tmp_path, registry=registry, progress=False).fit()
    assert schedule.expected == [35, 27, 20, 13] and schedule.seen == schedule.expected


def test_signal_handlers_set_from_c_are_restored_to_the_default(tmp_path, builtin_registry, monkeypatch):
    """``signal.getsignal`` answers None for a handler installed from C (an embedding application); ``signal``
    cannot take None back, so the run puts the default back instead of failing as it ends."""
    import signal

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(signal, "getsignal", lambda sig: None)
    try:
        result = Trainer(load_recipe(tiny_tree(), ["train.max_steps=1"]), tmp_path, registry=builtin_registry,
                         progress=False).fit()
        assert result.steps == 1
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_strategy_change_on_resume_is_not_exact_with_more_than_one_process(world_size):
    """DDP and FSDP resume each other's (unsharded) checkpoints. With one process neither wraps the model: the
    change is exact. With more, they reduce gradients in other orders: the run is said to go on not bit for bit.
    Other keys keep their class whatever the world size."""
    from maskkit.engine.trainer import resume_changes

    old = tiny_tree()
    new = {**old, "distributed": {"strategy": "fsdp"}}
    refused, inexact = resume_changes(old, new, world_size)
    assert refused == [] and inexact == ([] if world_size == 1 else ["distributed.strategy"])
    moved = {**new, "train": {**old["train"], "device": "cuda", "max_steps": 9}}
    refused, inexact = resume_changes(old, moved, world_size)
    assert refused == [] and "train.device" in inexact and "train.max_steps" not in inexact
    other = {**old, "masker": {**old["masker"], "ratio": 0.5}}
    assert resume_changes(old, other, world_size) == (["masker.ratio"], [])
