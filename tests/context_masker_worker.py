"""``maskkit`` with the test maskers of :mod:`context_maskers` registered: what ``torchrun`` launches in the
two-process test of a learnable, context-aware masker (a test plugin has no entry point)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from context_maskers import ContextMaskersPlugin  # noqa: E402

from maskkit import cli  # noqa: E402
from maskkit.registry import Registry  # noqa: E402

if __name__ == "__main__":
    cli._registry = lambda args=None: Registry.from_plugins(plugins={"context": ContextMaskersPlugin()})
    cli.run(sys.argv[1:])
