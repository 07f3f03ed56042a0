"""``maskkit finetune``: the pretrained weights really load, layer decay and partial fine-tuning do what the
paper says, exact resume, checkpoints, errors, the progress bar, and DDP equal to one process (slow)."""

from __future__ import annotations

import errno
import io
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from helpers import SmallFashion, record_checkpoint_reads, tiny_tree
from rich.console import Console

import maskkit
from maskkit.builder import build_dataset
from maskkit.cli import main
from maskkit.data.transforms import EvalTransform
from maskkit.engine.trainer import Trainer
from maskkit.errors import CheckpointError, ConfigError
from maskkit.finetune import FinetuneConfig, FinetuneTrainer, load_finetune_recipe, read_pretrained
from maskkit.finetune.model import (
    build_classifier,
    freeze_for_partial_finetuning,
    layer_decay_groups,
    load_pretrained_encoder,
)

ROOT = Path(__file__).resolve().parents[1]
DEPTH = 3
# every source of randomness on: RandAugment, erasing, Mixup/CutMix, drop path, EMA
FT = {"epochs": 1, "max_steps": 4, "batch_size": 8, "base_lr": 1e-3, "warmup_epochs": 0.001, "layer_decay": 0.65,
      "drop_path": 0.1, "log_every": 1, "ckpt_every": 2, "device": "cpu", "ema": True, "ema_decay": 0.9,
      "eval_batch_size": 500}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A maskkit pretraining checkpoint of a tiny MAE (3 blocks, 2 steps)."""
    tree = tiny_tree()
    tree["encoder"].update(depth=DEPTH, embed_dim=64, num_heads=1)  # MAE's 64-wide heads, as official readers infer
    tree["train"].update(max_steps=2, ckpt_every=0)
    out = tmp_path_factory.mktemp("pre")
    Trainer(maskkit.Recipe(tree), out, progress=False).fit()
    return out / "checkpoint.pth"


def ft_recipe(ckpt: Path, **changes):
    tree, _ = read_pretrained(ckpt)
    return load_finetune_recipe({"seed": 0, "finetune": {**FT, **changes}}, pretrained_tree=tree)


def trainer(ckpt: Path, out: Path, *, resume=None, console=None, **changes) -> FinetuneTrainer:
    tree, state = read_pretrained(ckpt)
    return FinetuneTrainer(ft_recipe(ckpt, **changes), out, pretrained=(tree["encoder"], state, str(ckpt)),
                           resume=resume, console=console, progress=console is not None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_pretrained_weights_are_loaded_features_equal(pretrained, builtin_registry):
    """The classifier's encoder gives the pretrained encoder's features on real images (class token, after
    the final norm), and a random-init classifier does not."""
    tree, state = read_pretrained(pretrained)
    recipe = maskkit.Recipe(tree)
    mae = maskkit.build_model(recipe, builtin_registry)
    mae.load_state_dict(state)
    data = build_dataset(recipe, "test", builtin_registry)
    images = torch.stack([EvalTransform(28, data.mean, data.std)(data[i][0]) for i in range(16)])
    classifier = build_classifier(tree["encoder"], 10, global_pool="token").eval()
    with torch.no_grad():
        expected = mae.encoder.forward_features(images)[:, 0]
        before = classifier.forward_features(images)[:, 0]
        load_pretrained_encoder(classifier, state, "test")
        after = classifier.forward_features(images)[:, 0]
    assert not torch.allclose(before, expected, atol=1e-3)
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-6)


def test_every_pretrained_source_gives_the_same_classifier(pretrained, tmp_path):
    """maskkit checkpoint, official MAE checkpoint ({"model": ...}), transformers ViTMAE folder, and a
    fine-tuning checkpoint: the classifier built from each has the pretrained encoder's features."""
    transformers = pytest.importorskip("transformers")
    from maskkit.interop.vit_names import official_to_transformers

    tree, state = read_pretrained(pretrained)
    torch.save({"model": state}, tmp_path / "official.pth")
    sources = {"official": tmp_path / "official.pth"}
    images = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def features(source):
        src_tree, src_state = read_pretrained(source)
        model = build_classifier(src_tree["encoder"], 10, global_pool="token").eval()
        load_pretrained_encoder(model, src_state, str(source))
        with torch.no_grad():
            return model.forward_features(images)[:, 0]

    enc = tree["encoder"]
    config = transformers.ViTMAEConfig(image_size=28, patch_size=4, num_channels=1, hidden_size=enc["embed_dim"],
                                       num_hidden_layers=DEPTH, num_attention_heads=1,
                                       intermediate_size=4 * enc["embed_dim"], decoder_hidden_size=16,
                                       decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                                       decoder_intermediate_size=64, layer_norm_eps=1e-6, norm_pix_loss=True)
    hf = transformers.ViTMAEForPreTraining(config)
    missing, unexpected = hf.load_state_dict(official_to_transformers(state), strict=False)
    assert not [k for k in missing if not k.startswith("decoder.")] and not unexpected
    hf.save_pretrained(tmp_path / "hf")
    sources["transformers"] = tmp_path / "hf"
    run = trainer(pretrained, tmp_path / "ft", max_steps=1, ema=False, global_pool="token", base_lr=0.0, lr=0.0,
                  min_lr=0.0)
    run.fit()
    sources["finetuned"] = tmp_path / "ft" / "checkpoint.pth"
    expected = features(pretrained)
    for name, source in sources.items():
        torch.testing.assert_close(features(source), expected, rtol=0, atol=1e-5, msg=name)
    # and the fine-tuned [CLS]-head classifier travels to transformers, with the dataset's class names
    assert main(["export", str(sources["finetuned"]), "--format", "transformers", "--out", str(tmp_path / "vit")]) == 0
    labels = json.loads((tmp_path / "vit" / "config.json").read_text())["id2label"]
    assert labels["0"] == "T-shirt/top" and len(labels) == 10


def test_the_encoders_norm_eps_carries_over(pretrained):
    tree, _ = read_pretrained(pretrained)
    classifier = build_classifier({**tree["encoder"], "norm_eps": 1e-12}, 10)
    assert classifier.blocks[0].norm1.eps == 1e-12 and classifier.fc_norm.eps == 1e-12
    assert build_classifier(tree["encoder"], 10).blocks[0].norm1.eps == 1e-6


def test_a_pretraining_drop_path_rate_gives_way_to_finetune_drop_path(pretrained):
    """An encoder section with ``drop_path_rate`` (a TimmViTEncoder option) fine-tunes: the classifier's stochastic
    depth is ``finetune.drop_path``'s (timm spreads it linearly over the blocks), not the pretraining rate."""
    tree, _ = read_pretrained(pretrained)
    classifier = build_classifier({**tree["encoder"], "drop_path_rate": 0.3}, 10, drop_path=0.1)
    assert classifier.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert classifier.blocks[0].drop_path1.__class__.__name__ == "Identity"  # rate 0 at the first block


def test_missing_encoder_weights_are_a_one_line_error(pretrained):
    tree, state = read_pretrained(pretrained)
    classifier = build_classifier(tree["encoder"], 10)
    del state["blocks.0.attn.qkv.weight"]
    with pytest.raises(CheckpointError, match=r"no pretrained weights for 1 encoder tensor.*blocks.0.attn.qkv"):
        load_pretrained_encoder(classifier, state, "x.pth")


def _official_lrd(model, weight_decay: float, layer_decay: float) -> dict[str, tuple[float, float]]:
    """``{name: (lr_scale, weight_decay)}`` by the official MAE's util/lr_decay.py (``param_groups_lrd`` with
    ``get_layer_id_for_vit``), written out again here as it reads there."""
    num_layers = len(model.blocks) + 1
    layer_scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    no_weight_decay_list = {"pos_embed", "cls_token", "dist_token"}  # models_vit's no_weight_decay()
    out = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        this_decay = 0.0 if p.ndim == 1 or n in no_weight_decay_list else weight_decay
        if n in ("cls_token", "pos_embed") or n.startswith("patch_embed"):
            layer_id = 0
        elif n.startswith("blocks"):
            layer_id = int(n.split(".")[1]) + 1
        else:
            layer_id = num_layers
        out[n] = (layer_scales[layer_id], this_decay)
    return out


@pytest.mark.parametrize("global_pool", ["avg", "token"])
@pytest.mark.parametrize("decay", [0.5, 0.65, 0.75, 1.0])
def test_layer_decay_groups_scale_like_the_official_mae(pretrained, decay, global_pool):
    """MAE's lr_decay.py: embeddings get decay ** (depth + 1), block i decay ** (depth - i), the final norm (the
    token head's ``norm``, the avg head's ``fc_norm``) and the head 1; every parameter once, frozen ones not."""
    tree, _ = read_pretrained(pretrained)
    model = build_classifier(tree["encoder"], 10, global_pool=global_pool)
    names = {id(p): n for n, p in model.named_parameters()}
    for tune_blocks in (None, 1):
        if tune_blocks is not None:
            freeze_for_partial_finetuning(model, tune_blocks)
        groups = layer_decay_groups(model, weight_decay=0.05, layer_decay=decay)
        ours = {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
        assert sum(len(g["params"]) for g in groups) == len(ours)
        official = _official_lrd(model, 0.05, decay)
        assert ours.keys() == official.keys()
        for name, (scale, wd) in official.items():
            assert ours[name][0] == pytest.approx(scale, rel=1e-12), name
            assert ours[name][1] == wd, name
    if global_pool == "token":
        assert official["norm.weight"] == (1.0, 0.0) and official["head.weight"] == (1.0, 0.05)


def test_mixup_draws_are_per_rank_and_rank_0_draws_like_one_process():
    """Under DDP each rank draws its own Mixup/CutMix lambda, switch and box (the official code seeds each
    process with seed + rank); rank 0 draws what a one-process run draws, and the draws are a function of
    (seed, rank, micro_step), so a resume draws them again."""
    from maskkit.data.loading import stable_seed
    from maskkit.finetune.data import SeededMixup

    cfg = FinetuneConfig(mixup=0.8, cutmix=1.0)
    images = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])

    def draws(mixup, steps=range(8)):
        return [mixup(images.clone(), labels, step) for step in steps]

    one, rank0, rank1 = (draws(SeededMixup(cfg, 10, 0, **kw)) for kw in ({}, {"rank": 0}, {"rank": 1}))
    for (a_img, a_tgt), (b_img, b_tgt) in zip(one, rank0):
        assert torch.equal(a_img, b_img) and torch.equal(a_tgt, b_tgt)
    assert all(not torch.equal(a[1], b[1]) for a, b in zip(rank0, rank1))  # a different lambda at every step
    resumed = draws(SeededMixup(cfg, 10, 0, rank=1), [5, 6])  # a fresh object from micro-step 5, as a resume
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(resumed, rank1[5:7]))
    # rank 0 keeps the one-process seed of earlier versions; other ranks and seeds never share a stream
    assert SeededMixup(cfg, 10, 3).seed_of(7) == stable_seed("maskkit/mixup", 3, 7)
    seeds = {SeededMixup(cfg, 10, seed, rank=rank).seed_of(step) for seed in range(3) for rank in range(4)
             for step in range(3)}
    assert len(seeds) == 3 * 4 * 3


def test_partial_finetuning_trains_only_the_last_blocks_and_head(pretrained, tmp_path):
    """tune_blocks=1 (MAE Figure 9): the earlier blocks and embeddings keep their pretrained values."""
    run = trainer(pretrained, tmp_path / "partial", tune_blocks=1, ema=False)
    run.fit()
    _, state = read_pretrained(pretrained)
    tuned = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert tuned and all(n.startswith((f"blocks.{DEPTH - 1}.", "fc_norm.", "head.")) for n in tuned)
    after = run.model.state_dict()
    for name in ("patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.mlp.fc1.weight"):
        assert torch.equal(after[name], state[name]), name
    assert not torch.equal(after[f"blocks.{DEPTH - 1}.mlp.fc1.weight"], state[f"blocks.{DEPTH - 1}.mlp.fc1.weight"])
    with pytest.raises(ConfigError, match="tune_blocks: expected at most the encoder depth 3"):
        trainer(pretrained, tmp_path / "too_many", tune_blocks=4).fit()


def test_the_loader_workers_end_with_the_fine_tuning_run(pretrained, tmp_path):
    """Persistent loader workers stop when ``fit`` returns, not whenever the kept trainer is collected."""
    before = set(multiprocessing.active_children())
    run = trainer(pretrained, tmp_path / "run", num_workers=2, ema=False)
    run.fit()
    assert run.loader.num_workers == 2 and set(multiprocessing.active_children()) == before


def crash_after_first_checkpoint(run: FinetuneTrainer, monkeypatch) -> None:
    """Fit ``run`` until it has written its first checkpoint, then stop it as a KeyboardInterrupt would."""
    save = FinetuneTrainer.save_checkpoint

    def save_then_crash(self, path):
        save(self, path)
        raise KeyboardInterrupt

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(FinetuneTrainer, "save_checkpoint", save_then_crash)
        run.fit()


def test_a_signal_stops_fine_tuning_with_a_checkpoint_and_the_resume_command(pretrained, tmp_path, monkeypatch):
    """SIGTERM during a step (a cluster's preemption; SIGINT takes the same handler, tested with pretraining):
    the step finishes, a checkpoint of it is saved, RunInterrupted names the command that resumes (exit 143 from
    the CLI), the lock and the signal handlers go with the run, and the resumed run ends as the uninterrupted
    one."""
    from maskkit.errors import RunInterrupted, describe_failure
    from maskkit.finetune import loop

    trainer(pretrained, tmp_path / "whole").fit()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    set_lr, calls = loop.set_lr, []

    def set_lr_then_signal(optimizer, lr):  # the signal arrives during step 2 (the third)
        calls.append(lr)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        set_lr(optimizer, lr)

    monkeypatch.setattr(loop, "set_lr", set_lr_then_signal)
    with pytest.raises(RunInterrupted) as stopped:
        trainer(pretrained, tmp_path / "cut").fit()
    monkeypatch.undo()
    checkpoint = tmp_path / "cut" / "checkpoint.pth"
    assert stopped.value.step == 3 and stopped.value.checkpoint == checkpoint  # not the step-2 checkpoint alone
    assert torch.load(checkpoint, weights_only=True)["step"] == 3
    assert stopped.value.resume == f"maskkit finetune --resume {checkpoint}"
    assert describe_failure(stopped.value)[0] == 128 + signal.SIGTERM
    assert {s: signal.getsignal(s) for s in handlers} == handlers and not (tmp_path / "cut" / "run.lock").exists()
    trainer(pretrained, tmp_path / "cut", resume=checkpoint).fit()
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")


def test_stop_and_resume_equals_an_uninterrupted_run(pretrained, tmp_path, monkeypatch):
    """Interrupted after the step-2 checkpoint and resumed: the same losses, weights, EMA and scores."""
    whole = trainer(pretrained, tmp_path / "whole")
    whole_result = whole.fit()
    crash_after_first_checkpoint(trainer(pretrained, tmp_path / "cut"), monkeypatch)
    assert torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=True)["step"] == 2
    resumed = trainer(pretrained, tmp_path / "cut", resume=tmp_path / "cut" / "checkpoint.pth")
    result = resumed.fit()
    assert result.trained_steps == 2 and len(losses(tmp_path / "whole")) == 4
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["checkpoint_s"] > 0 for r in records] == [False, False, True, False]  # step 2's save, in (2, 3]
    a = torch.load(tmp_path / "whole" / "checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    assert {k: v for k, v in result.scores.items() if k != "wall_time_s"} == \
        {k: v for k, v in whole_result.scores.items() if k != "wall_time_s"}
    assert not list((tmp_path / "cut").glob(".*.tmp"))  # atomic writes leave no temporary file


def _image_folder(root: Path, splits: dict[str, tuple[str, ...]], per_class: int = 4) -> Path:
    """``root/<split>/<class>/<i>.png``: small grey images (random pixels) for each split's classes."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split, classes in splits.items():
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (30, 32), generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(pixels, mode="L").save(root / split / name / f"{i}.png")
    return root


def _image_folder_data(root: Path) -> str:
    return f"data={{name: image_folder, root: '{root}', in_chans: 1}}"


def test_test_classes_are_matched_by_name_to_the_training_classes(pretrained, tmp_path):
    """Train classes (a, b, c), val classes (b, c): a val/b image is scored as b (training label 1), not as a."""
    root = _image_folder(tmp_path / "imgs", {"train": ("a", "b", "c"), "val": ("b", "c")})
    tree, state = read_pretrained(pretrained)
    recipe = load_finetune_recipe({"seed": 0, "finetune": {**FT, "max_steps": 1, "ema": False}},
                                  [_image_folder_data(root)], pretrained_tree=tree)
    run = FinetuneTrainer(recipe, tmp_path / "run", pretrained=(tree["encoder"], state, str(pretrained)),
                          progress=False)
    result = run.fit()
    val = maskkit.data.ImageFolder(root / "val", in_chans=1)  # the same files in the same order
    labels = {path.parent.name: run.test_set[i][1] for i, (path, _) in enumerate(val.samples)}
    assert labels == {"b": 1, "c": 2}
    assert result.scores["num_classes"] == 3 and result.scores["test_images"] == 8


def test_a_test_class_the_training_split_lacks_is_a_one_line_error(pretrained, tmp_path, capsys):
    root = _image_folder(tmp_path / "imgs", {"train": ("a", "b", "c"), "val": ("b", "d")}, per_class=2)
    code = main(["finetune", str(pretrained), _image_folder_data(root), "finetune.device=cpu",
                 "finetune.max_steps=1", "finetune.batch_size=2", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "the default fine-tuning recipe (no --recipe): data: " in err
    assert f"the test split {root / 'val'} against the train split {root / 'train'}" in err
    assert "test class(es) d missing from the training classes" in err


def test_what_the_classifier_cannot_be_built_for_is_a_one_line_error(pretrained, tmp_path, capsys):
    """Refused up front with the recipe file, exit 2 (not an internal error from timm): unlabelled images (an
    image_folder without class subfolders: no classes) and token pooling on an encoder without a class token."""
    flat = _image_folder(tmp_path / "imgs", {"train": ("a",)}) / "train" / "a"  # images, no subfolders
    tree = tiny_tree()
    tree["encoder"].update(class_token=False)
    tree["train"].update(max_steps=1, ckpt_every=0)
    Trainer(maskkit.Recipe(tree), tmp_path / "nocls", progress=False).fit()
    common = ["finetune.device=cpu", "finetune.max_steps=1", "finetune.batch_size=2", "--no-progress"]
    cases = [([str(pretrained), _image_folder_data(flat)],
              f"data: fine-tuning needs labelled images of at least 2 classes; the train split {flat} has 0 "),
             ([str(tmp_path / "nocls" / "checkpoint.pth"), "finetune.global_pool=token"],
              "finetune.global_pool: token classifies the class token, which the pretrained encoder has not")]
    for i, (args, fragment) in enumerate(cases):
        assert main(["finetune", *args, *common, "--out", str(tmp_path / f"run{i}")]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"the default fine-tuning recipe (no --recipe): {fragment}" in err, err


def test_checkpoint_is_weights_only_and_loads_into_timm(pretrained, tmp_path):
    """The fine-tuned weights are timm's classifier as it is (official MAE fine-tuned names)."""
    run = trainer(pretrained, tmp_path / "run", max_steps=2, ema=False)
    result = run.fit()
    state = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert state["kind"] == "finetune" and state["num_classes"] == 10
    enc = state["encoder"]
    model = timm.create_model(enc["name"], num_classes=10, global_pool="avg", img_size=28, patch_size=4, in_chans=1,
                              embed_dim=64, depth=DEPTH, num_heads=1)
    model.load_state_dict(state["model"], strict=True)
    scores = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert scores == result.scores and scores["test_images"] == 2000 and 0 <= scores["top5"] <= 1
    assert scores["top1"] <= scores["top5"]


def test_progress_bar_shows_the_steps(pretrained, tmp_path):
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    trainer(pretrained, tmp_path / "run", console=console, max_steps=2, ema=False).fit()
    text = buffer.getvalue()
    assert "finetune" in text and "2/2" in text


def test_recipe_errors_name_file_and_key(pretrained, tmp_path):
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump({"finetune": {"layer_decay": 1.5}}))
    with pytest.raises(ConfigError) as info:
        load_finetune_recipe(path)
    assert str(info.value) == f"{path}: finetune.layer_decay: expected a number in (0, 1], got 1.5"
    with pytest.raises(ConfigError, match=r"finetune.mixpu: unknown key \(did you mean mixup\?\)"):
        load_finetune_recipe(path, ["finetune.layer_decay=0.5", "finetune.mixpu=0.2"])
    with pytest.raises(ConfigError, match=r"encoder: unknown section of a fine-tuning recipe"):
        load_finetune_recipe(path, ["finetune.layer_decay=0.5", "encoder.depth=2"])
    with pytest.raises(ConfigError, match="a pretraining recipe, not a fine-tuning one"):
        load_finetune_recipe(ROOT / "recipes" / "quickstart.yaml")
    with pytest.raises(ConfigError, match=r"ft.yaml: data.decode: device is for pretraining; .*: leave it out$"):
        load_finetune_recipe(path, ["finetune.layer_decay=0.5", "data.name=fashion_mnist", "data.decode=device"])
    pretraining = {"data": {"name": "image_folder", "root": "/data", "decode": "device", "on_bad_image": "skip"}}
    recipe = load_finetune_recipe(None, pretrained_tree=pretraining)  # the pretraining run's choices stay there
    assert recipe.tree["data"] == {"name": "image_folder", "root": "/data"}
    with pytest.raises(ConfigError, match=r"ft.yaml: data.on_bad_image: skip is for pretraining; .*: leave it out$"):
        load_finetune_recipe(path, ["finetune.layer_decay=0.5", "data.name=fashion_mnist",
                                    "data.on_bad_image=skip"])


PAIR = "[min, max] with 0 < min <= max <= 1"
MINMAX = "null or [min, max] with 0 < min < max <= 1"


@pytest.mark.parametrize(("key", "value", "message"), [
    ("scale", 0.5, f"expected {PAIR}, got 0.5"),
    ("scale", [0.5, "x"], f"expected {PAIR}, got [0.5, 'x']"),
    ("scale", [0.5], f"expected {PAIR}, got [0.5]"),
    ("scale", "0.08, 1", f"expected {PAIR}, got '0.08, 1'"),
    ("scale", [True, 1], f"expected {PAIR}, got [True, 1]"),
    ("betas", 0.9, "expected two floats in [0, 1), got 0.9"),
    ("betas", [0.9, "a"], "expected two floats in [0, 1), got [0.9, 'a']"),
    ("betas", {"b1": 0.9}, "expected two floats in [0, 1), got {'b1': 0.9}"),
    ("cutmix_minmax", 0.5, f"expected {MINMAX}, got 0.5"),
    ("cutmix_minmax", [0.2, "a"], f"expected {MINMAX}, got [0.2, 'a']"),
    ("cutmix_minmax", [0.1, 0.5, 0.9], f"expected {MINMAX}, got [0.1, 0.5, 0.9]"),
    ("cutmix_minmax", [0.3, 0.2], f"expected {MINMAX}, got [0.3, 0.2]"),
    ("device", 3, "expected auto, cpu, cuda or cuda:N, got 3"),
    ("smoothing", 1.0, "expected a number in [0, 1), got 1.0"),  # timm's LabelSmoothingCrossEntropy asserts < 1
    ("smoothing", -0.1, "expected a number in [0, 1), got -0.1"),
    ("ema_decay", 1.0, "expected a number in (0, 1), got 1.0"),  # the average would never move
])
def test_malformed_recipe_values_name_file_key_and_what_was_expected(tmp_path, key, value, message):
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "fashion_mnist", "source": "embedded"},
                                    "finetune": {key: value}}))
    with pytest.raises(ConfigError) as info:
        load_finetune_recipe(path)
    assert str(info.value) == f"{path}: finetune.{key}: {message}"


AA = ("null or timm's augmentation string: rand-KEYvalue... (m, n, p, mstd, mmax, inc, tNAME), augmix-... (m, w, "
      "d, a, b, mstd), or original, originalr, v0, v0r, 3a (-mstd), e.g. rand-m9-mstd0.5-inc1")
SKIPPED = "(timm would silently skip this part)"


@pytest.mark.parametrize(("value", "problem"), [
    ("rand-m9-mstdX", f"part 'mstdX': no value {SKIPPED}"),  # timm: RandAugment m9 without magnitude noise
    ("rand-m9--inc1", f"part '': no value {SKIPPED}"),
    ("augmix-m5-wX", f"part 'wX': no value {SKIPPED}"),
    ("original-mstd", f"part 'mstd': no value {SKIPPED}"),
    ("rand-m9-tfoo", "part 'tfoo': t names an operation set, one of weights, 3aw, 3a (timm would silently use its "
                     "default set)"),
    ("rand-m9-mstd0.5-m7", "part 'm7': m is given twice (timm would use only one of them)"),
    ("rand-m9.5", "part 'm9.5': m takes an integer"),
    ("rand-p0.5x", "part 'p0.5x': p takes a number"),
    ("rand-w3", "part 'w3': unknown key 'w' for rand; expected one of m, n, p, mstd, mmax, inc"),
    ("augmix-m5-inc1", "part 'inc1': unknown key 'inc' for augmix; expected one of m, w, d, a, b, mstd"),
    ("v0-m9", "part 'm9': unknown key 'm' for v0; expected one of mstd"),
    ("random-m9", "unknown head 'random'"),
    ("Rand-m9", "unknown head 'Rand'"),
    ("bogus-m9", "unknown head 'bogus'"),
    (7, "not a string"),
])
def test_an_augmentation_string_timm_would_refuse_or_partly_skip_is_refused_when_loaded(tmp_path, value, problem):
    """timm skips a part it cannot read (``mstdX``, an empty part) or an unknown ``-tNAME`` without a word, and
    keeps one of two ``m`` parts: the recipe would train with another augmentation than it says. Such strings,
    and those timm refuses while building, are one line naming the file, the key and what timm reads."""
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump({"finetune": {"auto_augment": value}}))
    with pytest.raises(ConfigError) as info:
        load_finetune_recipe(path)
    assert str(info.value) == f"{path}: finetune.auto_augment: expected {AA}, got {value!r}: {problem}"


def test_timm_really_skips_what_the_recipe_check_refuses():
    """The refusals above are no stricter than needed: timm builds these strings, as if the part were absent."""
    from timm.data import create_transform

    def built(text):
        return repr(create_transform(input_size=(3, 32, 32), is_training=True, auto_augment=text))

    assert built("rand-m9-mstdX") == built("rand-m9") != built("rand-m9-mstd0.5")
    assert built("rand-m9-tfoo") == built("rand-m9") != built("rand-m9-tweights")


@pytest.mark.parametrize("value", [None, "", "rand-m9-mstd0.5-inc1", "rand", "rand-m9-n3-mstd0.5",
                                   "rand-mstd1-tweights", "rand-t3a-mmax10-p0.3", "rand-mstd101-t3aw",
                                   "augmix-m5-w4-d2-a0.5-b1-mstd0.2", "original-mstd0.5", "originalr", "v0", "v0r",
                                   "3a"])
def test_every_augmentation_string_timm_reads_whole_is_accepted(value):
    from timm.data import create_transform

    assert FinetuneConfig(auto_augment=value).auto_augment == value
    create_transform(input_size=(3, 32, 32), is_training=True, auto_augment=value)  # and timm builds it


def test_well_formed_pairs_are_tuples():
    cfg = FinetuneConfig(scale=[0.2, 1], betas=[0.9, 0.95], cutmix_minmax=[0.2, 0.8])
    assert (cfg.scale, cfg.betas, cfg.cutmix_minmax) == ((0.2, 1), (0.9, 0.95), (0.2, 0.8))
    assert FinetuneConfig().cutmix_minmax is None


def test_cli_bad_input_is_one_line_and_exit_2(pretrained, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "nope.pth")], "no such checkpoint file"),
        ([str(pretrained), "finetune.drop_path=2"], "finetune.drop_path: expected a probability in [0, 1], got 2"),
        ([str(pretrained), "finetune.batch_size=-1"],  # no --recipe: the line says which recipe it means
         "the default fine-tuning recipe (no --recipe): finetune.batch_size: expected a positive int, got -1"),
        ([str(pretrained), "--recipe", "quickstart"], "a pretraining recipe, not a fine-tuning one"),
        (["--resume", str(pretrained)], "a pretraining checkpoint, not a fine-tuning one"),
        ([str(pretrained), "finetune.batch_size=7", "finetune.device=cpu", "--out", str(tmp_path / "odd")],
         "expected an even batch size, got 7"),
        ([str(pretrained), "finetune.auto_augment=rand-m9-mstdX", "--out", str(tmp_path / "aa")],  # before training
         "finetune.auto_augment: expected null or timm's augmentation string: "),
    ]
    for args, fragment in cases:
        assert main(["finetune", *args, "--no-progress"]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and fragment in err, err
    assert main(["train", "finetune_quickstart"]) == 2
    assert "a fine-tuning recipe" in capsys.readouterr().err


@pytest.mark.parametrize(("key", "value", "message"), [
    ("tune_blocks", 9, "finetune.tune_blocks: expected at most the encoder depth 3, got 9"),
])
def test_errors_found_while_building_name_the_recipe_file(pretrained, tmp_path, capsys, key, value, message):
    """Values only the model or timm can judge are refused like every recipe value: file, key, expectation."""
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump({"finetune": {**FT, "max_steps": 1, key: value}}))
    assert main(["finetune", str(pretrained), "--recipe", str(path), "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"maskkit: error: {path}: {message}"), err


def test_cli_resume_refuses_a_recipe_or_checkpoint_it_would_ignore(pretrained, tmp_path, capsys, monkeypatch):
    """--resume continues with the checkpoint's own recipe: a --recipe or a pretrained CHECKPOINT beside it is a
    one-line error (exit 2) naming them, not silently ignored; overrides of the resumable keys still apply. The
    resumed checkpoint is read whole once (the command maps it for its recipe)."""
    trainer(pretrained, tmp_path / "run", max_steps=1, ema=False).fit()
    ckpt = tmp_path / "run" / "checkpoint.pth"
    cases = [(["--recipe", "finetune_quickstart"], "drop --recipe finetune_quickstart ("),
             ([str(pretrained)], f"drop CHECKPOINT {pretrained} ("),
             ([str(pretrained), "finetune.max_steps=2", "--recipe", "x.yaml"],
              f"drop --recipe x.yaml and CHECKPOINT {pretrained} (")]
    for extra, fragment in cases:
        assert main(["finetune", "--resume", str(ckpt), *extra, "--no-progress"]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--resume continues the run with its own recipe" in err and fragment in err
    assert torch.load(ckpt, weights_only=True)["step"] == 1  # nothing ran
    reads = record_checkpoint_reads(monkeypatch, ckpt)
    assert main(["finetune", "--resume", str(ckpt), "finetune.max_steps=2", "--no-progress"]) == 0
    assert reads.count("read") == 1, reads
    assert torch.load(ckpt, weights_only=True)["step"] == 2


def test_cli_finetunes_and_prints_the_scores(pretrained, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["finetune", str(pretrained), "--recipe", "finetune_quickstart", "finetune.max_steps=2",
                 "finetune.batch_size=8", "finetune.device=cpu", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    scores = json.loads((out / "finetune.json").read_text())
    assert f"top-1 {100 * scores['top1']:.2f}%" in printed and scores["steps"] == 2
    assert yaml.safe_load((out / "recipe.yaml").read_text())["finetune"]["max_steps"] == 2
    assert main(["finetune", str(pretrained), "--out", str(out), "--no-progress"]) == 2  # holds a run
    assert "already holds a run" in capsys.readouterr().err
    # a finished run resumed: its scores and wall time are kept, not measured again
    written = (out / "finetune.json").read_bytes()
    assert main(["finetune", "--resume", str(out / "checkpoint.pth"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("nothing to fine-tune: the run is already at step 2; its scores (finetune.json): test "
                              f"top-1 {100 * scores['top1']:.2f}%"), printed
    assert (out / "finetune.json").read_bytes() == written
    (out / "finetune.json").unlink()  # stopped after its last checkpoint, before its evaluation: evaluated now
    assert main(["finetune", "--resume", str(out / "checkpoint.pth"), "--no-progress"]) == 0
    again = json.loads((out / "finetune.json").read_text())
    assert again["top1"] == scores["top1"] and again["steps"] == 2


def test_a_folder_whose_fine_tuning_died_before_its_first_checkpoint_is_fine_tuned_into_again(pretrained, tmp_path,
                                                                                              capsys, monkeypatch):
    out = tmp_path / "run"
    argv = ["finetune", str(pretrained), "--recipe", "finetune_quickstart", "finetune.max_steps=2",
            "finetune.batch_size=8", "finetune.log_every=1", "finetune.device=cpu", "--out", str(out), "--no-progress"]

    def full_disk(self, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as patch:
        patch.setattr(FinetuneTrainer, "save_checkpoint", full_disk)
        assert main(argv) == 2
    assert "no space left on device" in capsys.readouterr().err
    assert losses(out) and not (out / "checkpoint.pth").exists()  # steps logged, no checkpoint
    assert main(argv) == 0, capsys.readouterr().err
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (out / "checkpoint.pth").is_file() and (out / "finetune.json").is_file()


def test_export_of_a_fine_tuned_checkpoint_prints_a_timm_line_that_loads_it(pretrained, tmp_path, capsys):
    run = trainer(pretrained, tmp_path / "run", max_steps=1, ema=False)
    run.fit()
    out = tmp_path / "classifier.pth"
    assert main(["export", str(tmp_path / "run" / "checkpoint.pth"), "--out", str(out)]) == 0
    line = capsys.readouterr().out.split("load with")[1].strip()
    assert line.startswith("timm.create_model(") and "num_classes=10" in line
    model = eval(line, {"timm": timm})  # the printed line, as a user pastes it
    state = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["model"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_shipped_recipes_have_the_paper_settings():
    expected = {"base": (100, 0.65, 0.1), "large": (50, 0.75, 0.2), "huge": (50, 0.75, 0.3)}
    for size, (epochs, decay, drop_path) in expected.items():
        name = f"finetune_vit_{size}_patch{14 if size == 'huge' else 16}"
        cfg = load_finetune_recipe(name).finetune
        assert (cfg.epochs, cfg.layer_decay, cfg.drop_path) == (epochs, decay, drop_path)
        assert cfg.batch_size * cfg.accum_steps * 8 == 1024  # on 8 GPUs
        assert cfg.base_lr == (5e-4 if size == "base" else 1e-3) and cfg.warmup_epochs == 5
        assert (cfg.mixup, cfg.cutmix, cfg.smoothing, cfg.reprob) == (0.8, 1.0, 0.1, 0.25)
        assert cfg.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.weight_decay == 0.05
        assert cfg.betas == (0.9, 0.999) and cfg.global_pool == "avg"
    assert load_finetune_recipe("finetune_quickstart").component("data")["name"] == "fashion_mnist"


def test_defaults_are_the_official_vit_base_recipe():
    """FinetuneConfig's defaults are FINETUNE.md's ViT-B recipe (blr 5e-4 with layer decay 0.65, 100 epochs,
    ...), as the shipped finetune_vit_base_patch16 spells it out, but for how the batch is split and logged."""
    import attrs

    shipped = load_finetune_recipe("finetune_vit_base_patch16").finetune
    layout = {"batch_size", "accum_steps", "num_workers", "log_every", "ckpt_every"}
    defaults = FinetuneConfig()
    differing = {f.name for f in attrs.fields(FinetuneConfig)
                 if f.name not in layout and getattr(defaults, f.name) != getattr(shipped, f.name)}
    assert differing == set()
    assert (defaults.base_lr, defaults.layer_decay, defaults.epochs, defaults.batch_size) == (5e-4, 0.65, 100, 32)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_fine_tune_like_one_process(pretrained, tmp_path, monkeypatch, strategy):
    """Two gloo ranks of batch 4 against one process of batch 8 (augmentations per sample; Mixup and drop
    path off, since those are drawn per rank): the same losses and weights, with DDP and with FSDP2 (whose
    checkpoint is gathered whole)."""
    changes = {"batch_size": 4, "mixup": 0.0, "cutmix": 0.0, "drop_path": 0.0, "ema": False, "ckpt_every": 0}
    recipe_file = tmp_path / "ddp.yaml"
    recipe_file.write_text(yaml.safe_dump({"seed": 0, "finetune": {**FT, **changes},
                                           "distributed": {"strategy": strategy}}))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1")
    out = tmp_path / "two"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "maskkit",
                             "--debug", "finetune", str(pretrained), "--recipe", str(recipe_file), "--out", str(out),
                             "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    one = trainer(pretrained, tmp_path / "one", **{**changes, "batch_size": 8})
    one.fit()
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-3000:]
    two_losses, one_losses = losses(out), losses(tmp_path / "one")
    assert len(two_losses) == len(one_losses) == 4
    assert max(abs(a - b) for a, b in zip(two_losses, one_losses)) < 1e-5, (two_losses, one_losses)
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert state["world_size"] == 2
    own = one.model.state_dict()
    diffs = {k: (v - own[k]).abs().max().item() for k, v in state["model"].items() if not k.endswith("qkv.bias")}
    assert max(diffs.values()) < 1e-5


# -- fine-tuning as a comparison's evaluation ---------------------------------------------------------------


def _compare_spec(folder: Path, finetune) -> Path:
    tree = tiny_tree(data={"name": "small_fashion"})
    tree["train"].update(max_steps=4, ckpt_every=0, log_every=1)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(tree))
    spec = {"base": "tiny.yaml", "variants": {"r75": {}, "r50": {"masker.ratio": 0.5}}, "seeds": [0, 1],
            "budget": {"match": "epochs", "steps": 2},
            "eval": {"knn": True, "reconstructions": 0, "mask_samples": 0, "finetune": finetune}}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_compare_reports_fine_tuning_beside_knn_with_the_same_seeds(tmp_path):
    from maskkit.compare import load_spec, make_plan, run_comparison

    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"small": SmallFashion()})
    spec_file = _compare_spec(tmp_path, {"recipe": "finetune_quickstart", "max_steps": 2, "batch_size": 8,
                                         "device": "cpu"})
    plan = make_plan(load_spec(spec_file, registry=registry), registry=registry)
    out = tmp_path / "out"
    outcome = run_comparison(plan, out, registry=registry, console=Console(file=io.StringIO()), progress=False)
    assert not outcome.failed, outcome.errors
    for variant in ("r75", "r50"):
        for seed in (0, 1):
            run = out / "runs" / variant / f"seed{seed}"
            scores = json.loads((run / "eval.json").read_text())
            tuned = json.loads((run / "finetune" / "finetune.json").read_text())
            assert scores["finetune_top1"] == tuned["top1"] and tuned["test_images"] == 48 and tuned["steps"] == 2
            ft_recipe = yaml.safe_load((run / "finetune" / "recipe.yaml").read_text())
            assert (ft_recipe["seed"], ft_recipe["data_seed"]) == (seed, 0)
            assert ft_recipe["data"] == {"name": "small_fashion"} and ft_recipe["finetune"]["layer_decay"] == 0.75
    # the random-init baseline is fine-tuned too: once per seed (same encoder), shared by both variants
    baselines = sorted(p.name for p in (out / "baselines").glob("finetune-*") if p.is_dir())
    assert len(baselines) == 2
    for seed in (0, 1):
        r75, r50 = (json.loads((out / "runs" / v / f"seed{seed}" / "eval.json").read_text()) for v in ("r75", "r50"))
        assert r75["random_init_finetune_top1"] == r50["random_init_finetune_top1"]
        untrained = [json.loads((out / "baselines" / b / "finetune.json").read_text()) for b in baselines]
        assert r75["random_init_finetune_top1"] in [u["top1"] for u in untrained]
    assert {u["init"] for u in untrained} == {"random"}
    report = (out / "report" / "report.md").read_text()
    assert "| kNN top-1 (%) | fine-tune top-1 (%) |" in report and "end-to-end fine-tuning top-1" in report
    random_row = next(line for line in report.splitlines() if line.startswith("| (random init)"))
    assert random_row.count("%") == 0 and random_row.split("|")[4].strip() not in ("", "-")  # the fine-tune cell
    results = json.loads((out / "report" / "results.json").read_text())
    r50 = results["variants"][1]
    assert r50["finetune_top1"]["n"] == 2 and r50["delta_finetune_top1"]["n"] == 2
    assert results["variants"][0]["random_init_finetune_top1"]["n"] == 2


def test_compare_spec_fine_tuning_errors_name_the_spec_and_key(tmp_path):
    from maskkit.compare import load_spec

    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"small": SmallFashion()})
    for settings, message in [({"layer_decay": 2}, "eval.finetune.layer_decay: expected a number in (0, 1], got 2"),
                              ({"mixpu": 0.5}, "eval.finetune.mixpu: unknown key (did you mean mixup?)"),
                              ([1], "eval.finetune: expected a mapping")]:
        spec_file = _compare_spec(tmp_path, settings)
        with pytest.raises(ConfigError) as info:
            load_spec(spec_file, registry=registry)
        assert str(info.value).startswith(f"{spec_file}: {message}"), str(info.value)


def test_compare_fine_tuning_takes_a_recipe_without_data_as_the_cli_does(tmp_path):
    """A fine-tuning recipe without a ``data`` section is valid (the checkpoint's data is used): ``eval.finetune:
    {recipe: FILE}`` accepts it as ``maskkit finetune --recipe FILE`` does."""
    from maskkit.compare import load_spec
    from maskkit.finetune.evaluation import finetune_recipe_for

    recipe_file = tmp_path / "nodata_ft.yaml"
    recipe_file.write_text(yaml.safe_dump({"seed": 0, "finetune": {"epochs": 1, "max_steps": 1, "layer_decay": 0.5}}))
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"small": SmallFashion()})
    spec = load_spec(_compare_spec(tmp_path, {"recipe": str(recipe_file), "batch_size": 8}), registry=registry)
    assert spec.eval.finetune == {"recipe": str(recipe_file), "batch_size": 8}
    recipe = finetune_recipe_for(spec.eval.finetune, spec.base_tree, seed=1, data_seed=0, registry=registry)
    assert recipe.tree["data"] == {"name": "small_fashion"}
    assert (recipe.finetune.layer_decay, recipe.finetune.batch_size, recipe.seed) == (0.5, 8, 1)


def test_a_diverged_fine_tuning_never_writes_a_non_finite_checkpoint(pretrained, tmp_path):
    """A learning rate of 3.4e38 from step 1 (step 0 warms up from 0): the step-1 checkpoint is kept, the step-2
    one (weights and EMA not finite although the loss was) is refused, naming the step; no scores are written."""
    from maskkit.engine import checkpoint as ckpt
    from maskkit.errors import TrainingError

    run = trainer(pretrained, tmp_path / "run", max_steps=3, ckpt_every=1, lr=3.4e38, warmup_epochs=0.0008)
    with pytest.raises(TrainingError, match=r"non-finite weights after step 2 \(\d+ tensor\(s\), e\.g\. model\..*; "
                                            r"not saved; the last good checkpoint is .*checkpoint.pth \(step 1\); "
                                            r"lower finetune.lr or set finetune.clip_grad"):
        run.fit()
    state = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert state["step"] == 1 and not ckpt.non_finite([state["model"], state["optimizer"]["state"], state["ema"]])
    assert not (tmp_path / "run" / "finetune.json").exists()


def test_a_non_finite_loss_stops_naming_the_first_bad_step(pretrained, tmp_path):
    """Checked at log steps only (every 10 here), the first non-finite loss is still the one named: step 2, the
    first after the weights overflowed at step 1."""
    from maskkit.errors import TrainingError

    run = trainer(pretrained, tmp_path / "run", max_steps=4, ckpt_every=0, log_every=10, lr=3.4e38,
                  warmup_epochs=0.0008)
    with pytest.raises(TrainingError, match=r"^non-finite loss at step 2 \(0-based\); stopping, no checkpoint was "
                                            r"written$"):
        run.fit()
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


def test_ema_weights_are_saved_and_exported_under_the_classifiers_own_keys(pretrained, tmp_path, capsys):
    """The checkpoint's ``ema`` has the keys of ``model`` (not ModelEmaV3's ``module.`` ones), and the export of an
    EMA run is a state dict that ``model.load_state_dict`` takes as it is."""
    trainer(pretrained, tmp_path / "run", max_steps=1).fit()
    state = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert state["ema"].keys() == state["model"].keys()
    out = tmp_path / "classifier.pth"
    assert main(["export", str(tmp_path / "run" / "checkpoint.pth"), "--out", str(out)]) == 0
    assert "(EMA weights)" in capsys.readouterr().out
    tree, _ = read_pretrained(pretrained)
    model = build_classifier(tree["encoder"], 10)
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["ema"][key]), key


def test_commands_for_pretraining_checkpoints_refuse_a_fine_tuned_one_saying_what_it_is(pretrained, tmp_path,
                                                                                         capsys):
    """``eval`` and ``visualize`` score a pretraining checkpoint's encoder: a fine-tuned checkpoint is one line
    saying it is a classifier and where its scores are (it said its recipe was one to run with ``finetune``)."""
    trainer(pretrained, tmp_path / "run", max_steps=1, ema=False).fit()
    ckpt = tmp_path / "run" / "checkpoint.pth"
    for args in (["eval", "knn", str(ckpt)], ["visualize", str(ckpt), "--out", str(tmp_path / "r.png")]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"maskkit: error: {ckpt}: a fine-tuning checkpoint (a "
                                                         "classifier), not a pretraining one;"), err
        assert "finetune.json" in err and "maskkit export" in err
    assert not (tmp_path / "r.png").exists()


def test_export_refuses_non_finite_fine_tuned_weights_naming_the_checkpoint_and_tensor(pretrained, tmp_path, capsys):
    """The weights an export writes (the EMA's when the run kept one) are checked: a NaN in them, from a
    hand-edited checkpoint, is one line naming the checkpoint and the tensor, and nothing is written; a NaN in
    the trained weights the export leaves out does not matter."""
    trainer(pretrained, tmp_path / "run", max_steps=1).fit()
    state = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    state["ema"]["head.weight"][1, 2] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    out = tmp_path / "classifier.pth"
    for export_format in ("timm", "transformers"):
        assert main(["export", str(tmp_path / "nan.pth"), "--format", export_format, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"maskkit: error: {tmp_path / 'nan.pth'}: non-finite EMA "
                                                         "weights: head.weight holds a NaN or inf;"), err
        assert not out.exists()
    state = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    state["model"]["head.weight"][1, 2] = float("nan")  # the export writes the EMA's, which are finite
    torch.save(state, tmp_path / "model_nan.pth")
    assert main(["export", str(tmp_path / "model_nan.pth"), "--out", str(out)]) == 0 and out.is_file()


def test_a_checkpoint_with_module_prefixed_ema_keys_resumes_exactly_and_exports_plain_keys(pretrained, tmp_path,
                                                                                          monkeypatch):
    """Checkpoints of earlier versions saved ``ModelEmaV3.state_dict()`` (``module.blocks.0...``): resumed, the run
    ends with the EMA of an uninterrupted one; exported, the keys are the classifier's."""
    from maskkit.finetune.loop import finetuned_weights

    trainer(pretrained, tmp_path / "whole", max_steps=2, ckpt_every=1).fit()
    crash_after_first_checkpoint(trainer(pretrained, tmp_path / "cut", max_steps=2, ckpt_every=1), monkeypatch)
    path = tmp_path / "cut" / "checkpoint.pth"
    old = torch.load(path, weights_only=True)
    old["ema"] = {f"module.{key}": value for key, value in old["ema"].items()}
    torch.save(old, path)
    weights, which = finetuned_weights(old)
    assert which == "EMA weights" and weights.keys() == old["model"].keys()
    trainer(pretrained, tmp_path / "cut", max_steps=2, ckpt_every=1, resume=path).fit()
    a, b = (torch.load(tmp_path / name / "checkpoint.pth", weights_only=True)["ema"] for name in ("whole", "cut"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_cli_prints_what_the_reader_of_the_checkpoint_assumed(pretrained, tmp_path, capsys):
    """An official MAE checkpoint says nothing of its heads or target: ``maskkit finetune`` prints the reader's
    notes, as ``maskkit convert`` does, before it trains."""
    _, state = read_pretrained(pretrained)
    torch.save({"model": state}, tmp_path / "official.pth")
    assert main(["finetune", str(tmp_path / "official.pth"), "finetune.max_steps=1", "finetune.batch_size=8",
                 "finetune.device=cpu", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "note: head counts assumed from the widths: encoder 1 " in printed
    assert printed.index("note: ") < printed.index("fine-tuned 1 steps")


@pytest.mark.parametrize(("size", "crop_pct"), [(224, 0.875), (448, 1.0)])
def test_evaluation_crops_as_the_official_mae(size, crop_pct):
    """util/datasets.py: resize the shorter side to size / crop_pct, center crop, with crop_pct 224/256 up to 224
    and 1.0 above. The images the classifier is scored on are exactly those."""
    from maskkit.finetune.loop import evaluate_classifier

    class Recorder(torch.nn.Module):
        num_classes = 3

        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, images):
            self.seen.append(images)
            return torch.zeros(images.shape[0], self.num_classes)

    class Photos:
        mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
        images = torch.randint(0, 256, (2, 3, 500, 600), generator=torch.Generator().manual_seed(0),
                               dtype=torch.uint8)

        def __len__(self):
            return 2

        def __getitem__(self, index):
            return self.images[index], index

    model = Recorder()
    evaluate_classifier(model, Photos(), img_size=(size, size), device=torch.device("cpu"), batch_size=2)
    official = EvalTransform(size, Photos.mean, Photos.std, crop_pct=crop_pct)
    assert official.resize_size(500, 600)[0] == int(size / crop_pct)  # 256 at 224, 448 itself at 448
    torch.testing.assert_close(model.seen[0], torch.stack([official(img) for img in Photos.images]))
