"""maskkit compare, what a log shows: one plain line when a run starts and when it ends (its scores, or why it
failed and where its log is), from the process that runs it or, for a worker process, from the runner; and a
signal during an evaluation, which stops the comparison with the command that continues it."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import types

import pytest
import yaml
from helpers import SmallFashion, tiny_tree
from rich.console import Console
from test_compare import PoisonVariant, write_spec

import maskkit
from maskkit.compare import load_spec, make_plan, run_comparison

NUMBER = r"[\d,]+(\.\d+)?"


def poisoned_registry():
    """``small_fashion`` data, and variant r75 diverging at its first step."""
    return maskkit.Registry.from_plugins(autoload=False, plugins={"small": SmallFashion(),
                                                                  "poison": PoisonVariant("r75")})


def two_run_plan(tmp_path, registry):
    """r75 (fails) and r50 (finishes), 2 steps each, kNN and linear probe, no pictures nor baseline."""
    spec = write_spec(tmp_path, budget={"steps": 2}, eval={"knn": True, "linear": True, "baseline": False,
                                                           "reconstructions": 0, "mask_samples": 0})
    return make_plan(load_spec(spec, registry=registry), registry)


def printed(console_file) -> list[str]:
    return console_file.getvalue().splitlines()


def done_line(prefix: str, out, run_id: str) -> str:
    """The pattern of a finished run's line: its kNN and linear scores as in its eval.json, then the rest."""
    scores = json.loads((out / "runs" / run_id / "eval.json").read_text())
    return (rf"^{re.escape(prefix)} {run_id}: done: kNN top-1 {100 * scores['knn_top1']:.2f}%, linear top-1 "
            rf"{100 * scores['linear_top1']:.2f}%, final loss \d+\.\d{{4}}, {NUMBER} images/s, training {NUMBER} s, "
            rf"evaluation {NUMBER} s$")


def test_each_run_says_when_it_starts_and_how_it_ended(tmp_path):
    """Without progress bars (a log file), in this process: i/n and the run, then its scores or its failure with
    its log, each one unwrapped line (the console is narrower than the lines)."""
    registry = poisoned_registry()
    out = tmp_path / "out"
    buffer = io.StringIO()
    run_comparison(two_run_plan(tmp_path, registry), out, registry=registry, progress=False, report=False,
                   console=Console(file=buffer, width=40))
    lines = printed(buffer)
    assert "[1/2] r75/seed0: training (2 steps)" in lines and "[2/2] r50/seed0: training (2 steps)" in lines
    failed = [line for line in lines if line.startswith("[1/2] r75/seed0: failed: ")]
    assert len(failed) == 1 and "non-finite loss at step 0" in failed[0]
    assert failed[0].endswith(f"; log: {out / 'runs' / 'r75' / 'seed0' / 'metrics.jsonl'}")  # its losses
    assert sum(bool(re.match(done_line("[2/2]", out, "r50/seed0"), line)) for line in lines) == 1, lines
    assert lines.index("[2/2] r50/seed0: training (2 steps)") > lines.index(failed[0])  # as they happen


def test_a_worker_process_run_is_told_by_the_runner(tmp_path, monkeypatch):
    """With ``--gpus``, each run goes in a worker process (here run at once by a stand-in for Popen, through the
    worker's own main) and the runner, which learns the outcome, prints its lines with its GPU and its log."""
    from maskkit.compare import runner
    from maskkit.compare.worker import main as worker_main

    registry = poisoned_registry()
    plan = two_run_plan(tmp_path, registry)
    out = tmp_path / "out"

    class Worker:
        """A worker process that has run its command by the time it is started."""

        def __init__(self, cmd, **kwargs):
            self.code = worker_main(cmd[cmd.index("maskkit.compare.worker") + 1:])

        def poll(self):
            return self.code

    fake = types.SimpleNamespace(Popen=Worker, STDOUT=subprocess.STDOUT, TimeoutExpired=subprocess.TimeoutExpired)
    monkeypatch.setattr(runner, "subprocess", fake)
    monkeypatch.setattr("maskkit.registry.registry_for", lambda plugins: registry)
    buffer = io.StringIO()
    outcome = run_comparison(plan, out, registry=registry, progress=False, report=False, gpus="0,1",
                             console=Console(file=buffer, width=40))
    assert outcome.failed == ("r75/seed0",) and outcome.trained == ("r50/seed0",)
    lines = printed(buffer)
    logs = {run_id: out / "runs" / run_id / "worker.log" for run_id in ("r75/seed0", "r50/seed0")}
    assert f"[gpu 0] [1/2] r75/seed0: training (2 steps; log: {logs['r75/seed0']})" in lines
    assert f"[gpu 1] [2/2] r50/seed0: training (2 steps; log: {logs['r50/seed0']})" in lines
    failed = [line for line in lines if line.startswith("[gpu 0] [1/2] r75/seed0: failed: ")]
    assert len(failed) == 1 and "non-finite loss at step 0" in failed[0]
    assert failed[0].endswith(f"; log: {logs['r75/seed0']}") and failed[0].count("worker.log") == 1
    assert outcome.errors["r75/seed0"].endswith(f"; see {logs['r75/seed0']}")  # the summary names the log too
    assert sum(bool(re.match(done_line("[gpu 1] [2/2]", out, "r50/seed0"), line)) for line in lines) == 1, lines


STOP_IN_EVALUATION = '''
"""small_fashion; STOP_AT=test: reading its test split (the evaluation only does) sends this process SIGTERM;
STOP_AT=train_end: so does the end of training, after the training loop's last step boundary."""

import os
import signal

import maskkit


def small_fashion(split="train"):
    from maskkit.data.fashion_mnist import FashionMNIST

    if split == "test" and os.environ.get("STOP_AT") == "test":
        os.kill(os.getpid(), signal.SIGTERM)
    data = FashionMNIST(split, source="embedded")
    n = 96 if split == "train" else 48
    data.images, data.labels = data.images[:n], data.labels[:n]
    return data


@maskkit.hookimpl
def maskkit_add_datasets():
    return {"small_fashion": small_fashion}


@maskkit.hookimpl
def maskkit_train_end(trainer, model, run_dir):
    if os.environ.get("STOP_AT") == "train_end":
        os.kill(os.getpid(), signal.SIGTERM)
'''


def compare_command(folder, stop_at: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "STOP_AT"}
    if stop_at:
        env["STOP_AT"] = stop_at
    return subprocess.run([sys.executable, "-m", "maskkit", "compare", "spec.yaml", "--out", "out", "--no-progress",
                           "--gpus", "none"], cwd=folder, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("stop_at", ["test", "train_end"], ids=["in-the-evaluation", "after-the-last-step"])
def test_sigterm_during_an_evaluation_says_how_to_continue_and_rerunning_continues(tmp_path, stop_at):
    """The signal stops the comparison at once (an evaluation has no step boundary; one that came after the
    training loop's last boundary, before the evaluation) with the training stop's line: what it stopped, the
    checkpoint, the command that continues; that command then only evaluates."""
    (tmp_path / "stopper.py").write_text(textwrap.dedent(STOP_IN_EVALUATION))
    tree = tiny_tree(data={"name": "small_fashion"})
    tree["train"].update(ckpt_every=2)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tree))
    spec = {"base": "tiny.yaml", "plugins": ["stopper.py"], "seeds": 1, "budget": {"steps": 2},
            "variants": {"r75": {}}, "eval": {"knn": True, "baseline": False, "reconstructions": 0,
                                              "mask_samples": 0, "k": 3}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "out" / "runs" / "r75" / "seed0"

    stopped = compare_command(tmp_path, stop_at)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert stopped.stderr.splitlines()[-1] == (
        "maskkit: error: interrupted by SIGTERM while evaluating r75/seed0, trained to step 2; checkpoint of step 2 "
        f"saved in {os.path.join('out', 'runs', 'r75', 'seed0', 'checkpoint.pth')}; resume with: maskkit compare "
        "spec.yaml --out out")
    assert "[1/1] r75/seed0: training (2 steps)" in stopped.stdout and not (run_dir / "eval.json").exists()
    if stop_at != "test":  # the same folder as the other case's: its rerun is tested once (a compare takes ~5 s)
        return
    again = compare_command(tmp_path, None)
    assert again.returncode == 0, again.stderr
    assert "1 runs: 0 finished, 0 to resume, 1 to evaluate, 0 to train" in again.stdout
    assert "[1/1] r75/seed0: evaluating (2 steps)" in again.stdout
    assert re.search(r"^\[1/1\] r75/seed0: done: kNN top-1 ", again.stdout, re.M)
    assert json.loads((run_dir / "compare.json").read_text())["status"] == "done"


@pytest.mark.parametrize("during", [None, "while evaluating r/seed0, trained to step 4"])
def test_an_interruption_says_what_it_stopped(during):
    from maskkit.errors import RunInterrupted

    text = str(RunInterrupted(signal.SIGTERM, 4, "c.pth", "maskkit compare s.yaml --out o", during=during))
    assert text == (f"interrupted by SIGTERM {during or 'after step 4'}; checkpoint of step 4 saved in c.pth; "
                    "resume with: maskkit compare s.yaml --out o")
