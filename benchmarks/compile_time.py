"""What ``torch.compile`` costs at the start of a run, and how it grows with depth: ``train.compile_scope:
components`` (each component compiled whole, the default) against ``blocks`` (each transformer block alone,
"regional" compilation), compiled by the trainer's own :func:`maskkit.engine.compiling.compile_model`.

``train.compile: auto`` compiles on CUDA, so every GPU run starts by compiling. Compiled whole, an encoder is one
graph of all its blocks, and compile time grows with depth; compiled block by block, dynamo compiles one block
and reuses its code for the others (their parameters are inputs), so it should not. Each configuration runs in
a fresh process with an empty inductor cache (``TORCHINDUCTOR_CACHE_DIR``), ViT-B/16 widths with ``--depths``
encoder blocks and one decoder block, fp32 on the CPU, batch 4: the seconds of the first training step
(compiling) and of the two after it.

    python benchmarks/compile_time.py [--depths 2,4,8]

On a CPU inductor writes C++, on a GPU Triton: the absolute seconds differ there, the growth with depth is the
point.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

import maskkit
from maskkit.engine.compiling import SCOPES, compile_model
from maskkit.recipe import load_recipe


def one_run(scope: str, depth: int) -> None:
    """In this process: build, compile (``components`` or ``blocks``), and print the three steps' seconds."""
    torch.manual_seed(0)
    recipe = load_recipe("recipes/mae_vit_base_patch16.yaml").with_overrides([f"encoder.depth={depth}",
                                                                               "decoder.depth=1"])
    model = maskkit.build_model(recipe)
    compile_model(model, scope, skip=(model.masker,))  # as the trainer does
    images = torch.randn(4, 3, 224, 224)
    seconds = []
    for i in range(3):
        started = time.perf_counter()
        model(images, generator=torch.Generator().manual_seed(i)).loss.backward()
        seconds.append(time.perf_counter() - started)
    print(" ".join(f"{s:.1f}" for s in seconds), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", default="2,4,8")
    parser.add_argument("--run", nargs=2, metavar=("SCOPE", "DEPTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return one_run(args.run[0], int(args.run[1]))
    print("encoder blocks | compile_scope | first step (compiling) | next two steps (s)")
    for depth in map(int, args.depths.split(",")):
        for scope in SCOPES:
            with tempfile.TemporaryDirectory() as cache:
                out = subprocess.run([sys.executable, __file__, "--run", scope, str(depth)], capture_output=True,
                                     text=True, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}, check=True)
            first, *rest = out.stdout.split()
            print(f"{depth} | {scope} | {first} | {' '.join(rest)}", flush=True)


if __name__ == "__main__":
    main()
