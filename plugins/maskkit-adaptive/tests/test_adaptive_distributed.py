"""attmask under FSDP2 (``torchrun``, 2 ranks, gloo, one unit per block resharded after its forward): the
[CLS] attention is read inside the last block's forward, while its parameters are gathered. Launched as
maskkit's own ``tests/test_distributed.py`` launches its runs."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from adaptive_helpers import TINY, registry

import maskkit

ROOT = Path(__file__).resolve().parents[3]
STEPS = 2
LAUNCH_TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_attmask_trains_under_fsdp_with_default_settings(tmp_path):
    """The reviewer's case: masker attmask (defaults), strategy fsdp (reshard_after_forward true), 2 ranks of
    batch 4; drop path on, so the eval-mode scoring pass runs under FSDP too."""
    recipe = maskkit.load_recipe(ROOT / "recipes" / "quickstart.yaml", [
        *TINY, "train.batch_size=4", f"train.max_steps={STEPS}", "train.log_every=1", "train.ckpt_every=0",
        "eval.knn=false", "masker={name: attmask}", "distributed.strategy=fsdp", "encoder.drop_path_rate=0.1",
    ], registry=registry())
    assert recipe.tree["distributed"].get("reshard_after_forward", True) is True
    recipe_file, out = tmp_path / "fsdp_attmask.yaml", tmp_path / "run"
    recipe_file.write_text(yaml.safe_dump(recipe.tree))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "maskkit", "--debug", "train", str(recipe_file), "--out",
           str(out), "--no-progress", "--no-eval"]
    run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         timeout=LAUNCH_TIMEOUT)
    assert run.returncode == 0, run.stdout[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == STEPS and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == STEPS
