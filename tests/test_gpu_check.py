"""``scripts/gpu-check.sh`` itself: its rehearsal runs every command of the GPU check on the CPU with one-block
models (about a minute), so that a session that draws a GPU does not spend its minutes on a broken script."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(os.name != "posix", reason="a bash script")
def test_every_part_ends_by_the_deadline_even_one_that_ignores_sigterm():
    """Each part runs through ``within CAP``: its timeout is cut to what is left before the deadline (so the goals
    table is printed within the device's call whatever the untimed steps took), and a part that outlives its
    SIGTERM (a training run saving its checkpoint, inductor's exit waiting for its compile workers) is killed."""
    text = SCRIPT.read_text()
    calls = [line.strip() for line in text.splitlines() if re.search(r"^[^#]*\btimeout\s", line)]
    assert len(calls) == 1 and calls[0].startswith("timeout -k"), calls  # only inside within()
    within = re.search(r"^within\(\) \{.*?^\}$", text, re.S | re.M).group(0)
    ignores = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    script = f'{within}\nEND=4; KILL_AFTER=1; SECONDS=0\nwithin 100 {sys.executable} -c "{ignores}"\necho "$? $SECONDS"'
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    status, seconds = map(int, proc.stdout.split())
    assert status == 137 and seconds <= 5, proc  # SIGTERM at 3 s (END - KILL_AFTER), SIGKILL at 4 s


@pytest.mark.skipif(os.name != "posix", reason="a bash script")
def test_the_rehearsal_runs_every_step_and_each_goal_finds_its_numbers(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_REHEARSAL": "1", "OUT": str(out)}
    env.pop("GPU_CHECK_FULL", None)
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "failed: see" not in log and "Traceback" not in log, log
    assert not (out / "pip.txt").exists()  # a rehearsal installs nothing
    for name in ("bench-B64.json", "bench-L64.json", "bench-Lauto.json"):
        bench = json.loads((out / name).read_text())
        assert bench["environment"]["device"] == "cpu" and bench["steps"], name
    pipelines = {d["pipeline"] for d in json.loads((out / "bench-B64.json").read_text())["data"]}
    assert {"imagefolder", "imagefolder-device"} <= pipelines
    for run in ("train-B64", "train-B64-device"):  # data.decode: host, then device
        metrics = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == list(range(1, 7)), run
        assert [m["checkpoint_s"] > 0 for m in metrics] == [False] * 3 + [True] + [False] * 2, run  # step 3's
    # $OUT keeps a few small files, as a device tool sends back (at most 8 of 16 MiB on the lent GPU machine):
    # the JPEGs and the training runs' checkpoints stay in a scratch folder, the logs go into one archive
    files = [path for path in out.rglob("*") if path.is_file()]
    assert len(files) <= 8 and all(path.stat().st_size < 2**24 for path in files), files
    with tarfile.open(out / "logs.tar.gz") as logs:
        names = set(logs.getnames())
    assert {f"logs/{name}.txt" for name in ("bench-B64", "train-B64", "train-B64-device", "bench-L64",
                                            "bench-Lauto")} <= names, names
    rows = {r["goal"]: r for r in json.loads((out / "goals.json").read_text())}
    unmeasured = {goal for goal, r in rows.items() if r["measured"] == "-"}
    assert unmeasured == {"ViT-L/16 vs transformers' ViTMAE (eager vs eager, batch 64)",  # GPU_CHECK_FULL only
                          "CPU: official-style / maskkit step time (ViT-B/16), maskkit at >= 80% of the GEMM peak"}
    assert "checkpoint" in rows["maskkit train / bench images/s (ViT-B/16, batch 64)"]["measured"]
    assert "no checkpoint measured" not in rows["maskkit train / bench images/s (ViT-B/16, batch 64)"]["measured"]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"rehearsal: {len(rows) - 2} of {len(rows)} goals found their numbers; none is measured"
    assert any(line.startswith("REHEARSAL: ") for line in lines)
