"""Several processes on the CPU: ``torchrun`` (gloo), two ranks of batch B against one process of batch 2B.

The engine draws masks for the global batch and splits one global permutation per epoch, and DDP/FSDP average
gradients over ranks, so two ranks must log the same losses as one process and end with the same weights, to
float tolerance. The launches run concurrently (module fixture) to keep the wall time down.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import BAD_IMAGES, tiny_tree, write_bad_image_folder

import maskkit
from maskkit.engine.distributed import (
    DistContext,
    DistributedConfig,
    _TupleOutput,
    distributed_config,
    gather_state,
    is_sharded,
    load_state,
)
from maskkit.engine.trainer import Trainer, runtime_seed
from maskkit.errors import CheckpointError, ConfigError

STEPS = 5
LAUNCH_TIMEOUT = 240
# name -> recipe overrides; every run has 2 ranks of batch 4 (global batch 8)
RUNS = {
    "ddp": [],
    "fsdp": ["distributed.strategy=fsdp", "train.accum_steps=2", "train.clip_grad=0.5"],
    "ddp_dense": ["encoder.dense=true", "train.accum_steps=2"],
    "fsdp_compiled": ["distributed.strategy=fsdp", "train.compile=true", "train.compile_scope=blocks"],
}


def _tree(batch_size: int, overrides=()) -> dict:
    tree = tiny_tree()
    tree["train"].update(batch_size=batch_size, max_steps=STEPS, log_every=1, ckpt_every=0)
    return maskkit.Recipe(tree).with_overrides(overrides).tree


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(recipe_file: Path, out: Path, *args: str, nproc: int = 2, launcher=None,
           program=("-m", "maskkit"), evaluate: bool = False) -> subprocess.Popen:
    """``python -m torch.distributed.run --nproc_per_node N -m maskkit train RECIPE ...`` (gloo, 1 thread each);
    ``launcher``: torchrun's rendezvous arguments (default: one node, a free local port); ``program``: what
    torchrun runs instead of ``-m maskkit`` (a script taking maskkit's command line); ``evaluate``: without
    ``--no-eval``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if launcher is None:
        launcher = ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *launcher,
           *program, "--debug", "train", str(recipe_file), *args, "--out", str(out), "--no-progress",
           *(() if evaluate else ("--no-eval",))]
    log = open(out.parent / f"{out.name}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def finish(proc: subprocess.Popen, out: Path) -> None:
    try:
        code = proc.wait(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    log = (out.parent / f"{out.name}.log").read_text()
    assert code == 0, log[-4000:]
    assert "returned a view tensor" not in log, log[-4000:]  # FSDP2 could not hook the backward of an output


def weight_diffs(a: dict, b: dict) -> dict[str, float]:
    """Max ``|a - b|`` per tensor, leaving out the attention key biases: their true gradient is zero (softmax
    ignores a shift shared by all keys), so Adam turns rounding noise into updates of about the learning rate,
    different in every run."""
    diffs = {}
    for key, value in b.items():
        x, y = a[key].float(), value.float()
        if key.endswith("attn.qkv.bias"):
            x, y = (torch.cat([t.chunk(3)[0], t.chunk(3)[2]]) for t in (x, y))
        diffs[key] = (x - y).abs().max().item()
    return diffs


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Start every two-process run at once; each test waits for its own."""
    root = tmp_path_factory.mktemp("dist")
    procs = {}
    for name, overrides in RUNS.items():
        recipe_file = root / f"{name}.yaml"
        recipe_file.write_text(yaml.safe_dump(_tree(4, overrides)))
        procs[name] = (launch(recipe_file, root / name), root / name)
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()


def single_process(name: str, tmp_path: Path, registry, monkeypatch) -> Trainer:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    recipe = maskkit.Recipe(_tree(8, RUNS[name]))
    trainer = Trainer(recipe, tmp_path / f"single_{name}", registry=registry, progress=False)
    trainer.fit()
    return trainer


def _check_same_run(name, launched, tmp_path, registry, monkeypatch):
    single = single_process(name, tmp_path, registry, monkeypatch)  # runs while the ranks start up
    proc, out = launched[name]
    finish(proc, out)
    two, one = losses(out), losses(single.run_dir)
    assert len(two) == len(one) == STEPS  # rank 0 alone wrote the metrics
    diff = max(abs(a - b) for a, b in zip(two, one))
    print(f"{name}: max |loss(2 ranks) - loss(1 process)| over {STEPS} steps = {diff:.3g}")
    assert diff < 1e-5, (two, one)
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == STEPS
    diffs = weight_diffs(state["model"], single.model.state_dict())
    assert max(diffs.values()) < 1e-5, {k: d for k, d in diffs.items() if d > 1e-6}
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pth", "metrics.jsonl", "recipe.yaml",
                                                     "versions.json"]
    return out


def test_two_ddp_ranks_log_the_losses_of_one_process_with_twice_the_batch(launched, tmp_path, registry, monkeypatch):
    _check_same_run("ddp", launched, tmp_path, registry, monkeypatch)


def test_fsdp_with_accumulation_and_clipping_matches_one_process(launched, tmp_path, registry, monkeypatch):
    """FSDP2 (``fully_shard``) works on the CPU with gloo in this torch; its checkpoint is unsharded."""
    out = _check_same_run("fsdp", launched, tmp_path, registry, monkeypatch)
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    exp_avg = state["optimizer"]["state"][0]["exp_avg"]
    assert type(exp_avg) is torch.Tensor  # whole tensors, not DTensor shards


def test_blocks_compiled_after_fsdp_wrapped_them_match_one_process(launched, tmp_path, registry, monkeypatch):
    """``train.compile`` applies after ``fully_shard``: each FSDP2 unit (a transformer block) is then compiled
    with FSDP's hooks around it. By blocks (``compile_scope: blocks``, the scope that compiles in seconds) it
    trains as one process does."""
    _check_same_run("fsdp_compiled", launched, tmp_path, registry, monkeypatch)


def test_ddp_with_a_dense_encoder_and_accumulation(launched, tmp_path, registry, monkeypatch):
    """The dense encoder leaves the MAE decoder's mask token without gradient: DDP must be told (auto)."""
    _check_same_run("ddp_dense", launched, tmp_path, registry, monkeypatch)


def test_resume_with_another_world_size_is_refused(launched, tmp_path, registry, monkeypatch):
    proc, out = launched["ddp"]
    finish(proc, out)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    recipe = maskkit.Recipe(_tree(4, RUNS["ddp"]))
    with pytest.raises(CheckpointError, match="written by 2 process"):
        Trainer(recipe, tmp_path / "again", registry=registry, resume=out / "checkpoint.pth", progress=False).fit()


@pytest.mark.slow
def test_two_fsdp_ranks_resume_continues_the_run(tmp_path, registry, monkeypatch):
    """Stop after 2 of 4 steps, resume with the same world size: the same losses and weights as one run (the
    unsharded checkpoint is sharded again on load). A constant learning rate, so that stopping early by
    ``max_steps`` does not change the schedule. (DDP's resume: the random-stream test below resumes two DDP
    ranks exactly, and the tests above equal two DDP ranks to one process.)"""
    overrides = ["train.lr=0.001", "train.min_lr=0.001", "train.max_steps=4", "train.accum_steps=2",
                 "distributed.strategy=fsdp"]
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(_tree(4, overrides)))
    first = launch(recipe_file, tmp_path / "part", "train.max_steps=2")
    single_tree = _tree(8, overrides)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    full = Trainer(maskkit.Recipe(single_tree), tmp_path / "full", registry=registry, progress=False)
    full.fit()
    finish(first, tmp_path / "part")
    second = launch(recipe_file, tmp_path / "part", "train.max_steps=4", "--resume",
                    str(tmp_path / "part" / "checkpoint.pth"))
    finish(second, tmp_path / "part")
    resumed, whole = losses(tmp_path / "part"), losses(tmp_path / "full")
    assert len(resumed) == 4
    assert max(abs(a - b) for a, b in zip(resumed, whole)) < 1e-5, (resumed, whole)
    state = torch.load(tmp_path / "part" / "checkpoint.pth", weights_only=True)
    diffs = weight_diffs(state["model"], full.model.state_dict())
    assert max(diffs.values()) < 1e-5, {k: d for k, d in diffs.items() if d > 1e-6}


def test_sigterm_to_torchrun_stops_every_rank_at_the_next_steps_with_a_checkpoint(tmp_path):
    """torchrun forwards SIGTERM to its workers and kills them 30 s later: the ranks must agree on a step and
    save before that, whatever ``log_every`` is (here larger than the run; they used to agree only at log steps).
    Each step sleeps 0.3 s (tests/fault_driver.py), so the run would last a minute. The data is a folder with four
    unreadable files, skipped: each rank meets its own, and the run folder's list must hold them all (rank 0's
    used to be the only ones listed when a run was interrupted). Four steps make an epoch, which meets every file;
    the signal comes after step 5."""
    (tmp_path / "images").mkdir()
    images = write_bad_image_folder(tmp_path / "images", good=28)
    tree = _tree(4, ["train.max_steps=200", "train.log_every=1000"])
    tree["data"] = {"name": "image_folder", "root": str(images), "in_chans": 1, "on_bad_image": "skip"}
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(tree))
    out, steps = tmp_path / "run", tmp_path / "steps"
    driver = str(Path(__file__).parent / "fault_driver.py")
    proc = launch(recipe_file, out, program=(driver, "--sleep", "0.3", "--steps-to", str(steps), "--"))
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline and int(_read(steps) or 0) < 5:
        time.sleep(0.05)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    log = (out.parent / f"{out.name}.log").read_text()
    assert time.monotonic() - signalled < 25, log[-3000:]  # before torchrun's SIGKILL
    assert "interrupted by SIGTERM after step" in log and "forcefully exiting via 9" not in log, log[-3000:]
    saved = torch.load(out / "checkpoint.pth", weights_only=True)
    assert 5 < saved["step"] < 200 and saved["world_size"] == 2
    assert not (out / "run.lock").exists()
    listed = sorted(Path(line.split("\t")[0]).name for line in (out / "bad_images.txt").read_text().splitlines())
    assert listed == sorted(BAD_IMAGES)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_the_other_ranks_wait_for_rank_0s_evaluation_beyond_the_process_groups_timeout(tmp_path):
    """After training, rank 0 evaluates while the others wait to shut down together. Under NCCL the process
    group times out after 10 minutes, less than a kNN evaluation of a large dataset takes: the others then failed
    and torchrun killed rank 0 mid-evaluation. Here the group times out after 4 s and the evaluation takes 8 s
    more: the run must end well, with rank 0's scores."""
    tree = _tree(4, ["train.max_steps=2"])
    tree["eval"] = {"knn": True, "k": 5, "random_init_baseline": False, "reconstructions": 0}
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(tree))
    out = tmp_path / "run"
    driver = str(Path(__file__).parent / "fault_driver.py")
    proc = launch(recipe_file, out, program=(driver, "--pg-timeout", "4", "--slow-eval", "8", "--"), evaluate=True)
    finish(proc, out)
    assert json.loads((out / "eval.json").read_text())["knn_top1"] > 0.1  # rank 0's scores, written


@pytest.mark.slow
def test_two_rank_resume_restores_each_ranks_random_stream(tmp_path):
    """Drop-path draws from a stream per rank; the checkpoint keeps every rank's random state, so a two-rank
    run stopped after 2 steps and resumed logs exactly the losses of the same run done in one go."""
    overrides = ["train.lr=0.001", "train.min_lr=0.001", "encoder.drop_path_rate=0.5", "encoder.depth=2"]
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(_tree(4, overrides)))
    straight = launch(recipe_file, tmp_path / "straight", "train.max_steps=4")
    part = launch(recipe_file, tmp_path / "part", "train.max_steps=2")
    finish(part, tmp_path / "part")
    second = launch(recipe_file, tmp_path / "part", "train.max_steps=4", "--resume",
                    str(tmp_path / "part" / "checkpoint.pth"))
    finish(straight, tmp_path / "straight")
    finish(second, tmp_path / "part")
    state = torch.load(tmp_path / "part" / "checkpoint.pth", weights_only=True)
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["cpu"], state["rng"][1]["cpu"])
    assert losses(tmp_path / "part") == losses(tmp_path / "straight")


@pytest.mark.slow
def test_two_nodes_with_the_c10d_rendezvous_train_like_one_process(tmp_path, registry, monkeypatch):
    """The README's multi-node launch, two "nodes" of one process each on this host (``--nnodes 2`` and the
    c10d rendezvous): global ranks 0 and 1, both with local rank 0, log the losses of one process with the
    whole batch."""
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(_tree(4)))
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [launch(recipe_file, tmp_path / f"node{i}", nproc=1,
                    launcher=["--nnodes", "2", "--rdzv_id", "maskkit-test", "--rdzv_backend", "c10d",
                              "--rdzv_endpoint", endpoint]) for i in range(2)]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    single = Trainer(maskkit.Recipe(_tree(8)), tmp_path / "single", registry=registry, progress=False)
    single.fit()
    for i, node in enumerate(nodes):
        finish(node, tmp_path / f"node{i}")
    written = [i for i in range(2) if (tmp_path / f"node{i}" / "metrics.jsonl").exists()]
    assert len(written) == 1  # global rank 0 alone writes, whichever node the rendezvous made it
    two = losses(tmp_path / f"node{written[0]}")
    assert len(two) == STEPS and max(abs(a - b) for a, b in zip(two, losses(single.run_dir))) < 1e-5


@pytest.mark.slow
def test_a_learnable_context_masker_under_ddp_and_fsdp_draws_the_masks_of_one_process(tmp_path, monkeypatch):
    """A masker with a parameter, a buffer and an auxiliary loss, drawn inside the forward from
    ``maskkit.masking.noise(rows=...)``: two ranks of batch 4 (DDP, and FSDP with accumulation) log the losses
    and aux losses of one process of batch 8 and end with the same weights, masker included."""
    from context_maskers import ContextMaskersPlugin

    worker = ("tests/context_masker_worker.py",)
    masker = {"masker": {"name": "learned"}}
    runs = {"ddp": [], "fsdp": ["distributed.strategy=fsdp", "train.accum_steps=2"]}
    procs = {}
    for name, overrides in runs.items():
        tree = maskkit.Recipe({**_tree(4, overrides), **masker}).tree
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(tree))
        procs[name] = launch(tmp_path / f"{name}.yaml", tmp_path / name, program=worker)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"context": ContextMaskersPlugin()})
    singles = {}
    for name, overrides in runs.items():
        single = Trainer(maskkit.Recipe({**_tree(8, overrides), **masker}), tmp_path / f"single_{name}",
                         registry=registry, progress=False)
        single.fit()
        singles[name] = single
    for name in runs:
        finish(procs[name], tmp_path / name)
        two, one = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
                    for d in (tmp_path / name, singles[name].run_dir))
        assert len(two) == len(one) == STEPS
        for key in ("loss", "loss_main", "aux/masker.fit"):
            diff = max(abs(a[key] - b[key]) for a, b in zip(two, one))
            assert diff < 1e-5, (name, key, diff)
        state = torch.load(tmp_path / name / "checkpoint.pth", weights_only=True)
        diffs = weight_diffs(state["model"], singles[name].model.state_dict())
        assert max(diffs.values()) < 1e-5, {k: d for k, d in diffs.items() if d > 1e-6}
        assert float(state["model"]["masker.scores"].abs().sum()) > 0
        assert int(state["model"]["masker.draws"]) == STEPS * (2 if name == "fsdp" else 1)


def test_runtime_random_streams_differ_per_rank():
    assert len({runtime_seed(0, rank) for rank in range(8)}) == 8
    assert runtime_seed(0, 0) != 0 and runtime_seed(1, 0) != runtime_seed(0, 0)


# -- in-process checks --------------------------------------------------------------------------------------


def test_distributed_section_is_validated():
    assert distributed_config(maskkit.Recipe(tiny_tree())) == DistributedConfig()
    cfg = distributed_config(maskkit.Recipe(tiny_tree(distributed={"strategy": "fsdp",
                                                                   "reshard_after_forward": False})))
    assert cfg.strategy == "fsdp" and not cfg.reshard_after_forward
    with pytest.raises(ConfigError, match=r"distributed\.strategy: expected one of ddp, fsdp, got 'zero3'"):
        distributed_config(maskkit.Recipe(tiny_tree(distributed={"strategy": "zero3"})))
    with pytest.raises(ConfigError, match=r"distributed\.stratgy: unknown key \(did you mean strategy\?\)"):
        distributed_config(maskkit.Recipe(tiny_tree(distributed={"stratgy": "fsdp"})))
    with pytest.raises(ConfigError, match="find_unused_parameters"):
        distributed_config(maskkit.Recipe(tiny_tree(distributed={"find_unused_parameters": "yes"})))


def test_trainer_rejects_a_bad_distributed_section_before_training(tmp_path, builtin_registry):
    recipe = maskkit.Recipe(tiny_tree(distributed={"strategy": "zero3"}))
    with pytest.raises(ConfigError, match="distributed.strategy"):
        Trainer(recipe, tmp_path, registry=builtin_registry, progress=False).fit()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_wrapped_output_is_a_namedtuple_with_the_same_fields(builtin_registry):
    """What DDP/FSDP wrap returns a namedtuple (they find its tensors); ``out.loss`` still works."""
    model = maskkit.build_model(maskkit.Recipe(tiny_tree()), builtin_registry)
    images = torch.randn(2, 1, 28, 28)
    out = _TupleOutput(model)(images, generator=torch.Generator().manual_seed(0))
    ref = model(images, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, tuple) and out._fields == ("loss", "pred", "mask", "target", "aux", "main_loss")
    assert torch.equal(out.loss, ref.loss) and torch.equal(out.mask, ref.mask)


def test_state_helpers_without_sharding(builtin_registry):
    model = maskkit.build_model(maskkit.Recipe(tiny_tree()), builtin_registry)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1, 28, 28)).loss.backward()
    opt.step()
    assert not is_sharded(model)
    assert gather_state(model, opt, DistContext(rank=1, world_size=2)) is None  # only rank 0 keeps it
    model_state, optim_state = gather_state(model, opt, DistContext())
    fresh = maskkit.build_model(maskkit.Recipe(tiny_tree()), builtin_registry)
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    load_state(fresh, fresh_opt, model_state, optim_state)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
