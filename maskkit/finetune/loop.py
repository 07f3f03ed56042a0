"""The fine-tuning loop: a pretrained encoder and a fine-tuning recipe in, a run folder out (``recipe.yaml``,
``versions.json``, ``metrics.jsonl``, ``checkpoint.pth``, ``finetune.json`` with top-1/top-5 on the test split).

The engine's guarantees hold as in :mod:`maskkit.engine.trainer`: the data order and each sample's
augmentation come from ``(data_seed, epoch[, index])``, Mixup from ``(seed, rank, micro_step)``, drop path from the
global generators seeded per rank after the model is built, and checkpoints (atomic, ``weights_only``
readable) keep the model, optimizer, EMA and every rank's random state, so a resumed run continues exactly.
Only finite checkpoints are written: the engine's :class:`~maskkit.engine.runtime.DivergenceGuard` stops a run
whose loss, weights or EMA weights are not finite, naming the step, and the last good checkpoint stays.

Checkpoint layout (a maskkit training checkpoint with ``kind: finetune``)::

    {"format": "maskkit", "format_version": 1, "kind": "finetune", "step": int,
     "model": timm ViT classifier state dict (timm / official MAE fine-tuned names: blocks.*, fc_norm.*, head.*),
     "ema": the EMA classifier's state dict (the keys of "model"; earlier versions prefixed "module.") or None,
     "optimizer": ..., "world_size": int, "rng": [per rank],
     "recipe": the fine-tuning recipe tree, "encoder": the pretraining recipe's encoder section,
     "num_classes": int, "class_names": [str] (the dataset's, when it names them),
     "pretrained": the source it started from, "versions": {...}}
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from rich.console import Console

from maskkit.builder import build_dataset
from maskkit.console import make_console
from maskkit.data.loading import AugmentedDataset, make_loader, stop_workers
from maskkit.data.splits import align_test_classes
from maskkit.data.transforms import EvalTransform
from maskkit.engine import checkpoint as ckpt
from maskkit.engine import run_folder
from maskkit.engine.distributed import (
    DistContext,
    distributed_config,
    gather_state,
    is_sharded,
    load_state,
    no_grad_sync,
    parallelize,
    unsharded_copy,
)
from maskkit.engine.optim import lr_at, set_lr
from maskkit.engine.runtime import (
    DivergenceGuard,
    autocast_dtype,
    last_good,
    pick_device,
    plan_steps,
    runtime_seed,
    versions,
    write_run_record,
)
from maskkit.engine.step_log import StepLog
from maskkit.engine.stopping import SignalStop
from maskkit.errors import CheckpointError, ConfigError
from maskkit.finetune.config import FinetuneRecipe
from maskkit.finetune.data import (
    FinetuneTrainTransform,
    SeededMixup,
    check_train_classes,
    make_criterion,
)
from maskkit.finetune.model import (
    build_classifier,
    check_global_pool,
    freeze_for_partial_finetuning,
    layer_decay_groups,
    load_pretrained_encoder,
)
from maskkit.registry import Registry, default_registry

CHECKPOINT_NAME = "checkpoint.pth"
RESULT_NAME = "finetune.json"
KIND = "finetune"
# keys that may change between a checkpoint and its resumption without breaking exactness
_RESUMABLE = {"epochs", "max_steps", "log_every", "ckpt_every", "num_workers", "device", "eval_batch_size"}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def changed_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two recipe trees, except the resumable ``finetune`` ones."""
    a, b = _flat(old), _flat(new)
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
            and not (k.startswith("finetune.") and k.split(".", 1)[1] in _RESUMABLE)
            and not k.startswith(("distributed.strategy", "description"))]


@attrs.define
class FinetuneResult:
    run_dir: Path
    steps: int
    final_loss: float
    wall_time: float
    trained_steps: int
    scores: dict | None  # what finetune.json holds (on the main process)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...]) -> dict[int, int]:
    """Correct counts at each ``k``: ``logits [B, K]``, ``labels [B]`` -> ``{k: count}``."""
    top = logits.topk(max(ks), dim=1).indices  # [B, max k]
    hits = top == labels[:, None]
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in ks}


def finetune_eval_transform(img_size: tuple[int, int], mean, std) -> EvalTransform:
    """The official MAE's fine-tuning evaluation transform (``util/datasets.py``, ``build_transform``): the shorter
    side resized (bicubic) to ``input_size / crop_pct``, then the center ``input_size`` crop, with ``crop_pct``
    224/256 for inputs up to 224 and 1.0 above (a model fine-tuned at 384 or 448 sees the whole image resized).
    ``img_size``: ``(h, w)``, ``input_size`` its larger side; returns ``uint8 [C, H, W] -> float32 [C, h, w]``."""
    crop_pct = 224 / 256 if max(img_size) <= 224 else 1.0
    return EvalTransform(img_size, mean, std, crop_pct=crop_pct)


@torch.no_grad()
def evaluate_classifier(model: torch.nn.Module, dataset, *, img_size: tuple[int, int], device: torch.device,
                        batch_size: int, amp_dtype: torch.dtype | None = None) -> dict:
    """Top-1 (and top-5 with more than 5 classes) of ``model`` on ``dataset``, its images through
    :func:`finetune_eval_transform` (deterministic)."""
    from torch.utils.data import BatchSampler, SequentialSampler

    data = AugmentedDataset(dataset, finetune_eval_transform(img_size, dataset.mean, dataset.std))
    loader = make_loader(data, BatchSampler(SequentialSampler(data), batch_size, drop_last=False))
    num_classes = model.num_classes
    ks = (1, 5) if num_classes > 5 else (1,)
    correct, total = dict.fromkeys(ks, 0), 0
    was_training = model.training
    model.eval()
    try:
        for images, labels in loader:
            ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
            with ctx:
                logits = model(images.to(device))
            for k, n in topk_accuracy(logits.float().cpu(), labels, ks).items():
                correct[k] += n
            total += labels.shape[0]
    finally:
        model.train(was_training)
    return {f"top{k}": correct[k] / max(total, 1) for k in ks} | {"test_images": total}


class FinetuneTrainer:
    """Fine-tunes a pretrained encoder for classification: ``FinetuneTrainer(recipe, out_dir,
    pretrained=(encoder_spec, state_dict, source)).fit()``; ``resume=`` a fine-tuning checkpoint continues.

    ``pretrained``: what :func:`maskkit.finetune.pretrained.read_pretrained` gives, as ``(the pretraining
    recipe's encoder section, a state dict under official MAE / timm names, a label for messages)``.
    """

    def __init__(self, recipe: FinetuneRecipe, out_dir: str | Path, *,
                 pretrained: tuple[dict, dict, str] | None = None, registry: Registry | None = None,
                 resume: str | Path | None = None, console: Console | None = None, progress: bool = True):
        if pretrained is None and resume is None:
            raise CheckpointError("fine-tuning needs a pretrained checkpoint or a fine-tuning checkpoint to resume")
        self.recipe = recipe
        self.cfg = recipe.finetune
        self.pretrained = pretrained
        self.registry = registry or default_registry()
        self.console = console or make_console(stderr=True)
        self.show_progress = progress
        self.run_dir = Path(out_dir)
        self.resume_path = Path(resume) if resume else None
        self.step = 0
        self._saved_step: int | None = None  # the step of the checkpoint this session wrote or resumed from
        self.signals = SignalStop()  # SIGINT/SIGTERM stop the loop at a step boundary
        self._log: StepLog | None = None  # the loop's, while it runs (its open window goes into checkpoints)
        self._resume_window: tuple[float, int] | None = None
        self.dist: DistContext | None = None
        self.lock = run_folder.RunLock(self.run_dir)

    # -- set-up ---------------------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg, recipe = self.cfg, self.recipe
        self.device = pick_device(cfg.device, key="finetune.device", file=recipe.file)
        self.dist = DistContext.from_env(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        resume_state = load_finetune_checkpoint(self.resume_path) if self.resume_path else None
        if resume_state is not None:
            self._check_resumable(resume_state)
            self.encoder_spec, self.source = resume_state["encoder"], resume_state.get("pretrained", "?")
        else:
            self.encoder_spec, state_dict, self.source = self.pretrained
        if self.dist.is_main:  # one run per folder; a folder left by a crash is made usable again
            self.lock.acquire()
            run_folder.prepare(self.run_dir, resume=self.resume_path,
                               resume_step=int(resume_state["step"]) if resume_state is not None else None)
        train_set = build_dataset(recipe, "train", self.registry)
        try:  # before anything is built: 2+ training classes, test labels on them, a head the encoder can feed
            self.num_classes = check_train_classes(train_set)
            self.test_set = align_test_classes(train_set, build_dataset(recipe, "test", self.registry))
            check_global_pool(self.encoder_spec, cfg.global_pool)
        except ConfigError as exc:
            raise exc.within(file=recipe.file) from None
        torch.manual_seed(recipe.seed)  # head init (and the encoder's, for init: random): the same on every rank
        try:
            model = build_classifier(self.encoder_spec, self.num_classes, drop_path=cfg.drop_path,
                                     global_pool=cfg.global_pool)
        except ConfigError as exc:
            raise ConfigError(exc.key, exc.message, file=f"{self.source}:recipe") from None
        if resume_state is None and cfg.init == "pretrained":
            load_pretrained_encoder(model, state_dict, self.source)
        if cfg.tune_blocks is not None:
            try:
                freeze_for_partial_finetuning(model, cfg.tune_blocks)
            except ConfigError as exc:
                raise exc.within(file=recipe.file) from None
        self.model = model.to(self.device)
        self.img_size = tuple(model.patch_embed.img_size)
        in_chans = model.patch_embed.proj.in_channels
        torch.manual_seed(runtime_seed(recipe.seed, self.dist.rank))  # drop path: a stream per rank
        self.forward_model: torch.nn.Module = self.model
        if self.dist.enabled:
            self.forward_model = parallelize(self.model, self.dist, distributed_config(recipe), self.device)
        if cfg.ema and is_sharded(self.model):
            raise ConfigError("finetune.ema", "EMA of weights is not supported with FSDP; use DDP",
                              file=recipe.file)
        self.ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay)
        try:
            transform = FinetuneTrainTransform(self.img_size, in_chans, train_set.mean, train_set.std, cfg)
        except ConfigError as exc:  # finetune.auto_augment timm refuses, images of another channel count
            raise exc.within(file=recipe.file) from None
        self.train_set = AugmentedDataset(train_set, transform, recipe.data_seed)
        if cfg.mixup_active and cfg.batch_size % 2:
            raise ConfigError("finetune.batch_size", f"Mixup/CutMix pair each batch with its reverse: expected an "
                              f"even batch size, got {cfg.batch_size}", file=recipe.file)
        self.sampler, plan = plan_steps(cfg, len(train_set), self.dist, data_seed=recipe.data_seed,
                                        section="finetune", file=recipe.file)
        self.global_batch, self.steps_per_epoch, self.total_steps = (plan.global_batch, plan.steps_per_epoch,
                                                                     plan.total_steps)
        self.effective_batch, self.base_lr, self.warmup_steps = plan.effective_batch, plan.base_lr, plan.warmup_steps
        groups = layer_decay_groups(self.model, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=self.base_lr, betas=cfg.betas, fused=True)
        self.mixup = (SeededMixup(cfg, self.num_classes, recipe.seed, rank=self.dist.rank) if cfg.mixup_active
                      else None)  # each rank its own draws, as the official main_finetune.py
        self.criterion = make_criterion(cfg)
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        if resume_state is not None:
            try:
                load_state(self.model, self.optimizer, resume_state["model"], resume_state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as exc:  # e.g. optimizer groups of an older maskkit
                detail = ckpt.describe_mismatch(exc)
                raise CheckpointError(f"{self.resume_path}: its weights or optimizer state do not fit the model "
                                      f"and parameter groups its recipe builds: {detail}") from None
            if self.ema is not None:
                if resume_state.get("ema") is None:
                    raise CheckpointError(f"{self.resume_path}: holds no EMA weights")
                self.ema.module.load_state_dict(plain_ema_weights(resume_state["ema"]))
            self.step = self._saved_step = int(resume_state["step"])
            ckpt.set_rng_state(resume_state["rng"], self.dist.rank, self.device)
            windows = resume_state.get("log_window")  # absent in checkpoints of older maskkit versions
            self._resume_window = tuple(windows[self.dist.rank]) if windows else None
        self.loader = make_loader(self.train_set, self.sampler, num_workers=cfg.num_workers,
                                  pin_memory=self.device.type == "cuda")
        if self.dist.is_main:
            write_run_record(self.run_dir, recipe.dump(), self.registry)

    def _check_resumable(self, state: dict) -> None:
        saved_world = state.get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise CheckpointError(f"{self.resume_path}: written by {saved_world} process(es), resumed with "
                                  f"{self.dist.world_size}; resume with the same number of processes")
        changed = changed_keys(state.get("recipe") or {}, self.recipe.tree)
        if changed:
            raise CheckpointError(f"{self.resume_path}: the recipe differs from the checkpoint's in "
                                  f"{', '.join(changed[:4])}; a resumed run must use the same recipe")

    # -- the loop -------------------------------------------------------------------------------------------

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _batches(self):
        """Yield ``(images, labels)`` micro-batches from the current step on, across epochs."""
        epoch, within = divmod(self.step, self.steps_per_epoch)
        start = within * self.cfg.accum_steps
        while True:
            self.sampler.set_epoch(epoch)
            self.train_set.set_epoch(epoch)
            self.sampler.set_start(start)
            yield from self.loader
            start = 0
            epoch += 1

    def fit(self) -> FinetuneResult:
        """Fine-tune to ``total_steps``, then evaluate. SIGINT/SIGTERM stop at the next step boundary with a
        checkpoint and raise :class:`~maskkit.errors.RunInterrupted` (saying how to resume); the run folder's lock
        is held meanwhile."""
        self.signals.install()
        try:
            return self._fit()
        finally:
            self.signals.restore()
            try:
                stop_workers(getattr(self, "loader", None))  # its workers end with the run, not with the trainer
            finally:
                if self.lock.held:
                    self.lock.release()

    def _fit(self) -> FinetuneResult:
        self._setup()
        cfg = self.cfg
        start_time, start_step = time.perf_counter(), self.step
        last_loss = float("nan")
        checkpoint_path = self.run_dir / CHECKPOINT_NAME
        log = self._log = StepLog(self.run_dir, self.dist, self.device, label="finetune",
                                  total_steps=self.total_steps, start_step=self.step,
                                  effective_batch=self.effective_batch, steps_per_epoch=self.steps_per_epoch,
                                  console=self.console, show=self.show_progress, window=self._resume_window)
        batches = self._batches()
        self.guard = DivergenceGuard(self.dist, self.device, "finetune")
        self.model.train()
        with log:
            while self.step < self.total_steps:
                if self.signals.requested(self.dist):  # at a step boundary: nothing half-done
                    self._stop(checkpoint_path)
                lr = lr_at(self.step, base=self.base_lr, total_steps=self.total_steps,
                           warmup_steps=self.warmup_steps, min_lr=cfg.min_lr)
                set_lr(self.optimizer, lr)
                step_loss = torch.zeros((), device=self.device)
                for micro in range(cfg.accum_steps):
                    images, labels = next(batches)
                    if self.mixup is not None:
                        images, targets = self.mixup(images, labels, self.step * cfg.accum_steps + micro)
                    else:
                        targets = labels
                    images = images.to(self.device, non_blocking=True)
                    targets = targets.to(self.device, non_blocking=True)
                    sync = self.dist.enabled and micro < cfg.accum_steps - 1
                    with (no_grad_sync(self.forward_model) if sync else contextlib.nullcontext()), \
                            self._autocast():
                        logits = self.forward_model(images)
                    loss = self.criterion(logits.float(), targets)
                    (loss / cfg.accum_steps).backward()
                    step_loss += loss.detach() / cfg.accum_steps
                if cfg.clip_grad:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update(self.model, step=self.step)
                self.guard.track(self.step, step_loss)
                log.add(step_loss)
                self.step += 1
                is_last = self.step == self.total_steps
                must_ckpt = is_last or (cfg.ckpt_every and self.step % cfg.ckpt_every == 0)
                if self.step % cfg.log_every == 0 or is_last or must_ckpt:
                    self.guard.check_loss(last_good(checkpoint_path, self._saved_step))  # before any checkpoint
                    last_loss = float(self.dist.mean(step_loss))
                    log.record(self.step, loss=last_loss, lr=lr)
                if must_ckpt:
                    self.save_checkpoint(checkpoint_path)
        self.signals.settle()  # the last boundary's stop request: every rank started it
        if is_sharded(self.model):
            self.model = unsharded_copy(self.model, lambda: build_classifier(
                self.encoder_spec, self.num_classes, drop_path=cfg.drop_path, global_pool=cfg.global_pool
            ).to(self.device))
        wall = time.perf_counter() - start_time
        scores = None
        if self.dist.is_main:  # a finished run resumed keeps the scores it recorded
            scores = (self._recorded_scores() if self.step == start_step else None) or self._evaluate(wall)
        self.dist.barrier()
        return FinetuneResult(self.run_dir, self.step, last_loss, wall, self.step - start_step, scores)

    def _recorded_scores(self) -> dict | None:
        """The scores the run folder's ``finetune.json`` holds for this very step, or None: a finished run resumed
        keeps them (and their wall time) instead of evaluating again; a run stopped before its evaluation has none."""
        try:
            scores = json.loads((self.run_dir / RESULT_NAME).read_text())
        except (OSError, ValueError):
            return None
        return scores if isinstance(scores, dict) and scores.get("steps") == self.step else None

    def _evaluate(self, wall: float) -> dict:
        kwargs = dict(img_size=self.img_size, device=self.device, batch_size=self.cfg.eval_batch_size,
                      amp_dtype=self.amp_dtype)
        scores = evaluate_classifier(self.model, self.test_set, **kwargs)
        if self.ema is not None:
            scores |= {f"ema_{k}": v for k, v in evaluate_classifier(self.ema.module, self.test_set, **kwargs).items()
                       if k != "test_images"}
        scores |= {"num_classes": self.num_classes, "steps": self.step, "init": self.cfg.init,
                   "pretrained": str(self.source), "tune_blocks": self.cfg.tune_blocks,
                   "train_images": len(self.train_set), "final_loss": self._final_loss(),
                   "wall_time_s": wall}
        # atomic: compare's eval.finetune takes a finetune.json as a finished fine-tuning
        run_folder.write_text_atomic(self.run_dir / RESULT_NAME, json.dumps(scores, indent=2) + "\n")
        return scores

    def _final_loss(self) -> float | None:
        path = self.run_dir / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return json.loads(lines[-1])["loss"] if lines else None

    def _stop(self, checkpoint_path: Path) -> None:
        """Save a checkpoint of the current step (unless there is one) and raise
        :class:`~maskkit.errors.RunInterrupted` with the command that resumes the run."""
        if self._saved_step != self.step and self.step > 0:
            self.guard.check_loss(last_good(checkpoint_path, self._saved_step))
            self.save_checkpoint(checkpoint_path)
        saved = checkpoint_path if self._saved_step is not None and checkpoint_path.exists() else None
        raise self.signals.interrupted(self.step, saved, "finetune")

    def save_checkpoint(self, path: Path) -> None:
        """Write the checkpoint of the current step, if every weight, optimizer and EMA state is finite (else a
        :class:`~maskkit.errors.TrainingError` naming the step, the previous checkpoint kept), atomically."""
        started = time.perf_counter()
        gathered = gather_state(self.model, self.optimizer, self.dist)  # collective under FSDP
        rng = self.dist.gather_objects(ckpt.rng_state(self.device))
        window = self.dist.gather_objects(self._log.window_state() if self._log is not None else (0.0, 0))
        ema = self.ema.module.state_dict() if self.ema is not None and self.dist.is_main else None  # plain keys
        self.guard.check_state(self.step, {"model": gathered[0], "optimizer": gathered[1]["state"], "ema": ema}
                               if self.dist.is_main else None, last_good(path, self._saved_step))
        if self.dist.is_main:
            state = {"format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION, "kind": KIND, "step": self.step,
                     "model": gathered[0], "optimizer": gathered[1], "ema": ema,
                     "world_size": self.dist.world_size, "rng": rng, "log_window": window, "recipe": self.recipe.tree,
                     "encoder": dict(self.encoder_spec), "num_classes": self.num_classes,
                     "class_names": [str(c) for c in getattr(self.train_set.base, "classes", None) or []],
                     "pretrained": str(self.source), "versions": versions(self.registry)}
            ckpt.save_atomic(state, path)
        self._saved_step = self.step
        self.dist.barrier()
        if self._log is not None:  # the window's images/s includes it; its checkpoint_s says how much
            self._log.add_checkpoint_time(time.perf_counter() - started)



# the prefix of ``ModelEmaV3.state_dict()``'s keys, which checkpoints of earlier maskkit versions saved as "ema"
_EMA_WRAPPER_PREFIX = "module."


def plain_ema_weights(saved: dict) -> dict:
    """A checkpoint's ``ema`` state dict under the classifier's own keys (``blocks.0.attn.qkv.weight``): as saved
    now, or without the ``module.`` prefix of timm's ``ModelEmaV3`` wrapper that earlier versions saved."""
    if saved and all(key.startswith(_EMA_WRAPPER_PREFIX) for key in saved):
        return {key[len(_EMA_WRAPPER_PREFIX):]: value for key, value in saved.items()}
    return dict(saved)


def finetuned_weights(state: dict) -> tuple[dict, str]:
    """``(state dict, which)`` a fine-tuning checkpoint exports: its EMA weights when the run kept an EMA (``which``
    is ``"EMA weights"``), else the trained weights (``"weights"``); plain classifier keys either way."""
    if state.get("ema"):
        return plain_ema_weights(state["ema"]), "EMA weights"
    return dict(state["model"]), "weights"


def load_finetune_checkpoint(path: str | Path, *, mmap: bool = False) -> dict:
    """A fine-tuning checkpoint written by :class:`FinetuneTrainer` (``weights_only`` load); anything else is
    refused with a one-line message. ``mmap=True`` maps its tensors instead of reading them (for its recipe)."""
    state = ckpt.load_training_checkpoint(path, mmap=mmap)
    if state.get("kind") != KIND:
        raise CheckpointError(f"{path}: a pretraining checkpoint, not a fine-tuning one; fine-tune it with "
                              f"`maskkit finetune {path}` (--resume takes a fine-tuning run's checkpoint)")
    return state
