"""Fault injection: every failure is one clear line, and nothing is lost.

Each test breaks something (kill -9 at a random step and in the middle of a checkpoint write, SIGINT, SIGTERM, a
full disk, unreadable images, raising plugins, NaN/inf weights, two runs into one folder) and then checks that
the run folder is still usable: the resumed run's losses equal those of an uninterrupted run, bit for bit.
Child processes run tests/fault_driver.py (``maskkit train`` with faults injected); resumes run in-process.
"""

from __future__ import annotations

import errno
import inspect
import json
import multiprocessing
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import tiny_tree, write_bad_image_folder
from hypothesis import given, settings
from hypothesis import strategies as st

import maskkit
from maskkit import cli
from maskkit.engine import checkpoint as ckpt
from maskkit.engine import run_folder
from maskkit.engine.run_folder import LOCK_NAME, RunLock, truncate_metrics
from maskkit.engine.trainer import Trainer
from maskkit.errors import RunFolderError, TrainingError, UnreadableImageError, describe_failure
from maskkit.recipe import Recipe, load_recipe

HERE = Path(__file__).parent
STEPS, CKPT_EVERY = 16, 4


def fault_tree(**train):
    tree = tiny_tree()
    tree["train"].update({"max_steps": STEPS, "ckpt_every": CKPT_EVERY, "log_every": 1, **train})
    return tree


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def steps(run_dir):
    return [json.loads(line)["step"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full(tmp_path_factory, builtin_registry):
    """The uninterrupted run every interrupted one must match."""
    out = tmp_path_factory.mktemp("full")
    Trainer(load_recipe(fault_tree()), out, registry=builtin_registry, progress=False).fit()
    return out


def resume(run_dir, registry):
    """Continue a run from its checkpoint in this process (the recipe comes from the checkpoint)."""
    path = Path(run_dir) / "checkpoint.pth"
    recipe = Recipe(ckpt.load_training_checkpoint(path)["recipe"], str(path))
    return Trainer(recipe, run_dir, registry=registry, resume=path, progress=False).fit()


# -- child processes --------------------------------------------------------------------------------------


def start_child(tmp_path, *driver_args, overrides=(), new_session=False):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(fault_tree()))
    out = tmp_path / "run"
    cmd = [sys.executable, str(HERE / "fault_driver.py"), *driver_args, "--", "train", str(recipe), "--out",
           str(out), "--no-progress", "--no-eval", *overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=new_session)
    return proc, out


def wait_for_rows(proc, out, rows, timeout=240):
    """Wait until the child has logged ``rows`` steps (or has exited)."""
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= rows:
            return
        time.sleep(0.01)
    assert proc.poll() is None, f"the child ended early: {proc.communicate()}"
    raise AssertionError("the child logged too few steps in time")


def test_kill_9_at_a_random_step_then_resume_or_rerun(tmp_path, full, builtin_registry):
    """A hard kill anywhere: before the first checkpoint the folder is reused by a plain rerun, after it the run
    resumes (taking over the dead run's lock) and ends exactly as the uninterrupted run."""
    rows = random.Random().randint(1, STEPS - 3)
    proc, out = start_child(tmp_path, "--sleep", "0.2")
    wait_for_rows(proc, out, rows)
    proc.kill()
    proc.communicate()
    assert (out / LOCK_NAME).is_file()  # left by the dead run
    if (out / "checkpoint.pth").exists():
        saved = ckpt.load_training_checkpoint(out / "checkpoint.pth")["step"]
        assert saved % CKPT_EVERY == 0 and saved <= max(steps(out)), rows
        resume(out, builtin_registry)
    else:
        Trainer(load_recipe(out / "recipe.yaml"), out, registry=builtin_registry, progress=False).fit()
    assert losses(out) == losses(full), f"killed after {rows} steps"
    assert not (out / LOCK_NAME).exists() and not list(out.glob(".*.tmp"))


def test_kill_9_in_the_middle_of_a_checkpoint_write(tmp_path, full, builtin_registry):
    """Killed halfway through writing the second checkpoint: the first stays intact, the half-written temporary
    file is removed at the next start, the metrics logged after the checkpoint are not duplicated."""
    proc, out = start_child(tmp_path, "--die-in-save", "2")
    proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL
    assert ckpt.load_training_checkpoint(out / "checkpoint.pth")["step"] == CKPT_EVERY
    assert len(list(out.glob(".checkpoint.pth.*.tmp"))) == 1
    assert steps(out) == list(range(1, 2 * CKPT_EVERY + 1))
    resume(out, builtin_registry)
    assert steps(out) == list(range(1, STEPS + 1)) and losses(out) == losses(full)
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("sig, to_group", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGTERM, True)],
                         ids=["SIGINT", "SIGTERM", "SIGTERM-to-the-group-with-workers"])
def test_a_signal_saves_a_checkpoint_and_prints_the_resume_command(tmp_path, full, builtin_registry, monkeypatch,
                                                                     capsys, sig, to_group):
    """Ctrl-C or SIGTERM mid-run: a checkpoint at the step boundary, the exact resume command, exit 128+N; while
    the run trains, a second run into its folder is refused and changes nothing. ``to_group``: the signal goes
    to the whole process group, loader workers included (``timeout``, Slurm); the workers leave it to the
    main process."""
    overrides = ("train.num_workers=2",) if to_group else ()
    proc, out = start_child(tmp_path, "--sleep", "0.2", overrides=overrides, new_session=to_group)
    wait_for_rows(proc, out, 3)
    with pytest.raises(RunFolderError, match=rf"another run is training into this folder \(pid {proc.pid} on "):
        Trainer(load_recipe(fault_tree()), out, registry=builtin_registry, progress=False).fit()
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + sig, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"maskkit: error: interrupted by {sig.name} after step ") and err.count("\n") == 1, err
    saved = ckpt.load_training_checkpoint(out / "checkpoint.pth")["step"]
    assert f"checkpoint of step {saved} saved" in line and steps(out)[-1] == saved  # nothing trained is lost
    assert not (out / LOCK_NAME).exists()
    command = line.split("resume with: ", 1)[1]
    monkeypatch.setattr(cli, "_registry", lambda args=None: builtin_registry)
    assert cli.main([*shlex.split(command)[1:], "--no-progress", "--no-eval"]) == 0
    assert losses(out) == losses(full)


# -- run folders --------------------------------------------------------------------------------------------


def _no_hard_links(*args, **kwargs):
    raise OSError(errno.EPERM, "Operation not permitted")  # vfat, exFAT, some FUSE and SMB mounts


@pytest.fixture(params=["flock", "no kernel locks", "no hard links", "neither"])
def lock_kind(request, monkeypatch):
    """Every way a run folder is locked: the kernel's ``flock``, or the record alone (filesystems without it);
    ``run.lock`` published by a hard link, or created exclusively where there are none."""
    if request.param in ("no kernel locks", "neither"):
        monkeypatch.setattr(run_folder, "_flock", lambda fd: None)
    if request.param in ("no hard links", "neither"):
        monkeypatch.setattr(os, "link", _no_hard_links)
    return request.param


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def test_a_held_lock_names_its_run_and_goes_with_it(tmp_path, lock_kind):
    """While held, ``run.lock`` holds the owner's record (a second run is refused naming it, even once the record
    is a minute old); released, it is gone and the next run takes the folder."""
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        old = time.time() - 60
        os.utime(tmp_path / LOCK_NAME, (old, old))
        with pytest.raises(RunFolderError, match=f"pid {os.getpid()} on"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists() and not list(tmp_path.iterdir())
    with RunLock(tmp_path) as again:
        assert again.held


def test_a_stale_lock_is_taken_over_and_a_live_or_foreign_one_refuses(tmp_path, lock_kind):
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    with RunLock(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(RunFolderError, match=f"pid {os.getpid()}"):  # a second taker, even in-process
            RunLock(tmp_path).acquire()
    assert not lock.exists()
    # a live process on this host that holds no kernel lock (an older maskkit), and a record from another host
    for owner in ({"pid": os.getppid(), "host": socket.gethostname()}, {"pid": _dead_pid(), "host": "elsewhere"}):
        lock.write_text(json.dumps(owner))
        with pytest.raises(RunFolderError, match="delete .*run.lock"):
            RunLock(tmp_path).acquire()


def test_where_flock_is_local_to_a_host_the_record_still_decides(tmp_path, monkeypatch):
    """On NFS with local_lock or Lustre with localflock, flock succeeds on every host: another host's live run
    with our pid, or a record still being written (empty and young), must not be taken over."""
    monkeypatch.setattr(run_folder, "_flock", lambda fd: True)
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": os.getpid(), "host": "node-a", "time": "earlier"}))
    with pytest.raises(RunFolderError, match="pid .* on node-a"):
        RunLock(tmp_path).acquire()
    lock.write_text("")
    with pytest.raises(RunFolderError, match="a run that is starting"):
        RunLock(tmp_path).acquire()
    os.utime(lock, (time.time() - 120, time.time() - 120))  # empty for two minutes: its writer died
    with RunLock(tmp_path) as taken:
        assert taken.held and json.loads(lock.read_text())["pid"] == os.getpid()


def test_two_takers_of_one_stale_record_never_both_hold_it(tmp_path, monkeypatch):
    """Without kernel locks, the worst interleaving: B has checked that the stale lock is still there, then A
    takes it over (its fresh lock replaces the stale one), then B removes what it believes is the stale lock. A
    keeps the folder; B is refused, naming A."""
    monkeypatch.setattr(run_folder, "_flock", lambda fd: None)
    lock = tmp_path / LOCK_NAME
    stale = {"pid": _dead_pid(), "host": socket.gethostname()}
    lock.write_text(json.dumps(stale))
    a, b = RunLock(tmp_path), RunLock(tmp_path)
    real_owner = RunLock._owner
    reads = []

    def owner_then_a_takes_over(self):
        found = real_owner(self)
        reads.append(found)
        if self is b and len(reads) == 2:  # B's re-check: still stale... and A takes over right after it
            a.acquire()
        return found

    monkeypatch.setattr(RunLock, "_owner", owner_then_a_takes_over)
    with pytest.raises(RunFolderError, match=f"pid {os.getpid()}"):
        b.acquire()
    assert a.held and not b.held and reads[1] == stale
    assert json.loads(lock.read_text())["pid"] == os.getpid() and not list(tmp_path.glob(".*stale"))
    monkeypatch.setattr(RunLock, "_owner", real_owner)
    a.release()
    assert not lock.exists()


def test_a_taker_that_opened_a_lock_being_released_tries_again(tmp_path, monkeypatch):
    """B opens ``run.lock``; before B locks it, its holder A releases it (unlinks the file) and C takes a fresh
    one. B's lock on the unlinked file is worthless: B sees that, tries again and is refused, naming C."""
    a, b, c = RunLock(tmp_path), RunLock(tmp_path), RunLock(tmp_path)
    a.acquire()
    real_flock = run_folder._flock
    calls = []  # locks of the file named run.lock (not of a private file about to be linked there)

    def release_and_retake_before_b_locks(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(f"/{LOCK_NAME}"):
            calls.append(fd)
            if len(calls) == 1:  # B's first lock attempt of the run.lock it opened
                a.release()
                c.acquire()  # C publishes a fresh run.lock, locked before it is linked
        return real_flock(fd)

    monkeypatch.setattr(run_folder, "_flock", release_and_retake_before_b_locks)
    with pytest.raises(RunFolderError, match=f"another run is training into this folder \\(pid {os.getpid()}"):
        b.acquire()
    assert len(calls) == 2 and c.held and not b.held and not a.held  # B's lock of the unlinked file, then C's
    assert os.fstat(c._fd).st_ino == os.stat(tmp_path / LOCK_NAME).st_ino
    c.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_two_runs_starting_in_a_fresh_folder_one_trains(tmp_path, monkeypatch):
    """A creates ``run.lock`` but is a moment late to lock it; B, starting meanwhile, must not find it unlocked
    and empty (then B took it and refused as "a run that is starting", A's lock failed, and nobody trained).
    ``run.lock`` now appears already locked and filled in, so exactly one of them holds the folder and the other
    is refused naming it, whichever way the threads interleave."""
    real_flock = run_folder._flock
    b_locked, a_locked = threading.Event(), threading.Event()
    who = threading.local()

    def a_is_late(fd):
        if getattr(who, "name", None) == "A":
            b_locked.wait(5)
            taken = real_flock(fd)
            a_locked.set()
            return taken
        taken = real_flock(fd)
        b_locked.set()
        a_locked.wait(5)
        return taken

    monkeypatch.setattr(run_folder, "_flock", a_is_late)
    results, locks = {}, {}

    def take(name):
        who.name = name
        locks[name] = RunLock(tmp_path)
        try:
            locks[name].acquire()
            results[name] = "held"
        except RunFolderError as exc:
            results[name] = str(exc)

    a = threading.Thread(target=take, args=("A",))
    a.start()
    time.sleep(0.2)  # A is inside its lock call
    b = threading.Thread(target=take, args=("B",))
    b.start()
    a.join(10)
    b.join(10)
    assert sorted(results.values())[-1] == "held" and list(results.values()).count("held") == 1, results
    refused = next(r for r in results.values() if r != "held")
    assert f"pid {os.getpid()} on" in refused, refused  # the holder's record, never an empty one
    holder = next(lock for lock in locks.values() if lock.held)
    holder.release()
    assert not (tmp_path / LOCK_NAME).exists() and not list(tmp_path.glob(".*"))  # no private file left


def _take_and_hold(folder: str, barrier, results, hold_s: float) -> None:
    barrier.wait()
    try:
        with RunLock(folder):
            time.sleep(hold_s)  # the others try while this one holds
            results.put("held")
    except RunFolderError as exc:
        results.put(str(exc))


def test_many_takers_of_one_stale_lock_exactly_one_holds_it(tmp_path):
    """Eight processes released at once on a killed run's lock, three times: one takes the folder, seven are
    refused in one line."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for round_ in range(3):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        (folder / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
        barrier, queue = context.Barrier(8), context.Queue()
        takers = [context.Process(target=_take_and_hold, args=(str(folder), barrier, queue, 2.5)) for _ in range(8)]
        for taker in takers:
            taker.start()
        results = [queue.get(timeout=60) for _ in takers]
        for taker in takers:
            taker.join(timeout=60)
        assert results.count("held") == 1, results
        assert all("another run is training into this folder" in r for r in results if r != "held"), results
        assert not (folder / LOCK_NAME).exists()


def test_a_killed_runs_forked_children_do_not_keep_its_folder_locked(tmp_path):
    """``kill -9`` of a run whose forked children (data-loader workers) live on for a while: the next run takes
    the folder at once, because a child closes its copy of the locked file."""
    script = (f"import os, sys, time\nsys.path.insert(0, {str(Path(maskkit.__file__).parents[1])!r})\n"
              "from maskkit.engine.run_folder import RunLock\n"
              f"lock = RunLock({str(tmp_path)!r}).acquire()\n"
              "child = os.fork()\n"  # the after-fork hooks have run in the child once fork returns there
              # one os.write per line: a pipe write this short is atomic, so the two lines never interleave
              "if child == 0:\n    os.write(1, b'child\\n')\n    time.sleep(60)\n    os._exit(0)\n"
              "os.write(1, f'{child}\\n'.encode())\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    lines = [proc.stdout.readline().strip(), proc.stdout.readline().strip()]
    child = int(next(line for line in lines if line != "child"))
    try:
        proc.kill()
        proc.wait()
        os.kill(child, 0)  # the child still lives
        with RunLock(tmp_path) as lock:
            assert lock.held and json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        os.kill(child, signal.SIGKILL)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.one_of(st.integers(1, 30), st.just("garbage")), max_size=30), step=st.integers(0, 30))
def test_truncated_metrics_keep_exactly_the_rows_up_to_the_checkpoint(tmp_path_factory, rows, step):
    path = tmp_path_factory.mktemp("metrics") / "metrics.jsonl"
    lines = [json.dumps({"step": r, "loss": 1.0}) if r != "garbage" else '{"step": 3, "lo' for r in rows]
    path.write_text("".join(f"{line}\n" for line in lines))
    dropped = truncate_metrics(path, step)
    expected = [r for r in rows if r != "garbage" and r <= step]
    assert steps(path.parent) == expected if expected else path.read_text() == ""
    assert dropped == len(rows) - len(expected)


def test_out_naming_a_file_and_export_to_a_folder_are_one_line(tmp_path, capsys, trained):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_tree()))
    (tmp_path / "afile").write_text("x")
    assert cli.main(["train", str(recipe), "--out", str(tmp_path / "afile"), "--no-progress"]) == 2
    assert_one_line(capsys, "afile: is a file; the run folder (--out) must be a folder")
    assert cli.main(["export", str(trained / "checkpoint.pth"), "--out", str(tmp_path)]) == 2
    assert_one_line(capsys, f"{tmp_path}: is a folder, expected a file")


# -- the failure contract: one line, exit 2 (1 for internal errors) ----------------------------------------


def line_of(function, text: str) -> int:
    """The line number of the first line of ``function``'s source that holds ``text``."""
    lines, start = inspect.getsourcelines(function)
    return start + next(i for i, line in enumerate(lines) if text in line)


def assert_one_line(capsys, fragment, code_line="maskkit: error: "):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(code_line) and fragment in err, err
    assert "Traceback" not in err and "\x1b" not in err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    tree = tiny_tree()
    tree["train"].update(max_steps=2)
    Trainer(load_recipe(tree), out, registry=maskkit.Registry.from_plugins(autoload=False), progress=False).fit()
    return out


def test_bad_inputs_are_one_line_exit_2(tmp_path, capsys, trained):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    assert cli.main(["train", str(binary)]) == 2
    assert_one_line(capsys, "binary.yaml: not a text file")

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_tree()))
    assert cli.main(["train", str(recipe), "encoder.in_chans=3", "--out", str(tmp_path / "c")]) == 2
    assert_one_line(capsys, "r.yaml: data: fashion_mnist gives 1-channel images, but the encoder takes 3")
    assert not (tmp_path / "c" / "metrics.jsonl").exists()

    assert cli.main(["train", str(recipe), "train.lr=.inf", "--out", str(tmp_path / "i")]) == 2
    assert_one_line(capsys, "train.lr: expected a finite number >= 0, got inf")

    assert cli.main(["visualize", str(trained / "checkpoint.pth"), "--count", "0"]) == 2
    assert_one_line(capsys, "--count: expected a positive int, got 0")

    state = torch.load(trained / "checkpoint.pth", weights_only=True)
    state["recipe"]["decoder"]["embed_dim"] = 24  # the weights no longer fit the recipe stored with them
    torch.save(state, tmp_path / "misfit.pth")
    assert cli.main(["visualize", str(tmp_path / "misfit.pth"), "--out", str(tmp_path / "v.png")]) == 2
    assert_one_line(capsys, "misfit.pth: its weights do not fit the model its recipe builds: size mismatch")
    assert cli.main(["train", "--resume", str(tmp_path / "misfit.pth"), "--out", str(tmp_path / "m")]) == 2
    assert_one_line(capsys, "misfit.pth: its weights do not fit the model its recipe builds")

    class Payload:
        def __reduce__(self):
            return (print, ("this would run",))

    torch.save({"model": {}, "payload": Payload()}, tmp_path / "foreign.pth")
    assert cli.main(["eval", "knn", str(tmp_path / "foreign.pth")]) == 2
    assert_one_line(capsys, "foreign.pth: refused to load: it holds a Python object (print)")


def test_a_run_folder_given_as_a_checkpoint_is_one_line_naming_its_checkpoint(capsys, trained):
    for command in (["eval", "knn", str(trained)], ["export", str(trained), "--out", str(trained / "e.pth")],
                    ["train", "--resume", str(trained)]):
        assert cli.main(command) == 2, command
        assert_one_line(capsys, f"{trained}: is a folder, expected a checkpoint file (a run folder's is "
                                f"{trained / 'checkpoint.pth'})")


def test_a_device_torch_does_not_know_is_one_line_naming_the_option(capsys, trained):
    assert cli.main(["eval", "knn", str(trained / "checkpoint.pth"), "--device", "gpu0"]) == 2
    assert_one_line(capsys, "--device: expected auto, cpu, cuda or cuda:N, got 'gpu0'")
    assert cli.main(["bench", "--device", "gpu0", "--no-data"]) == 2
    assert_one_line(capsys, "--device: expected auto, cpu, cuda or cuda:N, got 'gpu0'")


def train_until_it_fails(tmp_path, monkeypatch, registry) -> Path:
    """``maskkit train`` of the fault recipe into ``tmp_path/run`` through the CLI, which must fail with exit
    status 2; returns the run folder."""
    monkeypatch.setattr(cli, "_registry", lambda args=None: registry)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(fault_tree()))
    out = tmp_path / "run"
    assert cli.main(["train", str(recipe), "--out", str(out), "--no-progress", "--no-eval"]) == 2
    return out


def test_a_full_disk_keeps_the_last_checkpoint_and_the_run_resumes(tmp_path, capsys, full, builtin_registry,
                                                                    monkeypatch):
    """ENOSPC while writing the second checkpoint: one line naming the file, the first checkpoint and nothing
    else left, and the run resumes once there is space."""
    real_save = torch.save
    saves = []

    def save_on_a_full_disk(obj, handle, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            handle.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", save_on_a_full_disk)
    out = train_until_it_fails(tmp_path, monkeypatch, builtin_registry)
    assert_one_line(capsys, f"{out / 'checkpoint.pth'}: no space left on device (disk full)")
    assert ckpt.load_training_checkpoint(out / "checkpoint.pth")["step"] == CKPT_EVERY
    assert not list(out.glob(".*.tmp")) and not (out / LOCK_NAME).exists()
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    resume(out, builtin_registry)
    assert losses(out) == losses(full)


def test_a_full_disk_under_the_metrics_file_is_one_line_naming_it(tmp_path, capsys, builtin_registry,
                                                                   monkeypatch):
    from maskkit.engine.step_log import StepLog

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            pass

    real_enter = StepLog.__enter__

    def enter_on_a_full_disk(self):
        real_enter(self)
        if self._file is not None:
            self._file.close()
            self._file = FullDisk()
        return self

    monkeypatch.setattr(StepLog, "__enter__", enter_on_a_full_disk)
    out = train_until_it_fails(tmp_path, monkeypatch, builtin_registry)
    assert_one_line(capsys, f"{out / 'metrics.jsonl'}: no space left on device (disk full)")
    assert not (out / LOCK_NAME).exists()


class RaiseAtStep:
    """A plugin whose step hook raises a plain exception (not one of maskkit's)."""

    @maskkit.hookimpl
    def maskkit_step_start(self, step):
        if step == 1:
            raise ValueError("plugin bug")


class RaisingAddHook:
    @maskkit.hookimpl
    def maskkit_add_maskers(self):
        raise RuntimeError("cannot import its masker")

    @maskkit.hookimpl
    def maskkit_step_end(self):
        raise AssertionError("a left-out plugin must not run")


class Clash:
    @maskkit.hookimpl
    def maskkit_add_losses(self):
        return {"mse": object}


def test_plugin_errors_name_the_plugin_and_leave_it_out(tmp_path, capsys, monkeypatch):
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"boom": RaiseAtStep(),
                                                                      "half": RaisingAddHook()})
    assert [f.name for f in registry.failures] == ["half"]
    assert "maskkit_add_maskers() raised RuntimeError: cannot import its masker" in registry.failures[0].error
    assert registry.list("masker") == ["random"] and "half" not in registry.versions()
    monkeypatch.setattr(cli, "_registry", lambda args=None: registry)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_tree()))
    out = tmp_path / "run"
    assert cli.main(["train", str(recipe), "--out", str(out), "--no-progress", "--no-eval"]) == 2
    # with the place in the plugin's code that raised (a plugin object's code: this file)
    where = f"{__file__}:{line_of(RaiseAtStep.maskkit_step_start, 'raise ValueError')}"
    assert_one_line(capsys, f"plugin 'boom' failed: ValueError: plugin bug ({where})\n")
    assert not (out / LOCK_NAME).exists()

    from maskkit.registry import Registry

    from_plugins = Registry.from_plugins.__func__
    monkeypatch.setattr(Registry, "from_plugins", classmethod(
        lambda cls, autoload=None, plugins=None, files=(), strict=True: from_plugins(
            cls, False, {"half": RaisingAddHook(), "clash": Clash()}, files, strict=strict)))
    with pytest.raises(maskkit.errors.PluginError, match="registered twice"):
        Registry.from_plugins()
    assert cli.main(["plugins"]) == 0  # the diagnosis tool works whatever the plugins do
    listing = capsys.readouterr().out
    assert "plugin 'half' failed to load: maskkit_add_maskers() raised RuntimeError" in listing
    assert "plugin 'clash' failed to load: loss 'mse' is registered twice" in listing and "random" in listing


def test_an_internal_error_says_so_and_debug_shows_the_traceback(capsys, monkeypatch):
    def broken(args, console):
        raise KeyError("a maskkit bug")

    monkeypatch.setattr(cli, "cmd_recipes", broken)
    assert cli.main(["recipes"]) == 1
    assert_one_line(capsys, "internal error: KeyError: 'a maskkit bug' (rerun with --debug")
    with pytest.raises(KeyError):
        cli.main(["--debug", "recipes"])
    assert describe_failure(OSError(errno.EACCES, "Permission denied", "/x/y")) == (2, "/x/y: permission denied")


# -- checkpoints: only finite weights -------------------------------------------------------------------------


class InfAfterStep:
    """Sets a weight to inf in the step hook after the update: the loss of that step was finite."""

    def __init__(self, step):
        self.step = step

    @maskkit.hookimpl
    def maskkit_step_end(self, model, step):
        if step == self.step:
            with torch.no_grad():
                model.encoder.blocks[0].mlp.fc1.weight[0, 0] = float("inf")


def test_non_finite_weights_are_never_saved(tmp_path, full, builtin_registry):
    """Weights broken after a finite loss: the checkpoint is refused, the previous (all finite) one stays and
    resumes to the uninterrupted result."""
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"inf": InfAfterStep(2 * CKPT_EVERY - 1)})
    with pytest.raises(TrainingError, match=rf"non-finite weights after step {2 * CKPT_EVERY} .*model.blocks.0.mlp"
                                            rf".*last good checkpoint is .*step {CKPT_EVERY}\)"):
        Trainer(load_recipe(fault_tree()), tmp_path, registry=registry, progress=False).fit()
    state = ckpt.load_training_checkpoint(tmp_path / "checkpoint.pth")
    assert state["step"] == CKPT_EVERY and not ckpt.non_finite([state["model"], state["optimizer"]["state"]])
    resume(tmp_path, builtin_registry)
    assert losses(tmp_path) == losses(full)


def test_a_huge_learning_rate_never_leaves_a_poisoned_checkpoint(tmp_path, builtin_registry):
    with pytest.raises(TrainingError, match="non-finite"):
        Trainer(load_recipe(fault_tree(lr=1e36, ckpt_every=1)), tmp_path, registry=builtin_registry,
                progress=False).fit()
    if (tmp_path / "checkpoint.pth").exists():
        state = ckpt.load_training_checkpoint(tmp_path / "checkpoint.pth")
        assert not ckpt.non_finite([state["model"], state["optimizer"]["state"]])


def test_a_checkpoint_replaces_the_old_one_only_once_verified(tmp_path, full):
    path = tmp_path / "c.pth"
    ckpt.save_atomic({"step": 1}, path)

    def refuse(tmp):
        assert tmp.is_file() and tmp.parent == path.parent
        raise ckpt.CheckpointError(f"{tmp}: reads back wrong")

    with pytest.raises(ckpt.CheckpointError, match="reads back wrong"):
        ckpt.save_atomic({"step": 2}, path, verify=refuse)
    assert torch.load(path, weights_only=True) == {"step": 1} and list(tmp_path.iterdir()) == [path]
    mode = (full / "checkpoint.pth").stat().st_mode & 0o777  # like every other file of the run folder
    assert mode == (full / "recipe.yaml").stat().st_mode & 0o777 == (full / "metrics.jsonl").stat().st_mode & 0o777


def test_a_checkpoint_that_cannot_be_created_is_named_not_its_temporary_file(tmp_path, monkeypatch):
    """A folder that refuses new files (permissions, a read-only mount, ``/proc``) fails on the temporary file
    ``save_atomic`` creates first; the error names the file that was asked for (``--out``), which the user knows."""
    real_open = os.open

    def refuse_new_files(file, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_new_files)
    path = tmp_path / "enc.pth"
    with pytest.raises(PermissionError) as info:
        ckpt.save_atomic({"step": 1}, path)
    assert info.value.filename == str(path) and info.value.errno == errno.EACCES
    assert list(tmp_path.iterdir()) == []


# -- unreadable images ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """24 real Fashion-MNIST images (12 PNGs, 12 JPEGs) and four files that are not images
    (:func:`helpers.write_bad_image_folder`)."""
    return write_bad_image_folder(tmp_path_factory.mktemp("images"))


@pytest.mark.parametrize("decode", ["host", "device"])
def test_unreadable_images_stop_by_path_or_are_skipped_and_counted(tmp_path, image_folder, builtin_registry, decode):
    """On the host a worker finds them all; with data.decode: device the worker finds those whose header does not
    read and the device the one whose data does not decode: the same error, the same list."""
    tree = tiny_tree(data={"name": "image_folder", "root": str(image_folder), "in_chans": 1, "decode": decode})
    tree["train"].update(max_steps=6, num_workers=2)  # the error crosses from a worker process
    out = tmp_path / "run"
    with pytest.raises(UnreadableImageError, match=r"(corrupt|cut|empty|text)\.(jpg|png): unreadable image .*"
                                                   r"set data.on_bad_image: skip") as info:
        Trainer(load_recipe(tree), out, registry=builtin_registry, progress=False).fit()
    assert "\n" not in str(info.value)
    tree["data"]["on_bad_image"] = "skip"  # the folder that crashed before its first checkpoint is reusable
    tree["train"]["num_workers"] = 0
    result = Trainer(load_recipe(tree), out, registry=builtin_registry, progress=False).fit()
    assert result.steps == 6 and result.bad_images == 4
    listed = (out / "bad_images.txt").read_text().splitlines()
    assert sorted(Path(line.split("\t")[0]).name for line in listed) == ["corrupt.jpg", "cut.jpg", "empty.png",
                                                                           "text.jpg"]
    reasons = dict(line.split("\t")[:2] for line in listed)
    assert reasons[str(image_folder / "text.jpg")] == "not an image file Pillow can identify"  # no buffer repr
    assert all(np.isfinite(losses(out)))
    tree["train"]["max_steps"] = 7  # one step more: it meets fewer of them, but the run has left out all four
    resumed = Trainer(load_recipe(tree), out, registry=builtin_registry, progress=False,
                      resume=out / "checkpoint.pth").fit()
    assert resumed.trained_steps == 1 and resumed.bad_images == 4
    assert (out / "bad_images.txt").read_text().splitlines() == listed


def test_the_evaluation_and_the_picture_skip_unreadable_images_as_training_does(tmp_path, image_folder,
                                                                              builtin_registry, capsys):
    """With data.on_bad_image: skip, the kNN evaluation after training (and `maskkit eval`, `maskkit visualize`)
    leaves the unreadable images out and counts them, instead of failing on the first one once training is done;
    with stop it names it."""
    from maskkit.evaluate import evaluate

    tree = tiny_tree(data={"name": "image_folder", "root": str(image_folder), "in_chans": 1})
    model = maskkit.build_model(load_recipe(tree), builtin_registry)
    with pytest.raises(UnreadableImageError, match=r"(corrupt|cut|empty|text)\.(jpg|png): unreadable image"):
        evaluate(model, load_recipe(tree), device=torch.device("cpu"), registry=builtin_registry, baseline=False)
    tree["data"]["on_bad_image"] = "skip"
    scores = evaluate(model, load_recipe(tree), device=torch.device("cpu"), registry=builtin_registry,
                      baseline=False, run_dir=tmp_path)
    assert scores["unreadable_images"] == 4 and scores["knn_top1"] is None  # a flat folder has no labels
    assert json.loads((tmp_path / "eval.json").read_text())["unreadable_images"] == 4
    only_bad = tmp_path / "only_bad"  # a test split of unreadable images only: nothing to score, said in one line
    only_bad.mkdir()
    (only_bad / "cut.jpg").write_bytes((image_folder / "cut.jpg").read_bytes())
    tree["data"]["test_root"] = str(only_bad)
    with pytest.raises(maskkit.ConfigError, match=r"^<recipe>: data: the test split has no readable image to "
                                                  r"evaluate on \(data.on_bad_image: skip left out 5 unreadable\)$"):
        evaluate(model, load_recipe(tree), device=torch.device("cpu"), registry=builtin_registry, baseline=False)
    del tree["data"]["test_root"]

    first_bad = tmp_path / "pictures"  # the picture's first batch is unreadable images only, then one good
    first_bad.mkdir()
    for name in ("a.jpg", "b.png"):
        (first_bad / name).write_bytes((image_folder / "cut.jpg").read_bytes())
    (first_bad / "c.png").write_bytes((image_folder / "01.png").read_bytes())
    tree["train"].update(max_steps=1)
    Trainer(load_recipe(tree), tmp_path / "run", registry=builtin_registry, progress=False).fit()
    assert cli.main(["visualize", str(tmp_path / "run" / "checkpoint.pth"), "--images", str(first_bad), "--count", "2",
                     "--out", str(tmp_path / "recon.png")]) == 0
    assert (tmp_path / "recon.png").stat().st_size > 0
    (first_bad / "c.png").unlink()  # nothing readable left: one line, exit 2
    capsys.readouterr()
    assert cli.main(["visualize", str(tmp_path / "run" / "checkpoint.pth"), "--images", str(first_bad),
                     "--out", str(tmp_path / "none.png")]) == 2
    assert capsys.readouterr().err == (f"maskkit: error: {first_bad}: no readable image to draw (data.on_bad_image: "
                                       "skip left out 2 unreadable)\n")


def _noise_classes(root: Path) -> Path:
    """Classes a and b of 4 grey 28x28 noise images each (no class has anything in common), and a copy of them
    (the same pictures at other paths) in ``root / "copy"``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / "images" / label).mkdir(parents=True)
        for i in range(4):
            noise = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            Image.fromarray(noise).save(root / "images" / label / f"{i}.png")
    shutil.copytree(root / "images", root / "copy")
    return root / "images"


def test_without_a_test_split_knn_scores_each_image_by_the_others(tmp_path, builtin_registry):
    """An image_folder without test_root is its own test split: each test image is then in the kNN bank at
    similarity 1, and k=1 scored 100% on any images. It is scored by the other images (leave-one-out), and
    eval.json says so; a separate test split with the same pictures still finds them."""
    from maskkit.evaluate import evaluate

    tree = tiny_tree(data={"name": "image_folder", "root": str(_noise_classes(tmp_path)), "in_chans": 1},
                     eval={"k": 1})
    model = maskkit.build_model(load_recipe(tree), builtin_registry)
    alone = evaluate(model, load_recipe(tree), device=torch.device("cpu"), registry=builtin_registry,
                     baseline=False)
    assert alone["test_is_train"] is True and alone["knn_top1"] < 1.0
    tree["data"]["test_root"] = str(tmp_path / "copy")
    copied = evaluate(model, load_recipe(tree), device=torch.device("cpu"), registry=builtin_registry,
                      baseline=False)
    assert "test_is_train" not in copied and copied["knn_top1"] == 1.0


def test_knn_matches_the_test_classes_to_the_training_classes_by_name(tmp_path, builtin_registry):
    """A test split with some of the training classes (a val/ folder without a) is scored with the training
    classes' labels (b is class 1 there, not 0); a test class training lacks is refused in one line."""
    from maskkit.evaluate import evaluate

    tree = tiny_tree(data={"name": "image_folder", "root": str(_noise_classes(tmp_path)), "in_chans": 1,
                           "test_root": str(tmp_path / "copy")}, eval={"k": 1})
    model = maskkit.build_model(load_recipe(tree), builtin_registry)
    shutil.rmtree(tmp_path / "copy" / "a")
    scores = evaluate(model, load_recipe(tree), device=torch.device("cpu"), registry=builtin_registry,
                      baseline=False)
    assert scores["test_images"] == 4 and scores["knn_top1"] == 1.0  # each b image finds its copy, labelled b
    (tmp_path / "copy" / "b").rename(tmp_path / "copy" / "c")
    with pytest.raises(maskkit.ConfigError, match=r"^<recipe>: data: the test split .*copy against the train split "
                                                  r".*images: test class\(es\) c missing from the training classes"):
        evaluate(model, load_recipe(tree), device=torch.device("cpu"), registry=builtin_registry, baseline=False)


def test_a_runs_loader_workers_end_with_the_run_even_while_its_trainer_is_kept(tmp_path, image_folder,
                                                                             builtin_registry):
    """Persistent loader workers stop when ``fit`` returns or raises, not when the trainer is collected: a failed
    run's exception keeps its trainer (and loader) alive, and the garbage collector would shut the workers down
    whenever it next ran, stalling whatever ran then (once, in this suite, a test for 40 s)."""
    tree = tiny_tree(data={"name": "image_folder", "root": str(image_folder), "in_chans": 1})
    tree["train"].update(max_steps=6, num_workers=2)
    before = set(multiprocessing.active_children())
    with pytest.raises(UnreadableImageError) as info:
        Trainer(load_recipe(tree), tmp_path / "failed", registry=builtin_registry, progress=False).fit()
    assert set(multiprocessing.active_children()) == before, "the failed run's workers outlived it"
    tree["data"]["on_bad_image"] = "skip"
    trainer = Trainer(load_recipe(tree), tmp_path / "run", registry=builtin_registry, progress=False)
    assert trainer.fit().steps == 6
    assert set(multiprocessing.active_children()) == before, "the finished run's workers outlived it"
    assert info.value is not None and trainer.loader is not None  # both kept to the end on purpose


class FailAtStep:
    """A plugin that fails at one step (a plain exception, as a plugin bug is)."""

    def __init__(self, step):
        self.step = step

    @maskkit.hookimpl
    def maskkit_step_start(self, trainer):
        if trainer.step == self.step:
            raise ZeroDivisionError("division by zero in the plugin")


def test_a_failing_run_whose_bad_image_list_cannot_be_written_reports_why_it_failed(tmp_path, image_folder,
                                                                                       monkeypatch):
    """The list of unreadable images is written while the run stops; when that fails too (here: the disk is
    full), the run's own error is the one raised (a note says the list was not written) and the folder is
    unlocked."""
    from rich.console import Console

    real_write = Path.write_text

    def disk_full_for_the_list(self, *args, **kwargs):
        if self.name.startswith((".bad_images.txt.", "bad_images.txt")):  # written through a temporary file
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full_for_the_list)

    tree = tiny_tree(data={"name": "image_folder", "root": str(image_folder), "in_chans": 1,
                           "on_bad_image": "skip"})
    tree["train"].update(max_steps=6, ckpt_every=0)
    out = tmp_path / "run"
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"buggy": FailAtStep(4)})
    console = Console(record=True, width=300)
    with pytest.raises(Exception, match="division by zero in the plugin") as info:
        Trainer(load_recipe(tree), out, registry=registry, progress=False, console=console).fit()
    assert not isinstance(info.value, OSError)
    assert f"could not update {out / 'bad_images.txt'}" in console.export_text()
    assert not (out / LOCK_NAME).exists()
    # a run that succeeds, called while its caller handles an exception of its own: the list's error is raised
    registry = maskkit.Registry.from_plugins(autoload=False)
    try:
        raise KeyError("the caller's own, handled")
    except KeyError:
        with pytest.raises(OSError, match="No space left on device"):
            Trainer(load_recipe(tree), tmp_path / "second", registry=registry, progress=False).fit()


# -- compare: one failing run is recorded, the others go on ------------------------------------------------


class RaiseInVariant:
    """A plugin bug that strikes only in the runs of ``variant`` (a plain exception, not one of maskkit's)."""

    def __init__(self, variant):
        self.variant = variant

    @maskkit.hookimpl
    def maskkit_step_start(self, trainer):
        if trainer.run_dir.parent.name == self.variant:
            raise ZeroDivisionError("division by zero in the plugin")


def test_compare_records_a_failing_run_and_goes_on(tmp_path):
    from test_compare import SmallFashion, quiet, write_spec

    from maskkit.compare import load_spec, make_plan, run_comparison

    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"small": SmallFashion(),
                                                                      "buggy": RaiseInVariant("r75")})
    spec = load_spec(write_spec(tmp_path, budget={"steps": 2}, eval={"knn": True, "mask_samples": 0,
                                                                     "reconstructions": 0}), registry=registry)
    outcome = run_comparison(make_plan(spec, registry), tmp_path / "out", registry=registry, console=quiet(),
                             progress=False, report=False)
    assert outcome.failed == ("r75/seed0",) and outcome.trained == ("r50/seed0",)
    where = f"{__file__}:{line_of(RaiseInVariant.maskkit_step_start, 'raise ZeroDivisionError')}"
    assert outcome.errors["r75/seed0"] == ("plugin 'buggy' failed: ZeroDivisionError: division by zero in the plugin "
                                           f"({where})")
    status = json.loads((tmp_path / "out" / "runs" / "r75" / "seed0" / "compare.json").read_text())
    assert status["status"] == "failed" and status["error"] == outcome.errors["r75/seed0"]


def test_a_loader_worker_outlives_a_sigterm_by_its_grace_only():
    """A SIGTERM lets a worker carry on (the main process stops at a step boundary and shuts it down), but not
    forever: it leaves WORKER_GRACE_S seconds later (here 1), so a stuck worker cannot hang the exit."""
    script = ("import os, signal, time\n"
              "from maskkit.data import loading\n"
              "loading.WORKER_GRACE_S = 1\n"
              "loading._leave_signals_to_the_main_process(0)\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "print('alive after SIGTERM', flush=True)\n"
              "os.kill(os.getpid(), signal.SIGTERM)  # a second one changes nothing\n"
              "time.sleep(30)\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout == "alive after SIGTERM\n", proc.stderr
    assert proc.returncode == -signal.SIGALRM and time.monotonic() - start < 15


@pytest.mark.parametrize("file", ["eval.json", "finetune.json"])
def test_a_result_file_is_whole_or_absent_when_its_write_fails(tmp_path, monkeypatch, file, builtin_registry):
    """compare takes an ``eval.json`` or a ``finetune.json`` as a finished evaluation: a write cut by a full disk
    must leave the old file (here none), never half of one, nor a temporary file."""
    from maskkit.evaluate import evaluate
    from maskkit.finetune import FinetuneTrainer, load_finetune_recipe, read_pretrained

    real_write = Path.write_text

    def half_then_disk_full(self, text, *args, **kwargs):
        if file in self.name:
            real_write(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, text, *args, **kwargs)

    recipe = load_recipe(tiny_tree(), ["train.max_steps=1"])
    Trainer(recipe, tmp_path / "pre", registry=builtin_registry, progress=False).fit()
    monkeypatch.setattr(Path, "write_text", half_then_disk_full)
    with pytest.raises(OSError, match="No space left"):
        if file == "eval.json":
            (tmp_path / "out").mkdir()  # a run folder
            model, _ = ckpt.load_model(tmp_path / "pre" / "checkpoint.pth", registry=builtin_registry)
            evaluate(model, recipe.with_overrides(["eval.reconstructions=0"]), device=torch.device("cpu"),
                     registry=builtin_registry, run_dir=tmp_path / "out", test_images=64, train_images=128)
        else:
            tree, weights = read_pretrained(tmp_path / "pre" / "checkpoint.pth")
            ft = load_finetune_recipe("finetune_quickstart", ["finetune.max_steps=1", "finetune.batch_size=8",
                                      "finetune.device=cpu"], pretrained_tree=tree)
            FinetuneTrainer(ft, tmp_path / "out", pretrained=(tree["encoder"], weights, "pre"),
                            registry=builtin_registry, progress=False).fit()
    folder = tmp_path / "out"
    assert not (folder / file).exists() and not list(folder.glob(f".{file}*"))
