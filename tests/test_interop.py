"""Interop: weights read from transformers ViTMAE folders and official MAE checkpoints, and written back out,
give the same model: the same loss and predictions under the same noise, the same features."""

import pytest
import torch
from helpers import TINY, tiny_tree
from hypothesis import given, settings
from hypothesis import strategies as st
from test_mae_reference import mae_recipe, official_keys

import maskkit
from maskkit.builtin.masking import mask_from_noise
from maskkit.engine.checkpoint import load_training_checkpoint
from maskkit.errors import CheckpointError
from maskkit.interop import load_pretrained, read_pretrained
from maskkit.interop.pretrained import _shipped_recipe_with_shapes, mlp_ratio_for
from maskkit.interop.vit_names import official_to_transformers, transformers_to_official
from maskkit.recipe import Recipe


def _same_loss(model_a, model_b_call, images, noise, ratio):
    """maskkit ``model_a`` and another model (``model_b_call(images, noise) -> (loss, pred, mask)``) under the
    same noise."""
    with torch.no_grad():
        ours = model_a.eval()(images, mask=mask_from_noise(noise, ratio))
        loss, pred, mask = model_b_call(images, noise)
    assert torch.equal(ours.mask, mask.bool())
    torch.testing.assert_close(ours.pred, pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.loss, loss, atol=1e-6, rtol=1e-5)


def _built(loaded):
    model = maskkit.build_model(Recipe(loaded.recipe))
    model.load_state_dict(loaded.state_dict, strict=True)
    return model.eval()


# -- names --------------------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(depth=st.integers(1, 3), dec_depth=st.integers(0, 2), layout=st.sampled_from(["v4", "v5"]),
       prefix=st.sampled_from(["vit.", ""]))
def test_names_round_trip(depth, dec_depth, layout, prefix):
    """official -> transformers -> official is the identity (every tensor, same values), in both layouts."""
    keys = official_keys(depth, max(dec_depth, 1))
    if dec_depth == 0:
        keys = {k for k in keys if not k.startswith(("decoder", "mask_token"))}
    gen = torch.Generator().manual_seed(depth * 10 + dec_depth)
    state = {k: torch.randn(12 if "qkv" in k else 4, generator=gen) for k in sorted(keys)}
    theirs = official_to_transformers(state, layout=layout, encoder_prefix=prefix)
    assert len(theirs) == len(state) + 4 * (depth + (dec_depth and max(dec_depth, 1)))  # qkv -> q, k, v
    back = transformers_to_official(theirs)
    assert set(back) == set(state)
    for key, value in state.items():
        assert torch.equal(back[key], value), key


def test_unknown_keys_are_refused():
    with pytest.raises(CheckpointError, match="classifier"):
        transformers_to_official({"vit.layernorm.weight": torch.ones(2), "classifier.weight": torch.ones(2, 2)})
    with pytest.raises(CheckpointError, match="head.weight"):
        official_to_transformers({"norm.weight": torch.ones(2), "head.weight": torch.ones(2, 2)})


# -- transformers ViTMAE folders ----------------------------------------------------------------------------


def _tiny_vitmae(transformers, **overrides):
    config = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=64, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                  decoder_num_attention_heads=2, decoder_intermediate_size=48, norm_pix_loss=True,
                  layer_norm_eps=1e-6, mask_ratio=0.5)
    config.update(overrides)
    torch.manual_seed(0)
    return transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**config)).eval()


@pytest.mark.parametrize("overrides", [{}, {"norm_pix_loss": False, "mask_ratio": 0.75, "num_channels": 1,
                                            "image_size": 28, "patch_size": 2}, {"layer_norm_eps": 1e-12}],
                         ids=["norm-pix", "quickstart-geometry", "transformers-default-eps"])
def test_transformers_folder_reads_to_the_same_model(tmp_path, overrides):
    """(transformers' default layer-norm eps is 1e-12, timm's 1e-6: the converted recipe keeps the folder's)"""
    transformers = pytest.importorskip("transformers")
    hf = _tiny_vitmae(transformers, **overrides)
    with torch.no_grad():  # non-zero everywhere, so a tensor left at its init would show
        for param in hf.parameters():
            param.add_(0.01 * torch.randn_like(param))
    hf.save_pretrained(tmp_path / "hf")
    loaded = load_pretrained(tmp_path / "hf")
    assert loaded.source == "transformers"
    assert loaded.source == "transformers" and loaded.notes == ()
    assert loaded.recipe["encoder"].get("norm_eps", 1e-6) == overrides.get("layer_norm_eps", 1e-6)
    config = hf.config
    assert loaded.recipe["target"]["name"] == ("norm_pixels" if config.norm_pix_loss else "pixels")
    assert loaded.recipe["masker"] == {"name": "random", "ratio": config.mask_ratio}
    if config.num_channels == 1:
        assert loaded.recipe["data"]["name"] == "fashion_mnist"
    model = _built(loaded)
    size, n = config.image_size, (config.image_size // config.patch_size) ** 2
    gen = torch.Generator().manual_seed(1)
    images, noise = torch.randn(3, config.num_channels, size, size, generator=gen), torch.rand(3, n, generator=gen)

    def theirs(images, noise):
        out = hf(pixel_values=images, noise=noise)
        return out.loss, out.logits, out.mask

    _same_loss(model, theirs, images, noise, config.mask_ratio)


def test_transformers_encoder_only_folder_gets_a_fresh_decoder(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = _tiny_vitmae(transformers)
    hf.vit.save_pretrained(tmp_path / "enc")  # ViTMAEModel: no decoder
    loaded = load_pretrained(tmp_path / "enc")
    assert any("decoder is freshly initialised" in note for note in loaded.notes)
    model = _built(loaded)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        theirs = hf.vit.eval()(pixel_values=images, noise=torch.arange(16.0).expand(2, 16)).last_hidden_state
    # mask ratio 0.5 keeps the 8 lowest-noise patches, here 0..7 in order, as maskkit orders visible tokens
    ours = model.encoder(images, mask_from_noise(torch.arange(16.0).expand(2, 16), 0.5))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    again = load_pretrained(tmp_path / "enc")  # the fresh decoder is seeded: the same every time
    assert torch.equal(again.state_dict["decoder_embed.weight"], loaded.state_dict["decoder_embed.weight"])


def test_transformers_folder_with_another_activation_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    _tiny_vitmae(transformers, hidden_act="relu").save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="hidden_act 'relu'"):
        load_pretrained(tmp_path / "hf")


# -- MLP widths ---------------------------------------------------------------------------------------------


def test_mlp_ratio_gives_every_mlp_width_exactly():
    """timm's block (and maskkit's MAE decoder) make ``int(dim * mlp_ratio)`` hidden units, which for
    ``mlp_ratio = hidden / dim`` is one short at 35,109 of these pairs (width 88, MLP 120 -> 119): every width a
    multiple of 8 up to 2048, every MLP width up to 4x, exactly; the plain quotient whenever it works."""
    for dim in range(8, 2049, 8):
        for hidden in range(1, 4 * dim + 1):
            ratio = mlp_ratio_for(dim, hidden)
            assert int(dim * ratio) == hidden, (dim, hidden)
    assert mlp_ratio_for(768, 3072) == 4.0 and mlp_ratio_for(88, 120) != 120 / 88


@settings(max_examples=300, deadline=None)
@given(dim=st.integers(1, 8192), hidden=st.integers(1, 65536))
def test_mlp_ratio_any_width(dim, hidden):
    assert int(dim * mlp_ratio_for(dim, hidden)) == hidden


def test_mlp_widths_that_truncate_read_from_transformers_and_official_checkpoints(tmp_path):
    """Width 88 with an MLP of 120, a decoder 56 wide with an MLP of 61 (``int(88 * (120 / 88)) == 119``): the
    transformers folder reads to the same model, so does the official checkpoint of its weights, and the
    fine-tuning classifier built from either takes the encoder."""
    transformers = pytest.importorskip("transformers")
    from maskkit.finetune.model import build_classifier, load_pretrained_encoder

    hf = _tiny_vitmae(transformers, hidden_size=88, num_attention_heads=4, intermediate_size=120,
                      decoder_hidden_size=56, decoder_num_attention_heads=2, decoder_intermediate_size=61)
    hf.save_pretrained(tmp_path / "hf")
    loaded = load_pretrained(tmp_path / "hf")
    model = _built(loaded)
    assert model.encoder.blocks[0].mlp.fc1.out_features == 120
    assert model.decoder.decoder_blocks[0].mlp.fc1.out_features == 61
    gen = torch.Generator().manual_seed(1)
    images, noise = torch.randn(2, 3, 16, 16, generator=gen), torch.rand(2, 16, generator=gen)

    def theirs(images, noise):
        out = hf(pixel_values=images, noise=noise)
        return out.loss, out.logits, out.mask

    _same_loss(model, theirs, images, noise, hf.config.mask_ratio)
    torch.save({"model": loaded.state_dict}, tmp_path / "official.pth")
    official = load_pretrained(tmp_path / "official.pth")
    assert all(torch.equal(official.state_dict[k], v) for k, v in loaded.state_dict.items())
    for recipe, state in ((loaded.recipe, loaded.state_dict), (official.recipe, official.state_dict)):
        classifier = build_classifier(recipe["encoder"], 10)
        assert load_pretrained_encoder(classifier, state, "test") > 0


# -- official MAE checkpoints -------------------------------------------------------------------------------


def test_official_checkpoint_reads_to_the_same_model(builtin_registry, tmp_path):
    """A synthetic official checkpoint (maskkit's MAE saved under the official names): sizes from the shapes,
    heads from MAE's 64-wide heads (here exact: 128 / 2, 64 / 2), norm-pix target, same loss."""
    torch.manual_seed(0)
    source = maskkit.build_model(mae_recipe(depth=2, dec_depth=1, img=32, patch=8, dim=128, heads=2, dec_dim=64),
                                 builtin_registry).eval()
    torch.save({"model": source.state_dict()}, tmp_path / "mae_pretrain.pth")
    loaded = load_pretrained(tmp_path / "mae_pretrain.pth")
    assert loaded.source == "official"
    assert loaded.recipe["encoder"]["num_heads"] == 2 and loaded.recipe["decoder"]["num_heads"] == 2
    model = _built(loaded)
    gen = torch.Generator().manual_seed(2)
    images, noise = torch.randn(4, 3, 32, 32, generator=gen), torch.rand(4, 16, generator=gen)

    def theirs(images, noise):
        out = source(images, mask=mask_from_noise(noise, 0.75))
        return out.loss, out.pred, out.mask

    _same_loss(model, theirs, images, noise, 0.75)


def test_official_checkpoint_heads_and_target_by_override(builtin_registry, tmp_path):
    """Heads are not in the shapes: a model with other heads needs overrides, and then matches exactly."""
    torch.manual_seed(0)
    source = maskkit.build_model(mae_recipe(dim=64, heads=4, dec_dim=32, target="pixels"), builtin_registry).eval()
    torch.save({"model": source.state_dict()}, tmp_path / "official.pth")
    overrides = ["encoder.num_heads=4", "decoder.num_heads=4", "target.name=pixels"]
    loaded = load_pretrained(tmp_path / "official.pth", overrides)
    assert loaded.notes == ()
    model = _built(loaded)
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)

    def theirs(images, noise):
        out = source(images, mask=mask_from_noise(noise, 0.75))
        return out.loss, out.pred, out.mask

    _same_loss(model, theirs, images, noise, 0.75)
    guessed = _built(load_pretrained(tmp_path / "official.pth"))  # 1 head by MAE's head width: not the same
    with torch.no_grad():
        assert not torch.allclose(guessed.encoder.forward_features(images), source.encoder.forward_features(images))


def test_an_export_folder_that_cannot_be_created_is_named_not_its_temporary_folder(tmp_path, monkeypatch):
    """The export writes into a temporary folder beside ``--out`` first; when the parent refuses it
    (permissions, a read-only mount), the error names ``--out``, not the random temporary name."""
    import errno
    import tempfile

    from maskkit.interop import transformers_export

    def refuse(prefix, dir):
        raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}x1y2z3")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(PermissionError) as info:
        transformers_export._write_folder(tmp_path / "hf", None, {}, None, None)
    assert info.value.filename == str(tmp_path / "hf")


def test_a_vitmae_config_with_dropout_maps_it_and_says_where_it_differs(builtin_registry):
    """transformers' ``hidden_dropout_prob`` drops after the attention's projection and the MLP's fc2 of every
    layer, the decoder's too; timm's ``proj_drop_rate`` drops there and after the MLP's GELU, and maskkit's MAE
    decoder (the official one's structure) has no dropout: the conversion maps the rates and says both."""
    from maskkit.interop.pretrained import recipe_from_vitmae_config

    config = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1, "intermediate_size": 256,
              "decoder_hidden_size": 32, "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 1,
              "decoder_intermediate_size": 128, "image_size": 32, "patch_size": 8, "layer_norm_eps": 1e-6,
              "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.05}
    tree, notes = recipe_from_vitmae_config(config)
    assert tree["encoder"]["proj_drop_rate"] == 0.1 and tree["encoder"]["attn_drop_rate"] == 0.05
    block = maskkit.build_model(maskkit.Recipe(tree), builtin_registry).encoder.blocks[0]
    assert (block.attn.proj_drop.p, block.mlp.drop2.p, block.mlp.drop1.p, block.attn.attn_drop.p) == (
        0.1, 0.1, 0.1, 0.05)  # drop1 (after the GELU) is the one transformers has not
    assert any("also after the MLP's GELU" in note for note in notes), notes
    assert any("decoder, as the official one, has none" in note for note in notes), notes
    no_dropout = {**config, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    assert recipe_from_vitmae_config(no_dropout)[1] == ()


def test_official_vit_h_checkpoint_of_another_size_gets_vit_hs_16_heads(builtin_registry, tmp_path):
    """ViT-H's heads are 80 wide, not 64: an encoder-only ViT-H/14 checkpoint at 448 (no shipped recipe has its
    shapes; one block here, to stay small) reads with 16 heads, and so computes the source's features."""
    torch.manual_seed(0)
    source = maskkit.build_model(mae_recipe(depth=1, img=448, patch=14, dim=1280, heads=16), builtin_registry).eval()
    encoder_only = {k: v for k, v in source.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": encoder_only}, tmp_path / "mae_pretrain_vit_huge_448.pth")
    loaded = load_pretrained(tmp_path / "mae_pretrain_vit_huge_448.pth")
    assert loaded.recipe["encoder"]["num_heads"] == 16
    assert any("encoder 16 (the standard ViT's at width 1280" in note for note in loaded.notes), loaded.notes
    images = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(_built(loaded).encoder.forward_features(images),
                                   source.encoder.forward_features(images))


@pytest.mark.parametrize(("width", "heads"), [(192, 3), (384, 6), (768, 12), (1024, 16), (1280, 16), (1408, 16),
                                              (1664, 16), (128, 2), (32, 1)])
def test_encoder_head_counts_by_width(width, heads):
    from maskkit.interop.pretrained import encoder_heads

    assert encoder_heads(width) == heads


def test_official_encoder_only_checkpoint(builtin_registry, tmp_path):
    """MAE's released pretraining checkpoints hold the encoder alone: it is read, the decoder is fresh."""
    source = maskkit.build_model(mae_recipe(dim=128, heads=2), builtin_registry).eval()
    encoder_only = {k: v for k, v in source.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": encoder_only}, tmp_path / "enc.pth")
    recipe, state = read_pretrained(tmp_path / "enc.pth")
    model = maskkit.build_model(Recipe(recipe))
    model.load_state_dict(state, strict=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encoder.forward_features(images),
                                   source.encoder.forward_features(images))
    assert recipe["decoder"] == {"name": "mae", "embed_dim": 512, "depth": 8, "num_heads": 16}


def test_shipped_recipes_are_recognised_by_their_shapes(registry):
    for name in ("mae_vit_base_patch16", "mae_vit_huge_patch14"):
        with torch.device("meta"):
            model = maskkit.build_model(maskkit.load_recipe(name, registry=registry), registry)
        state = model.state_dict()
        assert _shipped_recipe_with_shapes(state, registry)[0] == name
        encoder_only = {k: v for k, v in state.items() if model._flat_owner.get(k) == "encoder"}
        assert _shipped_recipe_with_shapes(encoder_only, registry)[0] == name


def test_maskkit_checkpoint_and_bad_files(tmp_path, builtin_registry):
    from maskkit.interop import write_checkpoint
    from maskkit.interop.pretrained import Pretrained

    model = maskkit.build_model(mae_recipe(), builtin_registry)
    write_checkpoint(Pretrained(mae_recipe().tree, model.state_dict(), "maskkit"), tmp_path / "ck.pth")
    recipe, state = read_pretrained(tmp_path / "ck.pth")
    assert recipe == mae_recipe().tree and set(state) == set(model.state_dict())
    assert load_training_checkpoint(tmp_path / "ck.pth")["step"] == 0
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_pretrained(tmp_path / "junk.pth")
    classifier = {k: v for k, v in model.state_dict().items() if model._flat_owner.get(k) == "encoder"}
    torch.save({"model": {**classifier, "head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10)}},
               tmp_path / "mae_finetuned.pth")
    with pytest.raises(CheckpointError, match="an official fine-tuned checkpoint"):
        read_pretrained(tmp_path / "mae_finetuned.pth")
    torch.save({"step": 3}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="neither a maskkit checkpoint nor an official MAE one"):
        read_pretrained(tmp_path / "other.pth")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        read_pretrained(tmp_path / "folder")


# -- export to transformers -----------------------------------------------------------------------------------


def _checkpoint(tmp_path, tree, name="ck.pth", seed=0):
    """A maskkit checkpoint of a freshly built (seeded, slightly perturbed) model of ``tree``."""
    from maskkit.interop import write_checkpoint
    from maskkit.interop.pretrained import Pretrained

    torch.manual_seed(seed)
    model = maskkit.build_model(Recipe(tree))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    write_checkpoint(Pretrained(tree, model.state_dict(), "maskkit"), tmp_path / name)
    return tmp_path / name, model.eval()


QUICKSTART_GEOMETRY = tiny_tree(encoder={"name": "vit_tiny_patch16_224", "img_size": 28, "patch_size": 2,
                                         "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 2},
                                target={"name": "pixels"})
NORM_PIX_RGB = tiny_tree(encoder={"name": "vit_small_patch16_224", "img_size": 32, "patch_size": 8, "in_chans": 3,
                                  "embed_dim": 48, "depth": 1, "num_heads": 3, "mlp_ratio": 2.0},
                         decoder={"name": "mae", "embed_dim": 24, "depth": 2, "num_heads": 4, "mlp_ratio": 3.0},
                         masker={"name": "random", "ratio": 0.6}, data={"name": "image_folder", "root": "/nowhere"})


@pytest.mark.parametrize("tree", [QUICKSTART_GEOMETRY, NORM_PIX_RGB], ids=["quickstart-28px-patch2", "normpix-rgb"])
def test_export_transformers_equals_maskkit(tmp_path, capsys, tree):
    """The exported folder loads offline with AutoModel (ViTMAEModel) and ViTMAEForPreTraining: its features
    equal maskkit's encoder features and its loss under the same noise equals maskkit's."""
    transformers = pytest.importorskip("transformers")
    from maskkit.cli import main

    ckpt, model = _checkpoint(tmp_path, tree)
    out = tmp_path / "hf"
    assert main(["export", str(ckpt), "--format", "transformers", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ViTMAEForPreTraining" in printed and "note:" not in printed
    encoder = model.encoder
    size, n, ratio = encoder.img_size[0], encoder.num_patches, tree["masker"]["ratio"]
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(3, encoder.in_chans, size, size, generator=gen)
    noise = torch.rand(3, n, generator=gen)

    auto = transformers.AutoModel.from_pretrained(out, mask_ratio=0.0).eval()
    assert type(auto).__name__ == "ViTMAEModel"
    with torch.no_grad():
        features = auto(pixel_values=images, noise=torch.arange(n, dtype=torch.float32).expand(3, n))
        torch.testing.assert_close(features.last_hidden_state, encoder.forward_features(images),
                                   atol=1e-5, rtol=1e-5)

    hf = transformers.ViTMAEForPreTraining.from_pretrained(out).eval()
    assert hf.config.norm_pix_loss == (tree["target"]["name"] == "norm_pixels")
    assert hf.config.mask_ratio == ratio and hf.config.layer_norm_eps == 1e-6

    def theirs(images, noise):
        out = hf(pixel_values=images, noise=noise)
        return out.loss, out.logits, out.mask

    _same_loss(model, theirs, images, noise, ratio)
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    expected_mean = [0.2860] if tree["data"]["name"] == "fashion_mnist" else [0.485, 0.456, 0.406]
    assert list(processor.image_mean) == pytest.approx(expected_mean)


def test_exported_folder_converts_back_to_the_same_checkpoint(tmp_path, capsys):
    pytest.importorskip("transformers")
    from maskkit.cli import main

    ckpt, _ = _checkpoint(tmp_path, QUICKSTART_GEOMETRY)
    assert main(["export", str(ckpt), "--format", "transformers", "--out", str(tmp_path / "hf")]) == 0
    assert main(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "back.pth")]) == 0
    before, after = load_training_checkpoint(ckpt), load_training_checkpoint(tmp_path / "back.pth")
    assert after["recipe"] == before["recipe"]  # the recipe written beside config.json came back
    assert after["converted_from"]["source"] == "transformers"
    assert set(after["model"]) == set(before["model"])
    for key, value in before["model"].items():
        assert torch.equal(after["model"][key], value), key
    # a second export replaces the first; a folder that is not an export is left alone
    assert main(["export", str(ckpt), "--format", "transformers", "--out", str(tmp_path / "hf")]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "config.json", "maskkit_recipe.yaml", "model.safetensors", "preprocessor_config.json"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["export", str(ckpt), "--format", "transformers", "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    # somebody's model folder has a config.json too: neither its extra files nor another model type is replaced
    bert = {"config.json": '{"model_type": "bert"}', "pytorch_model.bin": "weights"}
    for name, files in {"bert": bert, "vit_and_vocab": {"config.json": '{"model_type": "vit"}', "vocab.txt": "a"},
                        "bad_config": {"config.json": "{not json"}}.items():
        (tmp_path / name).mkdir()
        for file, text in files.items():
            (tmp_path / name / file).write_text(text)
        assert main(["export", str(ckpt), "--format", "transformers", "--out", str(tmp_path / name)]) == 2
        assert {p.name: p.read_text() for p in (tmp_path / name).iterdir()} == files, name
        assert "is not an empty folder or an earlier export" in capsys.readouterr().err


def test_a_transformers_folder_given_where_a_checkpoint_file_is_expected_points_to_convert(tmp_path, capsys):
    """``eval``, ``visualize`` and ``export`` take a maskkit checkpoint file: a transformers folder is one line
    saying so and naming ``maskkit convert`` (it said to look for a run folder's checkpoint.pth inside it)."""
    from maskkit.cli import main

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "vit_mae"}')
    for args in (["eval", "knn", str(folder)], ["visualize", str(folder)], ["export", str(folder), "--out",
                                                                           str(tmp_path / "x.pth")]):
        assert main(args) == 2, args
        assert capsys.readouterr().err == (f"maskkit: error: {folder}: a transformers folder, expected a maskkit "
                                           f"checkpoint file; `maskkit convert {folder} --out CKPT` makes one of a "
                                           "ViTMAE folder\n")


def test_export_and_convert_never_replace_the_checkpoint_they_read_or_a_runs(tmp_path, capsys):
    """``--out`` naming the checkpoint being read (or another run's) would replace a run's only checkpoint with
    an encoder-only file or a weights-only conversion: refused in one line, exit 2, the file unchanged. An
    earlier export or conversion at ``--out`` is replaced, as before."""
    from maskkit.cli import main
    from maskkit.engine.trainer import Trainer

    tree = tiny_tree()
    tree["train"].update(max_steps=1, ckpt_every=0)
    Trainer(Recipe(tree), tmp_path / "run", progress=False).fit()
    ckpt = tmp_path / "run" / "checkpoint.pth"
    other = tmp_path / "other.pth"
    other.write_bytes(ckpt.read_bytes())
    before = ckpt.read_bytes()
    for command in ("export", "convert"):
        assert main([command, str(ckpt), "--out", str(ckpt)]) == 2
        assert capsys.readouterr().err == (f"maskkit: error: {ckpt}: --out is the checkpoint being read, which it "
                                           "would replace; give another --out (nothing was written)\n")
        assert main([command, str(ckpt), "--out", str(other)]) == 2
        assert capsys.readouterr().err == (f"maskkit: error: {other}: holds a run's checkpoint (step 1), which --out "
                                           "would replace; give another --out (nothing was written)\n")
        assert ckpt.read_bytes() == before and other.read_bytes() == before
        for _ in range(2):  # the second replaces the first
            assert main([command, str(ckpt), "--out", str(tmp_path / f"{command}.pth")]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "convert.pth"), "--out", str(tmp_path / "convert.pth")]) == 2
    assert "--out is the checkpoint being read" in capsys.readouterr().err


def test_converted_checkpoint_works_with_the_checkpoint_commands(tmp_path, capsys):
    """``maskkit convert`` output is a maskkit checkpoint: visualize and export (timm) take it."""
    from maskkit.cli import main

    source = maskkit.build_model(Recipe(QUICKSTART_GEOMETRY))
    torch.save({"model": source.state_dict()}, tmp_path / "official.pth")
    assert main(["convert", str(tmp_path / "official.pth"), "--out", str(tmp_path / "ck.pth"),
                 "encoder.num_heads=2", "decoder.num_heads=2", "target.name=pixels"]) == 0
    assert "note:" not in capsys.readouterr().out
    assert main(["visualize", str(tmp_path / "ck.pth"), "--out", str(tmp_path / "r.png"), "--count", "2"]) == 0
    assert main(["export", str(tmp_path / "ck.pth"), "--out", str(tmp_path / "enc.pth")]) == 0
    encoder = torch.load(tmp_path / "enc.pth", weights_only=True)
    assert torch.equal(encoder["blocks.1.mlp.fc2.weight"], source.state_dict()["blocks.1.mlp.fc2.weight"])


def test_export_refusals_are_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    from maskkit.cli import main

    wide = tiny_tree(encoder={**TINY["encoder"], "img_size": [28, 56]})
    ckpt, _ = _checkpoint(tmp_path, wide, "wide.pth")
    assert main(["export", str(ckpt), "--format", "transformers", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "square images and patches only" in err
    dense = tiny_tree(encoder={**TINY["encoder"], "dense": True})
    ckpt, _ = _checkpoint(tmp_path, dense, "dense.pth")
    assert main(["export", str(ckpt), "--format", "transformers", "--out", str(tmp_path / "x")]) == 2
    assert "dense" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # as if not installed
    assert main(["export", str(ckpt), "--format", "transformers", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "transformers package" in err and "pip install transformers" in err


@pytest.mark.parametrize("export_format", ["timm", "transformers"])
def test_export_of_weights_that_do_not_fit_their_recipe_or_of_no_recipe_is_one_line(tmp_path, capsys, export_format):
    if export_format == "transformers":
        pytest.importorskip("transformers")
    from maskkit.cli import main

    ckpt, _ = _checkpoint(tmp_path, QUICKSTART_GEOMETRY, "model.pth")
    state = torch.load(ckpt, weights_only=True)
    state["recipe"]["decoder"]["embed_dim"] = 24  # the weights no longer fit the recipe stored with them
    torch.save(state, tmp_path / "misfit.pth")
    del state["recipe"]
    torch.save(state, tmp_path / "norecipe.pth")
    for name, fragment in (("misfit.pth", "misfit.pth: its weights do not fit the model its recipe builds: size "
                                          "mismatch"),
                           ("norecipe.pth", "norecipe.pth: holds no recipe to rebuild its model from")):
        out = tmp_path / f"out-{name}"
        assert main(["export", str(tmp_path / name), "--format", export_format, "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and fragment in err and "internal error" not in err, err
        assert not out.exists()


@pytest.mark.parametrize("export_format", ["timm", "transformers"])
def test_export_refuses_non_finite_weights_naming_the_checkpoint_and_the_first_bad_tensor(tmp_path, capsys,
                                                                                         export_format):
    """A checkpoint edited by hand or saved by another tool may hold NaN/inf: the export writes nothing and
    says, in one line, which checkpoint and which tensor (the first, in the order of the weights written)."""
    if export_format == "transformers":
        pytest.importorskip("transformers")
    from maskkit.cli import main

    ckpt, _ = _checkpoint(tmp_path, QUICKSTART_GEOMETRY, "model.pth")
    state = torch.load(ckpt, weights_only=True)
    state["model"]["blocks.0.attn.qkv.weight"][3, 1] = float("nan")
    state["model"]["blocks.1.mlp.fc2.bias"][0] = float("inf")
    torch.save(state, tmp_path / "nan.pth")
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "nan.pth"), "--format", export_format, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    what = "encoder weights" if export_format == "timm" else "weights"
    assert err == (f"maskkit: error: {tmp_path / 'nan.pth'}: non-finite {what}: blocks.0.attn.qkv.weight holds a "
                   "NaN or inf (and 1 more tensor); expected finite weights, nothing was written\n"), err
    assert not out.exists()
    state = torch.load(ckpt, weights_only=True)  # the decoder goes into a transformers folder, not timm's file
    state["model"]["decoder_pred.weight"][0, 0] = float("-inf")
    torch.save(state, tmp_path / "decoder.pth")
    code = main(["export", str(tmp_path / "decoder.pth"), "--format", export_format, "--out", str(out)])
    err = capsys.readouterr().err
    if export_format == "timm":
        assert code == 0 and out.is_file() and not err
    else:
        assert code == 2 and "decoder.pth: non-finite weights: decoder_pred.weight holds a NaN or inf;" in err, err
        assert not out.exists()


def test_export_without_mae_decoder_writes_the_encoder(tmp_path, capsys):
    """A model whose decoder side ViTMAE cannot hold (here an L1 loss) exports its encoder as ViTMAEModel."""
    transformers = pytest.importorskip("transformers")
    from maskkit.cli import main

    ckpt, model = _checkpoint(tmp_path, tiny_tree(loss={"name": "l1"}))
    assert main(["export", str(ckpt), "--format", "transformers", "--out", str(tmp_path / "hf")]) == 0
    assert "note: encoder only (ViTMAEModel): the loss is not MSE" in capsys.readouterr().out
    auto = transformers.AutoModel.from_pretrained(tmp_path / "hf", mask_ratio=0.0).eval()
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ours = model.encoder.forward_features(images)
        theirs = auto(pixel_values=images, noise=torch.arange(49.0).expand(2, 49)).last_hidden_state
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def _finetune_checkpoint(tmp_path, global_pool, img_size=28):
    """A checkpoint in the layout of ``maskkit finetune`` (``kind: finetune``, a timm ViT classifier's state
    dict, the pretraining encoder section, ``num_classes``, ``class_names``)."""
    import timm

    from maskkit.engine.checkpoint import save_atomic

    spec = dict(QUICKSTART_GEOMETRY["encoder"], img_size=img_size)
    torch.manual_seed(0)
    classifier = timm.create_model(spec["name"], num_classes=10, global_pool=global_pool,
                                   **{k: v for k, v in spec.items() if k != "name"}).eval()
    with torch.no_grad():
        for param in classifier.parameters():
            param.add_(0.01 * torch.randn_like(param))
    state = {"format": "maskkit", "format_version": 1, "kind": "finetune", "step": 5,
             "model": classifier.state_dict(), "recipe": {"seed": 0, "data": QUICKSTART_GEOMETRY["data"]},
             "encoder": spec, "num_classes": 10, "class_names": [f"class {i}" for i in range(10)]}
    save_atomic(state, tmp_path / f"ft_{global_pool}.pth")
    return tmp_path / f"ft_{global_pool}.pth", classifier


@pytest.mark.parametrize("img_size", [28, [28, 14]], ids=["square", "non-square"])
def test_export_finetuned_classifier_to_vit(tmp_path, capsys, img_size):
    """A [CLS]-token classifier becomes ViTForImageClassification with the same logits (transformers' ViT takes
    non-square images); MAE's mean-pool + fc_norm head, which that class cannot hold, is refused in one line."""
    transformers = pytest.importorskip("transformers")
    from maskkit.cli import main

    ckpt, classifier = _finetune_checkpoint(tmp_path, "token", img_size)
    assert main(["export", str(ckpt), "--format", "transformers", "--out", str(tmp_path / "vit")]) == 0
    printed = capsys.readouterr().out
    assert "ViTForImageClassification" in printed
    hf = eval(printed.split("load with")[1].strip(), {"transformers": transformers}).eval()  # as a user pastes it
    assert type(hf) is transformers.ViTForImageClassification and hf.config.id2label[3] == "class 3"
    auto = transformers.AutoModel.from_pretrained(tmp_path / "vit").eval()
    images = torch.randn(2, 1, *classifier.patch_embed.img_size)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=images).logits, classifier(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(auto(pixel_values=images).last_hidden_state, classifier.forward_features(images),
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(CheckpointError, match="a fine-tuning checkpoint"):
        read_pretrained(ckpt)
    ckpt, _ = _finetune_checkpoint(tmp_path, "avg")
    capsys.readouterr()  # transformers' loading progress and warnings above
    assert main(["export", str(ckpt), "--format", "transformers", "--out", str(tmp_path / "avg")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "global_pool=token" in err


def test_both_formats_export_the_ema_weights_of_an_ema_run(tmp_path, capsys):
    """A fine-tuning run that kept an EMA: ``--format transformers`` writes the EMA classifier (its logits), as
    ``--format timm`` does (its tensors), and both summaries say so."""
    import copy

    transformers = pytest.importorskip("transformers")
    from maskkit.cli import main
    from maskkit.engine.checkpoint import save_atomic

    ckpt, classifier = _finetune_checkpoint(tmp_path, "token")
    ema = copy.deepcopy(classifier)
    with torch.no_grad():
        for param in ema.parameters():
            param.add_(0.05 * torch.randn_like(param))
    save_atomic({**torch.load(ckpt, weights_only=True), "ema": ema.state_dict()}, ckpt)
    assert main(["export", str(ckpt), "--format", "transformers", "--out", str(tmp_path / "vit")]) == 0
    printed = capsys.readouterr().out
    hf = transformers.ViTForImageClassification.from_pretrained(tmp_path / "vit").eval()
    images = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=images).logits, ema(images), atol=1e-5, rtol=1e-5)
    assert "ViTForImageClassification with the run's EMA weights" in printed
    assert main(["export", str(ckpt), "--out", str(tmp_path / "timm.pth")]) == 0
    assert "(EMA weights)" in capsys.readouterr().out
    exported = torch.load(tmp_path / "timm.pth", weights_only=True)
    assert all(torch.equal(exported[key], value) for key, value in ema.state_dict().items())


def test_export_of_a_classifier_fine_tuned_from_a_transformers_folder_keeps_its_eps(tmp_path, monkeypatch):
    """A classifier fine-tuned from a transformers ViTMAE folder (encoder section norm_eps 1e-12) exports with
    layer_norm_eps 1e-12 and the fine-tuned model's own logits; the export is checked against the model
    fine-tuning built, so a rebuild that lost the eps is refused instead of compared with itself."""
    transformers = pytest.importorskip("transformers")
    from maskkit.finetune import model as finetune_model
    from maskkit.interop.transformers_export import export_transformers

    spec = {"name": "vit_tiny_patch16_224", "img_size": 28, "patch_size": 4, "in_chans": 1, "embed_dim": 32,
            "depth": 1, "num_heads": 2, "norm_eps": 1e-12}
    torch.manual_seed(0)
    trained = finetune_model.build_classifier(spec, 10, global_pool="token").eval()
    with torch.no_grad():
        for param in trained.parameters():
            param.add_(0.05 * torch.randn_like(param))
    checkpoint = {"kind": "finetune", "model": trained.state_dict(), "encoder": spec, "num_classes": 10,
                  "recipe": {}}
    result = export_transformers(checkpoint, tmp_path / "vit")
    hf = transformers.ViTForImageClassification.from_pretrained(tmp_path / "vit").eval()
    assert hf.config.layer_norm_eps == 1e-12 and result.max_difference < 1e-6
    images = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=images).logits, trained(images), rtol=0, atol=1e-6)
    build = finetune_model.build_classifier
    monkeypatch.setattr(finetune_model, "build_classifier",
                        lambda spec, *a, **kw: build({k: v for k, v in spec.items() if k != "norm_eps"}, *a, **kw))
    with pytest.raises(CheckpointError, match=r"layer norm eps \[1e-06\], its encoder section norm_eps 1e-12"):
        export_transformers(checkpoint, tmp_path / "wrong")


def test_layer_norm_eps_travels_both_ways(tmp_path, capsys):
    """A folder with transformers' default eps 1e-12 converts to a recipe with norm_eps 1e-12 (encoder and
    decoder), and exports back with layer_norm_eps 1e-12."""
    transformers = pytest.importorskip("transformers")
    from maskkit.cli import main

    _tiny_vitmae(transformers, layer_norm_eps=1e-12).save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "ck.pth")]) == 0
    model, _ = __import__("maskkit.cli", fromlist=["_model_from_checkpoint"])._model_from_checkpoint(
        str(tmp_path / "ck.pth"))
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-12}
    assert main(["export", str(tmp_path / "ck.pth"), "--format", "transformers", "--out", str(tmp_path / "back")]) == 0
    assert transformers.AutoConfig.from_pretrained(tmp_path / "back").layer_norm_eps == 1e-12
    assert main(["export", str(tmp_path / "ck.pth"), "--out", str(tmp_path / "enc.pth")]) == 0  # timm
    assert "eps=1e-12" in capsys.readouterr().out


def test_transformers_folder_with_pytorch_weights_and_4x_names(tmp_path):
    """Older folders: ``pytorch_model.bin`` holding transformers 4.x names reads to the same weights."""
    transformers = pytest.importorskip("transformers")
    hf = _tiny_vitmae(transformers)
    hf.save_pretrained(tmp_path / "new")
    official = load_pretrained(tmp_path / "new").state_dict
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    torch.save(official_to_transformers(official, layout="v4"), tmp_path / "old" / "pytorch_model.bin")
    again = load_pretrained(tmp_path / "old").state_dict
    assert set(again) == set(official) and all(torch.equal(again[k], v) for k, v in official.items())
