"""The training loop: one recipe in, a run folder out (recipe, versions, metrics, checkpoints, evaluation).

Reproducibility contract: the data order is a permutation drawn from ``(data_seed, epoch)``, each sample's
augmentation is seeded by ``(data_seed, epoch, index)`` (``data_seed`` defaults to ``seed``), and each
micro-step's masks are drawn for the *global* batch from a generator seeded by ``(seed, micro_step)``; every
rank keeps its slice. So a run resumed from a checkpoint continues exactly, and results do not depend on how
the global batch is split over processes. The one exception is randomness inside the model (dropout,
drop-path): it draws from the global generators, seeded per rank by ``(seed, rank)`` after the parameters are
initialised (the same on every rank), and checkpoints keep every rank's state, so resume is still exact.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from maskkit.builder import build_dataset, build_model
from maskkit.data.loading import AugmentedDataset, GlobalBatchSampler, make_loader
from maskkit.data.transforms import TrainTransform
from maskkit.engine import checkpoint as ckpt
from maskkit.engine.distributed import (DistContext, distributed_config, gather_state, is_sharded, load_state,
                                        no_grad_sync, parallelize, unsharded_copy)
from maskkit.engine.optim import lr_at, make_optimizer, set_lr
from maskkit.errors import CheckpointError, ConfigError, TrainingError
from maskkit.recipe import Recipe
from maskkit.registry import Registry, default_registry

CHECKPOINT_NAME = "checkpoint.pth"
# Sections that may change between a checkpoint and its resumption without breaking exactness.
_RESUMABLE_CHANGES = {("train", "epochs"), ("train", "max_steps"), ("train", "log_every"), ("train", "ckpt_every"),
                      ("train", "num_workers"), ("train", "device"),
                      ("distributed", "strategy")}  # checkpoints are unsharded: either strategy resumes either


def mask_seed(seed: int, micro_step: int) -> int:
    """The seed of the mask generator of one micro-step (a fixed mix, the same on every rank)."""
    return (seed * 1_000_003 + micro_step * 7_919 + 17) % (2**63 - 1)


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


def _diff_keys(old: Any, new: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = set(old) | set(new)
        return [d for k in sorted(keys, key=str) for d in _diff_keys(old.get(k), new.get(k), prefix + (k,))]
    return [] if old == new else [prefix]


@attrs.define
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    wall_time: float
    images_per_s: float
    checkpoint: Path
    trained_steps: int  # steps this call trained (0 when resumed at the last step)


class Trainer:
    """Runs a recipe. ``Trainer(recipe, out_dir).fit()``; ``resume=`` a checkpoint path continues a run.

    Plugins observe and act through the engine hooks (``maskkit_step_end`` and friends), called with
    ``trainer=self``; public attributes they may read: ``recipe``, ``model``, ``optimizer``, ``step``,
    ``total_steps``, ``steps_per_epoch``, ``device``, ``dist``, ``run_dir``.
    """

    def __init__(self, recipe: Recipe, out_dir: str | Path, *, registry: Registry | None = None,
                 resume: str | Path | None = None, console: Console | None = None, progress: bool = True):
        self.recipe = recipe
        self.cfg = recipe.train
        self.registry = registry or default_registry()
        self.console = console or Console(stderr=True)
        self.show_progress = progress
        self.run_dir = Path(out_dir)
        self.resume_path = Path(resume) if resume else None
        self.hook = self.registry.plugin_manager.hook
        self.step = 0
        self.model: torch.nn.Module | None = None

    # -- set-up ---------------------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg, recipe = self.cfg, self.recipe
        self.device = pick_device(cfg.device)
        self.dist = DistContext.from_env(self.device.type)
        self.dist_cfg = distributed_config(recipe)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        resume_state = ckpt.load_training_checkpoint(self.resume_path) if self.resume_path else None
        if resume_state is not None:
            self._check_resumable(resume_state)
        torch.manual_seed(recipe.seed)  # parameter init is a function of the seed (the same on every rank)
        self.model = build_model(recipe, self.registry).to(self.device)
        # dropout and drop-path draw from the global generators: a stream per rank, so that ranks do not drop
        # the same paths for the samples at the same place of their slices
        torch.manual_seed(runtime_seed(recipe.seed, self.dist.rank))
        self.forward_model: torch.nn.Module = self.model
        if self.dist.enabled:  # DDP or FSDP, before the optimizer: FSDP swaps the parameters for sharded ones
            self.forward_model = parallelize(self.model, self.dist, self.dist_cfg, self.device)
        self.grid = self.model.grid
        train_set = build_dataset(recipe, "train", self.registry)
        aug = recipe.augment
        transform = TrainTransform(self.model.encoder.img_size, scale=aug.scale, ratio=aug.ratio, hflip=aug.hflip,
                                   mean=train_set.mean, std=train_set.std)
        self.train_set = AugmentedDataset(train_set, transform, recipe.data_seed)
        self.global_batch = cfg.batch_size * self.dist.world_size
        self.sampler = GlobalBatchSampler(len(train_set), self.global_batch, seed=recipe.data_seed,
                                          rank=self.dist.rank, world_size=self.dist.world_size)
        micro_per_epoch = len(self.sampler)
        if micro_per_epoch < cfg.accum_steps:
            raise ConfigError("train.batch_size", f"{len(train_set)} training images make {micro_per_epoch} batches "
                              f"of {self.global_batch}, fewer than accum_steps={cfg.accum_steps}", file=recipe.file)
        self.steps_per_epoch = micro_per_epoch // cfg.accum_steps
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.effective_batch = self.global_batch * cfg.accum_steps
        self.base_lr = cfg.lr if cfg.lr is not None else cfg.base_lr * self.effective_batch / 256
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.optimizer = make_optimizer(self.model, lr=self.base_lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
                                        device=self.device)
        self.amp_dtype = torch.bfloat16 if (cfg.precision == "bf16" or (cfg.precision == "auto" and
                                                                        self.device.type == "cuda")) else None
        if resume_state is not None:
            load_state(self.model, self.optimizer, resume_state["model"], resume_state["optimizer"])
            self.step = int(resume_state["step"])
            ckpt.set_rng_state(resume_state["rng"], self.dist.rank, self.device)
        if cfg.compile:  # component by component: dynamo cannot build the attrs-frozen MaskedOutput of forward
            for component in self.model.children():
                component.compile()
        self.loader = make_loader(self.train_set, self.sampler, num_workers=cfg.num_workers,
                                  pin_memory=self.device.type == "cuda")
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "recipe.yaml").write_text(recipe.dump())
            (self.run_dir / "versions.json").write_text(json.dumps(versions(self.registry), indent=2) + "\n")

    def _check_resumable(self, state: dict) -> None:
        saved_world = state.get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise CheckpointError(f"{self.resume_path}: written by {saved_world} process(es), resumed with "
                                  f"{self.dist.world_size}; the batches of a run depend on the world size, so "
                                  "resume with the same number of processes")
        old = state.get("recipe") or {}
        changed = [k for k in _diff_keys(old, self.recipe.tree) if k[:2] not in _RESUMABLE_CHANGES]
        if changed:
            keys = ", ".join(".".join(map(str, k)) for k in changed[:4])
            raise CheckpointError(f"{self.resume_path}: the recipe differs from the checkpoint's in {keys}; "
                                  "a resumed run must use the same recipe")

    # -- the loop -------------------------------------------------------------------------------------------

    def _draw_mask(self, micro_step: int) -> torch.Tensor:
        """This rank's slice of the global batch's masks for ``micro_step``."""
        gen = torch.Generator(device=self.device).manual_seed(mask_seed(self.recipe.seed, micro_step))
        mask = self.model.draw_mask(self.global_batch, gen, self.device)  # [G, N]
        b = self.cfg.batch_size
        return mask[self.dist.rank * b:(self.dist.rank + 1) * b]

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _batches(self):
        """Yield ``(epoch, images, labels)`` micro-batches from the current step on, across epochs."""
        accum = self.cfg.accum_steps
        epoch, within = divmod(self.step, self.steps_per_epoch)
        start = within * accum
        while True:
            self.sampler.set_epoch(epoch)
            self.train_set.set_epoch(epoch)
            self.sampler.set_start(start)
            for images, labels in self.loader:
                yield epoch, images, labels
            start = 0
            epoch += 1

    def fit(self) -> TrainResult:
        self._setup()
        cfg = self.cfg
        model = self.model
        self.hook.maskkit_train_start(trainer=self, model=model)
        metrics_file = (self.run_dir / "metrics.jsonl").open("a") if self.dist.is_main else None
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        window_loss = torch.zeros((), device=self.device)
        window_steps, window_start = 0, time.perf_counter()
        start_time, start_step = time.perf_counter(), self.step
        last_loss = float("nan")
        checkpoint_path = self.run_dir / CHECKPOINT_NAME
        progress = self._progress()
        task = progress.add_task("train", total=self.total_steps, completed=self.step, loss=float("nan"),
                                 lr=0.0, ips=0.0)
        batches = self._batches()
        model.train()
        try:
            with progress:
                while self.step < self.total_steps:
                    lr = lr_at(self.step, base=self.base_lr, total_steps=self.total_steps,
                               warmup_steps=self.warmup_steps, min_lr=cfg.min_lr)
                    set_lr(self.optimizer, lr)
                    self.hook.maskkit_step_start(trainer=self, model=model, step=self.step)
                    num_visible = model.num_visible()  # after the hook, which may change the masker
                    step_loss = torch.zeros((), device=self.device)
                    for micro in range(cfg.accum_steps):
                        epoch, images, _ = next(batches)
                        images = images.to(self.device, non_blocking=True)
                        mask = self._draw_mask(self.step * cfg.accum_steps + micro)
                        sync = (self.dist.enabled and micro < cfg.accum_steps - 1)
                        with (no_grad_sync(self.forward_model) if sync else contextlib.nullcontext()), self._autocast():
                            out = self.forward_model(images, mask=mask, num_visible=num_visible)
                        (out.loss / cfg.accum_steps).backward()
                        step_loss += out.loss.detach().float() / cfg.accum_steps
                    if cfg.clip_grad:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    bad = ~torch.isfinite(step_loss) & (first_bad < 0)
                    first_bad = torch.where(bad, torch.full_like(first_bad, self.step), first_bad)
                    self.hook.maskkit_step_end(trainer=self, model=model, step=self.step, loss=step_loss)
                    window_loss += step_loss
                    window_steps += 1
                    self.step += 1
                    finished_epoch = self.step % self.steps_per_epoch == 0
                    is_last = self.step == self.total_steps
                    must_ckpt = is_last or (cfg.ckpt_every and self.step % cfg.ckpt_every == 0)
                    if must_ckpt:
                        self._check_finite(first_bad, checkpoint_path)  # never checkpoint a diverged model
                    if self.step % cfg.log_every == 0 or is_last:
                        self._check_finite(first_bad, checkpoint_path)
                        now = time.perf_counter()
                        global_step_loss = float(self.dist.mean(step_loss))
                        mean_loss = float(self.dist.mean(window_loss)) / window_steps
                        ips = window_steps * self.effective_batch / max(now - window_start, 1e-9)
                        last_loss = global_step_loss
                        record = {"step": self.step, "epoch": self.step / self.steps_per_epoch,
                                  "loss": global_step_loss, "loss_avg": mean_loss, "lr": lr,
                                  "images_per_s": ips, "time": now - start_time}
                        if metrics_file:
                            metrics_file.write(json.dumps(record) + "\n")
                            metrics_file.flush()
                        progress.update(task, completed=self.step, loss=global_step_loss, lr=lr, ips=ips)
                        window_loss.zero_()
                        window_steps, window_start = 0, now
                    if finished_epoch:
                        self.hook.maskkit_epoch_end(trainer=self, model=model, epoch=self.step // self.steps_per_epoch - 1)
                    if must_ckpt:
                        self.save_checkpoint(checkpoint_path)
        finally:
            if metrics_file:
                metrics_file.close()
        if is_sharded(model):  # evaluation, export and plugins get the whole model (collective)
            self.model = model = unsharded_copy(model, lambda: build_model(self.recipe, self.registry).to(self.device))
        self.hook.maskkit_train_end(trainer=self, model=model, run_dir=self.run_dir)
        wall = time.perf_counter() - start_time
        done = self.step - start_step
        return TrainResult(self.run_dir, self.step, last_loss, wall, done * self.effective_batch / max(wall, 1e-9),
                           checkpoint_path, done)

    def _check_finite(self, first_bad: torch.Tensor, checkpoint_path: Path) -> None:
        bad_step = int(self.dist.max(first_bad))
        if bad_step >= 0:
            last = (f"the last good checkpoint is {checkpoint_path}" if checkpoint_path.exists()
                    else "no checkpoint was written")
            raise TrainingError(f"non-finite loss at step {bad_step} (0-based); stopping, {last}")

    def save_checkpoint(self, path: Path) -> None:
        gathered = gather_state(self.model, self.optimizer, self.dist)  # whole state; collective under FSDP
        rng = self.dist.gather_objects(ckpt.rng_state(self.device))  # every rank's (collective)
        if self.dist.is_main:
            state = {"format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION, "step": self.step,
                     "model": gathered[0], "optimizer": gathered[1], "world_size": self.dist.world_size,
                     "rng": rng, "recipe": self.recipe.tree, "versions": versions(self.registry)}
            ckpt.save_atomic(state, path)
            self.hook.maskkit_checkpoint_saved(trainer=self, path=path, step=self.step)
        self.dist.barrier()

    def _progress(self) -> Progress:
        return Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[ips]:.0f} img/s"),
                        TimeRemainingColumn(), console=self.console,
                        disable=not (self.show_progress and getattr(self, "dist", None) is not None and self.dist.is_main))
