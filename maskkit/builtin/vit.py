"""Any timm Vision Transformer as a maskkit encoder, run on the visible patches only (MAE's sparse design).

The timm model is built through ``timm.create_model`` (never with pretrained weights: nothing downloads) and
used through its standard attributes (``patch_embed``, ``cls_token``, ``reg_token``, ``pos_embed``, ``norm_pre``,
``blocks``, ``norm``), the names timm keeps stable for checkpoint compatibility. Its state-dict keys are
therefore timm's, which are also the official MAE encoder's.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any, Callable

import timm
import torch
from timm.models.vision_transformer import Attention
from torch import nn

from maskkit.errors import ConfigError, expected
from maskkit.interfaces import Encoder
from maskkit.layers import mae_init_
from maskkit.patches import sincos_pos_embed_2d, to_2tuple, visible_indices


class TimmViTEncoder(Encoder):
    """A timm ViT that encodes the visible patches only (``sparse=True``), or all of them with a learned mask
    token in place of the hidden ones (``dense=True``, the paper's baseline and SimMIM's ViT setting).

    ``model_name`` is any timm ViT (``vit_base_patch16_224``...); ``img_size``, ``patch_size`` and
    ``in_chans`` override its defaults; further keyword arguments (``depth``, ``embed_dim``, ``num_heads``,
    ``drop_path_rate``...) go to ``timm.create_model``. ``sincos_pos_embed`` fixes the position embedding to
    MAE's 2-D sin-cos (frozen); ``mae_init`` applies the official initialisation. ``norm_eps`` is the layer
    norms' eps (timm's and MAE's 1e-6; transformers' ViTMAE default is 1e-12, kept by converted checkpoints).
    """

    MASKKIT_ARGUMENTS = ("sincos_pos_embed", "mae_init", "dense", "norm_eps")  # the rest go to timm.create_model
    PRETRAINING_ONLY = ("encoder_mask_token",)  # a dense encoder's mask token: timm's ViT has none

    def __init__(
        self,
        model_name: str,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        sincos_pos_embed: bool = True,
        mae_init: bool = True,
        dense: bool = False,
        norm_eps: float = 1e-6,
        **timm_kwargs: Any,
    ):
        super().__init__()
        if norm_eps != 1e-6:  # timm's ViT default is LayerNorm(eps=1e-6)
            timm_kwargs["norm_layer"] = partial(nn.LayerNorm, eps=float(norm_eps))
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        for axis, (size, patch) in enumerate(zip(self.img_size, self.patch_size)):
            if patch <= 0 or size % patch:
                raise ConfigError("img_size", expected(f"a multiple of patch_size {patch} (axis {axis})", size))
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ConfigError("in_chans", expected("a positive int", in_chans))
        try:
            vit = timm.create_model(model_name, pretrained=False, num_classes=0, global_pool="",
                                    img_size=self.img_size, patch_size=self.patch_size, in_chans=in_chans,
                                    **timm_kwargs)
        except TypeError as exc:
            raise ConfigError("", f"timm rejected the arguments of {model_name}: {exc}") from None
        self.model_name = model_name
        self.in_chans = in_chans
        self.sparse = not dense
        self.embed_dim = vit.embed_dim
        self.grid = tuple(vit.patch_embed.grid_size)
        self.num_prefix_tokens = vit.num_prefix_tokens
        self._pos_covers_prefix = not getattr(vit, "no_embed_class", False)
        # Keep timm's attribute names at our top level, so state-dict keys are the official ones.
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.reg_token = getattr(vit, "reg_token", None)
        self.pos_embed = vit.pos_embed
        self.norm_pre = vit.norm_pre
        self.blocks = vit.blocks
        self.norm = vit.norm
        if dense:
            self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        if sincos_pos_embed:
            prefix = self.num_prefix_tokens if self._pos_covers_prefix else 0
            self.pos_embed.requires_grad_(False)
            self.pos_embed.data.copy_(sincos_pos_embed_2d(self.embed_dim, self.grid, prefix)[None])
        if mae_init:
            self._mae_init()

    def _mae_init(self) -> None:
        self.blocks.apply(mae_init_)
        self.norm.apply(mae_init_)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear layer, like the official code
        for token in (self.cls_token, self.reg_token, getattr(self, "encoder_mask_token", None)):
            if token is not None:
                nn.init.normal_(token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "reg_token", "pos_embed", "encoder_mask_token"}

    def _prefix(self, batch_size: int) -> torch.Tensor:
        """The prefix tokens (cls, registers) with their position embedding: ``[B, P, D]``."""
        tokens = [t for t in (self.cls_token, self.reg_token) if t is not None]
        if not tokens:
            return self.pos_embed.new_zeros(batch_size, 0, self.embed_dim)
        prefix = torch.cat(tokens, dim=1)
        if self._pos_covers_prefix:
            prefix = prefix + self.pos_embed[:, : self.num_prefix_tokens]
        return prefix.expand(batch_size, -1, -1)

    def _patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, N, D]``: patch embedding plus position embedding."""
        x = self.patch_embed(images)
        offset = self.num_prefix_tokens if self._pos_covers_prefix else 0
        return x + self.pos_embed[:, offset:]

    def _blocks(self, patches: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self._prefix(patches.shape[0]), patches], dim=1)  # [B, P + n, D]
        x = self.norm_pre(x)
        x = self.blocks(x)
        return self.norm(x)

    def forward(self, images, mask, *, num_visible=None):
        x = self._patch_tokens(images)  # [B, N, D]
        if self.sparse:
            ids_keep = visible_indices(mask, num_visible)  # [B, N_vis]
            x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))  # [B, N_vis, D]
        else:
            x = torch.where(mask[..., None], self.encoder_mask_token.to(x.dtype), x)
        return self._blocks(x)

    def forward_features(self, images):
        return self._blocks(self._patch_tokens(images))

    @torch.no_grad()
    def prefix_attention(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, heads, N]``: the [CLS] row of the last block's softmax attention, over the
        patches, in float32, without gradients, in the encoder's current mode (train/eval).

        timm's fused attention never forms the weights, so they are recomputed from the queries and keys the
        last block's ``attn`` forms during one :meth:`forward_features`: the outputs of its ``q_norm`` and
        ``k_norm`` (``[B, heads, T, head_dim]``, T = P + N; ``Identity`` without qk-norm), recorded by forward
        hooks, times timm's ``scale``. Nothing runs outside the block's own forward, so the weights are read
        while the block's parameters are there (FSDP2 reshards a block after its forward). That forward runs
        eagerly (:func:`_eager`): forward hooks do not fire inside ``torch.compile``'d code (``train.compile``
        with ``train.compile_scope: blocks`` compiles each block alone, a teacher's too), and the eager forward
        computes what the uncompiled model does. The [CLS] token is the first prefix token (timm and
        :meth:`_prefix` put it before the registers); an encoder without one (``class_token=False``,
        registers only or none) raises ``NotImplementedError`` (:meth:`prefix_attention_unavailable` says why
        without running anything)."""
        reason = self.prefix_attention_unavailable()
        if reason is not None:
            raise NotImplementedError(reason)
        attn = self.blocks[-1].attn
        captured: dict[str, torch.Tensor] = {}

        def keep(name: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
            def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                captured[name] = output[:, :, :1] if name == "q" else output  # q: the [CLS] row only
            return hook

        handles = [attn.q_norm.register_forward_hook(keep("q")), attn.k_norm.register_forward_hook(keep("k"))]
        try:
            with _eager():
                self.forward_features(images)
        finally:
            for handle in handles:
                handle.remove()
        if "q" not in captured or "k" not in captured:
            why = ("this torch has no torch.compiler.set_stance to run a torch.compile'd block eagerly: set "
                   "train.compile: false" if not hasattr(torch.compiler, "set_stance") else
                   "something other than torch.compile runs the block without calling its submodules")
            raise RuntimeError(f"{self.model_name}: no [CLS] attention was recorded, the last block's q_norm/k_norm "
                               f"forward hooks did not fire ({why})")
        q, k = captured["q"], captured["k"]  # [B, heads, 1, hd], [B, heads, T, hd]
        logits = (q.float() * attn.scale) @ k.float().transpose(-2, -1)  # [B, heads, 1, T]
        return logits.softmax(dim=-1)[:, :, 0, self.num_prefix_tokens:]  # [B, heads, N]

    def prefix_attention_unavailable(self) -> str | None:
        """Why :meth:`prefix_attention` cannot give the [CLS] attention (no [CLS] token, or a last block whose
        attention is not timm's ``Attention``), or ``None`` when it can."""
        if self.cls_token is None:
            return f"{self.model_name} has no [CLS] token (encoder.class_token: false)"
        attn = getattr(self.blocks[-1], "attn", None)
        if not isinstance(attn, Attention) or type(attn).forward is not Attention.forward:
            return (f"{self.model_name}: the last block's attention is {type(attn).__name__}, not timm's Attention, "
                    "so its [CLS] attention cannot be read")
        return None

    def export_arguments(self, recipe_arguments: dict) -> dict:
        """The recipe's arguments that are timm's: ``timm.create_model(model_name, **these)`` builds the
        exported backbone (its size, patch, channels...)."""
        return {k: v for k, v in recipe_arguments.items() if k not in ("name", *self.MASKKIT_ARGUMENTS)}

    def extra_repr(self) -> str:
        mode = "sparse" if self.sparse else "dense"
        return f"{self.model_name}, img_size={self.img_size}, patch_size={self.patch_size}, {mode}"


def _eager() -> contextlib.AbstractContextManager:
    """A context in which ``torch.compile``'d modules run their eager forward (``force_eager`` stance), so that
    forward hooks fire; a null context on a torch without ``torch.compiler.set_stance`` (before 2.6)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def timm_vit_factories() -> dict[str, Any]:
    """``{timm ViT name: factory}`` for every ViT timm knows (``vit_*``); nothing is built or downloaded."""
    return {name: partial(TimmViTEncoder, name) for name in timm.list_models("vit_*")}
