"""Operators per training step, a proxy for GPU kernel launches, counted with ``torch.profiler`` on the CPU.

At small batches a GPU step is launch-bound (issue 10: about 2,270 launches per ViT-L/16 step at batch 64, the
host's launch rate setting the pace), so fewer operators per step is a speed-up there that a CPU can show
without a GPU. For each variant (maskkit's MAE, the official-style MAE, transformers' ViTMAE) this builds the
bench's training step (forward, backward, AdamW as the trainer builds it), runs one untimed step, profiles the
next and counts ATen operators:

* ``ops``: every ``aten::`` event ``torch.profiler`` records (nested calls inside other operators included);
* ``kernels``: the operators dispatched below autograd (a ``TorchDispatchMode``: what the forward, the autograd
  engine and the optimizer call, not the calls inside a kernel), less the ones that launch no kernel on a GPU
  (views, ``empty``...): the closest CPU count of what a GPU step launches.

``--compile`` also counts maskkit's step compiled as ``train.compile`` compiles it (inductor's C++ backend on the
CPU; Triton's on a GPU fuses the same graph): a dispatch mode does not see inside compiled code, so both the
eager and the compiled step are then counted from the profiler as ``launches``: inductor's fused kernels plus the
outermost ATen operators (those not called by another one) that launch a kernel (a ``dropout`` that returns its
input, at p = 0, launches none; a cast, ``aten::to``, launches one when it copies).

    python benchmarks/op_count.py                       # ViT-B/16, batch 8, fp32 and bf16 autocast
    python benchmarks/op_count.py --models vit_small_patch16 --dtypes fp32 --top 15
    python benchmarks/op_count.py --compile --variants mae  # eager against compiled (minutes: inductor on a CPU)
    python benchmarks/op_count.py --compile --compile-scopes components,blocks --variants mae --dtypes bf16

It prints the counts and each reference's count over maskkit's (> 1: maskkit launches fewer).
"""

from __future__ import annotations

import argparse
import collections
import json

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from maskkit.bench import steps as bench_steps
from maskkit.bench.reference import OfficialStyleMAE
from maskkit.registry import Registry

# ATen operators that only make views, allocate or bookkeep: no kernel on a GPU.
NO_KERNEL = {
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::view", "aten::_unsafe_view", "aten::reshape",
    "aten::as_strided", "aten::t", "aten::transpose", "aten::permute", "aten::expand", "aten::unsqueeze",
    "aten::squeeze", "aten::slice", "aten::select", "aten::unbind", "aten::split", "aten::chunk", "aten::detach",
    "aten::alias", "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg", "aten::_reshape_alias",
    "aten::result_type", "aten::is_nonzero", "aten::item", "aten::size", "aten::stride", "aten::numel",
    "aten::contiguous", "aten::set_", "aten::narrow", "aten::flatten", "aten::unflatten", "aten::view_as",
    "aten::expand_as", "aten::_has_compatible_shallow_copy_type", "aten::is_same_size", "aten::to",
    "aten::_local_scalar_dense", "aten::type_as",
}


class _Dispatched(TorchDispatchMode):
    """Counts the operators dispatched while active (by overload packet name, ``aten::addmm``)."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[f"aten::{func.__name__.split('.')[0]}"] += 1
        return func(*args, **(kwargs or {}))


def count_ops(step, *, top: int = 0, profiler: bool = True) -> dict:
    """``{"ops": n, "kernels": n, "top": [(name, n)...]}``: ``kernels`` from one call of ``step``, ``ops`` from a
    second one under the profiler (apart: the dispatch mode's own calls would add profiler events); ``ops`` is
    None without ``profiler``."""
    mode = _Dispatched()
    with mode:
        step()
    ops = None
    if profiler:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        ops = sum(e.name.startswith("aten::") for e in prof.events())
    kernels = collections.Counter({k: n for k, n in mode.counts.items() if k not in NO_KERNEL})
    return {"ops": ops, "kernels": sum(kernels.values()), "top": kernels.most_common(top)}


def count_launches(step, *, top: int = 0) -> dict:
    """``{"launches": n, "top": [(name, n)...]}`` from one call of ``step`` under the profiler: inductor's fused
    kernels (events ``..._cpp_fused_...``, recorded when ``torch._inductor.config.cpp.enable_kernel_profile`` was
    on as the step compiled) plus the outermost ``aten::`` events that launch a kernel."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    launches: collections.Counter = collections.Counter()
    for event in prof.events():
        if "_cpp_fused_" in event.name:
            launches["<inductor fused kernel>"] += 1
        elif event.name.startswith("aten::") and _outermost(event):
            if event.name in NO_KERNEL and not _copies(event):
                continue  # a view, or a cast to the dtype a tensor has
            if event.name == "aten::dropout" and not event.cpu_children:
                continue  # p = 0 (timm's default proj_drop) or eval: it returns its input
            launches[event.name] += 1
    return {"launches": sum(launches.values()), "top": launches.most_common(top)}


def _copies(event) -> bool:
    """Whether ``event`` (``aten::to``, ``contiguous``...) really copied: a cast under autocast does."""
    return any(child.name == "aten::copy_" or _copies(child) for child in event.cpu_children)


def _outermost(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def compiled_launches(name: str, spec, registry, *, batch_size: int, amp, top: int,
                       scopes: tuple[str, ...] = ("components",)) -> dict:
    """Launches per step of maskkit's MAE eager and compiled as the trainer compiles with each
    ``train.compile_scope`` of ``scopes`` (components whole; blocks one by one, the glue eager)."""
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True  # each fused C++ kernel becomes a profiler event
    counts = {}
    for scope in (None, *scopes):
        variant = bench_steps.make_variant(name, "mae", build("mae", spec, registry), batch_size=batch_size,
                                           device=torch.device("cpu"), amp_dtype=amp, compile=scope is not None,
                                           compile_scope=scope or "components")
        if scope is not None:
            variant.compile_model()
        for _ in range(1 if scope is None else 3):  # compilation (and its recompiles) and AdamW's state outside
            variant.step()
        counts["eager" if scope is None else f"compiled ({scope})"] = count_launches(variant.step, top=top)
    return counts


def build(kind: str, spec, registry) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "official":
        return OfficialStyleMAE.like(bench_steps.build_maskkit(spec, False, registry))
    if kind == "hf":
        return bench_steps.build_hf_like(bench_steps.build_maskkit(spec, False, registry))
    return bench_steps.build_maskkit(spec, False, registry)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="vit_base_patch16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (CPU autocast)")
    parser.add_argument("--variants", default="mae,official,hf")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--top", type=int, default=0, help="also print the N most frequent leaf operators")
    parser.add_argument("--no-profiler", action="store_true", help="count dispatched kernels only (faster)")
    parser.add_argument("--compile", action="store_true",
                        help="also count maskkit's step eager against compiled (profiler launches; minutes)")
    parser.add_argument("--compile-scopes", default="components",
                        help="with --compile: the train.compile_scope values to count (components,blocks)")
    parser.add_argument("--json", help="write the counts here")
    args = parser.parse_args(argv)
    registry = Registry.from_plugins(autoload=False)
    device = torch.device("cpu")
    kinds = [k for k in args.variants.split(",") if k != "hf" or bench_steps.transformers_available()]
    results = {}
    for name in args.models.split(","):
        spec = bench_steps.model_spec(name, args.overrides, registry)
        for dtype in args.dtypes.split(","):
            amp = torch.bfloat16 if dtype == "bf16" else None
            row = {}
            for kind in kinds:
                variant = bench_steps.make_variant(name, kind, build(kind, spec, registry),
                                                   batch_size=args.batch_size, device=device, amp_dtype=amp)
                variant.step()  # lazy state (AdamW's moments) outside the count
                row[kind] = count_ops(variant.step, top=args.top, profiler=not args.no_profiler)
            results[f"{name}/{dtype}"] = row
            mae = row.get("mae")
            print(f"{bench_steps_short(name)} batch {args.batch_size} {dtype}: operators per training step "
                  f"(ops: aten:: events in torch.profiler; kernels: dispatched, less views)")
            for kind, r in row.items():
                ratio = "" if mae is None or kind == "mae" else (
                    f"   {kind}/maskkit: kernels {r['kernels'] / mae['kernels']:.2f}x"
                    + ("" if r["ops"] is None else f", ops {r['ops'] / mae['ops']:.2f}x"))
                ops = "-" if r["ops"] is None else r["ops"]
                print(f"  {kind:9s} ops {ops:>6}  kernels {r['kernels']:6d}{ratio}")
                for op, n in r["top"]:
                    print(f"      {n:5d} {op}")
            if args.compile:
                counts = compiled_launches(name, spec, registry, batch_size=args.batch_size, amp=amp, top=args.top,
                                           scopes=tuple(args.compile_scopes.split(",")))
                row["mae-launches"] = counts
                eager = counts["eager"]["launches"]
                compiled = ", ".join(f"{label} {c['launches']} ({c['launches'] / eager:.2f}x)"
                                     for label, c in counts.items() if label != "eager")
                print(f"  maskkit launches per step (fused kernels + outermost ATen operators): eager {eager}, "
                      f"{compiled}")
                for label, count in counts.items():
                    for op, n in count["top"]:
                        print(f"      {label:21s} {n:5d} {op}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


def bench_steps_short(name: str) -> str:
    from maskkit.bench.cli import short_name

    return short_name(name)


if __name__ == "__main__":
    main()
