"""The wiring arguments are written once (builder.WIRING): the plugin docs list exactly them, and the builder
passes exactly them."""

import inspect
import re

import pytest
import torch
from helpers import tiny_tree

import maskkit
from maskkit import hookspecs
from maskkit.builder import WIRING, build_model
from maskkit.recipe import Recipe


def documented(doc: str) -> set[str]:
    """The ``names`` of the paragraph that starts "The builder passes the wiring arguments"."""
    paragraph = next(p for p in inspect.cleandoc(doc).split("\n\n") if p.startswith("The builder passes the wiring"))
    return set(re.findall(r"``(\w+)``", paragraph))


@pytest.mark.parametrize("kind, doc", [("masker", maskkit.Masker.__doc__), ("decoder", maskkit.Decoder.__doc__),
                                       ("target", maskkit.Target.__doc__),
                                       ("dataset", hookspecs.maskkit_add_datasets.__doc__)])
def test_docs_list_exactly_the_wiring(kind, doc):
    names = documented(doc) if kind != "dataset" else {"split"} & set(re.findall(r"``(\w+)``", doc))
    assert names == set(WIRING[kind])


class Recorder:
    """Decoder and target factories that accept every wiring argument and record what they get."""

    def __init__(self):
        self.got = {}

    @maskkit.hookimpl
    def maskkit_add_maskers(self):
        def recording_masker(in_dim, grid, ratio: float = 0.75):
            self.got["masker"] = set(locals()) - {"self", "ratio"}
            from maskkit.builtin.masking import RandomMasker

            return RandomMasker(ratio=ratio)

        return {"recording": recording_masker}

    @maskkit.hookimpl
    def maskkit_add_decoders(self):
        def recording_decoder(in_dim, out_dim, grid, num_prefix_tokens, patch_size, in_chans, img_size, sparse):
            self.got["decoder"] = set(locals()) - {"self"}
            from maskkit.builtin.decoder import MAEDecoder

            return MAEDecoder(in_dim=in_dim, grid=grid, out_dim=out_dim, num_prefix_tokens=num_prefix_tokens,
                              embed_dim=16, depth=1, num_heads=2)

        return {"recording": recording_decoder}

    @maskkit.hookimpl
    def maskkit_add_targets(self):
        def recording_target(patch_size, in_chans, grid, img_size, encoder):
            self.got["target"] = set(locals()) - {"self"}
            from maskkit.builtin.targets import pixels

            return pixels(patch_size, in_chans)

        return {"recording": recording_target}


def test_the_builder_passes_exactly_the_wiring():
    recorder = Recorder()
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"recorder": recorder})
    tree = tiny_tree(masker={"name": "recording"}, decoder={"name": "recording"}, target={"name": "recording"})
    model = build_model(Recipe(tree), registry)
    assert recorder.got == {kind: set(WIRING[kind]) for kind in ("masker", "decoder", "target")}
    assert model(torch.randn(2, 1, 28, 28), generator=torch.Generator().manual_seed(0)).loss.isfinite()
    with pytest.raises(maskkit.ConfigError, match="masker.in_dim: is set by the builder"):
        build_model(Recipe(tiny_tree(masker={"name": "recording", "in_dim": 64}), "r.yaml"), registry)
    with pytest.raises(maskkit.ConfigError, match="decoder.img_size: is set by the builder"):
        build_model(Recipe(tiny_tree(decoder={"name": "recording", "img_size": 28}), "r.yaml"), registry)
