"""Finish batches a few steps ahead, in a background thread, so the training thread never waits for them.

``data.decode: device`` decodes each batch in the training process (:class:`~maskkit.data.encoded.DeviceDecoder`).
Called inline, that work adds to every step: torchvision's nvJPEG decoder ends each batch with a
``cudaStreamSynchronize`` on its own stream, so the training thread sits idle for the whole decode, and on a
small batch that thread (launching kernels) is what sets the pace. :func:`finish_ahead` moves the call to one
worker thread, ``depth`` batches ahead:

    main thread:    next(loader) -> submit(raw k+depth) ............ wait for finished k -> train on k
    worker thread:                   finish(raw k+1) ... finish(raw k+2) ...   (GIL released inside the decode)

The loader is still iterated by the calling thread (DataLoader installs its worker-death handler there), the
order of batches is kept, and an exception raised while finishing a batch is raised again, unchanged, when that
batch is asked for. On CUDA the worker finishes on a side stream; the calling thread's stream waits for it
(an event) and the finished tensors are recorded on that stream, so the caching allocator does not reuse their
memory early. On a CPU there is no stream to wait for: the thread overlaps the decode with whatever the caller
does between batches (it holds the GIL only between torch operators).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch

__all__ = ["finish_ahead", "DEFAULT_DEPTH"]

DEFAULT_DEPTH = 2  # batches finished ahead of the one being trained on (a few MB each at 224 px)

T = TypeVar("T")
U = TypeVar("U")


def finish_ahead(items: Iterable[T], finish: Callable[[T], U], device: torch.device | str,
                 depth: int = DEFAULT_DEPTH) -> Iterator[U]:
    """``finish(item)`` for each of ``items``, in order, computed in a worker thread up to ``depth`` items ahead
    of the caller (``depth=0``: inline, no thread). What it yields and raises, and in which order, is what
    ``map(finish, items)`` would: an error of ``items`` comes after the items before it. ``device``: where
    ``finish`` puts its tensors; on CUDA the worker runs it on a side stream and the result is ready on the
    caller's current stream when handed over.

    Closing the returned generator (or letting it be collected) cancels what is queued and waits for the item
    being finished, so no thread outlives it.
    """
    device = torch.device(device)
    if depth < 0:
        raise ValueError(f"depth: expected >= 0, got {depth}")
    if depth == 0:
        yield from map(finish, items)
        return
    side = _side_stream(device)
    pending: collections.deque[Future] = collections.deque()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskkit-finish-ahead")
    source, source_error = iter(items), None
    try:
        while True:
            try:
                item = next(source)
            except StopIteration:
                break
            except Exception as exc:  # the items before it are still handed over, as inline
                source_error = exc
                break
            pending.append(pool.submit(_finish_on, side, finish, item))
            if len(pending) > depth:
                yield _handed_over(pending.popleft().result(), device)
        while pending:
            yield _handed_over(pending.popleft().result(), device)
        if source_error is not None:
            raise source_error
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        close = getattr(source, "close", None)
        if close is not None:  # a generator source (a loader's epochs) stops now, not when collected
            close()


def _side_stream(device: torch.device) -> torch.cuda.Stream | None:
    if device.type != "cuda":
        return None
    return torch.cuda.Stream(device)


def _finish_on(side: torch.cuda.Stream | None, finish: Callable[[T], U], item: T) -> tuple[U, Any]:
    """In the worker thread: ``(finish(item), event recorded after it on the side stream, or None)``."""
    if side is None:
        return finish(item), None
    with torch.cuda.device(side.device), torch.cuda.stream(side):
        result = finish(item)
        done = torch.cuda.Event()
        done.record(side)
    return result, done


def _handed_over(finished: tuple[U, Any], device: torch.device) -> U:
    """In the calling thread: make its current stream wait for the side stream's work on ``result``, and tell
    the allocator that the result's CUDA tensors are used on that stream from now on."""
    result, done = finished
    if done is None:
        return result
    stream = torch.cuda.current_stream(device)
    stream.wait_event(done)
    for tensor in _cuda_tensors(result):
        tensor.record_stream(stream)
    return result


def _cuda_tensors(value: Any) -> Iterator[torch.Tensor]:
    """The CUDA tensors in ``value`` (a tensor, or tuples, lists and dicts of them, at any depth)."""
    if isinstance(value, torch.Tensor):
        if value.is_cuda:
            yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _cuda_tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _cuda_tensors(v)
