"""Measurements a comparison adds to each run: its training wall time across resumes (:class:`TrainingClock`,
a plugin on the engine's hooks), the masker's own time per batch, and the random-init baseline scored once per
seed and encoder rather than once per run."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from maskkit.compare.files import TIMING_FILE, read_json, write_json
from maskkit.registry import hookimpl

BASELINE_DIR = "baselines"
RANDOM_INIT_PREFIX = "random_init_"


class TrainingClock:
    """Writes ``timing.json`` into a run folder: the training wall time of each session up to each checkpoint,
    so the wall time of a resumed run counts the work that its final checkpoint contains exactly once (see
    :func:`maskkit.compare.files.training_time`). A plugin on the engine's hooks, one per run."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / TIMING_FILE
        self.timing: dict = {"sessions": []}
        self.t0 = time.perf_counter()

    @hookimpl
    def maskkit_train_start(self, trainer) -> None:
        timing = read_json(self.path) if trainer.step > 0 else None  # resumed: keep the earlier sessions
        if not isinstance(timing, dict) or not isinstance(timing.get("sessions"), list):
            timing = {"sessions": []}
        timing["sessions"].append({"start_step": trainer.step, "marks": []})
        self.timing, self.t0 = timing, time.perf_counter()
        if trainer.dist.is_main:
            write_json(self.path, timing)

    @hookimpl(tryfirst=True)  # before other plugins' reactions to the checkpoint (one may stop the run)
    def maskkit_checkpoint_saved(self, step: int) -> None:
        self.timing["sessions"][-1]["marks"].append([step, time.perf_counter() - self.t0])
        write_json(self.path, self.timing)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_masker(model, batch_size: int, device: torch.device, *, repeats: int = 20, seed: int = 0,
                images: torch.Tensor | None = None) -> float | None:
    """Milliseconds the model's masker takes to draw one batch's masks (``model.draw_mask``, ``batch_size`` x
    the patch grid) on ``device``: the median of ``repeats`` draws after two warm-up draws, the device synced
    around each, without gradients. A masker that looks at the images (or runs the model on them) draws on
    ``images [batch_size, C, H, W]``; ``None`` when it needs them and none are given."""
    if images is None and "images" in model.masker_context():
        return None
    context = {} if images is None else {"images": images.to(device)}
    gen = torch.Generator(device=device).manual_seed(seed)
    times = []
    for i in range(repeats + 2):
        _sync(device)
        start = time.perf_counter()
        model.draw_mask(batch_size, gen, device, **context)
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    times.sort()
    return 1000 * times[len(times) // 2]


def timing_images(model, recipe, registry, batch_size: int) -> torch.Tensor:
    """``[batch_size, C, H, W]``: the first test images of ``recipe``'s data at ``model``'s image size,
    evaluation-transformed (repeated when the split is smaller), for maskers that look at the batch."""
    from maskkit.builder import build_dataset
    from maskkit.evaluate import eval_loader

    test_set = build_dataset(recipe, "test", registry)
    chunks, have = [], 0
    for images, _ in eval_loader(test_set, model.encoder.img_size, batch_size):
        chunks.append(images)
        have += images.shape[0]
        if have >= batch_size:
            break
    images = torch.cat(chunks)
    return images.repeat((batch_size + images.shape[0] - 1) // images.shape[0], 1, 1, 1)[:batch_size]


def baseline_key(recipe_tree: dict, settings: dict) -> str:
    """What the random-init score depends on: the seed (it sets the initialisation), the encoder, the data and
    the evaluation settings; variants at one seed that share these share the baseline."""
    parts = {"seed": recipe_tree.get("seed"), "encoder": recipe_tree.get("encoder"), "data": recipe_tree.get("data"),
             "augment": recipe_tree.get("augment"), "settings": settings}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shared_baseline(out_dir: Path, key: str, score: Callable[[bool], dict[str, Any]]) -> dict[str, Any]:
    """``score(baseline)`` (an ``evaluate`` call), with its ``random_init_*`` scores taken from
    ``OUT/baselines/KEY.json`` when another run already made them, and written there when this run makes them."""
    path = Path(out_dir) / BASELINE_DIR / f"{key}.json"
    cached = read_json(path)
    if isinstance(cached, dict) and cached:
        return {**score(False), **cached, "random_init_shared": True}
    scores = score(True)
    found = {k: v for k, v in scores.items() if k.startswith(RANDOM_INIT_PREFIX)}
    if found:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, found)
    return scores
