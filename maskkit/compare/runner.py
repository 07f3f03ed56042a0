"""Running a comparison: every variant x seed trained, evaluated, and left in its own run folder.

Layout of the output folder::

    OUT/spec.yaml                    the spec as given (for the record)
    OUT/plan.json                    the resolved plan: budget, costs, the recipe of every run
    OUT/runs/VARIANT/seedS/          a trainer run folder (checkpoint.pth, metrics.jsonl, recipe.yaml, versions.json)
        timing.json                  training wall time of every session (kept across resumes)
        eval.json                    scores on frozen features, and the evaluation settings they used
        samples.pt                   test reconstructions under this variant's masks, mask samples on test images
        compare.json                 status: running / done / failed (with the error)
    OUT/baselines/KEY.json           random-init scores, made by the first run of a seed and encoder, shared
    OUT/report/                      see :mod:`maskkit.compare.report`

A run is *finished* when its checkpoint is at its final step and its ``eval.json`` was made with the spec's
evaluation settings. Re-running a comparison skips finished runs, evaluates trained-but-unevaluated ones,
resumes the others from their checkpoint (the trainer's resume is exact) and trains the missing ones. A run
folder whose recipe differs from the one the spec now gives is refused (never silently mixed).

Runs go one after another in this process; with several GPUs, one worker process per GPU
(``CUDA_VISIBLE_DEVICES``) takes the next run as soon as it is free.
"""

from __future__ import annotations

import collections
import copy
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import attrs
import torch
from rich.console import Console
from rich.markup import escape

from maskkit.compare.events import WORKER_LOG, ended_line, position, run_log, say, started_line
from maskkit.compare.files import (  # noqa: F401
    DONE,
    EVAL_FILE,
    FAILED,
    PARTIAL,
    PENDING,
    PLAN_FILE,
    SAMPLES_FILE,
    STATUS_FILE,
    TIMING_FILE,
    TRAINED,
    checkpoint_step,
    read_json,
    training_time,
    write_json,
)
from maskkit.compare.measure import (
    BASELINE_DIR,
    RANDOM_INIT_PREFIX,
    TrainingClock,
    baseline_key,
    shared_baseline,
    time_masker,
    timing_images,
)
from maskkit.compare.plan import Plan, RunPlan
from maskkit.engine.stopping import SignalReceived, raise_on_signal
from maskkit.engine.trainer import CHECKPOINT_NAME, Trainer, pick_device
from maskkit.errors import MaskkitError, RunInterrupted, WorkersInterrupted, describe_failure
from maskkit.recipe import Recipe, safe_load

# Recipe keys that may differ between a run folder and the plan without changing what the run computes.
_IGNORED = {("train", "device"), ("train", "num_workers"), ("train", "log_every"), ("train", "ckpt_every"),
            ("eval",), ("description",)}


# -- a run folder's recipe against the plan's ---------------------------------------------------------------


def _training_view(tree: dict) -> dict:
    view = copy.deepcopy(tree)
    for path in _IGNORED:
        node = view
        for part in path[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return view


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))]
    return [] if a == b else [prefix or "(root)"]


def eval_settings(plan: Plan) -> dict:
    """What an ``eval.json`` must have been made with to count for this plan (:meth:`Plan.eval_settings`)."""
    return plan.eval_settings()


# -- run state ------------------------------------------------------------------------------------------------


@attrs.frozen
class RunStatus:
    run: RunPlan
    state: str
    step: int
    error: str | None = None


def _recipe_changes(run: RunPlan, run_dir: Path, status: dict) -> list[str]:
    """The recipe keys in which the run recorded in ``run_dir`` differs from ``run`` (none when nothing is
    recorded): the plan's recipe that a failure recorded in ``compare.json`` (also for a run that failed before
    training started), else the run's ``recipe.yaml`` (written when training starts)."""
    recipe_file = run_dir / "recipe.yaml"
    if isinstance(status.get("recipe"), dict):
        old = status["recipe"]
    elif recipe_file.is_file():
        old = safe_load(recipe_file.read_text()) or {}
    else:
        return []
    return _diff(_training_view(old), _training_view(run.recipe))


def run_status(run: RunPlan, plan: Plan, out_dir: Path) -> RunStatus:
    """Where ``run`` stands in ``out_dir``. Raises when its folder holds a checkpoint of a different recipe.

    A run that failed before its first checkpoint has nothing to lose: when the spec now gives it another
    recipe (a lower learning rate after a diverged loss), it is pending, trained afresh without
    ``--retry-failed``; its old failure was the old recipe's."""
    run_dir = run.run_dir(out_dir)
    step = checkpoint_step(run_dir / CHECKPOINT_NAME)
    status = read_json(run_dir / STATUS_FILE)
    status = status if isinstance(status, dict) else {}
    changed = _recipe_changes(run, run_dir, status) if step is not None or status.get("status") == FAILED else []
    if changed and step is not None:
        raise MaskkitError(f"{run_dir}: this run was trained with a different recipe than {plan.spec_file} now "
                           f"gives (differs in {', '.join(changed[:4])}); delete that folder to retrain it, "
                           "or write the comparison to another --out")
    if status.get("status") == FAILED:
        if changed:  # failed before its first checkpoint, under a recipe the spec no longer gives
            return RunStatus(run, PENDING, 0)
        return RunStatus(run, FAILED, step or 0, status.get("error"))
    if step is None or step == 0:
        return RunStatus(run, PENDING, 0)
    if step < run.steps:
        return RunStatus(run, PARTIAL, step)
    if plan.evaluated_with(read_json(run_dir / EVAL_FILE)):
        return RunStatus(run, DONE, step)
    return RunStatus(run, TRAINED, step)


# -- training ---------------------------------------------------------------------------------------------


# -- evaluation -----------------------------------------------------------------------------------------------


def _eval_recipe(run: RunPlan, plan: Plan) -> Recipe:
    tree = copy.deepcopy(run.recipe)
    tree["eval"] = {**(tree.get("eval") or {}), **plan.eval.recipe_overrides(), "knn": True,
                    "linear": plan.eval.linear, "random_init_baseline": plan.eval.baseline, "reconstructions": 0}
    return Recipe(tree, plan.spec_file)


def _first_test_images(recipe: Recipe, registry, model, count: int, device: torch.device):
    """The first ``count`` test images (fewer in a smaller split), normalised, on ``device``, and the split."""
    from maskkit.builder import build_dataset
    from maskkit.evaluate import eval_loader

    test_set = build_dataset(recipe, "test", registry)
    batch = next(iter(eval_loader(test_set, model.encoder.img_size, min(count, len(test_set)))))[0].to(device)
    return batch, test_set


def _uint8(pictures: torch.Tensor) -> torch.Tensor:
    """Pictures in [0, 1] as uint8 on the CPU (what ``samples.pt`` keeps)."""
    return (pictures.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


@torch.no_grad()
def make_samples(model, recipe: Recipe, registry, *, images: int, masks: int, seed: int,
                 device: torch.device) -> dict:
    """Pictures for the report: the first ``images`` test images under this model's masks, reconstructed
    (``pictures`` uint8 ``[K, 4, C, H, W]``: original, masked, reconstruction, reconstruction + visible; only the
    first two when the target has no pixel form), and ``masks`` mask samples (bool ``[M, N]``) with the first
    ``M`` test images (``mask_images``, uint8 ``[M, C, H, W]``), the same in every variant, to draw them on. A
    masker that looks at the images or the model draws its masks on those images; a blind one draws them from
    ``seed`` alone."""
    from maskkit.patches import upsample_mask
    from maskkit.visualize import _denormalize, reconstruction_rows

    grid = tuple(model.grid)
    out: dict[str, Any] = {"grid": list(grid)}
    gen = torch.Generator().manual_seed(seed)
    if masks or images:  # the first test images, loaded once for both
        first, test_set = _first_test_images(recipe, registry, model, max(masks, images), device)
    if not masks:
        out["masks"] = torch.zeros(0, grid[0] * grid[1], dtype=torch.bool)
    else:
        batch = first[:masks]
        if {"images", "model"} & set(model.masker_context()):  # drawn on those images, on the device
            out["masks"] = model.draw_mask(batch.shape[0], torch.Generator(device=device).manual_seed(seed), device,
                                           images=batch).cpu()
        else:
            out["masks"] = model.draw_mask(masks, gen, "cpu").cpu()  # checked against what the masker declares
        out["mask_images"] = _uint8(_denormalize(batch, test_set.mean, test_set.std))[:out["masks"].shape[0]]
    if not images:
        return out
    batch = first[:images]
    mask = model.draw_mask(batch.shape[0], torch.Generator(device=device).manual_seed(seed), device, images=batch)
    k = batch.shape[0]
    try:
        rows = reconstruction_rows(model, batch, mask, test_set.mean, test_set.std)  # [K * 4, C, H, W]
        pictures = rows.reshape(k, 4, *rows.shape[1:])
    except ValueError:  # a target without pixel form: original and masked only
        original = _denormalize(batch, test_set.mean, test_set.std)
        pixel_mask = upsample_mask(mask, grid, model.encoder.patch_size).to(original.dtype)
        masked = original * (1 - pixel_mask) + 0.5 * pixel_mask
        pictures = torch.stack([original, masked], dim=1)
    out["pictures"] = _uint8(pictures)
    out["image_masks"] = mask.cpu()
    return out


def evaluate_run(model, run: RunPlan, plan: Plan, out_dir: Path, *, registry, device: torch.device) -> dict:
    """Score ``model`` (trained by ``run``) on frozen features and write ``eval.json`` and ``samples.pt``."""
    from maskkit.engine.checkpoint import save_atomic
    from maskkit.evaluate import evaluate

    run_dir = run.run_dir(out_dir)
    recipe = _eval_recipe(run, plan)
    start = time.perf_counter()

    def score(baseline: bool) -> dict:
        return evaluate(model, recipe, device=device, registry=registry, baseline=baseline,
                        linear=plan.eval.linear, train_images=plan.eval.train_images,
                        test_images=plan.eval.test_images)

    settings = eval_settings(plan)
    scores = shared_baseline(out_dir, baseline_key(run.recipe, settings), score) if plan.eval.baseline \
        else score(False)
    elapsed = time.perf_counter() - start
    images = timing_images(model, recipe, registry, plan.batch_size) if "images" in model.masker_context() else None
    scores["masker_ms_per_batch"] = time_masker(model, plan.batch_size, device, seed=run.seed, images=images)
    samples = make_samples(model, recipe, registry, images=plan.eval.reconstructions,
                           masks=plan.eval.mask_samples, seed=run.seed, device=device)
    save_atomic(samples, run_dir / SAMPLES_FILE)
    if plan.eval.finetune is not None:  # end-to-end fine-tuning of this run's checkpoint, in run_dir/finetune
        scores |= _finetune_scores(run, plan, out_dir, registry=registry, device=device, settings=settings)
    scores = {**scores, "eval_time_s": elapsed, "device": str(device), "settings": settings}
    write_json(run_dir / EVAL_FILE, scores)
    return scores


def _finetune_scores(run: RunPlan, plan: Plan, out_dir: Path, *, registry, device: torch.device,
                     settings: dict) -> dict:
    """``finetune_top1``/``top5`` of ``run``'s checkpoint fine-tuned by ``plan.eval.finetune``; with the
    random-init baseline on, also ``random_init_finetune_*``: the same fine-tuning from the same architecture
    at random initialisation, run once per seed and encoder (in ``OUT/baselines/finetune-KEY``) and shared."""
    from maskkit.finetune.evaluation import finetune_evaluation

    run_dir = run.run_dir(out_dir)
    key = baseline_key(run.recipe, {**settings, "finetune": plan.eval.finetune})

    def tune(baseline: bool) -> dict:
        common = dict(seed=run.seed, data_seed=plan.data_seed, device=str(device), registry=registry,
                      progress=False)
        tuned = finetune_evaluation(run_dir / CHECKPOINT_NAME, plan.eval.finetune, run_dir / "finetune", **common)
        found = {f"finetune_{k}": tuned[k] for k in ("top1", "top5") if k in tuned}
        found["finetune_time_s"] = tuned["wall_time_s"]
        if baseline:
            untrained = finetune_evaluation(run_dir / CHECKPOINT_NAME, {**plan.eval.finetune, "init": "random"},
                                            out_dir / BASELINE_DIR / f"finetune-{key}", **common)
            found |= {f"{RANDOM_INIT_PREFIX}finetune_{k}": untrained[k] for k in ("top1", "top5") if k in untrained}
        return found

    return shared_baseline(out_dir, f"finetune-{key}", tune) if plan.eval.baseline else tune(False)


# -- one run ------------------------------------------------------------------------------------------------


def execute_run(run: RunPlan, plan: Plan, out_dir: str | Path, *, registry=None, console: Console | None = None,
                progress: bool = True, retry_failed: bool = False) -> RunStatus:
    """Bring ``run`` to finished: train (from scratch or from its checkpoint), then evaluate. Any error (a
    diverged loss, a bad component argument, a plugin's exception, a full disk) marks the run failed with its
    one-line reason, returned in the status; only a signal propagates, as a :class:`~maskkit.errors.
    RunInterrupted` naming the command that continues (the checkpoint stays for a resume): training stops at
    its next step boundary, anything else (loading, evaluating) at once."""
    from maskkit.registry import default_registry

    out_dir = Path(out_dir)
    registry = registry or default_registry()
    console = console or Console(stderr=True)
    status = run_status(run, plan, out_dir)
    if status.state == DONE or (status.state == FAILED and not retry_failed):
        return status
    run_dir = run.run_dir(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / EVAL_FILE).unlink(missing_ok=True)
    step = status.step
    resume = step > 0 and step < run.steps
    if step == 0:  # a fresh start: nothing of an earlier attempt may leak into this run's records
        for name in ("metrics.jsonl", TIMING_FILE, SAMPLES_FILE):
            (run_dir / name).unlink(missing_ok=True)
    write_json(run_dir / STATUS_FILE, {"run": run.run_id, "status": "running", "started": time.time(),
                                       "pid": os.getpid()})
    again = continue_command(plan, out_dir)
    trained = False  # whether a signal stops the evaluation, or the training
    try:
        with raise_on_signal():  # a signal outside the training loop stops at once, with what to do next
            recipe = Recipe(run.recipe, plan.spec_file)
            if step < run.steps:
                clocked = registry.with_objects({"maskkit-compare-clock": TrainingClock(run_dir)})  # timing.json
                trainer = Trainer(recipe, run_dir, registry=clocked, console=console, progress=progress,
                                  resume=run_dir / CHECKPOINT_NAME if resume else None)
                trainer.fit()
                trained = True
                if trainer.signals.signum is not None:  # it came after the last step boundary
                    raise SignalReceived(trainer.signals.signum)
                model, device = trainer.model, trainer.device
            else:
                from maskkit.engine.checkpoint import load_model

                trained = True
                device = pick_device(recipe.train.device)
                model = load_model(run_dir / CHECKPOINT_NAME, registry=registry)[0].to(device)
            evaluate_run(model, run, plan, out_dir, registry=registry, device=device)
    except RunInterrupted as exc:  # Ctrl-C / SIGTERM: the comparison stops (the checkpoint stays for a resume)
        raise RunInterrupted(exc.signum, exc.step, exc.checkpoint, again if exc.resume else None) from None
    except SignalReceived as exc:  # the same, outside the training loop's step boundaries
        raise _stopped(run, out_dir, exc.signum, again, trained) from None
    except Exception as exc:  # any other failure is this run's: recorded, and the comparison goes on
        _, reason = describe_failure(exc, registry.plugin_of)
        write_json(run_dir / STATUS_FILE, {"run": run.run_id, "status": FAILED, "error": reason,
                                           "time": time.time(), "recipe": run.recipe})  # what failed
        return RunStatus(run, FAILED, checkpoint_step(run_dir / CHECKPOINT_NAME) or 0, reason)
    write_json(run_dir / STATUS_FILE, {"run": run.run_id, "status": DONE, "time": time.time()})
    return RunStatus(run, DONE, run.steps)


def continue_command(plan: Plan, out_dir: Path) -> str:
    """The command that continues this comparison where a stop left it."""
    return f"maskkit compare {shlex.quote(str(plan.spec_file))} --out {shlex.quote(str(out_dir))}"


def _stopped(run: RunPlan, out_dir: Path, signum: int, again: str, trained: bool) -> RunInterrupted:
    """The error of ``run`` stopped by signal ``signum`` outside its training loop's step boundaries (while
    evaluating, once ``trained``; else while loading or setting up): its checkpoint is the last one saved, and
    ``again`` continues the comparison."""
    checkpoint = run.run_dir(out_dir) / CHECKPOINT_NAME
    step = checkpoint_step(checkpoint) or 0
    during = f"while evaluating {run.run_id}, trained to step {step}" if trained else f"while training {run.run_id}"
    return RunInterrupted(signum, step, checkpoint if step else None, again if step else None, during=during)


# -- many runs ------------------------------------------------------------------------------------------------


@attrs.frozen
class CompareOutcome:
    """What one invocation did: run ids by what happened to them."""

    plan: Plan
    out_dir: Path
    trained: tuple[str, ...] = ()
    resumed: tuple[str, ...] = ()
    evaluated: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    errors: dict = attrs.field(factory=dict)
    report_dir: Path | None = None


def gpu_slots(gpus: str | Sequence[str] | None) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each worker. ``"auto"``: every visible GPU when there are two or
    more (one or none: an empty list, i.e. runs in this process); ``"none"``: none; ``"0,2"``: those."""
    if gpus is None or gpus == "none":
        return []
    if gpus == "auto":
        if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
            return []
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
        return ids[:torch.cuda.device_count()] if ids else [str(i) for i in range(torch.cuda.device_count())]
    items = gpus.split(",") if isinstance(gpus, str) else list(gpus)
    slots = [str(g).strip() for g in items if str(g).strip()]
    if not slots:
        raise MaskkitError(f"--gpus: expected auto, none or a list such as 0,1; got {gpus!r}")
    return slots


@attrs.frozen
class RunLines:
    """Prints one plain line per run event of one invocation (see :mod:`maskkit.compare.events`): ``[i/n]``
    numbers ``todo``, the runs to do, in their order; a run in a worker process is prefixed with its GPU."""

    plan: Plan
    out_dir: Path
    console: Console
    todo: tuple[RunStatus, ...]

    def _where(self, run: RunPlan, slot: str | None) -> str:
        index = next(i for i, s in enumerate(self.todo) if s.run.run_id == run.run_id)
        return position(index, len(self.todo), slot)

    def started(self, run: RunPlan, slot: str | None = None) -> None:
        """``run`` is about to go (in the worker process of ``slot``, if given)."""
        status = next(s for s in self.todo if s.run.run_id == run.run_id)
        log = run_log(run, self.out_dir, worker=True) if slot is not None else None
        say(self.console, started_line(self._where(run, slot), run, status.state, status.step, log))

    def ended(self, status: RunStatus, slot: str | None = None) -> None:
        """``status.run`` has ended as ``status`` says (in the worker process of ``slot``, if given)."""
        log = run_log(status.run, self.out_dir, worker=slot is not None)
        say(self.console, ended_line(self._where(status.run, slot), status.run, self.plan, self.out_dir,
                                     status.state, status.error, log))


def worker_status(run: RunPlan, plan: Plan, out_dir: Path, code: int | None) -> RunStatus:
    """Where ``run`` stands after its worker process exited with ``code``: its recorded failure, or the exit
    status and the step it reached when the worker recorded none (killed, stopped by a signal)."""
    status = run_status(run, plan, out_dir)
    if status.state == DONE or status.error is not None:
        return status
    return attrs.evolve(status, error=f"worker exited with status {code} at step {status.step}")


def _naming_log(status: RunStatus, out_dir: Path) -> RunStatus:
    """A worker's failed run, its reason followed by where its worker's whole output is."""
    if status.error is None:
        return status
    return attrs.evolve(status, error=f"{status.error}; see {run_log(status.run, out_dir, worker=True)}")


def _run_workers(runs: list[RunPlan], out_dir: Path, slots: list[str], retry_failed: bool, *, plan: Plan,
                 lines: RunLines | None = None) -> dict[str, RunStatus]:
    """One worker process per slot (``CUDA_VISIBLE_DEVICES=slot``), each taking the next run when free. Each
    worker's output goes to its run folder's ``worker.log``; ``lines`` prints when a run starts and how it ended
    (this process learns it). Returns where each run stands once its worker ended (:func:`worker_status`). A
    SIGINT or SIGTERM stops the workers (each saves its checkpoint) and raises
    :class:`~maskkit.errors.WorkersInterrupted` with the command that continues."""
    ended: dict[str, RunStatus] = {}
    queue = collections.deque(runs)
    active: dict[str, tuple[subprocess.Popen, RunPlan, Any]] = {}
    try:
        with raise_on_signal():  # SIGTERM too (its default would orphan the workers): the finally stops them
            _schedule(queue, active, ended, out_dir, slots, retry_failed, plan, lines)
    except SignalReceived as exc:
        running = tuple(run.run_id for _, run, _ in active.values())
        raise WorkersInterrupted(exc.signum, running, continue_command(plan, out_dir)) from None
    finally:
        for proc, _, _log in active.values():  # interrupted: stop the workers (their checkpoints stay)
            proc.terminate()
        for proc, _, worker_log in active.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            worker_log.close()
    return ended


def _schedule(queue: collections.deque, active: dict, ended: dict[str, RunStatus], out_dir: Path, slots: list[str],
              retry_failed: bool, plan: Plan, lines: RunLines | None) -> None:
    """Start the next run of ``queue`` on each free slot, and record where each run stands as its worker ends,
    until every run is done (``active``: the workers running, by slot)."""
    while queue or active:
        for slot in slots:
            if slot not in active and queue:
                run = queue.popleft()
                run_dir = run.run_dir(out_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                log = open(run_dir / WORKER_LOG, "a")
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": slot}
                cmd = [sys.executable, "-m", "maskkit.compare.worker", str(out_dir), run.run_id]
                if retry_failed:
                    cmd.append("--retry-failed")
                active[slot] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), run, log)
                if lines is not None:
                    lines.started(run, slot)
        time.sleep(0.5)
        for slot, (proc, run, log) in list(active.items()):
            code = proc.poll()
            if code is None:
                continue
            log.close()
            del active[slot]
            ended[run.run_id] = worker_status(run, plan, out_dir, code)
            if lines is not None:
                lines.ended(ended[run.run_id], slot)


def run_comparison(plan: Plan, out_dir: str | Path, *, registry=None, console: Console | None = None,
                   progress: bool = True, gpus: str | Sequence[str] | None = "auto", retry_failed: bool = False,
                   spec_text: str | None = None, report: bool = True) -> CompareOutcome:
    """Run every unfinished run of ``plan`` into ``out_dir``, then write the report."""
    out_dir = Path(out_dir)
    console = console or Console(stderr=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec_text is not None:
        (out_dir / "spec.yaml").write_text(spec_text)
    statuses = [run_status(run, plan, out_dir) for run in plan.runs]  # refuses a mismatched folder up front
    plan.save(out_dir / PLAN_FILE)
    todo = [s for s in statuses if s.state not in (DONE,) and not (s.state == FAILED and not retry_failed)]
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for s in statuses:
        groups[s.state].append(s.run.run_id)
    console.print(f"{len(plan.runs)} runs: {len(groups[DONE])} finished, {len(groups[PARTIAL])} to resume, "
                  f"{len(groups[TRAINED])} to evaluate, {len(groups[PENDING])} to train"
                  + (f", {len(groups[FAILED])} failed earlier" + ("" if retry_failed else " (--retry-failed)")
                     if groups[FAILED] else ""))
    slots = gpu_slots(gpus) if todo else []
    lines = RunLines(plan, out_dir, console, tuple(todo))
    if len(slots) > 1 and len(todo) > 1:
        ended = _run_workers([s.run for s in todo], out_dir, slots, retry_failed, plan=plan, lines=lines)
        results = [_naming_log(ended[s.run.run_id], out_dir) for s in todo]
    else:
        results = []
        for s in todo:
            lines.started(s.run)
            results.append(execute_run(s.run, plan, out_dir, registry=registry, console=console,
                                       progress=progress, retry_failed=retry_failed))
            lines.ended(results[-1])
    final = {r.run.run_id: r for r in results}
    failed = [s.run.run_id for s in statuses if s.state == FAILED and s.run.run_id not in final]
    failed += [rid for rid, r in final.items() if r.state != DONE]
    errors = {rid: (final[rid].error if rid in final else next(s.error for s in statuses if s.run.run_id == rid))
              for rid in failed}
    for rid, error in errors.items():
        console.print(f"[red]{escape(rid)} failed:[/red] {escape(str(error))}")
    outcome = CompareOutcome(
        plan, out_dir,
        trained=tuple(s.run.run_id for s in todo if s.state == PENDING and final[s.run.run_id].state == DONE),
        resumed=tuple(s.run.run_id for s in todo if s.state == PARTIAL and final[s.run.run_id].state == DONE),
        evaluated=tuple(s.run.run_id for s in todo if s.state == TRAINED and final[s.run.run_id].state == DONE),
        skipped=tuple(groups[DONE]), failed=tuple(failed), errors=errors)
    if report:
        from maskkit.compare.report import write_report

        outcome = attrs.evolve(outcome, report_dir=write_report(out_dir, plan))
    return outcome
