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
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from rich.console import Console

from maskkit.builder import build_dataset, build_model, build_test_split, recipe_registry
from maskkit.console import make_console
from maskkit.data.ahead import DEFAULT_DEPTH, finish_ahead
from maskkit.data.encoded import DeviceDecoder, EncodedView, supports_encoded
from maskkit.data.loading import AugmentedDataset, BadImages, lift_open_files_limit, make_loader, stop_workers
from maskkit.data.transforms import TrainTransform
from maskkit.engine import checkpoint as ckpt
from maskkit.engine import run_folder
from maskkit.engine.batch_rule import StepShape, pick_batch
from maskkit.engine.compiling import compile_enabled, compile_model
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
from maskkit.engine.optim import lr_at, make_optimizer, set_lr
from maskkit.engine.runtime import (  # noqa: F401 (pick_device, runtime_seed, versions: re-exported)
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
from maskkit.errors import CheckpointError, ConfigError, MaskError, MaskkitError
from maskkit.recipe import Recipe
from maskkit.registry import Registry

CHECKPOINT_NAME = run_folder.CHECKPOINT_NAME
# Micro-steps at the start of a GPU run whose mask counts are checked on the host (then on the device only).
_SYNC_CHECKED_STEPS = 3
# Keys that may change between a checkpoint and its resumption without breaking exactness (and the eval
# section, which runs after training).
_RESUMABLE_CHANGES = {("train", "epochs"), ("train", "max_steps"), ("train", "log_every"), ("train", "ckpt_every"),
                      ("train", "num_workers"), ("data", "on_bad_image")}
# Keys that may change too, but then the run goes on without being bit-exact: another device type brings other
# kernels, random streams and (precision: auto) another precision; nvJPEG's pixels differ from libjpeg's.
_RESUMABLE_NOT_EXACT = {("train", "device"), ("data", "decode")}
# Checkpoints are unsharded, so either strategy resumes either; with one process neither wraps the model, with
# more DDP's all-reduce and FSDP's reduce-scatter sum the gradients in other orders.
_STRATEGY = ("distributed", "strategy")


def resume_changes(old: dict, new: dict, world_size: int) -> tuple[list[str], list[str]]:
    """``(refused, inexact)``: the keys in which recipe tree ``new`` differs from a checkpoint's ``old`` that a
    resumed run cannot take, and those it takes but then goes on not bit for bit (the ``eval`` section, run
    after training, is neither)."""
    diff = [k for k in _recipe_changes(old, new) if k[:1] != ("eval",)]
    exact = _RESUMABLE_CHANGES | ({_STRATEGY} if world_size == 1 else set())
    not_exact = _RESUMABLE_NOT_EXACT | ({_STRATEGY} if world_size > 1 else set())
    name = ".".join
    return ([name(map(str, k)) for k in diff if k[:2] not in exact | not_exact],
            [name(map(str, k)) for k in diff if k[:2] in not_exact])


def mask_seed(seed: int, micro_step: int) -> int:
    """The seed of the mask generator of one micro-step (a fixed mix, the same on every rank)."""
    return (seed * 1_000_003 + micro_step * 7_919 + 17) % (2**63 - 1)


def _with_defaults(tree: dict) -> dict | None:
    """``tree`` with the engine's sections (``train``, ``augment``, ``distributed``, the seeds, ``data.decode`` and
    ``data.on_bad_image``) as validated, their defaults written out, so that a default spelled out
    (``train.compile: auto``) is the same recipe as one left out; None when they do not validate (a checkpoint of
    another maskkit version)."""
    recipe = Recipe(tree)
    try:
        sections = {name: attrs.asdict(getattr(recipe, name)) for name in ("train", "augment", "distributed")}
        data = {**(tree.get("data") or {}), "decode": recipe.decode, "on_bad_image": recipe.on_bad_image}
        return {**tree, **sections, "data": data, "seed": recipe.seed, "data_seed": recipe.data_seed}
    except MaskkitError:
        return None


def _recipe_changes(old: dict, new: dict) -> list[tuple]:
    """The keys in which recipe tree ``new`` differs from ``old``, defaults filled in on both sides when both
    validate (else the trees as written: filling in one side only would list every default as a change)."""
    full_old, full_new = _with_defaults(old), _with_defaults(new)
    if full_old is None or full_new is None:
        return _diff_keys(old, new)
    return _diff_keys(full_old, full_new)


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
    bad_images: int = 0  # unreadable images left out (data.on_bad_image: skip), listed in bad_images.txt


class Trainer:
    """Runs a recipe. ``Trainer(recipe, out_dir).fit()``; ``resume=`` a checkpoint path continues a run.

    Plugins observe and act through the engine hooks (``maskkit_step_end`` and friends), called with
    ``trainer=self``; public attributes they may read: ``recipe``, ``model``, ``optimizer``, ``step``,
    ``total_steps``, ``steps_per_epoch``, ``device``, ``dist``, ``run_dir``.

    ``check_test_split``: build the recipe's test split at set-up too (on rank 0), so that an evaluation planned
    after training (a ``data.test_root`` that is not there, or holds a class training lacks) fails before any
    step is trained, not after.
    """

    #: with ``data.decode: device``, batches decoded ahead of the step in a thread (0: in the training thread;
    #: ``benchmarks/decode_ahead.py`` times both)
    decode_ahead: int = DEFAULT_DEPTH

    def __init__(self, recipe: Recipe, out_dir: str | Path, *, registry: Registry | None = None,
                 resume: str | Path | None = None, console: Console | None = None, progress: bool = True,
                 check_test_split: bool = False):
        self.recipe = recipe
        self.check_test_split = check_test_split
        self.cfg = recipe.train
        self.registry = recipe_registry(recipe, registry, require=True)  # the recipe's plugins, all loaded
        self.console = console or make_console(stderr=True)
        self.show_progress = progress
        self.run_dir = Path(out_dir)
        self.resume_path = Path(resume) if resume else None
        self.hook = self.registry.plugin_manager.hook
        self.step = 0
        self._log: StepLog | None = None  # the loop's, while it runs (its open window goes into checkpoints)
        self._resume_window: tuple[float, int] | None = None
        self._first_micro = 0  # the first micro-step of this call to fit (mask counts checked on the host)
        self.model: torch.nn.Module | None = None
        self.lock = run_folder.RunLock(self.run_dir)
        self.bad_images = BadImages(recipe.on_bad_image)
        self.signals = SignalStop()  # SIGINT/SIGTERM stop the loop at a step boundary
        self._saved_step: int | None = None

    # -- set-up ---------------------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg, recipe = self.cfg, self.recipe
        self.device = pick_device(cfg.device, key="train.device", file=recipe.file)
        self.dist = DistContext.from_env(self.device.type)
        self.dist_cfg = distributed_config(recipe)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        resume_state = ckpt.load_resumable_checkpoint(self.resume_path) if self.resume_path else None
        if cfg.auto_batch and resume_state is not None:  # a resumed run keeps its checkpoint's picks
            self.recipe = recipe = self._resolve_auto_batch(resume_state)
            self.cfg = cfg = recipe.train
        if resume_state is not None:
            self._check_resumable(resume_state)
        if self.dist.is_main:  # one run per folder; a folder left by a crash is made usable again
            self.lock.acquire()
            run_folder.prepare(self.run_dir, resume=self.resume_path,
                               resume_step=int(resume_state["step"]) if resume_state is not None else None)
        torch.manual_seed(recipe.seed)  # parameter init is a function of the seed (the same on every rank)
        self.model = build_model(recipe, self.registry).to(self.device)
        if cfg.auto_batch:  # picked for this device; the picks go into the run folder's recipe.yaml
            self.recipe = recipe = self._resolve_auto_batch(None)
            self.cfg = cfg = recipe.train
        # dropout and drop-path draw from the global generators: a stream per rank, so that ranks do not drop
        # the same paths for the samples at the same place of their slices
        torch.manual_seed(runtime_seed(recipe.seed, self.dist.rank))
        self.forward_model: torch.nn.Module = self.model
        if self.dist.enabled:  # DDP or FSDP, before the optimizer: FSDP swaps the parameters for sharded ones
            self.forward_model = parallelize(self.model, self.dist, self.dist_cfg, self.device)
        self.grid = self.model.grid
        train_set = build_dataset(recipe, "train", self.registry, in_chans=self.model.encoder.in_chans)
        if self.check_test_split and self.dist.is_main:  # it exists, its channels and its classes fit
            build_test_split(recipe, train_set, self.registry, in_chans=self.model.encoder.in_chans)
        aug = recipe.augment
        # the workers crop and flip; the bytes cross processes as uint8 and are normalised on the device
        self.transform = TrainTransform(self.model.encoder.img_size, scale=aug.scale, ratio=aug.ratio,
                                        hflip=aug.hflip, mean=train_set.mean, std=train_set.std, output="uint8")
        self.device_decoder: DeviceDecoder | None = None
        if recipe.decode == "device":  # the workers read files and draw crops; the device decodes and crops
            if not supports_encoded(train_set):
                raise ConfigError("data.decode", f"device needs a dataset of image files (image_folder); "
                                  f"{type(train_set).__name__} has no encoded(index) method", file=recipe.file)
            self.device_decoder = DeviceDecoder(self.transform, self.device, self.model.encoder.in_chans)
            train_set = EncodedView(train_set)
        self.train_set = AugmentedDataset(train_set, self.transform, recipe.data_seed, catch_bad=True)
        global_batch = cfg.batch_size * self.dist.world_size
        if cfg.effective_batch is not None and global_batch * cfg.accum_steps != cfg.effective_batch:
            raise ConfigError("train.effective_batch", f"batch_size {cfg.batch_size} x accum_steps {cfg.accum_steps} x "
                              f"world size {self.dist.world_size} = {global_batch * cfg.accum_steps}, not "
                              f"{cfg.effective_batch} (or use batch_size: auto, accum_steps: auto)", file=recipe.file)
        self.sampler, plan = plan_steps(cfg, len(train_set), self.dist, data_seed=recipe.data_seed,
                                        section="train", file=recipe.file)
        self.global_batch, self.steps_per_epoch, self.total_steps = (plan.global_batch, plan.steps_per_epoch,
                                                                     plan.total_steps)
        self.effective_batch, self.base_lr, self.warmup_steps = plan.effective_batch, plan.base_lr, plan.warmup_steps
        self.optimizer = make_optimizer(self.model, lr=self.base_lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
                                        device=self.device)
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        if resume_state is not None:
            try:
                load_state(self.model, self.optimizer, resume_state["model"], resume_state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise CheckpointError(f"{self.resume_path}: its weights do not fit the model its recipe builds: "
                                      f"{ckpt.describe_mismatch(exc)}") from None
            self.step = self._saved_step = int(resume_state["step"])
            ckpt.set_rng_state(resume_state["rng"], self.dist.rank, self.device)
            windows = resume_state.get("log_window")  # absent in checkpoints of older maskkit versions
            self._resume_window = tuple(windows[self.dist.rank]) if windows else None
        # component by component or block by block: dynamo cannot build the attrs-frozen MaskedOutput of forward
        if compile_enabled(cfg.compile, self.device):
            compile_model(self.model, cfg.compile_scope, skip=(self.model.masker,))
        self.loader = make_loader(self.train_set, self.sampler, num_workers=cfg.num_workers,
                                  pin_memory=self.device.type == "cuda")
        if self.device_decoder is not None and cfg.num_workers > 0:  # an open file per worker-decoded crop in flight
            lift_open_files_limit(cfg.num_workers * self.loader.prefetch_factor * cfg.batch_size * 2 + 1024)
        if self.dist.is_main:
            write_run_record(self.run_dir, recipe.dump(), self.registry)

    def _resolve_auto_batch(self, resume_state: dict | None) -> Recipe:
        """The recipe with ``batch_size: auto`` replaced by numbers: the checkpoint's when resuming (the batches of
        a run must not change), else :func:`~maskkit.engine.batch_rule.pick_batch`'s for this device."""
        saved = ((resume_state or {}).get("recipe") or {}).get("train") or {}
        if isinstance(saved.get("batch_size"), int) and isinstance(saved.get("accum_steps"), int):
            micro, accum = saved["batch_size"], saved["accum_steps"]
        elif self.model is None:  # a checkpoint without picks: pick once the model is built
            return self.recipe
        else:
            cfg = self.cfg
            memory = (torch.cuda.get_device_properties(self.device).total_memory if self.device.type == "cuda"
                      else None)
            bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
            try:
                micro, accum = pick_batch(StepShape.of(self.model), effective_batch=cfg.effective_batch,
                                          world_size=self.dist.world_size, device_type=self.device.type,
                                          memory_bytes=memory, bf16=bf16)
            except ConfigError as exc:
                raise exc.within(file=self.recipe.file) from None
        if self.dist.is_main:
            self.console.log(f"batch_size: auto -> {micro} per process x accum_steps {accum} x "
                             f"{self.dist.world_size} process(es) = {micro * accum * self.dist.world_size}")
        return self.recipe.with_overrides([f"train.batch_size={micro}", f"train.accum_steps={accum}"])

    def _check_resumable(self, state: dict) -> None:
        saved_world = state.get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise CheckpointError(f"{self.resume_path}: written by {saved_world} process(es), resumed with "
                                  f"{self.dist.world_size}; the batches of a run depend on the world size, so "
                                  "resume with the same number of processes")
        refused, inexact = resume_changes(state.get("recipe") or {}, self.recipe.tree, self.dist.world_size)
        if refused:
            raise CheckpointError(f"{self.resume_path}: the recipe differs from the checkpoint's in "
                                  f"{', '.join(refused[:4])}; a resumed run must use the same recipe")
        if inexact and self.dist.is_main:
            self.console.print(f"[yellow]resuming with {', '.join(inexact)} changed: the run goes on, but not bit "
                               "for bit as it would have (other kernels, random streams, decoder or gradient "
                               "reduction)[/yellow]")

    # -- the loop -------------------------------------------------------------------------------------------

    def _mask_generator(self, micro_step: int) -> torch.Generator:
        """The mask generator of ``micro_step``: the same on every rank."""
        return torch.Generator(device=self.device).manual_seed(mask_seed(self.recipe.seed, micro_step))

    def _rows(self) -> slice:
        """This rank's rows of the global batch."""
        b = self.cfg.batch_size
        return slice(self.dist.rank * b, (self.dist.rank + 1) * b)

    def _sync_checks(self, micro_step: int) -> bool:
        """Check mask counts on the host (a sync) on CPU, and on the first micro-steps of a run on a GPU;
        afterwards by a device-side assertion that the loop does not wait for."""
        return self.device.type == "cpu" or micro_step < self._first_micro + _SYNC_CHECKED_STEPS

    def _when(self) -> dict[str, Any]:
        """Where the run is, as maskers and ``aux_losses`` see it: ``step``, ``epoch`` and ``progress``."""
        return {"step": self.step, "epoch": self.step / self.steps_per_epoch,
                "progress": self.step / self.total_steps}

    def _draw_mask(self, micro_step: int) -> torch.Tensor:
        """This rank's slice of the global batch's masks for ``micro_step`` (a blind masker)."""
        mask = self.model.draw_mask(self.global_batch, self._mask_generator(micro_step), self.device, **self._when(),
                                    sync_checks=self._sync_checks(micro_step))  # [G, N], checked
        return mask[self._rows()]

    def _forward(self, images: torch.Tensor, micro_step: int, num_visible: int | None):
        """One micro-step's forward. A blind masker draws the global batch's masks here (every rank keeps its
        rows); any other is drawn inside the model's forward, where DDP and FSDP see its parameters, from the same
        generator on every rank, told which ``rows`` of the global batch this rank holds."""
        when = self._when()  # what every component's aux_losses sees too
        if self.model.masker_is_blind():
            mask = self.bad_images.keep(self._draw_mask(micro_step))  # the rows of the images that were readable
            return self.forward_model(images, mask=mask, num_visible=num_visible, **when)
        rows = self._rows()
        if images.shape[0] < rows.stop - rows.start:  # unreadable images left out (data.on_bad_image: skip): such a
            rows = slice(rows.start, rows.start + images.shape[0])  # batch's masks depend on the world size
        return self.forward_model(images, generator=self._mask_generator(micro_step), rows=rows,
                                  sync_checks=self._sync_checks(micro_step), **when)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _no_autocast(self):
        """Inside :meth:`_autocast` (open for a whole optimizer step, so that autocast's cache casts each weight
        once per step rather than once per micro-step): the backward pass, which autocast must not wrap."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, enabled=False)

    def _batches(self):
        """Yield ``(epoch, images, labels)`` micro-batches from the current step on, across epochs."""
        # no more than the run trains on: decoding ahead must not start the next epoch's loading after the last step
        batches = self._loader_batches((self.total_steps - self.step) * self.cfg.accum_steps)
        decoder = self.device_decoder
        if decoder is not None:  # data.decode: device, finished in a thread while the steps before it train
            batches = finish_ahead(batches, lambda item: (item[0], decoder(item[1])), self.device,
                                   depth=self.decode_ahead)
        with contextlib.closing(batches):  # finish_ahead closes the loader's batches in turn
            for epoch, batch in batches:
                images, labels = self.bad_images.accept(batch)  # unreadable images: stop, or skip and count
                yield epoch, images, labels

    def _loader_batches(self, count: int):
        """Yield ``(epoch, batch)`` for the loader's next ``count`` batches from the current step on, across
        epochs."""
        epoch, within = divmod(self.step, self.steps_per_epoch)
        start = within * self.cfg.accum_steps
        while count > 0:
            self.sampler.set_epoch(epoch)
            self.train_set.set_epoch(epoch)
            self.sampler.set_start(start)
            for batch in self.loader:
                yield epoch, batch
                count -= 1
                if count == 0:
                    return
            start = 0
            epoch += 1

    def fit(self) -> TrainResult:
        """Train to ``total_steps``. SIGINT/SIGTERM stop at the next step boundary with a checkpoint and raise
        :class:`~maskkit.errors.RunInterrupted` (saying how to resume); the run folder's lock is held meanwhile."""
        self.signals.install()
        failing = False  # whether the run stops on an exception, which the cleanup must not replace
        try:
            return self._fit()
        except BaseException:
            failing = True
            raise
        finally:
            self.signals.restore()
            try:
                stop_workers(getattr(self, "loader", None))  # its workers end with the run, not with the trainer
                dist = getattr(self, "dist", None)
                if dist is not None and dist.is_main:
                    self._write_bad_images(quiet=failing)
            finally:
                self.lock.release()

    def _fit(self) -> TrainResult:
        self._setup()
        cfg = self.cfg
        model = self.model
        self.hook.maskkit_train_start(trainer=self, model=model)
        self.guard = DivergenceGuard(self.dist, self.device, "train")
        start_time, start_step = time.perf_counter(), self.step
        last_loss = float("nan")
        checkpoint_path = self.run_dir / CHECKPOINT_NAME
        log = self._log = StepLog(self.run_dir, self.dist, self.device, label="train",
                                  total_steps=self.total_steps, start_step=self.step,
                                  effective_batch=self.effective_batch, steps_per_epoch=self.steps_per_epoch,
                                  console=self.console, show=self.show_progress, window=self._resume_window)
        self._first_micro = self.step * cfg.accum_steps
        batches = self._batches()
        model.train()
        try:
            with log:
                while self.step < self.total_steps:
                    if self.signals.requested(self.dist):  # at a step boundary: nothing half-done
                        self._stop(checkpoint_path)
                    lr = lr_at(self.step, base=self.base_lr, total_steps=self.total_steps,
                               warmup_steps=self.warmup_steps, min_lr=cfg.min_lr)
                    set_lr(self.optimizer, lr)
                    self.hook.maskkit_step_start(trainer=self, model=model, step=self.step)
                    num_visible = model.num_visible()  # after the hook, which may change the masker
                    step_loss = torch.zeros((), device=self.device)
                    step_parts: dict[str, torch.Tensor] = {}  # "loss_main", "aux/<component>.<name>": on device
                    with self._autocast():  # weights change at optimizer.step only: cast them once per step
                        for micro in range(cfg.accum_steps):
                            epoch, images, _ = next(batches)
                            images = self.transform.normalize_batch(images.to(self.device, non_blocking=True))
                            sync = (self.dist.enabled and micro < cfg.accum_steps - 1)
                            with no_grad_sync(self.forward_model) if sync else contextlib.nullcontext():
                                out = self._forward(images, self.step * cfg.accum_steps + micro, num_visible)
                            with self._no_autocast():
                                (out.loss / cfg.accum_steps).backward()
                            step_loss += out.loss.detach().float() / cfg.accum_steps
                            if out.aux:
                                for key, value in {"loss_main": out.main_loss,
                                                   **{f"aux/{k}": v for k, v in out.aux.items()}}.items():
                                    part = value.detach().float() / cfg.accum_steps
                                    step_parts[key] = step_parts[key] + part if key in step_parts else part
                    if cfg.clip_grad:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.guard.track(self.step, step_loss)
                    self.hook.maskkit_step_end(trainer=self, model=model, step=self.step, loss=step_loss)
                    log.add(step_loss)
                    self.step += 1
                    finished_epoch = self.step % self.steps_per_epoch == 0
                    is_last = self.step == self.total_steps
                    must_ckpt = is_last or (cfg.ckpt_every and self.step % cfg.ckpt_every == 0)
                    if must_ckpt:
                        self.guard.check_loss(self._last_good(checkpoint_path))  # never checkpoint a diverged model
                    if self.step % cfg.log_every == 0 or is_last:
                        self.guard.check_loss(self._last_good(checkpoint_path))
                        last_loss = float(self.dist.mean(step_loss))
                        parts = {}
                        if step_parts:  # one collective for all of them
                            values = self.dist.mean(torch.stack(list(step_parts.values()))).tolist()
                            parts = dict(zip(step_parts, values))
                        log.record(self.step, loss=last_loss, lr=lr, parts=parts)
                    if finished_epoch:
                        self.hook.maskkit_epoch_end(trainer=self, model=model,
                                                    epoch=self.step // self.steps_per_epoch - 1)
                    if must_ckpt:
                        self.save_checkpoint(checkpoint_path)
        except RuntimeError as exc:
            if "device-side assert" in str(exc):  # CUDA reports the failed assertion at a later sync
                raise self._device_check_error(exc) from exc
            raise
        finally:
            batches.close()  # stops the decode-ahead thread, if any, before anything else runs
        self.signals.settle()  # the last boundary's stop request: every rank started it
        if is_sharded(model):  # evaluation, export and plugins get the whole model (collective)
            self.model = model = unsharded_copy(model, lambda: build_model(self.recipe, self.registry).to(self.device))
        self.hook.maskkit_train_end(trainer=self, model=model, run_dir=self.run_dir)
        wall = time.perf_counter() - start_time
        done = self.step - start_step
        found = self._gather_bad_images()
        listed = len(self._bad_image_list())  # the earlier sessions' of a resumed run too
        if found and self.dist.is_main:
            self.console.print(f"[yellow]left out {listed} unreadable image(s)[/yellow], listed in "
                               f"{self.run_dir / run_folder.BAD_IMAGES_NAME}")
        return TrainResult(self.run_dir, self.step, last_loss, wall, done * self.effective_batch / max(wall, 1e-9),
                           checkpoint_path, done, listed)

    def _device_check_error(self, exc: RuntimeError) -> MaskError:
        """A one-line error for a failed device-side assertion, which on a GPU is how a wrong mask count shows
        after the first steps (:func:`maskkit.masking.check_mask` with ``sync=False``)."""
        first = str(exc).strip().splitlines()[0]
        hidden = self.model.masker.num_hidden(self.grid)
        return MaskError(f"a device-side assertion failed by step {self.step} ({first}); the engine asserts there "
                         f"that masker {self.model.masker_label} hides its declared {hidden} patches in every sample: "
                         f"check its masks with `maskkit masks show {self.model.masker_name}`")

    def save_checkpoint(self, path: Path) -> None:
        """Write the checkpoint of the current step, if every weight and optimizer state is finite (else a
        :class:`~maskkit.errors.TrainingError`, the previous checkpoint kept). The new file replaces the old
        one only once written, flushed and read back."""
        started = time.perf_counter()
        gathered = gather_state(self.model, self.optimizer, self.dist)  # whole state; collective under FSDP
        rng = self.dist.gather_objects(ckpt.rng_state(self.device))  # every rank's (collective)
        window = self.dist.gather_objects(self._log.window_state() if self._log is not None else (0.0, 0))
        self.guard.check_state(self.step, {"model": gathered[0], "optimizer": gathered[1]["state"]}
                               if self.dist.is_main else None, self._last_good(path))
        if self.dist.is_main:
            state = {"format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION, "step": self.step,
                     "model": gathered[0], "optimizer": gathered[1], "world_size": self.dist.world_size,
                     "rng": rng, "log_window": window, "recipe": self.recipe.tree, "versions": versions(self.registry)}
            step = self.step
            ckpt.save_atomic(state, path, verify=lambda tmp: ckpt.verify_training_checkpoint(tmp, step))
            self.hook.maskkit_checkpoint_saved(trainer=self, path=path, step=self.step)
        self._saved_step = self.step  # on every rank: they decide together whether a stop needs a save
        self.dist.barrier()
        if self._log is not None:  # the window's images/s includes it; its checkpoint_s says how much
            self._log.add_checkpoint_time(time.perf_counter() - started)

    def _last_good(self, path: Path) -> str:
        return last_good(path, self._saved_step)

    # -- signals and unreadable images ----------------------------------------------------------------------

    def _stop(self, checkpoint_path: Path) -> None:
        """Save a checkpoint of the current step (unless there is one) and raise :class:`RunInterrupted`."""
        if self._saved_step != self.step and self.step > 0:
            self.guard.check_loss(self._last_good(checkpoint_path))
            self.save_checkpoint(checkpoint_path)
        saved = checkpoint_path if self._saved_step is not None and checkpoint_path.exists() else None
        self._gather_bad_images()  # every rank stops at this boundary: rank 0 lists them all as it leaves
        raise self.signals.interrupted(self.step, saved, "train")

    def _gather_bad_images(self) -> dict[str, str]:
        """Every rank's unreadable images, added to rank 0's (a collective: every rank must call it). A run
        failing on an exception cannot gather (another rank may never come): rank 0 then lists its own only."""
        found = {k: v for part in self.dist.gather_objects(self.bad_images.found) for k, v in part.items()}
        self.bad_images.found.update(found)
        return found

    def _bad_image_list(self) -> dict[str, str]:
        """The run folder's list of unreadable images (earlier sessions' of a resumed run) with those met now."""
        path = self.run_dir / run_folder.BAD_IMAGES_NAME
        known = {}
        if path.is_file():
            known = dict(line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line)
        return {**known, **self.bad_images.found}

    def _write_bad_images(self, quiet: bool = False) -> None:
        """Add the unreadable images met so far to the run folder's list (one ``path: reason`` a line).
        ``quiet``: the run is failing for another reason, which an error here must not hide; say it instead."""
        if not self.bad_images.found:
            return
        path = self.run_dir / run_folder.BAD_IMAGES_NAME
        try:
            run_folder.write_text_atomic(path, "".join(f"{p}\t{reason}\n"
                                                      for p, reason in sorted(self._bad_image_list().items())))
        except OSError as exc:
            if not quiet:
                raise
            self.console.print(f"[yellow]could not update {path}: {exc}[/yellow]", highlight=False)
