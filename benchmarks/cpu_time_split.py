"""Where a CPU training step's time goes, maskkit's MAE beside the official-style MAE (the CPU parity goal).

The parity goal asks maskkit's step to be at least as fast as the official structure's *and* at >= 80% of the
run's best 1024^2 fp32 GEMM rate. This profiles one step (forward, backward, AdamW, as the bench builds it) of
each, after two untimed ones, and prints the share of self CPU time per operator family: the matrix products
(``mm``, ``addmm``, ``bmm``), attention (scaled-dot-product kernels), and the rest. It also times CPU
scaled-dot-product attention forward + backward at the decoder's and the encoder's shapes under each backend,
to show whether another attention kernel could lift the step.

    python benchmarks/cpu_time_split.py                      # ViT-B/16, batch 8, fp32 (about a minute)
    python benchmarks/cpu_time_split.py --set encoder.depth=2 --batch-size 4
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from maskkit.bench import steps as bench_steps
from maskkit.bench.reference import OfficialStyleMAE
from maskkit.registry import Registry

FAMILIES = {"aten::mm": "matrix products", "aten::addmm": "matrix products", "aten::bmm": "matrix products"}


def family(name: str) -> str:
    if name in FAMILIES:
        return FAMILIES[name]
    if "scaled_dot_product" in name:
        return "attention"
    if name.startswith("aten::gelu"):
        return "GELU"
    if "adam" in name:
        return "AdamW"
    return "other"


def time_split(step) -> tuple[float, dict[str, float]]:
    """``(wall seconds, {family: seconds of self CPU time})`` of one profiled call of ``step``."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        step()
        wall = time.perf_counter() - start
    split: dict[str, float] = collections.defaultdict(float)
    for event in prof.key_averages():
        split[family(event.key)] += event.self_cpu_time_total / 1e6
    return wall, dict(split)


def sdpa_ms(shape: tuple[int, ...], backend: SDPBackend, repeats: int = 7) -> float:
    """Median milliseconds of forward + backward of one attention of ``shape`` ``[B, heads, N, head_dim]``."""
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))

    def once() -> None:
        with sdpa_kernel(backend):
            F.scaled_dot_product_attention(q, k, v).sum().backward()

    once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_base_patch16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    registry = Registry.from_plugins(autoload=False)
    spec = bench_steps.model_spec(args.model, args.overrides, registry)
    cpu = torch.device("cpu")
    variants = []
    for kind in ("mae", "official"):
        torch.manual_seed(0)
        model = bench_steps.build_maskkit(spec, False, registry)
        if kind == "official":
            model = OfficialStyleMAE.like(model)
        variants.append(bench_steps.make_variant(args.model, kind, model, batch_size=args.batch_size, device=cpu,
                                                 amp_dtype=None))
    for v in variants:
        v.step()
        v.step()
    print(f"{args.model}, batch {args.batch_size}, fp32, {torch.get_num_threads()} threads: share of self CPU time")
    for v in variants:
        wall, split = time_split(v.step)
        total = sum(split.values())
        shares = ", ".join(f"{name} {100 * seconds / total:.1f}%"
                           for name, seconds in sorted(split.items(), key=lambda item: -item[1]))
        print(f"  {v.kind:<9} {wall:.3f} s: {shares}")
    model = variants[0].model
    enc, dec = model.encoder, model.decoder
    tokens = enc.grid[0] * enc.grid[1]
    visible = model.num_visible() + 1  # and the [CLS] token
    dec_attn, enc_attn = dec.decoder_blocks[0].attn, enc.blocks[0].attn
    dec_width, enc_width = dec_attn.qkv.in_features, enc_attn.qkv.in_features
    shapes = {"decoder": (args.batch_size, dec_attn.num_heads, tokens + 1, dec_width // dec_attn.num_heads),
              "encoder": (args.batch_size, enc_attn.num_heads, visible, enc_width // enc_attn.num_heads)}
    print("attention forward + backward, one layer, median ms:")
    for where, shape in shapes.items():
        timings = {backend.name.lower(): sdpa_ms(shape, backend) for backend in (SDPBackend.FLASH_ATTENTION,
                                                                               SDPBackend.MATH)}
        print(f"  {where} {list(shape)}: " + ", ".join(f"{name} {ms:.1f}" for name, ms in timings.items()))


if __name__ == "__main__":
    main()
