"""``python -m maskkit.bench [options]``: the ``maskkit bench`` command on its own."""

import argparse
import sys

from maskkit.bench.cli import add_parser
from maskkit.console import make_console
from maskkit.errors import MaskkitError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskkit.bench")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args, make_console())
    except MaskkitError as exc:
        print(f"maskkit bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
