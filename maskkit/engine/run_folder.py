"""A run folder's file names, its lock, and what a new session does to it before training.

One training process at a time owns a run folder: :class:`RunLock` holds a kernel lock (``flock``) on
``run.lock``, writes the owner's pid, host and start time into it for the messages, and removes it on exit. A
second run into the same folder is refused while the first is alive. The kernel drops the lock of a process
that dies (``kill -9``, an OOM kill): the next run takes the folder over, however many try at once. Under
torchrun only rank 0 locks.

``run.lock`` appears already locked and filled in: a private file is locked and written, then hard-linked to
the name, so a run that opens it never finds it unlocked or empty while its creator is starting.

On a filesystem without ``flock`` (Lustre mounted ``noflock``, some FUSE mounts) the file's record decides:
the link (or, without hard links, ``O_CREAT | O_EXCL``) lets one process create ``run.lock``, and a record whose
process is gone (same host, pid gone or reused) is taken over; there, three processes taking over one stale
lock in the same instant could both hold it.

:func:`prepare` then makes the folder usable whatever happened to the last session: stray temporary files of a
killed write are removed; a fresh run into a folder whose earlier run died before its first checkpoint starts
clean (its ``metrics.jsonl`` and bad-image list are dropped), a fresh run into a folder that holds a
checkpoint is refused (``--resume`` it), and a resumed run's ``metrics.jsonl`` loses the rows logged after the
checkpoint, so every step appears once.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
import weakref
from pathlib import Path

from maskkit.errors import RunFolderError

CHECKPOINT_NAME = "checkpoint.pth"
METRICS_NAME = "metrics.jsonl"
BAD_IMAGES_NAME = "bad_images.txt"
LOCK_NAME = "run.lock"
_YOUNG_LOCK_S = 30.0  # an unreadable lock younger than this may be one being written right now


def _start_ticks(pid: int) -> str | None:
    """When process ``pid`` started (Linux ``/proc``; clock ticks since boot), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    if start is not None:
        now = _start_ticks(pid)
        return now is None or now == start
    return True


# A kernel lock belongs to an open file description, which a forked child (a data-loader worker) shares: the
# child closes its copy, so that a killed run's workers, exiting seconds later, do not keep its folder locked.
_HELD_IN_THIS_PROCESS: "weakref.WeakSet[RunLock]" = weakref.WeakSet()


def _close_in_forked_child() -> None:
    for lock in list(_HELD_IN_THIS_PROCESS):
        lock._forget()


os.register_at_fork(after_in_child=_close_in_forked_child)


def _flock(fd: int) -> bool | None:
    """Take the kernel lock of ``fd`` without waiting: True taken, False held by another open file (another run),
    None when this filesystem has no such locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise


class RunLock:
    """The exclusive lock of a run folder (a context manager; :meth:`acquire` / :meth:`release`)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False
        self._fd: int | None = None  # the locked file, open while held

    def _owner(self) -> dict | None:
        """The lock's content, ``{}`` when it cannot be read, None when there is no lock."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            owner = json.loads(text)
        except ValueError:
            return {}
        return owner if isinstance(owner, dict) else {}

    def _stale(self, owner: dict) -> bool:
        """Whether the process a record names is gone (only a same-host process can be checked)."""
        if not owner:  # unreadable: stale unless it may be being written right now
            try:
                return time.time() - self.path.stat().st_mtime > _YOUNG_LOCK_S
            except FileNotFoundError:
                return True
        if owner.get("host") != socket.gethostname():
            return False  # cannot tell from here
        pid = owner.get("pid")
        return not isinstance(pid, int) or not _alive(pid, owner.get("start"))

    def _refuse(self, owner: dict | None) -> RunFolderError:
        who = (f"pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('time')}" if owner
               else "a run that is starting")
        return RunFolderError(f"{self.folder}: another run is training into this folder ({who}); wait for it or "
                              f"give another --out (if no such run is alive, delete {self.path})")

    def _record(self) -> bytes:
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_ticks(os.getpid()),
                "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        return (json.dumps(mine) + "\n").encode()

    def _publish(self) -> int | None:
        """Create ``run.lock`` already locked and filled in: a private file is locked and written, then linked
        to the name (a link fails if the name exists), so no other process ever opens a lock that is still
        unlocked or empty. The open file, or None when ``run.lock`` exists. Filesystems without hard links
        fall back to creating ``run.lock`` exclusively and locking and filling it in at once (a run that opens
        it in that instant finds it empty, and is refused as by "a run that is starting")."""
        private = self.path.with_name(f".{LOCK_NAME}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        try:
            fd = self._locked_and_filled(private)
            try:
                os.link(private, self.path)
            except (FileExistsError, FileNotFoundError):  # (the winner's start-up cleaned our private file up)
                os.close(fd)
                return None
            except OSError as exc:  # no hard links here (EPERM, ENOTSUP...)
                os.close(fd)
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                    raise
                try:
                    return self._locked_and_filled(self.path)
                except FileExistsError:
                    return None
            return fd
        finally:
            private.unlink(missing_ok=True)

    def _locked_and_filled(self, path: Path) -> int:
        """Create ``path`` (exclusively), lock it and write this process's record into it; the open file."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _flock(fd)
            os.pwrite(fd, self._record(), 0)
            os.fsync(fd)  # other hosts of a shared filesystem read the record, not our page cache
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open(self) -> tuple[int, bool] | None:
        """Open ``run.lock``, creating it if there is none: ``(fd, created)``, None if it vanished meanwhile."""
        fd = self._publish()
        if fd is not None:
            return fd, True
        try:
            return os.open(self.path, os.O_RDWR), False
        except FileNotFoundError:
            return None

    def _is_current(self, fd: int) -> bool:
        """Whether ``fd`` is still the file named ``run.lock`` (a releaser unlinks it while holding it)."""
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)

    def acquire(self) -> "RunLock":
        """Take the lock, or raise :class:`~maskkit.errors.RunFolderError` naming the run that holds it."""
        _check_is_folder(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            opened = self._open()
            if opened is None:
                continue  # released meanwhile
            fd, created = opened
            try:
                if self._take(fd, created):
                    if not created:  # a stale lock taken over: our record over its (never empty meanwhile)
                        record = self._record()
                        os.pwrite(fd, record, 0)
                        os.ftruncate(fd, len(record))
                        os.fsync(fd)
                    self._fd, self.held = fd, True
                    _HELD_IN_THIS_PROCESS.add(self)
                    return self
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise RunFolderError(f"{self.folder}: could not take {self.path}; delete it if no run is training here")

    def _take(self, fd: int, created: bool) -> bool:
        """Whether this process now owns the open ``run.lock`` ``fd`` (False: try again); raises if a live run
        does."""
        locked = _flock(fd)
        if locked is False:
            raise self._refuse(self._owner())
        if locked:
            if not self._is_current(fd):
                return False  # its holder released it (unlinked) between our open and our lock
            owner = self._owner() or {}
            # the record still decides where flock may be local to a host (NFS local_lock, Lustre localflock):
            # another host's live run, or a record still being written (empty and young), is not taken over
            ours = owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname()
            if created or ours or self._stale(owner):
                return True  # a record of our own is a RunLock of this process that was never released
            raise self._refuse(owner)  # a live process that holds no kernel lock here (an older maskkit, a host)
        if created:  # no kernel locks on this filesystem: the exclusive creation decides
            return True
        owner = self._owner()
        if owner is None:
            return False
        if not self._stale(owner):
            raise self._refuse(owner)
        if self._owner() == owner:  # still the same stale lock: take it over
            self._remove_stale(owner)
        return False

    def _remove_stale(self, owner: dict) -> None:
        """Remove the stale lock ``owner`` wrote (on a filesystem without kernel locks). It is moved aside first
        (a rename is atomic: of processes taking over together, one moves it), and a lock found there instead,
        made by a process that took over in the instant since ``owner`` was read, is put back; two takers never
        both hold the folder (three at once could, in the same instant)."""
        aside = self.path.with_name(f".{LOCK_NAME}.{os.getpid()}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process took it over first
        try:
            found = json.loads(aside.read_text())
        except (OSError, ValueError):
            found = {}
        if found != owner:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if this process holds it (the file first, then the kernel lock)."""
        if not self.held:
            return
        try:
            owner = self._owner()
            if owner is not None and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
        finally:
            self._forget()

    def _forget(self) -> None:
        """Close the locked file without removing it (in a forked child: the parent keeps its lock)."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self.held = None, False
        _HELD_IN_THIS_PROCESS.discard(self)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _check_is_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{folder}: is a file; the run folder (--out) must be a folder")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file beside it (``.NAME.PID.tmp``) renamed over it: a
    reader, or the next session after a crash, sees the old file or the new one, never half of one (a stray
    temporary file is removed by :func:`remove_stray_files`). The temporary file is removed on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove_stray_files(folder: str | Path) -> list[Path]:
    """Remove the temporary files (``.NAME.*.tmp``) that a process killed mid-write left in ``folder``.
    Call it only while holding the folder's lock (a live writer's temporary file must stay)."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def truncate_metrics(path: str | Path, step: int) -> int:
    """Keep the rows of a ``metrics.jsonl`` up to ``step`` (the checkpoint a run resumes from), dropping later
    ones and a half-written last line, so a resumed run logs each step once. Returns the rows dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            dropped += 1
            continue
        if isinstance(row_step, int) and row_step <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))
    return dropped


def prepare(folder: str | Path, *, resume: str | Path | None, resume_step: int | None) -> None:
    """Make ``folder`` ready for a session (hold its lock first): see the module docstring.

    ``resume``/``resume_step``: the checkpoint this session continues from and its step (None: a fresh run).
    """
    folder = Path(folder)
    _check_is_folder(folder)
    remove_stray_files(folder)
    checkpoint = folder / CHECKPOINT_NAME
    if resume_step is None or resume is None:
        if checkpoint.exists():
            raise RunFolderError(f"{folder} already holds a run; continue it with --resume {checkpoint}, or give "
                                 "another --out (nothing was overwritten)")
        for name in (METRICS_NAME, BAD_IMAGES_NAME):  # an earlier run died before its first checkpoint
            (folder / name).unlink(missing_ok=True)
        return
    if checkpoint.exists() and not checkpoint.samefile(resume):
        raise RunFolderError(f"{folder} holds another run's checkpoint; resuming {resume} into it would overwrite "
                             "it: give another --out")
    truncate_metrics(folder / METRICS_NAME, resume_step)
