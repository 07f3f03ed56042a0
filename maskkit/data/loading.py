"""Reproducible data loading: per-sample augmentation seeds, global-batch sampling, DataLoader setup.

Two rules make a run's data independent of how it is executed (workers, ranks, resumes):

* the augmentation of sample ``i`` in epoch ``e`` uses a generator seeded from ``(seed, e, i)`` alone
  (:func:`sample_generator`, :class:`AugmentedDataset`);
* the order of samples is one permutation per epoch seeded from ``(seed, e)``, cut into global batches,
  each rank taking a contiguous slice of each global batch (:class:`GlobalBatchSampler`).
"""

from __future__ import annotations

import hashlib
import inspect
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from maskkit.data.encoded import CropBatch, PlannedCrop
from maskkit.errors import UnreadableImageError

__all__ = ["sample_generator", "stable_seed", "AugmentedDataset", "GlobalBatchSampler", "stack_collate",
           "make_loader", "stop_workers", "lift_open_files_limit", "BadSample", "BadBatch", "BadImages"]


def stable_seed(tag: str, *values: int) -> int:
    """A 64-bit seed from a tag and integers, the same in every process and Python run.

    (blake2b of the tag and each integer as 16 signed big-endian bytes; unlike ``hash`` it is not salted.)
    """
    h = hashlib.blake2b(tag.encode(), digest_size=8)
    for v in values:
        h.update(int(v).to_bytes(16, "big", signed=True))
    return int.from_bytes(h.digest(), "big")


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator for the augmentation of sample ``index`` in ``epoch`` of a run seeded ``seed``.

    Its state depends on the three integers only, never on the process, worker or rank that builds it.
    """
    return torch.Generator().manual_seed(stable_seed("maskkit/sample", seed, epoch, index))


def _takes_generator(transform: Callable[..., Any]) -> bool:
    """Whether ``transform`` can be called as ``transform(img, generator)``."""
    try:
        params = inspect.signature(transform).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


class AugmentedDataset(Dataset):
    """``base`` with ``transform`` applied to each image, reproducibly.

    ``ds[i]`` is ``(transform(img, sample_generator(seed, epoch, i)), label)`` for ``(img, label) =
    base[i]``; a transform called as ``transform(img)`` (e.g. :class:`EvalTransform`) gets no
    generator (``pass_generator=None`` decides from its signature). ``catch_bad``: see :meth:`__getitem__`.
    Call :meth:`set_epoch` before each
    epoch. The epoch lives in shared memory, so DataLoader workers (persistent ones included) see the
    new value as soon as it is set; set it only between epochs, never while a loader iterates.
    """

    def __init__(self, base: Dataset, transform: Callable[..., torch.Tensor], seed: int = 0,
                 *, pass_generator: bool | None = None, catch_bad: bool = False):
        self.catch_bad = catch_bad
        self.base = base
        self.transform = transform
        self.seed = int(seed)
        self.pass_generator = _takes_generator(transform) if pass_generator is None else pass_generator
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Use the augmentations of ``epoch`` from now on (in this process and in the loader's workers)."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        """``(transformed image, label)``; image shape and dtype as the transform returns. With ``catch_bad``,
        an image the base dataset cannot read gives a :class:`BadSample` instead (which crosses from a loader
        worker to the main process intact, unlike an exception)."""
        try:
            img, label = self.base[index]
        except UnreadableImageError as exc:
            if not self.catch_bad:
                raise
            return BadSample(exc.path, exc.reason)
        if self.pass_generator:
            return self.transform(img, sample_generator(self.seed, self.epoch, index)), label
        return self.transform(img), label

    def __repr__(self) -> str:
        return f"AugmentedDataset({self.base!r}, {self.transform!r}, seed={self.seed}, epoch={self.epoch})"


class GlobalBatchSampler(Sampler[list[int]]):
    """Batches of indices for one rank, cut from one global batch sequence shared by all ranks.

    Each epoch draws ONE permutation of ``range(num_samples)`` from a generator seeded by
    ``(seed, epoch)``. Global batch ``b`` is ``perm[b*G:(b+1)*G]`` (``G = global_batch_size``); rank
    ``r`` of ``W`` yields its contiguous slice ``[r*G/W:(r+1)*G/W]``. So the ranks' batches, concatenated
    in rank order, are exactly the batches of a single process with batch size ``G``, and no sample
    appears twice in an epoch. ``G`` must be divisible by ``world_size``.

    ``drop_last=True`` drops the incomplete last global batch; with ``False`` it is kept and split into
    ``W`` contiguous slices whose sizes differ by at most one (a rank whose slice is empty yields nothing,
    so ranks may then disagree on ``len``; keep ``drop_last=True`` for multi-rank training).

    ``max_batches`` ends every epoch after that many global batches: the trainers pass the micro-batches of
    their whole optimizer steps, so that an epoch never ends inside a step (the micro-batches of an incomplete
    last step are not drawn) and a step's batches are a function of its number alone, as an exact resume needs.

    :meth:`set_epoch` selects the epoch (and resets the start to 0 when the epoch changes);
    :meth:`set_start` skips the first ``k`` global batches of the current epoch, for an exact resume
    (call it after ``set_epoch``). ``len`` is the number of batches this rank has left in the epoch.
    """

    def __init__(self, num_samples: int, global_batch_size: int, *, seed: int, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, max_batches: int | None = None):
        if num_samples < 0:
            raise ValueError(f"num_samples: expected >= 0, got {num_samples}")
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size: expected >= 1, got {global_batch_size}")
        if world_size < 1 or not (0 <= rank < world_size):
            raise ValueError(f"rank/world_size: expected 0 <= rank < world_size, got {rank}/{world_size}")
        if global_batch_size % world_size:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by world_size "
                             f"{world_size}")
        self.num_samples = int(num_samples)
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        if max_batches is not None and max_batches < 0:
            raise ValueError(f"max_batches: expected >= 0 or None, got {max_batches}")
        self.drop_last = drop_last
        self.max_batches = max_batches
        self.epoch = 0
        self.start = 0

    @property
    def batch_size(self) -> int:
        """The per-rank batch size ``G / W`` (of every batch but possibly a kept incomplete last one)."""
        return self.global_batch_size // self.world_size

    @property
    def num_global_batches(self) -> int:
        """Global batches in a whole epoch (at most ``max_batches``)."""
        n, g = self.num_samples, self.global_batch_size
        batches = n // g if self.drop_last else -(-n // g)
        return batches if self.max_batches is None else min(batches, self.max_batches)

    def set_epoch(self, epoch: int) -> None:
        """Select ``epoch``; a different epoch than the current one also resets the start to 0."""
        if int(epoch) != self.epoch:
            self.start = 0
        self.epoch = int(epoch)

    def set_start(self, batch_index: int) -> None:
        """Skip the first ``batch_index`` global batches of the current epoch (0 <= k <= batches)."""
        if not (0 <= batch_index <= self.num_global_batches):
            raise ValueError(f"set_start: expected 0 <= batch_index <= {self.num_global_batches}, "
                             f"got {batch_index}")
        self.start = int(batch_index)

    def permutation(self, epoch: int | None = None) -> torch.Tensor:
        """The epoch's permutation of all sample indices (int64 ``[num_samples]``)."""
        epoch = self.epoch if epoch is None else epoch
        g = torch.Generator().manual_seed(stable_seed("maskkit/epoch-permutation", self.seed, epoch))
        return torch.randperm(self.num_samples, generator=g)

    def _slice(self, size: int) -> tuple[int, int]:
        return self.rank * size // self.world_size, (self.rank + 1) * size // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.permutation().tolist()
        g = self.global_batch_size
        for b in range(self.start, self.num_global_batches):
            batch = perm[b * g:(b + 1) * g]
            lo, hi = self._slice(len(batch))
            if hi > lo:
                yield batch[lo:hi]

    def __len__(self) -> int:
        full = min(self.num_samples // self.global_batch_size, self.num_global_batches)
        left = self.num_global_batches - self.start
        if left > 0 and self.num_global_batches > full:  # a kept incomplete last batch
            lo, hi = self._slice(self.num_samples - full * self.global_batch_size)
            return left - (hi == lo)
        return left


@attrs.frozen
class BadSample:
    """An image that could not be read, in place of a sample (see ``AugmentedDataset(catch_bad=True)``)."""

    path: str
    reason: str


@attrs.frozen
class BadBatch:
    """What :func:`stack_collate` adds to a batch that had unreadable images: them, and the positions (in the
    batch as the sampler gave it) of the samples that were kept."""

    bad: tuple[BadSample, ...]
    kept: tuple[int, ...]


def stack_collate(batch: Sequence[Any]) -> Any:
    """Collate ``(tensor [*S], label int)`` pairs into ``(tensor [B, *S], int64 [B])``, and
    pairs some of which hold a ``PlannedCrop`` (``data.decode: device``) into ``(CropBatch, int64 [B])``.

    A batch holding :class:`BadSample` items collates the others and adds a :class:`BadBatch`:
    ``(tensor [K, *S] or None, int64 [K] or None, BadBatch)``. Anything else goes to ``default_collate``.
    """
    bad = tuple(item for item in batch if isinstance(item, BadSample))
    if bad:
        kept = tuple(i for i, item in enumerate(batch) if not isinstance(item, BadSample))
        images, labels = stack_collate([batch[i] for i in kept]) if kept else (None, None)
        return images, labels, BadBatch(bad, kept)
    if batch and all(isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], int) for item in batch):
        labels = torch.tensor([item[1] for item in batch], dtype=torch.int64)
        if all(isinstance(item[0], torch.Tensor) for item in batch):
            return torch.stack([item[0] for item in batch]), labels
        if any(isinstance(item[0], PlannedCrop) for item in batch):  # data.decode: device, finished there
            return CropBatch(item[0] for item in batch), labels  # its bytes travel as one tensor
    return default_collate(batch)


class BadImages:
    """What training does with unreadable images (``data.on_bad_image``): ``stop`` raises
    :class:`~maskkit.errors.UnreadableImageError` naming the first one; ``skip`` leaves them out of their batch
    and remembers them (``found``: path -> reason). :meth:`accept` turns a loader batch into
    ``(images, labels)``; :meth:`keep` cuts the matching rows out of the batch's masks ``[B, N]``."""

    def __init__(self, mode: str = "stop"):
        if mode not in ("stop", "skip"):
            raise ValueError(f"on_bad_image: expected stop or skip, got {mode!r}")
        self.mode = mode
        self.found: dict[str, str] = {}
        self._kept: tuple[int, ...] | None = None

    def accept(self, batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images [K, ...], labels [K])`` of a loader batch, the unreadable images left out (or raised)."""
        if len(batch) == 2 or not isinstance(batch[-1], BadBatch):
            self._kept = None
            return batch[0], batch[1]
        images, labels, info = batch
        if self.mode == "stop":
            first = info.bad[0]
            raise UnreadableImageError(first.path, f"{first.reason}; set data.on_bad_image: skip to train "
                                                   "without the unreadable images")
        self.found.update((b.path, b.reason) for b in info.bad)
        if images is None:
            raise UnreadableImageError(info.bad[0].path, "every image of a batch is unreadable; is the data "
                                                         "folder right?")
        self._kept = info.kept
        return images, labels

    def keep(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` (one per sample of the last batch as sampled) for the samples :meth:`accept` kept."""
        if self._kept is None:
            return rows
        return rows[torch.tensor(self._kept, device=rows.device)]


WORKER_GRACE_S = 30  # how long a worker outlives a SIGTERM (torchrun waits as long before its SIGKILL)


def _leave_signals_to_the_main_process(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which stops at a step boundary and shuts them down; a
    SIGTERM (``timeout`` and Slurm signal the whole process group) only starts :data:`WORKER_GRACE_S` seconds
    after which the worker leaves (:func:`_leave_later`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _leave_later)


def _leave_later(signum: int, frame: Any) -> None:
    """A worker's SIGTERM handler. Dying at once would make the DataLoader raise in the middle of a step, losing
    the steps since the last checkpoint, while the main process, signalled too, stops at the next step boundary
    with a checkpoint and then shuts the workers down. So the worker carries on, and leaves by itself (SIGALRM)
    :data:`WORKER_GRACE_S` seconds later if nothing stopped it first: a worker stuck when the loader shut it
    down (torch's ``terminate()`` is a SIGTERM) cannot hang the process's exit."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.alarm(WORKER_GRACE_S)


def lift_open_files_limit(needed: int) -> int:
    """Raise this process's soft limit on open files to ``needed`` (at most the hard limit) if it is lower, and
    return the soft limit in force. Under ``data.decode: device`` a worker sends the crops it had to decode
    (files that are not JPEG) one shared-memory tensor each, which holds an open file while in flight or kept
    (the JPEGs' bytes travel packed, one per batch: :class:`~maskkit.data.encoded.CropBatch`): a folder of PNGs
    with 16 workers prefetching 4 batches of 64 is 4,096, past the common soft limit of 1,024, where the
    loader fails with "Too many open files". POSIX only; elsewhere nothing changes (-1)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


def stop_workers(loader: DataLoader | None) -> None:
    """Shut ``loader``'s persistent worker processes down now, waiting for them (a few seconds at most).

    Persistent workers otherwise live as long as the loader does: after a training loop ends (evaluation
    runs next), or after it failed, while its exception, and so the trainer and its loader, is still
    referenced (a caller that keeps it, a reference cycle left to the garbage collector, which would shut them
    down whenever it next runs, stalling whatever runs then). A later iteration of ``loader`` starts new
    workers. A loader without workers, or whose workers never started, is left as it is, and ``None`` (a loop
    that failed before building its loader) is nothing to stop."""
    iterator = getattr(loader, "_iterator", None)  # where DataLoader keeps a persistent-workers iterator
    if iterator is None:
        return
    loader._iterator = None
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def make_loader(dataset: Dataset, sampler: Iterable[list[int]], num_workers: int = 0,
                pin_memory: bool = False, persistent_workers: bool | None = None,
                prefetch_factor: int | None = None,
                collate_fn: Callable[[Sequence[Any]], Any] = stack_collate) -> DataLoader:
    """A ``DataLoader`` yielding the batches of ``sampler`` (a batch sampler such as
    :class:`GlobalBatchSampler`), collated by stacking: ``(images [B, ...], labels int64 [B])``.

    With ``num_workers > 0`` workers are persistent and prefetch 4 batches each unless told otherwise;
    with 0 workers neither option applies (setting them is an error). ``pin_memory`` pins batches for
    fast host-to-GPU copies. The loader is given its own generator, so building and iterating it never
    consumes the global RNG (order and augmentations come from the sampler and the dataset).
    """
    if num_workers < 0:
        raise ValueError(f"num_workers: expected >= 0, got {num_workers}")
    if num_workers == 0:
        if persistent_workers or prefetch_factor is not None:
            raise ValueError("persistent_workers and prefetch_factor need num_workers > 0")
        persistent_workers, prefetch_factor = False, None
    else:
        persistent_workers = True if persistent_workers is None else persistent_workers
        prefetch_factor = 4 if prefetch_factor is None else prefetch_factor
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_fn,
                      pin_memory=pin_memory, persistent_workers=persistent_workers,
                      prefetch_factor=prefetch_factor, generator=torch.Generator().manual_seed(0),
                      worker_init_fn=_leave_signals_to_the_main_process if num_workers else None)
