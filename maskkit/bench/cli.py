"""``maskkit bench``: images/s, seconds/step and MFU of one MAE pretraining step, against the mask-token
baseline, an official-style MAE and transformers' ViTMAE, plus the throughput of the data pipeline alone.

    maskkit bench [--device auto|cpu|cuda] [--models vit_base_patch16,vit_large_patch16] [--batch-size B]
                  [--steps N] [--steps-per-round K] [--dtype auto|bf16|fp32] [--[no-]compile]
                  [--variants mae,dense,official,hf]
                  [--workers W] [--no-data] [--set encoder.depth=2 ...] [--json results.json]
    maskkit bench --masker NAME[,key=value,...] [--models quickstart] [...]   the extra cost of a masker

Defaults depend on the device: on CUDA ViT-B/16 and ViT-L/16, batch 64, 10 timed rounds of 4 steps per variant
between two syncs, bf16 autocast; on the CPU ViT-B/16 only, batch 8, 3 timed rounds of one step, fp32 (a few
minutes on 2 cores). Models are compiled on CUDA (as
``train.compile: auto`` trains them) and eager on the CPU. The table is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
from rich import box
from rich.console import Console
from rich.table import Table

CUDA_DEFAULTS = {"models": "vit_base_patch16,vit_large_patch16", "batch_size": 64, "steps": 10, "warmup": 3,
                 "steps_per_round": 4}
CPU_DEFAULTS = {"models": "vit_base_patch16", "batch_size": 8, "steps": 3, "warmup": 1, "steps_per_round": 1}
WIDTH = 112  # the tables' least width (wider than an 80-column pipe: they would wrap there)
SHORT_LABELS = {"mae": "MAE", "dense": "mask tokens", "official": "official-style", "hf": "HF ViTMAE"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``bench`` on ``subparsers`` (``parser.add_subparsers()``); it sets ``func(args, console)``."""
    p = subparsers.add_parser("bench", help="benchmark a pretraining step and the data pipeline",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--models", help="comma-separated timm ViT names (default: vit_base_patch16,vit_large_patch16 "
                                    "on CUDA, vit_base_patch16 on CPU); the registered mae_<name> recipe is used "
                                    "when there is one")
    p.add_argument("--batch-size", type=int, help="images per step (default 64 on CUDA, 8 on CPU)")
    p.add_argument("--steps", type=int, help="timed round-robin rounds (default 10 on CUDA, 3 on CPU)")
    p.add_argument("--steps-per-round", type=int,
                   help="consecutive steps of a variant in each round, timed between two device syncs (default 4 on "
                        "CUDA, as training queues step after step without waiting; 1 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps per variant, the FLOP-counted one included "
                                              "(default 3 on CUDA, 1 on CPU; at least 3 with --compile)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="bf16 autocast or fp32 (auto: bf16 on CUDA, fp32 on CPU, as training does)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile each model (default: on CUDA, as train.compile: auto; --no-compile for eager)")
    p.add_argument("--compile-scope", default="components", choices=["components", "blocks"],
                   help="what --compile compiles, as train.compile_scope: maskkit's components whole and the "
                        "references whole (components), or every model's transformer blocks one by one, the glue "
                        "eager (blocks: compile time about constant in depth)")
    p.add_argument("--variants", default="mae,dense,official,hf",
                   help="which of mae (maskkit), dense (mask-token encoder), official (models_mae.py "
                        "structure), hf (transformers) to run")
    p.add_argument("--workers", type=int, help="data-loader workers for the data pipelines (default: CPU count, "
                                               "at most 8)")
    p.add_argument("--data-images", type=int, default=None,
                   help="images timed per data pipeline (default 2048 quickstart, 4x on CUDA; JPEG: one pass over "
                        "its files, enough for every worker to be busy for 4 batches)")
    p.add_argument("--no-data", action="store_true", help="skip the data-pipeline measurement")
    p.add_argument("--device-decode", action=argparse.BooleanOptionalAction, default=None,
                   help="also time data.decode: device over the same JPEGs (workers read files, the device decodes "
                        "and crops: nvJPEG on CUDA); default: on CUDA")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override for the models, e.g. --set encoder.depth=2 (repeatable)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--masker", action="append", default=[], metavar="NAME[,key=value,...]",
                   help="time this masker against random instead (drawing alone, and a training step with it, "
                        "on each --models model; repeatable; needs the masker's plugin installed)")
    p.set_defaults(func=cmd_bench)
    return p


@attrs.frozen
class BenchSettings:
    device: str
    models: tuple[str, ...]
    batch_size: int
    steps: int
    warmup: int
    dtype: str  # bf16 | fp32
    compile: bool
    variants: tuple[str, ...]
    workers: int
    data_images: int | None
    data: bool
    overrides: tuple[str, ...]
    seed: int
    threads: int | None = None
    device_decode: bool = False  # the data.decode: device pipeline too
    compile_scope: str = "components"  # components | blocks (train.compile_scope), with compile
    steps_per_round: int = 1  # a variant's consecutive steps per round, timed between two device syncs


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    from maskkit.bench.steps import VARIANTS
    from maskkit.engine.compiling import compile_enabled
    from maskkit.engine.trainer import pick_device
    from maskkit.errors import ConfigError

    device = pick_device(args.device, key="--device")
    defaults = CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ConfigError("--variants", f"expected some of {', '.join(VARIANTS)}, got {args.variants!r}")
    models = tuple(m.strip() for m in (args.models or defaults["models"]).split(",") if m.strip())
    if not models:
        raise ConfigError("--models", "expected at least one model name")
    for name, value in (("--batch-size", args.batch_size), ("--steps", args.steps), ("--threads", args.threads),
                        ("--steps-per-round", args.steps_per_round), ("--data-images", args.data_images)):
        if value is not None and value < 1:
            raise ConfigError(name, f"expected a positive int, got {value}")
    if args.workers is not None and args.workers < 0:
        raise ConfigError("--workers", f"expected an int >= 0 (0: load in the main process), got {args.workers}")
    if args.warmup is not None and args.warmup < 1:
        raise ConfigError("--warmup", f"expected a positive int (the FLOP-counted step), got {args.warmup}")
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    compile_ = compile_enabled("auto" if args.compile is None else args.compile, device)  # the trainer's rule
    warmup = args.warmup or defaults["warmup"]
    if compile_:
        warmup = max(warmup, 3)
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    return BenchSettings(str(device), models, args.batch_size or defaults["batch_size"],
                         args.steps or defaults["steps"], warmup, dtype, compile_, variants, workers,
                         args.data_images, not args.no_data, tuple(args.overrides), args.seed, args.threads,
                         device.type == "cuda" if args.device_decode is None else args.device_decode,
                         args.compile_scope, args.steps_per_round or defaults["steps_per_round"])


def run_benchmark(settings: BenchSettings, console: Console | None = None, registry=None) -> dict[str, Any]:
    """Run the data pipelines, then the step round-robin of every model; return plain results (the table's
    content plus the environment)."""
    import torch

    from maskkit.bench import data as bench_data
    from maskkit.bench import steps as bench_steps
    from maskkit.registry import Registry

    say = (lambda message: console.log(message)) if console is not None else (lambda message: None)
    registry = registry or Registry.from_plugins(autoload=False)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    amp_dtype = torch.bfloat16 if settings.dtype == "bf16" else None
    env = environment(device, settings)

    data_results = []
    if settings.data:
        scale = 4 if device.type == "cuda" else 1
        n_quick = settings.data_images or 2048 * scale
        say(f"data pipeline: quickstart loader, {settings.workers} workers")
        data_results += _pipeline("quickstart", say, env, lambda: bench_data.quickstart_pipeline(
            workers=settings.workers, images=n_quick, registry=registry, pin_memory=device.type == "cuda"))
        files = bench_data.files_for(settings.workers, settings.batch_size)
        if settings.data_images:  # a short run asked for: no more files than images timed
            files = max(settings.batch_size, min(files, settings.data_images))
        say(f"data pipeline: ImageFolder JPEG decode + RandomResizedCrop, {settings.workers} workers, {files} "
            "files, against a plain decode + crop loop on as many processes")
        with tempfile.TemporaryDirectory(prefix="maskkit-bench-") as folder:
            data_results += _pipeline("imagefolder", say, env, lambda: bench_data.imagefolder_pipeline(
                workers=settings.workers, images=settings.data_images, batch_size=settings.batch_size, files=files,
                pin_memory=device.type == "cuda", folder=Path(folder)))
            if settings.device_decode:
                say(f"data pipeline: the same JPEGs with data.decode: device ({device}), {settings.workers} workers")
                data_results += _pipeline("imagefolder-device", say, env, lambda: bench_data.device_decode_pipeline(
                    Path(folder) / "images", workers=settings.workers, images=settings.data_images,
                    batch_size=settings.batch_size, device=str(device)))

    kinds = list(settings.variants)
    hf_missing = "hf" in kinds and not bench_steps.transformers_available()
    if hf_missing:
        kinds.remove("hf")
        say("transformers is not installed: the ViTMAEForPreTraining reference is skipped")
    peak = bench_steps.PeakProbe.for_device(device, amp_dtype or torch.float32)
    step_results = []
    with bench_steps.SoftStop() as stop:  # `timeout`'s SIGTERM: report the rounds done (see SoftStop)
        for name in settings.models:
            if stop.requested:
                env.setdefault("stopped", []).append(f"{name}: not measured (SIGTERM)")
                continue
            step_results += _benchmark_model(name, kinds, settings, device, amp_dtype, peak, stop, registry, say,
                                             env)
    # MFU uses the best GEMM rate of the whole run (models measured earlier get the later rounds' best too)
    step_results = [attrs.evolve(r, mfu=r.flops_per_s / peak.peak) for r in step_results]
    env["load_after"] = _load()
    return {"environment": env, "peak_flops_per_s": peak.peak,
            "peak_gemm": {"size": peak.size, "dtype": settings.dtype},
            "steps": [attrs.asdict(r) for r in step_results], "data": [attrs.asdict(r) for r in data_results],
            "transformers_missing": hf_missing, "verdicts": verdicts(step_results, data_results)}


def _pipeline(name: str, say, env: dict[str, Any], measure) -> list:
    """``[measure()]`` (one data pipeline's ``DataResult``), or ``[]`` when it raises: a pipeline that fails (nvJPEG
    on a machine it never ran on, say) must not cost the model steps measured after the pipelines. The failure goes
    into ``env["failed"]``, which the report prints; the goals that need the pipeline stay unmeasured."""
    from maskkit.errors import first_line

    try:
        return [measure()]
    except Exception as exc:  # noqa: BLE001 - whatever it was, it is reported and the steps still run
        line = f"data pipeline {name}: {type(exc).__name__}: {first_line(str(exc))}"
        say(line)
        env.setdefault("failed", []).append(line)
        return []


def _benchmark_model(name: str, kinds: list[str], settings: BenchSettings, device, amp_dtype, peak, stop, registry,
                     say, env: dict[str, Any]) -> list:
    """The step results of every variant of model ``name`` (none if stopped before its first round); a stop
    after fewer rounds than asked is noted in ``env["stopped"]``."""
    import torch

    from maskkit.bench import steps as bench_steps
    from maskkit.mae_reference import OfficialStyleMAE

    spec = bench_steps.model_spec(name, settings.overrides, registry)
    say(f"building {name} ({spec.source}): {', '.join(kinds)}")
    variants = []
    for kind in kinds:
        torch.manual_seed(settings.seed)
        if kind == "hf":
            with torch.device("meta"):  # only its sizes are read: no initialisation (18 s for ViT-L on 2 cores)
                sizes = bench_steps.build_maskkit(spec, False, registry)
            model = bench_steps.build_hf_like(sizes)
        elif kind == "official":
            model = OfficialStyleMAE.like(bench_steps.build_maskkit(spec, False, registry))
        else:
            model = bench_steps.build_maskkit(spec, kind == "dense", registry)
        variants.append(bench_steps.make_variant(name, kind, model, batch_size=settings.batch_size,
                                                 device=device, amp_dtype=amp_dtype,
                                                 compile=settings.compile, compile_scope=settings.compile_scope,
                                                 seed=settings.seed))
    try:
        try:
            rounds = bench_steps.benchmark_steps(variants, steps=settings.steps, warmup=settings.warmup,
                                                 device=device, peak=peak, progress=say, stop=stop,
                                                 steps_per_round=settings.steps_per_round)
        except Exception:  # noqa: BLE001
            if not stop.requested:
                raise
            # `timeout` signals the whole process group: inductor's compile workers die with it, and a compile
            # under way fails. What earlier models measured is kept.
            rounds = 0
        if rounds < settings.steps:
            env.setdefault("stopped", []).append(
                f"{name}: stopped by SIGTERM after {rounds} of {settings.steps} rounds" if rounds
                else f"{name}: not measured (SIGTERM)")
        return bench_steps.summarize(variants, settings.batch_size, peak.peak) if rounds else []
    finally:
        bench_steps.free(variants)


def _per_round(settings: dict) -> str:
    """How many steps a round times per variant, when more than one (older JSON files have no such key)."""
    k = settings.get("steps_per_round", 1)
    return f" of {k} steps each, timed between two device syncs" if k > 1 else ""


def _compiled(settings: dict) -> str:
    """``", compiled"`` (``", compiled by blocks"``) for a compiled bench's table title, else ``""``."""
    from maskkit.bench.goals import compile_label

    label = compile_label(settings)
    return f", {label}" if label else ""


def torch_device(settings: BenchSettings):
    import torch

    return torch.device(settings.device)


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on this platform
        return None


def environment(device, settings: BenchSettings) -> dict[str, Any]:
    import timm
    import torch

    from maskkit import __version__

    env = {"maskkit": __version__, "torch": str(torch.__version__), "timm": timm.__version__,
           "python": platform.python_version(), "device": str(device), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "load_before": _load(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
           "settings": attrs.asdict(settings)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except Exception:  # noqa: BLE001
        env["transformers"] = None
    return env


def verdicts(step_results, data_results) -> list[str]:
    """One line per model: the sparse-vs-dense and vs-transformers ratios, and which side limits."""
    lines = []
    jpeg = next((d for d in data_results if d.pipeline == "imagefolder"), None)
    on_device = next((d for d in data_results if d.pipeline == "imagefolder-device"), None)
    for model in dict.fromkeys(r.model for r in step_results):
        rows = {r.variant: r for r in step_results if r.model == model}
        mae = rows.get("mae")
        if mae is None:
            continue
        parts = [f"{short_name(model)}: maskkit MAE {mae.images_per_s:.1f} img/s"]
        if "dense" in rows:
            d = rows["dense"]
            parts.append(f"speed-up over the mask-token encoder {d.seconds / mae.seconds:.2f}x wall-clock, "
                         f"{d.flops / mae.flops:.2f}x in FLOPs (the paper: 2.8-4.1x wall-clock)")
        if "official" in rows:
            parts.append(f"over the official-style MAE {rows['official'].seconds / mae.seconds:.2f}x")
        if "hf" in rows:
            parts.append(f"over transformers' ViTMAE {rows['hf'].seconds / mae.seconds:.2f}x")
        if jpeg is not None:
            side = ("the data pipeline limits" if jpeg.images_per_s < mae.images_per_s else
                    "the model step limits")
            plain = "" if jpeg.ratio is None else f", {jpeg.ratio:.2f} of a plain decode + crop loop"
            parts.append(f"JPEG pipeline {jpeg.images_per_s:.0f} img/s with {jpeg.workers} workers{plain}, so {side}")
        if on_device is not None:
            side = "it limits" if on_device.images_per_s < mae.images_per_s else "the model step limits"
            parts.append(f"decoded on the device {on_device.images_per_s:.0f} img/s, so {side}")
        lines.append("; ".join(parts))
    return lines


def short_name(model: str) -> str:
    """``vit_base_patch16`` -> ``ViT-B/16`` (other names unchanged)."""
    m = re.fullmatch(r"vit_(tiny|small|base|large|huge|giant)_patch(\d+)(_\d+)?", model)
    return f"ViT-{m.group(1)[0].upper()}/{m.group(2)}" if m else model


def _print_wide(console: Console, renderable) -> None:
    """Print at least ``WIDTH`` columns wide (rich caps a print at the console's width: 80 on a pipe)."""
    old = getattr(console, "_width", None)
    if console.width < WIDTH:
        console.width = WIDTH
    try:
        console.print(renderable)
    finally:
        console._width = old


def print_report(console: Console, results: dict[str, Any]) -> None:
    """The data table, the verdicts, then the step table (last)."""
    env = results["environment"]
    if results["data"]:
        table = Table(title="data pipeline alone (the trainer's loader, no model)", box=box.SIMPLE_HEAD)
        numeric = ("workers", "files", "batch", "images/s", "plain loop", "loader / plain")
        for column in ("pipeline", "what") + numeric:
            table.add_column(column, justify="right" if column in numeric else "left")
        for d in results["data"]:
            ratio = d.get("ratio")
            table.add_row(d["pipeline"], d["description"], str(d["workers"]), str(d.get("files") or "-"),
                          str(d["batch_size"]), f"{d['images_per_s']:.0f}",
                          "-" if d.get("baseline_images_per_s") is None else f"{d['baseline_images_per_s']:.0f}",
                          "-" if ratio is None
                          else f"{ratio:.2f} ({d['ratio_range'][0]:.2f}-{d['ratio_range'][1]:.2f})")
        table.caption = ("plain loop: PIL decode + torchvision RandomResizedCrop + flip on the PIL image in as many "
                         "processes, no loader; loader / plain: median (range) of the rounds' ratios, timed "
                         "side by side")
        _print_wide(console, table)
    if results["transformers_missing"]:
        console.print("transformers is not installed: no ViTMAEForPreTraining reference rows")
    for line in results["verdicts"]:
        console.print(line, highlight=False)
    for line in env.get("failed", []):  # a data pipeline that raised (the steps were measured all the same)
        console.print(f"[red]{line}[/red]", highlight=False)
    for line in env.get("stopped", []):  # SIGTERM (a timeout) during the rounds: fewer rounds than asked
        console.print(f"[yellow]{line}[/yellow]", highlight=False)
    s = env["settings"]
    where = env.get("gpu") or f"CPU ({env['torch_threads']} threads, {env['cpu_count']} cores)"
    table = Table(title=f"one pretraining step (forward, backward, AdamW) on {where}, {s['dtype']}"
                        f"{_compiled(s)}, batch {s['batch_size']}, median of "
                        f"{s['steps']} round-robin rounds{_per_round(s)}"
                        f"{' (fewer where stopped early: see above)' if env.get('stopped') else ''}",
                  box=box.SIMPLE_HEAD)
    columns = ["model", "variant", "params", "s/step", "img/s", "GFLOP/step", "TFLOP/s", "MFU", "vs MAE"]
    with_memory = any(r["peak_memory"] for r in results["steps"])
    if with_memory:
        columns.append("memory")
    if s["compile"]:  # what the warm-up took, compiling included: a compiled run starts that much later
        columns.append("compile")
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "variant") else "right")
    for r in results["steps"]:
        row = [short_name(r["model"]), SHORT_LABELS[r["variant"]], f"{r['params'] / 1e6:.0f}M",
               f"{r['seconds']:.3f}", f"{r['images_per_s']:.1f}", f"{r['flops'] / 1e9:.1f}",
               f"{r['flops_per_s'] / 1e12:.3g}", f"{100 * r['mfu']:.1f}%",
               "-" if r["slowdown_vs_mae"] is None else f"{r['slowdown_vs_mae']:.2f}x"]
        if with_memory:
            row.append("-" if not r["peak_memory"] else f"{r['peak_memory'] / 2**30:.1f}G")
        if s["compile"]:
            row.append("-" if r.get("warmup_seconds") is None else f"{r['warmup_seconds']:.0f} s")
        table.add_row(*row)
    compiled = "compile = the warm-up steps, compiling included. " if s["compile"] else ""
    table.caption = (f"MAE = maskkit (visible patches only); mask tokens = the same encoder fed all patches; "
                     f"official-style = models_mae.py's structure on timm blocks, same weights; HF = "
                     f"transformers' ViTMAEForPreTraining (SDPA). vs MAE = its s/step over MAE's. {compiled}"
                     f"MFU = model FLOPs/s (FlopCounterMode) over {results['peak_flops_per_s'] / 1e12:.3g} TFLOP/s, "
                     f"the best "
                     f"{results['peak_gemm']['size']}^2 {results['peak_gemm']['dtype']} matmul of this run. "
                     f"Load average (1, 5, 15 min) before {env['load_before']}, after {env.get('load_after')}.")
    _print_wide(console, table)


def masker_costs(settings: BenchSettings, maskers: list[str], console: Console | None = None,
                 registry=None) -> list:
    """``--masker``: :func:`maskkit.bench.maskers.measure_masker_cost` of every masker on every model."""
    import torch

    from maskkit.bench.maskers import measure_masker_cost
    from maskkit.bench.steps import model_spec
    from maskkit.registry import Registry

    registry = registry or Registry.from_plugins()  # the installed plugins: that is where maskers come from
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    amp_dtype = torch.bfloat16 if settings.dtype == "bf16" else None
    costs = []
    for name in settings.models:
        spec = model_spec(name, settings.overrides, registry)
        for masker in maskers:
            if console is not None:
                console.log(f"timing masker {masker} against random on {name}")
            costs.append(measure_masker_cost(spec, masker, batch_size=settings.batch_size, steps=settings.steps,
                                             warmup=settings.warmup, device=device, amp_dtype=amp_dtype,
                                             registry=registry, seed=settings.seed))
    return costs


def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    settings = settings_from_args(args)
    if args.masker:
        costs = masker_costs(settings, args.masker, console)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump({"environment": environment(torch_device(settings), settings),
                           "maskers": [{**attrs.asdict(c), "step_ratio": c.step_ratio} for c in costs]},
                          handle, indent=2)
        for cost in costs:
            console.print(cost.line(), highlight=False, soft_wrap=True)
        return 0
    results = run_benchmark(settings, console)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    print_report(console, results)
    return 0
