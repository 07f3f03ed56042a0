"""Write the Fashion-MNIST subset shipped in ``maskkit/data/embedded/``.

Usage::

    python -m maskkit.data.make_embedded_subset SRC_DIR [--out DIR] [--train N] [--test N]

``SRC_DIR`` holds the four original Fashion-MNIST IDX files (gz or raw, e.g.
``/usr/share/datasets/fashion-mnist``). The subset is the FIRST ``N`` examples of each split, in file
order (defaults: 10,000 train, 2,000 test). Output is deterministic: same input, same bytes (gzip mtime 0,
no file name in the gzip header).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from maskkit.data.idx import read_idx, write_idx

__all__ = ["make_subset", "main"]

DEFAULT_COUNTS = {"train": 10_000, "t10k": 2_000}
_EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"


def _find(src: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (src / name).is_file():
            return src / name
    raise FileNotFoundError(f"{src}: expected {stem}.gz or {stem}")


def make_subset(src: Path, out: Path, counts: dict[str, int]) -> dict[str, torch.Tensor]:
    """Copy the first ``counts[prefix]`` examples of each split from ``src`` to gzip IDX files in ``out``.

    ``counts`` maps the file prefix (``"train"``, ``"t10k"``) to a number of examples. Returns the label
    tensor (int64 ``[N]``) written for each prefix.
    """
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, torch.Tensor] = {}
    for prefix, n in counts.items():
        images = read_idx(_find(src, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(src, f"{prefix}-labels-idx1-ubyte"))
        if n > images.shape[0] or images.shape[0] != labels.shape[0]:
            raise ValueError(f"{src}: {prefix} has {images.shape[0]} images / {labels.shape[0]} labels, "
                             f"cannot take the first {n}")
        write_idx(out / f"{prefix}-images-idx3-ubyte.gz", images[:n].contiguous())
        write_idx(out / f"{prefix}-labels-idx1-ubyte.gz", labels[:n].contiguous())
        written[prefix] = labels[:n].long()
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints class counts and file sizes."""
    parser = argparse.ArgumentParser(prog="python -m maskkit.data.make_embedded_subset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="folder with the original Fashion-MNIST IDX files")
    parser.add_argument("--out", type=Path, default=_EMBEDDED_DIR, help="output folder (default: %(default)s)")
    parser.add_argument("--train", type=int, default=DEFAULT_COUNTS["train"], help="train examples to keep")
    parser.add_argument("--test", type=int, default=DEFAULT_COUNTS["t10k"], help="test examples to keep")
    args = parser.parse_args(argv)
    written = make_subset(args.src, args.out, {"train": args.train, "t10k": args.test})
    for prefix, labels in written.items():
        counts = torch.bincount(labels, minlength=10).tolist()
        print(f"{prefix}: {labels.numel()} examples, class counts {counts}")
    total = 0
    for path in sorted(args.out.glob("*.gz")):
        size = path.stat().st_size
        total += size
        print(f"{path.name}: {size} bytes")
    print(f"total: {total} bytes ({total / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
