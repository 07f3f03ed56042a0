"""The README's ten-line Python example runs as printed."""

import re
from pathlib import Path

REPO = Path(__file__).parents[1]


def test_readme_python_example_runs(capsys, monkeypatch):
    text = (REPO / "README.md").read_text()
    code = re.search(r"## Python in ten lines\n\n```python\n(.*?)```", text, flags=re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    monkeypatch.chdir(REPO)
    exec(compile(code, "README.md", "exec"), {})
    assert "tensor([147, 147])" in capsys.readouterr().out
