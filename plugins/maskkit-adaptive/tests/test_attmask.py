"""AttMask on real Fashion-MNIST images: the attention it ranks by is the encoder's own, and each mode hides
what the paper says."""

import pytest
import timm
import torch
from adaptive_helpers import GRID, draw, fashion, registry, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit import ConfigError, Encoder
from maskkit_adaptive import AttMaskMasker, cls_attention


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1)


def _reference_attention(encoder, images):
    """The last block's [CLS] attention read from timm's own (unfused) softmax, via its attn_drop input."""
    attn = encoder.blocks[-1].attn
    seen = []
    fused, attn.fused_attn = attn.fused_attn, False
    handle = attn.attn_drop.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        with torch.no_grad():
            encoder.forward_features(images)
    finally:
        handle.remove()
        attn.fused_attn = fused
    return seen[0][:, :, 0, encoder.num_prefix_tokens:].mean(dim=1)  # [B, N]


def test_cls_attention_is_timms_softmax(model):
    images = fashion()[:6]
    ours = cls_attention(model.encoder, images)
    assert ours.shape == (6, GRID[0] * GRID[1])
    torch.testing.assert_close(ours, _reference_attention(model.encoder, images), rtol=1e-4, atol=1e-6)
    assert bool((ours.sum(1) < 1).all()) and bool((ours > 0).all())  # the cls token keeps some attention


def _vit(name: str, **kwargs) -> Encoder:
    """The built-in timm ViT encoder ``name``, through the registry (plugins use maskkit's public API only)."""
    return registry().create("encoder", name, **kwargs)


def _timm_reference(encoder: Encoder, timm_kwargs: dict, images: torch.Tensor) -> torch.Tensor:
    """``[B, heads, N]``: the [CLS] row of timm's own unfused last-block softmax, from timm's own model (its own
    token order: [CLS] first, then the registers) loaded with the encoder's weights."""
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, global_pool="", **timm_kwargs)
    vit.load_state_dict(encoder.state_dict())
    vit.eval()
    attn = vit.blocks[-1].attn
    attn.fused_attn = False
    seen = []
    attn.attn_drop.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        vit.forward_features(images)
    return seen[0][:, :, 0, vit.num_prefix_tokens:]  # [B, heads, N]


@pytest.mark.parametrize("extra", [{}, {"qk_norm": True}, {"reg_tokens": 4}], ids=["plain", "qk_norm", "registers"])
def test_prefix_attention_is_timms_cls_row_per_head(extra):
    """Per head, with qk-norm, and with registers after the [CLS] token (timm's order): the [CLS] row of timm's
    own softmax, with no gradient even when called with gradients on."""
    kwargs = dict(img_size=28, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2, **extra)
    torch.manual_seed(0)
    encoder = _vit("vit_tiny_patch16_224", **kwargs).eval()
    images = fashion()[:4]
    ours = encoder.prefix_attention(images)
    assert ours.shape == (4, 2, GRID[0] * GRID[1]) and ours.dtype == torch.float32 and not ours.requires_grad
    torch.testing.assert_close(ours, _timm_reference(encoder, kwargs, images), rtol=1e-5, atol=1e-7)


def test_registers_without_cls_token_are_refused():
    """A register token is not a [CLS] token: no prefix attention, and attmask says so in one line."""
    encoder = _vit("vit_base_patch16_reg4_gap_256", img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=1,
                   num_heads=2).eval()
    assert encoder.cls_token is None and encoder.num_prefix_tokens == 4
    with pytest.raises(NotImplementedError, match="no \\[CLS\\] token"):
        encoder.prefix_attention(torch.randn(2, 1, 28, 28))
    with pytest.raises(TypeError, match="needs the encoder's \\[CLS\\] attention"):
        cls_attention(encoder, torch.randn(2, 1, 28, 28))


def test_high_hides_more_attended_patches_than_random(model):
    images = fashion()[:16]
    attention = cls_attention(model.encoder, images)
    high = draw(AttMaskMasker(mode="high"), 16, images=images, model=model)
    rand = draw(AttMaskMasker(mode="high", masking_prob=0.0), 16, images=images, model=model)  # uniform
    low = draw(AttMaskMasker(mode="low"), 16, images=images, model=model)
    hidden_attention = lambda mask: (attention * mask).sum(1)  # noqa: E731
    assert bool((hidden_attention(high) > hidden_attention(rand)).all())
    assert bool((hidden_attention(rand) > hidden_attention(low)).all())
    # exactly the top-k: every hidden patch is attended at least as much as every visible one
    assert bool((attention.masked_fill(~high, 2).min(1).values >= attention.masked_fill(high, -1).max(1).values).all())


def test_masks_follow_the_image(model):
    images = fashion()[:8]
    mask = draw(AttMaskMasker(), 8, images=images, model=model)
    assert len({tuple(row.tolist()) for row in mask}) == 8
    flipped = draw(AttMaskMasker(), 8, images=images.flip(-1), model=model)
    assert not torch.equal(mask, flipped)


def test_hint_reveals_some_of_the_most_attended(model):
    """An explicit hint_ratio (as recipes written before the default followed the official rule) is kept."""
    images = fashion()[:12]
    attention = cls_attention(model.encoder, images)
    masker = AttMaskMasker(mode="hint", hint_ratio=0.05, hint_pool=0.1)
    high = draw(AttMaskMasker(mode="high"), 12, images=images, model=model)
    hint = draw(masker, 12, images=images, model=model)
    n = GRID[0] * GRID[1]
    assert masker.num_hidden(GRID) == n - int(n * 0.25) - int(0.05 * n)
    assert hint.sum(1).tolist() == [masker.num_hidden(GRID)] * 12
    revealed = high & ~hint
    assert not bool((hint & ~high).any()), "hint hides only patches that high hides"
    top = torch.zeros_like(high).scatter_(1, attention.argsort(1, descending=True)[:, :int(0.1 * n)], True)
    assert bool((revealed <= top).all()), "the hints come from the most attended patches"
    assert not torch.equal(hint, draw(masker, 12, seed=1, images=images, model=model)), "hints are random"


@pytest.mark.parametrize("ratio", [0.75, 0.6, 0.9])
def test_hint_count_follows_the_official_rule_by_default(model, ratio):
    """main_attmask.py reveals int(show_max * pred_ratio * N) hints, show_max = 0.1 (the pool): by default
    hint_ratio = hint_pool * ratio; the declared count is what every sample hides."""
    images = fashion()[:6]
    masker = AttMaskMasker(ratio=ratio, mode="hint")
    n = GRID[0] * GRID[1]
    hints = int(0.1 * ratio * n)
    assert masker.hint_ratio == pytest.approx(0.1 * ratio) and masker.hint_pool == 0.1
    assert masker.num_hidden(GRID) == n - int(n * (1 - ratio)) - hints
    mask = draw(masker, 6, images=images, model=model)
    assert mask.sum(1).tolist() == [masker.num_hidden(GRID)] * 6
    high = draw(AttMaskMasker(ratio=ratio, mode="high"), 6, images=images, model=model)
    assert (high & ~mask).sum(1).tolist() == [hints] * 6
    pooled = AttMaskMasker(ratio=ratio, mode="hint", hint_pool=0.2)  # the default follows the pool (show_max)
    assert pooled.num_hidden(GRID) == n - int(n * (1 - ratio)) - int(0.2 * ratio * n)


@settings(max_examples=5, deadline=None)
@given(b=st.integers(2, 8), seed=st.integers(0, 2**31 - 1))
def test_rows_of_a_split_batch_draw_the_whole_batchs_masks(b, seed):
    """Two processes with half the batch each draw what one process draws (the same images)."""
    model = tiny_model(seed=1)
    images = fashion()[:2 * b]
    masker = AttMaskMasker(mode="hint", masking_prob=0.5)
    whole = draw(masker, 2 * b, seed=seed, images=images, model=model)
    first = draw(masker, b, seed=seed, images=images[:b], model=model, rows=slice(0, b))
    second = draw(masker, b, seed=seed, images=images[b:], model=model, rows=slice(b, 2 * b))
    assert torch.equal(torch.cat([first, second]), whole)


def test_teacher_source_reads_the_ema_teacher():
    pytest.importorskip("maskkit_teacher")
    model = tiny_model(recipe="quickstart_data2vec", overrides=("target.top_k=1",),
                       tiny=("encoder.embed_dim=32", "encoder.depth=2", "encoder.num_heads=2"))
    images = fashion()[:4]
    before = draw(AttMaskMasker(source="auto"), 4, images=images, model=model)
    assert torch.equal(before, draw(AttMaskMasker(source="teacher"), 4, images=images, model=model))
    with torch.no_grad():  # move the student only: the teacher's attention, hence the mask, stays
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    assert torch.equal(before, draw(AttMaskMasker(source="auto"), 4, images=images, model=model))
    assert not torch.equal(before, draw(AttMaskMasker(source="encoder"), 4, images=images, model=model))


def test_blind_call_and_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="needs images and model"):
        AttMaskMasker()(2, GRID)
    with pytest.raises(ConfigError, match="mode"):
        AttMaskMasker(mode="middle")
    with pytest.raises(ConfigError) as info:
        AttMaskMasker(mode="hint", hint_ratio=0.3, hint_pool=0.1)
    assert info.value.key == "hint_ratio"
    with pytest.raises(ConfigError) as info:  # hint_ratio left to its default: the key named is hint_pool
        AttMaskMasker(mode="hint", hint_pool=0.8)
    assert info.value.key == "hint_pool" and "got hint_ratio=0.6 (hint_pool x ratio, the default)" in str(info.value)
    with pytest.raises(ValueError, match="source='teacher'"):
        draw(AttMaskMasker(source="teacher"), 2, images=fashion()[:2], model=tiny_model())


def test_trains_with_compiled_blocks_and_ranks_by_the_eager_attention(tmp_path):
    """``train.compile: true`` with ``compile_scope: blocks`` compiles every transformer block, the EMA teacher's
    too, and forward hooks do not fire in compiled code: the attention is read in an eager forward, so the run
    trains and the attention of the compiled model (teacher and student) is exactly the uncompiled one's."""
    pytest.importorskip("maskkit_teacher")
    pytest.importorskip("maskkit.data")
    from maskkit import build_model, load_recipe
    from maskkit.engine.trainer import Trainer

    recipe = load_recipe("quickstart_data2vec", [
        "encoder.embed_dim=32", "encoder.depth=1", "encoder.num_heads=2", "target.top_k=1", "train.device=cpu",
        "train.batch_size=8", "train.max_steps=2", "train.warmup_epochs=0", "train.ckpt_every=0", "eval.knn=false",
        "masker={name: attmask, source: teacher}", "train.compile=true", "train.compile_scope=blocks"],
        registry=registry())
    trainer = Trainer(recipe, tmp_path, registry=registry(), progress=False)
    assert trainer.fit().steps == 2
    model = trainer.model.eval()
    assert model.encoder.blocks[0]._compiled_call_impl is not None
    assert model.target.teacher.blocks[0]._compiled_call_impl is not None
    eager = build_model(recipe, registry=registry()).eval()
    eager.load_state_dict(model.state_dict())
    images = fashion()[:8]
    assert torch.equal(cls_attention(model.target.teacher, images), cls_attention(eager.target.teacher, images))
    assert torch.equal(cls_attention(model.encoder, images), cls_attention(eager.encoder, images))


def test_recipe_mistakes_are_refused_when_the_model_is_built():
    """A teacher source without a teacher target, and an encoder without a [CLS] token (nor its EMA teacher, a
    copy of it), are one-line ConfigErrors naming the recipe file and key when the model is built
    (``check_model``), not a plugin failure at the first step."""
    with pytest.raises(ConfigError) as info:
        tiny_model("{name: attmask, source: teacher}")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("/") and "recipes/quickstart.yaml: masker.source: 'teacher' needs a target " \
                                                "with an EMA teacher encoder" in str(info.value)
    with pytest.raises(ConfigError, match=r"quickstart.yaml: masker: attmask ranks patches by the \[CLS\] attention "
                                          r"of the encoder, but vit_tiny_patch16_224 has no \[CLS\] token "
                                          r"\(encoder.class_token: false\)"):
        tiny_model("{name: attmask}", overrides=("encoder.class_token=false",))
    pytest.importorskip("maskkit_teacher")
    d2v = dict(recipe="quickstart_data2vec", tiny=("encoder.embed_dim=32", "encoder.depth=1", "encoder.num_heads=2"))
    with pytest.raises(ConfigError, match=r"quickstart_data2vec.yaml: masker: .* of the EMA teacher .* no \[CLS\]"):
        tiny_model("{name: attmask, source: teacher}", overrides=("target.top_k=1", "encoder.class_token=false"),
                   **d2v)
    model = tiny_model("{name: attmask, source: teacher}", overrides=("target.top_k=1",), **d2v)
    assert model.masker.check_model(model) is None

