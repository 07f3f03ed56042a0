"""What every training loop of the engine needs about its process: the device, the per-rank seed of the
global generators, and the versions written into a run folder and its checkpoints."""

from __future__ import annotations

import os
import platform

import torch

from maskkit.engine.distributed import DistContext
from maskkit.registry import Registry


def runtime_seed(seed: int, rank: int) -> int:
    """The seed of the global generators after the model is built: one stream per rank."""
    return (seed * 1_000_003 + (rank + 1) * 104_729 + 29) % (2**63 - 1)


def pick_device(spec: str, dist: DistContext | None = None) -> torch.device:
    """``auto``: CUDA when present (this rank's local GPU: ``LOCAL_RANK`` under torchrun), else CPU."""
    if spec == "auto":
        if torch.cuda.is_available():
            if dist is not None:
                return torch.device("cuda", dist.local_rank)
            local = os.environ.get("LOCAL_RANK")
            return torch.device("cuda", int(local) if local is not None else torch.cuda.current_device())
        return torch.device("cpu")
    return torch.device(spec)


def versions(registry: Registry) -> dict[str, str]:
    import timm

    from maskkit import __version__

    return {"maskkit": __version__, "torch": str(torch.__version__), "timm": str(timm.__version__),
            "python": platform.python_version(), **{f"plugin:{k}": v for k, v in registry.versions().items()}}
