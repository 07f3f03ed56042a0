"""``train.compile_scope``: which modules are compiled. Compiling itself is slow on a CPU, so it is tested once
(``test_cuda.py::test_train_compile_trains_like_eager_on_cpu``, both scopes); here the block finder, which FSDP's
units share, and the scope's validation."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from helpers import tiny_tree

import maskkit
from maskkit.bench import steps as bench_steps
from maskkit.builtin.vit import TimmViTEncoder
from maskkit.engine.compiling import compile_model, transformer_blocks
from maskkit.mae_reference import OfficialStyleMAE

OVERRIDES = ("encoder.img_size=32", "encoder.depth=3", "encoder.embed_dim=32", "encoder.num_heads=2",
             "decoder.depth=2", "decoder.embed_dim=16", "decoder.num_heads=2")


@pytest.fixture
def maskkit_model(builtin_registry):
    """A fresh small maskkit MAE (3 encoder blocks, 2 decoder blocks) for each test: compiling marks it."""
    spec = bench_steps.model_spec("vit_base_patch16", OVERRIDES, builtin_registry)
    return bench_steps.build_maskkit(spec, False, builtin_registry)


def test_blocks_of_maskkit_and_the_official_structure(maskkit_model):
    blocks = transformer_blocks(maskkit_model)
    assert blocks == [*maskkit_model.encoder.blocks, *maskkit_model.decoder.decoder_blocks]  # 3 + 2, in order
    official = OfficialStyleMAE.like(maskkit_model)
    assert transformer_blocks(official) == [*official.blocks, *official.decoder_blocks]


def test_blocks_of_transformers_vitmae(maskkit_model):
    if not bench_steps.transformers_available():
        pytest.skip("transformers is not installed")
    hf = bench_steps.build_hf_like(maskkit_model)
    blocks = transformer_blocks(hf)
    assert [type(b).__name__ for b in blocks] == ["ViTMAELayer"] * 5  # encoder 3 (layer/layers), decoder 2


def test_a_list_of_stages_gives_the_blocks_inside_them():
    """Swin's ``layers`` holds stages whose ``blocks`` hold the blocks: the innermost lists are the blocks (FSDP
    shards them one by one; compiling a stage would compile each differently shaped stage apart)."""
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    blocks = transformer_blocks(swin)
    assert len(blocks) == sum(swin.layers[i].blocks.__len__() for i in range(4)) == 12
    assert {type(b).__name__ for b in blocks} == {"SwinTransformerBlock"}


def test_a_list_of_lists_gives_the_blocks_in_them():
    """timm's Twins keeps ``blocks`` as a list of per-stage ``ModuleList``s, which have no forward: compiling one
    would compile nothing."""
    twins = timm.create_model("twins_svt_small", pretrained=False)
    blocks = transformer_blocks(twins)
    assert len(blocks) == sum(len(stage) for stage in twins.blocks) and blocks[0] is twins.blocks[0][0]
    assert not any(isinstance(b, torch.nn.ModuleList) for b in blocks)


def test_compile_model_marks_what_each_scope_compiles(maskkit_model):
    """``nn.Module.compile`` only wraps (dynamo runs at the first call), so marking is cheap to check."""
    model = maskkit_model
    compiled = compile_model(model, "blocks", skip=(model.masker,))
    assert compiled == transformer_blocks(model) and model.encoder._compiled_call_impl is None
    assert all(b._compiled_call_impl is not None for b in compiled)
    compiled = compile_model(model, "components", skip=(model.masker,))
    assert model.masker not in compiled and model.encoder in compiled and model.decoder in compiled
    with pytest.raises(ValueError, match="compile scope 'all'"):
        compile_model(model, "all")


def test_compile_scope_is_validated():
    assert maskkit.Recipe(tiny_tree()).train.compile_scope == "components"
    tree = tiny_tree(train={**tiny_tree()["train"], "compile_scope": "block"})
    with pytest.raises(maskkit.ConfigError, match="train.compile_scope: expected one of"):
        _ = maskkit.Recipe(tree).train


def test_a_torch_compiled_block_keeps_its_state_dict_names(maskkit_model):
    names = set(maskkit_model.state_dict())
    block = maskkit_model.encoder.blocks[0]
    block.compile()
    assert set(maskkit_model.state_dict()) == names
    assert torch.equal(maskkit_model.state_dict()["blocks.0.norm1.weight"], block.norm1.weight)  # official names


def test_prefix_attention_of_compiled_blocks_is_the_eager_one(monkeypatch):
    """``prefix_attention`` (AttMask's [CLS] attention) reads the last block's queries and keys through forward
    hooks, which do not fire inside compiled code: it runs that forward eagerly, so under ``compile_scope: blocks``
    it gives exactly what the uncompiled encoder gives, before and after the compiled blocks ran. A torch without
    ``torch.compiler.set_stance`` (before 2.6) cannot, and says so in one line instead of a bare ``KeyError``."""
    torch.manual_seed(0)
    encoder = TimmViTEncoder("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, embed_dim=16, depth=1,
                             num_heads=2).eval()
    eager = copy.deepcopy(encoder)
    for block in transformer_blocks(encoder):
        block.compile()
    images = torch.randn(2, 1, 16, 16)
    expected = eager.prefix_attention(images)  # [2, heads, N]
    assert torch.equal(encoder.prefix_attention(images), expected)
    with torch.no_grad():
        torch.testing.assert_close(encoder.forward_features(images), eager.forward_features(images))  # compiled
    assert torch.equal(encoder.prefix_attention(images), expected)
    monkeypatch.delattr(torch.compiler, "set_stance")
    with pytest.raises(RuntimeError, match="hooks did not fire .*set train.compile: false") as info:
        encoder.prefix_attention(images)
    assert "\n" not in str(info.value)
