"""AdaMAE: visible patches are a draw without replacement from the sampler's distribution, and the sampling
loss's gradient reaches the sampler only, in the direction the paper gives."""

import torch
from adaptive_helpers import GRID, draw, fashion, tiny_model

from maskkit_adaptive import AdaMAEMasker


def test_sampling_gradient_reaches_only_the_masker():
    model = tiny_model(seed=3).train()
    images = fashion()[:4]
    masker = AdaMAEMasker(in_dim=32)
    result = masker(4, GRID, generator=torch.Generator().manual_seed(0), images=images, model=model)
    assert result.extras["log_probs"].requires_grad and not result.mask.requires_grad
    out = model(images, mask=result.mask)
    patch_loss = (out.pred - out.target).square().mean(-1).detach()
    aux = masker.aux_losses(mask=result.mask, patch_loss=patch_loss, extras=result.extras)
    aux["sampling"].backward()
    assert all(p.grad is None for p in model.parameters())
    grads = [p.grad for p in masker.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_visible_patches_follow_the_learned_distribution():
    """With the sampler pushed towards a few patches, those are (almost) always visible."""
    model = tiny_model(seed=3)
    images = fashion()[:32]
    masker = AdaMAEMasker(in_dim=32)
    favoured = torch.tensor([0, 15, 100, 195])
    with torch.no_grad():
        masker.head.weight.zero_()
        masker.head.bias.zero_()
    uniform = draw(masker, 32, images=images, model=model)
    assert abs(float((~uniform).float().mean()) - 0.25) < 1e-6
    assert 0.1 < float((~uniform[:, favoured]).float().mean()) < 0.45  # about 1/4 visible under a uniform p
    # a sampler whose logits are +20 on the favoured patches
    original = masker.log_probs

    def biased(tokens, grid):
        bias = torch.zeros(GRID[0] * GRID[1])
        bias[favoured] = 20.0
        return (original(tokens, grid) + bias).log_softmax(-1)

    masker.log_probs = biased
    assert bool((~draw(masker, 32, images=images, model=model)[:, favoured]).all())


def test_reinforce_raises_the_probability_of_badly_reconstructed_hidden_patches():
    model = tiny_model(seed=3)
    images = fashion()[:16]
    torch.manual_seed(0)
    masker = AdaMAEMasker(in_dim=32, loss_weight=1.0)
    opt = torch.optim.Adam(masker.parameters(), lr=1e-2)
    hard = torch.zeros(GRID[0] * GRID[1], dtype=torch.bool)
    hard[:40] = True  # the first rows of the grid are "hard to reconstruct"
    patch_loss = hard.float().expand(16, -1)
    def hard_mass():
        with torch.no_grad():
            tokens = model.encoder.patch_embed(images)
            return float(masker.log_probs(tokens, GRID).exp()[:, hard].sum(1).mean())
    before = hard_mass()
    for step in range(15):
        result = masker(16, GRID, generator=torch.Generator().manual_seed(step), images=images, model=model)
        loss = masker.aux_losses(mask=result.mask, patch_loss=patch_loss, extras=result.extras)["sampling"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert hard_mass() > before + 0.1, (before, hard_mass())


def test_an_encoder_without_patch_embeddings_is_refused_when_the_model_is_built():
    """The sampler reads ``encoder.patch_embed``: a model whose encoder has none is a one-line ConfigError on
    ``masker`` when it is composed (``check_model``, which MaskedModel calls), not a TypeError at the first step."""
    import pytest

    from maskkit import ConfigError, MaskedModel

    model = tiny_model("{name: adamae}")
    assert model.masker.check_model(model) is None
    model.encoder.patch_embed = None  # an encoder of another kind
    with pytest.raises(ConfigError, match=r"^masker: adamae's sampler reads the encoder's patch embeddings "
                                          r"\(encoder.patch_embed\), but TimmViTEncoder has none; use a ViT"):
        MaskedModel(AdaMAEMasker(in_dim=32), model.encoder, model.decoder, model.target, model.loss)


def test_a_patch_embedding_with_another_token_count_is_refused_when_the_model_is_built():
    """The sampler scores one token per patch of the encoder's grid: an encoder whose ``patch_embed`` gives a
    different number (a coarser stride, say) is refused when the model is composed, naming both counts, rather
    than at the first step."""
    import pytest

    from maskkit import ConfigError, MaskedModel

    class Coarse(torch.nn.Module):  # twice the encoder's patch size: a quarter of its tokens
        def __init__(self, in_chans: int, dim: int, patch: int):
            super().__init__()
            self.proj = torch.nn.Conv2d(in_chans, dim, kernel_size=2 * patch, stride=2 * patch)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)  # [B, N / 4, D]

    model = tiny_model("{name: adamae}")
    enc = model.encoder
    enc.patch_embed = Coarse(enc.in_chans, 32, enc.patch_size[0])
    grid = f"{GRID[0]}x{GRID[1]}"
    with pytest.raises(ConfigError, match=rf"^masker: adamae samples one token per patch, but the encoder's "
                                          rf"patch_embed gives {GRID[0] * GRID[1] // 4} tokens for its {grid} grid"):
        MaskedModel(AdaMAEMasker(in_dim=32), enc, model.decoder, model.target, model.loss)
