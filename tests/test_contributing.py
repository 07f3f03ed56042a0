"""CONTRIBUTING.md's walkthrough is real: its files are written out, installed, tested and run."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
DOC = (REPO / "CONTRIBUTING.md").read_text()


def walkthrough():
    files = dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", DOC, flags=re.S))
    commands = re.search(r"<!-- commands -->\n```bash\n(.*?)```", DOC, flags=re.S).group(1).strip().splitlines()
    return files, commands


def test_walkthrough_has_all_pieces():
    files, commands = walkthrough()
    assert set(files) == {"pyproject.toml", "maskkit_checkerboard.py", "test_checkerboard.py", "checkerboard.yaml"}
    assert len(commands) == 5


def test_walkthrough_runs(tmp_path):
    files, commands = walkthrough()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    site = tmp_path / "site"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(tmp_path), str(REPO)])}
    env.pop("MASKKIT_DISABLE_PLUGIN_AUTOLOAD", None)
    outputs = []
    for command in commands:
        argv = shlex.split(command)
        if argv[:2] == ["pip", "install"]:  # install into a private folder, not the test environment
            argv = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), "."]
        elif argv[0] == "maskkit":
            argv = [sys.executable, "-m", "maskkit", *argv[1:]]
        elif argv[0] == "python":
            argv = [sys.executable, *argv[1:]]
        result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        outputs.append(result.stdout)
    assert "passed" in outputs[1]
    assert re.search(r"masker\s*│\s*checkerboard\s*│\s*checkerboard\s*│\s*0\.1\.0", outputs[2]), outputs[2]
    assert (tmp_path / "checkerboard.png").stat().st_size > 1000
    assert "98 of 196 patches hidden" in outputs[3]
    assert (tmp_path / "runs" / "checkerboard" / "checkpoint.pth").is_file()
