"""Evaluate a trained model from its recipe: frozen-feature kNN (and optionally a linear probe), compared with
the same encoder at its random initialisation, and a reconstruction picture. Used after ``maskkit train`` and
by ``maskkit eval``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import BatchSampler, SequentialSampler

from maskkit.builder import build_dataset, build_model, build_test_split
from maskkit.data.loading import AugmentedDataset, BadBatch, make_loader
from maskkit.data.transforms import EvalTransform
from maskkit.engine.run_folder import write_text_atomic
from maskkit.errors import ConfigError
from maskkit.eval import extract_features, knn_accuracy, linear_probe
from maskkit.model import MaskedModel
from maskkit.recipe import Recipe
from maskkit.registry import Registry, default_registry
from maskkit.visualize import save_reconstructions


class SubsetView:
    """The images ``indices`` of ``base``, keeping its ``mean`` and ``std`` (what the eval transform needs)."""

    def __init__(self, base: Any, indices: torch.Tensor):
        self.base, self.indices = base, [int(i) for i in indices]
        self.mean, self.std = base.mean, base.std

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.base[self.indices[index]]


def subset(dataset: Any, count: int | None, seed: int = 0) -> Any:
    """``count`` images of ``dataset`` drawn without replacement by ``seed`` (in dataset order), or the whole
    dataset when ``count`` is None or not smaller: the same images for every run that asks the same."""
    if count is None or count >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    return SubsetView(dataset, order.sort().values)


def eval_loader(dataset: Any, img_size: tuple[int, int], batch_size: int, num_workers: int = 0, *,
                skipped: dict[str, str] | None = None) -> Iterable[Any]:
    """A loader over ``dataset`` in its natural order with the deterministic eval transform, yielding
    ``(images [B, C, H, W], labels [B])``. An unreadable image raises
    :class:`~maskkit.errors.UnreadableImageError` naming it, unless ``skipped`` is given
    (``data.on_bad_image: skip``): it is then left out of its batch and recorded there (path -> reason)."""
    data = AugmentedDataset(dataset, EvalTransform(img_size, dataset.mean, dataset.std),
                            catch_bad=skipped is not None)
    batches = BatchSampler(SequentialSampler(data), batch_size, drop_last=False)
    loader = make_loader(data, batches, num_workers=num_workers)
    return loader if skipped is None else _readable(loader, skipped)


def _readable(loader: Iterable[Any], skipped: dict[str, str]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of ``loader`` (over an ``AugmentedDataset(catch_bad=True)``) without their unreadable images,
    which go into ``skipped``; a batch of unreadable images only is left out whole."""
    for batch in loader:
        if isinstance(batch[-1], BadBatch):
            images, labels, info = batch
            skipped.update((bad.path, bad.reason) for bad in info.bad)
            if images is None:
                continue
            batch = (images, labels)
        yield batch


def _same_images(train_set: Any, test_set: Any) -> bool:
    """Whether two splits list the same image files (``samples``, as an ``ImageFolder`` has), in the same order."""
    samples = getattr(train_set, "samples", None)
    return samples is not None and samples == getattr(test_set, "samples", None)


def frozen_features(model: MaskedModel, dataset: Any, *, device: torch.device, pool: str, batch_size: int,
                    amp_dtype: torch.dtype | None = None,
                    skipped: dict[str, str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled encoder features ``[M, D]`` and labels ``[M]`` of ``dataset`` (no augmentation); ``skipped``: see
    :func:`eval_loader`."""
    loader = eval_loader(dataset, model.encoder.img_size, batch_size, skipped=skipped)
    return extract_features(model.encoder, loader, device=device, pool=pool, amp_dtype=amp_dtype)


def evaluate(model: MaskedModel, recipe: Recipe, *, device: torch.device, registry: Registry | None = None,
             run_dir: Path | None = None, baseline: bool | None = None, linear: bool | None = None,
             train_images: int | None = None, test_images: int | None = None) -> dict:
    """kNN top-1 (k, temperature, pooling from the recipe's ``eval`` section) of the model's frozen encoder;
    with ``baseline`` also of the same architecture at its initialisation (built from the recipe's seed),
    with ``linear`` a linear probe. ``train_images`` / ``test_images`` score on a fixed subset of that many
    images (a quick look; :func:`subset`). Writes ``eval.json`` and ``reconstructions.png`` into ``run_dir``.
    With ``data.on_bad_image: skip`` unreadable images are left out, their count in ``unreadable_images``."""
    registry = registry or default_registry()
    cfg = recipe.eval
    baseline = cfg.random_init_baseline if baseline is None else baseline
    linear = cfg.linear if linear is None else linear
    train_set = build_dataset(recipe, "train", registry, in_chans=model.encoder.in_chans)
    test_set = build_test_split(recipe, train_set, registry, in_chans=model.encoder.in_chans)  # training's labels
    train_set, test_set = subset(train_set, train_images), subset(test_set, test_images)
    amp = torch.bfloat16 if device.type == "cuda" else None
    results: dict[str, Any] = {"k": cfg.k, "temperature": cfg.temperature, "pool": cfg.pool,
                               "train_images": len(train_set), "test_images": len(test_set)}
    skipped: dict[str, str] | None = {} if recipe.on_bad_image == "skip" else None
    # no test split of its own (an image_folder without test_root or val/): each test image is its own nearest
    # neighbour in the bank, so it is scored against the other images (the probe still scores what it fit)
    test_is_train = _same_images(train_set, test_set)
    if test_is_train:
        results["test_is_train"] = True

    def score(candidate: MaskedModel, prefix: str) -> None:
        train_f, train_y = frozen_features(candidate, train_set, device=device, pool=cfg.pool,
                                           batch_size=cfg.batch_size, amp_dtype=amp, skipped=skipped)
        test_f, test_y = frozen_features(candidate, test_set, device=device, pool=cfg.pool,
                                         batch_size=cfg.batch_size, amp_dtype=amp, skipped=skipped)
        if skipped:
            results["unreadable_images"] = len(skipped)
            for split, features in (("train", train_f), ("test", test_f)):
                if features.shape[0] == 0:
                    raise ConfigError("data", f"the {split} split has no readable image to evaluate on "
                                      f"(data.on_bad_image: skip left out {len(skipped)} unreadable)", file=recipe.file)
        if train_y.min() < 0:
            results[f"{prefix}knn_top1"] = None  # unlabelled data
            return
        # the bank and the probe on the model's device: on a GPU, ImageNet-size kNN products take seconds there
        results[f"{prefix}knn_top1"] = knn_accuracy(train_f.to(device), train_y, test_f, test_y, k=cfg.k,
                                                    temperature=cfg.temperature, leave_one_out=test_is_train)
        if linear:  # on the CPU, one thread: the probe's steps are small and threads only wait on each other
            results[f"{prefix}linear_top1"] = linear_probe(train_f, train_y, test_f, test_y, seed=recipe.seed,
                                                          device=device, num_threads=1).top1

    score(model, "")
    if baseline:
        torch.manual_seed(recipe.seed)
        initial = build_model(recipe, registry).to(device)
        score(initial, "random_init_")
        del initial
    if run_dir is not None:
        run_dir = Path(run_dir)
        if cfg.reconstructions:
            count = min(cfg.reconstructions, len(test_set))
            images = next(iter(eval_loader(test_set, model.encoder.img_size, count, skipped=skipped)))[0].to(device)
            try:
                save_reconstructions(model, images, run_dir / "reconstructions.png", mean=test_set.mean,
                                     std=test_set.std, seed=recipe.seed)
                results["reconstructions"] = "reconstructions.png"
            except ValueError:  # a target without pixel form (HOG, features)
                pass
        # atomic: compare takes an eval.json as a finished evaluation
        write_text_atomic(run_dir / "eval.json", json.dumps(results, indent=2) + "\n")
    return results
