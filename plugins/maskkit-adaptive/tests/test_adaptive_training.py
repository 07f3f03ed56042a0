"""Each masker trains the quickstart MAE (made tiny) through maskkit's Trainer: masks drawn with the context
they name, aux losses added and logged, learnable maskers' parameters trained, checkpointed and resumed exactly."""

import json
from pathlib import Path

import pytest
import torch
from adaptive_helpers import TINY, registry

import maskkit
from maskkit.engine.trainer import Trainer
from maskkit.registry import Registry

ROOT = Path(__file__).resolve().parents[3]
RUN = [*TINY, "train.batch_size=8", "train.max_steps=3", "train.ckpt_every=0", "train.log_every=1", "eval.knn=false"]
MASKERS = {
    "attmask": "{name: attmask, mode: hint}",
    "hpm": "{name: hpm, ramp_epochs: 0.001}",
    "adamae": "{name: adamae, loss_weight: 1.0}",
    "colormae": "{name: colormae, color: green}",
    "curriculum": "{name: curriculum, ramp_epochs: 0.001}",
}
AUX = {"hpm": "aux/masker.rank", "adamae": "aux/masker.sampling"}


def _recipe(masker: str, *overrides: str):
    return maskkit.load_recipe(ROOT / "recipes" / "quickstart.yaml", [*RUN, f"masker={MASKERS[masker]}", *overrides],
                               registry=registry())


def _rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(MASKERS))
def test_trains_through_the_engine(name, tmp_path):
    pytest.importorskip("maskkit.data")
    trainer = Trainer(_recipe(name), tmp_path, registry=registry(), progress=False)
    result = trainer.fit()
    assert result.steps == 3
    rows = _rows(tmp_path)
    assert len(rows) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    if name in AUX:
        assert all(r["loss"] == pytest.approx(r["loss_main"] + r[AUX[name]], rel=1e-5) for r in rows)
        state = trainer.model.masker.state_dict()
        moments = [trainer.optimizer.state[p]["exp_avg"] for p in trainer.model.masker.parameters()]
        assert moments and any(float(m.abs().sum()) > 0 for m in moments), "the masker got gradients"
        saved = torch.load(tmp_path / "checkpoint.pth", weights_only=True)["model"]
        assert {f"masker.{k}" for k in state} <= set(saved)
    else:
        assert not any(k.startswith("aux/") for k in rows[0])


class Crash(Exception):
    pass


class CrashAtCheckpoint:
    @maskkit.hookimpl
    def maskkit_checkpoint_saved(self, trainer, path, step):
        if step == 2:
            raise Crash


def test_resume_is_exact_with_hpm(tmp_path):
    pytest.importorskip("maskkit.data")
    rec = _recipe("hpm", "train.max_steps=4", "train.ckpt_every=2")
    Trainer(rec, tmp_path / "full", registry=registry(), progress=False).fit()
    from maskkit_adaptive import plugin

    crashing = Registry.from_plugins(autoload=False, plugins={"adaptive": plugin, "crash": CrashAtCheckpoint()})
    with pytest.raises(Crash):
        Trainer(rec, tmp_path / "part", registry=crashing, progress=False).fit()
    Trainer(rec, tmp_path / "part", registry=registry(), resume=tmp_path / "part" / "checkpoint.pth",
            progress=False).fit()
    full = [(r["loss"], r["aux/masker.rank"]) for r in _rows(tmp_path / "full")]
    assert [(r["loss"], r["aux/masker.rank"]) for r in _rows(tmp_path / "part")] == full


@pytest.mark.parametrize("name", ["hpm", "adamae"])
def test_the_builder_wires_the_encoder_width(name, tmp_path, capsys, monkeypatch):
    """``in_dim`` is a wiring argument: the builder passes the encoder's width (in a model, in ``masks show``)
    and a recipe that sets it is told to remove it."""
    from maskkit import cli
    from maskkit.builder import build_model

    assert build_model(_recipe(name, "encoder.embed_dim=48"), registry()).masker.in_dim == 48
    with pytest.raises(maskkit.ConfigError, match="masker.in_dim: is set by the builder"):
        build_model(_recipe(name, "masker.in_dim=64"), registry())
    monkeypatch.setattr(cli, "_registry", lambda args=None: registry())
    assert cli.main(["masks", "show", name, "--count", "4", "--out", str(tmp_path / "m.png")]) == 0
    assert "147" in capsys.readouterr().out and (tmp_path / "m.png").stat().st_size > 0


@pytest.mark.parametrize("recipe,override,error", [
    ("quickstart_attmask", "encoder.class_token=false", "masker: attmask ranks patches by the [CLS] attention"),
    ("quickstart_attmask", "masker.source=teacher", "masker.source: 'teacher' needs a target"),
    ("quickstart_hpm", "masker.source=teacher", "masker.source: 'teacher' needs a target"),
])
def test_recipe_mistakes_stop_the_cli_before_the_run_folder_is_written(recipe, override, error, tmp_path,
                                                                       monkeypatch, capsys):
    """What a masker's ``check_model`` refuses stops ``maskkit train`` with one line naming the recipe file and
    key, exit 2, before any file of the run is written (not a plugin failure after the first step)."""
    from maskkit import cli

    monkeypatch.setattr(cli, "_registry", lambda args=None: registry())
    run = tmp_path / "run"
    argv = ["train", recipe, override, "encoder.embed_dim=32", "encoder.depth=1", "encoder.num_heads=2",
            "train.device=cpu", "--out", str(run), "--no-progress", "--no-eval"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maskkit: error: /") and f"{recipe}.yaml: {error}" in err and "\n" not in err
    assert not run.exists() or not any(run.iterdir()), "nothing is written in the run folder"
