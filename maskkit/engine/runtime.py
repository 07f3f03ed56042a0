"""What every training loop of the engine (pretraining and fine-tuning) needs about its process and its run:
the device and autocast dtype, the per-rank seed of the global generators, the step arithmetic of its
batches, the record written into a run folder and its checkpoints, and the guard that stops a diverged run
before it writes a checkpoint (:class:`DivergenceGuard`)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import attrs
import torch

from maskkit._validators import check_device
from maskkit.data.loading import GlobalBatchSampler
from maskkit.engine.checkpoint import non_finite
from maskkit.engine.distributed import DistContext
from maskkit.errors import ConfigError, TrainingError
from maskkit.registry import Registry


def runtime_seed(seed: int, rank: int) -> int:
    """The seed of the global generators after the model is built: one stream per rank."""
    return (seed * 1_000_003 + (rank + 1) * 104_729 + 29) % (2**63 - 1)


def pick_device(spec: str, dist: DistContext | None = None, *, key: str = "train.device",
                file: str | None = None) -> torch.device:
    """``auto``: CUDA when present (this rank's local GPU: ``LOCAL_RANK`` under torchrun), else CPU. A device
    string torch does not know, or a CUDA device on a machine without one, is a one-line :class:`ConfigError`
    on ``key`` (of ``file``)."""
    check_device(spec, key, file)
    if spec != "auto" and torch.device(spec).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(key, f"{spec} was asked for, but torch sees no CUDA device here (use auto or cpu)",
                          file=file)
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


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` setting: bf16 when asked for, or by ``auto`` on CUDA; else None
    (fp32)."""
    return torch.bfloat16 if precision == "bf16" or (precision == "auto" and device.type == "cuda") else None


def write_run_record(run_dir: Path, recipe_text: str, registry: Registry) -> None:
    """What a run folder says about its run: ``recipe.yaml`` (the resolved recipe) and ``versions.json``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(recipe_text)
    (run_dir / "versions.json").write_text(json.dumps(versions(registry), indent=2) + "\n")


@attrs.frozen
class StepPlan:
    """A training session's arithmetic: the batch of one micro-step over all processes, optimizer steps per
    epoch and in all, images per optimizer step, the peak learning rate and the warm-up in steps."""

    global_batch: int
    steps_per_epoch: int
    total_steps: int
    effective_batch: int
    base_lr: float
    warmup_steps: int


def plan_steps(cfg: Any, num_samples: int, dist: DistContext, *, data_seed: int, section: str,
               file: str | None) -> tuple[GlobalBatchSampler, StepPlan]:
    """The sampler and :class:`StepPlan` of a ``train``/``finetune`` section ``cfg`` (``batch_size`` per process,
    ``accum_steps``, ``epochs``, ``max_steps``, ``lr`` or ``base_lr`` per 256 images, ``warmup_epochs``) over
    ``num_samples`` images. Too few images for one optimizer step is a one-line error on
    ``SECTION.batch_size``."""
    global_batch = cfg.batch_size * dist.world_size
    micro_per_epoch = num_samples // global_batch  # the sampler drops an incomplete last batch
    if micro_per_epoch < cfg.accum_steps:
        raise ConfigError(f"{section}.batch_size", f"{num_samples} training images make {micro_per_epoch} batches "
                          f"of {global_batch}, fewer than accum_steps={cfg.accum_steps}", file=file)
    steps_per_epoch = micro_per_epoch // cfg.accum_steps
    # an epoch of whole optimizer steps: a step never mixes two epochs' batches, so a resumed run (which starts
    # at its step's epoch and batch) draws exactly what the uninterrupted run drew
    sampler = GlobalBatchSampler(num_samples, global_batch, seed=data_seed, rank=dist.rank,
                                 world_size=dist.world_size, max_batches=steps_per_epoch * cfg.accum_steps)
    effective_batch = global_batch * cfg.accum_steps
    return sampler, StepPlan(
        global_batch=global_batch, steps_per_epoch=steps_per_epoch,
        total_steps=cfg.max_steps or cfg.epochs * steps_per_epoch, effective_batch=effective_batch,
        base_lr=cfg.lr if cfg.lr is not None else cfg.base_lr * effective_batch / 256,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch))


def last_good(path: Path, saved_step: int | None) -> str:
    """What a stopped run says about its checkpoint ``path``: the last good one (``saved_step``, the step this
    session saved or resumed from) or none."""
    if saved_step is not None and path.exists():
        return f"the last good checkpoint is {path} (step {saved_step})"
    return "no checkpoint was written"


class DivergenceGuard:
    """Stops a run that diverged, naming the first bad step, and keeps a non-finite checkpoint from being written.

    :meth:`track` notes, on the device (no synchronisation per step), the first step whose loss is not finite;
    :meth:`check_loss` (at log and checkpoint steps) raises :class:`~maskkit.errors.TrainingError` once any rank
    has one; :meth:`check_state` (before a checkpoint is written) raises it when a weight or optimizer state is
    not finite although the loss was. Both are collectives: every rank calls them at the same steps. ``section``
    (``train`` or ``finetune``) names the recipe keys the message suggests (``SECTION.lr``, ``SECTION.clip_grad``).
    """

    def __init__(self, dist: DistContext, device: torch.device, section: str):
        self.dist = dist
        self.section = section
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # -1: every loss finite so far

    def track(self, step: int, loss: torch.Tensor) -> None:
        """Note ``step`` (0-based) when ``loss`` (a 0-d tensor) is not finite and no earlier step was."""
        bad = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step), self.first_bad)

    def check_loss(self, last_good: str) -> None:
        """Raise :class:`~maskkit.errors.TrainingError` ``non-finite loss at step N (0-based); stopping,
        <last_good>`` when a rank has seen one (``last_good``: where the last good checkpoint is)."""
        bad_step = int(self.dist.max(self.first_bad))
        if bad_step >= 0:
            raise TrainingError(f"non-finite loss at step {bad_step} (0-based); stopping, {last_good}")

    def check_state(self, step: int, tensors: Any, last_good: str) -> None:
        """Raise :class:`~maskkit.errors.TrainingError` when ``tensors`` (a nested dict/list of what the checkpoint
        of ``step`` would hold: weights, optimizer state; gathered on the main process, ``None`` on the others)
        holds a NaN or an inf: the checkpoint is not written, the previous one (``last_good``) stays."""
        bad = non_finite(tensors) if tensors is not None else []
        if int(self.dist.max(torch.tensor(len(bad), device=self.first_bad.device))) > 0:
            raise TrainingError(f"non-finite weights after step {step} ({len(bad)} tensor(s), e.g. "
                                f"{', '.join(bad[:3]) or 'on another rank'}) although the loss was finite; not "
                                f"saved; {last_good}; lower {self.section}.lr or set {self.section}.clip_grad")
