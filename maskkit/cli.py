"""The ``maskkit`` command line. Each sub-command is one function; errors are one line and exit status 2.

    maskkit train RECIPE [key.path=value ...] [--out DIR] [--resume CKPT]
    maskkit finetune CHECKPOINT [key.path=value ...] [--recipe R] [--out DIR] [--resume CKPT]
    maskkit compare SPEC.yaml [--out DIR] [--gpus auto]
    maskkit bench [--device cuda] [--models vit_base_patch16,vit_large_patch16]
    maskkit eval knn|linear CHECKPOINT
    maskkit visualize CHECKPOINT [--out recon.png]
    maskkit export CHECKPOINT --out encoder.pth [--format timm|transformers]
    maskkit convert SOURCE --out ckpt.pth [key.path=value ...]
    maskkit plugins | maskkit recipes | maskkit list KIND [PATTERN]

Any command takes ``--plugin PATH.py|MODULE`` (repeatable, before or after the command) to load a plugin that
is not installed, like ``pytest -p``; ``MASKKIT_PLUGINS`` does the same from the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from maskkit.console import make_console
from maskkit.errors import MaskkitError, RunInterrupted, describe_failure

Command = Callable[[argparse.Namespace, Console], int]


def _registry(args: argparse.Namespace | None = None):
    """The registry of this invocation: the installed plugins plus those of ``--plugin`` (built once)."""
    from maskkit.registry import PLUGINS_ENV, plugin_specs_from_env, registry_for

    if getattr(args, "_registry", None) is None:
        requested = getattr(args, "plugins", None) or ()
        registry = registry_for(requested)
        if getattr(args, "func", None) is not cmd_plugins:  # `maskkit plugins` lists the failures instead
            registry.require_loaded(requested, key="--plugin").require_loaded(plugin_specs_from_env(),
                                                                              key=PLUGINS_ENV)
        if args is None:
            return registry
        args._registry = registry
    return args._registry


def split_plugin_options(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(plugins, rest)``: the values of every ``--plugin X`` / ``--plugin=X`` anywhere before ``--``, and the
    other arguments (so the option works before or after the sub-command)."""
    plugins: list[str] = []
    rest: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if item == "--":
            rest.extend(items[i:])
            break
        if item == "--plugin":
            if i + 1 >= len(items):
                raise MaskkitError("--plugin: expected a plugin file (x.py) or a module name")
            plugins.append(items[i + 1])
            i += 2
            continue
        if item.startswith("--plugin="):
            plugins.append(item.partition("=")[2])
        else:
            rest.append(item)
        i += 1
    return plugins, rest


def _default_run_dir(recipe_source: str) -> Path:
    stem = Path(recipe_source).stem or "run"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


# -- train --------------------------------------------------------------------------------------------------


def _looks_like_override(arg: str) -> bool:
    """``train.epochs=1`` (a dotted key, ``=``, a value), not a path with an ``=`` in it (``sweep/lr=1e-3/r.yaml``)."""
    return re.match(r"[A-Za-z_][\w.]*=", arg) is not None


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    import torch

    from maskkit.engine.checkpoint import load_resumable_checkpoint
    from maskkit.engine.trainer import Trainer
    from maskkit.evaluate import evaluate
    from maskkit.recipe import Recipe, load_recipe

    registry = _registry(args)
    if args.recipe is None and args.resume is None:
        raise MaskkitError("train: give a RECIPE (a .yaml path or a name from `maskkit recipes`), or --resume")
    override_first = args.recipe is not None and _looks_like_override(args.recipe) and not Path(args.recipe).exists()
    if override_first and args.resume is None:
        raise MaskkitError(f"train: {args.recipe!r} is an override, not a recipe: give a RECIPE (a .yaml path or a "
                           "name from `maskkit recipes`) before the overrides, or --resume")
    if args.recipe is None or override_first:  # `maskkit train --resume ckpt a.b=1`: recipe from checkpoint
        if args.recipe is not None:
            args.overrides.insert(0, args.recipe)
        # mapped, not read: only its recipe is needed here; the Trainer reads the weights and optimizer state
        state = load_resumable_checkpoint(args.resume, mmap=True)
        recipe = Recipe(state["recipe"], f"{args.resume}:recipe").with_overrides(args.overrides)
        recipe.validate()
    else:  # a new run records its --plugin files, so its checkpoint is resumed or evaluated without them
        recipe = load_recipe(args.recipe, args.overrides, registry=registry).with_plugins(args.plugins or ())
    out = Path(args.out) if args.out else (Path(args.resume).parent if args.resume else _default_run_dir(args.recipe))
    # the trainer locks `out`, refuses one that holds a run (unless resumed) and reuses one left by a crash
    trainer = Trainer(recipe, out, registry=registry, resume=args.resume, console=console,
                      progress=not args.no_progress, check_test_split=recipe.eval.knn and not args.no_eval)
    result = trainer.fit()
    if not trainer.dist.is_main:
        trainer.dist.shutdown()
        return 0
    if result.trained_steps == 0:  # resumed at its last step
        console.print(f"nothing to train: the run is already at step {result.steps}; run folder: {out}")
    else:
        resumed = f" (from step {result.steps - result.trained_steps} to {result.steps})" if (
            result.trained_steps != result.steps) else ""
        console.print(f"trained {result.trained_steps} steps{resumed} in {result.wall_time:.1f} s "
                      f"({result.images_per_s:.0f} images/s), final loss {result.final_loss:.4f}; run folder: {out}")
    if recipe.eval.knn and not args.no_eval:
        with torch.no_grad():
            scores = evaluate(trainer.model, recipe, device=trainer.device, registry=registry, run_dir=out)
        _print_eval(console, scores)
    trainer.dist.shutdown()
    return 0


def cmd_finetune(args: argparse.Namespace, console: Console) -> int:
    from maskkit.finetune import FinetuneTrainer, load_finetune_checkpoint, load_finetune_recipe, load_pretrained
    from maskkit.finetune.config import FinetuneRecipe
    from maskkit.finetune.loop import CHECKPOINT_NAME, RESULT_NAME

    registry = _registry(args)
    if args.checkpoint is not None and "=" in args.checkpoint and not Path(args.checkpoint).exists():
        args.overrides.insert(0, args.checkpoint)  # `maskkit finetune --resume ckpt a.b=1`
        args.checkpoint = None
    if args.checkpoint is None and args.resume is None:
        raise MaskkitError("finetune: give a pretrained CHECKPOINT, or --resume a fine-tuning checkpoint")
    pretrained = None
    if args.resume is not None:
        # --resume continues the run with the recipe saved in its checkpoint (the weights are there too); only
        # overrides of the keys that keep it exact (finetune.epochs, max_steps, ...) apply, others are refused
        given = [f"--recipe {args.recipe}"] if args.recipe is not None else []
        given += [f"CHECKPOINT {args.checkpoint}"] if args.checkpoint is not None else []
        if given:
            raise MaskkitError(f"finetune: --resume continues the run with its own recipe, saved in {args.resume}; "
                               f"drop {' and '.join(given)} (overrides such as finetune.epochs=N still apply)")
        state = load_finetune_checkpoint(args.resume, mmap=True)  # its recipe; the trainer reads the rest
        recipe = FinetuneRecipe(state["recipe"], f"{args.resume}:recipe").with_overrides(args.overrides)
        recipe.validate()
    else:
        loaded = load_pretrained(args.checkpoint, registry=registry)
        tree, weights = loaded.recipe, loaded.state_dict
        if not isinstance(tree.get("encoder"), dict):
            raise MaskkitError(f"{args.checkpoint}: no encoder section to build the classifier from")
        recipe = load_finetune_recipe(args.recipe, args.overrides, pretrained_tree=tree, registry=registry)
        pretrained = (tree["encoder"], weights, str(args.checkpoint))
        if int(os.environ.get("RANK", "0") or 0) == 0:  # what the reader assumed, as `maskkit convert` prints it
            for note in loaded.notes:
                console.print(f"note: {note}", highlight=False)
    out = Path(args.out) if args.out else (Path(args.resume).parent if args.resume else
                                           _default_run_dir(f"finetune-{Path(args.checkpoint).parent.name}"))
    # a folder whose run died before its first checkpoint (metrics.jsonl alone) is reused: the trainer clears it
    if args.resume is None and (out / CHECKPOINT_NAME).exists():
        raise MaskkitError(f"{out} already holds a run; continue it with --resume {out / CHECKPOINT_NAME}, or "
                           "give another --out (nothing was overwritten)")
    trainer = FinetuneTrainer(recipe, out, pretrained=pretrained, registry=registry, resume=args.resume,
                              console=console, progress=not args.no_progress)
    result = trainer.fit()
    if trainer.dist.is_main:
        scores = result.scores
        top5 = f", top-5 {100 * scores['top5']:.2f}%" if "top5" in scores else ""
        ema = f"; EMA top-1 {100 * scores['ema_top1']:.2f}%" if "ema_top1" in scores else ""
        done = (f"nothing to fine-tune: the run is already at step {result.steps}; its scores ({RESULT_NAME}):"
                if result.trained_steps == 0 else
                f"fine-tuned {result.steps} steps ({scores['init']} init) in {result.wall_time:.1f} s;")
        console.print(f"{done} test top-1 {100 * scores['top1']:.2f}%{top5}{ema} on {scores['test_images']} images; "
                      f"run folder: {out}", highlight=False)
    trainer.dist.shutdown()
    return 0


def _print_eval(console: Console, scores: dict) -> None:
    table = Table(title=f"frozen-feature kNN (k={scores['k']}, cosine, T={scores['temperature']}, "
                        f"{scores['pool']} pooling; {scores['train_images']} train / {scores['test_images']} test)")
    table.add_column("encoder")
    table.add_column("kNN top-1", justify="right")
    has_linear = "linear_top1" in scores
    if has_linear:
        table.add_column("linear top-1", justify="right")

    def fmt(value):
        return "-" if value is None else f"{100 * value:.2f}%"

    table.add_row("trained", fmt(scores.get("knn_top1")), *( [fmt(scores.get("linear_top1"))] if has_linear else []))
    if "random_init_knn_top1" in scores:
        table.add_row("random init", fmt(scores["random_init_knn_top1"]),
                      *([fmt(scores.get("random_init_linear_top1"))] if has_linear else []))
    console.print(table)
    if scores.get("test_is_train"):
        console.print("no separate test split (data.test_root, or val/ beside train/): each image was scored "
                      "by its nearest other training images (leave-one-out kNN); a linear probe scores the "
                      "images it was fit on")
    if scores.get("unreadable_images"):
        console.print(f"left out {scores['unreadable_images']} unreadable image(s) (data.on_bad_image: skip)")


# -- checkpoints: eval, visualize, export -------------------------------------------------------------------


def _model_from_checkpoint(path: str, overrides: Sequence[str] = (), registry=None):
    """Rebuild the model of a maskkit checkpoint from the recipe stored in it, and load its weights."""
    from maskkit.engine.checkpoint import load_model

    return load_model(path, overrides, registry or _registry())


def cmd_eval(args: argparse.Namespace, console: Console) -> int:
    import torch

    from maskkit.engine.trainer import pick_device
    from maskkit.evaluate import evaluate

    overrides = list(args.overrides)
    if args.data:
        overrides += [f"data.{item}" for item in args.data]
    registry = _registry(args)
    model, recipe = _model_from_checkpoint(args.checkpoint, overrides, registry)
    device = pick_device(args.device, key="--device")
    model.to(device)
    with torch.no_grad():
        scores = evaluate(model, recipe, device=device, registry=registry, baseline=args.baseline,
                          linear=args.method == "linear")
    _print_eval(console, scores)
    return 0


def cmd_visualize(args: argparse.Namespace, console: Console) -> int:
    import torch

    from maskkit.builder import build_dataset
    from maskkit.data.image_folder import ImageFolder
    from maskkit.evaluate import eval_loader
    from maskkit.visualize import save_reconstructions

    _check_positive("--count", args.count)
    model, recipe = _model_from_checkpoint(args.checkpoint, registry=_registry(args))
    if args.images:
        dataset = ImageFolder(args.images, in_chans=model.encoder.in_chans)
    else:
        dataset = build_dataset(recipe, "test", _registry(args), in_chans=model.encoder.in_chans)
    skipped = {} if recipe.on_bad_image == "skip" else None  # unreadable images left out, as in training
    batch = next(iter(eval_loader(dataset, model.encoder.img_size, args.count, skipped=skipped)), None)
    if batch is None:
        raise MaskkitError(f"{dataset.root if args.images else 'the test split'}: no readable image to draw "
                           f"(data.on_bad_image: skip left out {len(skipped or ())} unreadable)")
    images = batch[0]
    with torch.no_grad():
        path = save_reconstructions(model, images, args.out, mean=dataset.mean, std=dataset.std, seed=args.seed)
    console.print(f"wrote {path} (columns: original | masked | reconstruction | reconstruction + visible)")
    return 0


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from maskkit.engine.checkpoint import load_training_checkpoint, require_finite, save_atomic

    state = load_training_checkpoint(args.checkpoint)
    if state.get("kind") == "finetune":
        return _export_finetuned(state, args, console)
    model, recipe = _model_from_checkpoint(args.checkpoint, registry=_registry(args))
    encoder = model.encoder
    state = encoder.export_state_dict()  # the encoder decides: pretraining-only weights (mask tokens) stay out
    require_finite(state, args.checkpoint, "encoder weights")  # a hand-edited or foreign checkpoint may hold NaN
    save_atomic(state, args.out)
    name = getattr(encoder, "model_name", type(encoder).__name__)
    console.print(f"wrote {args.out}: {len(state)} tensors of {name} under timm's names")
    arguments = encoder.export_arguments(recipe.tree["encoder"])
    if arguments is not None:
        kwargs = "".join(f", {k}={v!r}" for k, v in arguments.items())
        console.print(f"load with\n  timm.create_model('{name}', pretrained=True, num_classes=0, "
                      f"pretrained_cfg_overlay=dict(file='{args.out}'){kwargs})", highlight=False, soft_wrap=True)
    return 0


def _export_finetuned(state: dict, args: argparse.Namespace, console: Console) -> int:
    """A fine-tuned classifier is already timm's ViT under timm's names: write its weights (the EMA's when the
    run kept one) and the matching ``timm.create_model`` line (its ``num_classes`` also in the overlay: timm drops
    a pretrained head whose class count differs from the config's)."""
    from maskkit.engine.checkpoint import require_finite, save_atomic
    from maskkit.finetune.loop import finetuned_weights
    from maskkit.finetune.model import timm_classifier_arguments

    weights, which = finetuned_weights(state)
    require_finite(weights, args.checkpoint, which)
    save_atomic(weights, args.out)
    name, kwargs = timm_classifier_arguments(state["encoder"])
    global_pool = (state.get("recipe", {}).get("finetune") or {}).get("global_pool", "avg")
    console.print(f"wrote {args.out}: {len(weights)} tensors ({which}) of the fine-tuned {name} classifier",
                  highlight=False)
    extra = "".join(f", {k}={v!r}" for k, v in kwargs.items() if k != "norm_layer")
    console.print(f"load with\n  timm.create_model('{name}', pretrained=True, num_classes={state['num_classes']}, "
                  f"global_pool={global_pool!r}, pretrained_cfg_overlay=dict(file='{args.out}', "
                  f"num_classes={state['num_classes']}){extra})",
                  highlight=False, soft_wrap=True)
    if "norm_layer" in kwargs:
        console.print(f"note: its layer norms use eps {kwargs['norm_layer'].keywords['eps']:g}: add norm_layer="
                      "functools.partial(torch.nn.LayerNorm, eps=...) for the same outputs", highlight=False)
    return 0


def cmd_export_format(args: argparse.Namespace, console: Console) -> int:
    """``export --format``: timm (:func:`cmd_export`) or a transformers folder."""
    from maskkit.engine.checkpoint import load_training_checkpoint, refuse_replacing_a_run

    if args.format == "transformers":
        from maskkit.interop.transformers_export import export_transformers, write_summary

        result = export_transformers(load_training_checkpoint(args.checkpoint), args.out, _registry(args),
                                     source=args.checkpoint)
        console.print(write_summary(result), highlight=False, soft_wrap=True)
        return 0
    refuse_replacing_a_run(args.out, args.checkpoint)
    status = cmd_export(args, console)
    eps = (load_training_checkpoint(args.checkpoint)["recipe"].get("encoder") or {}).get("norm_eps", 1e-6)
    if eps != 1e-6:  # a converted transformers model (their default eps is 1e-12)
        console.print(f"note: its layer norms use eps {eps:g}: add norm_layer=functools.partial("
                      f"torch.nn.LayerNorm, eps={eps!r}) for the same outputs", highlight=False, soft_wrap=True)
    return status


def cmd_convert(args: argparse.Namespace, console: Console) -> int:
    from maskkit.engine.checkpoint import refuse_replacing_a_run
    from maskkit.interop import load_pretrained, write_checkpoint

    refuse_replacing_a_run(args.out, args.source)
    registry = _registry(args)
    loaded = load_pretrained(args.source, args.overrides, registry=registry)
    write_checkpoint(loaded, args.out, registry=registry, origin=str(args.source))
    encoder = loaded.recipe["encoder"]
    console.print(f"wrote {args.out}: {loaded.source} weights as a maskkit checkpoint ({len(loaded.state_dict)} "
                  f"tensors; encoder {encoder.get('name')}, img_size {encoder.get('img_size')}, patch_size "
                  f"{encoder.get('patch_size')})", highlight=False)
    for note in loaded.notes:
        console.print(f"note: {note}", highlight=False)
    return 0


def cmd_masks_show(args: argparse.Namespace, console: Console) -> int:
    """Draw masks, check them (exit 2 when a sample hides another count than declared, after the picture is
    written), print what they really hide. A masker that looks at the images or the model is drawn on the first
    test images of a recipe (``--recipe``, default ``quickstart``) with a freshly built model."""
    import copy

    import torch

    from maskkit.builder import build_dataset, build_masker, build_model
    from maskkit.evaluate import eval_loader
    from maskkit.interfaces import masker_context
    from maskkit.masking import check_masker
    from maskkit.recipe import Recipe, apply_overrides, load_recipe
    from maskkit.visualize import _denormalize, save_mask_samples

    _check_positive("--count", args.count)
    registry = _registry(args)
    spec = apply_overrides({"masker": {"name": args.name}}, [f"masker.{kv}" for kv in args.arguments],
                           file="command line")["masker"]
    base = load_recipe(args.recipe or "quickstart", registry=registry)  # the encoder a masker is wired to
    recipe = Recipe({**copy.deepcopy(base.tree), "masker": spec}, "command line")
    grid = _parse_grid(args.grid)
    masker = build_masker(recipe, registry, grid=grid)  # a blind masker sized by its grid gets --grid's
    label = " ".join([args.name, *args.arguments])
    seeds = [args.seed + i for i in range(4)]  # the picture shows the first seed's; the counts cover all four
    pictures = None
    if {"images", "model"} & set(masker_context(masker, args.name)) or args.recipe:
        recipe = Recipe(recipe.tree, base.file)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            model = build_model(recipe, registry).eval()
        grid = model.grid
        test_set = build_dataset(recipe, "test", registry)
        images = next(iter(eval_loader(test_set, model.encoder.img_size, args.count)))[0]
        pictures = _denormalize(images, test_set.mean, test_set.std)
        with torch.no_grad():
            stats = check_masker(model.masker, grid, name=args.name, batch_size=images.shape[0], seeds=seeds,
                                 context={"images": images, "model": model}, strict=False)
        where = f" on {images.shape[0]} test images of recipe {args.recipe or 'quickstart'} (grid {grid[0]}x{grid[1]})"
    else:
        stats = check_masker(masker, grid, name=args.name, batch_size=args.count, seeds=seeds, strict=False)
        where = f" on a {grid[0]}x{grid[1]} grid"
    path = save_mask_samples(stats, args.out, count=args.count, images=pictures,
                             title=f"{label}{where} (seed {args.seed})")
    console.print(f"wrote {path}")
    console.print(stats.summary(), soft_wrap=True)
    stats.check()
    return 0


def _check_positive(option: str, value: int) -> None:
    if value < 1:
        raise MaskkitError(f"{option}: expected a positive int, got {value}")


def _parse_grid(text: str) -> tuple[int, int]:
    try:
        h, _, w = text.lower().partition("x")
        grid = (int(h), int(w or h))
    except ValueError:
        raise MaskkitError(f"--grid: expected HxW such as 14x14, got {text!r}") from None
    if min(grid) < 1:
        raise MaskkitError(f"--grid: expected positive sizes, got {text!r}")
    return grid


# -- listings -----------------------------------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace, console: Console) -> int:
    from maskkit.registry import KINDS, Registry

    # must work to diagnose: a misbehaving plugin is listed below
    registry = Registry.from_plugins(strict=False, files=getattr(args, "plugins", None) or ())
    table = Table(title="maskkit components")
    for column in ("kind", "name", "plugin", "version"):
        table.add_column(column, overflow="fold")
    for kind in (*KINDS, "recipe"):
        entries = registry.entries(kind)
        names = sorted(entries)
        if kind == "encoder" and not args.all:  # hundreds of timm ViTs: summarise the built-in ones
            own = [n for n in names if entries[n].plugin != "maskkit"]
            builtin = len(names) - len(own)
            table.add_row(kind, f"{builtin} timm ViTs (vit_*; --all lists them)", "maskkit", entries[names[0]].version)
            names = own
        for name in names:
            entry = entries[name]
            table.add_row(kind, name, *_provenance(entry, registry))
    console.print(table)
    for failure in registry.failures:
        console.print(f"[red]plugin {escape(repr(failure.name))} failed to load:[/red] {escape(failure.error)}",
                      soft_wrap=True)
    return 0


def _provenance(entry, registry) -> tuple[str, str]:
    """``(plugin, version)`` as shown: a one-file plugin by its path (relative to here when inside) and the
    start of its content hash."""
    source = registry.sources.get(entry.plugin)
    if source is None or source.file is None:
        return entry.plugin, entry.version
    path = Path(source.file)
    try:
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    return str(path), entry.version[:19]


def cmd_recipes(args: argparse.Namespace, console: Console) -> int:
    table = Table(title="recipes")
    for column in ("name", "plugin", "path"):
        table.add_column(column)
    for name, entry in sorted(_registry(args).entries("recipe").items()):
        table.add_row(name, entry.plugin, str(entry.factory))
    console.print(table)
    return 0


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    for name in _registry(args).list(args.kind, args.pattern):
        console.print(name, highlight=False)
    return 0


# -- parser -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskkit", description="Pluggable masked image modeling.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--plugin", action="append", default=[], dest="plugins", metavar="PATH.py|MODULE",
                        help="load a plugin file or module that is not installed (repeatable; before or after the "
                             f"command; also from MASKKIT_PLUGINS, separated by {os.pathsep!r})")
    sub = parser.add_subparsers(dest="command", required=True)
    from maskkit.compare.cli import add_parser as add_compare_parser

    add_compare_parser(sub)
    from maskkit.bench.cli import add_parser as add_bench_parser

    add_bench_parser(sub)

    p = sub.add_parser("train", help="train from a recipe")
    p.add_argument("recipe", nargs="?", help="recipe .yaml path or registered name (optional with --resume)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. masker.ratio=0.5 train.epochs=2")
    p.add_argument("--out", help="run folder (default runs/RECIPE-TIME; with --resume, the checkpoint's folder)")
    p.add_argument("--resume", help="checkpoint to continue from")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="fine-tune a pretrained encoder end to end for classification")
    p.add_argument("checkpoint", nargs="?", help="pretrained checkpoint (optional with --resume)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. finetune.epochs=2 finetune.layer_decay=0.65")
    p.add_argument("--recipe", help="fine-tuning recipe .yaml or registered name, e.g. finetune_quickstart "
                                    "(default: the MAE ViT-B settings, the checkpoint's data)")
    p.add_argument("--out", help="run folder (default runs/finetune-NAME-TIME; with --resume, the checkpoint's)")
    p.add_argument("--resume", help="fine-tuning checkpoint to continue from, with its own recipe (no CHECKPOINT "
                                    "or --recipe; overrides of finetune.epochs, max_steps, ... apply)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("eval", help="evaluate a checkpoint's frozen encoder")
    p.add_argument("method", choices=["knn", "linear"])
    p.add_argument("checkpoint")
    p.add_argument("overrides", nargs="*", help="recipe overrides, e.g. eval.k=10")
    p.add_argument("--data", nargs="*", default=[], metavar="KEY=VALUE", help="data overrides, e.g. source=auto")
    p.add_argument("--baseline", action="store_true", help="also score the random-init encoder")
    p.add_argument("--device", default="auto", help="auto (CUDA if there is one), cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("visualize", help="reconstruction grid of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--images", help="folder of images (default: the recipe's test split)")
    p.add_argument("--out", default="recon.png", help="picture to write (default recon.png; .png, .pdf, .svg...)")
    p.add_argument("--count", type=int, default=8, help="images to reconstruct (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks drawn on them (default 0)")
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("export", help="write the encoder alone under timm's names, or a transformers folder")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="file (timm) or folder (transformers) to write")
    p.add_argument("--format", choices=["timm", "transformers"], default="timm",
                   help="timm: the encoder's state dict (default); transformers: a from_pretrained folder (ViTMAE "
                        "with the decoder, or ViT for a fine-tuned classifier)")
    p.set_defaults(func=cmd_export_format)

    p = sub.add_parser("convert", help="turn a transformers ViTMAE folder or an official MAE checkpoint into a "
                                       "maskkit checkpoint")
    p.add_argument("source", help="transformers save_pretrained folder, or official {'model': ...} checkpoint")
    p.add_argument("overrides", nargs="*", help="recipe overrides for what the source cannot tell, e.g. "
                                                "encoder.num_heads=4 target.name=pixels")
    p.add_argument("--out", required=True, help="maskkit checkpoint to write")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("masks", help="look at masking strategies")
    masks = p.add_subparsers(dest="masks_command", required=True)
    p = masks.add_parser("show", help="render sample masks of a registered masker")
    p.add_argument("name", help="masker name (see `maskkit list masker`)")
    p.add_argument("arguments", nargs="*", metavar="KEY=VALUE", help="masker arguments, e.g. ratio=0.5")
    p.add_argument("--grid", default="14x14", help="patch grid HxW (default 14x14, ViT-B/16 at 224)")
    p.add_argument("--count", type=int, default=8, help="samples to draw (default 8)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the masks pictured (default 0; the printed counts also cover the next 3 seeds)")
    p.add_argument("--out", default="masks.png", help="picture to write (default masks.png)")
    p.add_argument("--recipe", default=None, help="draw on this recipe's test images with its model (default for "
                   "a masker that looks at the images or the model: quickstart)")
    p.set_defaults(func=cmd_masks_show)

    p = sub.add_parser("plugins", help="components and the plugins that provide them")
    p.add_argument("--all", action="store_true", help="list every timm encoder too")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("recipes", help="registered recipes")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("list", help="registered names of one kind, with wildcards")
    p.add_argument("kind", choices=["masker", "encoder", "decoder", "target", "loss", "dataset", "recipe"])
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=cmd_list)
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that ``key=value`` overrides may also come after options
    (``maskkit train R.yaml --out runs/x train.epochs=2``) and ``--debug`` after the command: argparse alone
    stops taking positional arguments once an option has been given."""
    try:
        plugins, argv = split_plugin_options(sys.argv[1:] if argv is None else argv)
    except MaskkitError as exc:
        parser.error(str(exc))
    args, extra = parser.parse_known_args(argv)
    args.plugins = [*getattr(args, "plugins", []), *plugins]
    if "--debug" in extra:
        args.debug = True
        extra = [item for item in extra if item != "--debug"]
    positional = next((name for name in ("overrides", "arguments") if hasattr(args, name)), None)
    if positional is not None and extra and all("=" in item and not item.startswith("-") for item in extra):
        setattr(args, positional, [*getattr(args, positional), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _blame_plugin(exc: BaseException, args: argparse.Namespace | None = None) -> tuple[str, str] | None:
    """The plugin whose code raised ``exc`` and the ``file:line`` of that code (its innermost frame in the
    traceback), if any; the invocation's registry, so a ``--plugin`` file is named too."""
    try:
        return _registry(args).plugin_of(exc)
    except Exception:  # pragma: no cover - blaming must never hide the original error
        return None


def report_failure(exc: BaseException, debug: bool, args: argparse.Namespace | None = None) -> int:
    """The failure contract, enforced here for every command: one line on stderr and the exit status of
    :func:`maskkit.errors.describe_failure` (2: bad input, OS or plugin errors; 1: internal error; 128+N: a
    signal); ``--debug`` re-raises for the traceback."""
    if debug and not isinstance(exc, RunInterrupted):
        raise exc
    code, line = describe_failure(exc, lambda error: _blame_plugin(error, args))
    print(f"maskkit: error: {line}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    console = make_console()
    try:
        return args.func(args, console)
    except (Exception, KeyboardInterrupt) as exc:
        return report_failure(exc, args.debug, args)


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``maskkit`` command (and ``python -m maskkit``): :func:`main`, then exit with its status.

    A process started by ``torchrun`` (``WORLD_SIZE > 1``) ends with ``os._exit`` once its output is flushed:
    by then the command has torn its process group down on every rank together and closed its files, and
    skipping the interpreter's finalization avoids gloo's worker threads being destroyed mid-teardown, which
    aborts the process ("terminate called without an active exception", pytorch/pytorch#190489) after a run
    that succeeded: rarely and at random (seen twice in this project's test runs, in two-rank FSDP tests).
    """
    code = main(argv)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
