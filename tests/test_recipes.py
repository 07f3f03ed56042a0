"""Recipes: loading, overrides, validation errors that name the file and key, and every shipped recipe runs."""

from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY, VariableMaskerPlugin, tiny_tree

import maskkit
from maskkit.builder import build_dataset
from maskkit.engine.trainer import Trainer
from maskkit.errors import ConfigError
from maskkit.recipe import apply_overrides, load_recipe, safe_load

RECIPES = sorted(p for p in (Path(__file__).parents[1] / "recipes").glob("*.yaml")  # compare/ holds comparison specs
                 if not p.stem.startswith("finetune_"))  # fine-tuning recipes: tests/test_finetune.py


def write(tmp_path, tree, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


def test_overrides_parse_yaml_values():
    tree = apply_overrides(TINY, ["masker.ratio=0.5", "train.betas=[0.9, 0.99]", "encoder.name=vit_small_patch16_224",
                                  "new.section.key=true"])
    assert tree["masker"]["ratio"] == 0.5 and tree["train"]["betas"] == [0.9, 0.99]
    assert tree["encoder"]["name"] == "vit_small_patch16_224" and tree["new"]["section"]["key"] is True
    assert TINY["masker"]["ratio"] == 0.75  # the input is not modified


@pytest.mark.parametrize("override, message", [
    ("masker.ratio", "expected key.path=value"),
    ("=3", "expected key.path=value"),
    ("masker.ratio.deep=1", "cannot set inside masker.ratio"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(TINY, [override])


@pytest.mark.parametrize("overrides, key, fragment", [
    (["masker.name=randon"], "masker.name", "did you mean random"),
    (["masker.ratio=1.5"], "masker.ratio", "expected a float in (0, 1), got 1.5"),
    (["masker.ratio=0"], "masker.ratio", "expected a float in (0, 1)"),
    (["masker.rate=0.5"], "masker.rate", "random has no argument 'rate' (did you mean ratio?); it takes: ratio"),
    (["decoder.depth=two"], "decoder.depth", "expected int, got 'two'"),
    (["decoder.in_dim=3"], "decoder.in_dim", "is set by the builder"),
    (["encoder.img_size=30"], "encoder.img_size", "expected a multiple of patch_size 4"),
    (["encoder.name=vit_nonexistent"], "encoder.name", "unknown encoder"),
    (["train.batch_size=-1"], "train.batch_size", "expected a positive int"),
    (["train.epoch=3"], "train.epoch", "did you mean epochs"),
    (["trian.epochs=3"], "trian", "did you mean train"),
    (["train.precision=fp8"], "train.precision", "expected one of auto, fp32, bf16"),
    (["train.device=gpu"], "train.device", "expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    (["augment.scale=0.5"], "augment.scale", "expected [min, max] with 0 < min <= max <= 1, got 0.5"),
    (["augment.ratio=[1.5, 0.5]"], "augment.ratio", "expected [min, max] with 0 < min <= max, got [1.5, 0.5]"),
    (["augment.ratio=[1.0]"], "augment.ratio", "got [1.0]"),
    (["augment.ratio=2"], "augment.ratio", "got 2"),
    (["encoder.depth=-1"], "encoder", "RuntimeError: number of steps must be non-negative"),
    (["decoder.embed_dim=0"], "decoder", "ZeroDivisionError"),
])
def test_errors_name_file_and_key(tmp_path, overrides, key, fragment, builtin_registry):
    path = write(tmp_path, TINY)
    with pytest.raises(ConfigError) as info:
        recipe = load_recipe(path, overrides)
        _ = recipe.train, recipe.augment
        maskkit.build_model(recipe, builtin_registry)
    text = str(info.value)
    assert text.startswith(f"{path}: {key}: "), text
    assert fragment in text
    assert "\n" not in text


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("masker:\n  name: random\n  ratio: [0.5\ntrain: {}\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: YAML syntax error"):
        load_recipe(path)


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    """YAML requires unique keys; PyYAML would keep the second ``ratio`` silently. A merge (``<<``) may still be
    overridden."""
    path = tmp_path / "twice.yaml"
    path.write_text("masker:\n  name: random\n  ratio: 0.5\n  ratio: 0.9\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(info.value) == (f"{path}:4: YAML syntax error: duplicate key 'ratio' (first on line 3; YAML would "
                               "keep the last one silently)")
    assert safe_load("base: &b {ratio: 0.5, name: random}\nmasker: {<<: *b, ratio: 0.9}\n")["masker"] == {
        "ratio": 0.9, "name": "random"}


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")


def test_missing_data_directory(tmp_path, builtin_registry):
    recipe = load_recipe(write(tmp_path, TINY), ["data.source=/no/such/dir"])
    with pytest.raises(ConfigError, match=r"recipe.yaml: data: .*no/such/dir"):
        build_dataset(recipe, "train", builtin_registry)


def test_variable_masker_with_sparse_encoder_is_refused_before_compute(tmp_path):
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"test-variable": VariableMaskerPlugin()})
    recipe = load_recipe(write(tmp_path, tiny_tree(masker={"name": "variable"})))
    with pytest.raises(ConfigError,
                       match=r"masker: variable hides a varying number .* encoder vit_tiny_patch16_224 is sparse"):
        maskkit.build_model(recipe, registry)
    dense = recipe.with_overrides(["encoder.dense=true"])
    model = maskkit.build_model(dense, registry)
    out = model(torch.randn(3, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    assert out.mask.sum(1).unique().numel() > 1 and torch.isfinite(out.loss)


def test_recipe_by_registered_name(builtin_registry):
    recipe = load_recipe("quickstart", registry=builtin_registry)
    assert recipe.component("masker") == {"name": "random", "ratio": 0.75}
    assert recipe.path.endswith("recipes/quickstart.yaml")


def test_mae_base_recipe_has_the_paper_defaults():
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "mae_vit_base_patch16.yaml")
    cfg = recipe.train
    assert cfg.betas == (0.9, 0.95) and cfg.weight_decay == 0.05 and cfg.base_lr == 1.5e-4
    assert cfg.epochs == 800 and cfg.warmup_epochs == 40
    assert (cfg.batch_size, cfg.accum_steps, cfg.effective_batch) == ("auto", "auto", 4096)  # batch_rule picks
    assert recipe.augment.scale == (0.2, 1.0) and recipe.augment.hflip
    assert recipe.component("target")["name"] == "norm_pixels"
    assert recipe.component("decoder") == {"name": "mae", "embed_dim": 512, "depth": 8, "num_heads": 16}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_builds_tiny_and_steps(path, builtin_registry):
    """Each shipped recipe, shrunk (encoder depth 1 and narrow, 32 px Fashion-MNIST), runs a real step."""
    recipe = load_recipe(path)
    patch = recipe.component("encoder").get("patch_size", 16)
    tiny = recipe.with_overrides([
        "data.name=fashion_mnist", "data.source=embedded", "encoder.img_size=" + str(2 * patch),
        "encoder.in_chans=1", "encoder.depth=1", "encoder.embed_dim=32", "encoder.num_heads=2",
        "decoder.embed_dim=16", "decoder.depth=1", "decoder.num_heads=2"])
    for key in ("root", "test_root"):
        tiny.tree["data"].pop(key, None)
    tiny.tree["data"].pop("in_chans", None)
    model = maskkit.build_model(tiny, builtin_registry)
    data = build_dataset(tiny, "train", builtin_registry)
    images = torch.nn.functional.interpolate(torch.stack([data[i][0] for i in range(4)]).float() / 255,
                                             size=model.encoder.img_size)
    out = model(images, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_exponent_floats_are_floats(tmp_path):
    """YAML 1.1 would read ``1e-3`` as a string; recipes read it as the float everyone means."""
    recipe = load_recipe(write(tmp_path, TINY), ["train.base_lr=1e-3"])
    assert recipe.train.base_lr == 1e-3
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(TINY) + "\n")
    path.write_text(path.read_text().replace("base_lr: 0.001", "base_lr: 2e-4"))
    assert load_recipe(path).train.base_lr == 2e-4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_a_cuda_device_without_a_gpu_is_one_line_naming_the_key(tmp_path, builtin_registry):
    path = write(tmp_path, TINY)
    recipe = load_recipe(path, ["train.device=cuda:1"])
    with pytest.raises(ConfigError) as info:
        Trainer(recipe, tmp_path / "run", registry=builtin_registry, progress=False).fit()
    assert str(info.value) == (f"{path}: train.device: cuda:1 was asked for, but torch sees no CUDA device here "
                               "(use auto or cpu)")
