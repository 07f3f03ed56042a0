"""Layers point down: configuration never imports the engine (checked in a fresh interpreter), and the
comparison's report never imports its runner (checked in the source: the package imports both)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_tree

from maskkit.recipe import Recipe

COMPARE = Path(__file__).parents[1] / "maskkit" / "compare"


@pytest.mark.parametrize("module", ["files", "results", "plots", "report", "plan", "spec", "measure"])
def test_compare_modules_below_the_runner_do_not_import_it(module):
    tree = ast.parse((COMPARE / f"{module}.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert "maskkit.compare.runner" not in imported and "maskkit.compare" not in imported


@pytest.mark.parametrize("module, forbidden", [("maskkit.recipe", "maskkit.engine")])
def test_module_does_not_import(module, forbidden):
    code = (f"import sys, {module}; bad = [m for m in sys.modules if m == {forbidden!r} or "
            f"m.startswith({forbidden!r} + '.')]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_distributed_section_is_validated_with_the_others():
    recipe = Recipe(tiny_tree(distributed={"strategy": "fsdp"}), "r.yaml")
    assert recipe.distributed.strategy == "fsdp"
    with pytest.raises(Exception, match=r"r.yaml: distributed.strategy: expected one of ddp, fsdp, got 'zero3'"):
        Recipe(tiny_tree(distributed={"strategy": "zero3"}), "r.yaml").validate()
