"""Checkpoints: written atomically, plain data and tensors only (``torch.load(weights_only=True)`` reads them).

Layout of a maskkit checkpoint::

    {"format": "maskkit", "format_version": 1, "step": int, "model": state_dict (official MAE key names),
     "optimizer": optimizer state, "world_size": int, "rng": [per rank: {"cpu": ByteTensor, "cuda": ByteTensor}],
     "recipe": dict, "versions": {package: version}}

``rng`` holds every rank's random state (``"cuda"``: the state of that rank's own GPU, when it trains on one),
so dropout and drop-path streams, which differ per rank, continue exactly on resume. Checkpoints of earlier
versions hold one ``{"cpu": ..., "cuda": [one per visible GPU]}``, restored on every rank as it is.

:func:`load_weights` also reads official MAE checkpoints (``{"model": state_dict}``) and encoder-only ones.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskkit.errors import CheckpointError

FORMAT = "maskkit"
FORMAT_VERSION = 1


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, flush to disk, then rename over ``path``.

    A crash mid-write leaves the previous file intact; readers never see a half-written checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | Path) -> dict:
    """Load any checkpoint file safely (``weights_only=True``), with a one-line error when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, foreign objects
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason[:200]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def load_training_checkpoint(path: str | Path) -> dict:
    """A maskkit training checkpoint (for ``--resume``); anything else is refused with a clear message."""
    obj = read_checkpoint(path)
    if obj.get("format") != FORMAT or not isinstance(obj.get("model"), dict) or "step" not in obj:
        raise CheckpointError(f"{path}: not a maskkit training checkpoint (expected keys format='maskkit', "
                              f"model, optimizer, step; found {sorted(obj)[:6]})")
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {obj['format_version']} is newer than this maskkit")
    return obj


def load_weights(model: nn.Module, path: str | Path) -> str:
    """Load weights into a :class:`~maskkit.MaskedModel` from a maskkit checkpoint, an official MAE checkpoint
    (``{"model": ...}``), or an encoder-only one (official or timm names). Returns what was loaded."""
    obj = read_checkpoint(path)
    state = obj.get("model", obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state dict of tensors found")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"{path}: does not fit this model: {str(exc).splitlines()[-1].strip()}") from None
    if result.unexpected_keys:
        raise CheckpointError(f"{path}: keys this model does not have: {result.unexpected_keys[:4]}")
    encoder_keys = set(model.encoder.state_dict())
    missing = set(result.missing_keys)
    if not missing:
        return "full model"
    loaded_encoder = not (missing & encoder_keys)
    if loaded_encoder:
        return "encoder only"
    raise CheckpointError(f"{path}: missing encoder weights, e.g. {sorted(missing & encoder_keys)[:4]}")


def rng_state(device: torch.device | None = None) -> dict:
    """This process's random state: the CPU generator's, and ``device``'s when it is a GPU."""
    state = {"cpu": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(saved: list[dict] | dict, rank: int = 0, device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` gave on rank ``rank`` (``saved``: the list of every rank's states, or one
    earlier-version state, which holds the CPU state and a list of GPU states, restored as it is)."""
    if isinstance(saved, dict):  # format before per-rank states
        torch.set_rng_state(saved["cpu"])
        if isinstance(saved.get("cuda"), list) and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda"])
        return
    if rank >= len(saved):
        raise CheckpointError(f"the checkpoint holds the random state of {len(saved)} rank(s), not of rank {rank}")
    state = saved[rank]
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
