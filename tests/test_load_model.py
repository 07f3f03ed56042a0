"""One function loads a trained model from its checkpoint: engine.checkpoint.load_model."""

import pytest
import torch
from helpers import tiny_tree
from rich.console import Console

from maskkit.engine.checkpoint import load_model, save_atomic
from maskkit.engine.trainer import Trainer
from maskkit.errors import CheckpointError
from maskkit.recipe import Recipe


def test_load_model_rebuilds_the_trained_model(builtin_registry, tmp_path):
    tree = tiny_tree()
    tree["train"].update(max_steps=1, ckpt_every=0)
    trainer = Trainer(Recipe(tree), tmp_path / "run", registry=builtin_registry, progress=False,
                      console=Console(file=open("/dev/null", "w")))
    trainer.fit()
    model, recipe = load_model(tmp_path / "run" / "checkpoint.pth", ["eval.k=3"], registry=builtin_registry)
    assert recipe.eval.k == 3 and recipe.tree["encoder"] == tree["encoder"]
    trained = trainer.model.state_dict()
    assert model.state_dict().keys() == trained.keys()
    assert all(torch.equal(v.cpu(), trained[k].cpu()) for k, v in model.state_dict().items())
    # a checkpoint whose recipe no longer builds the saved model: one line, not a traceback of shapes
    state = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    state["recipe"]["encoder"]["embed_dim"] = 48
    save_atomic(state, tmp_path / "bent.pth")
    with pytest.raises(CheckpointError, match="bent.pth: its weights do not fit the model its recipe builds"):
        load_model(tmp_path / "bent.pth", registry=builtin_registry)


def test_the_encoder_decides_what_its_export_keeps(builtin_registry):
    import maskkit

    dense = maskkit.create("encoder", "vit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1, embed_dim=32,
                           depth=1, num_heads=2, dense=True, registry=builtin_registry)
    assert "encoder_mask_token" in dense.state_dict() and "encoder_mask_token" not in dense.export_state_dict()
    assert set(dense.state_dict()) - set(dense.export_state_dict()) == {"encoder_mask_token"}
    args = {"name": "vit_tiny_patch16_224", "img_size": 28, "patch_size": 4, "dense": True, "mae_init": True}
    assert dense.export_arguments(args) == {"img_size": 28, "patch_size": 4}
