"""JPEGs decoded on the training device (``data.decode: device``): nvJPEG on a GPU, libjpeg-turbo on a CPU.

With ``data.decode: host`` (the default) loader workers decode each image with PIL, crop and flip it, and send
uint8 crops. With ``device`` they only read each file and its header and draw the augmentation; the main
process then decodes the whole batch at once on the device (``torchvision.io.decode_jpeg``, batched), crops,
resizes and flips there, and hands on uint8 ``[B, C, h, w]`` already on the device:

    worker:  ImageFolder.encoded(i) -> EncodedImage (file bytes, header size)
             TrainTransform(encoded, generator) -> PlannedCrop (the same draws as on the host)
    main:    DeviceDecoder(batch) -> uint8 [B, C, h, w] on the device (decode, crop + resize, flip)

The draws are the host route's, so the same sample gets the same crop box and flip in both routes; on a CPU
the decoded pixels are libjpeg-turbo's in both, so the two routes give identical batches. On a GPU nvJPEG's
inverse DCT and chroma upsampling differ from libjpeg's by a few levels.

Files that are not JPEG (PNG, ...) or whose colours would need converting (a CMYK JPEG, or an RGB one for a
one-channel model) are decoded, cropped and flipped in the worker as on the host, and travel as uint8 crops.
A JPEG whose header reads but whose data does not decode is reported as unreadable, like on the host
(``data.on_bad_image``), naming its file.

The decoder is ``torchvision.io.decode_jpeg`` (batched; nvJPEG when the device is CUDA). torchvision 0.29
deprecates its image decoders in favour of TorchCodec, which maskkit does not depend on; the call is in
:meth:`DeviceDecoder.decode` alone, so moving to TorchCodec when torchvision drops them is a local change.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any

import attrs
import torch
from torch.utils.data import Dataset

from maskkit.errors import first_line

__all__ = ["EncodedImage", "PlannedCrop", "CropBatch", "EncodedView", "DeviceDecoder", "supports_encoded"]

Box = tuple[int, int, int, int]


@attrs.frozen(eq=False)
class EncodedImage:
    """A JPEG file read but not decoded: ``data`` uint8 ``[L]`` (the file's bytes), ``height`` x ``width`` from
    its header, ``path`` for error messages."""

    data: torch.Tensor
    height: int
    width: int
    path: str


@attrs.frozen(eq=False)
class PlannedCrop:
    """One sample's augmentation drawn but not carried out: the undecoded ``image``, the crop ``box``
    ``(top, left, h, w)`` or None, and ``flip``."""

    image: EncodedImage
    box: Box | None
    flip: bool


class CropBatch(list):
    """The items of one ``data.decode: device`` batch, :class:`PlannedCrop` and uint8 crops ``[C, h, w]`` (files a
    worker had to decode), as :func:`~maskkit.data.loading.stack_collate` makes it in a loader worker.

    It is pickled (from the worker to the training process) with the JPEG bytes of all its crops in one uint8
    tensor, and unpickles into views of that tensor. Every tensor crosses the process boundary with a file
    descriptor of its own: receiving one per image cost the training process's main thread 10-15x the CPU
    time of receiving one per batch (22-34 ms against 1.5-3.0 ms per batch of 64 on 2 cores,
    ``benchmarks/encoded_transfer.py``), and held an open file per image."""

    def __copy__(self) -> CropBatch:  # a shallow copy (the loader's pin_memory makes one), not a repacking
        return CropBatch(self)

    def __reduce__(self):
        planned = [c for c in self if isinstance(c, PlannedCrop)]
        sizes = [c.image.data.numel() for c in planned]
        packed = (torch.cat([c.image.data.reshape(-1) for c in planned]) if planned
                  else torch.empty(0, dtype=torch.uint8))  # uint8 [sum of the files' sizes]
        bare = [attrs.evolve(c, image=attrs.evolve(c.image, data=None)) if isinstance(c, PlannedCrop) else c
                for c in self]
        return _unpack_crop_batch, (bare, packed, sizes)


def _unpack_crop_batch(bare: list[Any], packed: torch.Tensor, sizes: list[int]) -> CropBatch:
    """A :class:`CropBatch` whose crops' bytes are views of ``packed``, in order (``CropBatch.__reduce__``)."""
    views = iter(packed.split(sizes))
    return CropBatch(attrs.evolve(c, image=attrs.evolve(c.image, data=next(views))) if isinstance(c, PlannedCrop)
                     else c for c in bare)


def supports_encoded(dataset: Any) -> bool:
    """Whether ``dataset`` can hand out undecoded images: it has ``encoded(index) -> (EncodedImage or uint8
    [C, H, W], label)`` (:class:`~maskkit.data.image_folder.ImageFolder` has)."""
    return callable(getattr(dataset, "encoded", None))


class EncodedView(Dataset):
    """``base`` whose items are ``base.encoded(i)``: ``(EncodedImage or uint8 [C, H, W], label)``; ``mean``,
    ``std`` and every other attribute are ``base``'s."""

    def __init__(self, base: Dataset):
        if not supports_encoded(base):
            raise TypeError(f"{type(base).__name__} has no encoded(index) method")
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.base.encoded(index)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        if name == "base":  # not set yet (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    def __repr__(self) -> str:
        return f"EncodedView({self.base!r})"


def _reason(exc: Exception) -> str:
    """torchvision's message without its source location: ``"decode_jpeg, /.../decode_jpeg.cpp:171, Image is
    incomplete or truncated"`` -> ``"Image is incomplete or truncated"``."""
    text = first_line(str(exc), 300) or type(exc).__name__
    parts = [p.strip() for p in text.split(", ")]
    located = [i for i, p in enumerate(parts) if ".cpp:" in p or ".cu:" in p]
    return ", ".join(parts[located[-1] + 1:]) if located and located[-1] + 1 < len(parts) else text


def _device_failure(exc: RuntimeError) -> bool:
    """Whether a decode error is the device's (out of memory, a CUDA error, such as the one a failed device-side
    assertion leaves), not the file's: those are raised, never reported as an unreadable image."""
    text = str(exc)
    return (isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "CUDA error" in text
            or "cudaError" in text)


class DeviceDecoder:
    """Finishes on ``device`` the batches a loader of :class:`PlannedCrop` items yields.

    ``transform``: the :class:`~maskkit.data.transforms.TrainTransform` that drew the crops (its ``apply``
    carries them out); ``in_chans``: 3 decodes JPEGs to RGB, 1 to grey. ``__call__`` takes what
    :func:`~maskkit.data.loading.stack_collate` made of the items, ``(list, labels int64 [B])`` or
    ``(list or None, labels or None, BadBatch)`` where the list holds :class:`PlannedCrop` items and uint8 crops
    ``[C, img_h, img_w]`` a worker made (files it had to decode), and returns the same with the list replaced by uint8
    ``[K, C, img_h, img_w]`` on ``device``; JPEGs that fail to decode join the batch's
    :class:`~maskkit.data.loading.BadBatch` (created when needed), so :class:`~maskkit.data.loading.BadImages`
    stops or skips them as it does unreadable files on the host. Anything else passes through unchanged.
    """

    def __init__(self, transform: Any, device: torch.device | str, in_chans: int = 3):
        from torchvision.io import ImageReadMode

        if in_chans not in (1, 3):
            raise ValueError(f"in_chans: expected 1 or 3, got {in_chans!r}")
        self.transform = transform
        self.device = torch.device(device)
        self.mode = ImageReadMode.RGB if in_chans == 3 else ImageReadMode.GRAY
        # torchvision 0.29 deprecates its decoders for TorchCodec (see the module doc). Filtered once, here:
        # ``warnings.catch_warnings`` around each call would not be thread-safe, and the calls run in a thread
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)

    def __call__(self, batch: Sequence[Any]) -> Any:
        from maskkit.data.loading import BadBatch, BadSample

        crops = batch[0]
        if not isinstance(crops, list) or not any(isinstance(c, PlannedCrop) for c in crops):
            return batch
        labels, info = batch[1], (batch[2] if len(batch) == 3 else None)
        # Called inside an autocast region (inline), decode outside it. Only then: leaving an outermost autocast
        # context clears autocast's cast cache for the whole process, the training thread's weight casts too.
        outside = (torch.autocast(self.device.type, enabled=False) if torch.is_autocast_enabled(self.device.type)
                   else contextlib.nullcontext())
        with outside:
            images, failed = self.decode(crops)
        if not failed:
            return (images, labels) if info is None else (images, labels, info)
        kept = info.kept if info is not None else tuple(range(len(crops)))
        good = [j for j in range(len(crops)) if j not in failed]
        bad = (info.bad if info is not None else ()) + tuple(BadSample(crops[j].image.path, failed[j])
                                                             for j in sorted(failed))
        new_info = BadBatch(bad, tuple(kept[j] for j in good))
        if not good:
            return None, None, new_info
        return images, labels[torch.tensor(good)], new_info

    def decode(self, crops: Sequence[PlannedCrop | torch.Tensor]) -> tuple[torch.Tensor | None, dict[int, str]]:
        """``(uint8 [K, C, img_h, img_w] on the device or None when K = 0, {position: reason})`` for ``crops``
        (planned crops and finished uint8 crops): the JPEGs decoded in one batched call (one by one only when that
        call fails, to find the culprits), then cropped, resized and flipped; finished crops only moved."""
        from torchvision.io import decode_jpeg

        planned = [j for j, c in enumerate(crops) if isinstance(c, PlannedCrop)]
        pixels: dict[int, torch.Tensor] = {}
        failed: dict[int, str] = {}
        if planned:
            data = [crops[j].image.data for j in planned]
            if self.device.type == "cuda":
                # nvJPEG writes its outputs on its own stream, without waiting for this one, into memory the allocator
                # hands out on this one: memory freed here whose last reads are still queued (the training stream's,
                # when called inline: Trainer.decode_ahead = 0) would be overwritten before they run. Drain this
                # stream first; in decode-ahead's thread its work ended with the previous batch, so this costs nothing
                torch.cuda.current_stream(self.device).synchronize()
            try:
                pixels.update(zip(planned, decode_jpeg(data, mode=self.mode, device=self.device)))
            except RuntimeError as exc:  # one bad file fails the whole call: find it
                if _device_failure(exc):
                    raise
                for j, d in zip(planned, data):
                    try:
                        pixels[j] = decode_jpeg(d, mode=self.mode, device=self.device)
                    except RuntimeError as exc:
                        if _device_failure(exc):
                            raise
                        failed[j] = _reason(exc)
        out = []
        for j, c in enumerate(crops):
            if isinstance(c, PlannedCrop):
                if j not in failed:
                    out.append(self.transform.apply(pixels[j], c.box, c.flip))
            else:
                out.append(c.to(self.device, non_blocking=True))
        images = torch.stack(out) if out else None
        if self.device.type == "cuda":
            # nvJPEG writes its outputs on its own stream, which the allocator does not know: the decoded images
            # freed on return could be handed to the next call's nvJPEG while this stream still crops them. Wait
            # for the crops (in decode-ahead's thread, on its side stream: the training stream runs on)
            torch.cuda.current_stream(self.device).synchronize()
        return images, failed
