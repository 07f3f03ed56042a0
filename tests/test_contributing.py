"""CONTRIBUTING.md's walkthroughs are real: their files are written out, installed, tested and run."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]
DOC = (REPO / "CONTRIBUTING.md").read_text()


def walkthrough(marker: str = ""):
    """The files and commands of the walkthrough marked ``<!-- {marker}file: NAME -->`` and
    ``<!-- {marker}commands -->`` (the first has no marker; the second ``walkthrough 2 ``)."""
    files = dict(re.findall(rf"<!-- {marker}file: (\S+) -->\n```\w*\n(.*?)```", DOC, flags=re.S))
    commands = re.search(rf"<!-- {marker}commands -->\n```bash\n(.*?)```", DOC, flags=re.S).group(1)
    return files, commands.strip().splitlines()


def test_walkthrough_has_all_pieces():
    files, commands = walkthrough()
    assert set(files) == {"pyproject.toml", "maskkit_checkerboard.py", "test_checkerboard.py", "checkerboard.yaml"}
    assert len(commands) == 5


def run_walkthrough(tmp_path, marker: str = "") -> list[str]:
    """Write the walkthrough's files into ``tmp_path``, run its commands there; their outputs."""
    files, commands = walkthrough(marker)
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
    return outputs


def test_walkthrough_runs(tmp_path):
    outputs = run_walkthrough(tmp_path)
    assert "passed" in outputs[1]
    assert re.search(r"masker\s*│\s*checkerboard\s*│\s*checkerboard\s*│\s*0\.1\.0", outputs[2]), outputs[2]
    assert (tmp_path / "checkerboard.png").stat().st_size > 1000
    assert "98 of 196 patches hidden" in outputs[3]
    assert (tmp_path / "runs" / "checkerboard" / "checkpoint.pth").is_file()


def test_second_walkthrough_has_all_pieces():
    files, commands = walkthrough("walkthrough 2 ")
    assert set(files) == {"pyproject.toml", "maskkit_busy.py", "test_busy.py", "busy.yaml"}
    assert len(commands) == 4


def test_second_walkthrough_a_masker_that_looks_at_the_image_runs(tmp_path):
    outputs = run_walkthrough(tmp_path, "walkthrough 2 ")
    assert re.search(r"\b(\d+) passed", outputs[1]) and "failed" not in outputs[1], outputs[1]
    assert int(re.search(r"\b(\d+) passed", outputs[1]).group(1)) >= 6  # the contract's tests and its own
    shown = " ".join(outputs[2].split())
    assert "masker busy declares 147 of 196 patches hidden per sample; its 32 drawn samples hide min 147, " \
           "mean 147.0, max 147" in shown
    assert shown[shown.index("masker busy"):][:100] in " ".join(DOC.split())  # the line CONTRIBUTING quotes
    assert (tmp_path / "busy.png").stat().st_size > 1000
    assert (tmp_path / "runs" / "busy" / "checkpoint.pth").is_file()
