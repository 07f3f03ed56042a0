"""Where a JPEG's CPU time goes under ``data.decode: host`` and ``data.decode: device``, per image, in one process.

``data.decode: device`` moves decoding out of the loader workers: a worker then only reads the file, parses its
header and draws the crop, and the training device decodes the batch. On a GPU machine the question is whether
the CPU cores still limit; this measures, one thread, the same generated JPEGs (ImageNet-like, ~500x375) and
rounds alternating:

* ``host worker``: what a worker does per image with ``decode: host`` (PIL decode, crop + resize to 224, flip);
* ``device-route worker``: what a worker does with ``decode: device`` (read, header, draws);
* ``device route on the CPU``: the main process's ``DeviceDecoder`` with ``device="cpu"`` (libjpeg-turbo through
  ``torchvision.io.decode_jpeg``, crop + resize, flip) in batches of 64: what nvJPEG takes over on a GPU.

    python benchmarks/decode_cost.py [--images 512] [--rounds 3]

It prints ms per image (median of the rounds) and the host worker's time over the device-route worker's: how
many times more images the same cores can feed with ``decode: device``, while the GPU keeps up.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from maskkit.bench.data import write_jpegs
from maskkit.data import ImageFolder, TrainTransform, sample_generator
from maskkit.data.encoded import DeviceDecoder, EncodedView
from maskkit.data.loading import stack_collate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="maskkit-decode-") as tmp:
        base = ImageFolder(write_jpegs(Path(tmp), args.images) / "images")
        view = EncodedView(base)
        transform = TrainTransform(224, mean=base.mean, std=base.std, output="uint8")
        decoder = DeviceDecoder(transform, "cpu")
        n = len(base)
        planned = [(transform(view[i][0], sample_generator(0, 0, i)), 0) for i in range(n)]

        def host_worker() -> None:
            for i in range(n):
                transform(base[i][0], sample_generator(0, 0, i))

        def device_worker() -> None:
            for i in range(n):
                transform(view[i][0], sample_generator(0, 0, i))

        def device_route() -> None:
            for start in range(0, n, 64):
                decoder(stack_collate(planned[start:start + 64]))

        cases = {"host worker (decode + crop)": host_worker, "device-route worker (read + header + draws)":
                 device_worker, "device route on the CPU (decode_jpeg + crop, batches of 64)": device_route}
        times: dict[str, list[float]] = {name: [] for name in cases}
        for round_ in range(args.rounds):
            for name in (list(cases) if round_ % 2 == 0 else list(reversed(cases))):
                start = time.perf_counter()
                cases[name]()
                times[name].append((time.perf_counter() - start) / n * 1e3)
    ms = {name: statistics.median(values) for name, values in times.items()}
    width = max(map(len, ms))
    for name, value in ms.items():
        print(f"{name:<{width}}  {value:6.3f} ms/image")
    host, worker = ms["host worker (decode + crop)"], ms["device-route worker (read + header + draws)"]
    print(f"host worker / device-route worker: {host / worker:.1f}x (images the same cores can feed)")


if __name__ == "__main__":
    main()
