"""The command line: one-line errors with exit status 2, and the commands around checkpoints."""

import os
import subprocess
import sys

import pytest
import timm
import torch
import yaml
from helpers import record_checkpoint_reads, tiny_tree

from maskkit.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step tiny run, with checkpoint and evaluation (kNN on the embedded data)."""
    out = tmp_path_factory.mktemp("run")
    recipe = out / "tiny.yaml"
    tree = tiny_tree(eval={"knn": True, "k": 5, "random_init_baseline": True, "reconstructions": 4})
    tree["train"].update(max_steps=4)
    recipe.write_text(yaml.safe_dump(tree))
    assert main(["train", str(recipe), "--out", str(out / "run"), "--no-progress"]) == 0
    return out / "run"


def test_train_writes_run_folder_and_evaluation(trained):
    for name in ("checkpoint.pth", "metrics.jsonl", "recipe.yaml", "versions.json", "eval.json",
                 "reconstructions.png"):
        assert (trained / name).is_file(), name
    scores = yaml.safe_load((trained / "eval.json").read_text())
    assert 0.1 < scores["knn_top1"] <= 1 and 0.1 < scores["random_init_knn_top1"] <= 1


def test_export_loads_in_timm(trained, tmp_path, capsys):
    out = tmp_path / "encoder.pth"
    assert main(["export", str(trained / "checkpoint.pth"), "--out", str(out)]) == 0
    hint = capsys.readouterr().out.split("load with\n", 1)[1].strip()
    assert hint.startswith("timm.create_model('vit_tiny_patch16_224'") and "embed_dim=32" in hint
    model = eval(hint, {"timm": timm})  # the printed line, as a user pastes it
    state = torch.load(trained / "checkpoint.pth", weights_only=True)["model"]
    assert torch.equal(model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    assert torch.equal(model.pos_embed, state["pos_embed"])


def test_visualize(trained, tmp_path):
    out = tmp_path / "recon.png"
    assert main(["visualize", str(trained / "checkpoint.pth"), "--out", str(out), "--count", "3"]) == 0
    from PIL import Image

    width, height = Image.open(out).size
    assert width > height  # four columns, three rows


def test_eval_knn_command(trained, capsys):
    assert main(["eval", "knn", str(trained / "checkpoint.pth"), "eval.k=3"]) == 0
    assert "kNN top-1" in capsys.readouterr().out


def test_eval_linear_command(trained, capsys):
    """The probe trains inside the command's no_grad evaluation."""
    assert main(["eval", "linear", str(trained / "checkpoint.pth"), "eval.k=3"]) == 0
    out = capsys.readouterr().out
    assert "linear top-1" in out and "kNN top-1" in out


def test_overrides_may_follow_options(trained, tmp_path, capsys):
    """``maskkit train R --out X --no-eval a=1`` (the README's torchrun line) and ``eval ... --device cpu k=v``:
    argparse alone would refuse a positional after an option."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_tree()))
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--no-progress", "--no-eval",
                 "train.max_steps=2", "--debug"]) == 0
    steps = [yaml.safe_load(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert main(["eval", "knn", str(trained / "checkpoint.pth"), "--device", "cpu", "eval.k=3"]) == 0
    assert "k=3" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["train", str(recipe), "--out", str(tmp_path / "x"), "--no-such-option"])
    assert exc.value.code == 2 and "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_resume_from_checkpoint_alone(trained, tmp_path, capsys, monkeypatch):
    """``maskkit train --resume CKPT train.max_steps=6`` takes the recipe from the checkpoint, and says how many
    steps this call trained. The checkpoint is read whole once (by the trainer); the command only maps it for its
    recipe (a ViT-L checkpoint with its AdamW state is several GB)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    saved = yaml.safe_load((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    reads = record_checkpoint_reads(monkeypatch, run / "checkpoint.pth")
    assert main(["train", "--resume", str(run / "checkpoint.pth"), "train.max_steps=6", "--no-progress",
                 "--no-eval"]) == 0
    assert reads.count("read") == 1, reads
    steps = [yaml.safe_load(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    said = capsys.readouterr()
    assert f"trained {6 - saved} steps (from step {saved} to 6) in " in said.out + said.err


def _tiny_file(tmp_path, **changes):
    tree = tiny_tree()
    for key, value in changes.items():
        section, _, field = key.partition("__")
        tree[section][field] = value
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize("changes, fragment", [
    ({"masker__name": "nope"}, "masker.name: unknown masker 'nope'"),
    ({"decoder__width": 3}, "decoder.width: mae has no argument 'width'"),
    ({"decoder__depth": "deep"}, "decoder.depth: expected int, got 'deep'"),
    ({"masker__ratio": 1.5}, "masker.ratio: expected a float in (0, 1), got 1.5"),
    ({"encoder__img_size": 30}, "encoder.img_size: expected a multiple of patch_size 4"),
    ({"data__source": "/nonexistent/folder"}, "data: "),
])
def test_bad_recipe_is_one_line_exit_2(tmp_path, capsys, changes, fragment):
    path = _tiny_file(tmp_path, **changes)
    code = main(["train", str(path), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"maskkit: error: {path}: ") and fragment in err, err
    assert not (tmp_path / "out" / "checkpoint.pth").exists()


def test_a_missing_test_split_is_refused_before_training_when_an_evaluation_follows(tmp_path, capsys):
    """A data.test_root that is not there, or that holds a class training lacks, stops the run before its first
    step (not after training it, when the evaluation reads the test split); with --no-eval, or no evaluation in
    the recipe, the split is not needed."""
    from PIL import Image

    images = tmp_path / "images"
    for label in ("a", "b"):
        (images / label).mkdir(parents=True)
        for i in range(8):
            Image.new("L", (28, 28), 30 * i).save(images / label / f"{i}.png")
    data = {"name": "image_folder", "root": str(images), "in_chans": 1, "test_root": str(tmp_path / "nope")}
    path = _tiny_file(tmp_path, data__name="image_folder")
    tree = yaml.safe_load(path.read_text())
    tree.update(data=data, eval={"knn": True})
    path.write_text(yaml.safe_dump(tree))
    code = main(["train", str(path), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"maskkit: error: {path}: data: {tmp_path / 'nope'}: no such directory"), err
    assert not (tmp_path / "out" / "checkpoint.pth").exists()
    assert main(["train", str(path), "--out", str(tmp_path / "skipped"), "--no-progress", "--no-eval"]) == 0
    (tmp_path / "val" / "c").mkdir(parents=True)  # a test class training lacks: refused before training too
    Image.new("L", (28, 28), 0).save(tmp_path / "val" / "c" / "0.png")
    data["test_root"] = str(tmp_path / "val")
    tree.update(data=data)
    path.write_text(yaml.safe_dump(tree))
    assert main(["train", str(path), "--out", str(tmp_path / "classes"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: data: " in err and "test class(es) c missing from the training" in err
    assert not (tmp_path / "classes" / "checkpoint.pth").exists()


def test_yaml_error_and_missing_file(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("masker: {name: random\n")
    assert main(["train", str(broken)]) == 2
    assert "broken.yaml:2: YAML syntax error" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such recipe file" in capsys.readouterr().err


def test_a_recipe_path_with_an_equals_sign_and_an_override_without_a_recipe(tmp_path, capsys, monkeypatch):
    """``sweep/lr=1e-3/r.yaml`` is a recipe file (sweep folders are named so), not an override; an override
    given without a recipe or ``--resume`` is a one-line error, not an internal one."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "train.epochs=1", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'train.epochs=1' is an override, not a recipe" in err, err
    folder = tmp_path / "sweep" / "lr=1e-3"
    folder.mkdir(parents=True)
    path = _tiny_file(folder)
    assert main(["train", str(path.relative_to(tmp_path)), "train.max_steps=1", "--out", "run", "--no-progress",
                 "--no-eval"]) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint.pth").is_file()
    assert main(["train", "sweep/lr=1e-3/typo.yaml", "--out", "x"]) == 2  # a path, missing: said as such
    assert "sweep/lr=1e-3/typo.yaml: no such recipe file" in capsys.readouterr().err


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage")
    assert main(["train", "--resume", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.pth: not a readable checkpoint" in err


def test_debug_shows_traceback_and_subprocess_exit_code(tmp_path):
    path = _tiny_file(tmp_path, masker__ratio=2.0)
    plain = subprocess.run([sys.executable, "-m", "maskkit", "train", str(path)], capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    debug = subprocess.run([sys.executable, "-m", "maskkit", "--debug", "train", str(path)], capture_output=True,
                           text=True)
    assert "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_a_torchrun_process_ends_with_its_output_and_status(tmp_path):
    """Under torchrun (``WORLD_SIZE > 1``) the command ends with ``os._exit``: piped output still arrives whole,
    and the exit status is the command's (0, or 2 with its one line)."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1"}
    listed = subprocess.run([sys.executable, "-m", "maskkit", "recipes"], capture_output=True, text=True, env=env)
    assert listed.returncode == 0 and "quickstart" in listed.stdout, listed.stderr
    plain = subprocess.run([sys.executable, "-m", "maskkit", "recipes"], capture_output=True, text=True,
                           env=dict(os.environ))  # the same COLUMNS (something under pytest sets one in C only)
    assert listed.stdout == plain.stdout
    missing = subprocess.run([sys.executable, "-m", "maskkit", "train", str(tmp_path / "none.yaml")],
                             capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "none.yaml" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    # WORLD_SIZE exported by hand, without torchrun's rendezvous: one line that says how to start such a run
    env.pop("MASTER_ADDR", None)
    alone = subprocess.run([sys.executable, "-m", "maskkit", "train", str(_tiny_file(tmp_path)), "--out",
                            str(tmp_path / "run")], capture_output=True, text=True, env=env)
    assert alone.returncode == 2 and "torchrun" in alone.stderr and "WORLD_SIZE=2" in alone.stderr, alone.stderr
    assert len(alone.stderr.strip().splitlines()) == 1


def test_plugins_and_list(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "random" in out and "mae" in out and "norm_pixels" in out and "quickstart" in out
    assert main(["list", "encoder", "vit_large_patch16_2*"]) == 0
    assert "vit_large_patch16_224" in capsys.readouterr().out


def test_a_table_printed_to_a_log_is_not_folded_at_80_columns(tmp_path, capsys, monkeypatch):
    """Off a terminal (a log file, a pipe) rich assumed 80 columns and folded wider tables cell by cell; the
    console is now LOG_WIDTH wide there, unless COLUMNS says otherwise."""
    from maskkit.console import LOG_WIDTH, make_console

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.chdir(tmp_path)  # the table names the file as given: 95 columns, on a line of about 170
    plugin = tmp_path / f"a_plugin_file_whose_name_alone_is_wider_than_eighty_columns_{'x' * 30}.py"
    plugin.write_text("import maskkit\n\n\n@maskkit.hookimpl\ndef maskkit_add_maskers():\n"
                      "    from maskkit.builtin.masking import RandomMasker\n\n    return {'wide': RandomMasker}\n")
    assert main(["plugins", "--plugin", plugin.name]) == 0
    out = capsys.readouterr().out
    assert any(" wide " in line and plugin.name in line for line in out.splitlines()), out  # one row, unfolded
    assert make_console().width == LOG_WIDTH
    monkeypatch.setenv("COLUMNS", "100")
    assert make_console().width == 100


def test_visualize_a_target_without_pixels_is_a_one_line_error(trained, tmp_path, capsys, monkeypatch):
    from maskkit.builtin.targets import PixelTarget

    monkeypatch.setattr(PixelTarget, "to_pixels", lambda self, pred, images: None)  # as HOG or features
    assert main(["visualize", str(trained / "checkpoint.pth"), "--out", str(tmp_path / "r.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskkit: error: target PixelTarget predicts no pixels") and err.count("\n") == 1


def test_training_into_a_run_folder_needs_resume(trained, tmp_path, capsys):
    """A second `train` into a folder that holds a run would overwrite its checkpoint: refused, one line."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "checkpoint.pth").read_bytes()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_tree()))
    assert main(["train", str(recipe), "--out", str(run), "--no-progress"]) == 2
    assert f"{run} already holds a run; continue it with --resume" in capsys.readouterr().err
    assert (run / "checkpoint.pth").read_bytes() == before
    assert main(["train", "--resume", str(run / "checkpoint.pth"), "--no-progress", "--no-eval"]) == 0
    assert "nothing to train: the run is already at step 4" in capsys.readouterr().out
