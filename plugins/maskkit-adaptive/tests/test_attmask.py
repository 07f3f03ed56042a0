"""AttMask on real Fashion-MNIST images: the attention it ranks by is the encoder's own, and each mode hides
what the paper says."""

import pytest
import torch
from adaptive_helpers import GRID, draw, fashion, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit import ConfigError
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
    with pytest.raises(ConfigError, match="hint_ratio"):
        AttMaskMasker(mode="hint", hint_ratio=0.3, hint_pool=0.1)
    with pytest.raises(ValueError, match="source='teacher'"):
        draw(AttMaskMasker(source="teacher"), 2, images=fashion()[:2], model=tiny_model())
