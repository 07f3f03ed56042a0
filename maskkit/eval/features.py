"""Frozen-feature extraction: run an encoder over a loader and pool its tokens into one vector per image."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from maskkit.toolkit import eval_mode

POOLS = ("mean", "cls")


def pool_tokens(tokens: Tensor, num_prefix_tokens: int, pool: str) -> Tensor:
    """Pool encoder tokens into one vector per image.

    Args:
        tokens: ``[B, P+N, D]``; the first ``P = num_prefix_tokens`` are prefix (cls, register) tokens.
        num_prefix_tokens: ``P`` (may be 0).
        pool: ``"mean"`` (mean of the N patch tokens, prefix excluded) or ``"cls"`` (token 0).

    Returns:
        ``[B, D]`` float32 (the mean is accumulated in float32 whatever the dtype of ``tokens``).
    """
    if tokens.ndim != 3:
        raise ValueError(f"encoder tokens: expected a [B, P+N, D] tensor, got shape {tuple(tokens.shape)}")
    if pool == "mean":
        if tokens.shape[1] <= num_prefix_tokens:
            raise ValueError(
                f"pool='mean': expected patch tokens after the {num_prefix_tokens} prefix token(s), "
                f"got {tokens.shape[1]} token(s) in all"
            )
        return tokens[:, num_prefix_tokens:].mean(dim=1, dtype=torch.float32)
    if pool == "cls":
        if num_prefix_tokens < 1:
            raise ValueError("pool='cls': the encoder has no prefix token (num_prefix_tokens == 0); use pool='mean'")
        return tokens[:, 0].float()
    raise ValueError(f"pool: expected one of {POOLS}, got {pool!r}")


def extract_features(
    encoder: nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device | str,
    pool: str = "mean",
    amp_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Run ``encoder.forward_features`` over ``loader`` without gradients and pool the tokens.

    The encoder is switched to eval mode for the pass and every submodule gets its previous
    train/eval mode back afterwards (also when the pass raises). Images go to ``device`` with
    non-blocking copies; pooled features come back the same way and are synchronised before return.

    Args:
        encoder: module with ``forward_features(images [B, C, H, W]) -> tokens [B, P+N, D]`` and
            ``num_prefix_tokens`` (``P``; taken as 0 when the attribute is missing).
        loader: iterable of ``(images [B, C, H, W], labels [B])`` batches (extra items are ignored).
        device: where the encoder runs (the encoder is expected to be there already).
        pool: ``"mean"`` (patch tokens, prefix excluded) or ``"cls"`` (first token).
        amp_dtype: autocast dtype (e.g. ``torch.bfloat16``); used only when ``device`` is CUDA,
            ignored on other devices.

    Returns:
        ``(features [M, D] float32 on CPU, labels [M] int64 on CPU)`` in loader order; ``M`` is the
        number of images (``[0, 0]`` and ``[0]`` for an empty loader).
    """
    if pool not in POOLS:
        raise ValueError(f"pool: expected one of {POOLS}, got {pool!r}")
    num_prefix = int(getattr(encoder, "num_prefix_tokens", 0))
    if pool == "cls" and num_prefix < 1:
        raise ValueError("pool='cls': the encoder has no prefix token (num_prefix_tokens == 0); use pool='mean'")
    device = torch.device(device)
    use_amp = amp_dtype is not None and device.type == "cuda"

    feats: list[Tensor] = []
    labels: list[Tensor] = []
    with eval_mode(encoder), torch.no_grad():  # each submodule's own mode restored after
        for batch in loader:
            images, targets = batch[0], batch[1]
            images = images.to(device, non_blocking=True)
            autocast = torch.autocast(device.type, dtype=amp_dtype) if use_amp else contextlib.nullcontext()
            with autocast:
                tokens = encoder.forward_features(images)
            pooled = pool_tokens(tokens, num_prefix, pool)
            # Device->host non_blocking lands in pinned memory; the synchronize below makes it safe to read.
            feats.append(pooled.to("cpu", non_blocking=True))
            labels.append(torch.as_tensor(targets, dtype=torch.int64).reshape(-1).cpu())
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if not feats:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.int64)
    out_feats, out_labels = torch.cat(feats), torch.cat(labels)
    if out_feats.shape[0] != out_labels.shape[0]:
        raise ValueError(f"loader: got {out_feats.shape[0]} images but {out_labels.shape[0]} labels")
    return out_feats, out_labels
