"""What ``torch.compile`` costs at the start of a run, and how it grows with depth: the trainer's way (each
component compiled whole) against compiling each transformer block alone ("regional" compilation).

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
from maskkit.recipe import load_recipe


def one_run(mode: str, depth: int) -> None:
    """In this process: build, compile (``whole`` or ``blocks``), and print the three steps' seconds."""
    torch.manual_seed(0)
    recipe = load_recipe("recipes/mae_vit_base_patch16.yaml").with_overrides([f"encoder.depth={depth}",
                                                                               "decoder.depth=1"])
    model = maskkit.build_model(recipe)
    if mode == "whole":  # as the trainer does
        for component in model.children():
            if component is not model.masker:
                component.compile()
    else:
        for block in [*model.encoder.blocks, *model.decoder.decoder_blocks]:
            block.compile()
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
    parser.add_argument("--run", nargs=2, metavar=("MODE", "DEPTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return one_run(args.run[0], int(args.run[1]))
    print("encoder blocks | compiled | first step (compiling) | next two steps (s)")
    for depth in map(int, args.depths.split(",")):
        for mode in ("whole", "blocks"):
            with tempfile.TemporaryDirectory() as cache:
                out = subprocess.run([sys.executable, __file__, "--run", mode, str(depth)], capture_output=True,
                                     text=True, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}, check=True)
            first, *rest = out.stdout.split()
            print(f"{depth} | {mode} | {first} | {' '.join(rest)}", flush=True)


if __name__ == "__main__":
    main()
