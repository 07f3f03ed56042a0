"""CONTRIBUTING.md's "try an idea in one file" is real: its file is written out and its commands run."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]
DOC = (REPO / "CONTRIBUTING.md").read_text()


def test_one_file_plugin_section_runs(tmp_path):
    files = dict(re.findall(r"<!-- one-file: (\S+) -->\n```\w*\n(.*?)```", DOC, flags=re.S))
    commands = re.search(r"<!-- one-file commands -->\n```bash\n(.*?)```", DOC, flags=re.S).group(1)
    assert set(files) == {"stripes.py"}
    (tmp_path / "stripes.py").write_text(files["stripes.py"])
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "160"}
    outputs = []
    for command in commands.strip().splitlines():
        argv = shlex.split(command)
        assert argv[0] == "maskkit"
        result = subprocess.run([sys.executable, "-m", "maskkit", *argv[1:]], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        outputs.append(result.stdout)
    assert re.search(r"masker\s*│\s*stripes\s*│\s*stripes\.py\s*│\s*sha256:[0-9a-f]{12}", outputs[0]), outputs[0]
    assert "56 of 196 patches hidden" in outputs[1] and (tmp_path / "stripes.png").stat().st_size > 1000
    run = tmp_path / "runs" / "stripes"
    assert (run / "checkpoint.pth").is_file()
    assert str(tmp_path / "stripes.py") in (run / "versions.json").read_text()
